//! The controller's operations on one namespace: attach, detach, rules, partitions, counters.
//!
//! Every mutating operation validates and compiles the complete new rule set before it touches
//! the kernel, and publishes it in one generation flip: bad input changes nothing.
use std::time::Duration;

use aya::programs::XdpMode;
use netfault_common::{Counters, IFB_VIA_MIRRED};
use serde::{Deserialize, Serialize};

use crate::{
    compile::{self, CompileError, Input},
    kernel::{self, HookKind, KernelError, Maps},
    netns,
    qdisc::{self, QdiscError},
    spec::{Kind, RuleSpec, SpecError, Ttl},
    state::{Attachment, Locked, Paths, RuleEntry, State, StateError},
};

/// Pass entries that keep the operator's own traffic flowing whatever the rules say.
pub mod protection {
    use std::net::IpAddr;

    use ipnet::IpNet;

    use crate::spec::{Kind, PortRange, Proto, RuleSpec};

    pub const LOOPBACK: &str = "loopback";

    fn pass(name: String) -> RuleSpec {
        RuleSpec::new(name, Kind::Protect)
    }

    pub fn label(net: &IpNet, port: Option<u16>) -> String {
        let host = if net.prefix_len() == net.max_prefix_len() {
            net.addr().to_string()
        } else {
            net.to_string()
        };
        match (port, net) {
            (None, _) => host,
            (Some(p), IpNet::V4(_)) => format!("{host}:{p}"),
            (Some(p), IpNet::V6(_)) => format!("[{host}]:{p}"),
        }
    }

    /// The SSH connection's 4-tuple, both directions.
    pub fn ssh(
        label: &str,
        client: IpAddr,
        cport: u16,
        server: IpAddr,
        sport: u16,
    ) -> Vec<RuleSpec> {
        let one = |i: usize, s: IpAddr, sp: u16, d: IpAddr, dp: u16| {
            let mut r = pass(format!("{label}/{i}"));
            r.proto = Proto::Tcp;
            r.src = vec![IpNet::from(s)];
            r.sport = PortRange { lo: sp, hi: sp };
            r.dst = vec![IpNet::from(d)];
            r.dport = PortRange { lo: dp, hi: dp };
            r
        };
        vec![
            one(0, client, cport, server, sport),
            one(1, server, sport, client, cport),
        ]
    }

    /// Traffic to or from `net` (and `port`, TCP or UDP, when given).
    pub fn endpoint(label: &str, net: IpNet, port: Option<u16>) -> Vec<RuleSpec> {
        let mut out = Vec::new();
        let protos: &[Proto] = if port.is_some() {
            &[Proto::Tcp, Proto::Udp]
        } else {
            &[Proto::Any]
        };
        for &proto in protos {
            for to in [false, true] {
                let mut r = pass(format!("{label}/{}", out.len()));
                r.proto = proto;
                let ports = port.map_or(PortRange::ALL, |p| PortRange { lo: p, hi: p });
                if to {
                    r.dst = vec![net];
                    r.dport = ports;
                } else {
                    r.src = vec![net];
                    r.sport = ports;
                }
                out.push(r);
            }
        }
        out
    }

