//! A small laboratory of test hosts: network namespaces joined by veth pairs or a bridge, and
//! bounded traffic between them. The end-to-end tests and `netfault-demo` are built on it.
//!
//! It runs as root on real machines, so it keeps to a few rails:
//! - every address it assigns or sends to lies in a documentation range (RFC 5737, RFC 3849):
//!   a mistake can never reach a real network;
//! - every traffic loop is bounded in count and in time;
//! - namespaces are named `<prefix>-<pid>-<n>-<role>` and deleted when the [`Lab`] drops (also
//!   while a panic unwinds); leftovers of dead processes with the same prefix go at creation.
use std::{
    collections::HashMap,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use ipnet::IpNet;
use ratelimit::Ratelimiter;
use serde::Deserialize;

use netfault::control::state::{PIN_ROOT, RUN_ROOT};

// ---------------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------------

/// TEST-NET-1/2/3 and the IPv6 documentation prefix: nothing else is ever assigned or sent to.
const DOC_NETS: [&str; 4] = [
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "2001:db8::/32",
];

pub fn is_documentation(ip: IpAddr) -> bool {
    DOC_NETS
        .iter()
        .any(|n| n.parse::<IpNet>().expect("valid constant").contains(&ip))
}

fn ensure_documentation(ip: IpAddr) -> Result<()> {
    ensure!(
        is_documentation(ip),
        "{ip} lies outside the documentation ranges; the lab uses no other addresses"
    );
    Ok(())
}

/// The lab's usual addresses for host number `i` (1-based) on a shared link.
pub fn host_v4(i: u8) -> IpNet {
    IpNet::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)), 24).expect("valid prefix")
}

pub fn host_v6(i: u8) -> IpNet {
    IpNet::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i))),
        64,
    )
    .expect("valid prefix")
}

/// One test host: a namespace with one interface and one address per family.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub iface: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Host {
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 { self.v6.into() } else { self.v4.into() }
    }

    pub fn sock(&self, v6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(v6), port)
    }

    /// Both addresses, comma-separated, as `netfault partition` takes a set.
    pub fn set(&self) -> String {
        format!("{},{}", self.v4, self.v6)
    }
}

/// A bridge in a namespace of its own, and the interface each member got.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub ns: String,
    pub member_ifaces: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------

/// Numbers namespaces across every lab of the process, so parallel tests never collide.
static NEXT_NS: AtomicU32 = AtomicU32::new(0);

type Teardown = Box<dyn FnOnce() + Send>;

/// Owns namespaces (and so every link in them) until dropped.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    /// Interfaces made per namespace, for the next free `ethN`.
    ifaces: HashMap<String, u32>,
    teardown: Vec<Teardown>,
}

