//! Links: lookup, MTU, creation (IFB, veth, dummy), up, delete, and which XDP program is on one.
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{
        InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp,
        XdpAttached,
    },
};

use super::{
    error::{Ctx, Fail, NetlinkError, Result},
    route,
};

fn by_name(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_owned()));
    m
}

fn by_index(ifindex: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m
}

/// RTM_GETLINK for one link; Ok(None) when it does not exist.
fn get(msg: LinkMessage) -> std::result::Result<Option<LinkMessage>, Fail> {
    match route(RouteNetlinkMessage::GetLink(msg), 0) {
        Ok(answers) => Ok(answers.into_iter().find_map(|a| match a {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })),
        Err(Fail::Errno(libc::ENODEV)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn get_index(ifindex: u32, op: &'static str) -> Result<LinkMessage> {
    let ctx = Ctx::ifindex(op, ifindex);
    get(by_index(ifindex))
        .map_err(|e| ctx.err(e))?
        .ok_or_else(|| ctx.err(Fail::Errno(libc::ENODEV)))
}

/// The index of the link called `name` in this thread's namespace; None if there is none.
pub fn link_index(name: &str) -> Result<Option<u32>> {
    let ctx = Ctx::new("look up link", name);
    Ok(get(by_name(name))
        .map_err(|e| ctx.err(e))?
        .map(|l| l.header.index))
}

/// The link's MTU.
pub fn link_mtu(ifindex: u32) -> Result<u32> {
    let op = "read MTU";
    get_index(ifindex, op)?
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .ok_or_else(|| Ctx::ifindex(op, ifindex).protocol("no IFLA_MTU in the answer"))
}

/// The most segments the link lets one GSO packet carry (IFLA_GSO_MAX_SEGS).
pub fn link_gso_max_segs(ifindex: u32) -> Result<u32> {
    let op = "read gso_max_segs";
    get_index(ifindex, op)?
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::GsoMaxSegs(n) => Some(*n),
            _ => None,
        })
        .ok_or_else(|| Ctx::ifindex(op, ifindex).protocol("no IFLA_GSO_MAX_SEGS in the answer"))
}

/// Sets IFLA_GSO_MAX_SEGS on an existing link (kernels 5.19+; `ip link set DEV gso_max_segs N`).
/// Sockets read it when their route is set up, so a connection opened before keeps its old
/// value until its route is checked again (see `control::wire`).
pub fn link_set_gso_max_segs(ifindex: u32, segs: u32) -> Result<()> {
    let mut m = by_index(ifindex);
    m.attributes.push(LinkAttribute::GsoMaxSegs(segs));
    route(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
        .map(drop)
        .map_err(|e| Ctx::ifindex("set gso_max_segs", ifindex).err(e))
}

/// A link's packet counters (IFLA_STATS64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// The link's counters.
pub fn link_stats(ifindex: u32) -> Result<LinkStats> {
    let op = "read link stats";
    get_index(ifindex, op)?
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(LinkStats {
                rx_packets: s.rx_packets,
                tx_packets: s.tx_packets,
                rx_dropped: s.rx_dropped,
                tx_dropped: s.tx_dropped,
            }),
            _ => None,
        })
        .ok_or_else(|| Ctx::ifindex(op, ifindex).protocol("no IFLA_STATS64 in the answer"))
}

/// RTM_NEWLINK creating `name` of `kind`; an existing device of that name is fine.
fn create(name: &str, kind: InfoKind, data: Option<InfoData>) -> Result<u32> {
    create_with(name, kind, data, Vec::new())
}

/// [`create`] with more attributes in the request (a queue length, ...).
fn create_with(
    name: &str,
    kind: InfoKind,
    data: Option<InfoData>,
    attrs: Vec<LinkAttribute>,
) -> Result<u32> {
    let ctx = Ctx::new("create link", name);
    let kind_name = format!("{kind}");
    let mut m = by_name(name);
    m.attributes.extend(attrs);
    let mut info = vec![LinkInfo::Kind(kind)];
    info.extend(data.map(LinkInfo::Data));
    m.attributes.push(LinkAttribute::LinkInfo(info));
    match route(
        RouteNetlinkMessage::NewLink(m),
        NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
    ) {
        Ok(_) | Err(Fail::Errno(libc::EEXIST)) => {}
        // rtnl_newlink answers EOPNOTSUPP when no driver registers the kind.
        Err(Fail::Errno(e)) if e == libc::EOPNOTSUPP => {
            return Err(NetlinkError::LinkKindUnsupported {
                op: ctx.op,
                dev: ctx.dev,
                kind: kind_name,
                source: std::io::Error::from_raw_os_error(e),
            });
        }
        Err(e) => return Err(ctx.err(e)),
    }
    link_index(name)?.ok_or_else(|| ctx.protocol("the device does not exist after its creation"))
}

/// Creates the IFB device `name` (an existing one is kept), brings it up, returns its index.
pub fn ifb_add(name: &str) -> Result<u32> {
    let ifindex = create(name, InfoKind::Ifb, None)?;
    link_set_up(ifindex)?;
    Ok(ifindex)
}

