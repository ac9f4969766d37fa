//! Measurement tools for delay, jitter, reordering and rate between two of the lab's namespaces:
//! a timestamped one-way UDP probe, a UDP echo (RTT) probe, TCP goodput, and percentiles.
//! The shaping tests (`tests/shaping.rs`) and `netfault-bench delay` are built on them.
//!
//! The same rails as [`crate::lab`]: only documentation addresses, every loop bounded in count
//! and in time (each receiver has a hard deadline, whatever the sender does).
//!
//! # Clocks
//!
//! Both namespaces run on one kernel, so they share its clocks: the sender writes
//! `CLOCK_MONOTONIC` into each datagram right before `sendto`, and the one-way delay is the
//! receive time minus that. The receive time is the kernel's own receive timestamp
//! (`SO_TIMESTAMPNS`), taken when the packet entered the receiving stack (for a veth, when the
//! sending side's qdisc released it): unlike a clock read after `recvmsg`, it carries no wake-up
//! latency of the receiving thread, which under QEMU's TCG is milliseconds and varies.
//! `SO_TIMESTAMPNS` stamps are `CLOCK_REALTIME`, so they are converted with the offset
//! REALTIME - MONOTONIC measured (tightly bracketed) when the probe starts; the offset is
//! measured again at the end and the difference is reported (`clock_drift_ns`: an NTP step or
//! slew in between would show there). A kernel stamp that is missing or implausible (before the
//! send time, or after the thread's own clock read) is replaced by that clock read, and counted
//! in `user_timed`: a qdisc that leaves its own departure time in `skb->tstamp` for the receiver
//! could otherwise produce such stamps.
use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::lab::{is_documentation, run_in};

// ---------------------------------------------------------------------------------------------
// Clocks
// ---------------------------------------------------------------------------------------------

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: valid clock id and a pointer to writable timespec storage.
    let rc = unsafe { libc::clock_gettime(clock, ts.as_mut_ptr()) };
    assert_eq!(rc, 0, "clock_gettime cannot fail for these clocks");
    // SAFETY: initialised by the successful call above.
    let ts = unsafe { ts.assume_init() };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// CLOCK_MONOTONIC in ns: the same in every namespace of one kernel (no time namespaces here).
pub fn mono_ns() -> i64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// REALTIME - MONOTONIC, from the tightest of a few bracketed reads (error under a microsecond
/// on an idle machine, a few under TCG).
pub fn realtime_offset_ns() -> i64 {
    let mut best = (i64::MAX, 0);
    for _ in 0..16 {
        let a = mono_ns();
        let r = clock_ns(libc::CLOCK_REALTIME);
        let b = mono_ns();
        if b - a < best.0 {
            best = (b - a, r - (a + (b - a) / 2));
        }
    }
    best.1
}

// ---------------------------------------------------------------------------------------------
// Percentiles
// ---------------------------------------------------------------------------------------------

/// The `p`-quantile (0 <= p <= 1) of sorted data, interpolating linearly between order
/// statistics (Hyndman and Fan's type 7, what numpy and R use by default). NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    debug_assert!(
        sorted.windows(2).all(|w| w[0] <= w[1]),
        "data must be sorted"
    );
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let (lo, frac) = (h.floor() as usize, h - h.floor());
    match sorted.get(lo + 1) {
        Some(&next) => sorted[lo] + frac * (next - sorted[lo]),
        None => sorted[lo],
    }
}

/// Sorts a copy and returns the quantiles asked for.
pub fn percentiles(data: &[f64], ps: &[f64]) -> Vec<f64> {
    let mut s = data.to_vec();
    s.sort_by(f64::total_cmp);
    ps.iter().map(|&p| percentile(&s, p)).collect()
}

pub fn median(data: &[f64]) -> f64 {
    percentiles(data, &[0.5])[0]
}