impl Lab {
    /// A new, empty lab. Removes what dead processes using the same prefix left behind.
    pub fn new(prefix: &str) -> Result<Self> {
        ensure!(
            !prefix.is_empty()
                && prefix.len() <= 16
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "lab prefix '{prefix}' must be 1 to 16 lowercase letters or digits"
        );
        // SAFETY: no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "the lab creates network namespaces: run as root"
        );
        remove_stale(prefix);
        Ok(Self {
            prefix: prefix.into(),
            namespaces: Vec::new(),
            ifaces: HashMap::new(),
            teardown: Vec::new(),
        })
    }

    /// Namespaces in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Runs `f` when the lab drops, before its namespaces go (last registered runs first).
    pub fn on_teardown(&mut self, f: impl FnOnce() + Send + 'static) {
        self.teardown.push(Box::new(f));
    }

    /// Creates a namespace with loopback up; `role` makes the name readable (`a`, `br`).
    pub fn netns(&mut self, role: &str) -> Result<String> {
        let n = NEXT_NS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{}-{n}-{role}", self.prefix, std::process::id());
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn next_iface(&mut self, ns: &str) -> String {
        let n = self.ifaces.entry(ns.into()).or_default();
        *n += 1;
        format!("eth{}", *n - 1)
    }

    fn ensure_owned(&self, ns: &str) -> Result<()> {
        ensure!(
            self.namespaces.iter().any(|n| n == ns),
            "namespace {ns} is not this lab's"
        );
        Ok(())
    }

    /// Joins two of the lab's namespaces with a veth pair, addresses them and brings both ends
    /// up. Returns the interface names (`ethN` in each namespace).
    pub fn veth_pair(
        &mut self,
        ns_a: &str,
        ns_b: &str,
        addrs_a: &[IpNet],
        addrs_b: &[IpNet],
    ) -> Result<(String, String)> {
        self.ensure_owned(ns_a)?;
        self.ensure_owned(ns_b)?;
        let (if_a, if_b) = (self.next_iface(ns_a), self.next_iface(ns_b));
        // Both ends are made directly inside their namespaces: nothing ever appears in ours.
        ip(&[
            "link", "add", &if_a, "netns", ns_a, "type", "veth", "peer", "name", &if_b, "netns",
            ns_b,
        ])?;
        configure(ns_a, &if_a, addrs_a)?;
        configure(ns_b, &if_b, addrs_b)?;
        wait_up(ns_a, &if_a)?;
        wait_up(ns_b, &if_b)?;
        Ok((if_a, if_b))
    }

    /// Puts each member namespace on one bridge, which lives in a namespace of its own (so the
    /// members' traffic crosses real links and never touches the caller's namespace).
    pub fn bridge(&mut self, members: &[(&str, &[IpNet])]) -> Result<Bridge> {
        for (ns, _) in members {
            self.ensure_owned(ns)?;
        }
        let br = self.netns("br")?;
        // The bridge namespace only forwards: no IPv6 stack of its own sending MLD or RS noise.
        run_in(&br, || {
            for f in ["all", "default"] {
                fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "1")?;
            }
            io::Result::Ok(())
        })?
        .context("disable IPv6 in the bridge namespace")?;
        // No STP delay and no multicast snooping: ports forward at once, and neighbour
        // discovery is flooded without waiting for an MLD querier.
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        let mut member_ifaces = Vec::new();
        for (i, (ns, addrs)) in members.iter().enumerate() {
            let host_if = self.next_iface(ns);
            let port = format!("p{i}");
            ip(&[
                "link", "add", &host_if, "netns", ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            configure(ns, &host_if, addrs)?;
            member_ifaces.push(host_if);
        }
        // (br0 itself needs no wait: it only forwards, through its ports' queues.)
        for (i, ((ns, _), host_if)) in members.iter().zip(&member_ifaces).enumerate() {
            wait_up(ns, host_if)?;
            wait_up(&br, &format!("p{i}"))?;
        }
        Ok(Bridge {
            ns: br,
            member_ifaces,
        })
    }

    /// Two hosts on a veth pair; host i (1-based) gets 192.0.2.i/24 and 2001:db8::i/64.
    pub fn pair(&mut self) -> Result<[Host; 2]> {
        let (a, b) = (self.netns("a")?, self.netns("b")?);
        let (if_a, if_b) =
            self.veth_pair(&a, &b, &[host_v4(1), host_v6(1)], &[host_v4(2), host_v6(2)])?;
        Ok([host(a, if_a, 1), host(b, if_b, 2)])
    }

    /// `n` hosts on one bridge, addressed as in [`Lab::pair`].
    pub fn star(&mut self, n: u8) -> Result<Vec<Host>> {
        ensure!((2..=26).contains(&n), "a star has 2 to 26 hosts");
        let mut names = Vec::new();
        for i in 0..n {
            names.push(self.netns(&char::from(b'a' + i).to_string())?);
        }
        let addrs: Vec<[IpNet; 2]> = (1..=n).map(|i| [host_v4(i), host_v6(i)]).collect();
        let members: Vec<(&str, &[IpNet])> = names
            .iter()
            .zip(&addrs)
            .map(|(ns, a)| (ns.as_str(), &a[..]))
            .collect();
        let bridge = self.bridge(&members)?;
        Ok(names
            .into_iter()
            .zip(bridge.member_ifaces)
            .zip(1..)
            .map(|((ns, iface), i)| host(ns, iface, i))
            .collect())
    }
}

fn host(ns: String, iface: String, i: u8) -> Host {
    let v4 = match host_v4(i).addr() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("host_v4 is v4"),
    };
    let v6 = match host_v6(i).addr() {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!("host_v6 is v6"),
    };
    Host { ns, iface, v4, v6 }
}

