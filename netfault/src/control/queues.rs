//! The fq qdiscs that hold delayed packets, and the IFB devices that give ingress a queue.
//!
//! The data path only stamps departure times; fq releases each packet at its time. netfault
//! installs fq as the root qdisc where a rule delays or paces, sizes it for the delay, and
//! removes it on detach (the kernel then puts its default back). It replaces only a root qdisc
//! the kernel created (handle 0:) or its own, unless told to replace another tool's.
//!
//! Only the sizing and the records are here, pure; the devices are changed through
//! `crate::netlink` by `control::shaping`.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::netlink::NetlinkError;

/// fq's own defaults, which netfault never goes below.
pub const FQ_DEFAULT_LIMIT: u32 = 10_000;
pub const FQ_DEFAULT_HORIZON: Duration = Duration::from_secs(10);

/// Link rate assumed where the device does not report one (IFB, some virtual devices).
pub const ASSUMED_LINK_BITS: u64 = 10_000_000_000;

/// fq's per-flow rate cap. Any finite value turns off fq's fast path (6.7+), which sends a
/// packet that is due at once even while an earlier packet of its flow waits for a late timer:
/// that reordered order-kept flows (seen on 6.12). 34 Gbit/s is the most the u32 attribute
/// holds; a single flow faster than that is paced to it. In bytes/s, as netlink takes it
/// (tc's "maxrate 34gbit").
pub const FQ_MAXRATE_BYTES: u32 = 4_250_000_000;

/// Share of RAM the queues of one interface may hold at worst.
pub const MEM_SHARE: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum QdiscError {
    #[error(
        "this kernel has no fq qdisc (sch_fq, CONFIG_NET_SCH_FQ): netfault delays and paces packets by \
         stamping their departure time, and only fq holds them until then; nothing was changed"
    )]
    FqMissing,
    #[error(
        "this kernel has no IFB devices (ifb, CONFIG_IFB): ingress delay and rate need one to queue \
         packets; nothing was changed"
    )]
    IfbMissing,
    #[error(
        "{iface} has a root qdisc netfault did not install ({kind} {handle}); delay and rate need fq \
         there. Remove it, or pass --replace-qdisc to replace it (it is not restored on detach)"
    )]
    Foreign {
        iface: String,
        kind: String,
        handle: String,
    },
    #[error(
        "{iface}: a delay of up to {delay} at {rate_mbit} Mbit/s ({why}) needs fq to hold up to \
         {packets} packets of {mtu} bytes, about {mem_mib} MiB, beyond netfault's budget of {budget_mib} MiB \
         (1/{MEM_SHARE} of RAM); shorten --delay or --jitter, or pace the rule with --rate"
    )]
    TooBig {
        iface: String,
        delay: String,
        rate_mbit: u64,
        why: String,
        packets: u64,
        mtu: u32,
        mem_mib: u64,
        budget_mib: u64,
    },
    /// The kernel refused a change or a query of the queues.
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: NetlinkError,
    },
    /// The probe of bpf_redirect to an IFB device could not tell (see `shaping::probe`).
    #[error("probe whether bpf_redirect reaches an IFB device: {0}")]
    Probe(String),
}

pub type Result<T> = std::result::Result<T, QdiscError>;

/// fq's parameters as netfault sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqSize {
    pub limit: u32,
    pub flow_limit: u32,
    pub horizon_us: u64,
}

impl FqSize {
    /// Holds at least what `other` holds.
    pub fn covers(&self, other: &FqSize) -> bool {
        self.limit >= other.limit
            && self.flow_limit >= other.flow_limit
            && self.horizon_us >= other.horizon_us
    }

    pub fn max(&self, other: &FqSize) -> FqSize {
        FqSize {
            limit: self.limit.max(other.limit),
            flow_limit: self.flow_limit.max(other.flow_limit),
            horizon_us: self.horizon_us.max(other.horizon_us),
        }
    }
}

/// What netfault installed on one attached interface, so detach can take it away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shaped {
    pub iface: String,
    pub ifindex: u32,
    /// netfault's fq as the interface's root (egress shaping), at this size.
    pub egress: Option<FqSize>,
    /// The IFB device (and its fq) that queues the interface's ingress.
    pub ifb: Option<Ifb>,
    /// The other tool's root qdisc `--replace-qdisc` removed ("htb 1:"); not restored.
    pub replaced: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ifb {
    pub name: String,
    pub ifindex: u32,
    pub fq: FqSize,
    /// Reached through a mirred filter (kernels before 6.4), not bpf_redirect.
    #[serde(default)]
    pub mirred: bool,
}

/// What a link's queue must absorb: the longest departure delay any rule stamps there, and the
/// rate traffic reaches it at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub max_delay: Duration,
    /// The longest hold (`--hold`): what arrives during it waits for its end, on top of the
    /// delay. Sized within memory, never refused for it: fq drops what comes beyond its limit.
    pub hold: Duration,
    pub rate_bits: u64,
    /// Where the rate comes from, for messages: "link speed", "--rate", "assumed".
    pub rate_source: &'static str,
    pub mtu: u32,
}

