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

use super::{
    Error, Result, check_privileges, features, monotonic_ns, pipeline, shaping, state::RuleEntry,
};
use crate::{
    dataplane::{self as kernel, HookKind, HookState, Maps},
    spec::{Kind, RuleSpec, Ttl},
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
    /// Per interface (in `hooks`' order): why it has XDP or not, for people.
    pub why: Vec<String>,
    /// Which SSH connection was found and protected, when it came from the ancestry.
    pub notes: Vec<String>,
    /// Slots in file order; `expires_mono_ns` is the TTL's (the lease comes on top).
    rules: Vec<RuleEntry>,
    /// fq qdiscs and IFB devices installed for delay and rate, removed on exit.
    shaped: Vec<crate::control::queues::Shaped>,
    /// Segment limits and offloads changed for per-packet probabilities, put back on exit.
    wire: Vec<features::Tuned>,
    devices: Vec<shaping::Device>,
}

/// Loads a private copy of the programs and maps, attaches them, and publishes `specs`.
pub fn start(
    ifaces: &[String],
    specs: Vec<(RuleSpec, Ttl)>,
    xdp_mode: Option<XdpMode>,
    protect: bool,
    replace_qdisc: bool,
) -> Result<Running> {
    check_privileges()?;
    // Only while loading: the private copy is pinned for an instant, then lives by its fds.
    let _bpffs = kernel::ensure_bpffs()?;
    let mut devices = Vec::new();
    for i in ifaces {
        devices.push((i.clone(), pipeline::check_iface("--iface", i)?));
    }
    // Interfaces `attach` manages are not ours to take.
    let key = crate::control::netns::state_key().map_err(Error::NetnsIdentity)?;
    if let Ok(text) = std::fs::read(crate::control::state::Paths::new(&key).state_file())
        && let Ok(st) = serde_json::from_slice::<crate::control::state::State>(&text)
        && let Some(a) = st.attached.iter().find(|a| ifaces.contains(&a.iface))
    {
        return Err(Error::AttachedByAttach {
            iface: a.iface.clone(),
        });
    }
    pipeline::check_new(specs.iter().map(|(s, _)| s), |_| false)?;
    let now = monotonic_ns();
    let op = if protect {
        super::operator::find()
    } else {
        // --no-protect: not looked for, nothing protected, nothing refused.
        super::operator::Operator::NoSsh
    };
    let ssh = super::operator::guard(&op, specs.iter().map(|(s, _)| s))?;
    let mut all: Vec<(RuleSpec, Ttl)> = pipeline::protections(ssh, |_| false)
        .into_iter()
        .map(|s| (s, Ttl::Never))
        .collect();
    all.extend(specs);
    // Slots and ages in file order: the pipeline orders them as everywhere.
    let rules: Vec<RuleEntry> = all
        .into_iter()
        .enumerate()
        .map(|(i, (spec, ttl))| RuleEntry {
            slot: i as u32,
            seq: i as u64,
            expires_mono_ns: pipeline::expiry(spec.kind, ttl, now),
            hold_until_mono_ns: pipeline::hold_end(&spec, now),
            spec,
        })
        .collect();
    // Compile before anything is loaded: a set that does not fit changes nothing.
    pipeline::compile(&pipeline::ordered(&rules), |r| r.expires_mono_ns)?;

    let mut ebpf = kernel::load_private()?;
    let maps = Maps::take(&mut ebpf)?;
    let mut links = Vec::new();
    let mut hooks = Vec::new();
    let mut why = Vec::new();
    // Hooks chosen as `attach` and its publishes choose them, once: the rule set is fixed (an
    // XDP program added for a rule whose TTL runs out stays, idle, until the process ends).
    let mut maps = maps;
    let ordered = pipeline::ordered(&rules);
    for (i, idx) in &devices {
        let device = super::hooks::apply::device_kind(*idx);
        let forced = xdp_mode.map(super::hooks::ForcedXdp::from_mode);
        let choice = super::hooks::choose(&device, forced, i, ordered.iter().copied(), now);
        let plan = if choice.xdp {
            kernel::XdpPlan::from_mode(xdp_mode)
        } else {
            kernel::XdpPlan::Skip
        };
        let (mut h, l) = kernel::attach_held(&mut ebpf, i, plan)?;
        links.extend(l);
        if !choice.xdp {
            h.extend(super::hooks::apply::held_elsewhere(i));
        }
        // tc ingress applies every rule where no XDP program of ours does.
        if !h
            .iter()
            .any(|x| matches!(x.kind, HookKind::XdpNative | HookKind::XdpGeneric))
        {
            maps.set_tc_only(*idx, true)?;
        }
        why.push(choice.explain(&device));
        hooks.push((i.clone(), h));
    }
    drop(ordered);
    // cgroup entries at ingress: the socket-delivery hook on their cgroups, held like the rest.
    let cgroups = super::hooks::socket::wanted(&rules, now);
    if !cgroups.is_empty() {
        let ifindexes: Vec<u32> = devices.iter().map(|(_, i)| *i).collect();
        maps.set_ifaces(&ifindexes)?;
        let prog = kernel::cgroup_program(&mut ebpf)?;
        for (id, cg) in cgroups {
            match kernel::attach_cgroup(prog, &cg.path, id)? {
                Some(l) => links.push(l),
                None => log::warn!(
                    "the cgroup {} is gone (or is another cgroup now): its entries match no socket",
                    cg.path.display()
                ),
            }
        }
    }
    let mut run = Running {
        _ebpf: ebpf,
        maps,
        _links: links,
        hooks,
        why,
        notes: op.note().into_iter().collect(),
        rules,
        shaped: Vec::new(),
        wire: Vec::new(),
        devices: devices.clone(),
    };
    // Queues first: a stamped packet must never meet a device without fq.
    shaping::reconcile(
        &devices,
        &run.rules,
        &mut run.shaped,
        &mut run.maps,
        replace_qdisc,
        monotonic_ns(),
    )?;
    // Wire packets before the first probability applies (features.rs); on an error from
    // here on, dropping `run` puts everything back.
    let xdp = run.xdp_frames();
    let Running {
        _ebpf, wire, rules, ..
    } = &mut run;
    let mut segment_prog =
        || -> Result<aya::programs::ProgramFd> { Ok(kernel::segment_program(_ebpf)?) };
    features::tune(
        &devices,
        rules,
        wire,
        monotonic_ns(),
        &xdp,
        &mut segment_prog,
    )?;
    // A hold starts with the first publish, not when loading began (seconds earlier under
    // emulation): its window is what the operator asked for.
    let now = monotonic_ns();
    for r in &mut run.rules {
        r.hold_until_mono_ns = pipeline::hold_end(&r.spec, now);
    }
    let (compiled, values) = run.compiled(now)?;
    run.maps.publish_set(&compiled, &values)?;
    Ok(run)
}