/// A compact description of a sample, for messages: n, min, p1, p50, p99, max (in the data's
/// unit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub min: f64,
    pub p1: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(data: &[f64]) -> Self {
        let q = percentiles(data, &[0.0, 0.01, 0.5, 0.99, 1.0]);
        Self {
            n: data.len(),
            min: q[0],
            p1: q[1],
            p50: q[2],
            p99: q[3],
            max: q[4],
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} min {:.3} p1 {:.3} p50 {:.3} p99 {:.3} max {:.3}",
            self.n, self.min, self.p1, self.p50, self.p99, self.max
        )
    }
}

// ---------------------------------------------------------------------------------------------
// One-way UDP probe
// ---------------------------------------------------------------------------------------------

/// Marks the probe's datagrams ("NFPR").
const MAGIC: u32 = 0x4e46_5052;
/// magic, run, flow (u16) + 2 bytes padding, seq, send time (i64 ns).
pub const HEADER_LEN: usize = 24;
/// Far more than a probe ever has in flight (200 ms at 10k pps of 1500 bytes is 3 MB).
const RCVBUF: libc::c_int = 32 << 20;
/// Upper bounds on what one probe may ask for.
pub const MAX_COUNT: u32 = 1_000_000;
pub const MAX_FLOWS: u16 = 1024;

/// Reorderings kept as examples in a report.
const MAX_REORDER_EXAMPLES: usize = 8;

static NEXT_RUN: AtomicU32 = AtomicU32::new(1);

/// `count` datagrams, one every `interval`, round-robin over `flows` sockets (distinct source
/// ports): datagram `i` is sequence number `i / flows` of flow `i % flows`, so each flow sees
/// one datagram every `flows * interval`.
#[derive(Debug, Clone, Copy)]
pub struct UdpProbe {
    pub count: u32,
    pub interval: Duration,
    pub flows: u16,
    /// UDP payload bytes (at least [`HEADER_LEN`]).
    pub payload: usize,
    /// The largest delay expected: the receiver waits this long after the last send (plus
    /// `quiet`) for stragglers before counting the rest as lost.
    pub max_delay: Duration,
    pub quiet: Duration,
    /// Copies of each datagram the receiver waits for (duplication): it stops early only once
    /// this many of each arrived. 1 by default.
    pub copies: u32,
}

/// One datagram that arrived (its first copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub flow: u16,
    pub seq: u32,
    /// CLOCK_MONOTONIC at the sender, right before `sendto`.
    pub sent_ns: i64,
    /// Receive time minus send time.
    pub delay_ns: i64,
    /// Timed by the thread's clock read instead of the kernel's receive timestamp.
    pub user_timed: bool,
    /// The receiving thread's clock read after `recvmsg` less the receive time: its wake-up
    /// latency (0 when user-timed). Should be small; tens of ms would mean the kernel stamped
    /// the datagram before a delay rather than after it.
    pub rx_lag_ns: i64,
}

#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub sent: u32,
    pub flows: u16,
    /// First copies, in arrival order.
    pub samples: Vec<Sample>,
    /// Copies after the first.
    pub duplicates: u64,
    /// Those copies, timed as the first copies are, in arrival order (a late duplicate's
    /// delay is its `delay_ns` less its original's).
    pub duplicate_samples: Vec<Sample>,
    /// Per flow: datagrams that arrived after one with a higher sequence number of the same flow.
    pub reordered: Vec<u64>,
    /// The first few of those: (late sample, the sample of its flow that had overtaken it).
    pub reorder_examples: Vec<(Sample, Sample)>,
    /// Datagrams that were not this probe's.
    pub stray: u64,
    /// The receiving namespace's UDP receive-buffer drops during the probe (should be 0).
    pub rcvbuf_errors: u64,
    /// Samples timed in user space (see the module documentation).
    pub user_timed: u64,
    /// The change of REALTIME - MONOTONIC between the probe's start and end.
    pub clock_drift_ns: i64,
    /// Times `sendto` failed with ENOBUFS or EAGAIN and was retried.
    pub send_retries: u64,
    /// The sender's schedule slipped by this much at worst (TCG, a busy machine).
    pub max_send_lag: Duration,
}

