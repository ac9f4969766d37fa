//! Per-wire-packet draws at egress without one-segment skbs: the kernel segments a GSO packet
//! before the draw, in an IFB device that has no segmentation offload.
//!
//! TCP hands tc egress GSO packets of up to 64 KB whatever the device's offloads say; a draw
//! there would be one per aggregate. Making the sender build one-segment skbs instead
//! (`gso_max_segs` 1) draws per packet, but changes TCP itself: BBR on a path of microseconds
//! then collapses into retransmission timeouts (issue #14, point 9). So the aggregates stay,
//! and a packet a probabilistic rule matches takes a detour before anything is decided:
//!
//! 1. `nf_tc_egress` marks it (`SEGMENT_TC_INDEX`) and passes it on, neither counted nor acted
//!    on. The filter this module adds after it on the interface's clsact egress hook
//!    (cls_bpf with `nf_tc_segment`, action mirred egress redirect) sends it to the
//!    interface's egress IFB device, `nfseg<ifindex>`. mirred, not `bpf_redirect`: an IFB
//!    device drops what arrives without `skb_iif` (drivers/net/ifb.c, `ifb_xmit`), which
//!    mirred sets to the device it took the packet from and `bpf_redirect` never sets; a
//!    packet the host sends has none.
//! 2. The IFB device has every segmentation feature off, so `validate_xmit_skb` segments the
//!    packet in software on its way to the driver; the IFB's tasklet sends each segment back
//!    out of the interface (`dev_queue_xmit` to `skb_iif`).
//! 3. Each segment meets `nf_tc_egress` again as one wire packet: counted, drawn, acted on.
//!    It still carries the mark, so it is never sent to the IFB device a second time.
//!
//! The sender's stack sees what a wire would show it: mirred consumes the aggregate (TCP is
//! told it was sent, and no copy stays in the host's queues), and the segments are what
//! leaves. The IFB device's queue (its default qdisc, sized from `IFB_TXQLEN`) holds what
//! waits for the tasklet; its drops are in `ip -s link show nfseg<ifindex>`.
use std::os::fd::AsFd;

use aya::programs::ProgramFd;
use serde::{Deserialize, Serialize};

use super::{Error, Result, queues::MIRRED_PRIO};
use crate::netlink::{self as nl, NetlinkError};

/// The IFB device's queue length: its default qdisc (pfifo_fast) holds this many packets
/// (aggregates, before segmentation). The kernel's 32 for IFB devices is a few aggregates of
/// one fast flow; a full queue would drop packets no rule dropped.
pub const IFB_TXQLEN: u32 = 10_000;

/// The segmenting filter's priority on the clsact egress hook: after netfault's own cls_bpf
/// filter where it has one (kernels without tcx), as the ingress mirred filter's.
pub const SEGMENT_PRIO: u16 = MIRRED_PRIO;

/// What netfault set up on one interface so that egress draws are per wire packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segmenter {
    /// The egress IFB device.
    pub ifb: String,
    pub ifb_index: u32,
    /// netfault added the interface's clsact qdisc for the filter (tcx attachments need none
    /// of their own): it goes with the filter.
    #[serde(default)]
    pub clsact_added: bool,
}

/// The egress IFB device of the interface with index `ifindex` (ingress shaping's are
/// `nfifb<ifindex>`).
pub fn ifb_name(ifindex: u32) -> String {
    format!("nfseg{ifindex}")
}

/// Whether an offload feature builds or keeps aggregates on transmit: every segmentation
/// offload, and the GSO variants named otherwise.
fn segments(feature: &str) -> bool {
    feature.ends_with("-segmentation") || feature == "tx-gso-list" || feature == "tx-gso-partial"
}

/// What the kernel refused while setting up (or taking away) a segmenter.
#[derive(Debug, thiserror::Error)]
#[error("{iface}: a probability at egress draws per wire packet, which needs {what}: {source}")]
pub struct SegmentError {
    pub iface: String,
    pub what: String,
    #[source]
    pub source: NetlinkError,
}

fn failed(iface: &str, what: &str) -> impl FnOnce(NetlinkError) -> Error {
    let (iface, what) = (iface.to_owned(), what.to_owned());
    move |source| {
        Box::new(SegmentError {
            iface,
            what,
            source,
        })
        .into()
    }
}