impl Running {
    /// The rule set compiled with the lease applied: expiry = min(TTL expiry, now + lease).
    fn compiled(
        &self,
        now: u64,
    ) -> Result<(
        crate::compile::Compiled,
        Vec<(u32, netfault_common::RuleValue)>,
    )> {
        let lease = now + LEASE.as_nanos() as u64;
        pipeline::compile(&pipeline::ordered(&self.rules), |r| {
            if r.spec.kind == Kind::Protect {
                0
            } else if r.expires_mono_ns == 0 {
                lease
            } else {
                r.expires_mono_ns.min(lease)
            }
        })
    }

    /// Extends the lease; puts back the offload settings of rules whose TTL has run out.
    pub fn renew(&mut self) -> Result<()> {
        // A new generation with the new expiries, flipped to as every change is.
        let (compiled, values) = self.compiled(monotonic_ns())?;
        self.maps.publish_set(&compiled, &values)?;
        if !self.wire.is_empty() {
            let xdp = self.xdp_frames();
            // Not fatal: the impairment goes on; the record stays and is tried again.
            if let Err(e) = features::release(
                &self.devices,
                &self.rules,
                &mut self.wire,
                monotonic_ns(),
                &xdp,
            ) {
                log::warn!("put back the offload settings: {e}");
            }
        }
        Ok(())
    }

    /// Whether netfault's native XDP applies ingress drops on an interface (features.rs).
    fn xdp_frames(&self) -> impl Fn(&str) -> bool + use<> {
        let native: Vec<String> = self
            .hooks
            .iter()
            .filter(|(_, h)| h.iter().any(|h| h.kind == kernel::HookKind::XdpNative))
            .map(|(i, _)| i.clone())
            .collect();
        move |i: &str| native.iter().any(|n| n == i)
    }

    pub fn counters(&self) -> Result<Vec<(String, Kind, Counters)>> {
        self.rules
            .iter()
            .filter(|r| r.spec.kind != Kind::Protect)
            .map(|r| {
                Ok((
                    r.spec.name.clone(),
                    r.spec.kind,
                    self.maps.counters(r.slot)?,
                ))
            })
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
        if let Err(e) = features::restore(&mut self.wire, None) {
            log::warn!("put back the offload settings: {e}");
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