impl ProbeReport {
    pub fn received(&self) -> u64 {
        self.samples.len() as u64
    }

    pub fn lost(&self) -> u64 {
        u64::from(self.sent) - self.received()
    }

    pub fn reordered_total(&self) -> u64 {
        self.reordered.iter().sum()
    }

    /// One-way delays in ms, arrival order.
    pub fn delays_ms(&self) -> Vec<f64> {
        self.samples
            .iter()
            .map(|s| s.delay_ns as f64 / 1e6)
            .collect()
    }

    pub fn delays_ns(&self) -> Vec<i64> {
        self.samples.iter().map(|s| s.delay_ns).collect()
    }

    pub fn spread_ms(&self) -> Spread {
        Spread::of(&self.delays_ms())
    }

    /// The receiving thread's wake-up latency after the kernel's stamp, in ms.
    pub fn rx_lag_ms(&self) -> Spread {
        let v: Vec<f64> = self
            .samples
            .iter()
            .map(|s| s.rx_lag_ns as f64 / 1e6)
            .collect();
        Spread::of(&v)
    }
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, received {} ({} lost, {} duplicates, {} reordered, {} stray, {} rcvbuf \
             errors, {} user-timed, clock drift {} ns, {} send retries, send lag <= {:?}, \
             receiver wake-up p50 {:.3} ms max {:.3} ms); delay ms: {}",
            self.sent,
            self.received(),
            self.lost(),
            self.duplicates,
            self.reordered_total(),
            self.stray,
            self.rcvbuf_errors,
            self.user_timed,
            self.clock_drift_ns,
            self.send_retries,
            self.max_send_lag,
            self.rx_lag_ms().p50,
            self.rx_lag_ms().max,
            self.spread_ms()
        )?;
        // For diagnosis (times relative to the first send of the probe): the slowest
        // datagrams, and reorderings.
        let t0 = self.samples.iter().map(|s| s.sent_ns).min().unwrap_or(0);
        let mut slow: Vec<&Sample> = self.samples.iter().collect();
        slow.sort_by_key(|s| std::cmp::Reverse(s.delay_ns));
        let slow: Vec<String> = slow
            .iter()
            .take(5)
            .map(|s| {
                format!(
                    "{:.3} ms (sent at {:.1} ms)",
                    s.delay_ns as f64 / 1e6,
                    (s.sent_ns - t0) as f64 / 1e6
                )
            })
            .collect();
        write!(f, "; slowest: {}", slow.join(", "))?;
        for (late, ahead) in &self.reorder_examples {
            let ms = |ns: i64| ns as f64 / 1e6;
            write!(
                f,
                "; flow {} seq {} (sent {:.3} ms, delay {:.3} ms) arrived after seq {} (sent \
                 {:.3} ms, delay {:.3} ms)",
                late.flow,
                late.seq,
                ms(late.sent_ns - t0),
                ms(late.delay_ns),
                ahead.seq,
                ms(ahead.sent_ns - t0),
                ms(ahead.delay_ns)
            )?;
        }
        Ok(())
    }
}

impl UdpProbe {
    /// `count` small datagrams at `rate` per second, one flow; expects delays under a second.
    pub fn new(count: u32, rate: u32) -> Self {
        Self {
            count,
            interval: Duration::from_secs(1) / rate.max(1),
            flows: 1,
            payload: HEADER_LEN,
            max_delay: Duration::from_secs(1),
            quiet: Duration::from_millis(100),
            copies: 1,
        }
    }

    /// Waits for `n` copies of each datagram (see [`UdpProbe::copies`]).
    pub fn copies(mut self, n: u32) -> Self {
        self.copies = n.max(1);
        self
    }

