//! A small laboratory of test hosts: network namespaces joined by veth pairs or a bridge, and
//! bounded traffic between them. The end-to-end tests and `netfault-demo` are built on it.
//!
//! It runs as root on real machines, so it keeps to a few rails:
//! - every address it assigns or sends to lies in a documentation range (RFC 5737, RFC 3849):
//!   a mistake can never reach a real network;
//! - every traffic loop is bounded in count and in time;
//! - namespaces (and private bpffs pin directories) are named `<prefix>-<pid>-<n>-<role>` and
//!   deleted when the [`Lab`] drops (also while a panic unwinds); leftovers of dead processes
//!   with the same prefix go at creation.
//!
//! Hosts come as a veth [`Lab::pair`], a bridged [`Lab::star`], or a [`Lab::single`] namespace
//! with a veth pair inside; [`Lab::enter`] and [`run_in`] run code inside a namespace,
//! [`TcpEcho`] and [`tcp_connect_from`] hold TCP sessions, [`Netfault`] drives the binary
//! (parsing only its `--json` output).
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
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
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
    // A constant that failed to parse would match nothing: fail closed.
    DOC_NETS
        .iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .any(|n| n.contains(&ip))
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
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 2, i), 24))
}

pub fn host_v6(i: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)),
        64,
    ))
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

/// A namespace with a veth pair whose two ends are both inside it, unaddressed: an interface
/// to attach to (`iface`) and its peer (`peer`), with nothing beyond.
#[derive(Debug, Clone)]
pub struct Single {
    pub ns: String,
    pub iface: String,
    pub peer: String,
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
    /// Private bpffs directories (pins), removed with the lab.
    pin_dirs: Vec<PathBuf>,
    /// Interfaces made per namespace, for the next free `ethN`.
    ifaces: HashMap<String, u32>,
    teardown: Vec<Teardown>,
    /// Held while the lab has pin directories (last: dropped after they are removed).
    bpffs: Option<netfault::dataplane::Bpffs>,
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
            pin_dirs: Vec::new(),
            bpffs: None,
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

    /// A new name `<prefix>-<pid>-<n>-<role>`, unique across the process.
    fn name(&self, role: &str) -> String {
        let n = NEXT_NS.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}-{n}-{role}", self.prefix, std::process::id())
    }

    /// Creates a namespace with loopback up; `role` makes the name readable (`a`, `br`).
    pub fn netns(&mut self, role: &str) -> Result<String> {
        let name = self.name(role);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        // No router solicitations (there is no router): devices made here later send no
        // frames but their traffic and a few MLD reports when addressed.
        run_in(&name, || {
            fs::write("/proc/sys/net/ipv6/conf/default/router_solicitations", "0")
        })?
        .with_context(|| format!("turn router solicitations off in {name}"))?;
        Ok(name)
    }

    /// Moves the calling thread into one of the lab's namespaces for good (threads it starts
    /// later start there too). Only for a thread of one's own, such as a test's; elsewhere
    /// [`run_in`] enters on a fresh thread.
    pub fn enter(&self, ns: &str) -> Result<()> {
        self.ensure_owned(ns)?;
        netfault::control::netns::enter(ns).with_context(|| format!("enter {ns}"))
    }

    /// An empty directory of its own on the BPF filesystem (`/sys/fs/bpf/<name>`), for pins;
    /// removed with everything in it when the lab drops.
    pub fn pin_dir(&mut self, role: &str) -> Result<PathBuf> {
        if self.bpffs.is_none() {
            self.bpffs =
                Some(netfault::dataplane::ensure_bpffs().context("mount the BPF filesystem")?);
        }
        let dir = Path::new(BPFFS).join(self.name(role));
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        self.pin_dirs.push(dir.clone());
        Ok(dir)
    }

    /// A namespace holding both ends of a veth pair, up and unaddressed (see [`Single`]).
    pub fn single(&mut self, role: &str) -> Result<Single> {
        let ns = self.netns(role)?;
        let (iface, peer) = (self.next_iface(&ns), self.next_iface(&ns));
        ip(&[
            "-n", &ns, "link", "add", &iface, "type", "veth", "peer", "name", &peer,
        ])?;
        for i in [&iface, &peer] {
            ip(&["-n", &ns, "link", "set", i, "up"])?;
        }
        wait_up(&ns, &iface)?;
        wait_up(&ns, &peer)?;
        Ok(Single { ns, iface, peer })
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

    /// `n` hosts on one bridge, addressed as in [`Lab::pair`]. Up to 26 hosts are named by a
    /// letter (`a`, `b`, ...), more by their number (`h1`, `h2`, ...).
    pub fn star(&mut self, n: u8) -> Result<Vec<Host>> {
        ensure!((2..=64).contains(&n), "a star has 2 to 64 hosts");
        let mut names = Vec::new();
        for i in 0..n {
            let role = if n <= 26 {
                char::from(b'a' + i).to_string()
            } else {
                format!("h{}", i + 1)
            };
            names.push(self.netns(&role)?);
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
            // netfault keys its state by the namespace's identity: read it while it exists.
            let key = netfault::control::netns::key_of(&ns).ok();
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("lab: {e:#}");
            }
            remove_netfault_state(key.as_deref(), true);
        }
        for dir in self.pin_dirs.drain(..) {
            if let Err(e) = fs::remove_dir_all(&dir) {
                eprintln!("lab: remove {}: {e}", dir.display());
            }
        }
    }
}

