//! UDP probes (`--probe udp:PORT`): a datagram to the peer's port every interval, answered
//! either by a UDP datagram from that port carrying the probe's payload back (an echo service),
//! or by the ICMP port unreachable a closed port makes the peer's kernel send (ICMPv6:
//! destination unreachable, port unreachable). Both are stamped by the kernel on arrival: the
//! datagram on the UDP socket, the error on a raw ICMP (ICMPv6) socket that reads only
//! destination-unreachable messages, matched to the probe by the datagram they quote (the
//! prober's port, the probed port and the payload's sequence number). The raw socket needs
//! CAP_NET_RAW, as ICMP probes do.
//!
//! A peer's kernel limits the ICMP errors it sends (Linux: `net.ipv4.icmp_ratelimit`, 1000 ms
//! per destination with a burst of 6, and `net.ipv4.icmp_msgs_per_sec`, 1000 a second over all
//! destinations; IPv6: `net.ipv6.icmp.ratelimit`): a closed port probed faster than that shows
//! losses that are the limiter's, not the network's.
//!
//! A *listening* prober (`cluster verify`, [`super::probe::probe_listening`]) binds the probed
//! port itself and sends from it: every node probes from port P to port P, and each echoes the
//! requests carrying the run's nonce back to their sender and counts them (`heard`, one way).
//! No ICMP error is then needed to answer, and a rule on port P (as source or destination)
//! matches the request and the echo alike, as one matching every port matches an ICMP echo and
//! its reply.
use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::probe::{Answer, MARK, Msg, ProbeError, Sock};

/// The probe's payload: the marker, the prober's identifier and the sequence number.
const PAYLOAD: usize = 12;
/// A listening prober's: then the run's nonce and whether it is a request (0) or an echo (1).
const LISTEN_PAYLOAD: usize = PAYLOAD + 9;

/// The sockets probing one family: UDP out (and echoes in), raw ICMP for unreachables.
pub(super) struct UdpSock {
    /// `[udp, icmp]`.
    socks: [Sock; 2],
    /// The probed port.
    port: u16,
    /// The prober's own port, which the unreachables quote.
    local: u16,
    /// The run's nonce when listening (0: not).
    nonce: u64,
}

