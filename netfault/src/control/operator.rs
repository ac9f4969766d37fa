//! The SSH connection the operator runs netfault over, so that no rule cuts it.
//!
//! Looked for in this order:
//! 1. `SSH_CONNECTION` (sshd sets it; `sudo`'s env_reset, `su -` and others remove it);
//! 2. the process ancestry: parents (/proc/PID/stat) up to the nearest sshd processes (comm
//!    `sshd`, or `sshd-session` from OpenSSH 9.8 on), at most [`MAX_STEPS`] of them and never
//!    past pid 1. The session process is the one whose parent is the listening sshd; its TCP
//!    sockets (/proc/PID/fd -> `socket:[INODE]`) are looked up in /proc/PID/net/tcp and tcp6,
//!    which list the sockets of *that process's* network namespace, whichever namespace netfault
//!    has entered. The tuple is protected as `SSH_CONNECTION`'s is: as the session sees it.
//!
//! Under sshd with no connection found, a rule that could match TCP is refused ([`guard`]).
use std::{
    fmt, fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::{
    compile,
    spec::{Kind, Proto, RuleSpec, parse_ssh_connection, protection},
};

/// Parents looked at, at most.
pub const MAX_STEPS: usize = 64;
/// What sshd's processes are called (comm): the listener and, before OpenSSH 9.8, the session
/// processes too; `sshd-session` for the session processes from 9.8 on.
const SSHD_NAMES: [&str; 2] = ["sshd", "sshd-session"];
/// /proc/net/tcp's state of a listening socket (TCP_LISTEN).
const TCP_LISTEN: u8 = 0x0a;

/// An SSH connection as sshd's side sees it (the fields of `SSH_CONNECTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl Conn {
    /// Pass entries for the 4-tuple, both directions, labelled as `protect list` shows them.
    pub fn rules(&self) -> Vec<RuleSpec> {
        let (c, s) = (self.client, self.server);
        protection::ssh(
            &protection::ssh_label(c.ip(), c.port()),
            c.ip(),
            c.port(),
            s.ip(),
            s.port(),
        )
    }
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.client, self.server)
    }
}

/// What was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// Not under SSH (no `SSH_CONNECTION`, no sshd among the parents): nothing to protect.
    NoSsh,
    /// From `SSH_CONNECTION`.
    Env(Conn),
    /// From the sshd session process `sshd` (a parent): its established TCP connections.
    Found { sshd: u32, conns: Vec<Conn> },
    /// Under the sshd session process `sshd`, but its connection could not be found.
    Lost { sshd: u32, why: String },
}

impl Operator {
    /// The pass entries that protect the connection (none when there is none to protect).
    pub fn rules(&self) -> Vec<RuleSpec> {
        match self {
            Operator::Env(c) => c.rules(),
            Operator::Found { conns, .. } => conns.iter().flat_map(Conn::rules).collect(),
            Operator::NoSsh | Operator::Lost { .. } => Vec::new(),
        }
    }

    /// One line for the command's output when the connection came from the ancestry (the
    /// operator could not know otherwise which connection netfault took for theirs).
    pub fn note(&self) -> Option<String> {
        let Operator::Found { sshd, conns } = self else {
            return None;
        };
        let list: Vec<String> = conns.iter().map(ToString::to_string).collect();
        Some(format!(
            "protected the SSH connection {} (SSH_CONNECTION is not set; found from the sshd \
             session process {sshd})",
            list.join(", ")
        ))
    }
}

/// The protections `op` asks for, for a command adding `specs`; refused (exit 2, nothing
/// changed) when netfault runs under sshd, its connection was not found, and one of `specs`
/// could match TCP, so could cut it.
pub fn guard<'a>(
    op: &Operator,
    specs: impl IntoIterator<Item = &'a RuleSpec>,
) -> super::Result<Vec<RuleSpec>> {
    if let Operator::Lost { sshd, why } = op {
        let mut tcp = RuleSpec::new("tcp", Kind::Protect);
        tcp.proto = Proto::Tcp;
        if let Some(s) = specs
            .into_iter()
            .find(|s| s.kind != Kind::Protect && compile::overlaps(s, &tcp))
        {
            return Err(super::Error::OperatorNotFound {
                name: s.name.clone(),
                sshd: *sshd,
                why: why.clone(),
            });
        }
    }
    Ok(op.rules())
}