/// Addresses an interface and brings it up.
fn configure(ns: &str, iface: &str, addrs: &[IpNet]) -> Result<()> {
    for a in addrs {
        ensure_documentation(a.addr())?;
        let addr = a.to_string();
        match a {
            IpNet::V4(_) => ip(&["-n", ns, "addr", "add", &addr, "dev", iface])?,
            // nodad: usable at once, instead of tentative for a second of duplicate detection.
            IpNet::V6(_) => ip(&["-n", ns, "addr", "add", &addr, "dev", iface, "nodad"])?,
        }
    }
    ip(&["-n", ns, "link", "set", iface, "up"])
}

/// Waits until an interface is operationally up. Until then its carrier event is still queued
/// (the kernel's link watch runs up to a second late) and it has no real qdisc: every packet
/// sent is silently dropped, the first neighbour solicitation included.
fn wait_up(ns: &str, iface: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let out = run_cmd("ip", &["-n", ns, "-j", "link", "show", "dev", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parse ip -j link")?;
        if v[0]["operstate"] == "UP" {
            return Ok(());
        }
        ensure!(
            Instant::now() < end,
            "{iface} in {ns} is not up after 5 s: {out}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        while let Some(f) = self.teardown.pop() {
            // A panic here, while a test's panic unwinds, would abort the process.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                eprintln!("lab: a teardown step panicked");
            }
        }
        // Deleting a namespace deletes every link in it, and veth pairs go with either end.
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("lab: {e:#}");
            }
            remove_netfault_state(&ns, true);
        }
    }
}

/// Removes netfault's pins and state for a namespace (the safety net: `netfault detach` should
/// have done it). Pinned links hold their programs alive, so this is what frees them.
fn remove_netfault_state(ns: &str, warn: bool) {
    for root in [PIN_ROOT, RUN_ROOT] {
        let dir = Path::new(root).join(format!("netns-{ns}"));
        if dir.exists() {
            if warn {
                eprintln!("lab: netfault left {} behind; removing it", dir.display());
            }
            if let Err(e) = fs::remove_dir_all(&dir) {
                eprintln!("lab: remove {}: {e}", dir.display());
            }
        }
    }
}

