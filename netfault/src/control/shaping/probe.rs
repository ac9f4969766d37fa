//! Does `bpf_redirect` from tc ingress to an IFB device work on this kernel? Before 6.4 it
//! does not: `__bpf_tx_skb` left `skb->redirected` unset and IFB drops such packets (fixed by
//! "bpf: Set skb redirect and from_ingress info in __bpf_tx_skb"; stable kernels may carry the
//! fix, or not). netfault then reaches the IFB through a mirred filter instead.
//!
//! Asked of the kernel rather than read from its version: in a throwaway network namespace,
//! made by a dedicated thread with `unshare(CLONE_NEWNET)`, a veth pair and an IFB device;
//! netfault's own tc ingress program on one end with a catch-all ingress delay pointed at the
//! IFB (as `rule add --dir ingress --delay` sets it up); one UDP frame sent into the other end
//! over `AF_PACKET`. IFB counts the redirected packet as received, then either as transmitted
//! (it re-injected it: redirect works) or as dropped (it refused it). The devices are deleted
//! and the namespace goes with the thread; the programs and maps are private to the call.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::OnceLock,
    time::Duration,
};

use super::device;
use crate::{
    control::{Result, pipeline, queues::QdiscError, state::RuleEntry},
    dataplane::{self as kernel, Hook, Maps},
    netlink as nl,
    spec::{Direction, Kind, RuleSpec},
};

const VETH_OUT: &str = "nfprobe0";
const VETH_IN: &str = "nfprobe1";
const IFB: &str = "nfprobeifb";

/// How often the IFB's counters are read, and how many times at most: 3 s in all, which a
/// TCG guest needs; the answer comes in milliseconds where the kernel is fast.
const POLL_EVERY: Duration = Duration::from_millis(20);
const POLLS: u32 = 150;
/// The frame is sent again every this many polls, should one be lost.
const RESEND_EVERY: u32 = 25;

/// The answer, once per process (the kernel does not change under it).
static ANSWER: OnceLock<bool> = OnceLock::new();

/// Whether `bpf_redirect` from tc ingress reaches an IFB device, probed once per process.
/// [`QdiscError::Probe`] when the probe could not tell; [`QdiscError::IfbMissing`] without IFB.
pub fn bpf_redirect_to_ifb_works() -> Result<bool> {
    if let Some(a) = ANSWER.get() {
        return Ok(*a);
    }
    let answer = std::thread::scope(|s| {
        s.spawn(probe_in_new_netns)
            .join()
            .unwrap_or_else(|_| Err(QdiscError::Probe("the probe thread panicked".into()).into()))
    })?;
    log::debug!("probe: bpf_redirect to an IFB device works: {answer}");
    Ok(*ANSWER.get_or_init(|| answer))
}

/// The documented fallback where the probe cannot tell: the kernel version (6.4 has the fix;
/// a stable kernel that backported it is then sent through mirred needlessly, which works).
pub fn redirect_works_by_version() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 4, 0))
}

fn probe_in_new_netns() -> Result<bool> {
    // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new namespace; the thread
    // ends with the probe, and the namespace with it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(QdiscError::Probe(format!("unshare(CLONE_NEWNET): {e}")).into());
    }
    let res = probe_here();
    // Deleting the veth takes its peer; nothing is left even before the namespace goes.
    for name in [VETH_OUT, IFB] {
        if let Ok(Some(i)) = nl::link_index(name) {
            let _ = nl::link_del(i);
        }
    }
    res
}

fn nl_probe(e: nl::NetlinkError) -> crate::control::Error {
    QdiscError::Netlink {
        what: "probe whether bpf_redirect reaches an IFB device".into(),
        source: e,
    }
    .into()
}

fn probe_here() -> Result<bool> {
    let (out, inn) = nl::veth_add(VETH_OUT, VETH_IN).map_err(nl_probe)?;
    nl::link_set_up(out).map_err(nl_probe)?;
    nl::link_set_up(inn).map_err(nl_probe)?;
    let ifb = device::ensure_ifb(IFB)?;

    let mut ebpf = kernel::load_private()?;
    let mut maps = Maps::take(&mut ebpf)?;
    let (_hook, _link) = kernel::attach_tc_held(&mut ebpf, VETH_IN, Hook::TcIngress)?;
    let mut spec = RuleSpec::new("ifb-probe", Kind::Rule);
    spec.dir = Direction::Ingress;
    spec.act.shape.delay = Some(Duration::from_millis(1));
    let rules = [RuleEntry {
        spec,
        slot: 0,
        seq: 0,
        expires_mono_ns: 0,
        hold_until_mono_ns: 0,
    }];
    let (compiled, values) = pipeline::compile(&pipeline::ordered(&rules), |_| 0)?;
    maps.publish_set(&compiled, &values)?;
    // No XDP of ours here: tc applies the ingress rule.
    maps.set_tc_only(inn, true)?;
    maps.set_ifb(inn, Some(ifb))?;

    let sock = packet_socket()?;
    for i in 0..POLLS {
        if i % RESEND_EVERY == 0 {
            send_frame(&sock, out)?;
        }
        std::thread::sleep(POLL_EVERY);
        let s = nl::link_stats(ifb).map_err(nl_probe)?;
        if s.tx_packets > 0 {
            return Ok(true);
        }
        if s.rx_dropped > 0 || s.tx_dropped > 0 {
            return Ok(false);
        }
    }
    Err(QdiscError::Probe(format!(
        "no packet came through or was dropped by the IFB device within {} s",
        (POLL_EVERY * POLLS).as_secs()
    ))
    .into())
}

fn packet_socket() -> Result<OwnedFd> {
    // Protocol 0: this socket only sends.
    // SAFETY: plain socket(2); ownership passes to OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(QdiscError::Probe(format!("AF_PACKET socket: {e}")).into());
    }
    // SAFETY: a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_frame(sock: &OwnedFd, ifindex: u32) -> Result<()> {
    let frame = probe_frame();
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: the buffer and the address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return Err(QdiscError::Probe(format!("send the probe frame: {e}")).into());
    }
    Ok(())
}

/// A broadcast Ethernet frame holding a UDP datagram from 192.0.2.1 to 192.0.2.2 (documentation
/// addresses; nothing answers it, the namespace has no addresses).
fn probe_frame() -> Vec<u8> {
    let payload = b"netfault ifb probe";
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&(libc::ETH_P_IP as u16).to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = libc::IPPROTO_UDP as u8;
    ip[12..16].copy_from_slice(&[192, 0, 2, 1]);
    ip[16..20].copy_from_slice(&[192, 0, 2, 2]);
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(payload);
    f
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_a_valid_ipv4_udp_datagram() {
        let f = probe_frame();
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let ip = &f[14..34];
        // A header with its checksum in sums to 0xffff: the complement is 0.
        assert_eq!(ipv4_checksum(ip), 0);
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            f.len() - 14
        );
        assert_eq!(ip[9], 17);
        assert_eq!(
            usize::from(u16::from_be_bytes([f[38], f[39]])),
            f.len() - 34
        );
    }

    #[test]
    fn checksum_of_a_known_header() {
        // The example of RFC 1071's usual illustration (Wikipedia's IPv4 header checksum).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
    }
}
