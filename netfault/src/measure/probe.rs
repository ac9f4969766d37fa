//! Active measurement: ICMP (v4) and ICMPv6 echo requests to each peer every interval, over
//! raw sockets (CAP_NET_RAW), each reply's arrival stamped by the kernel (SIOCGSTAMPNS, the
//! receive time of the packet just read) and each request's departure read from the same
//! clock just before it is sent. Unanswered requests are losses.
//!
//! A prober may also *listen* ([`probe_listening`]): its requests then carry a nonce, and it
//! counts the requests carrying that nonce which reach it from each peer. With every node of a
//! cluster probing every other at once (`cluster verify`), each direction of each pair is seen
//! one way: the requests a node hears from a peer crossed the wire from the peer to it, whatever
//! became of the replies.
use std::{
    collections::BTreeMap,
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// `SIOCGSTAMPNS`: the kernel's receive time of the last packet read from a socket.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;
/// How long replies are waited for after the last request.
pub const GRACE: Duration = Duration::from_secs(1);
/// How long a listening prober keeps listening after its own last request: its peers started
/// probing a little later than it did (each node is asked in parallel), and their last requests
/// must still be heard.
pub const LISTEN_TAIL: Duration = Duration::from_secs(2);
/// At most this many peers, and this many requests per peer (sequence numbers are 16 bits).
pub const MAX_PEERS: usize = 256;
pub const MAX_PER_PEER: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("open a raw {0} socket (needs CAP_NET_RAW): {1}")]
    Socket(&'static str, io::Error),
    #[error("send an echo request to {0}: {1}")]
    Send(IpAddr, io::Error),
    #[error("read echo replies: {0}")]
    Recv(io::Error),
    #[error("{0}")]
    TooMany(String),
    #[error(
        "{0} packets were dropped by this host's probe socket (the prober fell behind): the loss it saw is not the network's; lengthen --interval or probe fewer peers"
    )]
    Overrun(u32),
}

/// What one peer answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerResult {
    pub sent: u64,
    /// Round-trip times of the answered requests (µs).
    pub rtts_us: Vec<f64>,
    /// Requests carrying the listening nonce heard from this peer (its address the source);
    /// 0 when not listening.
    pub heard: u64,
}

impl PeerResult {
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - self.rtts_us.len() as f64 / self.sent as f64
        }
    }
}

