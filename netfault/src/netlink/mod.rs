//! Netlink in place of iproute2 (`tc`, `ip`) and the ethtool ioctl: qdiscs and filters,
//! links (IFB, MTU, XDP query) and ethtool settings (link speed, offload features).
//!
//! Every call is blocking and opens its own socket on the calling thread, inside a
//! current-thread tokio runtime that lives for the call: a thread that `setns`ed into a
//! network namespace works on that namespace (the namespace is per thread, and a shared
//! socket would stay in the namespace it was opened in).
//!
//! Typed messages come from netlink-packet-route and the ethtool crate; what they lack (fq's
//! options and xstats, the basic classifier's ematch tree, ethtool's feature bitsets) is
//! built and read as raw attributes from the uapi headers' layouts.
mod error;
mod ethtool;
mod link;
mod nla;
mod qdisc;

use std::{future::Future, time::Duration};

use futures_util::StreamExt;
use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;

pub use error::{NetlinkError, Result};
pub use ethtool::{Features, features, link_speed_bits, set_features};
pub use link::{
    LinkKind, LinkStats, XdpAttachMode, XdpInfo, dummy_add, ifb_add, ifb_add_with_txqlen, link_del,
    link_gso_max_segs, link_index, link_kind, link_mtu, link_set_gso_max_segs, link_set_up,
    link_stats, veth_add, xdp_attached, xdp_holder,
};
pub use qdisc::{
    FqOptions, FqStats, NETFAULT_FQ_HANDLE, QdiscInfo, clsact_add, clsact_del,
    egress_bpf_mirred_filter_add, egress_filter_del, format_handle, fq_replace, fq_stats,
    mirred_filter_add, mirred_filter_del, qdisc_del_root, root_qdisc,
};

use error::Fail;

/// How long one request may wait for the kernel. netlink-proto drops an answer it cannot
/// decode (it logs it), which would otherwise leave a request waiting forever.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `f` on a fresh current-thread runtime on this thread: the socket `f` opens belongs to
/// this thread's network namespace, and nothing outlives the call. Called from inside a
/// runtime (`stats --watch`), where tokio refuses to start another, it runs on a scoped thread
/// instead, which starts in the caller's network namespace.
pub(crate) fn block_on<T, Fut>(f: impl FnOnce() -> Fut + Send) -> std::result::Result<T, Fail>
where
    T: Send,
    Fut: Future<Output = std::result::Result<T, Fail>>,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| {
            s.spawn(|| block_on_here(f))
                .join()
                .unwrap_or_else(|_| Err(Fail::Protocol("the netlink thread panicked".into())))
        });
    }
    block_on_here(f)
}

fn block_on_here<T, Fut>(f: impl FnOnce() -> Fut) -> std::result::Result<T, Fail>
where
    Fut: Future<Output = std::result::Result<T, Fail>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(Fail::Socket)?;
    rt.block_on(async {
        tokio::time::timeout(ANSWER_TIMEOUT, f())
            .await
            .unwrap_or_else(|_| {
                Err(Fail::Protocol(format!(
                    "no complete answer within {} s",
                    ANSWER_TIMEOUT.as_secs()
                )))
            })
    })
}

/// One rtnetlink request on a new socket, returning the kernel's answers (empty for an ACK).
pub(crate) fn route(
    msg: RouteNetlinkMessage,
    flags: u16,
) -> std::result::Result<Vec<RouteNetlinkMessage>, Fail> {
    block_on(|| async move {
        let (conn, mut handle, _) = rtnetlink::new_connection().map_err(Fail::Socket)?;
        let task = tokio::spawn(conn);
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        let answers = async {
            let mut resp = handle
                .request(req)
                .map_err(|e| Fail::Protocol(format!("request not sent: {e}")))?;
            let mut out = Vec::new();
            while let Some(m) = resp.next().await {
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    // An ACK carries no code; an error a negative errno.
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            return Err(Fail::Errno(-code.get()));
                        }
                    }
                    _ => {}
                }
            }
            Ok(out)
        }
        .await;
        task.abort();
        answers
    })
}
