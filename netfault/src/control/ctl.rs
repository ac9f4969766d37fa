//! The controller's operations on one namespace: attach, detach, rules, partitions, counters.
//!
//! Every mutating operation validates and compiles the complete new rule set before it touches
//! the kernel, and publishes it in one generation flip: bad input changes nothing.
use std::time::Duration;

use aya::programs::XdpMode;

use super::{
    Error, Result, features, hooks, monotonic_ns, operator, pipeline,
    privileges::check_privileges,
    shaping::{self, unshape},
};
use crate::{
    compile::{self},
    control::netns,
    control::state::{Attachment, Locked, Paths, RuleEntry, State},
    dataplane::{self as kernel, HookKind, Maps},
    spec::{
        Kind, RuleSpec, SpecError, Ttl,
        protection::{self},
    },
};

/// How long a command waits for another one on the same namespace; NETFAULT_LOCK_WAIT
/// (`500ms`, `1m`) overrides it.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Whether this open of a fan-out sweeps: none has in the last second in this process, and
/// none is sweeping now (that one's sweep serves this open too).
fn sweep_due() -> bool {
    use std::{sync::Mutex, time::Instant};
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let Ok(mut last) = LAST.try_lock() else {
        return false;
    };
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

fn lock_wait() -> Duration {
    std::env::var("NETFAULT_LOCK_WAIT")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(LOCK_WAIT)
}

/// Takes over the state an older netfault kept under the namespace's name (`netns-NAME`),
/// when it describes this namespace (same cookie): its pins and state file move to this key.
/// Best effort: whatever is left there, `attach` refuses to double up on (`others`).
fn adopt_legacy(lock: &Locked, name: &str, cookie: u64) {
    let old = Paths::new(&format!("netns-{name}"));
    if !old.state_file().exists() {
        return;
    }
    let Ok(held) = Locked::acquire(old.clone(), Duration::ZERO) else {
        return;
    };
    let new = &lock.paths;
    if held.load().ok().map(|s| s.netns_cookie) != Some(cookie) || new.pins.exists() {
        return;
    }
    let moved = if old.pins.exists() {
        std::fs::rename(&old.pins, &new.pins)
    } else {
        Ok(())
    }
    .and_then(|()| std::fs::rename(old.state_file(), new.state_file()));
    match moved {
        Ok(()) => log::info!(
            "took over the state {} kept for '{name}' as {}",
            old.run.display(),
            new.key
        ),
        Err(e) => log::warn!("take over the state {}: {e}", old.run.display()),
    }
}

/// A locked, loaded namespace.
pub struct Ctl {
    lock: Locked,
    pub state: State,
    /// Things the operator should know that are not errors (fallbacks), for stderr.
    pub warnings: Vec<String>,
    /// What the operator should know that is neither an error nor a warning (which SSH
    /// connection was found and protected), for stderr.
    pub notes: Vec<String>,
    /// Delay and rate may replace a root qdisc another tool installed.
    pub replace_qdisc: bool,
    /// Last: bpffs stays mounted until the lock and everything else are gone.
    _bpffs: kernel::Bpffs,
}

impl Ctl {
    /// Locks the current namespace's state. Call after entering the namespace. `netns_name`
    /// (`--netns NAME`) is only shown: the state is the namespace's however it was reached.
    pub fn open(netns_name: Option<&str>) -> Result<Self> {
        Self::open_with(netns_name, false)
    }

    /// [`Ctl::open`] for a process that opens states again and again: many namespaces' at once
    /// (a cluster's netns nodes, each on a thread), or its own on every request (the agent).
    /// The states of namespaces that are gone are swept by the first open, and again at most
    /// once a second, instead of by every open (each sweep reads every other namespace's
    /// state: N² reads per cluster change).
    pub fn open_in_fanout(netns_name: Option<&str>) -> Result<Self> {
        Self::open_with(netns_name, true)
    }

    fn open_with(netns_name: Option<&str>, shared_sweep: bool) -> Result<Self> {
        check_privileges()?;
        let bpffs = kernel::ensure_bpffs()?;
        let key = netns::state_key().map_err(Error::NetnsIdentity)?;
        if !shared_sweep || sweep_due() {
            for gone in super::others::sweep_gone(&key) {
                log::info!("{gone}");
            }
        }
        let name = netns::display_name(netns_name);
        let lock = Locked::acquire(Paths::new(&key), lock_wait())?;
        let cookie = netns::cookie().map_err(Error::NetnsCookie)?;
        if !lock.paths.state_file().exists()
            && let Some(n) = &name
        {
            adopt_legacy(&lock, n, cookie);
        }
        let mut state = lock.load()?;
        if state.netns_cookie != 0 && state.netns_cookie != cookie {
            // The namespace of that name was deleted and made anew: its programs died with it.
            log::warn!(
                "state for '{key}' belongs to a namespace that no longer exists; starting afresh"
            );
            kernel::remove_pins(&lock.paths.pins)?;
            state = State::default();
        }
        state.netns_cookie = cookie;
        state.netns_file = netns::ns_id(netns::THIS.as_ref());
        state.netns_name = name;
        Ok(Self {
            lock,
            state,
            warnings: Vec::new(),
            notes: Vec::new(),
            replace_qdisc: false,
            _bpffs: bpffs,
        })
    }

    pub fn paths(&self) -> &Paths {
        &self.lock.paths
    }

    fn maps(&self) -> Result<Maps> {
        if self.state.attached.is_empty() || !self.paths().maps().exists() {
            return Err(Error::NotAttached);
        }
        Ok(Maps::open(&self.paths().maps())?.with_flow_index(self.paths().run.clone()))
    }

    fn save(&self) -> Result<()> {
        Ok(self.lock.save(&self.state)?)
    }

    /// Is `iface` attached, with every hook still in place, so that [`attach`](Self::attach)
    /// would leave it alone?
    pub fn is_attached(&self, iface: &str) -> bool {
        let Some(idx) = kernel::ifindex(iface) else {
            return false;
        };
        self.state
            .attached
            .iter()
            .find(|a| a.iface == iface)
            .is_some_and(|a| self.alive(a, idx))
    }

    /// `a` is still the interface `idx` and its links are all pinned and live.
    fn alive(&self, a: &Attachment, idx: u32) -> bool {
        a.ifindex == idx
            && a.hooks.iter().all(|h| {
                matches!(h.kind, HookKind::Clsact | HookKind::TcFallback)
                    || kernel::link_alive(&self.paths().links().join(h.hook.pin_name(&a.iface)))
            })
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
                if self.alive(&self.state.attached[pos], idx) {
                    report.push(format!("{iface}: already attached"));
                    continue;
                }
                // The interface was deleted and made anew under the same name.
                let _ = kernel::detach_all(
                    &iface,
                    &self.state.attached[pos].hooks,
                    Some(&self.paths().links()),
                );
                self.state.attached.remove(pos);
            }
            // One namespace, one netfault: programs another state holds (an older layout's,
            // another key's) would run before or after ours with rules of their own.
            if let Some(msg) = super::others::foreign_programs(&iface, idx, self.paths()) {
                return Err(Error::HeldByAnother(msg));
            }
            let loaded = match ebpf {
                Some(ref mut e) => e,
                None => {
                    let mut e = kernel::load(&self.paths().maps())?;
                    kernel::verify_programs(&mut e)?;
                    ebpf.insert(e)
                }
            };
            // XDP where the device and the rules call for it (see control::hooks); a virtual
            // device without it is marked tc-only before its tc hooks see a packet.
            let device = hooks::apply::device_kind(idx);
            let forced_xdp = xdp_mode.map(hooks::ForcedXdp::from_mode);
            let choice = hooks::choose(
                &device,
                forced_xdp,
                &iface,
                self.state.ordered(),
                monotonic_ns(),
            );
            let plan = if choice.xdp {
                kernel::XdpPlan::from_mode(xdp_mode)
            } else {
                Maps::open(&self.paths().maps())?.set_tc_only(idx, true)?;
                kernel::XdpPlan::Skip
            };
            let mut hooks = match kernel::attach_with(loaded, &iface, &self.paths().links(), plan) {
                Ok(h) => h,
                Err(e) => {
                    let _ = Maps::open(&self.paths().maps())
                        .and_then(|mut m| m.set_tc_only(idx, false));
                    return Err(e.into());
                }
            };
            if !choice.xdp {
                hooks.extend(hooks::apply::held_elsewhere(&iface));
            }
            let mut how: Vec<String> = hooks.iter().map(ToString::to_string).collect();
            if !choice.xdp {
                how.push(format!(
                    "no XDP on this {device} device until a drop rule needs it"
                ));
            }
            report.push(format!("{iface}: attached ({})", how.join(", ")));
            if hooks.iter().any(|h| h.kind == HookKind::TcFallback) {
                Maps::open(&self.paths().maps())?.set_tc_only(idx, true)?;
            }
            for note in hooks.iter().filter_map(|h| h.note.as_ref()) {
                self.warnings
                    .push(hooks::apply::fallback_warning(note, &iface));
            }
            self.state.attached.push(Attachment {
                iface,
                ifindex: idx,
                hooks,
                device: Some(device),
                forced_xdp,
                choice: Some(choice),
            });
            self.save()?;
        }
        // Loaded and verified once here: later changes link these pins (XDP on a virtual
        // device, the segmenting classifier) instead of loading the object again.
        if let Some(e) = ebpf.as_mut() {
            kernel::pin_programs(e, &self.paths().progs())?;
        }
        // Loopback is always protected; rules bound to an interface that has just (re)appeared
        // compile now.
        if ebpf.is_some() {
            let lo = pipeline::protections(Vec::new(), |n| self.state.find(n).is_some());
            if lo.is_empty() {
                self.publish()?;
            } else {
                self.add_inner(lo, Ttl::Never)?;
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
            if let Err(e) = features::restore(&mut self.state.wire, None) {
                log::warn!("put back the offload settings: {e}");
            }
            kernel::remove_pins(&self.paths().pins)?;
            self.lock.remove()?;
            // The pin root goes too once no namespace uses it: nothing of ours stays behind.
            let _ = std::fs::remove_dir(crate::control::state::PIN_ROOT);
            return Ok(report);
        }
        // All named ones first: bad input changes nothing.
        if let Some(i) = ifaces
            .iter()
            .find(|i| !self.state.attached.iter().any(|a| &a.iface == *i))
        {
            return Err(Error::IfaceNotAttached { iface: i.clone() });
        }
        for i in ifaces {
            let Some(pos) = self.state.attached.iter().position(|a| &a.iface == i) else {
                continue; // named twice
            };
            let a = self.state.attached.remove(pos);
            kernel::detach_all(&a.iface, &a.hooks, Some(&self.paths().links()))?;
            if let Some(p) = self.state.shaped.iter().position(|s| s.iface == a.iface) {
                let sh = self.state.shaped.remove(p);
                if sh.ifb.is_some() {
                    Maps::open(&self.paths().maps())?.set_ifb(sh.ifindex, None)?;
                }
                unshape(&sh)?;
            }
            // Marked where tc stood in for XDP (another program's, or none by choice).
            let mut maps = Maps::open(&self.paths().maps())?;
            maps.set_tc_only(a.ifindex, false)?;
            // The socket-delivery hook acts on the remaining interfaces only.
            let left: Vec<u32> = self.state.attached.iter().map(|a| a.ifindex).collect();
            maps.set_ifaces(&left)?;
            if let Err(e) = features::restore(&mut self.state.wire, Some(&a.iface)) {
                log::warn!("{i}: put back the offload settings: {e}");
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
        // One clock reading and one evaluation order for every step of this publish: the
        // offloads tuned for XDP are those of the XDP the hooks step then adds.
        let now = monotonic_ns();
        let devices = self.state.devices();
        shaping::reconcile(
            &devices,
            &self.state.rules,
            &mut self.state.shaped,
            maps,
            self.replace_qdisc,
            now,
        )?;
        // Wire packets before a probability applies (segmented at egress, GRO off at tc
        // ingress), the old settings back after the last rule that needed them is gone
        // (features.rs).
        let ordered = pipeline::ordered(&self.state.rules);
        let xdp = self.xdp_frames(&ordered, now);
        let (maps_dir, progs) = (self.lock.paths.maps(), self.lock.paths.progs());
        // The segmenting classifier `attach` pinned (it reads no map).
        let mut segment_prog = || -> Result<aya::programs::ProgramFd> {
            Ok(kernel::segment_program_pinned(
                &progs.join(kernel::PINNED_SEGMENT),
                &maps_dir,
            )?)
        };
        let added = features::tune(
            &devices,
            &self.state.rules,
            &mut self.state.wire,
            now,
            &xdp,
            &mut segment_prog,
        )?;
        // cgroup entries at ingress: the socket-delivery hook on their cgroups first.
        let linked =
            hooks::socket::prepare(&self.state.attached, &ordered, maps, &self.lock.paths, now);
        match linked {
            Ok(w) => self.warnings.extend(w),
            Err(e) => {
                features::undo(&added, &mut self.state.wire);
                return Err(e);
            }
        }
        if let Err(e) = maps.publish_set(compiled, values) {
            features::undo(&added, &mut self.state.wire);
            return Err(e.into());
        }
        self.state.published_slots = values.iter().map(|(slot, _)| *slot).collect();
        // Published already: a setting that cannot be put back now stays recorded, and the
        // next command (or the reaper) tries again.
        if let Err(e) =
            features::release(&devices, &self.state.rules, &mut self.state.wire, now, &xdp)
        {
            log::warn!("put back the offload settings: {e}");
        }
        // XDP comes and goes with the rules that need it (virtual devices).
        let w = hooks::apply::reconcile(
            &mut self.state.attached,
            &ordered,
            maps,
            &self.lock.paths,
            now,
        )?;
        self.warnings.extend(w);
        hooks::socket::release(&ordered, &self.lock.paths, now)?;
        Ok(())
    }

    /// Puts back the offload settings no live rule needs any more (rules that expired since
    /// the last command: the data path ended them with no netfault process running), and
    /// says when to look again: the earliest expiry of a rule that still needs them. None:
    /// nothing recorded, or nothing that needs it expires (the command that deletes it puts
    /// the settings back).
    pub fn reconcile_offloads(&mut self) -> Result<Option<u64>> {
        if self.state.wire.is_empty() {
            return Ok(None);
        }
        let now = monotonic_ns();
        self.prune_expired(now);
        let devices = self.state.devices();
        let xdp = self.xdp_frames(&pipeline::ordered(&self.state.rules), now);
        let res = features::release(&devices, &self.state.rules, &mut self.state.wire, now, &xdp);
        self.save()?;
        res?;
        Ok(features::due(&self.state.wire, &self.state.rules, now))
    }

    /// Whether netfault's native XDP program applies ingress drops on an interface (it sees
    /// wire frames there; generic XDP runs after GRO), with the rules `ordered` at `now`.
    fn xdp_frames(&self, ordered: &[&RuleEntry], now: u64) -> impl Fn(&str) -> bool + use<> {
        // Native XDP there now, or the XDP hook choice adds for these rules after the publish
        // (virtual devices; native unless generic was forced or another program holds XDP).
        let native: Vec<String> = self
            .state
            .attached
            .iter()
            .filter(|a| {
                a.hooks.iter().any(|h| h.kind == HookKind::XdpNative) || {
                    let c = a.choose(ordered.iter().copied(), now);
                    c.xdp && c.forced != Some(hooks::ForcedXdp::Generic) && !a.xdp_held_elsewhere()
                }
            })
            .map(|a| a.iface.clone())
            .collect();
        move |i: &str| native.iter().any(|n| n == i)
    }

    /// The current state compiled for the data path, each rule with its own expiry.
    fn compiled(&self) -> Result<(compile::Compiled, Vec<(u32, netfault_common::RuleValue)>)> {
        pipeline::compile(&self.state.ordered(), |r| r.expires_mono_ns)
    }

    /// Adds rules (or partitions); all or nothing. Unless `protect` is false, the SSH connection
    /// the command runs over is protected first, in the same publish (refused if it runs under
    /// sshd but that connection is not found: control::operator). Returns warnings for rules
    /// that cover a protected flow (protection wins there).
    pub fn add(
        &mut self,
        mut specs: Vec<RuleSpec>,
        ttl: Ttl,
        protect: bool,
    ) -> Result<Vec<String>> {
        let ssh = self.operator(protect, &specs)?;
        self.notes.extend(cgroup_ingress_notes(&specs));
        specs.extend(self.missing_protections(ssh));
        self.add_inner(specs, ttl)
    }

    /// With `protect`, the pass entries for the SSH connection this command runs over, looked
    /// for now (control::operator); refused when that connection is not found and `specs`
    /// could cut it.
    fn operator<'a>(
        &mut self,
        protect: bool,
        specs: impl IntoIterator<Item = &'a RuleSpec>,
    ) -> Result<Vec<RuleSpec>> {
        if !protect {
            return Ok(Vec::new());
        }
        let op = operator::find();
        let ssh = operator::guard(&op, specs)?;
        self.notes.extend(op.note());
        Ok(ssh)
    }

    /// Loopback, and `ssh` (the SSH connection this command runs over), unless there.
    fn missing_protections(&self, ssh: Vec<RuleSpec>) -> Vec<RuleSpec> {
        pipeline::protections(ssh, |n| self.state.find(n).is_some())
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
        pipeline::check_new(specs.iter().map(|(s, _)| s), |n| {
            self.state.find(n).is_some()
        })?;
        let all: Vec<&RuleSpec> = self
            .state
            .rules
            .iter()
            .map(|r| &r.spec)
            .chain(specs.iter().map(|(s, _)| s))
            .collect();
        let warnings = pipeline::coverage_warnings(specs.iter().map(|(s, _)| s), &all);
        let mut new_slots = Vec::new();
        for (spec, ttl) in specs {
            let expires = pipeline::expiry(spec.kind, ttl, now);
            let hold_until = pipeline::hold_end(&spec, now);
            let slot = self.state.free_slot().ok_or(Error::RuleSlotsFull {
                max: netfault_common::MAX_RULES as usize,
            })?;
            self.state.next_seq += 1;
            self.state.rules.push(RuleEntry {
                spec,
                slot,
                seq: self.state.next_seq,
                expires_mono_ns: expires,
                hold_until_mono_ns: hold_until,
            });
            new_slots.push(slot);
        }
        // Compile before any write, so a rule set that does not fit changes nothing.
        let (compiled, values) = self.compiled()?;
        for s in &new_slots {
            maps.reset_counters(*s)?;
        }
        let seen = self.warnings.len();
        self.publish_compiled(&mut maps, &compiled, &values)?;
        self.save()?;
        let mut warnings = warnings;
        warnings.extend(self.warnings[seen..].iter().cloned());
        Ok(warnings)
    }

    /// Replaces the whole rule set (rules and partitions) in one step.
    pub fn apply(&mut self, specs: Vec<(RuleSpec, Ttl)>, protect: bool) -> Result<Vec<String>> {
        let mut specs = specs;
        let ssh = self.operator(protect, specs.iter().map(|(s, _)| s))?;
        self.notes
            .extend(cgroup_ingress_notes(specs.iter().map(|(s, _)| s)));
        for s in self.missing_protections(ssh) {
            specs.push((s, Ttl::Never));
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
            r.expires_mono_ns = pipeline::expiry(r.spec.kind, ttl, now);
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
    /// A named entry that has expired is still there to delete (and reported deleted): a
    /// caller clearing names it is about to reuse learns what it removed.
    pub fn delete(&mut self, names: &[String], kinds: &[Kind]) -> Result<Vec<String>> {
        let now = monotonic_ns();
        if names.is_empty() {
            self.prune_expired(now);
        }
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
            self.prune_expired(now);
        }
        self.publish()?;
        self.save()?;
        Ok(removed)
    }
}

/// What an entry matching a cgroup at ingress cannot do to a flow's first packet, said when
/// it is given (README: Cgroups as targets): tc ingress knows a flow's socket only once it
/// has seen it (a packet sent, or one delivered), and the socket-delivery hook that meets the
/// first one can only drop it. Nothing to say for drops and partitions.
fn cgroup_ingress_notes<'a>(specs: impl IntoIterator<Item = &'a RuleSpec>) -> Vec<String> {
    specs
        .into_iter()
        .filter(|s| s.cgroup.is_some() && s.dir.includes(true))
        .filter_map(|s| {
            let mut late = Vec::new();
            if s.act.reject.is_some() {
                late.push("reject replies");
            }
            if s.act.duplicate.threshold() != 0 {
                late.push("duplicates");
            }
            if s.act.corrupt.threshold() != 0 {
                late.push("corruption");
            }
            (!late.is_empty()).then(|| {
                format!(
                    "{}: at ingress, the first packet of a flow a socket of the cgroup has not sent on yet (a SYN to its listener, a datagram to a socket that only receives) is met at the socket, where it can only be dropped; {} start at ingress with the flow's next packet",
                    s.name,
                    late.join(" and ")
                )
            })
        })
        .collect()
}