    pub fn flows(mut self, flows: u16) -> Self {
        self.flows = flows;
        self
    }

    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub fn payload(mut self, bytes: usize) -> Self {
        self.payload = bytes;
        self
    }

    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// How long sending takes.
    pub fn nominal(&self) -> Duration {
        self.interval * self.count
    }

    fn check(&self, dst: SocketAddr) -> Result<()> {
        ensure!(
            is_documentation(dst.ip()),
            "{dst} lies outside the documentation ranges"
        );
        ensure!(
            (1..=MAX_COUNT).contains(&self.count),
            "a probe has 1 to {MAX_COUNT} datagrams"
        );
        ensure!(
            (1..=MAX_FLOWS).contains(&self.flows),
            "a probe has 1 to {MAX_FLOWS} flows"
        );
        ensure!(
            (HEADER_LEN..=1472).contains(&self.payload),
            "payload of {HEADER_LEN} to 1472 bytes"
        );
        ensure!(
            self.nominal() <= Duration::from_secs(120) && self.max_delay <= Duration::from_secs(30),
            "a probe sends for at most 120 s and waits for at most 30 s"
        );
        Ok(())
    }

    /// The receiver gives up at this point whatever happens.
    fn hard_stop(&self, start: Instant) -> Instant {
        start + self.nominal() * 2 + self.max_delay + self.quiet + Duration::from_secs(5)
    }

    /// Sends from namespace `from` to `dst`, where a receiver bound in namespace `to` records
    /// every arrival.
    pub fn run(&self, from: &str, to: &str, dst: SocketAddr) -> Result<ProbeReport> {
        self.check(dst)?;
        let run = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
        let sink = bind_timestamped(to, dst)?;
        let errors_before = rcvbuf_errors(to)?;
        let senders = (0..self.flows)
            .map(|_| bind_any(from, dst.is_ipv6()))
            .collect::<Result<Vec<_>>>()?;
        let start = Instant::now();
        let hard_stop = self.hard_stop(start);
        let rx = Collector::start(sink, run, *self, hard_stop);
        let sent = send_schedule(&senders, dst, run, self, hard_stop);
        let collected = rx.finish();
        let (sent, mut report) = (sent?, collected?);
        report.sent = sent.count;
        report.send_retries = sent.retries;
        report.max_send_lag = sent.max_lag;
        report.rcvbuf_errors = rcvbuf_errors(to)?.saturating_sub(errors_before);
        Ok(report)
    }
}

fn any_addr(v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    }
}

fn bind_any(ns: &str, v6: bool) -> Result<UdpSocket> {
    run_in(ns, || UdpSocket::bind((any_addr(v6), 0)))?
        .with_context(|| format!("bind a UDP socket in {ns}"))
}

fn setsockopt_int(sock: &impl AsRawFd, level: i32, name: i32, v: libc::c_int) -> Result<()> {
    // SAFETY: setsockopt on a live socket with a correctly sized int value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "setsockopt({level}, {name}): {}",
        io::Error::last_os_error()
    );
    Ok(())
}

/// Large receive buffer (SO_RCVBUFFORCE goes past rmem_max as root), kernel receive
/// timestamps, and a short read timeout so the loop checks its stop conditions.
fn prepare_receiver(sock: &UdpSocket) -> Result<()> {
    setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF)?;
    setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    sock.set_read_timeout(Some(Duration::from_millis(10)))?;
    Ok(())
}

fn bind_timestamped(ns: &str, addr: SocketAddr) -> Result<UdpSocket> {
    let sock = run_in(ns, || UdpSocket::bind(addr))?
        .with_context(|| format!("bind a UDP receiver on {addr} in {ns}"))?;
    prepare_receiver(&sock)?;
    Ok(sock)
}

