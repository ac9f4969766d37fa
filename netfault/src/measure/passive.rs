//! Passive measurement: round-trip times of live TCP traffic, taken in the data path by the
//! `netfault-rtt` programs (dataplane::rtt) while `measure` runs, read back as per-peer
//! histograms. Nothing runs per packet in user space; the programs are attached for the
//! measurement only.
//!
//! Reports come from the histograms: each sample stands at its bucket's midpoint, so every
//! figure is within half a bucket (under 0.4 %, or 0.5 µs below 256 µs) of the value measured.
use std::{
    collections::BTreeMap,
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use netfault_common::{FAMILY_V4, RTT_SRC_HANDSHAKE, RTT_SRC_TCP_TS, RttHistKey, rtt_bucket_upper};

use super::{Params, Report, Rtts};
use crate::dataplane::{self, KernelError};

/// A source's name in reports.
pub fn source_name(source: u8) -> &'static str {
    match source {
        RTT_SRC_TCP_TS => "tcp-ts",
        RTT_SRC_HANDSHAKE => "handshake",
        _ => "unknown",
    }
}

/// The peer of a histogram key.
pub fn peer_addr(k: &RttHistKey) -> IpAddr {
    if k.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(k.peer[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (i, w) in k.peer.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// One report per (peer, source) of `samples` whose peer lies in one of `peers` (all when
/// empty): tcp-ts before handshake, peers in address order, each with the figures under
/// `what_if` too. Loss is `None`: nothing was sent.
pub fn reports(
    samples: &[(RttHistKey, u64)],
    peers: &[IpNet],
    params: &Params,
    what_if: Option<(&str, &super::whatif::WhatIf)>,
) -> Vec<Report> {
    let mut by: BTreeMap<(IpAddr, u8), BTreeMap<u32, u64>> = BTreeMap::new();
    for (k, n) in samples {
        let addr = peer_addr(k);
        if *n == 0 || !(peers.is_empty() || peers.iter().any(|p| p.contains(&addr))) {
            continue;
        }
        *by.entry((addr, k.source))
            .or_default()
            .entry(k.bucket)
            .or_default() += n;
    }
    by.into_iter()
        .filter_map(|((addr, source), buckets)| {
            let rtts = Rtts::new(midpoints(&buckets))?;
            let mut r = Report::new(Some(addr.to_string()), source_name(source), &rtts, params);
            if let Some((file, w)) = what_if {
                r = r.with_what_if(&rtts, params, file, w);
            }
            Some(Report { loss: None, ..r })
        })
        .collect()
}

/// Each bucket's count of values at its midpoint (µs).
fn midpoints(buckets: &BTreeMap<u32, u64>) -> Vec<f64> {
    let mut out = Vec::new();
    for (&b, &n) in buckets {
        let lower = if b == 0 { 0 } else { rtt_bucket_upper(b - 1) };
        let mid = (lower + rtt_bucket_upper(b)) as f64 / 2.0;
        out.extend(std::iter::repeat_n(mid, n as usize));
    }
    out
}

/// The interfaces measured by default: each one up with an IPv4 or IPv6 address, except
/// loopback ones.
pub fn default_ifaces() -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills head with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let a = unsafe { &*p };
        p = a.ifa_next;
        if a.ifa_addr.is_null() || a.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr.
        let family = i32::from(unsafe { (*a.ifa_addr).sa_family });
        let flags = a.ifa_flags as i32;
        if (family != libc::AF_INET && family != libc::AF_INET6)
            || flags & libc::IFF_LOOPBACK != 0
            || flags & libc::IFF_UP == 0
        {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string of the list.
        let name = unsafe { CStr::from_ptr(a.ifa_name) }
            .to_string_lossy()
            .into_owned();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The signals that end a measurement early (its samples are still reported).
const ENDING: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks the ending signals for this thread, so `wait` takes them: the programs are then
/// detached (by `RttSession`'s drop) however the measurement ends, short of SIGKILL, where
/// the links go with the process's fds.
fn block_ending() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in ENDING {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits `d`; true when an ending signal came first.
fn wait(set: &libc::sigset_t, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid set and timeout; no siginfo wanted.
        if unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) } > 0 {
            return true;
        }
    }
}

/// What one passive measurement saw.
pub struct Measured {
    pub samples: Vec<(RttHistKey, u64)>,
    /// How each interface was attached (`tcx`, `clsact`).
    pub hooks: Vec<(String, dataplane::HookKind)>,
    /// An ending signal cut the measurement short.
    pub interrupted: bool,
}

/// Attaches the passive programs to `ifaces` for `duration` (or until SIGINT, SIGTERM or
/// SIGHUP), reads their histograms and detaches them. `ready` is told how each interface was
/// attached, once all are.
pub fn measure(
    ifaces: &[String],
    duration: Duration,
    ready: impl FnOnce(&[(String, dataplane::HookKind)]),
) -> Result<Measured, KernelError> {
    let set = block_ending();
    let session = dataplane::rtt_start(ifaces)?;
    ready(&session.hooks);
    let interrupted = wait(&set, duration);
    let samples = session.samples()?;
    let hooks = session.hooks.clone();
    drop(session);
    Ok(Measured {
        samples,
        hooks,
        interrupted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netfault_common::{FAMILY_V6, rtt_bucket};

    fn key(peer: IpAddr, source: u8, us: u64) -> RttHistKey {
        let mut k = RttHistKey {
            source,
            bucket: rtt_bucket(us),
            ..RttHistKey::default()
        };
        match peer {
            IpAddr::V4(a) => {
                k.family = FAMILY_V4;
                k.peer[0] = u32::from_ne_bytes(a.octets());
            }
            IpAddr::V6(a) => {
                k.family = FAMILY_V6;
                for (i, c) in a.octets().chunks(4).enumerate() {
                    k.peer[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
        k
    }

    #[test]
    fn reports_per_peer_and_source_filtered_by_cidr() {
        let a: IpAddr = "192.0.2.2".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let c: IpAddr = "198.51.100.7".parse().unwrap();
        let samples = vec![
            (key(a, RTT_SRC_TCP_TS, 100), 3),
            (key(a, RTT_SRC_TCP_TS, 20_000), 1),
            (key(a, RTT_SRC_HANDSHAKE, 150), 2),
            (key(b, RTT_SRC_TCP_TS, 1_000), 5),
            (key(c, RTT_SRC_TCP_TS, 50), 7),
        ];
        let nets: Vec<IpNet> = vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let r = reports(&samples, &nets, &Params::default(), None);
        let got: Vec<(String, String, usize)> = r
            .iter()
            .map(|r| (r.peer.clone().unwrap(), r.source.clone(), r.samples))
            .collect();
        assert_eq!(
            got,
            vec![
                ("192.0.2.2".into(), "tcp-ts".into(), 4),
                ("192.0.2.2".into(), "handshake".into(), 2),
                ("2001:db8::2".into(), "tcp-ts".into(), 5),
            ]
        );
        assert!(r.iter().all(|r| r.loss.is_none()));
        let s = r[0].rtt_us.unwrap();
        // 100 µs has a bucket of its own; 20 ms lies in a bucket 128 µs wide.
        assert_eq!(s.min, 100.5);
        assert!((s.max - 20_000.0).abs() <= 20_000.0 / 256.0, "{}", s.max);
        assert_eq!(r[0].histogram.iter().map(|(_, n)| n).sum::<u64>(), 4);
        assert_eq!(reports(&samples, &[], &Params::default(), None).len(), 4);
    }
}
