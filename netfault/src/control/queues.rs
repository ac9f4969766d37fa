//! The fq qdiscs that hold delayed packets, and the IFB devices that give ingress a queue.
//!
//! The data path only stamps departure times; fq releases each packet at its time. netfault
//! installs fq as the root qdisc where a rule delays or paces, sizes it for the delay, and
//! removes it on detach (the kernel then puts its default back). It replaces only a root qdisc
//! the kernel created (handle 0:) or its own, unless told to replace another tool's.
//!
//! Configuration goes through iproute2 (`tc`, `ip`), which every host that runs netfault has.
use std::{process::Command, time::Duration};

use serde::{Deserialize, Serialize};

/// netfault's root qdisc handle, "NF": how it knows its own fq.
pub const HANDLE: &str = "4e46:";

/// fq's own defaults, which netfault never goes below.
pub const FQ_DEFAULT_LIMIT: u32 = 10_000;
pub const FQ_DEFAULT_HORIZON: Duration = Duration::from_secs(10);

/// Link rate assumed where the device does not report one (IFB, some virtual devices).
pub const ASSUMED_LINK_BITS: u64 = 10_000_000_000;

/// fq's per-flow rate cap. Any finite value turns off fq's fast path (6.7+), which sends a
/// packet that is due at once even while an earlier packet of its flow waits for a late timer:
/// that reordered order-kept flows (seen on 6.12). 34 Gbit/s is the most the u32 attribute
/// holds; a single flow faster than that is paced to it.
pub const FQ_MAXRATE: &str = "34gbit";

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
    #[error("{cmd}: {msg}")]
    Command { cmd: String, msg: String },
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
    // A quarter more than the estimate, within the budget: bursts above the mean rate.
    let limit = (packets + packets / 4)
        .min(budget / per)
        .max(u64::from(FQ_DEFAULT_LIMIT)) as u32;
    let horizon = (need.max_delay + Duration::from_secs(1)).max(FQ_DEFAULT_HORIZON);
    Ok(FqSize {
        limit,
        flow_limit: limit,
        horizon_us: horizon.as_micros() as u64,
    })
}

fn run(prog: &str, args: &[&str]) -> std::result::Result<String, (String, String)> {
    let cmd = format!("{prog} {}", args.join(" "));
    match Command::new(prog).args(args).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err((cmd, String::from_utf8_lossy(&o.stderr).trim().to_owned())),
        Err(e) => Err((cmd, format!("cannot run {prog}: {e} (install iproute2)"))),
    }
}

fn command_err((cmd, msg): (String, String)) -> QdiscError {
    QdiscError::Command { cmd, msg }
}

/// The root qdisc of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub kind: String,
    pub handle: String,
}

impl Root {
    /// Created by the kernel (noqueue, pfifo_fast, fq_codel, mq...): handle 0.
    pub fn is_default(&self) -> bool {
        self.handle == "0:"
    }
    pub fn is_ours(&self) -> bool {
        self.kind == "fq" && self.handle == HANDLE
    }
}

/// `tc -j [-s] qdisc show dev DEV root`: the root qdisc's JSON object.
fn root_json(dev: &str, stats: bool) -> Result<serde_json::Value> {
    let mut args = vec!["-j", "qdisc", "show", "dev", dev, "root"];
    if stats {
        args.insert(0, "-s");
    }
    let out = run("tc", &args).map_err(command_err)?;
    let err = |msg: String| QdiscError::Command {
        cmd: format!("tc {}", args.join(" ")),
        msg,
    };
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| err(format!("unreadable output: {e}")))?;
    v.as_array()
        .and_then(|a| a.iter().find(|q| q["root"].as_bool() == Some(true)))
        .cloned()
        .ok_or_else(|| err("no root qdisc listed".into()))
}