/// The pid in a lab namespace's name, when it is this prefix's.
fn owner_pid(prefix: &str, name: &str) -> Option<u32> {
    name.strip_prefix(prefix)?
        .strip_prefix('-')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Deletes namespaces (and netfault state) named for this prefix by processes that are gone.
/// Live processes' labs, this process's included, are left alone.
fn remove_stale(prefix: &str) {
    let me = std::process::id();
    let names_in = |dir: &str, strip: &str| -> Vec<String> {
        fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_prefix(strip)
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut names = names_in("/run/netns", "");
    names.extend(names_in(PIN_ROOT, "netns-"));
    names.extend(names_in(RUN_ROOT, "netns-"));
    names.sort();
    names.dedup();
    for name in names {
        let Some(pid) = owner_pid(prefix, &name) else {
            continue;
        };
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if Path::new("/run/netns").join(&name).exists() {
            eprintln!("lab: removing stale namespace {name}");
            if let Err(e) = ip(&["netns", "del", &name]) {
                eprintln!("lab: {e:#}");
            }
        }
        remove_netfault_state(&name, false);
    }
}

// ---------------------------------------------------------------------------------------------
// Running things inside a namespace
// ---------------------------------------------------------------------------------------------

/// Runs `f` on a fresh thread that has entered the namespace `ns` (setns affects one thread
/// only, so the caller's namespace never changes). Sockets made in `f` stay in `ns` wherever
/// they are used afterwards. A panic in `f` resumes in the caller.
pub fn run_in<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> Result<R> {
    thread::scope(|s| {
        s.spawn(|| -> Result<R> {
            netfault::control::netns::enter(ns)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn run_cmd(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {prog}"))?;
    ensure!(
        out.status.success(),
        "`{prog} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<()> {
    run_cmd("ip", args).map(drop)
}

/// Runs a command inside `ns` (through `ip netns exec`) and returns its stdout.
pub fn exec_in(ns: &str, prog: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, prog];
    all.extend_from_slice(args);
    run_cmd("ip", &all)
}

/// Waits for a child at most `limit`, then kills it: no external command can hang a caller.
/// Its pipes are drained meanwhile, so a chatty child never blocks on a full pipe.
fn wait_bounded(mut child: Child, limit: Duration) -> Result<Output> {
    fn drain(pipe: Option<impl io::Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let end = Instant::now() + limit;
    while child.try_wait()?.is_none() && Instant::now() < end {
        thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill(); // no-op when it has exited
    let status = child.wait()?;
    let join = |h: JoinHandle<Vec<u8>>| h.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

// ---------------------------------------------------------------------------------------------
// UDP bursts
// ---------------------------------------------------------------------------------------------

/// Marks the lab's datagrams; anything else arriving at a sink is counted as stray.
const MAGIC: u32 = 0x4e46_4c42; // "NFLB"
const DATAGRAM_LEN: usize = 16;
/// More than any test needs, few enough to stay fast.
pub const MAX_BURST: u32 = 1_000_000;
/// A receive buffer far larger than any burst in flight: a full socket buffer would drop
/// datagrams after netfault's counters saw them pass, and break packet-exact comparisons.
const SINK_RCVBUF: libc::c_int = 32 << 20;

/// Numbers each burst, so a sink never counts a datagram of another burst.
static NEXT_BURST: AtomicU32 = AtomicU32::new(1);

/// N datagrams with sequence numbers, paced, from one namespace to another.
#[derive(Debug, Clone, Copy)]
pub struct UdpBurst {
    pub count: u32,
    /// Datagrams per second.
    pub rate: u32,
    /// The sink stops once the sender is done and nothing arrived for this long.
    pub quiet: Duration,
}

/// What one burst did: per sequence number, how many copies arrived.
#[derive(Debug, Clone)]
pub struct UdpReport {
    pub sent: u32,
    pub copies: Vec<u16>,
    /// Datagrams that were not this burst's.
    pub stray: u64,
    /// The receiving namespace's UDP receive-buffer drops during the burst (should be 0: when it
    /// is not, the socket, not the network, lost datagrams).
    pub rcvbuf_errors: u64,
}

impl UdpReport {
    /// Datagrams received, duplicates included.
    pub fn received(&self) -> u64 {
        self.copies.iter().map(|&c| u64::from(c)).sum()
    }

    /// Sequence numbers seen at least once.
    pub fn distinct(&self) -> u64 {
        self.copies.iter().filter(|&&c| c > 0).count() as u64
    }

    /// Copies beyond the first.
    pub fn duplicates(&self) -> u64 {
        self.received() - self.distinct()
    }

    /// Sequence numbers never seen.
    pub fn lost(&self) -> u64 {
        u64::from(self.sent) - self.distinct()
    }

    /// Did every datagram arrive exactly `k` times?
    pub fn every_seq_exactly(&self, k: u16) -> bool {
        self.copies.len() == self.sent as usize && self.copies.iter().all(|&c| c == k)
    }
}

impl std::fmt::Display for UdpReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, received {} ({} distinct, {} duplicates, {} lost)",
            self.sent,
            self.received(),
            self.distinct(),
            self.duplicates(),
            self.lost()
        )
    }
}

impl UdpBurst {
    pub const fn new(count: u32) -> Self {
        Self {
            count,
            rate: 20_000,
            quiet: Duration::from_millis(250),
        }
    }

    pub const fn rate(mut self, per_second: u32) -> Self {
        self.rate = per_second;
        self
    }

    /// Sending at `rate` takes this long; the whole burst is bounded by a multiple of it.
    fn nominal(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.count) / f64::from(self.rate))
    }

    /// Sends the burst from namespace `from` to `dst`, which a sink bound in `to` receives.
    pub fn run(&self, from: &str, to: &str, dst: SocketAddr) -> Result<UdpReport> {
        ensure_documentation(dst.ip())?;
        ensure!(
            (1..=MAX_BURST).contains(&self.count),
            "a burst has 1 to {MAX_BURST} datagrams"
        );
        ensure!(self.rate > 0, "a burst needs a positive rate");
        let burst = NEXT_BURST.fetch_add(1, Ordering::Relaxed);
        let sink = bind_sink(to, dst)?;
        let errors_before = rcvbuf_errors(to)?;
        // The sink gives up at this hard limit, whatever happens to the sender.
        let hard_stop = Instant::now() + self.nominal() * 3 + self.quiet + Duration::from_secs(5);
        let rx = Receiver::start(sink, burst, self.count, self.quiet, hard_stop);
        let sent = self.send(from, dst, burst, hard_stop);
        let copies = rx.finish();
        let (sent, (copies, stray)) = (sent?, copies?);
        Ok(UdpReport {
            sent,
            copies,
            stray,
            rcvbuf_errors: rcvbuf_errors(to)?.saturating_sub(errors_before),
        })
    }

    fn send(&self, from: &str, dst: SocketAddr, burst: u32, hard_stop: Instant) -> Result<u32> {
        let any: IpAddr = if dst.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let sock =
            run_in(from, || UdpSocket::bind((any, 0)))?.context("bind the sending socket")?;
        let pace = pacer(self.rate)?;
        let mut sent = 0;
        for seq in 0..self.count {
            while let Err(wait) = pace.try_wait() {
                ensure!(Instant::now() < hard_stop, "sender overran its time limit");
                thread::sleep(wait);
            }
            send_one(&sock, &datagram(burst, seq), dst, hard_stop)?;
            sent += 1;
        }
        Ok(sent)
    }
}

/// A token bucket at `rate` per second, refilled every millisecond (or slower for low rates).
fn pacer(rate: u32) -> Result<Ratelimiter> {
    let (amount, every) = if rate >= 1000 {
        (u64::from(rate.div_ceil(1000)), Duration::from_millis(1))
    } else {
        (1, Duration::from_secs(1) / rate)
    };
    Ok(Ratelimiter::builder(amount, every)
        .max_tokens(amount)
        .initial_available(amount)
        .build()?)
}

fn datagram(burst: u32, seq: u32) -> [u8; DATAGRAM_LEN] {
    let mut d = [0u8; DATAGRAM_LEN];
    d[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    d[4..8].copy_from_slice(&burst.to_be_bytes());
    d[8..12].copy_from_slice(&seq.to_be_bytes());
    d
}

/// The sequence number, if this is a datagram of `burst`.
fn parse_datagram(d: &[u8], burst: u32) -> Option<u32> {
    if d.len() != DATAGRAM_LEN || d[0..4] != MAGIC.to_be_bytes() || d[4..8] != burst.to_be_bytes() {
        return None;
    }
    Some(u32::from_be_bytes(d[8..12].try_into().ok()?))
}

/// Sends one datagram, retrying briefly when the local queue is full (that is the sender's
/// backpressure, not loss on the path).
fn send_one(sock: &UdpSocket, d: &[u8], dst: SocketAddr, hard_stop: Instant) -> Result<()> {
    loop {
        match sock.send_to(d, dst) {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN))
                    && Instant::now() < hard_stop =>
            {
                thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e).with_context(|| format!("send to {dst}")),
        }
    }
}

fn bind_sink(ns: &str, addr: SocketAddr) -> Result<UdpSocket> {
    let sock = run_in(ns, || UdpSocket::bind(addr))?
        .with_context(|| format!("bind a UDP sink on {addr} in {ns}"))?;
    // SO_RCVBUFFORCE (root) goes past net.core.rmem_max.
    // SAFETY: plain setsockopt on a socket we own, with a correctly sized value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&SINK_RCVBUF as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
    // Short: the loop checks its stop conditions this often.
    sock.set_read_timeout(Some(Duration::from_millis(10)))?;
    Ok(sock)
}

/// UDP receive-buffer errors of a namespace, both families. /proc/thread-self, not /proc/self:
/// /proc/self/net shows the main thread's namespace.
fn rcvbuf_errors(ns: &str) -> Result<u64> {
    run_in(ns, || -> Result<u64> {
        let v4 = fs::read_to_string("/proc/thread-self/net/snmp")?;
        let v6 = fs::read_to_string("/proc/thread-self/net/snmp6")?;
        Ok(snmp_field(&v4, "Udp:", "RcvbufErrors")? + snmp6_field(&v6, "Udp6RcvbufErrors")?)
    })?
}

/// A field of /proc/net/snmp, where a header line of names precedes a line of values.
fn snmp_field(text: &str, proto: &str, field: &str) -> Result<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(proto));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {proto} in snmp")
    };
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .context("snmp field")?;
    Ok(values
        .split_whitespace()
        .nth(i)
        .context("snmp value")?
        .parse()?)
}

fn snmp6_field(text: &str, field: &str) -> Result<u64> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(field))
        .context("snmp6 field")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("snmp6 value")?
        .parse()?)
}

