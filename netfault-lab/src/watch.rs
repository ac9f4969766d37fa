//! A reachability watch over lab hosts that runs while a cut or a heal is made: every host
//! sends one small UDP datagram to every other host, in each family watched, every `period`,
//! and each receiver keeps, per sender and family, the send time of the latest datagram it got
//! and of the first one after a gap. The times are the sender's (CLOCK_MONOTONIC, written on the
//! datagram), so when a cut landed on a pair (nothing sent after it arrives) and when a heal did
//! (the first datagram that arrives again) are known to within one period, whenever the caller
//! looks: no polling race, no probe started after the fact.
//!
//! Bounded: at most [`MAX_HOSTS`] hosts, a period of at least 1 ms, documentation addresses
//! only; the threads stop when the watch drops (also while a panic unwinds).
use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};

use crate::{
    cluster::node_name,
    lab::{Host, is_documentation},
    probe::mono_ns,
};

/// Marks the watch's datagrams: anything else arriving on its port is ignored.
const MAGIC: u32 = 0x4e46_5754; // "NFWT"
const LEN: usize = 16;
/// More hosts than any lab here builds; each sends to every other every period.
pub const MAX_HOSTS: usize = 64;
/// A pair is cut once nothing it sent for this many periods arrived (the bridge delivers in
/// microseconds, so only a cut, or a stalled sender, explains such a gap).
const QUIET_PERIODS: i64 = 5;
/// Never shorter than this, whatever the period: a loaded machine can stall a sender this
/// long.
const MIN_QUIET: Duration = Duration::from_millis(40);

/// What one receiver knows of one sender in one family.
struct Cell {
    /// Send time of the latest datagram received (i64::MIN: none yet).
    last: AtomicI64,
    /// Send time of the first datagram received after a gap of [`QUIET_PERIODS`] (or the very
    /// first).
    resumed: AtomicI64,
    count: AtomicU64,
}

/// A running watch; see the module's comment.
pub struct Watch {
    names: Vec<String>,
    fams: Vec<bool>,
    period: Duration,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    cells: Arc<Vec<Cell>>,
}

/// When a change landed on each pair it concerns, in ns from the change's start (`t0`).
#[derive(Debug, Clone)]
pub struct Landed {
    /// ((from, to), ns): the latest over the families watched.
    pub pairs: Vec<((usize, usize), i64)>,
}

impl Landed {
    /// The last pair's time: when the change was on the wire everywhere.
    pub fn all(&self) -> i64 {
        self.pairs.iter().map(|p| p.1).max().unwrap_or(0)
    }

    /// The first pair's time.
    pub fn first(&self) -> i64 {
        self.pairs.iter().map(|p| p.1).min().unwrap_or(0)
    }

    /// Last minus first: how far apart the nodes took it, on the wire.
    pub fn spread(&self) -> i64 {
        self.all() - self.first()
    }
}

impl Watch {
    /// Starts one thread per host, in its namespace, sending every `period` to every other
    /// host on `port` in each family of `fams` (`false`: IPv4).
    pub fn start(hosts: &[Host], fams: &[bool], port: u16, period: Duration) -> Result<Self> {
        ensure!(
            (2..=MAX_HOSTS).contains(&hosts.len()),
            "a watch has 2 to {MAX_HOSTS} hosts"
        );
        ensure!(!fams.is_empty(), "a watch needs a family");
        ensure!(
            period >= Duration::from_millis(1),
            "a watch's period is at least 1 ms"
        );
        for h in hosts {
            for &v6 in fams {
                ensure!(
                    is_documentation(h.ip(v6)),
                    "{} is not a documentation address",
                    h.ip(v6)
                );
            }
        }
        let n = hosts.len();
        let cells: Arc<Vec<Cell>> = Arc::new(
            (0..n * n * fams.len())
                .map(|_| Cell {
                    last: AtomicI64::new(i64::MIN),
                    resumed: AtomicI64::new(i64::MIN),
                    count: AtomicU64::new(0),
                })
                .collect(),
        );
        let mut w = Self {
            names: (0..n).map(node_name).collect(),
            fams: fams.to_vec(),
            period,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            cells,
        };
        for me in 0..n {
            let (hosts, fams, stop, cells) = (
                hosts.to_vec(),
                fams.to_vec(),
                Arc::clone(&w.stop),
                Arc::clone(&w.cells),
            );
            // Dropping `w` on an error here stops the threads already started.
            let t = thread::Builder::new()
                .name(format!("watch-{me}"))
                .spawn(move || host_loop(me, &hosts, &fams, port, period, &stop, &cells))
                .context("start a watch thread")?;
            w.threads.push(t);
        }
        Ok(w)
    }

