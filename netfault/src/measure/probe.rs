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
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
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
/// How long a listening UDP prober waits between binding its port and its first request.
pub const LISTEN_LEAD: Duration = Duration::from_millis(300);
/// At most this many peers, and this many requests per peer (sequence numbers are 16 bits).
pub const MAX_PEERS: usize = 256;
pub const MAX_PER_PEER: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("open a raw {0} socket (needs CAP_NET_RAW): {1}")]
    Socket(&'static str, io::Error),
    #[error("send a probe to {0}: {1}")]
    Send(IpAddr, io::Error),
    #[error("read echo replies: {0}")]
    Recv(io::Error),
    #[error("{0}")]
    TooMany(String),
    #[error(
        "UDP port {0} is in use here: a listening prober sends from the port it probes and echoes its peers' probes on it"
    )]
    PortInUse(u16),
    #[error(
        "{0} packets were dropped by this host's probe socket (the prober fell behind): the loss it saw is not the network's; lengthen --interval or probe fewer peers"
    )]
    Overrun(u32),
}

/// What is sent to each peer: ICMP (ICMPv6) echo requests, or UDP datagrams to a port
/// ([`super::udp`]). As text: `icmp`, `udp:PORT`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum Kind {
    #[default]
    Icmp,
    Udp(u16),
}

impl Kind {
    pub fn is_icmp(&self) -> bool {
        *self == Kind::Icmp
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        let s = s.trim();
        if s == "icmp" {
            return Ok(Kind::Icmp);
        }
        let Some(port) = s.strip_prefix("udp:") else {
            return Err(format!("'{s}': icmp or udp:PORT"));
        };
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(Kind::Udp(p)),
            _ => Err(format!("'{s}': a UDP port is 1 to 65535")),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Icmp => f.write_str("icmp"),
            Kind::Udp(p) => write!(f, "udp:{p}"),
        }
    }
}

impl TryFrom<String> for Kind {
    type Error = String;

    fn try_from(s: String) -> Result<Kind, String> {
        s.parse()
    }
}

impl From<Kind> for String {
    fn from(k: Kind) -> String {
        k.to_string()
    }
}

/// What answered a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// An ICMP (ICMPv6) echo reply.
    Echo,
    /// A UDP datagram from the probed port carrying the probe's payload back.
    Udp,
    /// An ICMP port unreachable (ICMPv6: destination unreachable, port unreachable) quoting
    /// the probe.
    Unreachable,
}

/// How UDP probes were answered (`answers` in a report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answers {
    /// By a UDP reply from the probed port.
    pub udp: u64,
    /// By an ICMP port unreachable for it.
    pub icmp_unreachable: u64,
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
    /// How UDP probes were answered; `None` for ICMP probes.
    pub answers: Option<Answers>,
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

/// A socket of the prober: raw ICMP (ICMPv6), or UDP (`udp`).
pub(super) struct Sock {
    pub(super) fd: OwnedFd,
    pub(super) v6: bool,
}

impl Sock {
    fn open(v6: bool, listen: bool) -> Result<Sock, ProbeError> {
        // Only echo replies reach the socket (a raw socket gets a copy of every ICMP packet
        // the host receives, the peers' own requests included), and echo requests when
        // listening.
        let pass: &[u8] = match (v6, listen) {
            (true, false) => &[129],
            (true, true) => &[129, 128],
            (false, false) => &[0],
            (false, true) => &[0, 8],
        };
        Sock::raw(v6, pass)
    }

    /// A raw ICMP (ICMPv6) socket that reads only the message types in `pass`, into a buffer
    /// that holds a few seconds of them: a reply dropped here would be reported as network
    /// loss.
    pub(super) fn raw(v6: bool, pass: &[u8]) -> Result<Sock, ProbeError> {
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
        if v6 {
            // struct icmp6_filter: a set bit blocks that type.
            let mut block = [u32::MAX; 8];
            for t in pass {
                block[usize::from(t >> 5)] &= !(1 << (t & 31));
            }
            sock.set(libc::IPPROTO_ICMPV6, 1, &block)?;
        } else {
            // ICMP_FILTER on SOL_RAW: a set bit blocks that type (types 0 to 31).
            let pass = pass.iter().fold(0u32, |m, t| m | 1 << (t & 31));
            sock.set(libc::SOL_RAW, 1, &!pass)?;
        }
        sock.buffer()?;
        Ok(sock)
    }

