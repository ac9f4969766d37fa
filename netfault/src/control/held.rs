//! `netfault run FILE --iface ...`: impairment that lives exactly as long as this process.
//!
//! Two mechanisms, so the guarantee holds whatever kills the process (Ctrl-C, SIGTERM, kill -9)
//! and on every kernel:
//! - links and maps are held by this process only, never pinned: when it dies the kernel closes
//!   its fds and detaches the programs (XDP and tcx links);
//! - every rule carries a short lease (its in-kernel expiry) that this process renews; where an
//!   attachment outlives the process (clsact filters on kernels without tcx), the data path
//!   passes traffic once the lease runs out.
use std::time::Duration;

use aya::programs::XdpMode;
use netfault_common::Counters;

use super::{Error, Result, check_privileges, monotonic_ns, shaping};
use crate::{
    compile::{self, Input},
    dataplane::{self as kernel, HookState, Maps},
    spec::protection,
    spec::{Kind, RuleSpec, SpecError, Ttl},
};

/// The lease: impairment ends at most this long after the process dies.
pub const LEASE: Duration = Duration::from_millis(800);
/// Renewed this often, so a busy machine has two chances before the lease runs out.
pub const RENEW_EVERY: Duration = Duration::from_millis(250);

pub struct Running {
    _ebpf: aya::Ebpf,
    maps: Maps,
    _links: Vec<aya::programs::links::FdLink>,
    pub hooks: Vec<(String, Vec<HookState>)>,
    /// (slot, spec, absolute TTL expiry or 0)
    rules: Vec<(u32, RuleSpec, u64)>,
    /// fq qdiscs and IFB devices installed for delay and rate, removed on exit.
    shaped: Vec<crate::control::queues::Shaped>,
}

/// Loads a private copy of the programs and maps, attaches them, and publishes `specs`.
pub fn start(
    netns_name: Option<&str>,
    ifaces: &[String],
    specs: Vec<(RuleSpec, Ttl)>,
    xdp_mode: Option<XdpMode>,
    protect: bool,
    replace_qdisc: bool,
) -> Result<Running> {
    check_privileges()?;
    kernel::ensure_bpffs()?;
    for i in ifaces {
        if kernel::ifindex(i).is_none() {
            return Err(SpecError::new(
                "--iface",
                format!("no interface named '{i}' in this namespace"),
            )
            .into());
        }
    }
    // Interfaces `attach` manages are not ours to take.
    let key = crate::control::netns::state_key(netns_name).map_err(Error::NetnsIdentity)?;
    if let Ok(text) = std::fs::read(crate::control::state::Paths::new(&key).state_file())
        && let Ok(st) = serde_json::from_slice::<crate::control::state::State>(&text)
        && let Some(a) = st.attached.iter().find(|a| ifaces.contains(&a.iface))
    {
        return Err(Error::AttachedByAttach {
            iface: a.iface.clone(),
        });
    }
    let mut all: Vec<(RuleSpec, Ttl)> = protection::loopback()
        .into_iter()
        .map(|s| (s, Ttl::Never))
        .collect();
    if protect && let Some(ssh) = protection::ssh_from_env() {
        all.extend(ssh.into_iter().map(|s| (s, Ttl::Never)));
    }
    all.extend(specs);
    for (s, _) in &all {
        if s.kind != Kind::Protect {
            s.validate()?;
        }
    }
    let now = monotonic_ns();
    let rules: Vec<(u32, RuleSpec, u64)> = all
        .into_iter()
        .enumerate()
        .map(|(i, (s, ttl))| {
            let exp = match ttl {
                Ttl::For(d) if s.kind != Kind::Protect => now + d.as_nanos() as u64,
                _ => 0,
            };
            (i as u32, s, exp)
        })
        .collect();
    // Evaluation order as everywhere: protections, partitions, rules (file order within).
    let mut order: Vec<usize> = (0..rules.len()).collect();
    order.sort_by_key(|&i| {
        let band = match rules[i].1.kind {
            Kind::Protect => 0,
            Kind::Partition => 1,
            Kind::Rule => 2,
        };
        (band, rules[i].1.priority, i)
    });
    let inputs: Vec<Input<'_>> = order
        .iter()
        .map(|&i| Input {
            slot: rules[i].0,
            spec: &rules[i].1,
            ifindex: rules[i].1.iface.as_deref().and_then(kernel::ifindex),
        })
        .collect();
    let compiled = compile::compile(&inputs)?;

    let mut ebpf = kernel::load_private()?;
    let maps = Maps::take(&mut ebpf)?;
    let mut links = Vec::new();
    let mut hooks = Vec::new();
    for i in ifaces {
        let (h, l) = kernel::attach_held(&mut ebpf, i, xdp_mode)?;
        links.extend(l);
        hooks.push((i.clone(), h));
    }
    let mut run = Running {
        _ebpf: ebpf,
        maps,
        _links: links,
        hooks,
        rules,
        shaped: Vec::new(),
    };
    run.shape(replace_qdisc)?;
    let values = run.values(monotonic_ns());
    run.maps.publish_set(&compiled, &values)?;
    Ok(run)
}