/// A sink counting on its own thread while the sender runs, so its buffer never fills.
struct Receiver {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(Vec<u16>, u64)>>,
}

impl Receiver {
    fn start(sock: UdpSocket, burst: u32, count: u32, quiet: Duration, hard_stop: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || receive(&sock, burst, count, &flag, quiet, hard_stop));
        Self { stop, thread }
    }

    /// Tells the sink that the sender is done; it returns after `quiet` without datagrams.
    fn finish(self) -> Result<(Vec<u16>, u64)> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

fn receive(
    sock: &UdpSocket,
    burst: u32,
    count: u32,
    stop: &AtomicBool,
    quiet: Duration,
    hard_stop: Instant,
) -> Result<(Vec<u16>, u64)> {
    let mut copies = vec![0u16; count as usize];
    let mut stray = 0u64;
    let mut buf = [0u8; 2048];
    let mut last = Instant::now();
    let mut stopped_at = None;
    loop {
        let now = Instant::now();
        if now >= hard_stop {
            break;
        }
        if stop.load(Ordering::Acquire) {
            let since = *stopped_at.get_or_insert(now);
            if now.duration_since(last.max(since)) >= quiet {
                break;
            }
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                last = Instant::now();
                match parse_datagram(&buf[..n], burst).and_then(|s| copies.get_mut(s as usize)) {
                    Some(c) => *c = c.saturating_add(1),
                    None => stray += 1,
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("receive"),
        }
    }
    Ok((copies, stray))
}

// ---------------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------------

/// A TCP echo server in a namespace, serving one connection at a time until dropped.
pub struct TcpEcho {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Per-connection limits on the server: a stuck client cannot hold it.
const ECHO_IO_TIMEOUT: Duration = Duration::from_secs(1);
const ECHO_MAX_BYTES: usize = 16 << 20;
/// The server stops by itself after this, even if never dropped.
const ECHO_LIFETIME: Duration = Duration::from_secs(120);

impl TcpEcho {
    pub fn start(ns: &str, addr: SocketAddr) -> Result<Self> {
        ensure_documentation(addr.ip())?;
        let listener = run_in(ns, || TcpListener::bind(addr))?
            .with_context(|| format!("listen on {addr} in {ns}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || serve(&listener, &flag));
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    let end = Instant::now() + ECHO_LIFETIME;
    while !stop.load(Ordering::Acquire) && Instant::now() < end {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = echo(s);
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn echo(mut s: TcpStream) -> io::Result<()> {
    use std::io::{Read as _, Write as _};
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(ECHO_IO_TIMEOUT))?;
    s.set_write_timeout(Some(ECHO_IO_TIMEOUT))?;
    let mut buf = [0u8; 16 << 10];
    let mut total = 0;
    while total < ECHO_MAX_BYTES {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])?;
        total += n;
    }
    Ok(())
}

/// How a TCP check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpOutcome {
    /// Connected, and every byte came back intact.
    Transferred(usize),
    /// The peer answered with a reset.
    Refused,
    /// Nothing came back in time (a dropped SYN, SYN-ACK or data).
    TimedOut,
    Failed(String),
}

impl TcpOutcome {
    pub fn ok(&self) -> bool {
        matches!(self, TcpOutcome::Transferred(_))
    }
}

/// Connects from namespace `ns` to an echo server at `dst`, sends `bytes` and reads them back;
/// every step is bounded by `timeout`.
pub fn tcp_transfer(
    ns: &str,
    dst: SocketAddr,
    bytes: usize,
    timeout: Duration,
) -> Result<TcpOutcome> {
    ensure_documentation(dst.ip())?;
    ensure!(bytes <= ECHO_MAX_BYTES, "at most {ECHO_MAX_BYTES} bytes");
    let stream = match run_in(ns, || TcpStream::connect_timeout(&dst, timeout))? {
        Ok(s) => s,
        Err(e) => return Ok(classify_io(&e)),
    };
    Ok(match exchange(stream, bytes, timeout) {
        Ok(true) => TcpOutcome::Transferred(bytes),
        Ok(false) => TcpOutcome::Failed("echo came back different".into()),
        Err(e) => classify_io(&e),
    })
}

fn classify_io(e: &io::Error) -> TcpOutcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => TcpOutcome::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => TcpOutcome::TimedOut,
        _ => TcpOutcome::Failed(e.to_string()),
    }
}

/// Writes from a second thread while reading here, so neither side's buffers can deadlock.
fn exchange(stream: TcpStream, bytes: usize, timeout: Duration) -> io::Result<bool> {
    use std::io::{Read as _, Write as _};
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let mut writer = stream.try_clone()?;
    let mut reader = stream;
    thread::scope(|s| {
        let w = s.spawn(|| -> io::Result<()> {
            writer.write_all(&data)?;
            writer.shutdown(std::net::Shutdown::Write)
        });
        let mut back = Vec::with_capacity(bytes);
        let r = reader.read_to_end(&mut back);
        w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        r?;
        Ok(back == data)
    })
}

// ---------------------------------------------------------------------------------------------
// ICMP
// ---------------------------------------------------------------------------------------------

/// The summary line of `ping`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PingReport {
    pub transmitted: u32,
    pub received: u32,
    pub duplicates: u32,
}