    fn cell(&self, from: usize, to: usize, f: usize) -> &Cell {
        let n = self.names.len();
        &self.cells[(from * n + to) * self.fams.len() + f]
    }

    fn quiet_ns(&self) -> i64 {
        (self.period.as_nanos() as i64 * QUIET_PERIODS).max(MIN_QUIET.as_nanos() as i64)
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Every ordered pair of distinct hosts.
    fn pairs(&self) -> Vec<(usize, usize)> {
        let n = self.names.len();
        (0..n)
            .flat_map(|j| (0..n).map(move |x| (j, x)))
            .filter(|(j, x)| j != x)
            .collect()
    }

    /// Whether a pair received something sent within the quiet window before `now`, in every
    /// family (`flowing`), or nothing in any family (`cut`); `None` when the families disagree.
    fn state(&self, (j, x): (usize, usize), now: i64) -> Option<bool> {
        let q = self.quiet_ns();
        let fresh: Vec<bool> = (0..self.fams.len())
            .map(|f| {
                let l = self.cell(j, x, f).last.load(Ordering::Acquire);
                l != i64::MIN && now - l <= q
            })
            .collect();
        if fresh.iter().all(|b| *b) {
            Some(true)
        } else if fresh.iter().all(|b| !*b) {
            Some(false)
        } else {
            None
        }
    }

    fn a_thread_ended(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) || self.threads.iter().any(JoinHandle::is_finished) {
            return Err(anyhow!("a watch thread stopped (see its error at drop)"));
        }
        Ok(())
    }

    /// Waits (at most `limit`) until every pair receives in every family: the lab is whole.
    pub fn wait_flowing(&self, limit: Duration) -> Result<()> {
        let end = Instant::now() + limit;
        loop {
            self.a_thread_ended()?;
            let now = mono_ns();
            let bad: Vec<String> = self
                .pairs()
                .into_iter()
                .filter(|p| self.state(*p, now) != Some(true))
                .map(|p| self.pair_name(p))
                .collect();
            if bad.is_empty() {
                return Ok(());
            }
            ensure!(
                Instant::now() < end,
                "not flowing after {limit:?}: {}",
                bad.join(" ")
            );
            thread::sleep(self.period.min(Duration::from_millis(10)));
        }
    }

    fn pair_name(&self, (j, x): (usize, usize)) -> String {
        format!("{}->{}", self.names[j], self.names[x])
    }

    /// After a cut started at `t0` (a [`mono_ns`] reading): waits (at most `limit`) until every
    /// pair of `cut` has received nothing for the quiet window in any family, and every other
    /// pair still receives, and `done()` holds (the command returned). Each cut pair's time is
    /// one period after the send time of the last datagram it got (the first lost one was sent
    /// no later), from `t0`.
    pub fn wait_cut(
        &self,
        t0: i64,
        cut: &[(usize, usize)],
        limit: Duration,
        mut done: impl FnMut() -> Result<bool>,
    ) -> Result<Landed> {
        self.wait(limit, &mut done, |now| {
            self.settled(now, cut, false)?;
            let per = self.period.as_nanos() as i64;
            Some(Landed {
                pairs: cut
                    .iter()
                    .map(|&(j, x)| {
                        let last = (0..self.fams.len())
                            .map(|f| self.cell(j, x, f).last.load(Ordering::Acquire))
                            .max()
                            .unwrap_or(i64::MIN);
                        ((j, x), (last.saturating_add(per) - t0).max(0))
                    })
                    .collect(),
            })
        })
        .context("the cut")
    }