/// UDP receive-buffer errors of a namespace, both families (/proc/thread-self: /proc/self/net
/// shows the main thread's namespace).
fn rcvbuf_errors(ns: &str) -> Result<u64> {
    run_in(ns, || -> Result<u64> {
        let v4 = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let v6 = std::fs::read_to_string("/proc/thread-self/net/snmp6")?;
        let mut udp = v4.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
            bail!("no Udp lines in snmp");
        };
        let i = names
            .split_whitespace()
            .position(|n| n == "RcvbufErrors")
            .context("no Udp RcvbufErrors")?;
        let v4: u64 = values
            .split_whitespace()
            .nth(i)
            .context("snmp value")?
            .parse()?;
        let v6: u64 = v6
            .lines()
            .find(|l| l.split_whitespace().next() == Some("Udp6RcvbufErrors"))
            .and_then(|l| l.split_whitespace().nth(1))
            .context("no Udp6RcvbufErrors")?
            .parse()?;
        Ok(v4 + v6)
    })?
}

fn encode(buf: &mut [u8], run: u32, flow: u16, seq: u32, sent_ns: i64) {
    buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&run.to_be_bytes());
    buf[8..10].copy_from_slice(&flow.to_be_bytes());
    buf[10..12].fill(0);
    buf[12..16].copy_from_slice(&seq.to_be_bytes());
    buf[16..24].copy_from_slice(&sent_ns.to_be_bytes());
}

/// (flow, seq, sent_ns) if this is a datagram of `run`.
fn decode(d: &[u8], run: u32) -> Option<(u16, u32, i64)> {
    if d.len() < HEADER_LEN || d[0..4] != MAGIC.to_be_bytes() || d[4..8] != run.to_be_bytes() {
        return None;
    }
    Some((
        u16::from_be_bytes(d[8..10].try_into().ok()?),
        u32::from_be_bytes(d[12..16].try_into().ok()?),
        i64::from_be_bytes(d[16..24].try_into().ok()?),
    ))
}

struct SendOutcome {
    count: u32,
    retries: u64,
    max_lag: Duration,
}

/// Sends on an absolute schedule (datagram i at start + i * interval): a late wake-up shortens
/// the next gap instead of shifting every later datagram.
fn send_schedule(
    socks: &[UdpSocket],
    dst: SocketAddr,
    run: u32,
    p: &UdpProbe,
    hard_stop: Instant,
) -> Result<SendOutcome> {
    let mut buf = vec![0u8; p.payload];
    let flows = u32::from(p.flows);
    let mut out = SendOutcome {
        count: 0,
        retries: 0,
        max_lag: Duration::ZERO,
    };
    let start = Instant::now();
    for i in 0..p.count {
        let due = start + p.interval * i;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else {
            out.max_lag = out.max_lag.max(now - due);
        }
        ensure!(Instant::now() < hard_stop, "sender overran its time limit");
        let flow = (i % flows) as u16;
        encode(&mut buf, run, flow, i / flows, mono_ns());
        loop {
            match socks[usize::from(flow)].send_to(&buf, dst) {
                Ok(_) => break,
                // The local queue is full: that is the sender's backpressure, not loss.
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN))
                        && Instant::now() < hard_stop =>
                {
                    out.retries += 1;
                    thread::sleep(Duration::from_micros(200));
                    // Re-stamp: the datagram leaves now.
                    encode(&mut buf, run, flow, i / flows, mono_ns());
                }
                Err(e) => return Err(e).with_context(|| format!("send to {dst}")),
            }
        }
        out.count += 1;
    }
    Ok(out)
}