fn now_realtime() -> Duration {
    // SAFETY: clock_gettime writes the timespec it is given.
    let mut ts: libc::timespec = unsafe { zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Sock {
    fd: OwnedFd,
    v6: bool,
}

impl Sock {
    fn open(v6: bool, listen: bool) -> Result<Sock, ProbeError> {
        let (domain, proto, name) = if v6 {
            (libc::AF_INET6, libc::IPPROTO_ICMPV6, "ICMPv6")
        } else {
            (libc::AF_INET, libc::IPPROTO_ICMP, "ICMP")
        };
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto,
            )
        };
        if fd < 0 {
            return Err(ProbeError::Socket(name, io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let sock = Sock {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            v6,
        };
        // Only echo replies reach the socket (a raw socket gets a copy of every ICMP packet
        // the host receives, the peers' own requests included), and echo requests when
        // listening, into a buffer that holds a few seconds of them: a reply dropped here
        // would be reported as network loss.
        if v6 {
            // struct icmp6_filter: a set bit blocks that type.
            let mut block = [u32::MAX; 8];
            block[129 >> 5] &= !(1 << (129 & 31));
            if listen {
                block[128 >> 5] &= !(1 << (128 & 31));
            }
            sock.set(libc::IPPROTO_ICMPV6, 1, &block)?;
        } else {
            // ICMP_FILTER on SOL_RAW: a set bit blocks that type; echo reply is type 0, echo
            // request type 8.
            let pass = if listen { 1u32 | 1 << 8 } else { 1 };
            sock.set(libc::SOL_RAW, 1, &!pass)?;
        }
        let bytes: libc::c_int = 8 << 20;
        if sock
            .set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes)
            .is_err()
        {
            sock.set(libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes)?;
        }
        Ok(sock)
    }

    fn set<T>(&self, level: libc::c_int, name: libc::c_int, v: &T) -> Result<(), ProbeError> {
        // SAFETY: v is valid for size_of::<T>() bytes.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (v as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(ProbeError::Socket(
                if self.v6 { "ICMPv6" } else { "ICMP" },
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Packets the kernel dropped at this socket (SO_MEMINFO's SK_MEMINFO_DROPS).
    fn drops(&self) -> u32 {
        let mut info = [0u32; 9];
        let mut len = size_of::<[u32; 9]>() as libc::socklen_t;
        // SAFETY: info is valid for len bytes.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r < 0 { 0 } else { info[8] }
    }

    fn send(&self, to: IpAddr, id: u16, seq: u16, nonce: u64) -> io::Result<()> {
        // type, code, checksum, identifier, sequence, then 16 bytes of payload: the marker
        // and the listening nonce (0 when not listening).
        let mut pkt = [0u8; 24];
        pkt[0] = if self.v6 { 128 } else { 8 };
        pkt[4..6].copy_from_slice(&id.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        pkt[8..16].copy_from_slice(MARK);
        pkt[16..24].copy_from_slice(&nonce.to_be_bytes());
        if !self.v6 {
            // ICMPv6's checksum covers a pseudo-header: the kernel fills it for raw ICMPv6
            // sockets. ICMP's is ours.
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        // SAFETY: a zeroed sockaddr_storage is valid; the family's address is written below.
        let mut sa: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match to {
            IpAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
                let sin = unsafe { &mut *(&raw mut sa).cast::<libc::sockaddr_in>() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                size_of::<libc::sockaddr_in>()
            }
            IpAddr::V6(a) => {
                // SAFETY: as above, for a sockaddr_in6.
                let sin6 = unsafe { &mut *(&raw mut sa).cast::<libc::sockaddr_in6>() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_addr.s6_addr = a.octets();
                size_of::<libc::sockaddr_in6>()
            }
        };
        // SAFETY: buffer and address are valid for the lengths given.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&raw const sa).cast(),
                len as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next echo reply with identifier `id`, or echo request carrying `nonce` (when not
    /// 0); `Ok(None)` when nothing more is queued.
    fn recv(&self, id: u16, nonce: u64) -> io::Result<Option<Msg>> {
        loop {
            let mut buf = [0u8; 1500];
            // SAFETY: a zeroed sockaddr_storage is valid for recvfrom to fill.
            let mut from: libc::sockaddr_storage = unsafe { zeroed() };
            let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: buffer and address storage are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            // SAFETY: SIOCGSTAMPNS writes a timespec.
            let mut ts: libc::timespec = unsafe { zeroed() };
            if unsafe { libc::ioctl(self.fd.as_raw_fd(), SIOCGSTAMPNS, &mut ts) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let at = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
            let pkt = &buf[..n as usize];
            // A raw ICMP socket reads the IPv4 header too; a raw ICMPv6 one does not.
            let icmp = if self.v6 {
                pkt
            } else {
                let ihl = usize::from(pkt.first().map_or(0, |b| b & 0x0f)) * 4;
                pkt.get(ihl..).unwrap_or(&[])
            };
            let (reply, request) = if self.v6 { (129, 128) } else { (0, 8) };
            if icmp.len() < 8 {
                continue;
            }
            let is_request = icmp[0] == request
                && nonce != 0
                && icmp.len() >= 24
                && &icmp[8..16] == MARK
                && icmp[16..24] == nonce.to_be_bytes();
            if !is_request && (icmp[0] != reply || icmp[4..6] != id.to_be_bytes()) {
                continue;
            }
            let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
            let addr = if self.v6 {
                // SAFETY: the kernel filled a sockaddr_in6 for an AF_INET6 socket.
                let sa: libc::sockaddr_in6 = unsafe { *(&raw const from).cast() };
                IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr))
            } else {
                // SAFETY: a sockaddr_in for an AF_INET socket.
                let sa: libc::sockaddr_in = unsafe { *(&raw const from).cast() };
                IpAddr::V4(Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()))
            };
            return Ok(Some(if is_request {
                Msg::Request(addr)
            } else {
                Msg::Reply(addr, seq, at)
            }));
        }
    }
}

/// The payload's first 8 bytes.
const MARK: &[u8; 8] = b"netfault";

/// What [`Sock::recv`] read.
enum Msg {
    /// An echo reply to us: (from, sequence, kernel receive time).
    Reply(IpAddr, u16, Duration),
    /// A listening peer's echo request, from this address.
    Request(IpAddr),
}

/// The Internet checksum of `b` (RFC 1071).
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Probes per peer for `duration` at `interval` (at least one), or why there would be too
/// many: at most [`MAX_PER_PEER`], as sequence numbers are 16 bits.
pub fn rounds(interval: Duration, duration: Duration) -> Result<u64, String> {
    let n = (duration.as_nanos() / interval.as_nanos().max(1)).max(1);
    if n > u128::from(MAX_PER_PEER) {
        return Err(format!(
            "{n} probes per peer: at most {MAX_PER_PEER} (lengthen --interval)"
        ));
    }
    Ok(n as u64)
}

/// Probes every peer every `interval` for `duration`, then waits [`GRACE`] for the last
/// replies. The caller bounds the peers ([`MAX_PEERS`]); too many probes per peer
/// ([`rounds`]) are refused, never cut short.
pub fn probe(
    peers: &[IpAddr],
    interval: Duration,
    duration: Duration,
) -> Result<BTreeMap<IpAddr, PeerResult>, ProbeError> {
    probe_listening(peers, interval, duration, None)
}

/// [`probe`], and with `listen` (a nonce, not 0) also counts the requests carrying it that
/// reach this host from each peer ([`PeerResult::heard`]), until [`LISTEN_TAIL`] after its own
/// last request.
pub fn probe_listening(
    peers: &[IpAddr],
    interval: Duration,
    duration: Duration,
    listen: Option<u64>,
) -> Result<BTreeMap<IpAddr, PeerResult>, ProbeError> {
    let rounds = rounds(interval, duration).map_err(ProbeError::TooMany)?;
    let nonce = listen.unwrap_or(0);
    let v4 = peers
        .iter()
        .any(IpAddr::is_ipv4)
        .then(|| Sock::open(false, nonce != 0))
        .transpose()?;
    let v6 = peers
        .iter()
        .any(IpAddr::is_ipv6)
        .then(|| Sock::open(true, nonce != 0))
        .transpose()?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut out: BTreeMap<IpAddr, PeerResult> =
        peers.iter().map(|p| (*p, PeerResult::default())).collect();
    // Departure times by (peer, sequence), removed when answered.
    let mut pending: BTreeMap<(IpAddr, u16), Duration> = BTreeMap::new();
    let start = Instant::now();
    let mut round = 0u64;
    let tail = if nonce != 0 { LISTEN_TAIL } else { GRACE };
    let end = start + interval * rounds as u32 + tail;
    loop {
        let now = Instant::now();
        if round < rounds && now >= start + interval * round as u32 {
            let seq = round as u16;
            for p in peers {
                let sock = if p.is_ipv6() { &v6 } else { &v4 };
                let Some(sock) = sock else { continue };
                pending.insert((*p, seq), now_realtime());
                match sock.send(*p, id, seq, nonce) {
                    Ok(()) => {}
                    // No route or neighbour now: a loss, as on the wire.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ENOBUFS)
                        ) => {}
                    Err(e) => return Err(ProbeError::Send(*p, e)),
                }
                if let Some(r) = out.get_mut(p) {
                    r.sent += 1;
                }
            }
            round += 1;
            continue;
        }
        // A listener keeps listening until the end: its peers' last requests may be late.
        if now >= end || (round >= rounds && pending.is_empty() && nonce == 0) {
            break;
        }
        let next = if round < rounds {
            start + interval * round as u32
        } else {
            end
        };
        let wait = next.saturating_duration_since(now);
        let mut fds: Vec<libc::pollfd> = [&v4, &v6]
            .into_iter()
            .flatten()
            .map(|s| libc::pollfd {
                fd: s.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd for its length.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis().min(1_000) as libc::c_int,
            )
        };
        for s in [&v4, &v6].into_iter().flatten() {
            while let Some(msg) = s.recv(id, nonce).map_err(ProbeError::Recv)? {
                match msg {
                    Msg::Reply(from, seq, at) => {
                        if let Some(sent) = pending.remove(&(from, seq)) {
                            let rtt = at.saturating_sub(sent);
                            if let Some(r) = out.get_mut(&from) {
                                r.rtts_us.push(rtt.as_secs_f64() * 1e6);
                            }
                        }
                    }
                    Msg::Request(from) => {
                        if let Some(r) = out.get_mut(&from) {
                            r.heard += 1;
                        }
                    }
                }
            }
        }
    }
    let dropped: u32 = [&v4, &v6].into_iter().flatten().map(Sock::drops).sum();
    if dropped > 0 {
        return Err(ProbeError::Overrun(dropped));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_an_echo_request() {
        // RFC 1071's example sums to ddf2; its complement is the checksum.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        let mut pkt = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&pkt), 0);
    }
}