impl Running {
    /// Installs the queues the delaying rules need (removed on drop).
    fn shape(&mut self, replace_qdisc: bool) -> Result<()> {
        let mut state = crate::control::state::State {
            attached: self
                .hooks
                .iter()
                .filter_map(|(i, _)| {
                    Some(crate::control::state::Attachment {
                        iface: i.clone(),
                        ifindex: kernel::ifindex(i)?,
                        hooks: vec![],
                    })
                })
                .collect(),
            rules: self
                .rules
                .iter()
                .map(|(slot, spec, exp)| crate::control::state::RuleEntry {
                    spec: spec.clone(),
                    slot: *slot,
                    seq: u64::from(*slot),
                    expires_mono_ns: *exp,
                })
                .collect(),
            ..Default::default()
        };
        shaping::reconcile_shaping(&mut state, &mut self.maps, replace_qdisc, monotonic_ns())?;
        self.shaped = state.shaped;
        Ok(())
    }

    /// Rule values with the lease applied: expiry = min(TTL expiry, now + lease).
    fn values(&self, now: u64) -> Vec<(u32, netfault_common::RuleValue)> {
        let lease = now + LEASE.as_nanos() as u64;
        self.rules
            .iter()
            .map(|(slot, spec, exp)| {
                let e = if spec.kind == Kind::Protect {
                    0
                } else if *exp == 0 {
                    lease
                } else {
                    (*exp).min(lease)
                };
                (*slot, compile::rule_value(spec, e))
            })
            .collect()
    }

    /// Extends the lease.
    pub fn renew(&mut self) -> Result<()> {
        for (slot, v) in self.values(monotonic_ns()) {
            self.maps.set_rule(slot, &v)?;
        }
        Ok(())
    }

    pub fn counters(&self) -> Result<Vec<(String, Kind, Counters)>> {
        self.rules
            .iter()
            .filter(|(_, s, _)| s.kind != Kind::Protect)
            .map(|(slot, s, _)| Ok((s.name.clone(), s.kind, self.maps.counters(*slot)?)))
            .collect()
    }
}

impl Drop for Running {
    /// Netlink (clsact) filters outlive fds: remove ours on a normal exit. After kill -9 the
    /// lease makes them pass everything.
    fn drop(&mut self) {
        for (iface, hooks) in &self.hooks {
            let _ = kernel::detach_all(iface, hooks, None);
        }
        // After the programs: no packet is stamped once the queue that holds it is gone.
        for sh in &self.shaped {
            let _ = shaping::unshape(sh);
        }
    }
}

/// Why `hold` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `duration` passed.
    Elapsed,
    /// SIGINT (Ctrl-C).
    Interrupted,
    /// SIGTERM.
    Terminated,
}

/// Holds the impairment until Ctrl-C, SIGTERM or `duration`, renewing the lease.
pub fn hold(run: &mut Running, duration: Option<Duration>) -> Result<Stop> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Both handlers before the first renewal, so no signal falls between two polls.
        let mut int = signal(SignalKind::interrupt()).map_err(|source| Error::SignalHandler {
            signal: "SIGINT",
            source,
        })?;
        let mut term = signal(SignalKind::terminate()).map_err(|source| Error::SignalHandler {
            signal: "SIGTERM",
            source,
        })?;
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(RENEW_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => run.renew()?,
                _ = int.recv() => return Ok(Stop::Interrupted),
                _ = term.recv() => return Ok(Stop::Terminated),
                _ = &mut deadline => return Ok(Stop::Elapsed),
            }
        }
    })
}
