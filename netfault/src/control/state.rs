//! The controller's persistent state for one namespace: attached interfaces and the rule set.
//!
//! Kernel objects live under `/sys/fs/bpf/netfault/<key>/` (maps/, links/, progs/); this file under
//! `/run/netfault/<key>/`. Both vanish on reboot, together. A lock serialises commands. The key
//! is the namespace's identity (`control::netns::state_key`), however it was named.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Seek as _, Write as _},
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{dataplane::HookState, spec::RuleSpec};

pub const PIN_ROOT: &str = "/sys/fs/bpf/netfault";
pub const RUN_ROOT: &str = "/run/netfault";

#[derive(Debug, Clone)]
pub struct Paths {
    pub key: String,
    pub pins: PathBuf,
    pub run: PathBuf,
}

impl Paths {
    pub fn new(key: &str) -> Self {
        Self {
            key: key.into(),
            pins: PathBuf::from(PIN_ROOT).join(key),
            run: PathBuf::from(RUN_ROOT).join(key),
        }
    }
    pub fn maps(&self) -> PathBuf {
        self.pins.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.pins.join("links")
    }
    /// Programs `attach` loaded and pinned, for changes to link without loading them again.
    pub fn progs(&self) -> PathBuf {
        self.pins.join("progs")
    }
    pub fn state_file(&self) -> PathBuf {
        self.run.join("state.json")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.run.join("lock")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub hooks: Vec<HookState>,
    /// The device's kind, read at attach. None in state written before hooks were chosen:
    /// such an attachment has XDP for good, as on a physical NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::control::hooks::DeviceKind>,
    /// The XDP mode `attach --xdp-mode` demanded: XDP stays for as long as this is attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_xdp: Option<crate::control::hooks::ForcedXdp>,
    /// The hook choice last applied (what `status` explains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<crate::control::hooks::Choice>,
}

impl Attachment {
    /// The device kind hook choice goes by (physical where it was never read).
    pub fn device_kind(&self) -> crate::control::hooks::DeviceKind {
        self.device
            .clone()
            .unwrap_or(crate::control::hooks::DeviceKind::Physical)
    }

    /// The XDP hook netfault holds here (native or generic), if any.
    pub fn xdp_hook(&self) -> Option<&HookState> {
        self.hooks.iter().find(|h| {
            h.hook == crate::dataplane::Hook::XdpIngress
                && matches!(
                    h.kind,
                    crate::dataplane::HookKind::XdpNative | crate::dataplane::HookKind::XdpGeneric
                )
        })
    }

    /// Another program holds XDP here: tc ingress stands in (recorded at attach or when XDP
    /// was wanted).
    pub fn xdp_held_elsewhere(&self) -> bool {
        self.hooks
            .iter()
            .any(|h| h.kind == crate::dataplane::HookKind::TcFallback)
    }

