//! The queue devices through netlink: netfault's fq as a root qdisc, IFB devices, the mirred
//! filter of kernels where bpf_redirect cannot reach an IFB, fq's counters, MTU and speed.
//! Devices are named as the state records them and looked up at each call, so a device that is
//! gone has nothing to remove.
use crate::{
    control::queues::{FQ_MAXRATE_BYTES, FqSize, FqStats, MIRRED_PRIO, QdiscError, Result},
    netlink::{self as nl, NETFAULT_FQ_HANDLE, NetlinkError, QdiscInfo},
};

/// What the kernel refused, with what netfault was doing.
fn nl_err(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> QdiscError {
    let what = what.into();
    move |source| QdiscError::Netlink { what, source }
}

/// The index of the device called `name`; None when there is none.
fn index_of(name: &str) -> Result<Option<u32>> {
    nl::link_index(name).map_err(nl_err(format!("look up {name}")))
}

/// Created by the kernel (noqueue, pfifo_fast, fq_codel, mq...): handle 0.
pub fn is_default(q: &QdiscInfo) -> bool {
    q.handle == 0
}

/// netfault's own fq: kind fq, handle 4e46:.
pub fn is_ours(q: &QdiscInfo) -> bool {
    q.kind == "fq" && q.handle == NETFAULT_FQ_HANDLE
}

/// The root qdisc of `ifindex`; a device that lists none has the kernel's default.
fn root(iface: &str, ifindex: u32) -> Result<QdiscInfo> {
    Ok(nl::root_qdisc(ifindex)
        .map_err(nl_err(format!("read the root qdisc of {iface}")))?
        .unwrap_or(QdiscInfo {
            kind: String::new(),
            handle: 0,
        }))
}

/// Whether `name`'s root qdisc is netfault's fq (false when it cannot tell).
pub fn has_our_fq(name: &str) -> bool {
    matches!(index_of(name), Ok(Some(i)) if root(name, i).is_ok_and(|q| is_ours(&q)))
}

/// Installs (or resizes) netfault's fq as `iface`'s root. Returns the root it replaced, as
/// "kind handle", if it was not ours already ("" kind and handle 0 for the default).
pub fn ensure_fq(iface: &str, size: &FqSize, replace_foreign: bool) -> Result<Option<QdiscInfo>> {
    let ifindex = index_of(iface)?.ok_or_else(|| QdiscError::Netlink {
        what: format!("install fq on {iface}"),
        source: NetlinkError::NoSuchDevice {
            op: "install fq",
            dev: iface.into(),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        },
    })?;
    let cur = root(iface, ifindex)?;
    if !is_ours(&cur) && !is_default(&cur) && !replace_foreign {
        return Err(QdiscError::Foreign {
            iface: iface.into(),
            kind: cur.kind,
            handle: nl::format_handle(cur.handle),
        });
    }
    let opts = nl::FqOptions {
        limit: size.limit,
        flow_limit: size.flow_limit,
        // The attribute is a u32 of microseconds (71 minutes), as tc's "horizon Nus" is.
        horizon_us: u32::try_from(size.horizon_us).unwrap_or(u32::MAX),
        horizon_drop: true,
        maxrate_bytes_per_sec: FQ_MAXRATE_BYTES,
    };
    match nl::fq_replace(ifindex, (NETFAULT_FQ_HANDLE >> 16) as u16, opts) {
        Ok(()) => Ok((!is_ours(&cur)).then_some(cur)),
        // ENOENT on create: no sch_fq in this kernel. Nothing changed.
        Err(NetlinkError::QdiscKindUnknown { .. }) => Err(QdiscError::FqMissing),
        Err(e) => Err(nl_err(format!("install fq on {iface}"))(e)),
    }
}

/// "kind handle" of a replaced root, for the state and messages ("htb 1:").
pub fn describe(q: &QdiscInfo) -> String {
    format!("{} {}", q.kind, nl::format_handle(q.handle))
}

/// Removes netfault's fq from `iface` (the kernel reinstalls its default); leaves any other
/// root alone. A device that is gone has nothing to remove.
pub fn remove_fq(iface: &str) -> Result<()> {
    let Ok(Some(ifindex)) = index_of(iface) else {
        return Ok(());
    };
    match root(iface, ifindex) {
        Ok(q) if is_ours(&q) => {
            nl::qdisc_del_root(ifindex).map_err(nl_err(format!("remove fq from {iface}")))
        }
        _ => Ok(()),
    }
}

/// Creates and brings up the IFB device (an existing one is kept) and returns its index.
pub fn ensure_ifb(name: &str) -> Result<u32> {
    match nl::ifb_add(name) {
        Ok(i) => Ok(i),
        // EOPNOTSUPP on RTM_NEWLINK: no ifb driver.
        Err(NetlinkError::LinkKindUnsupported { .. }) => Err(QdiscError::IfbMissing),
        Err(e) => Err(nl_err(format!("create IFB device {name}"))(e)),
    }
}

pub fn remove_ifb(name: &str) -> Result<()> {
    match index_of(name)? {
        Some(i) => nl::link_del(i).map_err(nl_err(format!("delete IFB device {name}"))),
        None => Ok(()),
    }
}

/// Where bpf_redirect cannot reach an IFB device: a filter after netfault's program that sends
/// packets it marked (`tc_index`) to the IFB device, with mirred, which sets what IFB needs.
pub fn ensure_mirred_filter(iface: &str, ifb: &str) -> Result<()> {
    let what = || format!("add the mirred filter from {iface} to {ifb}");
    let (Some(dev), Some(target)) = (index_of(iface)?, index_of(ifb)?) else {
        return Err(QdiscError::Netlink {
            what: what(),
            source: NetlinkError::NoSuchDevice {
                op: "add mirred filter",
                dev: format!("{iface} or {ifb}"),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            },
        });
    };
    nl::mirred_filter_del(dev, MIRRED_PRIO).map_err(nl_err(what()))?;
    let mark = u16::try_from(netfault_common::SHAPE_TC_INDEX).unwrap_or(u16::MAX);
    nl::mirred_filter_add(dev, MIRRED_PRIO, mark, target).map_err(nl_err(what()))
}

/// Removes the mirred filter; one that is gone (or a device that is gone) is fine.
pub fn remove_mirred_filter(iface: &str) {
    if let Ok(Some(dev)) = index_of(iface) {
        let _ = nl::mirred_filter_del(dev, MIRRED_PRIO);
    }
}

/// Counters of netfault's fq on `dev`; None when `dev` is gone or its root is not ours.
pub fn fq_stats(dev: &str) -> Option<FqStats> {
    let ifindex = index_of(dev).ok()??;
    let s = nl::fq_stats(ifindex).ok()??;
    Some(FqStats {
        device: dev.into(),
        limit: s.limit.into(),
        backlog_packets: s.backlog_packets.into(),
        dropped: s.dropped.into(),
        flows_plimit: s.flows_plimit,
        horizon_drops: s.horizon_drops,
    })
}

/// The fq qdiscs of `shaped`: each interface's own (egress) and its IFB's (ingress).
pub fn queue_stats(shaped: &[crate::control::queues::Shaped]) -> Vec<FqStats> {
    let mut out = Vec::new();
    for sh in shaped {
        if sh.egress.is_some() {
            out.extend(fq_stats(&sh.iface));
        }
        if let Some(i) = &sh.ifb {
            out.extend(fq_stats(&i.name));
        }
    }
    out
}

/// The device's MTU (1500 when it cannot be read) and link speed (bits/s; None where it
/// reports none), from the kernel.
pub fn link_info(iface: &str) -> (u32, Option<u64>) {
    let mtu = match index_of(iface) {
        Ok(Some(i)) => nl::link_mtu(i).unwrap_or(1500),
        _ => 1500,
    };
    (mtu, nl::link_speed_bits(iface).ok().flatten())
}