    /// After a heal started at `t0`: waits (at most `limit`) until every pair receives again,
    /// in every family, and `done()` holds. Each pair of `healed`'s time is the send time of
    /// the first datagram it got after the gap, from `t0` (the heal landed before it was sent,
    /// within one period).
    pub fn wait_healed(
        &self,
        t0: i64,
        healed: &[(usize, usize)],
        limit: Duration,
        mut done: impl FnMut() -> Result<bool>,
    ) -> Result<Landed> {
        self.wait(limit, &mut done, |now| {
            self.settled(now, &[], true)?;
            let mut pairs = Vec::new();
            for &(j, x) in healed {
                let mut t = i64::MIN;
                for f in 0..self.fams.len() {
                    let r = self.cell(j, x, f).resumed.load(Ordering::Acquire);
                    // Received through, but resumed before the heal: it was never cut.
                    if r < t0 {
                        return None;
                    }
                    t = t.max(r);
                }
                pairs.push(((j, x), t - t0));
            }
            Some(Landed { pairs })
        })
        .context("the heal")
    }

    /// Every pair in the state asked: those of `cut` cut, every other pair flowing (`all_flow`:
    /// every pair flowing).
    fn settled(&self, now: i64, cut: &[(usize, usize)], all_flow: bool) -> Option<()> {
        self.pairs()
            .into_iter()
            .all(|p| {
                let want = all_flow || !cut.contains(&p);
                self.state(p, now) == Some(want)
            })
            .then_some(())
    }

    fn wait<T>(
        &self,
        limit: Duration,
        done: &mut dyn FnMut() -> Result<bool>,
        mut ready: impl FnMut(i64) -> Option<T>,
    ) -> Result<T> {
        let end = Instant::now() + limit;
        let mut returned = false;
        loop {
            self.a_thread_ended()?;
            returned = returned || done()?;
            if returned && let Some(t) = ready(mono_ns()) {
                return Ok(t);
            }
            if Instant::now() >= end {
                let now = mono_ns();
                let states: Vec<String> = self
                    .pairs()
                    .into_iter()
                    .map(|p| {
                        let s = match self.state(p, now) {
                            Some(true) => "flowing",
                            Some(false) => "cut",
                            None => "families disagree",
                        };
                        format!("{} {s}", self.pair_name(p))
                    })
                    .collect();
                return Err(anyhow!(
                    "not settled after {limit:?} (command returned: {returned}): {}",
                    states.join(", ")
                ));
            }
            thread::sleep(self.period.min(Duration::from_millis(5)));
        }
    }

