//! Qdiscs and filters: the root qdisc, netfault's fq, clsact removal, the basic/mirred
//! ingress filter that sends marked packets to an IFB device (kernels before 6.4).
use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{
        TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
        TcActionOption, TcActionType, TcAttribute, TcHandle, TcMessage, TcMirror,
        TcMirrorActionType, TcOption, TcStats2, TcXstats,
    },
};

use super::{
    error::{Ctx, Fail, NetlinkError, Result},
    nla, route,
};

/// netfault's root fq handle, 4e46: ("NF"), as major<<16.
pub const NETFAULT_FQ_HANDLE: u32 = 0x4e46_0000;

const TC_H_ROOT: u32 = 0xFFFF_FFFF;
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const TC_H_MIN_INGRESS: u16 = 0xFFF2;
const TC_H_MIN_EGRESS: u16 = 0xFFF3;
const ETH_P_ALL: u16 = 0x0003;

// include/uapi/linux/pkt_sched.h, enum TCA_FQ_*.
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
const TCA_FQ_FLOW_MAX_RATE: u16 = 7;
const TCA_FQ_HORIZON: u16 = 14;
const TCA_FQ_HORIZON_DROP: u16 = 15;

// include/uapi/linux/pkt_cls.h and tc_ematch/tc_em_meta.h.
const TCA_BASIC_EMATCHES: u16 = 2;
const TCA_BASIC_ACT: u16 = 3;
const TCA_EMATCH_TREE_HDR: u16 = 1;
const TCA_EMATCH_TREE_LIST: u16 = 2;
const TCF_EM_META: u16 = 4;
const TCA_EM_META_HDR: u16 = 1;
const TCA_EM_META_LVALUE: u16 = 2;
const TCA_EM_META_RVALUE: u16 = 3;
const TCF_META_TYPE_INT: u16 = 1;
const TCF_META_ID_VALUE: u16 = 0;
const TCF_META_ID_TCINDEX: u16 = 13;
const TCF_EM_OPND_EQ: u8 = 0;
// include/uapi/linux/pkt_cls.h, enum TCA_BPF_*.
const TCA_BPF_ACT: u16 = 1;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;

fn handle_u32(h: TcHandle) -> u32 {
    (u32::from(h.major) << 16) | u32::from(h.minor)
}

/// A handle as tc prints a qdisc's: "4e46:", "0:", "1:"; "1:10" with a minor.
pub fn format_handle(handle: u32) -> String {
    let (major, minor) = (handle >> 16, handle & 0xFFFF);
    if minor == 0 {
        format!("{major:x}:")
    } else {
        format!("{major:x}:{minor:x}")
    }
}

/// A device's root qdisc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QdiscInfo {
    pub kind: String,
    /// major<<16 | minor; 0 for the kernel's default (noqueue, pfifo_fast, mq...).
    pub handle: u32,
}

fn kind_of(m: &TcMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

/// The root qdisc's message from a qdisc dump (the dump carries its stats too).
fn root_message(ifindex: u32, ctx: &Ctx) -> Result<Option<TcMessage>> {
    let mut req = TcMessage::default();
    req.header.index = ifindex_i32(ifindex, ctx)?;
    let answers =
        route(RouteNetlinkMessage::GetQueueDiscipline(req), NLM_F_DUMP).map_err(|e| ctx.err(e))?;
    // Older kernels dump every device's qdiscs whatever the request's index: filter here.
    Ok(answers.into_iter().find_map(|a| match a {
        RouteNetlinkMessage::NewQueueDiscipline(m)
            if u32::try_from(m.header.index) == Ok(ifindex)
                && handle_u32(m.header.parent) == TC_H_ROOT =>
        {
            Some(m)
        }
        _ => None,
    }))
}

fn ifindex_i32(ifindex: u32, ctx: &Ctx) -> Result<i32> {
    i32::try_from(ifindex).map_err(|_| ctx.protocol("interface index out of range"))
}

/// The device's root qdisc; None if it lists none (a device that is gone is NoSuchDevice).
pub fn root_qdisc(ifindex: u32) -> Result<Option<QdiscInfo>> {
    let ctx = Ctx::ifindex("read root qdisc", ifindex);
    let Some(m) = root_message(ifindex, &ctx)? else {
        // A dump of a device that is gone lists nothing rather than failing: say which.
        return match super::link::link_mtu(ifindex) {
            Err(e @ NetlinkError::NoSuchDevice { .. }) => Err(e),
            _ => Ok(None),
        };
    };
    Ok(Some(QdiscInfo {
        kind: kind_of(&m).unwrap_or("").to_owned(),
        handle: handle_u32(m.header.handle),
    }))
}

/// fq's parameters as netfault sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FqOptions {
    /// TCA_FQ_PLIMIT: packets in the whole qdisc.
    pub limit: u32,
    /// TCA_FQ_FLOW_PLIMIT: packets per flow.
    pub flow_limit: u32,
    /// TCA_FQ_HORIZON, in microseconds.
    pub horizon_us: u32,
    /// TCA_FQ_HORIZON_DROP: drop (rather than cap) packets stamped beyond the horizon.
    pub horizon_drop: bool,
    /// TCA_FQ_FLOW_MAX_RATE, bytes/s (tc's "maxrate 34gbit" is 4_250_000_000).
    pub maxrate_bytes_per_sec: u32,
}