/// Looks for the operator's connection (see the module's comment).
pub fn find() -> Operator {
    if let Some(conn) = std::env::var("SSH_CONNECTION")
        .ok()
        .as_deref()
        .and_then(parse_ssh_connection)
        .map(|(c, cp, s, sp)| Conn {
            client: SocketAddr::new(c, cp),
            server: SocketAddr::new(s, sp),
        })
    {
        return Operator::Env(conn);
    }
    let read = |pid: u32| fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let Some(sshd) = sshd_parents(std::process::id(), read) else {
        return Operator::NoSsh;
    };
    let mut why = Vec::new();
    for pid in sshd.candidates() {
        match connections(pid) {
            Ok(conns) if !conns.is_empty() => return Operator::Found { sshd: pid, conns },
            Ok(_) => why.push(format!("process {pid}: no established TCP socket")),
            Err(e) => why.push(format!("process {pid}: {e}")),
        }
    }
    Operator::Lost {
        sshd: sshd.session(),
        why: why.join("; "),
    }
}

/// The established TCP connections of process `pid`, from its network namespace's tables.
fn connections(pid: u32) -> std::io::Result<Vec<Conn>> {
    let mut links = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd"))? {
        // An fd closed meanwhile is simply not there.
        if let Ok(l) = fs::read_link(e?.path()) {
            links.push(l.to_string_lossy().into_owned());
        }
    }
    let inodes = socket_inodes(links.iter().map(String::as_str));
    if inodes.is_empty() {
        return Ok(Vec::new());
    }
    let v4 = fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    // No IPv6 in that namespace's kernel: no table.
    let v6 = fs::read_to_string(format!("/proc/{pid}/net/tcp6")).unwrap_or_default();
    Ok(match_sockets(&inodes, &v4, &v6))
}

/// sshd processes among the parents of a process: nearest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshdParents {
    /// The nearest run of sshd processes, each the parent of the one before.
    pub run: Vec<u32>,
    /// Whether the walk saw above the run's last process (a parent that is not sshd, or
    /// pid 1 itself): that last one is then the listener.
    pub top_seen: bool,
}

impl SshdParents {
    /// The session process: the one whose parent is the listener.
    pub fn session(&self) -> u32 {
        let n = self.run.len();
        if self.top_seen && n >= 2 {
            self.run[n - 2]
        } else {
            self.run[n - 1]
        }
    }

    /// Where to look for the connection: the session process first, then the processes below
    /// it (sshd's unprivileged child holds the socket too); the listener, which holds only
    /// listening sockets, is left out.
    pub fn candidates(&self) -> Vec<u32> {
        let n = self.run.len();
        let upto = if self.top_seen && n >= 2 { n - 1 } else { n };
        self.run[..upto].iter().rev().copied().collect()
    }
}

/// Comm and parent of a /proc/PID/stat line.
pub fn parse_stat(line: &str) -> Option<(&str, u32)> {
    // comm may hold spaces and parentheses: it runs from the first '(' to the last ')'.
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?;
    let mut rest = line.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    Some((comm, rest.next()?.parse().ok()?))
}

/// Walks up from process `me` (its stat read by `stat`) to the nearest sshd processes; None
/// when there is none within [`MAX_STEPS`] parents. Never goes past pid 1 or an unreadable
/// process.
pub fn sshd_parents(me: u32, stat: impl Fn(u32) -> Option<String>) -> Option<SshdParents> {
    let mut run = Vec::new();
    let mut pid = me;
    for _ in 0..=MAX_STEPS {
        let Some(line) = stat(pid) else {
            break;
        };
        let Some((comm, ppid)) = parse_stat(&line) else {
            break;
        };
        if pid != me && SSHD_NAMES.contains(&comm) {
            run.push(pid);
        } else if !run.is_empty() {
            return Some(SshdParents {
                run,
                top_seen: true,
            });
        }
        if pid <= 1 || ppid == 0 {
            // pid 1 (or a process whose parent is outside this pid namespace) has no parent
            // to look at: an sshd there is the top.
            return (!run.is_empty()).then_some(SshdParents {
                run,
                top_seen: pid == 1,
            });
        }
        pid = ppid;
    }
    (!run.is_empty()).then_some(SshdParents {
        run,
        top_seen: false,
    })
}