/// Bytes of memory one full-size packet costs queued: data rounded up to its slab, plus the
/// sk_buff and shared-info overhead (an estimate of the kernel's truesize).
pub fn per_packet_bytes(mtu: u32) -> u64 {
    (u64::from(mtu) + 14 + 320).next_power_of_two() + 256
}

/// Sizes fq for `need`: every packet that arrives during the longest delay must fit, a single
/// flow included (a delayed flow's packets all sit in that flow's queue). Refuses beyond
/// `mem_total / MEM_SHARE`.
pub fn size(iface: &str, need: &Need, mem_total: u64) -> Result<FqSize> {
    let wire = u64::from(need.mtu) + 14;
    let bytes = need.rate_bits as f64 / 8.0 * need.max_delay.as_secs_f64();
    let packets = (bytes / wire as f64).ceil() as u64;
    let per = per_packet_bytes(need.mtu);
    let budget = mem_total / MEM_SHARE;
    if packets.saturating_mul(per) > budget || packets > u64::from(u32::MAX / 2) {
        return Err(QdiscError::TooBig {
            iface: iface.into(),
            delay: humantime::format_duration(need.max_delay).to_string(),
            rate_mbit: need.rate_bits / 1_000_000,
            why: need.rate_source.into(),
            packets,
            mtu: need.mtu,
            mem_mib: (packets * per) >> 20,
            budget_mib: budget >> 20,
        });
    }
    // What a hold would gather at the full rate: as much of it as memory allows.
    let held = (need.rate_bits as f64 / 8.0 * need.hold.as_secs_f64() / wire as f64).ceil() as u64;
    // A quarter more than the estimate, within the budget: bursts above the mean rate.
    let limit = (packets + packets / 4)
        .saturating_add(held)
        .min(budget / per)
        .min(u64::from(u32::MAX / 2))
        .max(u64::from(FQ_DEFAULT_LIMIT)) as u32;
    // A held packet's departure is up to the hold's end and then its delay away.
    let horizon = (need.max_delay + need.hold + Duration::from_secs(1)).max(FQ_DEFAULT_HORIZON);
    Ok(FqSize {
        limit,
        flow_limit: limit,
        horizon_us: horizon.as_micros() as u64,
    })
}

/// The IFB device that queues `ifindex`'s ingress.
pub fn ifb_name(ifindex: u32) -> String {
    format!("nfifb{ifindex}")
}

/// Priority of the mirred filter: after netfault's own cls_bpf filter, which the kernel gives
/// 49152 as the first automatic priority.
pub const MIRRED_PRIO: u16 = 49153;

/// fq's counters on a device, for `stats`: packets it dropped itself (limit, flow limit,
/// horizon), apart from the rules' injected drops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FqStats {
    pub device: String,
    pub limit: u64,
    pub backlog_packets: u64,
    pub dropped: u64,
    pub flows_plimit: u64,
    pub horizon_drops: u64,
}

/// MemTotal from /proc/meminfo, in bytes.
pub fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1 << 30, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(ms: u64, bits: u64) -> Need {
        Need {
            max_delay: Duration::from_millis(ms),
            hold: Duration::ZERO,
            rate_bits: bits,
            rate_source: "link speed",
            mtu: 1500,
        }
    }

    #[test]
    fn sizing_follows_delay_times_rate() {
        // The example: 1 Gbit/s delayed 100 ms holds about 8,300 full-size packets.
        let s = size("eth0", &need(100, 1_000_000_000), 16 << 30).unwrap();
        let packets = 1e9 / 8.0 * 0.1 / 1514.0;
        assert!((f64::from(s.limit) - packets * 1.25).abs() < 2.0, "{s:?}");
        assert_eq!(s.flow_limit, s.limit);
        assert_eq!(s.horizon_us, 10_000_000);
        // Small needs keep fq's defaults.
        let s = size("eth0", &need(1, 1_000_000), 16 << 30).unwrap();
        assert_eq!(s.limit, FQ_DEFAULT_LIMIT);
        // Long delays stretch the horizon past the delay.
        let s = size("eth0", &need(30_000, 1_000_000), 16 << 30).unwrap();
        assert_eq!(s.horizon_us, 31_000_000);
    }

    #[test]
    fn sizing_refuses_with_the_numbers() {
        // 10 Gbit/s for 10 s is 12.5 GB: beyond a quarter of 16 GiB.
        let e = size("eth0", &need(10_000, 10_000_000_000), 16 << 30).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("eth0") && m.contains("10s") && m.contains("10000 Mbit/s"),
            "{m}"
        );
        assert!(
            m.contains("8256275 packets") && m.contains("4096 MiB"),
            "{m}"
        );
    }

    #[test]
    fn per_packet_cost_and_maxrate() {
        assert_eq!(per_packet_bytes(1500), 2304);
        // tc's "34gbit" is 34e9 bits/s.
        assert_eq!(u64::from(FQ_MAXRATE_BYTES) * 8, 34_000_000_000);
    }
}