    pub fn loopback() -> Vec<RuleSpec> {
        let mut v = endpoint(LOOPBACK, "127.0.0.0/8".parse().expect("valid"), None);
        for mut r in endpoint(LOOPBACK, "::1/128".parse().expect("valid"), None) {
            r.name = format!("{LOOPBACK}/{}", v.len());
            v.push(r);
        }
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: exit status 2.
    #[error(transparent)]
    Usage(#[from] SpecError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("netfault is not attached in this namespace: run `netfault attach IFACE` first")]
    NotAttached,
    #[error("netfault needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): {0}")]
    Privileges(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Qdisc(#[from] QdiscError),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Compile(_) | Error::Qdisc(QdiscError::TooBig { .. }) => 2,
            _ => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// How long a command waits for another one on the same namespace; NETFAULT_LOCK_WAIT
/// (`500ms`, `1m`) overrides it.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

fn lock_wait() -> Duration {
    std::env::var("NETFAULT_LOCK_WAIT")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(LOCK_WAIT)
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn check_privileges() -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Privileges("run it as root (e.g. with sudo)".into()));
    }
    Ok(())
}

/// A locked, loaded namespace.
pub struct Ctl {
    lock: Locked,
    pub state: State,
    /// Things the operator should know that are not errors (fallbacks), for stderr.
    pub warnings: Vec<String>,
    /// Delay and rate may replace a root qdisc another tool installed.
    pub replace_qdisc: bool,
}

impl Ctl {
    /// Locks the current namespace's state. Call after entering the namespace.
    pub fn open(netns_name: Option<&str>) -> Result<Self> {
        check_privileges()?;
        kernel::ensure_bpffs()?;
        let key = netns::state_key(netns_name)
            .map_err(|e| Error::Other(format!("netns identity: {e}")))?;
        let lock = Locked::acquire(Paths::new(&key), lock_wait())?;
        let mut state = lock.load()?;
        let cookie = netns::cookie().map_err(|e| Error::Other(format!("netns cookie: {e}")))?;
        if state.netns_cookie != 0 && state.netns_cookie != cookie {
            // The namespace of that name was deleted and made anew: its programs died with it.
            log::warn!(
                "state for '{key}' belongs to a namespace that no longer exists; starting afresh"
            );
            kernel::remove_pins(&lock.paths.pins)?;
            state = State::default();
        }
        state.netns_cookie = cookie;
        Ok(Self {
            lock,
            state,
            warnings: Vec::new(),
            replace_qdisc: false,
        })
    }

    pub fn paths(&self) -> &Paths {
        &self.lock.paths
    }

    fn maps(&self) -> Result<Maps> {
        if self.state.attached.is_empty() || !self.paths().maps().exists() {
            return Err(Error::NotAttached);
        }
        Ok(Maps::open(&self.paths().maps())?)
    }

    fn save(&self) -> Result<()> {
        Ok(self.lock.save(&self.state)?)
    }

    /// Attaches to each interface; already attached ones are left alone.
    pub fn attach(&mut self, ifaces: &[String], xdp_mode: Option<XdpMode>) -> Result<Vec<String>> {
        let mut wanted = Vec::new();
        for i in ifaces {
            let idx = kernel::ifindex(i).ok_or_else(|| {
                SpecError::new(
                    "IFACE",
                    format!("no interface named '{i}' in this namespace"),
                )
            })?;
            wanted.push((i.clone(), idx));
        }
        let mut report = Vec::new();
        let mut ebpf = None;
        for (iface, idx) in wanted {
            if let Some(pos) = self.state.attached.iter().position(|a| a.iface == iface) {
                let a = &self.state.attached[pos];
                let alive = a.ifindex == idx
                    && a.hooks.iter().all(|h| {
                        h.kind == HookKind::Clsact
                            || kernel::link_alive(
                                &self.paths().links().join(h.hook.pin_name(&iface)),
                            )
                    });
                if alive {
                    report.push(format!("{iface}: already attached"));
                    continue;
                }
                // The interface was deleted and made anew under the same name.
                let _ = kernel::detach_all(&iface, &a.hooks, Some(&self.paths().links()));
                self.state.attached.remove(pos);
            }
            if ebpf.is_none() {
                ebpf = Some(kernel::load(&self.paths().maps())?);
            }
            let hooks = kernel::attach(
                ebpf.as_mut().expect("loaded"),
                &iface,
                &self.paths().links(),
                xdp_mode,
            )?;
            let how: Vec<String> = hooks
                .iter()
                .map(|h| format!("{:?}={:?}", h.hook, h.kind))
                .collect();
            report.push(format!("{iface}: attached ({})", how.join(", ")));
            if hooks.iter().any(|h| h.kind == HookKind::TcFallback) {
                Maps::open(&self.paths().maps())?.set_tc_only(idx, true)?;
            }
            for note in hooks.iter().filter_map(|h| h.note.as_ref()) {
                self.warnings.push(format!(
                    "{note}; netfault applies ingress rules at tc ingress on {iface} instead (after the skb exists; `--xdp-mode native` refuses instead)"
                ));
            }
            self.state.attached.push(Attachment {
                iface,
                ifindex: idx,
                hooks,
            });
            self.save()?;
        }
        // Loopback is always protected; rules bound to an interface that has just (re)appeared
        // compile now.
        if ebpf.is_some() {
            let lo = format!("{}/", protection::LOOPBACK);
            if !self
                .state
                .rules
                .iter()
                .any(|r| r.spec.name.starts_with(&lo))
            {
                self.add_inner(protection::loopback(), Ttl::Never)?;
            } else {
                self.publish()?;
            }
        }
        Ok(report)
    }

    /// Detaches the named interfaces, or everything (programs, maps, pins, state) when none is named.
    pub fn detach(mut self, ifaces: &[String]) -> Result<Vec<String>> {
        let mut report = Vec::new();
        if ifaces.is_empty() {
            for a in std::mem::take(&mut self.state.attached) {
                kernel::detach_all(&a.iface, &a.hooks, Some(&self.paths().links()))?;
                report.push(format!("{}: detached", a.iface));
            }
            for sh in std::mem::take(&mut self.state.shaped) {
                unshape(&sh)?;
            }
            kernel::remove_pins(&self.paths().pins)?;
            self.lock.remove()?;
            // The pin root goes too once no namespace uses it: nothing of ours stays behind.
            let _ = std::fs::remove_dir(crate::state::PIN_ROOT);
            return Ok(report);
        }
        for i in ifaces {
            let pos = self
                .state
                .attached
                .iter()
                .position(|a| &a.iface == i)
                .ok_or_else(|| Error::Other(format!("{i} is not attached")))?;
            let a = self.state.attached.remove(pos);
            kernel::detach_all(&a.iface, &a.hooks, Some(&self.paths().links()))?;
            if let Some(p) = self.state.shaped.iter().position(|s| s.iface == a.iface) {
                let sh = self.state.shaped.remove(p);
                if sh.ifb.is_some() {
                    Maps::open(&self.paths().maps())?.set_ifb(sh.ifindex, None)?;
                }
                unshape(&sh)?;
            }
            if a.hooks.iter().any(|h| h.kind == HookKind::TcFallback) {
                Maps::open(&self.paths().maps())?.set_tc_only(a.ifindex, false)?;
            }
            report.push(format!("{i}: detached"));
        }
        self.save()?;
        Ok(report)
    }

    /// Forgets rules whose lifetime is over (the data path already passes their traffic).
    fn prune_expired(&mut self, now: u64) {
        self.state.rules.retain(|r| r.live(now));
    }

    /// Compiles the current state and publishes it.
    fn publish(&mut self) -> Result<()> {
        let mut maps = self.maps()?;
        let (compiled, values) = self.compiled()?;
        self.publish_compiled(&mut maps, &compiled, &values)
    }

    fn publish_compiled(
        &mut self,
        maps: &mut Maps,
        compiled: &compile::Compiled,
        values: &[(u32, netfault_common::RuleValue)],
    ) -> Result<()> {
        // Queues first: a stamped packet must never meet a device without fq.
        reconcile_shaping(&mut self.state, maps, self.replace_qdisc, monotonic_ns())?;
        maps.publish_set(compiled, values)?;
        self.state.published_slots = values.iter().map(|(slot, _)| *slot).collect();
        Ok(())
    }

    /// The current state compiled for the data path, with every rule's action. Interface names
    /// are looked up now, so a rule whose interface came back compiles again.
    fn compiled(&self) -> Result<(compile::Compiled, Vec<(u32, netfault_common::RuleValue)>)> {
        let ordered = self.state.ordered();
        let inputs: Vec<Input<'_>> = ordered
            .iter()
            .map(|r| Input {
                slot: r.slot,
                spec: &r.spec,
                ifindex: r.spec.iface.as_deref().and_then(kernel::ifindex),
            })
            .collect();
        let compiled = compile::compile(&inputs)?;
        let values = ordered
            .iter()
            .map(|r| (r.slot, compile::rule_value(&r.spec, r.expires_mono_ns)))
            .collect();
        Ok((compiled, values))
    }

    /// Adds rules (or partitions); all or nothing. Unless `protect` is false, the SSH connection
    /// the command runs over is protected first, in the same publish. Returns warnings for rules
    /// that cover a protected flow (protection wins there).
    pub fn add(
        &mut self,
        mut specs: Vec<RuleSpec>,
        ttl: Ttl,
        protect: bool,
    ) -> Result<Vec<String>> {
        if protect {
            specs.extend(self.ssh_protection());
        }
        self.add_inner(specs, ttl)
    }

    /// Pass entries for the SSH connection this command runs over, unless already there.
    fn ssh_protection(&self) -> Vec<RuleSpec> {
        let Some(specs) = ssh_from_env() else {
            return vec![];
        };
        let have = |n: &str| self.state.rules.iter().any(|r| r.spec.name == n);
        if specs.iter().all(|s| have(&s.name)) {
            return vec![];
        }
        specs
    }

    fn add_inner(&mut self, specs: Vec<RuleSpec>, ttl: Ttl) -> Result<Vec<String>> {
        self.install(specs.into_iter().map(|s| (s, ttl)).collect(), false)
    }

    /// Installs rules in one publish. With `replace`, every existing rule and partition (not
    /// protections) goes in the same step: the data path sees the old set or the new one.
    fn install(&mut self, specs: Vec<(RuleSpec, Ttl)>, replace: bool) -> Result<Vec<String>> {
        let now = monotonic_ns();
        self.prune_expired(now);
        let mut maps = self.maps()?;
        if replace {
            self.state.rules.retain(|r| r.spec.kind == Kind::Protect);
        }
        let mut seen = std::collections::HashSet::new();
        for (spec, _) in &specs {
            if spec.kind != Kind::Protect {
                spec.validate()?;
            }
            if let Some(i) = &spec.iface
                && kernel::ifindex(i).is_none()
            {
                return Err(SpecError::new(
                    "--iface",
                    format!("no interface named '{i}' in this namespace"),
                )
                .into());
            }
            if self.state.find(&spec.name).is_some() || !seen.insert(spec.name.clone()) {
                return Err(SpecError::new(
                    "NAME",
                    format!("a rule or partition named '{}' exists already", spec.name),
                )
                .into());
            }
        }
        let mut warnings = Vec::new();
        for (spec, _) in specs.iter().filter(|(s, _)| s.kind != Kind::Protect) {
            let guards = self
                .state
                .rules
                .iter()
                .map(|r| &r.spec)
                .chain(specs.iter().map(|(s, _)| s));
            // Loopback never crosses an attached interface in practice: no warning for it.
            let loopback = format!("{}/", protection::LOOPBACK);
            for p in guards.filter(|p| p.kind == Kind::Protect && !p.name.starts_with(&loopback)) {
                if compile::overlaps(spec, p) {
                    let label = p.name.split('/').next().unwrap_or(&p.name);
                    let w = format!(
                        "{} covers protected traffic ({label}): that traffic passes",
                        spec.name
                    );
                    if !warnings.contains(&w) {
                        warnings.push(w);
                    }
                }
            }
        }
        let mut new_slots = Vec::new();
        for (spec, ttl) in specs {
            let expires = match (spec.kind, ttl) {
                (Kind::Protect, _) | (_, Ttl::Never) => 0,
                (_, Ttl::For(d)) => now + d.as_nanos() as u64,
            };
            let slot = self.state.free_slot().ok_or_else(|| {
                Error::Other(format!(
                    "all {} rule slots are in use",
                    netfault_common::MAX_RULES
                ))
            })?;
            self.state.next_seq += 1;
            self.state.rules.push(RuleEntry {
                spec,
                slot,
                seq: self.state.next_seq,
                expires_mono_ns: expires,
            });
            new_slots.push(slot);
        }
        // Compile before any write, so a rule set that does not fit changes nothing.
        let (compiled, values) = self.compiled()?;
        for s in &new_slots {
            maps.reset_counters(*s)?;
        }
        self.publish_compiled(&mut maps, &compiled, &values)?;
        self.save()?;
        Ok(warnings)
    }

    /// Replaces the whole rule set (rules and partitions) in one step.
    pub fn apply(&mut self, specs: Vec<(RuleSpec, Ttl)>, protect: bool) -> Result<Vec<String>> {
        let mut specs = specs;
        if protect {
            for s in self.ssh_protection() {
                specs.push((s, Ttl::Never));
            }
        }
        self.install(specs, true)
    }

    /// Extends (or removes, with `Ttl::Never`) the lifetime of rules and partitions.
    pub fn renew(&mut self, names: &[String], ttl: Ttl) -> Result<()> {
        let now = monotonic_ns();
        for n in names {
            match self.state.rules.iter().find(|r| &r.spec.name == n) {
                Some(r) if r.spec.kind != Kind::Protect => {}
                _ => {
                    return Err(SpecError::new(
                        "NAME",
                        format!("no rule or partition named '{n}'"),
                    )
                    .into());
                }
            }
        }
        for r in self
            .state
            .rules
            .iter_mut()
            .filter(|r| names.contains(&r.spec.name))
        {
            r.expires_mono_ns = match ttl {
                Ttl::Never => 0,
                Ttl::For(d) => now + d.as_nanos() as u64,
            };
        }
        self.publish()?;
        self.save()
    }

    /// Protects endpoints (`CIDR[:PORT]`) from every rule and partition.
    pub fn protect(&mut self, endpoints: &[(ipnet::IpNet, Option<u16>)]) -> Result<Vec<String>> {
        let mut specs = Vec::new();
        let mut labels = Vec::new();
        for (net, port) in endpoints {
            let label = protection::label(net, *port);
            if self
                .state
                .rules
                .iter()
                .any(|r| r.spec.name.starts_with(&format!("{label}/")))
            {
                continue;
            }
            specs.extend(protection::endpoint(&label, *net, *port));
            labels.push(label);
        }
        self.add_inner(specs, Ttl::Never)?;
        Ok(labels)
    }

    /// Removes protections by label (as `protect list` shows them).
    pub fn unprotect(&mut self, labels: &[String]) -> Result<()> {
        for l in labels {
            if l == protection::LOOPBACK {
                return Err(SpecError::new("LABEL", "loopback is always protected").into());
            }
            if !self
                .state
                .rules
                .iter()
                .any(|r| r.spec.kind == Kind::Protect && r.spec.name.starts_with(&format!("{l}/")))
            {
                return Err(SpecError::new(
                    "LABEL",
                    format!("nothing protected as '{l}' (see `netfault protect list`)"),
                )
                .into());
            }
        }
        let _ = self.maps()?;
        self.state.rules.retain(|r| {
            r.spec.kind != Kind::Protect
                || !labels
                    .iter()
                    .any(|l| r.spec.name.starts_with(&format!("{l}/")))
        });
        self.publish()?;
        self.save()
    }

    /// Deletes rules or partitions by name (among `kinds`), or all of those kinds.
    pub fn delete(&mut self, names: &[String], kinds: &[Kind]) -> Result<Vec<String>> {
        let now = monotonic_ns();
        self.prune_expired(now);
        let _ = self.maps()?;
        let matches_kind = |r: &RuleEntry| kinds.contains(&r.spec.kind);
        let mut removed = Vec::new();
        if names.is_empty() {
            let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.state.rules)
                .into_iter()
                .partition(|r| matches_kind(r));
            self.state.rules = keep;
            removed.extend(gone.into_iter().map(|r| r.spec.name));
        } else {
            for n in names {
                if !self
                    .state
                    .rules
                    .iter()
                    .any(|r| &r.spec.name == n && matches_kind(r))
                {
                    let what = if kinds == [Kind::Partition] {
                        "partition"
                    } else {
                        "rule or partition"
                    };
                    return Err(SpecError::new("NAME", format!("no {what} named '{n}'")).into());
                }
            }
            self.state.rules.retain(|r| {
                if names.contains(&r.spec.name) && kinds.contains(&r.spec.kind) {
                    removed.push(r.spec.name.clone());
                    false
                } else {
                    true
                }
            });
        }
        self.publish()?;
        self.save()?;
        Ok(removed)
    }
}

/// One queue an interface needs for its delaying rules.
struct QueueNeed {
    iface: String,
    ifindex: u32,
    ingress: bool,
    need: qdisc::Need,
}

/// The queues the live rules need: per attached interface and direction, the longest delay any
/// rule there stamps (jitter's worst case and the rate's backlog included) and the rate the
/// traffic comes at (the link's, or the sum of the rules' `--rate` where every rule has one).
fn queue_needs(state: &State, now: u64) -> Vec<QueueNeed> {
    let mut out = Vec::new();
    for a in &state.attached {
        // Asked of the device only where some rule shapes: this runs on every publish.
        let mut link_info = None;
        for ingress in [false, true] {
            let rules: Vec<&RuleSpec> = state
                .rules
                .iter()
                .filter(|r| r.live(now))
                .map(|r| &r.spec)
                .filter(|s| s.kind == Kind::Rule && s.shape.is_some())
                .filter(|s| s.iface.as_ref().is_none_or(|i| i == &a.iface))
                .filter(|s| s.dir.includes(ingress))
                .collect();
            if rules.is_empty() {
                continue;
            }
            let (mtu, link) = *link_info.get_or_insert_with(|| qdisc::link_info(&a.iface));
            let max_delay_ns = rules
                .iter()
                .map(|s| {
                    s.shape.model().max_ns()
                        + s.shape
                            .rate
                            .map_or(0, |_| compile::RATE_QUEUE.as_nanos() as u64)
                })
                .max()
                .unwrap_or(0);
            let paced: Option<u64> = rules
                .iter()
                .map(|s| s.shape.rate.map(|r| r.bytes_per_sec * 8))
                .sum();
            let (rate_bits, rate_source) = match (paced, link) {
                (Some(p), Some(l)) if p < l => (p, "the sum of the rules' --rate"),
                (Some(p), None) if p < qdisc::ASSUMED_LINK_BITS => {
                    (p, "the sum of the rules' --rate")
                }
                (_, Some(l)) => (l, "the link's speed"),
                (_, None) => (
                    qdisc::ASSUMED_LINK_BITS,
                    "assumed: the device reports no speed",
                ),
            };
            out.push(QueueNeed {
                iface: a.iface.clone(),
                ifindex: a.ifindex,
                ingress,
                need: qdisc::Need {
                    max_delay: Duration::from_nanos(max_delay_ns),
                    rate_bits,
                    rate_source,
                    mtu,
                },
            });
        }
    }
    out
}

/// A change `reconcile_shaping` made, undone if a later step fails.
enum Undo {
    Fq(String),
    Ifb(String),
    IfbMap(u32),
    Mirred(String),
}

impl Undo {
    fn run(self, maps: &mut Maps) {
        let _ = match self {
            Undo::Fq(dev) => qdisc::remove_fq(&dev).map_err(Error::from),
            Undo::Ifb(name) => qdisc::remove_ifb(&name).map_err(Error::from),
            Undo::IfbMap(i) => maps.set_ifb(i, None).map_err(Error::from),
            Undo::Mirred(iface) => {
                qdisc::remove_mirred_filter(&iface);
                Ok(())
            }
        };
    }
}

/// Installs or grows the fq qdiscs (and IFB devices) the rules need. Sizes everything before
/// changing anything, so a delay that cannot be held changes nothing, and undoes what it did
/// (state included) if a later step fails; queues only grow here (detach removes them).
pub(crate) fn reconcile_shaping(
    state: &mut State,
    maps: &mut Maps,
    replace_foreign: bool,
    now: u64,
) -> Result<()> {
    let before = state.shaped.clone();
    let mut undo = Vec::new();
    let res = grow_queues(state, maps, replace_foreign, now, &mut undo);
    if res.is_err() {
        for u in undo.into_iter().rev() {
            u.run(maps);
        }
        state.shaped = before;
    }
    res
}

fn grow_queues(
    state: &mut State,
    maps: &mut Maps,
    replace_foreign: bool,
    now: u64,
    undo: &mut Vec<Undo>,
) -> Result<()> {
    let needs = queue_needs(state, now);
    if needs.is_empty() {
        return Ok(());
    }
    let mem = qdisc::mem_total();
    let mut sized = Vec::new();
    for n in needs {
        let size = qdisc::size(&n.iface, &n.need, mem)?;
        sized.push((n, size));
    }
    for (n, size) in sized {
        let pos = match state.shaped.iter().position(|s| s.iface == n.iface) {
            Some(p) => p,
            None => {
                state.shaped.push(qdisc::Shaped {
                    iface: n.iface.clone(),
                    ifindex: n.ifindex,
                    egress: None,
                    ifb: None,
                    replaced: None,
                });
                state.shaped.len() - 1
            }
        };
        let sh = &mut state.shaped[pos];
        if !n.ingress {
            let want = sh.egress.map_or(size, |c| c.max(&size));
            if sh.egress.is_some_and(|c| c.covers(&size))
                && qdisc::root(&n.iface).is_ok_and(|r| r.is_ours())
            {
                continue;
            }
            if let Some(prev) = qdisc::ensure_fq(&n.iface, &want, replace_foreign)? {
                undo.push(Undo::Fq(n.iface.clone()));
                if !prev.is_default() {
                    sh.replaced = Some(format!("{} {}", prev.kind, prev.handle));
                }
            }
            sh.egress = Some(want);
        } else {
            let name = qdisc::ifb_name(n.ifindex);
            let existed = kernel::ifindex(&name).is_some();
            let ifb_index = qdisc::ensure_ifb(&name)?;
            if !existed {
                undo.push(Undo::Ifb(name.clone()));
            }
            let want = sh.ifb.as_ref().map_or(size, |i| i.fq.max(&size));
            if !sh.ifb.as_ref().is_some_and(|i| i.fq.covers(&size))
                || !qdisc::root(&name).is_ok_and(|r| r.is_ours())
            {
                // The IFB device is netfault's: whatever root it has may go.
                qdisc::ensure_fq(&name, &want, true)?;
            }
            let mirred = !qdisc::bpf_redirect_to_ifb_works();
            if sh.ifb.as_ref().map(|i| i.ifindex) != Some(ifb_index) {
                if mirred {
                    qdisc::ensure_mirred_filter(&n.iface, &name)?;
                    undo.push(Undo::Mirred(n.iface.clone()));
                }
                let value = ifb_index | if mirred { IFB_VIA_MIRRED } else { 0 };
                maps.set_ifb(n.ifindex, Some(value))?;
                undo.push(Undo::IfbMap(n.ifindex));
            }
            sh.ifb = Some(qdisc::Ifb {
                name,
                ifindex: ifb_index,
                fq: want,
                mirred,
            });
        }
    }
    Ok(())
}

/// Takes away what netfault installed on one interface: its fq (the kernel's default comes
/// back) and its IFB device.
pub(crate) fn unshape(sh: &qdisc::Shaped) -> Result<()> {
    if sh.egress.is_some() {
        qdisc::remove_fq(&sh.iface)?;
    }
    if let Some(i) = &sh.ifb {
        if i.mirred {
            qdisc::remove_mirred_filter(&sh.iface);
        }
        qdisc::remove_ifb(&i.name)?;
    }
    Ok(())
}

/// Pass entries for the 4-tuple in SSH_CONNECTION, both directions, if it is set.
pub fn ssh_from_env() -> Option<Vec<RuleSpec>> {
    let (c, cp, sv, sp) = std::env::var("SSH_CONNECTION")
        .ok()
        .as_deref()
        .and_then(crate::spec::parse_ssh_connection)?;
    Some(protection::ssh(&format!("ssh:{c}:{cp}"), c, cp, sv, sp))
}

/// One rule's counters, as `stats --json` prints them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterView {
    pub matched: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub passed: u64,
    pub bytes: u64,
    /// Given a departure time in the future.
    #[serde(default)]
    pub delayed: u64,
    /// Dropped because the rule's rate backlog was full (not by --drop).
    #[serde(default)]
    pub queue_dropped: u64,
}

impl From<Counters> for CounterView {
    fn from(c: Counters) -> Self {
        Self {
            matched: c.matched,
            dropped: c.dropped,
            duplicated: c.duplicated,
            passed: c.passed,
            bytes: c.bytes,
            delayed: c.delayed,
            queue_dropped: c.queue_dropped,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatView {
    pub name: String,
    pub kind: Kind,
    pub counters: CounterView,
    /// Milliseconds until expiry; null: never expires.
    pub expires_in_ms: Option<u64>,
    pub expired: bool,
}

pub fn ttl_left(r: &RuleEntry, now: u64) -> (Option<u64>, bool) {
    if r.expires_mono_ns == 0 {
        (None, false)
    } else {
        let left = r.expires_mono_ns.saturating_sub(now) / 1_000_000;
        (Some(left), r.expires_mono_ns <= now)
    }
}

/// Reads the state without taking the lock (the file is replaced atomically).
pub fn read_state(netns_name: Option<&str>) -> Result<(Paths, State)> {
    check_privileges()?;
    let key =
        netns::state_key(netns_name).map_err(|e| Error::Other(format!("netns identity: {e}")))?;
    let paths = Paths::new(&key);
    let mut state: State = match std::fs::read(paths.state_file()) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| StateError::Corrupt(paths.state_file().display().to_string(), e))?,
        Err(_) => State::default(),
    };
    // State of a namespace that was deleted and made anew under the same name describes
    // nothing that exists: show nothing (the next change resets it).
    let cookie = netns::cookie().map_err(|e| Error::Other(format!("netns cookie: {e}")))?;
    if state.netns_cookie != 0 && state.netns_cookie != cookie {
        log::warn!("state for '{key}' belongs to a namespace that no longer exists");
        state = State::default();
    }
    Ok((paths, state))
}

pub fn stats(paths: &Paths, state: &State) -> Result<Vec<StatView>> {
    if state.attached.is_empty() {
        return Err(Error::NotAttached);
    }
    let maps = Maps::open(&paths.maps())?;
    let now = monotonic_ns();
    state
        .ordered()
        .into_iter()
        .map(|r| {
            let (left, expired) = ttl_left(r, now);
            Ok(StatView {
                name: r.spec.name.clone(),
                kind: r.spec.kind,
                counters: maps.counters(r.slot)?.into(),
                expires_in_ms: left,
                expired,
            })
        })
        .collect()
}
