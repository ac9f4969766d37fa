//! Passive measurement: round-trip times of live TCP traffic, taken in the data path by the
//! `netfault-rtt` programs while `measure` runs (`dataplane::rtt_measure`), turned here into
//! per-peer reports. Pure but for [`measure`] (the agent's and a cluster node's): the
//! histograms come in as (key, count) pairs.
//!
//! Reports come from the histograms: each sample stands at its bucket's midpoint, so every
//! figure is within half a bucket (under 0.4 %, or 0.5 µs below 256 µs) of the value measured.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use netfault_common::{FAMILY_V4, RTT_SRC_HANDSHAKE, RTT_SRC_TCP_TS, RttHistKey, rtt_bucket_upper};

use super::{Params, Report, Rtts};

/// Why a passive measurement could not be taken here.
#[derive(Debug, thiserror::Error)]
pub enum PassiveError {
    #[error("list the interfaces to measure on: {0}")]
    Interfaces(std::io::Error),
    #[error("no interface here is up with an address (loopback aside): nothing to measure on")]
    NoInterface,
    #[error("passive measurement: {0}")]
    Kernel(#[from] crate::dataplane::KernelError),
}

/// Watches the TCP traffic of this namespace's interfaces (each up with an address, loopback
/// aside) for `duration` and reports the round trips to each of `peers` (every peer seen when
/// empty), as `netfault measure` without `--probe` does; signals are left to the process.
pub fn measure(
    peers: &[IpAddr],
    duration: std::time::Duration,
    params: &Params,
) -> Result<Vec<Report>, PassiveError> {
    let ifaces = crate::dataplane::rtt_default_ifaces().map_err(PassiveError::Interfaces)?;
    if ifaces.is_empty() {
        return Err(PassiveError::NoInterface);
    }
    let m = crate::dataplane::rtt_measure_for(&ifaces, duration)?;
    let nets: Vec<IpNet> = peers.iter().map(|a| IpNet::from(*a)).collect();
    Ok(reports(&m.samples, &nets, params, None))
}

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