/// `ping -c count -W 1 -i 0.01` from namespace `ns`; killed if it outlives its own bounds.
/// (ping exits after the last reply, so a duplicate of the last one may go uncounted.)
///
/// Where the sender's own egress drops (a partition or rule on the sending host), `sendmsg`
/// fails with ENOBUFS and ping retries each packet for up to `-W`: about a second per packet.
pub fn ping(ns: &str, dst: IpAddr, count: u32) -> Result<PingReport> {
    ensure_documentation(dst)?;
    ensure!((1..=100).contains(&count), "ping 1 to 100 times");
    let (n, d) = (count.to_string(), dst.to_string());
    let child = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-c", &n, "-W", "1", "-i", "0.01", &d,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run ping")?;
    let limit = Duration::from_millis(u64::from(count) * 1500) + Duration::from_secs(4);
    let out = wait_bounded(child, limit)?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).with_context(|| {
        format!(
            "ping {d} in {ns}: no summary in output: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Parses `5 packets transmitted, 5 received, +4 duplicates, 0% packet loss, ...`.
fn parse_ping(text: &str) -> Option<PingReport> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut r = PingReport::default();
    for part in line.split(',') {
        let mut w = part.split_whitespace();
        let (Some(num), Some(what)) = (w.next(), w.next()) else {
            continue;
        };
        let Ok(v) = num.trim_start_matches('+').parse::<u32>() else {
            continue;
        };
        match what {
            "packets" => r.transmitted = v,
            "received" => r.received = v,
            "duplicates" => r.duplicates = v,
            _ => {}
        }
    }
    Some(r)
}

// ---------------------------------------------------------------------------------------------
// Driving the netfault binary
// ---------------------------------------------------------------------------------------------

/// One rule's counters, as `netfault stats --json` prints them.
pub use netfault::observe::CounterView as Counters;

#[derive(Debug, Clone, Deserialize)]
pub struct RuleStats {
    pub name: String,
    pub kind: String,
    pub counters: Counters,
}

#[derive(Deserialize)]
struct StatsDoc {
    rules: Vec<RuleStats>,
}

/// The real `netfault` binary, always run with `--netns`.
#[derive(Debug, Clone)]
pub struct Netfault {
    pub bin: PathBuf,
}

/// No netfault command should take long; its own lock wait is 10 s.
const NETFAULT_LIMIT: Duration = Duration::from_secs(20);

impl Netfault {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self { bin: bin.into() }
    }

    /// The binary installed next to the running executable (as cargo builds them).
    pub fn next_to_current_exe() -> Result<Self> {
        let bin = std::env::current_exe()?.with_file_name("netfault");
        ensure!(
            bin.exists(),
            "{} not found: build it first (cargo build)",
            bin.display()
        );
        Ok(Self::new(bin))
    }

    /// Runs `netfault --netns ns args...`, whatever its exit status.
    pub fn output(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let child = Command::new(&self.bin)
            .arg("--netns")
            .arg(ns)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {}", self.bin.display()))?;
        wait_bounded(child, NETFAULT_LIMIT)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn run(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = self.output(ns, args)?;
        ensure!(
            out.status.success(),
            "`netfault --netns {ns} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Attaches to `iface` in `ns`, and has the lab run `netfault detach` there on teardown
    /// (so a failing test leaves no programs behind either).
    pub fn attach(&self, lab: &mut Lab, ns: &str, iface: &str) -> Result<String> {
        let this = self.clone();
        let owned = ns.to_owned();
        lab.on_teardown(move || {
            if let Err(e) = this.run(&owned, &["detach"]) {
                eprintln!("lab: {e:#}");
            }
        });
        self.run(ns, &["attach", iface])
    }

    pub fn stats(&self, ns: &str) -> Result<Vec<RuleStats>> {
        let out = self.run(ns, &["stats", "--json"])?;
        let doc: StatsDoc =
            serde_json::from_str(&out).with_context(|| format!("parse stats: {out}"))?;
        Ok(doc.rules)
    }

    pub fn counters(&self, ns: &str, name: &str) -> Result<Counters> {
        self.stats(ns)?
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.counters)
            .with_context(|| format!("no rule named {name} in {ns}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// The normal quantile for a two-sided test at alpha = 1e-4 (99.99 % confidence).
pub const Z_ALPHA_1E4: f64 = 3.8906;

/// The Wilson score interval for `k` successes in `n` trials at normal quantile `z`.
pub fn wilson_interval(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documentation_ranges_only() {
        for ok in [
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.255",
            "2001:db8::1",
            "2001:db8:ffff::1",
        ] {
            assert!(is_documentation(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "192.0.3.1",
            "8.8.8.8",
            "127.0.0.1",
            "2001:db9::1",
            "::1",
            "fe80::1",
        ] {
            assert!(!is_documentation(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn datagrams_round_trip_and_reject_others() {
        let d = datagram(7, 12345);
        assert_eq!(parse_datagram(&d, 7), Some(12345));
        assert_eq!(parse_datagram(&d, 8), None);
        assert_eq!(parse_datagram(&d[..15], 7), None);
    }

    #[test]
    fn ping_summaries() {
        let s = "--- 192.0.2.2 ping statistics ---\n5 packets transmitted, 5 received, +4 duplicates, 0% packet loss, time 71ms\n";
        assert_eq!(
            parse_ping(s),
            Some(PingReport {
                transmitted: 5,
                received: 5,
                duplicates: 4
            })
        );
        let s = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2ms\n";
        assert_eq!(
            parse_ping(s),
            Some(PingReport {
                transmitted: 3,
                received: 0,
                duplicates: 0
            })
        );
    }

    #[test]
    fn wilson_known_values() {
        // 30 of 100 at z = 1.96: [0.2189, 0.3958] (textbook values).
        let (lo, hi) = wilson_interval(30, 100, 1.96);
        assert!(
            (lo - 0.2189).abs() < 1e-3 && (hi - 0.3958).abs() < 1e-3,
            "{lo} {hi}"
        );
        assert_eq!(wilson_interval(0, 0, 1.96), (0.0, 1.0));
    }

    #[test]
    fn owner_pids() {
        assert_eq!(owner_pid("nfe2e", "nfe2e-123-4-a"), Some(123));
        assert_eq!(owner_pid("nfe2e", "nfe2ex-123-4-a"), None);
        assert_eq!(owner_pid("nf", "nfe2e-123-4-a"), None);
        assert_eq!(owner_pid("nfe2e", "other"), None);
    }

    #[test]
    fn snmp_parsing() {
        let v4 = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 10 0 0 10 3\n";
        assert_eq!(snmp_field(v4, "Udp:", "RcvbufErrors").unwrap(), 3);
        let v6 = "Udp6InDatagrams                 \t5\nUdp6RcvbufErrors                \t2\n";
        assert_eq!(snmp6_field(v6, "Udp6RcvbufErrors").unwrap(), 2);
    }
}