    /// A receive buffer of 8 MiB (forced where allowed), and the kernel's receive timestamps
    /// turned on now rather than at the first read.
    pub(super) fn buffer(&self) -> Result<(), ProbeError> {
        let bytes: libc::c_int = 8 << 20;
        if self
            .set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes)
            .is_err()
        {
            self.set(libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes)?;
        }
        // The first SIOCGSTAMPNS enables stamping (it fails with ENOENT: nothing read yet).
        // SAFETY: SIOCGSTAMPNS writes a timespec.
        let mut ts: libc::timespec = unsafe { zeroed() };
        unsafe { libc::ioctl(self.fd.as_raw_fd(), SIOCGSTAMPNS, &mut ts) };
        Ok(())
    }

    pub(super) fn set<T>(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        v: &T,
    ) -> Result<(), ProbeError> {
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
                if self.v6 {
                    "ICMPv6 or UDP"
                } else {
                    "ICMP or UDP"
                },
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Packets the kernel dropped at this socket (SO_MEMINFO's SK_MEMINFO_DROPS).
    pub(super) fn drops(&self) -> u32 {
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
        self.send_to(&pkt, SocketAddr::new(to, 0))
    }

    /// Sends `pkt` to `to` (the port is 0 on a raw socket).
    pub(super) fn send_to(&self, pkt: &[u8], to: SocketAddr) -> io::Result<()> {
        // SAFETY: a zeroed sockaddr_storage is valid; the family's address is written below.
        let mut sa: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match to {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
                let sin = unsafe { &mut *(&raw mut sa).cast::<libc::sockaddr_in>() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                // SAFETY: as above, for a sockaddr_in6.
                let sin6 = unsafe { &mut *(&raw mut sa).cast::<libc::sockaddr_in6>() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
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

    /// The next packet queued: its length in `buf`, its source (port 0 on a raw socket) and
    /// the kernel's receive time; `Ok(None)` when nothing more is queued.
    pub(super) fn read(&self, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr, Duration)>> {
        loop {
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
            let addr = if self.v6 {
                // SAFETY: the kernel filled a sockaddr_in6 for an AF_INET6 socket.
                let sa: libc::sockaddr_in6 = unsafe { *(&raw const from).cast() };
                SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)),
                    u16::from_be(sa.sin6_port),
                )
            } else {
                // SAFETY: a sockaddr_in for an AF_INET socket.
                let sa: libc::sockaddr_in = unsafe { *(&raw const from).cast() };
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes())),
                    u16::from_be(sa.sin_port),
                )
            };
            return Ok(Some((n as usize, addr, at)));
        }
    }

    /// The next echo reply with identifier `id`, or echo request carrying `nonce` (when not
    /// 0); `Ok(None)` when nothing more is queued.
    fn recv(&self, id: u16, nonce: u64) -> io::Result<Option<Msg>> {
        let mut buf = [0u8; 1500];
        while let Some((n, from, at)) = self.read(&mut buf)? {
            let pkt = &buf[..n];
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
            return Ok(Some(if is_request {
                Msg::Request(from.ip())
            } else {
                Msg::Reply(from.ip(), seq, at, Answer::Echo)
            }));
        }
        Ok(None)
    }
}

/// The payload's first 8 bytes.
pub(super) const MARK: &[u8; 8] = b"netfault";

/// What a prober's socket read.
pub(super) enum Msg {
    /// An answer to our probe: (peer, sequence, kernel receive time, what answered).
    Reply(IpAddr, u16, Duration, Answer),
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

/// Probes every peer every `interval` for `duration` with ICMP echo requests, then waits
/// [`GRACE`] for the last replies. The caller bounds the peers ([`MAX_PEERS`]); too many
/// probes per peer ([`rounds`]) are refused, never cut short.
pub fn probe(
    peers: &[IpAddr],
    interval: Duration,
    duration: Duration,
) -> Result<BTreeMap<IpAddr, PeerResult>, ProbeError> {
    probe_listening(peers, Kind::Icmp, interval, duration, None)
}

/// A prober's socket of one family.
enum Prober {
    Icmp(Sock),
    Udp(super::udp::UdpSock),
}

impl Prober {
    fn open(kind: Kind, v6: bool, nonce: u64) -> Result<Prober, ProbeError> {
        Ok(match kind {
            Kind::Icmp => Prober::Icmp(Sock::open(v6, nonce != 0)?),
            Kind::Udp(port) => Prober::Udp(super::udp::UdpSock::open(v6, port, nonce)?),
        })
    }

    fn send(&self, to: IpAddr, id: u16, seq: u16, nonce: u64) -> io::Result<()> {
        match self {
            Prober::Icmp(s) => s.send(to, id, seq, nonce),
            Prober::Udp(s) => s.send(to, id, seq),
        }
    }