/// TCA_OPTIONS' nested attributes for fq, in the order tc sends them.
fn fq_options(o: &FqOptions) -> Vec<TcOption> {
    let u32_opt = |kind, v: u32| TcOption::Other(DefaultNla::new(kind, v.to_ne_bytes().to_vec()));
    vec![
        u32_opt(TCA_FQ_PLIMIT, o.limit),
        u32_opt(TCA_FQ_FLOW_PLIMIT, o.flow_limit),
        u32_opt(TCA_FQ_FLOW_MAX_RATE, o.maxrate_bytes_per_sec),
        u32_opt(TCA_FQ_HORIZON, o.horizon_us),
        TcOption::Other(DefaultNla::new(
            TCA_FQ_HORIZON_DROP,
            vec![u8::from(o.horizon_drop)],
        )),
    ]
}

/// The RTM_NEWQDISC message of [`fq_replace`].
fn fq_message(ifindex: i32, handle_major: u16, o: &FqOptions) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex);
    m.header.parent = TcHandle::ROOT;
    m.header.handle = TcHandle {
        major: handle_major,
        minor: 0,
    };
    m.attributes.push(TcAttribute::Kind("fq".into()));
    m.attributes.push(TcAttribute::Options(fq_options(o)));
    m
}

/// Makes fq the root qdisc (created or replacing whatever is there), as
/// `tc qdisc replace dev D root handle MAJOR: fq limit .. flow_limit .. horizon ..us
/// [horizon_drop] maxrate ..`. A kernel without sch_fq answers ENOENT:
/// [`NetlinkError::QdiscKindUnknown`], and nothing changes.
pub fn fq_replace(ifindex: u32, handle_major: u16, opts: FqOptions) -> Result<()> {
    let ctx = Ctx::ifindex("install fq", ifindex);
    let m = fq_message(ifindex_i32(ifindex, &ctx)?, handle_major, &opts);
    match route(
        RouteNetlinkMessage::NewQueueDiscipline(m),
        NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
    ) {
        Ok(_) => Ok(()),
        // qdisc_create: no ops registered for the kind (after request_module) is ENOENT.
        Err(Fail::Errno(e)) if e == libc::ENOENT => Err(NetlinkError::QdiscKindUnknown {
            op: ctx.op,
            dev: ctx.dev,
            kind: "fq".into(),
            source: std::io::Error::from_raw_os_error(e),
        }),
        Err(e) => Err(ctx.err(e)),
    }
}

/// Deletes the root qdisc (the kernel puts its default back). The default itself (handle 0)
/// cannot be deleted: the kernel's ENOENT for it is Ok.
pub fn qdisc_del_root(ifindex: u32) -> Result<()> {
    let ctx = Ctx::ifindex("delete root qdisc", ifindex);
    let mut m = TcMessage::with_index(ifindex_i32(ifindex, &ctx)?);
    m.header.parent = TcHandle::ROOT;
    match route(RouteNetlinkMessage::DelQueueDiscipline(m), NLM_F_ACK) {
        Ok(_) | Err(Fail::Errno(libc::ENOENT)) => Ok(()),
        Err(e) => Err(ctx.err(e)),
    }
}