impl UdpSock {
    /// A prober of `port`; listening (`nonce` not 0), bound to `port` itself.
    pub(super) fn open(v6: bool, port: u16, nonce: u64) -> Result<UdpSock, ProbeError> {
        let name = if v6 { "UDPv6" } else { "UDP" };
        let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(ProbeError::Socket(name, io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let udp = Sock {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            v6,
        };
        // Bound now, to know the port the unreachables will quote before the first is sent.
        let local = if nonce == 0 {
            bind_any(&udp).map_err(|e| ProbeError::Socket(name, e))?
        } else {
            bind(&udp, port).map_err(|e| {
                if e.raw_os_error() == Some(libc::EADDRINUSE) {
                    ProbeError::PortInUse(port)
                } else {
                    ProbeError::Socket(name, e)
                }
            })?
        };
        udp.buffer()?;
        // Destination unreachable only: type 3 (ICMPv6: 1).
        let icmp = Sock::raw(v6, if v6 { &[1] } else { &[3] })?;
        Ok(UdpSock {
            socks: [udp, icmp],
            port,
            local,
            nonce,
        })
    }

    pub(super) fn socks(&self) -> &[Sock; 2] {
        &self.socks
    }

    pub(super) fn send(&self, to: IpAddr, id: u16, seq: u16) -> io::Result<()> {
        let to = SocketAddr::new(to, self.port);
        if self.nonce == 0 {
            self.socks[0].send_to(&payload(id, seq), to)
        } else {
            self.socks[0].send_to(&listen_payload(id, seq, self.nonce, false), to)
        }
    }

    /// The next answer to one of this prober's probes; `Ok(None)` when nothing more is queued.
    pub(super) fn recv(&self, id: u16) -> io::Result<Option<Msg>> {
        let mut buf = [0u8; 1500];
        let [udp, icmp] = &self.socks;
        while let Some((n, from, at)) = udp.read(&mut buf)? {
            if from.port() != self.port {
                continue;
            }
            if self.nonce != 0 {
                match listened(&buf[..n], self.nonce) {
                    Some(Listened::Request) => {
                        // Echoed at once; a send that fails is the echo lost, as on the wire.
                        buf[LISTEN_PAYLOAD - 1] = 1;
                        let _ = udp.send_to(&buf[..LISTEN_PAYLOAD], from);
                        return Ok(Some(Msg::Request(from.ip())));
                    }
                    Some(Listened::Echo(pid, seq)) if pid == id => {
                        return Ok(Some(Msg::Reply(from.ip(), seq, at, Answer::Udp)));
                    }
                    _ => continue,
                }
            }
            if let Some(seq) = ours(&buf[..n], id) {
                return Ok(Some(Msg::Reply(from.ip(), seq, at, Answer::Udp)));
            }
        }
        while let Some((n, _, at)) = icmp.read(&mut buf)? {
            if let Some((peer, seq)) = unreachable(&buf[..n], icmp.v6, self.local, self.port, id) {
                return Ok(Some(Msg::Reply(peer, seq, at, Answer::Unreachable)));
            }
        }
        Ok(None)
    }
}

fn payload(id: u16, seq: u16) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    p[..8].copy_from_slice(MARK);
    p[8..10].copy_from_slice(&id.to_be_bytes());
    p[10..12].copy_from_slice(&seq.to_be_bytes());
    p
}

fn listen_payload(id: u16, seq: u16, nonce: u64, echo: bool) -> [u8; LISTEN_PAYLOAD] {
    let mut p = [0u8; LISTEN_PAYLOAD];
    p[..PAYLOAD].copy_from_slice(&payload(id, seq));
    p[PAYLOAD..PAYLOAD + 8].copy_from_slice(&nonce.to_be_bytes());
    p[LISTEN_PAYLOAD - 1] = u8::from(echo);
    p
}

/// A listening prober's datagram of this run.
#[derive(Debug, PartialEq, Eq)]
enum Listened {
    /// A peer's request, to be echoed and counted.
    Request,
    /// An echo of a request: the sender's identifier and its sequence number.
    Echo(u16, u16),
}

/// What a datagram carrying `nonce` is, if it is one.
fn listened(p: &[u8], nonce: u64) -> Option<Listened> {
    if p.len() != LISTEN_PAYLOAD
        || &p[..8] != MARK
        || p[PAYLOAD..PAYLOAD + 8] != nonce.to_be_bytes()
    {
        return None;
    }
    match p[LISTEN_PAYLOAD - 1] {
        0 => Some(Listened::Request),
        1 => Some(Listened::Echo(
            u16::from_be_bytes([p[8], p[9]]),
            u16::from_be_bytes([p[10], p[11]]),
        )),
        _ => None,
    }
}

/// The sequence number of a payload this prober (`id`) sent.
fn ours(p: &[u8], id: u16) -> Option<u16> {
    (p.len() >= PAYLOAD && &p[..8] == MARK && p[8..10] == id.to_be_bytes())
        .then(|| u16::from_be_bytes([p[10], p[11]]))
}

/// A port unreachable for one of this prober's datagrams, read from a raw socket (IPv4: with
/// its IP header): the probed peer (the quoted destination) and the sequence number.
fn unreachable(pkt: &[u8], v6: bool, local: u16, port: u16, id: u16) -> Option<(IpAddr, u16)> {
    let (icmp, want) = if v6 {
        (pkt, (1, 4))
    } else {
        let ihl = usize::from(pkt.first()? & 0x0f) * 4;
        (pkt.get(ihl..)?, (3, 3))
    };
    if (*icmp.first()?, *icmp.get(1)?) != want {
        return None;
    }
    // The quoted datagram: its IP header, then its UDP header and payload.
    let inner = icmp.get(8..)?;
    let (dst, l4): (IpAddr, &[u8]) = if v6 {
        // Next header UDP, no extension headers: a probe has none.
        if *inner.get(6)? != 17 {
            return None;
        }
        let a: [u8; 16] = inner.get(24..40)?.try_into().ok()?;
        (IpAddr::V6(Ipv6Addr::from(a)), inner.get(40..)?)
    } else {
        let ihl = usize::from(inner.first()? & 0x0f) * 4;
        if *inner.get(9)? != 17 {
            return None;
        }
        let a: [u8; 4] = inner.get(16..20)?.try_into().ok()?;
        (IpAddr::V4(Ipv4Addr::from(a)), inner.get(ihl..)?)
    };
    let sport = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dport = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    if sport != local || dport != port {
        return None;
    }
    // Linux quotes as much of the datagram as fits in 576 (IPv6: 1280) bytes; a peer that
    // quotes only the UDP header (RFC 792's minimum) cannot be matched to a probe.
    Some((dst, ours(l4.get(8..)?, id)?))
}

/// Binds `s` to the family's any address and an ephemeral port, and returns the port.
fn bind_any(s: &Sock) -> io::Result<u16> {
    bind(s, 0)
}

/// Binds `s` to the family's any address and `port` (0: an ephemeral one), and returns the
/// port. An IPv6 socket takes IPv6 only, so that the IPv4 prober can bind the same port.
fn bind(s: &Sock, port: u16) -> io::Result<u16> {
    if s.v6 {
        let one: libc::c_int = 1;
        // SAFETY: an int option of its size.
        let r = unsafe {
            libc::setsockopt(
                s.fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: a zeroed sockaddr_storage is the family's any address, port 0, once the family
    // is set.
    let mut sa: libc::sockaddr_storage = unsafe { zeroed() };
    sa.ss_family = if s.v6 { libc::AF_INET6 } else { libc::AF_INET } as libc::sa_family_t;
    {
        // sin_port and sin6_port sit at the same offset, after the family.
        // SAFETY: a sockaddr_in's fields lie within a sockaddr_storage.
        let sin = unsafe { &mut *(&raw mut sa).cast::<libc::sockaddr_in>() };
        sin.sin_port = port.to_be();
    }
    let len = if s.v6 {
        size_of::<libc::sockaddr_in6>()
    } else {
        size_of::<libc::sockaddr_in>()
    } as libc::socklen_t;
    // SAFETY: the address is valid for len bytes.
    if unsafe { libc::bind(s.fd.as_raw_fd(), (&raw const sa).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut got = len;
    // SAFETY: sa is valid for got bytes.
    if unsafe { libc::getsockname(s.fd.as_raw_fd(), (&raw mut sa).cast(), &mut got) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // sin_port and sin6_port sit at the same offset, after the family.
    // SAFETY: a sockaddr_in's fields lie within a sockaddr_storage.
    let sin: libc::sockaddr_in = unsafe { *(&raw const sa).cast() };
    Ok(u16::from_be(sin.sin_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 port unreachable as a raw socket reads it, quoting a probe from port 40000
    /// to 198.51.100.2:9000.
    fn unreachable_v4(sport: u16, quoted_payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 198, 51, 100, 2, 198, 51, 100, 1,
        ];
        p.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 198, 51, 100, 1]);
        p.extend_from_slice(&[198, 51, 100, 2]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&9000u16.to_be_bytes());
        p.extend_from_slice(&[0, 20, 0, 0]);
        p.extend_from_slice(quoted_payload);
        p
    }

    #[test]
    fn an_unreachable_is_matched_by_ports_and_payload() {
        let peer: IpAddr = "198.51.100.2".parse().unwrap();
        let pkt = unreachable_v4(40000, &payload(7, 300));
        assert_eq!(unreachable(&pkt, false, 40000, 9000, 7), Some((peer, 300)));
        // Another prober's port, another probed port, another identifier, no payload quoted.
        assert_eq!(unreachable(&pkt, false, 40001, 9000, 7), None);
        assert_eq!(unreachable(&pkt, false, 40000, 9001, 7), None);
        assert_eq!(unreachable(&pkt, false, 40000, 9000, 8), None);
        assert_eq!(
            unreachable(&unreachable_v4(40000, &[]), false, 40000, 9000, 7),
            None
        );
        // Host unreachable (code 1) is no answer from the port.
        let mut host = pkt.clone();
        host[21] = 1;
        assert_eq!(unreachable(&host, false, 40000, 9000, 7), None);
        // Truncated anywhere: no panic, no match.
        for n in 0..pkt.len() {
            assert_eq!(unreachable(&pkt[..n], false, 40000, 9000, 7), None, "{n}");
        }
    }

    #[test]
    fn an_icmpv6_unreachable_is_matched() {
        let peer: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut p = vec![1, 4, 0, 0, 0, 0, 0, 0];
        let mut ip6 = [0u8; 40];
        ip6[0] = 0x60;
        ip6[6] = 17;
        ip6[24..40].copy_from_slice(&peer.octets());
        p.extend_from_slice(&ip6);
        p.extend_from_slice(&[0x9c, 0x40, 0x23, 0x28, 0, 20, 0, 0]);
        p.extend_from_slice(&payload(1, 2));
        assert_eq!(
            unreachable(&p, true, 40000, 9000, 1),
            Some((IpAddr::V6(peer), 2))
        );
        p[1] = 3;
        assert_eq!(unreachable(&p, true, 40000, 9000, 1), None);
    }

    #[test]
    fn a_listening_probers_datagrams_are_told_apart() {
        let n = 0x1234_5678_9abc_def1;
        let req = listen_payload(5, 9, n, false);
        assert_eq!(listened(&req, n), Some(Listened::Request));
        assert_eq!(
            listened(&listen_payload(5, 9, n, true), n),
            Some(Listened::Echo(5, 9))
        );
        // Another run's, truncated, a plain probe's, an unknown flag: none of this run's.
        assert_eq!(listened(&req, n + 2), None);
        assert_eq!(listened(&req[..LISTEN_PAYLOAD - 1], n), None);
        assert_eq!(listened(&payload(5, 9), n), None);
        let mut odd = req;
        odd[LISTEN_PAYLOAD - 1] = 2;
        assert_eq!(listened(&odd, n), None);
    }

    #[test]
    fn echoed_payloads_are_ours_only() {
        assert_eq!(ours(&payload(5, 9), 5), Some(9));
        assert_eq!(ours(&payload(5, 9), 6), None);
        assert_eq!(ours(&payload(5, 9)[..11], 5), None);
        assert_eq!(ours(b"netfauxx\0\x05\0\x09", 5), None);
    }
}