pub fn root(iface: &str) -> Result<Root> {
    let q = root_json(iface, false)?;
    Ok(Root {
        kind: q["kind"].as_str().unwrap_or("?").to_owned(),
        handle: q["handle"].as_str().unwrap_or("?").to_owned(),
    })
}

/// Installs (or resizes) netfault's fq as `iface`'s root. Returns the root it replaced, if it
/// was not ours already.
pub fn ensure_fq(iface: &str, size: &FqSize, replace_foreign: bool) -> Result<Option<Root>> {
    let cur = root(iface)?;
    if !cur.is_ours() && !cur.is_default() && !replace_foreign {
        return Err(QdiscError::Foreign {
            iface: iface.into(),
            kind: cur.kind,
            handle: cur.handle,
        });
    }
    let (limit, flow_limit, horizon) = (
        size.limit.to_string(),
        size.flow_limit.to_string(),
        format!("{}us", size.horizon_us),
    );
    #[rustfmt::skip]
    let args = [
        "qdisc", "replace", "dev", iface, "root", "handle", HANDLE, "fq",
        "limit", &limit, "flow_limit", &flow_limit, "horizon", &horizon, "horizon_drop",
        "maxrate", FQ_MAXRATE,
    ];
    run("tc", &args).map_err(|(cmd, msg)| {
        // iproute2 says "Specified qdisc kind is unknown" (netlink) when sch_fq is absent.
        if msg.contains("kind is unknown") || msg.contains("qdisc not found") {
            QdiscError::FqMissing
        } else {
            QdiscError::Command { cmd, msg }
        }
    })?;
    Ok((!cur.is_ours()).then_some(cur))
}

/// Removes netfault's fq from `iface` (the kernel reinstalls its default); leaves any other
/// root alone. A device that is gone has nothing to remove.
pub fn remove_fq(iface: &str) -> Result<()> {
    match root(iface) {
        Ok(r) if r.is_ours() => run("tc", &["qdisc", "del", "dev", iface, "root"])
            .map(|_| ())
            .map_err(command_err),
        _ => Ok(()),
    }
}

/// The IFB device that queues `ifindex`'s ingress.
pub fn ifb_name(ifindex: u32) -> String {
    format!("nfifb{ifindex}")
}

/// Creates and brings up the IFB device (if it does not exist) and returns its index.
pub fn ensure_ifb(name: &str) -> Result<u32> {
    if crate::dataplane::ifindex(name).is_none() {
        run("ip", &["link", "add", name, "type", "ifb"]).map_err(|(cmd, msg)| {
            if msg.contains("Unknown device type") || msg.contains("not supported") {
                QdiscError::IfbMissing
            } else {
                QdiscError::Command { cmd, msg }
            }
        })?;
    }
    run("ip", &["link", "set", name, "up"]).map_err(command_err)?;
    crate::dataplane::ifindex(name).ok_or_else(|| QdiscError::Command {
        cmd: format!("ip link add {name} type ifb"),
        msg: "the device does not exist afterwards".into(),
    })
}

/// Whether `bpf_redirect` from tc ingress to an IFB device works: kernels before 6.4 leave the
/// skb's redirect flags unset and IFB drops it (fixed by "bpf: Set skb redirect and
/// from_ingress info in __bpf_tx_skb").
pub fn bpf_redirect_to_ifb_works() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 4, 0))
}

/// Priority of the mirred filter: after netfault's own cls_bpf filter, which the kernel gives
/// 49152 as the first automatic priority.
pub const MIRRED_PRIO: &str = "49153";

/// On kernels before 6.4: a filter after netfault's program that sends packets it marked
/// (`tc_index`) to the IFB device, with mirred, which sets what IFB needs.
pub fn ensure_mirred_filter(iface: &str, ifb: &str) -> Result<()> {
    remove_mirred_filter(iface);
    let m = format!("meta(tc_index eq {})", netfault_common::SHAPE_TC_INDEX);
    #[rustfmt::skip]
    let args = [
        "filter", "add", "dev", iface, "ingress", "prio", MIRRED_PRIO, "protocol", "all",
        "basic", "match", &m, "action", "mirred", "egress", "redirect", "dev", ifb,
    ];
    run("tc", &args).map(|_| ()).map_err(command_err)
}