/// The clsact qdisc of a device (handle ffff:, parent clsact), to add or delete.
fn clsact_message(ifindex: i32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex);
    m.header.parent = TC_H_CLSACT.into();
    m.header.handle = TcHandle {
        major: 0xFFFF,
        minor: 0,
    };
    m.attributes.push(TcAttribute::Kind("clsact".into()));
    m
}

/// Deletes the clsact qdisc, as `tc qdisc del dev D clsact` (its filters go with it). None
/// there (ENOENT), or an ingress qdisc instead (EINVAL: the kind does not match), is Ok.
pub fn clsact_del(ifindex: u32) -> Result<()> {
    let ctx = Ctx::ifindex("delete clsact", ifindex);
    let m = clsact_message(ifindex_i32(ifindex, &ctx)?);
    match route(RouteNetlinkMessage::DelQueueDiscipline(m), NLM_F_ACK) {
        Ok(_) | Err(Fail::Errno(libc::ENOENT | libc::EINVAL)) => Ok(()),
        Err(e) => Err(ctx.err(e)),
    }
}

/// Adds a clsact qdisc, as `tc qdisc add dev D clsact`. Returns false when one is there
/// already (EEXIST), true when this made it.
pub fn clsact_add(ifindex: u32) -> Result<bool> {
    let ctx = Ctx::ifindex("add clsact", ifindex);
    let m = clsact_message(ifindex_i32(ifindex, &ctx)?);
    match route(
        RouteNetlinkMessage::NewQueueDiscipline(m),
        NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
    ) {
        Ok(_) => Ok(true),
        Err(Fail::Errno(libc::EEXIST)) => Ok(false),
        Err(e) => Err(ctx.err(e)),
    }
}

/// fq's counters, for `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FqStats {
    /// TCA_FQ_PLIMIT as configured.
    pub limit: u32,
    /// Packets queued now (gnet_stats_queue.qlen).
    pub backlog_packets: u32,
    /// Bytes queued now (gnet_stats_queue.backlog).
    pub backlog_bytes: u32,
    /// Packets fq dropped (gnet_stats_queue.drops).
    pub dropped: u32,
    /// tc_fq_qd_stats.flows_plimit: drops at the per-flow limit.
    pub flows_plimit: u64,
    /// tc_fq_qd_stats.horizon_drops: drops beyond the horizon.
    pub horizon_drops: u64,
}

// struct tc_fq_qd_stats (pkt_sched.h): eight 8-byte fields, four u32, then ce_mark,
// horizon_drops, horizon_caps. horizon_* came with 5.7; a shorter struct lacks them.
const FQ_XSTATS_FLOWS_PLIMIT: usize = 4 * 8;
const FQ_XSTATS_HORIZON_DROPS: usize = 8 * 8 + 4 * 4 + 8;

/// Reads flows_plimit and horizon_drops out of tc_fq_qd_stats; what the struct is too short
/// to hold reads as 0.
fn parse_fq_xstats(b: &[u8]) -> (u64, u64) {
    (
        nla::u64_at(b, FQ_XSTATS_FLOWS_PLIMIT).unwrap_or(0),
        nla::u64_at(b, FQ_XSTATS_HORIZON_DROPS).unwrap_or(0),
    )
}

/// TCA_FQ_PLIMIT out of fq's TCA_OPTIONS (which netlink-packet-route keeps raw for fq).
fn fq_limit(m: &TcMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Other(raw) => {
                let mut b = vec![0; raw.buffer_len()];
                raw.emit(&mut b);
                // `raw` is the whole TCA_OPTIONS attribute: its payload holds TCA_FQ_*.
                let inner = nla::iter(&b).next().map(|(_, v)| v.to_vec())?;
                nla::find(&inner, TCA_FQ_PLIMIT).and_then(|v| nla::u32_at(v, 0))
            }
            _ => None,
        }),
        _ => None,
    })
}