/// The inodes of the sockets among fd link targets (`socket:[INODE]`).
pub fn socket_inodes<'a>(links: impl IntoIterator<Item = &'a str>) -> Vec<u64> {
    links
        .into_iter()
        .filter_map(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// One socket of /proc/net/tcp or tcp6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

/// An address as /proc/net/tcp prints it: each 32-bit word of the network-order address as
/// the host reads it, in hex, then `:PORT` in hex.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| {
        a.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A line of /proc/net/tcp or tcp6 (None for the header and anything unreadable):
/// `sl local remote st tx:rx tr:when retrnsmt uid timeout inode ...`.
pub fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    Some(TcpSocket {
        local: parse_addr(f.get(1)?)?,
        remote: parse_addr(f.get(2)?)?,
        state: u8::from_str_radix(f.get(3)?, 16).ok()?,
        inode: f.get(9)?.parse().ok()?,
    })
}

/// The connections among `inodes`, from the tcp and tcp6 tables: every socket of theirs that
/// is not listening, client the remote end. An IPv4 client of a socket bound to `::` is shown
/// as IPv4 (::ffff:192.0.2.1 is 192.0.2.1), as sshd writes `SSH_CONNECTION`.
pub fn match_sockets(inodes: &[u64], tcp: &str, tcp6: &str) -> Vec<Conn> {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let mut out = Vec::new();
    for s in tcp.lines().chain(tcp6.lines()).filter_map(parse_tcp_line) {
        // Inode 0: a socket no longer attached to a file (TIME_WAIT and the like).
        if s.inode != 0 && s.state != TCP_LISTEN && inodes.contains(&s.inode) {
            let c = Conn {
                client: canon(s.remote),
                server: canon(s.local),
            };
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process table: pid -> (comm, ppid), as stat lines.
    fn table(procs: &[(u32, &str, u32)]) -> impl Fn(u32) -> Option<String> {
        let lines: Vec<(u32, String)> = procs
            .iter()
            .map(|(pid, comm, ppid)| (*pid, format!("{pid} ({comm}) S {ppid} {pid} {pid} 0 -1")))
            .collect();
        move |p| lines.iter().find(|(q, _)| *q == p).map(|(_, l)| l.clone())
    }

    #[test]
    fn stat_lines() {
        assert_eq!(
            parse_stat("4242 (sshd) S 4200 4242 4242 0 -1 4194560"),
            Some(("sshd", 4200))
        );
        // comm with spaces and parentheses.
        assert_eq!(
            parse_stat("77 (a) b (c)) R 1 77 77 0"),
            Some(("a) b (c)", 1))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn sudo_under_openssh_9_2() {
        // systemd <- sshd (listener) <- sshd [priv] <- sshd user@notty <- sh <- sudo <- netfault
        let t = table(&[
            (1, "systemd", 0),
            (500, "sshd", 1),
            (600, "sshd", 500),
            (610, "sshd", 600),
            (611, "sh", 610),
            (700, "sudo", 611),
            (701, "netfault", 700),
        ]);
        let p = sshd_parents(701, t).unwrap();
        assert_eq!(p.run, [610, 600, 500]);
        assert!(p.top_seen);
        assert_eq!(p.session(), 600);
        assert_eq!(p.candidates(), [600, 610]);
    }

    #[test]
    fn sshd_session_of_openssh_9_8_and_sshd_as_pid_1() {
        let t = table(&[
            (1, "sshd", 0),
            (20, "sshd-session", 1),
            (21, "sshd-session", 20),
            (22, "bash", 21),
            (30, "netfault", 22),
        ]);
        let p = sshd_parents(30, t).unwrap();
        assert_eq!(p.run, [21, 20, 1]);
        assert_eq!(p.session(), 20);
        assert_eq!(p.candidates(), [20, 21]);
    }

    #[test]
    fn no_sshd_and_bounded_walks() {
        let t = table(&[(1, "init", 0), (5, "bash", 1), (6, "netfault", 5)]);
        assert_eq!(sshd_parents(6, t), None);
        // A cycle (not possible in /proc, but the walk must end anyway).
        let t = table(&[(5, "bash", 6), (6, "netfault", 5)]);
        assert_eq!(sshd_parents(6, t), None);
        // A chain longer than the bound: the sshd beyond it is not reached.
        let mut procs: Vec<(u32, &str, u32)> = (2..=200).map(|p| (p, "sh", p - 1)).collect();
        procs.push((1, "sshd", 0));
        assert_eq!(sshd_parents(200, table(&procs)), None);
        // The process itself named sshd does not count.
        let t = table(&[(10, "sshd", 9), (9, "bash", 1), (1, "init", 0)]);
        assert_eq!(sshd_parents(10, t), None);
        // An unreadable parent ends the walk with the run found so far, its top not known to
        // be the listener: it is looked at too, last.
        let t = table(&[(10, "netfault", 9), (9, "sshd", 8), (8, "sshd", 7)]);
        let p = sshd_parents(10, t).unwrap();
        assert_eq!((p.run.clone(), p.top_seen), (vec![9, 8], false));
        assert_eq!(p.session(), 8);
        assert_eq!(p.candidates(), [8, 9]);
    }

    #[test]
    fn inodes_of_sockets() {
        let links = [
            "/dev/null",
            "socket:[123]",
            "pipe:[9]",
            "socket:[77]",
            "socket:[x]",
        ];
        assert_eq!(socket_inodes(links), [123, 77]);
    }

    // /proc/net/tcp prints each address word as the host reads it: these lines are as a
    // little-endian machine shows them.
    #[cfg(target_endian = "little")]
    #[test]
    fn tcp_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 010200C0:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0\n\
   1: 010200C0:0016 090200C0:C35E 01 00000000:00000000 02:000A7D8D 00000000     0        0 2222 4 0000000000000000 20 4 29 10 -1\n\
   2: 010200C0:0016 0A0200C0:C35F 01 00000000:00000000 02:000A7D8D 00000000     0        0 3333 4 0000000000000000 20 4 29 10 -1\n";
        // [2001:db8::1]:22 <- [2001:db8::9]:50000, and ::ffff:192.0.2.1:22 <- ::ffff:192.0.2.11:40000.
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: B80D0120000000000000000001000000:0016 B80D0120000000000000000009000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 29 10 -1\n\
   1: 0000000000000000FFFF0000010200C0:0016 0000000000000000FFFF00000B0200C0:9C40 01 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 20 4 29 10 -1\n";
        let s = |a: &str| a.parse::<SocketAddr>().unwrap();
        let conn = |c: &str, sv: &str| Conn {
            client: s(c),
            server: s(sv),
        };
        let one = tcp.lines().nth(2).and_then(parse_tcp_line).unwrap();
        assert_eq!(
            one,
            TcpSocket {
                local: s("192.0.2.1:22"),
                remote: s("192.0.2.9:50014"),
                state: 1,
                inode: 2222
            }
        );
        assert_eq!(tcp.lines().next().and_then(parse_tcp_line), None);
        // The listening socket and other processes' sockets are left out.
        assert_eq!(
            match_sockets(&[1111, 2222, 9999], tcp, tcp6),
            [conn("192.0.2.9:50014", "192.0.2.1:22")]
        );
        assert_eq!(
            match_sockets(&[4444, 5555], tcp, tcp6),
            [
                conn("[2001:db8::9]:50000", "[2001:db8::1]:22"),
                conn("192.0.2.11:40000", "192.0.2.1:22")
            ]
        );
        assert!(match_sockets(&[], tcp, tcp6).is_empty());
    }

    fn rule(proto: Proto) -> RuleSpec {
        let mut r = RuleSpec::new("r", Kind::Rule);
        r.proto = proto;
        r
    }

    #[test]
    fn lost_connection_refuses_what_could_cut_tcp() {
        let lost = Operator::Lost {
            sshd: 600,
            why: "process 600: no established TCP socket".into(),
        };
        let e = guard(&lost, &[rule(Proto::Udp), rule(Proto::Any)]).unwrap_err();
        assert!(matches!(e, super::super::Error::OperatorNotFound { .. }));
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        assert!(
            msg.contains("protect add") && msg.contains("--no-protect") && msg.contains("600"),
            "{msg}"
        );
        assert!(guard(&lost, &[rule(Proto::Tcp)]).is_err());
        let cut = RuleSpec::new("cut", Kind::Partition);
        assert!(guard(&lost, [&cut]).is_err());
        // Nothing that could match TCP: nothing to refuse, nothing to protect.
        assert!(
            guard(&lost, &[rule(Proto::Udp), rule(Proto::Icmp)])
                .unwrap()
                .is_empty()
        );
        assert!(
            guard(&Operator::NoSsh, &[rule(Proto::Any)])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn found_connections_are_protected_both_ways() {
        let c = Conn {
            client: "192.0.2.9:50014".parse().unwrap(),
            server: "192.0.2.1:22".parse().unwrap(),
        };
        let op = Operator::Found {
            sshd: 600,
            conns: vec![c],
        };
        let r = guard(&op, &[rule(Proto::Any)]).unwrap();
        assert_eq!(r, c.rules());
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|s| s.name.starts_with("ssh:192.0.2.9:50014/")));
        let note = op.note().unwrap();
        assert!(
            note.contains("192.0.2.9:50014 -> 192.0.2.1:22") && note.contains("600"),
            "{note}"
        );
        assert_eq!(Operator::Env(c).note(), None);
        assert_eq!(Operator::Env(c).rules(), r);
    }
}