/// One received datagram: its length, and the kernel's receive timestamp (CLOCK_REALTIME ns).
fn recv_timestamped(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, Option<i64>)> {
    // Room for one cmsg carrying a timespec, u64-aligned.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg into buffers described by msg, all live and writable.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

/// Receives on its own thread while the sender runs, so its buffer never fills.
struct Collector {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Result<ProbeReport>>,
}

impl Collector {
    fn start(sock: UdpSocket, run: u32, p: UdpProbe, hard_stop: Instant) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = thread::spawn(move || collect(&sock, run, &p, &flag, hard_stop));
        Self { done, thread }
    }

    /// Tells the receiver the sender is done: it stops once everything arrived, or `max_delay +
    /// quiet` later.
    fn finish(self) -> Result<ProbeReport> {
        self.done.store(true, Ordering::Release);
        self.thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

fn collect(
    sock: &UdpSocket,
    run: u32,
    p: &UdpProbe,
    done: &AtomicBool,
    hard_stop: Instant,
) -> Result<ProbeReport> {
    let offset = realtime_offset_ns();
    let flows = usize::from(p.flows);
    let per_flow = p.count.div_ceil(u32::from(p.flows)) as usize;
    let mut seen = vec![false; p.count as usize];
    // Per flow: the sample with the highest sequence number so far.
    let mut top: Vec<Option<Sample>> = vec![None; flows];
    let mut r = ProbeReport {
        sent: 0,
        flows: p.flows,
        samples: Vec::with_capacity(p.count as usize),
        duplicates: 0,
        duplicate_samples: Vec::new(),
        reordered: vec![0; flows],
        reorder_examples: Vec::new(),
        stray: 0,
        rcvbuf_errors: 0,
        user_timed: 0,
        clock_drift_ns: 0,
        send_retries: 0,
        max_send_lag: Duration::ZERO,
    };
    let mut buf = vec![0u8; 2048];
    let mut done_at = None;
    let all = p.count as usize * p.copies as usize;
    while r.samples.len() + r.duplicate_samples.len() < all {
        let now = Instant::now();
        if now >= hard_stop {
            break;
        }
        if done.load(Ordering::Acquire)
            && now.duration_since(*done_at.get_or_insert(now)) >= p.max_delay + p.quiet
        {
            break;
        }
        let (n, stamp) = match recv_timestamped(sock, &mut buf) {
            Ok(v) => v,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("receive a probe datagram"),
        };
        let user_ns = mono_ns();
        let Some((flow, seq, sent_ns)) = decode(&buf[..n], run) else {
            r.stray += 1;
            continue;
        };
        let index = seq as usize * flows + usize::from(flow);
        if usize::from(flow) >= flows || seq as usize >= per_flow || index >= seen.len() {
            r.stray += 1;
            continue;
        }
        // The kernel's stamp if it is plausible (a few µs of slack for the offset's error).
        const SLACK_NS: i64 = 50_000;
        let kernel = stamp
            .map(|s| s - offset)
            .filter(|&k| k >= sent_ns - SLACK_NS && k <= user_ns + SLACK_NS);
        let recv_ns = kernel.unwrap_or(user_ns);
        let sample = Sample {
            flow,
            seq,
            sent_ns,
            delay_ns: recv_ns - sent_ns,
            user_timed: kernel.is_none(),
            rx_lag_ns: user_ns - recv_ns,
        };
        if std::mem::replace(&mut seen[index], true) {
            r.duplicates += 1;
            if r.duplicate_samples.len() < p.count as usize {
                r.duplicate_samples.push(sample);
            }
            continue;
        }
        r.user_timed += u64::from(kernel.is_none());
        let t = &mut top[usize::from(flow)];
        match *t {
            Some(ahead) if seq < ahead.seq => {
                r.reordered[usize::from(flow)] += 1;
                if r.reorder_examples.len() < MAX_REORDER_EXAMPLES {
                    r.reorder_examples.push((sample, ahead));
                }
            }
            _ => *t = Some(sample),
        }
        r.samples.push(sample);
    }
    r.clock_drift_ns = realtime_offset_ns() - offset;
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// RTT probe (UDP echo)
// ---------------------------------------------------------------------------------------------

/// Reflects every datagram back to its source, from a namespace, until dropped (or a minute).
pub struct UdpEcho {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const ECHO_LIFETIME: Duration = Duration::from_secs(60);

impl UdpEcho {
    pub fn start(ns: &str, addr: SocketAddr) -> Result<Self> {
        ensure!(
            is_documentation(addr.ip()),
            "{addr} lies outside the documentation ranges"
        );
        let sock = run_in(ns, || UdpSocket::bind(addr))?
            .with_context(|| format!("bind a UDP echo on {addr} in {ns}"))?;
        setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF)?;
        sock.set_read_timeout(Some(Duration::from_millis(10)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let end = Instant::now() + ECHO_LIFETIME;
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Acquire) && Instant::now() < end {
                if let Ok((n, from)) = sock.recv_from(&mut buf)
                    && is_documentation(from.ip())
                {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Round-trip times through a [`UdpEcho`] at `echo` (started by the caller in the other
/// namespace): the probe's datagrams go from namespace `from` and come back to the same socket,
/// so the "delay" of each sample is its RTT, on one clock. One flow.
pub fn rtt(from: &str, echo: SocketAddr, p: &UdpProbe) -> Result<ProbeReport> {
    let p = UdpProbe { flows: 1, ..*p };
    p.check(echo)?;
    let run = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
    let sock = bind_any(from, echo.is_ipv6())?;
    let rx = sock.try_clone()?;
    prepare_receiver(&rx)?;
    let errors_before = rcvbuf_errors(from)?;
    let start = Instant::now();
    let hard_stop = p.hard_stop(start);
    let collector = Collector::start(rx, run, p, hard_stop);
    let sent = send_schedule(std::slice::from_ref(&sock), echo, run, &p, hard_stop);
    let collected = collector.finish();
    let (sent, mut report) = (sent?, collected?);
    report.sent = sent.count;
    report.send_retries = sent.retries;
    report.max_send_lag = sent.max_lag;
    report.rcvbuf_errors = rcvbuf_errors(from)?.saturating_sub(errors_before);
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// TCP goodput
// ---------------------------------------------------------------------------------------------

/// Application bytes delivered by one TCP connection, as the receiver counted them.
#[derive(Debug, Clone, Copy)]
pub struct Goodput {
    /// Bytes the receiver read in the measured window.
    pub bytes: u64,
    /// The measured window: from `warmup` after the first byte to the last read before the
    /// sender's time was up.
    pub window: Duration,
    /// bytes * 8 / window.
    pub bits_per_sec: f64,
    /// Every byte read, the warm-up included.
    pub total_bytes: u64,
}

impl std::fmt::Display for Goodput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} Mbit/s ({} bytes in {:.3} s; {} bytes in all)",
            self.bits_per_sec / 1e6,
            self.bytes,
            self.window.as_secs_f64(),
            self.total_bytes
        )
    }
}

/// The sender's socket buffer: small, so the connection's queue (and what is still in flight
/// when the time is up) stays short at low rates.
const TCP_SNDBUF: libc::c_int = 256 << 10;

/// Sends as fast as TCP allows from namespace `from` to a sink listening on `dst` in namespace
/// `to`, for `duration`, and reports the sink's goodput (payload bytes, not headers) over the
/// window from `warmup` after the first byte to the end of the sender's time.
pub fn tcp_goodput(
    from: &str,
    to: &str,
    dst: SocketAddr,
    duration: Duration,
    warmup: Duration,
) -> Result<Goodput> {
    ensure!(
        is_documentation(dst.ip()),
        "{dst} lies outside the documentation ranges"
    );
    ensure!(
        warmup < duration && duration <= Duration::from_secs(60),
        "a goodput run lasts at most 60 s, longer than its warm-up"
    );
    let listener = run_in(to, || TcpListener::bind(dst))?
        .with_context(|| format!("listen on {dst} in {to}"))?;
    let hard_stop = Instant::now() + duration + Duration::from_secs(10);
    let sink = thread::spawn(move || sink(&listener, duration, hard_stop));
    let sent = tcp_send(from, dst, duration, hard_stop);
    let reads = sink.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
    sent?;
    let reads = reads?;
    let Some(&(first, _)) = reads.first() else {
        bail!("the sink received nothing");
    };
    let total_bytes = reads.last().map_or(0, |r| r.1);
    // Cumulative bytes at the last read at or before t.
    let at = |t: Instant| -> (Instant, u64) {
        reads
            .iter()
            .take_while(|r| r.0 <= t)
            .last()
            .copied()
            .unwrap_or((first, 0))
    };
    let (t0, b0) = at(first + warmup);
    let (t1, b1) = at(first + duration);
    ensure!(
        t1 > t0,
        "no reads after the warm-up: the transfer stalled ({total_bytes} bytes in all)"
    );
    let window = t1 - t0;
    let bytes = b1 - b0;
    Ok(Goodput {
        bytes,
        window,
        bits_per_sec: bytes as f64 * 8.0 / window.as_secs_f64(),
        total_bytes,
    })
}

/// Accepts one connection and reads until EOF, `duration` after the first byte, or the hard
/// stop; returns (time, cumulative bytes) after each read.
fn sink(
    listener: &TcpListener,
    duration: Duration,
    hard_stop: Instant,
) -> Result<Vec<(Instant, u64)>> {
    use std::io::Read as _;
    listener.set_nonblocking(true)?;
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ensure!(Instant::now() < hard_stop, "no connection to the sink");
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut reads = Vec::new();
    let mut total = 0u64;
    let mut end = hard_stop;
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let now = Instant::now();
                if reads.is_empty() {
                    end = end.min(now + duration + Duration::from_millis(100));
                }
                total += n as u64;
                reads.push((now, total));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read on the sink"),
        }
    }
    Ok(reads)
}

fn tcp_send(from: &str, dst: SocketAddr, duration: Duration, hard_stop: Instant) -> Result<()> {
    use std::io::Write as _;
    let mut s = run_in(from, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(3))
    })?
    .with_context(|| format!("connect to {dst} from {from}"))?;
    setsockopt_int(&s, libc::SOL_SOCKET, libc::SO_SNDBUF, TCP_SNDBUF)?;
    s.set_write_timeout(Some(Duration::from_millis(200)))?;
    let chunk = vec![0x5au8; 64 << 10];
    let end = (Instant::now() + duration).min(hard_stop);
    while Instant::now() < end {
        match s.write(&chunk) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            // The sink closed at its end of the window: what was in flight no longer counts.
            Err(_) if Instant::now() + Duration::from_millis(200) >= end => break,
            Err(e) => return Err(e).context("write to the sink"),
        }
    }
    Ok(())
}

/// netfault's arguments for 50 ms ± 20 ms normal jitter, the configuration the shaping tests and
/// `netfault-bench delay` measure, order kept.
pub const NORMAL_JITTER_ARGS: &[&str] = NORMAL_JITTER_REORDER_ARGS.split_at(6).0;
/// The same with `--reorder`: datagrams may overtake each other.
pub const NORMAL_JITTER_REORDER_ARGS: &[&str] = &[
    "--delay",
    "50ms",
    "--jitter",
    "20ms",
    "--distribution",
    "normal",
    "--reorder",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v: Vec<f64> = (1..=5).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 1.0), 5.0);
        assert_eq!(percentile(&v, 0.25), 2.0);
        assert!((percentile(&v, 0.1) - 1.4).abs() < 1e-12);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
        let s = Spread::of(&[1.0, 2.0, 3.0]);
        assert_eq!((s.n, s.min, s.p50, s.max), (3, 1.0, 2.0, 3.0));
    }

    #[test]
    fn datagrams_round_trip() {
        let mut b = [0u8; HEADER_LEN + 8];
        encode(&mut b, 7, 3, 99, -5);
        assert_eq!(decode(&b, 7), Some((3, 99, -5)));
        assert_eq!(decode(&b, 8), None);
        assert_eq!(decode(&b[..HEADER_LEN - 1], 7), None);
    }

    #[test]
    fn realtime_offset_is_stable() {
        let (a, b) = (realtime_offset_ns(), realtime_offset_ns());
        assert!((a - b).abs() < 1_000_000, "{a} {b}");
    }
}