    /// Datagrams received so far, every pair and family together.
    pub fn received(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c.count.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops the threads; the first error one of them met.
    pub fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(anyhow!("a watch thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            eprintln!("watch: {e:#}");
        }
    }
}

/// One host: sends to every other host every `period` and records what arrives, until `stop`.
fn host_loop(
    me: usize,
    hosts: &[Host],
    fams: &[bool],
    port: u16,
    period: Duration,
    stop: &AtomicBool,
    cells: &[Cell],
) -> Result<()> {
    let h = &hosts[me];
    netfault::control::netns::enter(&h.ns).with_context(|| format!("enter {}", h.ns))?;
    let socks: Vec<UdpSocket> = fams
        .iter()
        .map(|&v6| {
            let s = UdpSocket::bind(h.sock(v6, port))
                .with_context(|| format!("bind {} in {}", h.sock(v6, port), h.ns))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let n = hosts.len();
    let per = period.as_nanos() as i64;
    let gap = per * QUIET_PERIODS;
    let mut next = mono_ns();
    let mut buf = [0u8; 64];
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let now = mono_ns();
        if now >= next {
            let mut d = [0u8; LEN];
            d[..4].copy_from_slice(&MAGIC.to_be_bytes());
            d[4..6].copy_from_slice(&(me as u16).to_be_bytes());
            d[8..16].copy_from_slice(&now.to_be_bytes());
            for (f, (&v6, s)) in fams.iter().zip(&socks).enumerate() {
                d[6] = f as u8;
                for (x, to) in hosts.iter().enumerate().filter(|(x, _)| *x != me) {
                    debug_assert!(x < n);
                    // A full queue or an unresolved neighbour loses this one: the next period
                    // sends again, and the receiver sees a gap only if it lasts.
                    let _ = s.send_to(&d, to.sock(v6, port));
                }
            }
            // Late (a stalled thread): start again from now rather than send a burst.
            next = if now - next > per {
                now + per
            } else {
                next + per
            };
        }
        let wait_ms = ((next - mono_ns()) / 1_000_000).clamp(0, 1000) as libc::c_int;
        // SAFETY: fds points at `fds.len()` valid pollfd structs for the call's duration.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms.max(1)) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).context("poll");
            }
            continue;
        }
        for (s, &v6) in socks.iter().zip(fams) {
            loop {
                let (len, src) = match s.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("recv"),
                };
                let Some((from, f, sent)) = parse(&buf[..len], src, hosts, fams, v6) else {
                    continue;
                };
                let c = &cells[(from * n + me) * fams.len() + f];
                let last = c.last.load(Ordering::Relaxed);
                if last == i64::MIN || sent - last > gap {
                    c.resumed.store(sent, Ordering::Release);
                }
                if sent > last {
                    c.last.store(sent, Ordering::Release);
                }
                c.count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// (sender index, family index, send time) of one of ours, checked against its source address.
fn parse(
    d: &[u8],
    src: SocketAddr,
    hosts: &[Host],
    fams: &[bool],
    v6: bool,
) -> Option<(usize, usize, i64)> {
    if d.len() != LEN || d[..4] != MAGIC.to_be_bytes() {
        return None;
    }
    let from = usize::from(u16::from_be_bytes([d[4], d[5]]));
    let f = usize::from(d[6]);
    let sent = i64::from_be_bytes(d[8..16].try_into().ok()?);
    (hosts.get(from)?.ip(v6) == src.ip() && fams.get(f) == Some(&v6)).then_some((from, f, sent))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn hosts() -> Vec<Host> {
        (1..=2)
            .map(|i| Host {
                ns: format!("x{i}"),
                iface: "eth0".into(),
                v4: Ipv4Addr::new(192, 0, 2, i),
                v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)),
            })
            .collect()
    }

    fn datagram(from: u16, f: u8, sent: i64) -> [u8; LEN] {
        let mut d = [0u8; LEN];
        d[..4].copy_from_slice(&MAGIC.to_be_bytes());
        d[4..6].copy_from_slice(&from.to_be_bytes());
        d[6] = f;
        d[8..16].copy_from_slice(&sent.to_be_bytes());
        d
    }

    #[test]
    fn a_datagram_counts_only_from_the_host_and_family_it_names() {
        let h = hosts();
        let fams = [false, true];
        let src = |i: usize, v6: bool| h[i].sock(v6, 4600);
        let d = datagram(1, 0, 42);
        assert_eq!(parse(&d, src(1, false), &h, &fams, false), Some((1, 0, 42)));
        // Another host's address, another family's socket, a host that is none, a stray.
        assert_eq!(parse(&d, src(0, false), &h, &fams, false), None);
        assert_eq!(parse(&d, src(1, true), &h, &fams, true), None);
        assert_eq!(
            parse(&datagram(7, 0, 42), src(1, false), &h, &fams, false),
            None
        );
        assert_eq!(parse(&d[..15], src(1, false), &h, &fams, false), None);
        let v6 = datagram(1, 1, 43);
        assert_eq!(parse(&v6, src(1, true), &h, &fams, true), Some((1, 1, 43)));
    }

    #[test]
    fn landed_reports_the_last_pair_and_the_spread() {
        let l = Landed {
            pairs: vec![((0, 1), 30), ((1, 0), 12), ((0, 2), 25)],
        };
        assert_eq!((l.all(), l.first(), l.spread()), (30, 12, 18));
    }
}
