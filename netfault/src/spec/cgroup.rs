//! `--cgroup PATH`: a cgroup v2 subtree whose sockets' traffic a rule or partition matches.
//! Resolved once, when the entry is given: the directory's inode number is its cgroup id (what
//! the data path compares), its depth below the cgroup2 mount its level. The entry keeps both,
//! so a cgroup removed and made again under the same path is another cgroup, which the entry
//! does not match.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::SpecError;

/// `statfs(2)` f_type of cgroup2 (linux/magic.h).
const CGROUP2_SUPER_MAGIC: u32 = 0x6367_7270;

/// A cgroup v2 directory, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CgroupMatch {
    /// Absolute, canonical.
    pub path: PathBuf,
    /// The cgroup id (the directory's inode number).
    pub id: u64,
    /// Depth below the cgroup2 root (the root is 0).
    pub level: u32,
}

/// Where cgroup2 is mounted (`/sys/fs/cgroup` on most hosts; `/sys/fs/cgroup/unified` on
/// hybrid ones), from /proc/mounts.
pub fn cgroup2_root() -> Option<PathBuf> {
    let m = std::fs::read_to_string("/proc/mounts").ok()?;
    m.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1].replace("\\040", " ")))
    })
}

fn is_cgroup2(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed out-parameter of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as u32 == CGROUP2_SUPER_MAGIC
}

impl CgroupMatch {
    /// `PATH` (absolute, or relative to the cgroup2 mount) as a cgroup other than the root;
    /// errors name `field` (`--cgroup`, `rule[2].cgroup`).
    pub fn resolve(field: &str, path: &str) -> Result<CgroupMatch, SpecError> {
        let bad = |m: String| SpecError::new(field, m);
        if path.trim().is_empty() {
            return Err(bad("empty path".into()));
        }
        let root = cgroup2_root().ok_or_else(|| bad("no cgroup2 file system is mounted".into()))?;
        let p = Path::new(path);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        };
        let full = full
            .canonicalize()
            .map_err(|e| bad(format!("{}: {e}", full.display())))?;
        let root = root.canonicalize().unwrap_or(root);
        let rel = full.strip_prefix(&root).map_err(|_| {
            bad(format!(
                "{} is not under the cgroup2 mount {} (cgroup v1 hierarchies cannot be matched)",
                full.display(),
                root.display()
            ))
        })?;
        if !full.is_dir() || !is_cgroup2(&full) {
            return Err(bad(format!(
                "{} is not a cgroup v2 directory",
                full.display()
            )));
        }
        let level = rel.components().count() as u32;
        if level == 0 {
            return Err(bad(format!(
                "{} is the root cgroup, which every socket is in: leave the cgroup out",
                full.display()
            )));
        }
        if level > netfault_common::MAX_CGROUP_LEVEL {
            return Err(bad(format!(
                "{} is {level} levels below the cgroup2 root; the data path matches at most {}",
                full.display(),
                netfault_common::MAX_CGROUP_LEVEL
            )));
        }
        let id = std::fs::metadata(&full)
            .map_err(|e| bad(format!("{}: {e}", full.display())))?
            .ino();
        Ok(CgroupMatch {
            path: full,
            id,
            level,
        })
    }
}

impl std::fmt::Display for CgroupMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_a_file_and_other_file_systems_are_refused_by_field() {
        let Some(root) = cgroup2_root() else {
            // Without cgroup2 every path is refused, naming the field.
            assert_eq!(
                CgroupMatch::resolve("--cgroup", "x").unwrap_err().field,
                "--cgroup"
            );
            return;
        };
        let e = CgroupMatch::resolve("rule[2].cgroup", root.to_str().unwrap()).unwrap_err();
        assert_eq!(e.field, "rule[2].cgroup");
        assert!(e.msg.contains("root cgroup"), "{}", e.msg);
        let e = CgroupMatch::resolve("--cgroup", "/proc").unwrap_err();
        assert!(e.msg.contains("not under the cgroup2 mount"), "{}", e.msg);
        let e = CgroupMatch::resolve("--cgroup", "cgroup.procs").unwrap_err();
        assert!(e.msg.contains("not a cgroup v2 directory"), "{}", e.msg);
        let e = CgroupMatch::resolve("--cgroup", "no-such-cgroup-here").unwrap_err();
        assert!(e.msg.contains("No such file"), "{}", e.msg);
        assert!(CgroupMatch::resolve("--cgroup", " ").is_err());
    }
}