    /// What hooks this device should have with `rules` at `now`.
    pub fn choose<'a>(
        &self,
        rules: impl IntoIterator<Item = &'a RuleEntry>,
        now: u64,
    ) -> crate::control::hooks::Choice {
        crate::control::hooks::choose(
            &self.device_kind(),
            self.forced_xdp,
            &self.iface,
            rules,
            now,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleEntry {
    pub spec: RuleSpec,
    pub slot: u32,
    pub seq: u64,
    /// CLOCK_MONOTONIC ns after which the data path passes traffic; 0: never.
    pub expires_mono_ns: u64,
    /// CLOCK_MONOTONIC ns at which the rule's hold ends (`--hold`, counted from when the rule
    /// was installed); 0: no hold.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hold_until_mono_ns: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl RuleEntry {
    /// Not expired at `now` (CLOCK_MONOTONIC ns).
    pub fn live(&self, now: u64) -> bool {
        self.expires_mono_ns == 0 || self.expires_mono_ns > now
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub netns_cookie: u64,
    /// The namespace file's device and inode when the state was last opened: where to look
    /// for the namespace, to tell whether it still exists (`control::gone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_file: Option<(u64, u64)>,
    /// How the namespace was last named (`--netns NAME`, its name under /run/netns, `host`),
    /// for people: the state is keyed by the namespace's identity, not by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<String>,
    pub attached: Vec<Attachment>,
    pub rules: Vec<RuleEntry>,
    pub next_seq: u64,
    /// Slots the generation the data path reads refers to. A new rule never takes one: its
    /// counters and rate state (per slot, shared by both generations) are reset when it is
    /// added, which would change a live rule's before the flip. (Its action is per generation.)
    #[serde(default)]
    pub published_slots: Vec<u32>,
    /// fq qdiscs and IFB devices netfault installed for delay and rate.
    #[serde(default)]
    pub shaped: Vec<crate::control::queues::Shaped>,
    /// Segment limits and receive offloads netfault changed so that probabilities apply per
    /// wire packet (`control::features`), put back when no rule needs them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wire: Vec<crate::control::features::Tuned>,
}

impl State {
    /// Rules in evaluation order: by band, then priority, then age.
    pub fn ordered(&self) -> Vec<&RuleEntry> {
        super::pipeline::ordered(&self.rules)
    }

    /// The attached interfaces, as the queue planner takes them.
    pub fn devices(&self) -> Vec<super::shaping::Device> {
        self.attached
            .iter()
            .map(|a| (a.iface.clone(), a.ifindex))
            .collect()
    }

    pub fn find(&self, name: &str) -> Option<&RuleEntry> {
        self.rules.iter().find(|r| r.spec.name == name)
    }

    /// Lowest slot no rule uses and the live generation does not refer to.
    pub fn free_slot(&self) -> Option<u32> {
        let used: std::collections::HashSet<u32> = self
            .rules
            .iter()
            .map(|r| r.slot)
            .chain(self.published_slots.iter().copied())
            .collect();
        (0..netfault_common::MAX_RULES).find(|s| !used.contains(s))
    }
}

/// An exclusive lock on one namespace's state, held for the life of a command.
pub struct Locked {
    /// Held open for the flock; closing it releases the lock. Holds the holder's identity
    /// while locked, nothing after.
    file: File,
    pub paths: Paths,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "another netfault command holds the lock for this namespace ({holder}); waited {waited:?}"
    )]
    Busy { holder: String, waited: Duration },
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error("state file {0} is corrupt: {1}")]
    Corrupt(String, serde_json::Error),
}

impl Locked {
    /// Takes the lock, waiting at most `wait`.
    pub fn acquire(paths: Paths, wait: Duration) -> Result<Self, StateError> {
        fs::create_dir_all(&paths.run)
            .map_err(|e| StateError::Io(format!("create {}", paths.run.display()), e))?;
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(paths.lock_file())
                .map_err(|e| StateError::Io("open lock file".into(), e))
        };
        let mut file = open()?;
        let start = Instant::now();
        loop {
            // SAFETY: fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                // The holder before us may have removed the file (see Drop): a lock on an
                // unlinked file excludes nobody, so take the lock on the file that is there now.
                if same_file(&file, &paths.lock_file()) {
                    break;
                }
                file = open()?;
                continue;
            }
            if start.elapsed() >= wait {
                return Err(StateError::Busy {
                    holder: holder(&paths.lock_file()),
                    waited: wait,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Who holds it, for a command that finds it busy: truncate first, so nothing of an
        // earlier holder's text survives.
        let me = format!(
            "pid {}: {}",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        // Not fatal: the lock is ours either way; a busy message then names no holder.
        if let Err(e) = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|_| file.write_all(me.as_bytes()))
        {
            log::warn!(
                "cannot name this process in {}: {e}",
                paths.lock_file().display()
            );
        }
        Ok(Self { file, paths })
    }

    /// Reads the state; `None` when there is none (never attached here).
    pub fn load(&self) -> Result<State, StateError> {
        let p = self.paths.state_file();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StateError::Corrupt(p.display().to_string(), e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(StateError::Io(format!("read {}", p.display()), e)),
        }
    }

    /// Writes atomically (temp file + rename).
    pub fn save(&self, s: &State) -> Result<(), StateError> {
        let p = self.paths.state_file();
        let tmp = p.with_extension("json.tmp");
        let b = serde_json::to_vec_pretty(s)
            .map_err(|e| StateError::Io(format!("encode {}", p.display()), io::Error::other(e)))?;
        fs::write(&tmp, b).map_err(|e| StateError::Io(format!("write {}", tmp.display()), e))?;
        fs::rename(&tmp, &p).map_err(|e| StateError::Io(format!("rename {}", p.display()), e))
    }

    /// Forgets this namespace entirely (after everything was detached).
    pub fn remove(self) -> Result<(), StateError> {
        let _ = fs::remove_file(self.paths.state_file());
        Ok(()) // Drop removes the lock, the flow indexes and the directory
    }
}

impl Drop for Locked {
    /// A namespace with no state keeps no directory: a failed command leaves nothing behind.
    /// The lock file goes while we still hold the lock; a waiter notices (`same_file`).
    fn drop(&mut self) {
        if !self.paths.state_file().exists() {
            // The maps' flow indexes describe maps that go with the state (detach).
            crate::dataplane::flow_index::remove_all(&self.paths.run);
            let _ = fs::remove_file(self.paths.lock_file());
            let _ = fs::remove_dir(&self.paths.run);
            let _ = fs::remove_dir(RUN_ROOT);
        } else {
            // The file stays for the next command: it names no holder while nobody holds it.
            let _ = self.file.set_len(0);
        }
    }
}

/// The holder a busy lock file names, as a message: its pid and command line when that process
/// is alive. A holder that is not a netfault command (or one that has only just taken the lock)
/// writes nothing; a text whose process is gone is stale (killed before its release).
fn holder(lock_file: &std::path::Path) -> String {
    let text = fs::read_to_string(lock_file).unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        return "holder unknown: the lock file names none".into();
    }
    let pid = text
        .strip_prefix("pid ")
        .and_then(|t| t.split(':').next())
        .and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
            format!("holder unknown: the lock file names pid {pid}, which has exited")
        }
        _ => text.to_string(),
    }
}