/// Where the BPF filesystem is mounted.
const BPFFS: &str = "/sys/fs/bpf";

/// Removes netfault's pins and state kept under `key` (the safety net: `netfault detach` should
/// have done it). Pinned links hold their programs alive, so this is what frees them. `None`:
/// the key could not be read (the namespace was gone already); netfault removes the state of
/// a namespace that is gone itself, as [`remove_stale`] asks it to.
fn remove_netfault_state(key: Option<&str>, warn: bool) {
    let Some(key) = key else {
        return;
    };
    if key == "host" {
        return;
    }
    for root in [PIN_ROOT, RUN_ROOT] {
        let dir = Path::new(root).join(key);
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
    // Pin directories of dead processes' labs.
    for name in names_in(BPFFS, "") {
        if let Some(pid) = owner_pid(prefix, &name)
            && pid != me
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            eprintln!("lab: removing stale pin directory {name}");
            let _ = fs::remove_dir_all(Path::new(BPFFS).join(&name));
        }
    }
    for name in names_in("/run/netns", "") {
        let Some(pid) = owner_pid(prefix, &name) else {
            continue;
        };
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let key = netfault::control::netns::key_of(&name).ok();
        eprintln!("lab: removing stale namespace {name}");
        if let Err(e) = ip(&["netns", "del", &name]) {
            eprintln!("lab: {e:#}");
        }
        remove_netfault_state(key.as_deref(), false);
    }
    // netfault's state of namespaces that are gone (a lab killed before its teardown), and
    // what an older netfault kept by name.
    for gone in netfault::control::others::sweep_gone("") {
        eprintln!("lab: {gone}");
    }
    for root in [PIN_ROOT, RUN_ROOT] {
        for name in names_in(root, "netns-") {
            if owner_pid(prefix, &name)
                .is_some_and(|pid| pid != me && !Path::new(&format!("/proc/{pid}")).exists())
            {
                let _ = fs::remove_dir_all(Path::new(root).join(format!("netns-{name}")));
            }
        }
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

/// `ip ARGS` in this process's namespace, which must succeed.
pub fn ip(args: &[&str]) -> Result<()> {
    run_cmd("ip", args).map(drop)
}

/// `ip ARGS` inside the network namespace of process `pid`: one no name under /run/netns
/// reaches (a container's, an unshared process's).
pub fn ip_in_pid(pid: impl std::fmt::Display, args: &[&str]) -> Result<()> {
    let net = format!("--net=/proc/{pid}/ns/net");
    let mut all = vec![net.as_str(), "ip"];
    all.extend_from_slice(args);
    run_cmd("nsenter", &all).map(drop)
}

/// Runs a command inside `ns` (through `ip netns exec`) and returns its stdout.
pub fn exec_in(ns: &str, prog: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, prog];
    all.extend_from_slice(args);
    run_cmd("ip", &all)
}

/// Waits for a child at most `limit`, then kills it: no external command can hang a caller.
/// Its pipes are drained meanwhile, so a chatty child never blocks on a full pipe.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Result<Output> {
    Ok(wait_within(&mut child, limit)?.0)
}