/// [`ifb_add`] with the device's queue length set at creation, before it is up: the default
/// qdisc the kernel attaches when it comes up sizes itself from it. (An existing device is
/// kept as it is.)
pub fn ifb_add_with_txqlen(name: &str, txqlen: u32) -> Result<u32> {
    let ifindex = create_with(
        name,
        InfoKind::Ifb,
        None,
        vec![LinkAttribute::TxQueueLen(txqlen)],
    )?;
    link_set_up(ifindex)?;
    Ok(ifindex)
}

/// Creates a veth pair (left down, as the kernel makes it); returns both indexes.
pub fn veth_add(name: &str, peer: &str) -> Result<(u32, u32)> {
    let ifindex = create(
        name,
        InfoKind::Veth,
        Some(InfoData::Veth(InfoVeth::Peer(by_name(peer)))),
    )?;
    let peer_index = link_index(peer)?
        .ok_or_else(|| Ctx::new("create link", peer).protocol("veth peer missing"))?;
    Ok((ifindex, peer_index))
}

/// Creates a dummy device (left down); returns its index.
pub fn dummy_add(name: &str) -> Result<u32> {
    create(name, InfoKind::Dummy, None)
}

/// Sets IFF_UP on the link.
pub fn link_set_up(ifindex: u32) -> Result<()> {
    let mut m = by_index(ifindex);
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    route(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
        .map(drop)
        .map_err(|e| Ctx::ifindex("bring link up", ifindex).err(e))
}

/// Deletes the link; one that is already gone is fine.
pub fn link_del(ifindex: u32) -> Result<()> {
    match route(RouteNetlinkMessage::DelLink(by_index(ifindex)), NLM_F_ACK) {
        Ok(_) | Err(Fail::Errno(libc::ENODEV)) => Ok(()),
        Err(e) => Err(Ctx::ifindex("delete link", ifindex).err(e)),
    }
}

/// What kind of device a link is, from RTM_GETLINK: its IFLA_INFO_KIND (`veth`, `bridge`,
/// `vlan`, ...; none for a NIC driven by a hardware driver) and whether it is a loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkKind {
    pub info_kind: Option<String>,
    pub loopback: bool,
}

/// The link's kind (see [`LinkKind`]).
pub fn link_kind(ifindex: u32) -> Result<LinkKind> {
    let link = get_index(ifindex, "read link kind")?;
    let info_kind = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    });
    Ok(LinkKind {
        info_kind,
        loopback: link.header.flags.contains(LinkFlags::Loopback),
    })
}

/// How an XDP program is attached (IFLA_XDP_ATTACHED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// In the driver (XDP_ATTACHED_DRV).
    Native,
    /// In the stack (XDP_ATTACHED_SKB).
    Generic,
    /// On the NIC (XDP_ATTACHED_HW).
    Offload,
    /// Several modes at once (XDP_ATTACHED_MULTI); `prog_id` is the first of drv, skb, hw.
    Multi,
}

/// The XDP program attached to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpInfo {
    pub prog_id: u32,
    pub mode: XdpAttachMode,
}

/// The XDP program attached to the link, from IFLA_XDP; None when there is none.
pub fn xdp_attached(ifindex: u32) -> Result<Option<XdpInfo>> {
    let link = get_index(ifindex, "query XDP")?;
    let Some(xdp) = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(x) => Some(x),
        _ => None,
    }) else {
        return Ok(None);
    };
    let id = |want: fn(&LinkXdp) -> Option<u32>| xdp.iter().find_map(want);
    let prog = id(|x| match x {
        LinkXdp::ProgId(i) => Some(*i),
        _ => None,
    });
    let drv = id(|x| match x {
        LinkXdp::DrvProgId(i) => Some(*i),
        _ => None,
    });
    let skb = id(|x| match x {
        LinkXdp::SkbProgId(i) => Some(*i),
        _ => None,
    });
    let hw = id(|x| match x {
        LinkXdp::HwProgId(i) => Some(*i),
        _ => None,
    });
    let attached = xdp.iter().find_map(|x| match x {
        LinkXdp::Attached(a) => Some(a),
        _ => None,
    });
    let (mode, mode_id) = match attached {
        Some(XdpAttached::Driver) => (XdpAttachMode::Native, drv),
        Some(XdpAttached::SocketBuffer) => (XdpAttachMode::Generic, skb),
        Some(XdpAttached::Hardware) => (XdpAttachMode::Offload, hw),
        Some(XdpAttached::Multiple) => (XdpAttachMode::Multi, drv.or(skb).or(hw)),
        _ => return Ok(None),
    };
    // Single-mode attachments carry IFLA_XDP_PROG_ID; the per-mode ids are the fallback.
    Ok(prog.or(mode_id).map(|prog_id| XdpInfo { prog_id, mode }))
}

/// The XDP program another tool attached to the link, as "program ID (NAME)" (just the id
/// when its name cannot be read); None when there is none or the query fails.
pub fn xdp_holder(ifindex: u32) -> Option<String> {
    let id = xdp_attached(ifindex).ok()??.prog_id;
    let name = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .filter(|n| !n.is_empty());
    Some(match name {
        Some(n) => format!("program {id} ({n})"),
        None => format!("program {id}"),
    })
}