/// Sets up the segmenting IFB device and filter for `iface` (index `ifindex`). `prog` gives
/// the filter's classifier. Undoes its own changes when a step fails.
pub fn ensure(
    iface: &str,
    ifindex: u32,
    prog: &mut dyn FnMut() -> Result<ProgramFd>,
) -> Result<Segmenter> {
    let name = ifb_name(ifindex);
    let ifb_index = nl::ifb_add_with_txqlen(&name, IFB_TXQLEN)
        .map_err(failed(iface, "an IFB device (ifb, CONFIG_IFB)"))?;
    let mut s = Segmenter {
        ifb: name,
        ifb_index,
        clsact_added: false,
    };
    let res = setup(iface, ifindex, prog, &mut s);
    if let Err(e) = res {
        if let Err(u) = remove(iface, ifindex, &s) {
            log::warn!("{iface}: take back the segmenting device: {u}");
        }
        return Err(e);
    }
    Ok(s)
}

fn setup(
    iface: &str,
    ifindex: u32,
    prog: &mut dyn FnMut() -> Result<ProgramFd>,
    s: &mut Segmenter,
) -> Result<()> {
    let f = nl::features(&s.ifb).map_err(failed(iface, "the IFB device's features"))?;
    let off: Vec<(&str, bool)> = f
        .active
        .iter()
        .filter(|n| segments(n) && f.changeable.contains(*n) && !f.fixed.contains(*n))
        .map(|n| (n.as_str(), false))
        .collect();
    if !off.is_empty() {
        nl::set_features(&s.ifb, &off)
            .map_err(failed(iface, "segmentation offloads off on the IFB device"))?;
    }
    let after = nl::features(&s.ifb).map_err(failed(iface, "the IFB device's features"))?;
    // Generic segmentation and TCP's are what TCP's aggregates need; the rest is checked
    // by what could be turned off.
    for must in [
        "tx-generic-segmentation",
        "tx-tcp-segmentation",
        "tx-tcp6-segmentation",
    ] {
        if after.is_active(must) {
            return Err(failed(iface, &format!("{must} off on {}", s.ifb))(
                NetlinkError::Protocol {
                    op: "set features",
                    dev: s.ifb.clone(),
                    msg: "the feature stayed on".into(),
                },
            ));
        }
    }
    s.clsact_added = nl::clsact_add(ifindex).map_err(failed(iface, "a clsact qdisc"))?;
    let fd = prog()?;
    nl::egress_filter_del(ifindex, SEGMENT_PRIO)
        .map_err(failed(iface, "the segmenting filter's place"))?;
    nl::egress_bpf_mirred_filter_add(
        ifindex,
        SEGMENT_PRIO,
        fd.as_fd(),
        netfault_common::progs::TC_SEGMENT,
        s.ifb_index,
    )
    .map_err(failed(
        iface,
        "a tc filter with a mirred action (cls_bpf, act_mirred)",
    ))
}

/// Takes away what [`ensure`] set up: the filter (and the clsact qdisc if netfault added it)
/// where the interface is still the one recorded, and the IFB device in any case.
pub fn remove(iface: &str, ifindex: u32, s: &Segmenter) -> Result<()> {
    if matches!(nl::link_index(iface), Ok(Some(i)) if i == ifindex) {
        if s.clsact_added {
            nl::clsact_del(ifindex).map_err(failed(iface, "the clsact qdisc's removal"))?;
        } else {
            nl::egress_filter_del(ifindex, SEGMENT_PRIO)
                .map_err(failed(iface, "the segmenting filter's removal"))?;
        }
    }
    if let Some(i) = nl::link_index(&s.ifb).map_err(failed(iface, "the segmenting IFB device"))?
        && i == s.ifb_index
    {
        nl::link_del(i).map_err(failed(iface, "the segmenting IFB device's removal"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_segmentation_offload_goes_off_and_nothing_else() {
        for f in [
            "tx-generic-segmentation",
            "tx-tcp-segmentation",
            "tx-tcp6-segmentation",
            "tx-udp-segmentation",
            "tx-gso-list",
        ] {
            assert!(segments(f), "{f}");
        }
        for f in ["tx-checksum-ip-generic", "tx-scatter-gather", "rx-gro"] {
            assert!(!segments(f), "{f}");
        }
        assert!(ifb_name(4_294_967_295).len() <= 15, "IFNAMSIZ");
    }
}