/// Counters of netfault's own root fq (kind fq, handle [`NETFAULT_FQ_HANDLE`]); None when the
/// root is anything else.
pub fn fq_stats(ifindex: u32) -> Result<Option<FqStats>> {
    let ctx = Ctx::ifindex("read fq stats", ifindex);
    let Some(m) = root_message(ifindex, &ctx)? else {
        return Ok(None);
    };
    if kind_of(&m) != Some("fq") || handle_u32(m.header.handle) != NETFAULT_FQ_HANDLE {
        return Ok(None);
    }
    let mut s = FqStats {
        limit: fq_limit(&m).unwrap_or(0),
        ..FqStats::default()
    };
    let mut app = None;
    for a in &m.attributes {
        match a {
            TcAttribute::Stats2(v) => {
                for s2 in v {
                    match s2 {
                        TcStats2::Queue(q) => {
                            s.backlog_packets = q.qlen;
                            s.backlog_bytes = q.backlog;
                            s.dropped = q.drops;
                        }
                        TcStats2::App(TcXstats::Other(b)) => app = Some(b.clone()),
                        _ => {}
                    }
                }
            }
            // TCA_XSTATS carries the same struct for old dumpers.
            TcAttribute::Xstats(TcXstats::Other(b)) if app.is_none() => app = Some(b.clone()),
            _ => {}
        }
    }
    if let Some(b) = app {
        (s.flows_plimit, s.horizon_drops) = parse_fq_xstats(&b);
    }
    Ok(Some(s))
}

/// The basic classifier's ematch tree for `meta(tc_index eq VALUE)`, as tc builds it:
/// TCA_EMATCH_TREE_HDR {nmatches 1, progid 0}, TCA_EMATCH_TREE_LIST { 1: tcf_ematch_hdr
/// {matchid 0, kind TCF_EM_META, flags 0 (last), pad} followed by TCA_EM_META_HDR
/// {left: int tc_index op eq, right: int value}, TCA_EM_META_LVALUE u32 0 (no mask),
/// TCA_EM_META_RVALUE u32 VALUE }.
fn tc_index_ematch(value: u16) -> Vec<u8> {
    let meta_kind = |id: u16| ((TCF_META_TYPE_INT << 12) | id).to_ne_bytes();
    let mut meta_hdr = Vec::with_capacity(8);
    meta_hdr.extend_from_slice(&meta_kind(TCF_META_ID_TCINDEX));
    meta_hdr.extend_from_slice(&[0, TCF_EM_OPND_EQ]); // shift, op
    meta_hdr.extend_from_slice(&meta_kind(TCF_META_ID_VALUE));
    meta_hdr.extend_from_slice(&[0, 0]);

    let mut em = Vec::new();
    for field in [0u16, TCF_EM_META, 0, 0] {
        em.extend_from_slice(&field.to_ne_bytes()); // matchid, kind, flags, pad
    }
    nla::put(&mut em, TCA_EM_META_HDR, &meta_hdr);
    nla::put_u32(&mut em, TCA_EM_META_LVALUE, 0);
    nla::put_u32(&mut em, TCA_EM_META_RVALUE, u32::from(value));

    let mut list = Vec::new();
    nla::put(&mut list, 1, &em); // ematches are numbered from 1
    let mut tree = Vec::new();
    let mut hdr = 1u16.to_ne_bytes().to_vec();
    hdr.extend_from_slice(&0u16.to_ne_bytes());
    nla::put(&mut tree, TCA_EMATCH_TREE_HDR, &hdr);
    nla::put(&mut tree, TCA_EMATCH_TREE_LIST, &list);
    tree
}

/// `action mirred egress redirect dev TARGET` as TCA_BASIC_ACT's payload (typed action).
fn mirred_redirect_actions(target_ifindex: u32) -> Vec<u8> {
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = target_ifindex;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    let actions = [action];
    let mut b = vec![0; actions.as_slice().buffer_len()];
    actions.as_slice().emit(&mut b);
    b
}

fn ingress_filter(ifindex: i32, prio: u16) -> TcMessage {
    clsact_filter(ifindex, prio, TC_H_MIN_INGRESS)
}

/// A filter message on one clsact hook (`minor`: ingress or egress), all protocols.
fn clsact_filter(ifindex: i32, prio: u16, minor: u16) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex);
    m.header.parent = TcHandle {
        major: 0xFFFF,
        minor,
    };
    // tcm_info: priority in the upper half, protocol (network order) in the lower.
    m.header.info = (u32::from(prio) << 16) | u32::from(ETH_P_ALL.to_be());
    m
}