/// Like [`wait_bounded`], but a child that outlived `limit` (and was killed) is an error: for a
/// command that must finish by itself.
pub fn output_within(child: &mut Child, limit: Duration) -> Result<Output> {
    let (out, finished) = wait_within(child, limit)?;
    ensure!(
        finished,
        "ran for over {limit:?} (killed); stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The output, and whether the child ended by itself within `limit`.
fn wait_within(child: &mut Child, limit: Duration) -> Result<(Output, bool)> {
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
    let mut finished = child.try_wait()?.is_some();
    while !finished && Instant::now() < end {
        thread::sleep(Duration::from_millis(5));
        finished = child.try_wait()?.is_some();
    }
    let _ = child.kill(); // no-op when it has exited
    let status = child.wait()?;
    let join = |h: JoinHandle<Vec<u8>>| h.join().unwrap_or_default();
    Ok((
        Output {
            status,
            stdout: join(stdout),
            stderr: join(stderr),
        },
        finished,
    ))
}

/// A child process killed (SIGKILL) and reaped when this drops: a test that fails while it
/// runs leaves no process behind. Derefs to the [`Child`].
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Both no-ops once it has been reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    // A sink of the same port that was just closed may live on for a moment in a child that
    // another thread forked while it was open (fork copies every descriptor; CLOEXEC closes it
    // only at the child's exec): CI saw EADDRINUSE on back-to-back matrices. Bounded retries.
    let give_up = Instant::now() + SINK_BIND_PATIENCE;
    let sock = loop {
        match run_in(ns, || UdpSocket::bind(addr))? {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < give_up => {
                thread::sleep(Duration::from_millis(2));
            }
            r => break r,
        }
    }
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

/// How long [`bind_sink`] waits for its port to be free again.
const SINK_BIND_PATIENCE: Duration = Duration::from_millis(500);

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

/// A TCP echo server in a namespace until dropped: each connection on a thread of its own (at
/// most [`ECHO_MAX_CONNECTIONS`] at once), closed once idle for the server's idle limit.
pub struct TcpEcho {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Per-connection limits on the server: a stuck client cannot hold it.
const ECHO_IO_TIMEOUT: Duration = Duration::from_secs(1);
const ECHO_MAX_BYTES: usize = 16 << 20;
pub const ECHO_MAX_CONNECTIONS: usize = 8;
/// The server stops by itself after this, even if never dropped.
const ECHO_LIFETIME: Duration = Duration::from_secs(120);

impl TcpEcho {
    /// A server whose connections close after a second without data.
    pub fn start(ns: &str, addr: SocketAddr) -> Result<Self> {
        Self::with_idle(ns, addr, ECHO_IO_TIMEOUT)
    }

    /// A server whose connections stay open while idle for less than `idle` (a long-lived
    /// session, such as an SSH connection, pauses between exchanges).
    pub fn with_idle(ns: &str, addr: SocketAddr, idle: Duration) -> Result<Self> {
        ensure_documentation(addr.ip())?;
        ensure!(
            idle > Duration::ZERO && idle <= ECHO_LIFETIME,
            "an idle limit of 0 to {ECHO_LIFETIME:?}"
        );
        let listener = run_in(ns, || TcpListener::bind(addr))?
            .with_context(|| format!("listen on {addr} in {ns}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || serve(&listener, &flag, idle));
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

fn serve(listener: &TcpListener, stop: &AtomicBool, idle: Duration) {
    let end = Instant::now() + ECHO_LIFETIME;
    thread::scope(|sc| {
        let mut conns: Vec<thread::ScopedJoinHandle<'_, ()>> = Vec::new();
        while !stop.load(Ordering::Acquire) && Instant::now() < end {
            conns.retain(|c| !c.is_finished());
            if conns.len() >= ECHO_MAX_CONNECTIONS {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            match listener.accept() {
                Ok((s, _)) => conns.push(sc.spawn(move || {
                    let _ = echo(s, idle, stop, end);
                })),
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
        // The connections see `stop` (or the lifetime's end) within one read timeout.
    });
}

fn echo(mut s: TcpStream, idle: Duration, stop: &AtomicBool, end: Instant) -> io::Result<()> {
    use std::io::{Read as _, Write as _};
    s.set_nonblocking(false)?;
    // Short reads, so a stop is seen at once; idleness is counted across them.
    let tick = idle.min(Duration::from_millis(100));
    s.set_read_timeout(Some(tick))?;
    s.set_write_timeout(Some(ECHO_IO_TIMEOUT))?;
    let mut buf = [0u8; 16 << 10];
    let mut total = 0;
    let mut last = Instant::now();
    while total < ECHO_MAX_BYTES && !stop.load(Ordering::Acquire) && Instant::now() < end {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if last.elapsed() >= idle {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        last = Instant::now();
        s.write_all(&buf[..n])?;
        total += n;
    }
    Ok(())
}

/// Connects from namespace `ns` with a fixed source address and port, as an SSH client's
/// connection appears in `SSH_CONNECTION` (the 4-tuple known in advance). The connect is
/// bounded by `timeout` (SO_SNDTIMEO: a dropped SYN gives EINPROGRESS after it); reads on the
/// stream by `timeout` too. IPv4 only.
pub fn tcp_connect_from(
    ns: &str,
    local: SocketAddr,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<io::Result<TcpStream>> {
    ensure_documentation(local.ip())?;
    ensure_documentation(peer.ip())?;
    let (SocketAddr::V4(l), SocketAddr::V4(p)) = (local, peer) else {
        bail!("tcp_connect_from: IPv4 only")
    };
    ensure!(
        timeout > Duration::ZERO && timeout <= Duration::from_secs(30),
        "a connect timeout of 0 to 30 s"
    );
    run_in(ns, move || connect_bound(l, p, timeout))
}

fn connect_bound(
    local: std::net::SocketAddrV4,
    peer: std::net::SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let sin = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket() returns a new fd or -1; an fd is owned from here on (closed on error).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a socket we just made and own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    let (la, pa) = (sin(local), sin(peer));
    // SAFETY: plain socket calls on an fd we own, with correctly sized arguments.
    unsafe {
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        ))?;
        check(libc::bind(
            fd.as_raw_fd(),
            (&la as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        check(libc::connect(
            fd.as_raw_fd(),
            (&pa as *const libc::sockaddr_in).cast(),
            len,
        ))?;
    }
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
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

/// One hook of an attached interface, as `netfault status --json` reports it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Hook {
    pub hook: String,
    /// `xdp-native`, `xdp-generic`, `tcx` or `clsact`.
    pub kind: String,
    pub prog_id: u32,
}

/// One attached interface, as `netfault status --json` reports it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Attached {
    pub iface: String,
    pub ifindex: u32,
    pub lost: bool,
    pub hooks: Vec<Hook>,
}

#[derive(Deserialize)]
struct StatusDoc {
    interfaces: Vec<Attached>,
}

/// The real `netfault` binary, always run with `--netns`. Its environment is the caller's less
/// `SSH_CONNECTION` (a tester's own SSH session would add a protection to every partition),
/// plus what [`Netfault::with_env`] adds. With [`Netfault::without_iproute2`], every command
/// runs where `tc` and `ip` do not exist.
#[derive(Debug, Clone)]
pub struct Netfault {
    pub bin: PathBuf,
    env: Vec<(String, String)>,
    hide_iproute2: bool,
    /// With `hide_iproute2`: the host's bpffs, held mounted. Each command's private mount
    /// namespace would otherwise mount a bpffs of its own, and its pins would die with it.
    bpffs: Option<std::sync::Arc<netfault::dataplane::Bpffs>>,
}

/// Where iproute2 lives on a merged-/usr system (`/sbin` and `/bin` are links to these).
pub const IPROUTE2_DIRS: [&str; 2] = ["/usr/sbin", "/usr/bin"];

/// No netfault command should take long; its own lock wait is 10 s. Loading the data path is
/// the slowest step: under TCG (the VM tests) the verifier takes 10 s and more.
const NETFAULT_LIMIT: Duration = Duration::from_secs(45);

impl Netfault {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            env: Vec::new(),
            hide_iproute2: false,
            bpffs: None,
        }
    }

    /// The same binary, each command spawned in a private mount namespace where
    /// [`IPROUTE2_DIRS`] are empty read-only tmpfs mounts: no `tc`, no `ip`, nothing else from
    /// there either (netfault runs from `target/` and needs nothing of them). Everything else
    /// (/run/netns, bpffs, /run/netfault) is the host's: the copied mounts share their
    /// filesystems (bpffs is mounted on the host for as long as this driver lives; if that
    /// fails, the commands say why).
    pub fn without_iproute2(&self) -> Self {
        let mut n = self.clone();
        n.hide_iproute2 = true;
        n.bpffs = netfault::dataplane::ensure_bpffs()
            .map(std::sync::Arc::new)
            .ok();
        n
    }

    /// The same binary with one more environment variable set (`SSH_CONNECTION` included).
    pub fn with_env(&self, key: &str, value: &str) -> Self {
        let mut n = self.clone();
        n.env.push((key.into(), value.into()));
        n
    }

    fn command(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_remove("SSH_CONNECTION")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--netns")
            .arg(ns)
            .args(args)
            .stdin(Stdio::null());
        if self.hide_iproute2 {
            hide_iproute2(&mut c);
        }
        c
    }

    /// Starts `netfault --netns ns args...` and leaves it running (its output discarded); the
    /// caller waits for it or kills it.
    pub fn spawn(&self, ns: &str, args: &[&str]) -> Result<Child> {
        self.command(ns, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("run {}", self.bin.display()))
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
        let child = self
            .command(ns, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {}", self.bin.display()))?;
        wait_bounded(child, NETFAULT_LIMIT)
    }

    /// Runs a command that must succeed; returns its whole output (stderr has its warnings).
    pub fn run_output(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let out = self.output(ns, args)?;
        ensure!(
            out.status.success(),
            "`netfault --netns {ns} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn run(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = self.run_output(ns, args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a `--json` command that must succeed; returns the parsed document.
    pub fn json(&self, ns: &str, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.run(ns, args)?;
        serde_json::from_str(&out)
            .with_context(|| format!("parse `netfault {}`: {out}", args.join(" ")))
    }

    /// The attached interfaces and their hooks (`status --json`: no wording parsed).
    pub fn status(&self, ns: &str) -> Result<Vec<Attached>> {
        let out = self.run(ns, &["status", "--json"])?;
        let doc: StatusDoc =
            serde_json::from_str(&out).with_context(|| format!("parse status: {out}"))?;
        Ok(doc.interfaces)
    }

    /// The names in `rule list --json`, in evaluation order.
    pub fn rule_names(&self, ns: &str) -> Result<Vec<String>> {
        let v = self.json(ns, &["rule", "list", "--json"])?;
        v["rules"]
            .as_array()
            .context("rule list: no rules array")?
            .iter()
            .map(|r| {
                r["name"]
                    .as_str()
                    .map(str::to_owned)
                    .context("a rule without a name")
            })
            .collect()
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

/// Makes `c` run in a private mount namespace with [`IPROUTE2_DIRS`] (those that exist) covered
/// by empty read-only tmpfs mounts. The strings are made here: between fork and exec only
/// async-signal-safe calls (raw syscalls) run.
fn hide_iproute2(c: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    let to_c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let dirs: Vec<std::ffi::CString> = IPROUTE2_DIRS
        .iter()
        .filter(|d| Path::new(d).is_dir())
        .map(|d| to_c(d))
        .collect();
    let (root, tmpfs, opts) = (to_c("/"), to_c("tmpfs"), to_c("size=4k,mode=0555"));
    let hide = move || -> std::io::Result<()> {
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: unshare and mount are plain syscalls on pointers to CStrings that outlive
        // the call; this runs in the child after fork, before exec.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Private first: the tmpfs mounts below must not propagate back to the host.
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for d in &dirs {
                check(libc::mount(
                    tmpfs.as_ptr(),
                    d.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    opts.as_ptr().cast(),
                ))?;
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes raw syscalls (async-signal-safe) and allocates nothing.
    unsafe {
        c.pre_exec(hide);
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