pub fn remove_mirred_filter(iface: &str) {
    let _ = run(
        "tc",
        &[
            "filter",
            "del",
            "dev",
            iface,
            "ingress",
            "prio",
            MIRRED_PRIO,
        ],
    );
}

pub fn remove_ifb(name: &str) -> Result<()> {
    if crate::dataplane::ifindex(name).is_none() {
        return Ok(());
    }
    run("ip", &["link", "del", name])
        .map(|_| ())
        .map_err(command_err)
}

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

pub fn fq_stats(dev: &str) -> Option<FqStats> {
    let q = root_json(dev, true).ok()?;
    if q["kind"] != "fq" || q["handle"] != HANDLE {
        return None;
    }
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    Some(FqStats {
        device: dev.into(),
        limit: n(&q["options"]["limit"]),
        backlog_packets: n(&q["qlen"]),
        dropped: n(&q["drops"]),
        flows_plimit: n(&q["flows_plimit"]),
        horizon_drops: n(&q["horizon_drops"]),
    })
}

/// The device's MTU and link speed (bits/s; None where it reports none), from the kernel.
pub fn link_info(iface: &str) -> (u32, Option<u64>) {
    (mtu(iface).unwrap_or(1500), speed_bits(iface))
}

fn ifreq(iface: &str) -> Option<libc::ifreq> {
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let b = iface.as_bytes();
    if b.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    Some(req)
}

fn ioctl_sock() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); ownership passes to OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn mtu(iface: &str) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let s = ioctl_sock()?;
    let mut req = ifreq(iface)?;
    // SAFETY: SIOCGIFMTU fills ifr_mtu of a valid ifreq.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    // SAFETY: the ioctl succeeded, so ifru_mtu holds the MTU.
    (r == 0).then_some(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// Link speed through ethtool's ETHTOOL_GSET (sysfs would show the namespace that mounted /sys,
/// not necessarily the one we are in).
fn speed_bits(iface: &str) -> Option<u64> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolCmd {
        cmd: u32,
        supported: u32,
        advertising: u32,
        speed: u16,
        duplex: u8,
        port: u8,
        phy_address: u8,
        transceiver: u8,
        autoneg: u8,
        mdio_support: u8,
        maxtxpkt: u32,
        maxrxpkt: u32,
        speed_hi: u16,
        eth_tp_mdix: u8,
        eth_tp_mdix_ctrl: u8,
        lp_advertising: u32,
        reserved: [u32; 2],
    }
    const ETHTOOL_GSET: u32 = 1;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let s = ioctl_sock()?;
    let mut req = ifreq(iface)?;
    let mut cmd = EthtoolCmd {
        cmd: ETHTOOL_GSET,
        ..Default::default()
    };
    req.ifr_ifru.ifru_data = (&mut cmd as *mut EthtoolCmd).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GSET writes an ethtool_cmd through ifru_data.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if r != 0 {
        return None;
    }
    let mbit = (u32::from(cmd.speed_hi) << 16) | u32::from(cmd.speed);
    // SPEED_UNKNOWN is (u32)-1; 0 means the same in practice.
    (mbit != 0 && mbit != u32::MAX && mbit != u32::from(u16::MAX))
        .then(|| u64::from(mbit) * 1_000_000)
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
    fn root_kinds() {
        let r = |k: &str, h: &str| Root {
            kind: k.into(),
            handle: h.into(),
        };
        assert!(r("noqueue", "0:").is_default());
        assert!(r("fq", HANDLE).is_ours());
        assert!(!r("fq", "8001:").is_ours() && !r("htb", "1:").is_default());
        assert_eq!(per_packet_bytes(1500), 2304);
    }
}