fn same_file(f: &File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (f.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Kind;

    fn entry(name: &str, kind: Kind, priority: u32, seq: u64) -> RuleEntry {
        RuleEntry {
            spec: RuleSpec {
                priority,
                ..RuleSpec::new(name, kind)
            },
            slot: seq as u32,
            seq,
            expires_mono_ns: 0,
            hold_until_mono_ns: 0,
        }
    }

    #[test]
    fn protections_then_partitions_then_rules_by_priority_and_age() {
        let s = State {
            rules: vec![
                entry("r-late", Kind::Rule, 1000, 1),
                entry("p", Kind::Partition, 0, 2),
                entry("r-urgent", Kind::Rule, 5, 3),
                entry("guard", Kind::Protect, 0, 4),
                entry("r-later", Kind::Rule, 1000, 5),
            ],
            ..Default::default()
        };
        let names: Vec<_> = s.ordered().iter().map(|r| r.spec.name.as_str()).collect();
        assert_eq!(names, ["guard", "p", "r-urgent", "r-late", "r-later"]);
        assert_eq!(s.free_slot(), Some(0));
        let s = State {
            rules: vec![entry("a", Kind::Rule, 0, 0)],
            published_slots: vec![1, 2],
            ..Default::default()
        };
        assert_eq!(
            s.free_slot(),
            Some(3),
            "slots the live generation uses are not reused"
        );
    }

    /// A run directory of its own under the temp dir, removed on drop.
    struct TempRun(Paths);

    impl TempRun {
        fn new(tag: &str) -> Self {
            let run = std::env::temp_dir().join(format!("nf-state-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&run);
            Self(Paths {
                key: tag.into(),
                pins: run.join("pins"),
                run,
            })
        }
    }

    impl Drop for TempRun {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0.run);
        }
    }

    #[test]
    fn the_lock_names_its_current_holder_and_nobody_after_release() {
        let t = TempRun::new("holder");
        let me = format!("pid {}: ", std::process::id());
        let lock = Locked::acquire(t.0.clone(), Duration::ZERO).unwrap();
        lock.save(&State::default()).unwrap(); // so the lock file outlives the release
        let text = fs::read_to_string(t.0.lock_file()).unwrap();
        assert!(text.starts_with(&me), "{text}");
        // flock excludes other open files of the same process too: a second command is busy,
        // and the message names this process.
        let busy = Locked::acquire(t.0.clone(), Duration::from_millis(50)).err();
        match busy {
            Some(StateError::Busy { holder, .. }) => assert!(holder.starts_with(&me), "{holder}"),
            other => panic!("expected Busy, got {other:?}"),
        }
        drop(lock);
        assert_eq!(
            fs::read_to_string(t.0.lock_file()).unwrap(),
            "",
            "a released lock still names a holder"
        );
        assert_eq!(
            holder(&t.0.lock_file()),
            "holder unknown: the lock file names none"
        );
        // Text left by a holder that died before its release is reported as stale.
        // pid_max itself is never a live pid (pids are below it).
        let pid: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        fs::write(t.0.lock_file(), format!("pid {pid}: netfault attach eth0")).unwrap();
        assert_eq!(
            holder(&t.0.lock_file()),
            format!("holder unknown: the lock file names pid {pid}, which has exited")
        );
        // Taking the lock rewrites the text whole, however long the old one was.
        fs::write(t.0.lock_file(), "#".repeat(4096)).unwrap();
        let lock = Locked::acquire(t.0.clone(), Duration::ZERO).unwrap();
        let text = fs::read_to_string(t.0.lock_file()).unwrap();
        assert!(text.starts_with(&me) && !text.contains("##"), "{text}");
        drop(lock);
    }
}