fn mirred_filter_message(ifindex: i32, prio: u16, tc_index: u16, target: u32) -> TcMessage {
    let mut m = ingress_filter(ifindex, prio);
    m.attributes.push(TcAttribute::Kind("basic".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::Other(DefaultNla::new(
            TCA_BASIC_EMATCHES,
            tc_index_ematch(tc_index),
        )),
        TcOption::Other(DefaultNla::new(
            TCA_BASIC_ACT,
            mirred_redirect_actions(target),
        )),
    ]));
    m
}

/// Adds, on the clsact ingress hook, `tc filter add dev D ingress prio PRIO protocol all basic
/// match 'meta(tc_index eq TC_INDEX)' action mirred egress redirect dev TARGET`. The clsact
/// qdisc must exist. A kernel without cls_basic or em_meta answers ENOENT:
/// [`NetlinkError::FilterKindUnknown`].
pub fn mirred_filter_add(
    ifindex: u32,
    prio: u16,
    tc_index: u16,
    target_ifindex: u32,
) -> Result<()> {
    let ctx = Ctx::ifindex("add mirred filter", ifindex);
    let m = mirred_filter_message(ifindex_i32(ifindex, &ctx)?, prio, tc_index, target_ifindex);
    filter_add(ctx, m, "basic with meta ematch (cls_basic, em_meta)")
}

/// Sends a new filter; a kind the kernel lacks is named. tcf_proto_lookup_ops (classifier),
/// tcf_em_validate (ematch) and tcf_action_init (action) all answer ENOENT.
fn filter_add(ctx: Ctx, m: TcMessage, kind: &str) -> Result<()> {
    match route(
        RouteNetlinkMessage::NewTrafficFilter(m),
        NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
    ) {
        Ok(_) => Ok(()),
        Err(Fail::Errno(e)) if e == libc::ENOENT => Err(NetlinkError::FilterKindUnknown {
            op: ctx.op,
            dev: ctx.dev,
            kind: kind.into(),
            source: std::io::Error::from_raw_os_error(e),
        }),
        Err(e) => Err(ctx.err(e)),
    }
}

/// Deletes every filter at `prio` (protocol 0: any, as `tc filter del ... prio P` sends). None
/// there (ENOENT), or no clsact qdisc (EINVAL), is Ok.
fn filter_del(ctx: Ctx, mut m: TcMessage, prio: u16) -> Result<()> {
    m.header.info = u32::from(prio) << 16;
    match route(RouteNetlinkMessage::DelTrafficFilter(m), NLM_F_ACK) {
        Ok(_) | Err(Fail::Errno(libc::ENOENT | libc::EINVAL)) => Ok(()),
        Err(e) => Err(ctx.err(e)),
    }
}

/// Deletes every filter at `prio` on the clsact ingress hook (see `filter_del`).
pub fn mirred_filter_del(ifindex: u32, prio: u16) -> Result<()> {
    let ctx = Ctx::ifindex("delete mirred filter", ifindex);
    let m = ingress_filter(ifindex_i32(ifindex, &ctx)?, prio);
    filter_del(ctx, m, prio)
}

fn bpf_mirred_filter_message(
    ifindex: i32,
    prio: u16,
    prog_fd: u32,
    prog_name: &str,
    target: u32,
) -> TcMessage {
    let mut m = clsact_filter(ifindex, prio, TC_H_MIN_EGRESS);
    m.attributes.push(TcAttribute::Kind("bpf".into()));
    let mut name = prog_name.as_bytes().to_vec();
    name.push(0);
    // No TCA_BPF_FLAGS: not direct-action, so the program's verdict selects (-1) or passes
    // (0) and the filter's own action runs on what it selects.
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::Other(DefaultNla::new(TCA_BPF_FD, prog_fd.to_ne_bytes().to_vec())),
        TcOption::Other(DefaultNla::new(TCA_BPF_NAME, name)),
        TcOption::Other(DefaultNla::new(
            TCA_BPF_ACT,
            mirred_redirect_actions(target),
        )),
    ]));
    m
}

