//! The coordinator's record of what it made live: each fault `partition` and `impair` applied,
//! with every node's entries, until `heal` removes it or its TTL runs out. `cluster verify`
//! checks the wire against this record, not against what the nodes hold: a node whose entries
//! were deleted behind the coordinator's back still counts as configured, and the wire shows
//! the difference.
//!
//! One JSON file per cluster file (by its canonical path) under `/run/netfault/cluster/` (a
//! coordinator not running as root: `$XDG_RUNTIME_DIR/netfault-cluster/`), replaced atomically; it vanishes on reboot, as the faults do. Two coordinators writing at
//! once may lose one's change to the record (not to the nodes).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::spec::{Kind, RuleSpec, Ttl};

pub const DIR: &str = "/run/netfault/cluster";

/// One fault as applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub name: String,
    /// `partition` or `rule` (an impairment).
    pub kind: Kind,
    /// The topology of a partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<String>,
    /// Seconds since the epoch when the entries expire; `None`: never.
    pub expires_unix_s: Option<u64>,
    /// Node -> its entries.
    pub rules: BTreeMap<String, Vec<RuleSpec>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub faults: Vec<Recorded>,
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Recorded {
    pub fn new(
        name: &str,
        kind: Kind,
        topology: Option<String>,
        rules: BTreeMap<String, Vec<RuleSpec>>,
        ttl: Ttl,
    ) -> Recorded {
        Recorded {
            name: name.to_owned(),
            kind,
            topology,
            expires_unix_s: match ttl {
                Ttl::Never => None,
                Ttl::For(d) => Some(unix_s(SystemTime::now() + d + Duration::from_secs(1))),
            },
            rules,
        }
    }

    pub fn live(&self, now: SystemTime) -> bool {
        self.expires_unix_s.is_none_or(|e| e > unix_s(now))
    }
}

/// The record's directory: [`DIR`] for root; else the user's runtime directory (a coordinator
/// of agents and SSH nodes needs no privileges of its own).
fn dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from(DIR);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("netfault-cluster"),
        _ => std::env::temp_dir().join(format!(
            "netfault-cluster-{}",
            // SAFETY: as above.
            unsafe { libc::geteuid() }
        )),
    }
}

/// Where the record of the cluster file `cluster` lives.
pub fn path_for(cluster: &Path) -> PathBuf {
    let canon = std::fs::canonicalize(cluster).unwrap_or_else(|_| cluster.to_path_buf());
    // FNV-1a of the path: a short stable file name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canon.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    dir().join(format!("{h:016x}.json"))
}

impl Record {
    /// The record at `path`; empty when there is none (or it cannot be read as one).
    pub fn load(path: &Path) -> Record {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the record (its expired faults left out) atomically. A record with nothing live
    /// is no file at all: its file goes, and the directory with the last one, so a cluster
    /// healed (or whose faults ended) leaves nothing behind.
    pub fn store(&mut self, path: &Path) -> std::io::Result<()> {
        let now = SystemTime::now();
        self.faults.retain(|f| f.live(now));
        if self.faults.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir); // refused while another record is there
                // Root's records sit in /run/netfault, which goes too once nothing uses it.
                if dir == Path::new(DIR) {
                    let _ = std::fs::remove_dir(crate::control::state::RUN_ROOT);
                }
            }
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)
    }

    /// Adds `f`, replacing a fault of the same name and kind.
    pub fn add(&mut self, f: Recorded) {
        self.faults
            .retain(|x| !(x.name == f.name && x.kind == f.kind));
        self.faults.push(f);
    }

    /// Removes the faults named `names`, or every one when `names` is empty (as `heal` does).
    pub fn heal(&mut self, names: &[String]) {
        if names.is_empty() {
            self.faults.clear();
        } else {
            self.faults.retain(|f| !names.contains(&f.name));
        }
    }

    /// The live faults, those named `names` (every one when empty).
    pub fn live(&self, names: &[String]) -> Vec<&Recorded> {
        let now = SystemTime::now();
        self.faults
            .iter()
            .filter(|f| f.live(now) && (names.is_empty() || names.contains(&f.name)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_heal_and_expiry() {
        let mut r = Record::default();
        r.add(Recorded::new(
            "a",
            Kind::Partition,
            None,
            BTreeMap::new(),
            Ttl::Never,
        ));
        r.add(Recorded::new(
            "b",
            Kind::Rule,
            None,
            BTreeMap::new(),
            Ttl::For(Duration::from_secs(60)),
        ));
        r.add(Recorded::new(
            "a",
            Kind::Partition,
            Some("halves".into()),
            BTreeMap::new(),
            Ttl::Never,
        ));
        assert_eq!(r.faults.len(), 2);
        assert_eq!(r.live(&[]).len(), 2);
        assert_eq!(r.live(&["b".into()]).len(), 1);
        let mut old = Recorded::new("c", Kind::Rule, None, BTreeMap::new(), Ttl::Never);
        old.expires_unix_s = Some(1);
        r.add(old);
        assert_eq!(r.live(&[]).len(), 2);
        r.heal(&["a".into()]);
        assert_eq!(
            r.live(&[])
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        r.heal(&[]);
        assert!(r.faults.is_empty());
        let dir = std::env::temp_dir().join(format!("nf-record-{}", std::process::id()));
        let p = dir.join("x.json");
        r.add(Recorded::new(
            "d",
            Kind::Rule,
            None,
            BTreeMap::new(),
            Ttl::Never,
        ));
        r.store(&p).unwrap();
        assert_eq!(Record::load(&p), r);
        // Another cluster's record beside it stays; the last one takes the directory along.
        let mut other = r.clone();
        let q = dir.join("y.json");
        other.store(&q).unwrap();
        r.heal(&[]);
        r.store(&p).unwrap();
        assert!(!p.exists(), "an empty record left its file");
        assert_eq!(Record::load(&p), Record::default());
        assert_eq!(Record::load(&q), other);
        other.heal(&[]);
        other.store(&q).unwrap();
        assert!(!dir.exists(), "the directory stayed after the last record");
        assert_ne!(
            path_for(Path::new("/a.toml")),
            path_for(Path::new("/b.toml"))
        );
    }
}
