//! What netfault needs to be allowed to do, tested against the effective capabilities (not the
//! user id: root in a container, or a service with ambient capabilities, may have fewer or more).
//!
//! - bpf(2) (load programs, create, open and update maps, pin): CAP_BPF, or CAP_SYS_ADMIN
//!   (kernels before 5.8 know only that; with `unprivileged_bpf_disabled` every bpf(2) call
//!   needs one of them, reads of pinned maps too);
//! - attach XDP and tc programs, install fq and IFB devices (netlink): CAP_NET_ADMIN;
//! - enter `--netns` (setns(2)): CAP_SYS_ADMIN;
//! - create state under the root-owned /run/netfault and /sys/fs/bpf/netfault: uid 0 (the
//!   owner), or CAP_DAC_OVERRIDE.
use std::fmt;

use super::{Error, Result};

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// What a command is about to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// Attach, publish rules, install queues (not only read counters and state).
    pub change: bool,
    /// Enter a named network namespace.
    pub netns: bool,
}

/// The privileges a command lacks, each with what it is for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PrivilegeError {
    pub missing: Vec<&'static str>,
}

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "missing {}; run netfault as root (e.g. with sudo)",
            self.missing.join(", ")
        )
    }
}

/// The effective capability set, from capget(2).
fn effective() -> std::io::Result<u64> {
    // _LINUX_CAPABILITY_VERSION_3: 64 bits in two 32-bit words.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: header and a two-element data array of the layout capget(2) expects for v3.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u64::from(d[0].effective) | (u64::from(d[1].effective) << 32))
}

/// The missing privileges for `need`, given an effective set and user id.
fn missing(eff: u64, euid: u32, need: Need) -> Vec<&'static str> {
    let has = |c: u32| eff & (1 << c) != 0;
    let mut out = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_BPF or CAP_SYS_ADMIN (to load programs and use their maps)");
    }
    if need.change && !has(CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN (to attach to interfaces and install queues)");
    }
    if need.netns && !has(CAP_SYS_ADMIN) {
        out.push("CAP_SYS_ADMIN (to enter --netns)");
    }
    if need.change && euid != 0 && !has(CAP_DAC_OVERRIDE) {
        out.push("uid 0 or CAP_DAC_OVERRIDE (to write /run/netfault and /sys/fs/bpf/netfault)");
    }
    out
}

/// Refuses, naming what is missing, before anything changes.
pub fn require(need: Need) -> std::result::Result<(), PrivilegeError> {
    // An unreadable set (no such syscall) reads as empty: every requirement is named.
    let eff = effective().unwrap_or(0);
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    let missing = missing(eff, euid, need);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError { missing })
    }
}

/// For commands that change the data path or its queues.
pub fn check_privileges() -> Result<()> {
    require(Need {
        change: true,
        netns: false,
    })
    .map_err(Error::from)
}

/// For commands that only read state and counters.
pub fn check_read_privileges() -> Result<()> {
    require(Need::default()).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = u64::MAX;
    fn without(caps: &[u32]) -> u64 {
        caps.iter().fold(ALL, |s, c| s & !(1 << c))
    }

    #[test]
    fn names_exactly_what_is_missing() {
        let change = Need {
            change: true,
            netns: false,
        };
        assert!(missing(ALL, 0, change).is_empty());
        assert!(missing(ALL, 1000, change).is_empty());
        // CAP_SYS_ADMIN stands in for CAP_BPF.
        assert!(missing(without(&[CAP_BPF]), 0, change).is_empty());
        let m = missing(without(&[CAP_BPF, CAP_SYS_ADMIN]), 0, change);
        assert_eq!(m.len(), 1);
        assert!(m[0].starts_with("CAP_BPF or CAP_SYS_ADMIN"));
        let m = missing(without(&[CAP_NET_ADMIN]), 0, change);
        assert!(m.len() == 1 && m[0].starts_with("CAP_NET_ADMIN"), "{m:?}");
        // Reading needs no CAP_NET_ADMIN.
        assert!(missing(without(&[CAP_NET_ADMIN]), 0, Need::default()).is_empty());
        let m = missing(
            without(&[CAP_SYS_ADMIN]),
            0,
            Need {
                change: false,
                netns: true,
            },
        );
        assert!(m.len() == 1 && m[0].contains("--netns"), "{m:?}");
        assert!(missing(without(&[CAP_DAC_OVERRIDE]), 0, change).is_empty());
        assert_eq!(missing(without(&[CAP_DAC_OVERRIDE]), 1000, change).len(), 1);
        assert_eq!(missing(0, 65534, change).len(), 3);
    }
}