/// Adds, on the clsact egress hook, `tc filter add dev D egress prio PRIO protocol all bpf fd
/// FD name NAME action mirred egress redirect dev TARGET`: what the classifier selects goes to
/// TARGET. The clsact qdisc must exist. The filter holds its own reference to the program.
pub fn egress_bpf_mirred_filter_add(
    ifindex: u32,
    prio: u16,
    prog: std::os::fd::BorrowedFd<'_>,
    prog_name: &str,
    target_ifindex: u32,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    let ctx = Ctx::ifindex("add segmenting filter", ifindex);
    let fd = u32::try_from(prog.as_raw_fd()).map_err(|_| ctx.protocol("negative program fd"))?;
    let m = bpf_mirred_filter_message(
        ifindex_i32(ifindex, &ctx)?,
        prio,
        fd,
        prog_name,
        target_ifindex,
    );
    filter_add(ctx, m, "bpf with a mirred action (cls_bpf, act_mirred)")
}

/// Deletes every filter at `prio` on the clsact egress hook (see `filter_del`).
pub fn egress_filter_del(ifindex: u32, prio: u16) -> Result<()> {
    let ctx = Ctx::ifindex("delete egress filter", ifindex);
    let m = clsact_filter(ifindex_i32(ifindex, &ctx)?, prio, TC_H_MIN_EGRESS);
    filter_del(ctx, m, prio)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One attribute as the kernel reads it: length (header included), type, padded payload.
    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    #[test]
    fn fq_options_encoding() {
        let o = FqOptions {
            limit: 12_000,
            flow_limit: 11_000,
            horizon_us: 10_000_000,
            horizon_drop: true,
            maxrate_bytes_per_sec: 4_250_000_000,
        };
        let m = fq_message(5, 0x4e46, &o);
        assert_eq!(handle_u32(m.header.handle), NETFAULT_FQ_HANDLE);
        assert_eq!(handle_u32(m.header.parent), TC_H_ROOT);
        assert_eq!(m.header.index, 5);
        let opts = m
            .attributes
            .iter()
            .find(|a| matches!(a, TcAttribute::Options(_)))
            .unwrap();
        let mut b = vec![0; opts.buffer_len()];
        opts.emit(&mut b);
        // Literal uapi ids: PLIMIT 1, FLOW_PLIMIT 2, FLOW_MAX_RATE 7, HORIZON 14, HORIZON_DROP 15.
        let mut inner = Vec::new();
        inner.extend(attr(1, &12_000u32.to_ne_bytes()));
        inner.extend(attr(2, &11_000u32.to_ne_bytes()));
        inner.extend(attr(7, &4_250_000_000u32.to_ne_bytes()));
        inner.extend(attr(14, &10_000_000u32.to_ne_bytes()));
        inner.extend(attr(15, &[1]));
        assert_eq!(b, attr(2, &inner)); // TCA_OPTIONS = 2
        // And the whole message says kind "fq".
        assert_eq!(kind_of(&m), Some("fq"));
        let off = fq_message(
            5,
            0x4e46,
            &FqOptions {
                horizon_drop: false,
                ..o
            },
        );
        let mut b = vec![0; off.buffer_len()];
        off.emit(&mut b);
        assert!(b.windows(8).any(|w| w == attr(15, &[0]).as_slice()));
    }

    /// The TCA_FQ_* ids against the installed uapi header, where there is one (linux-libc-dev):
    /// the enum counted from TCA_FQ_UNSPEC.
    #[test]
    fn fq_ids_match_the_uapi_header() {
        let Ok(h) = std::fs::read_to_string("/usr/include/linux/pkt_sched.h") else {
            eprintln!("no /usr/include/linux/pkt_sched.h: skipped");
            return;
        };
        let ids: Vec<&str> = h
            .lines()
            .map(str::trim)
            .skip_while(|l| !l.starts_with("TCA_FQ_UNSPEC"))
            .take_while(|l| !l.starts_with("__TCA_FQ_MAX"))
            .filter(|l| l.starts_with("TCA_FQ_"))
            .map(|l| l.split([',', ' ', '\t']).next().unwrap())
            .collect();
        let id = |name: &str| ids.iter().position(|n| *n == name).unwrap() as u16;
        assert_eq!(id("TCA_FQ_PLIMIT"), TCA_FQ_PLIMIT);
        assert_eq!(id("TCA_FQ_FLOW_PLIMIT"), TCA_FQ_FLOW_PLIMIT);
        assert_eq!(id("TCA_FQ_FLOW_MAX_RATE"), TCA_FQ_FLOW_MAX_RATE);
        assert_eq!(id("TCA_FQ_HORIZON"), TCA_FQ_HORIZON);
        assert_eq!(id("TCA_FQ_HORIZON_DROP"), TCA_FQ_HORIZON_DROP);
    }

    #[test]
    fn fq_limit_reads_back_from_raw_options() {
        let o = FqOptions {
            limit: 777,
            flow_limit: 1,
            horizon_us: 1,
            horizon_drop: false,
            maxrate_bytes_per_sec: 1,
        };
        // As netlink-packet-route parses fq's options: one raw TCA_OPTIONS attribute.
        let mut inner = Vec::new();
        for op in fq_options(&o) {
            let mut b = vec![0; op.buffer_len()];
            op.emit(&mut b);
            inner.extend(b);
        }
        let mut m = TcMessage::default();
        m.attributes.push(TcAttribute::Options(vec![TcOption::Other(
            DefaultNla::new(2, inner),
        )]));
        assert_eq!(fq_limit(&m), Some(777));
    }

    #[test]
    fn fq_xstats_offsets() {
        // struct tc_fq_qd_stats: flows_plimit is the 5th u64, horizon_drops after four u32 and
        // ce_mark; 104 bytes in all on 5.7+.
        let mut b = vec![0u8; 104];
        b[32..40].copy_from_slice(&7u64.to_ne_bytes());
        b[88..96].copy_from_slice(&9u64.to_ne_bytes());
        assert_eq!(parse_fq_xstats(&b), (7, 9));
        // Before 5.7 the struct ends at ce_mark: no horizon drops, no panic.
        assert_eq!(parse_fq_xstats(&b[..88]), (7, 0));
        assert_eq!(parse_fq_xstats(&[]), (0, 0));
    }

    #[test]
    fn ematch_encoding() {
        let t = tc_index_ematch(0x1234);
        let mut meta = Vec::new();
        meta.extend_from_slice(&[0u16, 4, 0, 0].map(u16::to_ne_bytes).concat());
        let hdr = [
            0x100du16.to_ne_bytes(),
            [0, 0],
            0x1000u16.to_ne_bytes(),
            [0, 0],
        ]
        .concat();
        meta.extend(attr(1, &hdr));
        meta.extend(attr(2, &0u32.to_ne_bytes()));
        meta.extend(attr(3, &0x1234u32.to_ne_bytes()));
        let mut want = attr(1, &[1u16.to_ne_bytes(), 0u16.to_ne_bytes()].concat());
        want.extend(attr(2, &attr(1, &meta)));
        assert_eq!(t, want);
    }

    #[test]
    fn mirred_filter_header_and_action() {
        let m = mirred_filter_message(3, 49153, 0x4e46, 9);
        assert_eq!(handle_u32(m.header.parent), 0xFFFF_FFF2);
        assert_eq!(m.header.info, (49153 << 16) | u32::from(0x0003u16.to_be()));
        let act = mirred_redirect_actions(9);
        // One action at order 1: TCA_ACT_KIND "mirred", TCA_ACT_OPTIONS { TCA_MIRRED_PARMS }.
        let (order, a) = nla::iter(&act).next().unwrap();
        assert_eq!(order, 1);
        assert_eq!(nla::find(a, 1).map(nla::str_of).as_deref(), Some("mirred"));
        let parms = nla::find(nla::find(a, 2).unwrap(), 2).unwrap();
        // struct tc_mirred: tc_gen (index, capab, action, refcnt, bindcnt), eaction, ifindex.
        assert_eq!(parms.len(), 28);
        assert_eq!(nla::u32_at(parms, 8), Some(4)); // TC_ACT_STOLEN
        assert_eq!(nla::u32_at(parms, 20), Some(1)); // TCA_EGRESS_REDIR
        assert_eq!(nla::u32_at(parms, 24), Some(9));
    }

    #[test]
    fn handles_as_tc_prints_them() {
        assert_eq!(format_handle(NETFAULT_FQ_HANDLE), "4e46:");
        assert_eq!(format_handle(0), "0:");
        assert_eq!(format_handle(0x1_0000), "1:");
        assert_eq!(format_handle(0x1_0010), "1:10");
    }
}