    fn recv(&self, id: u16, nonce: u64) -> io::Result<Option<Msg>> {
        match self {
            Prober::Icmp(s) => s.recv(id, nonce),
            Prober::Udp(s) => s.recv(id),
        }
    }

    fn socks(&self) -> Vec<&Sock> {
        match self {
            Prober::Icmp(s) => vec![s],
            Prober::Udp(s) => s.socks().iter().collect(),
        }
    }
}

/// [`probe`] with probes of `kind`, and with `listen` (a nonce, not 0) also counts the requests
/// carrying it that reach this host from each peer ([`PeerResult::heard`]), until
/// [`LISTEN_TAIL`] after its own last request. Listening UDP probers send from the probed port
/// and echo their peers' requests ([`super::udp`]); they send their first request
/// [`LISTEN_LEAD`] after binding, so that peers asked a little later are bound by then (a
/// request to a port not yet bound would be answered by an ICMP error, which the kernel
/// rate-limits).
pub fn probe_listening(
    peers: &[IpAddr],
    kind: Kind,
    interval: Duration,
    duration: Duration,
    listen: Option<u64>,
) -> Result<BTreeMap<IpAddr, PeerResult>, ProbeError> {
    let rounds = rounds(interval, duration).map_err(ProbeError::TooMany)?;
    let nonce = listen.unwrap_or(0);
    // A family's socket when some peer is of it (a node without IPv6 opens none): `cluster
    // verify` judges a pair only in the families both nodes have, so a listener has a peer
    // of each family it must echo.
    let v4 = peers
        .iter()
        .any(IpAddr::is_ipv4)
        .then(|| Prober::open(kind, false, nonce))
        .transpose()?;
    let v6 = peers
        .iter()
        .any(IpAddr::is_ipv6)
        .then(|| Prober::open(kind, true, nonce))
        .transpose()?;
    let udp_listening = nonce != 0 && !kind.is_icmp();
    let id = (std::process::id() & 0xffff) as u16;
    let answers = (!kind.is_icmp()).then(Answers::default);
    let mut out: BTreeMap<IpAddr, PeerResult> = peers
        .iter()
        .map(|p| {
            (
                *p,
                PeerResult {
                    answers,
                    ..PeerResult::default()
                },
            )
        })
        .collect();
    // Departure times by (peer, sequence), removed when answered.
    let mut pending: BTreeMap<(IpAddr, u16), Duration> = BTreeMap::new();
    let start = Instant::now()
        + if udp_listening {
            LISTEN_LEAD
        } else {
            Duration::ZERO
        };
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
                    // No route or neighbour now: a loss, as on the wire. EAGAIN: the socket's
                    // send buffer is full of datagrams queued for a neighbour that does not
                    // answer (a cut IPv6 path drops neighbour discovery): lost as well.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(
                                libc::EHOSTUNREACH
                                    | libc::ENETUNREACH
                                    | libc::ENOBUFS
                                    | libc::EAGAIN
                            )
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
            .flat_map(Prober::socks)
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
                    Msg::Reply(from, seq, at, answer) => {
                        // The first answer to a probe counts; any other (a duplicate) not.
                        let Some(sent) = pending.remove(&(from, seq)) else {
                            continue;
                        };
                        let Some(r) = out.get_mut(&from) else {
                            continue;
                        };
                        r.rtts_us.push(at.saturating_sub(sent).as_secs_f64() * 1e6);
                        if let Some(a) = r.answers.as_mut() {
                            match answer {
                                Answer::Udp => a.udp += 1,
                                Answer::Unreachable => a.icmp_unreachable += 1,
                                Answer::Echo => {}
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
    let dropped: u32 = [&v4, &v6]
        .into_iter()
        .flatten()
        .flat_map(Prober::socks)
        .map(Sock::drops)
        .sum();
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

    #[test]
    fn probe_kinds_parse_and_print() {
        assert_eq!("icmp".parse(), Ok(Kind::Icmp));
        assert_eq!("udp:9000".parse(), Ok(Kind::Udp(9000)));
        assert_eq!(Kind::Udp(53).to_string(), "udp:53");
        assert_eq!(Kind::Icmp.to_string(), "icmp");
        for bad in ["udp:0", "udp:x", "udp:65536", "udp:", "tcp:1", "udp", ""] {
            assert!(bad.parse::<Kind>().is_err(), "{bad}");
        }
        let k: Kind = serde_json::from_str("\"udp:7\"").unwrap();
        assert_eq!(k, Kind::Udp(7));
        assert!(serde_json::from_str::<Kind>("\"udp:0\"").is_err());
    }
}
