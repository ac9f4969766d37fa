//! Part 2: how many packets per second a receiver can drop, netfault's drop-all rule against an
//! nftables netdev-ingress drop rule and a trivial XDP drop, on the receiving end of a veth.
//!
//! The generator is BPF_PROG_RUN in live-frames mode running `bench_tx` on the sending veth:
//! the kernel builds each frame from our template and XDP_TX turns into a redirect out of that
//! veth, which puts the frame straight onto the receiving veth's ring (256 frames). Into a
//! trivial XDP drop that moves about 20 Mpps on one CPU, four times what nft can drop, so the
//! receiver's cost decides the rate, not the generator's.
//!
//! Where the receiving veth's NAPI poll runs decides what is measured, so both ways are run:
//! - softirq (the headline): the poll runs on the generator's CPU after each batch of 64. Every
//!   frame is received and dropped, nothing queues up, and the rate is 1 / (generator's ns +
//!   receiver's ns): the generator's share is the same for all receivers, so differences in
//!   ns/packet are differences between the hooks.
//! - threaded: the poll is a kernel thread on the other CPU and the generator overruns it. On
//!   this kernel that rate is dominated by the page pool: the receiver frees every frame into
//!   the generator's page pool from the other CPU, and the generator frees there too what the
//!   full ring refused, so both spin on the pool ring's lock. Shown, not used for the ratio.
//!
//! The figure is the receiving veth's rx packet count (every frame its NAPI poll took off the
//! ring, all of them dropped by the hook under test) over the generator's wall-clock run time.
//!
//! Where the kernel refuses live frames (EPERM: BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES,
//! probed once at the start), an AF_PACKET socket sender takes the generator's place
//! (sockgen.rs). In the two-CPU way (B, its headline) the sender is on one CPU, the receiving
//! veth's threaded NAPI poll on the other. The rate is then the slower side's, which may be the
//! sender; the figure that compares the hooks is the receiver's CPU time per frame: the NAPI
//! thread's run time (/proc/PID/schedstat) over the frames it received. The one-CPU way (A)
//! runs too: each send ends by running the receive softirq for that frame on the same CPU, so
//! ns/pkt minus the trivial drop's is what a hook costs beyond it.
//!
//! netfault is deployed as a user would: the `netfault` binary's `attach` and `rule add
//! drop-all --dir ingress --drop 100% --all-traffic`, so the loopback protections (and the SSH
//! one, when the bench runs over SSH), the default TTL and the hook the CLI picks for a veth
//! with an ingress drop rule (XDP) are all in the measurement.
use std::{
    ffi::CString,
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, XdpMode, xdp::XdpLinkId},
};
use netfault_lab::lab::Netfault;

use crate::{
    Plan, frame,
    progrun::{self, DST, MATCH_SRC},
    sockgen, sys,
    topo::{self, Topology},
};

/// Frames per BPF_PROG_RUN batch (the kernel's default, NAPI's budget): each batch ends with a
/// flush that hands the frames to the receiving veth.
const BATCH: u32 = 64;
/// Sizing run: enough frames to estimate how fast a receiver's rounds go.
const SIZING_FRAMES: u32 = 1_000_000;
/// Per-round frame bounds, whatever the calibration says.
const MIN_FRAMES: u32 = 100_000;
const MAX_FRAMES: u32 = 30_000_000;
/// Time for NAPI to come up after an attach and for the ring to drain after a run.
const SETTLE: Duration = Duration::from_millis(50);
const GEN_CPU: usize = 0;
const RX_CPU: usize = 1;
/// Socket sender: the most frames one round may send, whatever the time says.
const SOCKET_MAX_FRAMES: u64 = 100_000_000;

/// What sends the frames.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Generator {
    /// BPF_PROG_RUN live frames, `bench_tx` on the sending veth.
    LiveFrames,
    /// An AF_PACKET socket on the sending veth (sockgen.rs): where live frames are refused.
    Socket,
}

impl Generator {
    pub fn describe(self) -> &'static str {
        match self {
            Generator::LiveFrames => {
                "BPF_PROG_RUN live frames, bench_tx (XDP_TX) on the sending veth"
            }
            Generator::Socket => {
                "AF_PACKET socket on the sending veth, sendmmsg of one prebuilt frame, \
                 PACKET_QDISC_BYPASS (BPF_PROG_RUN live frames refused here: EPERM)"
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Receiver {
    Netfault,
    Nft,
    XdpDrop,
}

impl Receiver {
    pub const ALL: [Receiver; 3] = [Receiver::Netfault, Receiver::Nft, Receiver::XdpDrop];

    pub fn label(self) -> &'static str {
        match self {
            Receiver::Netfault => "netfault drop-all",
            Receiver::Nft => "nft netdev ingress drop",
            Receiver::XdpDrop => "trivial XDP drop",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RxMode {
    /// Receive in softirq on the generator's CPU: generation and drop in lockstep. The headline.
    Softirq,
    /// Receive in a NAPI thread on the other CPU: the generator overruns it.
    Threaded,
}

impl RxMode {
    pub fn short(self) -> &'static str {
        match self {
            RxMode::Softirq => "A (one CPU, lockstep)",
            RxMode::Threaded => "B (two CPUs, overrun)",
        }
    }

    /// The mode as the socket sender runs it.
    pub fn describe_socket(self) -> &'static str {
        match self {
            RxMode::Softirq => {
                "A. one CPU: each frame received (NAPI, softirq) as its send returns, on the \
                 sender's CPU; ns/pkt is the sender's and the receiver's together, the same \
                 sender for all: \"vs trivial\" is what a hook costs beyond the trivial drop"
            }
            RxMode::Threaded => {
                "B. two CPUs: the socket sender on CPU 0, the receiving veth's threaded NAPI poll \
                 on CPU 1 (both SCHED_FIFO); rx ns/pkt = that thread's CPU time / frames received"
            }
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            RxMode::Softirq => {
                "A. one CPU: receive (NAPI) in softirq right after each generator batch; every frame \
                 received and dropped"
            }
            RxMode::Threaded => {
                "B. two CPUs: receive in a threaded NAPI poll on the other CPU, generator overruns the \
                 ring; bound by page-pool lock contention between the CPUs, not only by the hook"
            }
        }
    }
}

/// What one receiver got over all rounds of one mode.
pub struct Summary {
    pub receiver: Receiver,
    /// Frames per round: about `round_secs` worth for this receiver.
    pub frames: u32,
    /// How the hook ran, e.g. "XDP native (nf_xdp_ingress)".
    pub hook: String,
    pub rx_mpps: Vec<f64>,
    /// None for a round the watchdog cut short (the kernel reports no count then).
    pub offered_mpps: Vec<Option<f64>>,
    /// Netfault only: its rule's dropped counter and the veth's rx count over all rounds.
    pub counter_check: Option<(u64, u64)>,
    /// Frames sent by completed runs and received during them.
    pub sent: u64,
    pub received: u64,
    /// Socket sender only: the receiving NAPI thread's CPU ns per frame received, per round.
    pub rx_cpu_ns: Vec<f64>,
    /// Socket sender only: that thread's CPU time over the sender's wall time, per round.
    pub busy: Vec<f64>,
    /// Socket sender only: sendmmsg calls cut short because the veth's ring was full.
    pub refusals: u64,
}

pub struct Outcome {
    pub generator: Generator,
    pub mode: RxMode,
    pub summaries: Vec<Summary>,
    /// Frames that got past the hook under test to the receiver's IP layer (should be none).
    pub leaked: u64,
    pub notes: Vec<String>,
}

/// What is attached to the receiving veth right now, to be undone.
enum Attached {
    /// Through the CLI; how its ingress hook ended up, from `status --json`.
    Netfault(String),
    Nft,
    XdpDrop(XdpLinkId),
}

/// The objects and namespaces one benchmark run works with.
struct Bench<'a> {
    plan: &'a Plan,
    topo: &'a Topology,
    bench: Ebpf,
    /// The `netfault` binary, next to this one.
    cli: Netfault,
    frame: Vec<u8>,
    generator: Generator,
    tx_ifindex: u32,
    /// `struct xdp_md` for live frames: data_end = frame length, ingress on the sending veth.
    ctx: Vec<u8>,
    mode: RxMode,
    /// With one CPU there is nothing to pin to.
    two_cpus: bool,
    notes: Vec<String>,
}

struct GenRun {
    elapsed: Duration,
    /// False when the watchdog interrupted the run.
    completed: bool,
    /// Frames sent (known for a completed run).
    sent: u64,
    /// Socket sender: sendmmsg calls cut short by a full ring.
    refusals: u64,
}

/// The rule, as a user types it.
const DROP_ALL: [&str; 8] = [
    "rule",
    "add",
    "drop-all",
    "--dir",
    "ingress",
    "--drop",
    "100%",
    "--all-traffic",
];

/// The `netfault` binary next to this one, with this process's SSH_CONNECTION (if any), so
/// the CLI protects the bench's own SSH session as it would a user's.
pub fn cli() -> Result<Netfault> {
    let nf = Netfault::next_to_current_exe().context("the netfault binary")?;
    Ok(match std::env::var("SSH_CONNECTION") {
        Ok(v) => nf.with_env("SSH_CONNECTION", &v),
        Err(_) => nf,
    })
}

/// How the CLI attached `status --json`'s first interface's ingress: "XDP native
/// (nf_xdp_ingress)" or "tc ingress (tcx)", with the reason it gives.
pub fn ingress_desc(status: &serde_json::Value) -> String {
    let i = &status["interfaces"][0];
    let hooks = i["hooks"].as_array().cloned().unwrap_or_default();
    let kind = |h: &str| {
        hooks
            .iter()
            .find(|x| x["hook"] == h)
            .and_then(|x| x["kind"].as_str().map(str::to_owned))
    };
    match kind("xdp-ingress") {
        Some(k) if k.starts_with("xdp-") => {
            format!("XDP {} (nf_xdp_ingress)", k.trim_start_matches("xdp-"))
        }
        _ => format!(
            "tc ingress ({})",
            kind("tc-ingress").unwrap_or_else(|| "?".into())
        ),
    }
}

fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> Vec<u8> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let fields = [0, frame_len as u32, 0, ingress_ifindex, 0, 0];
    fields.iter().flat_map(|f| f.to_ne_bytes()).collect()
}

fn nft(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", ns, "nft"];
    all.extend_from_slice(args);
    topo::run("ip", &all).map(|_| ())
}

/// The NAPI kernel thread of `ifname` (comm "napi/<ifname>-<id>", cut to 15 characters).
fn napi_thread(ifname: &str) -> Option<libc::pid_t> {
    let want: String = format!("napi/{ifname}-").chars().take(15).collect();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        comm.trim_end().starts_with(&want).then_some(pid)
    })
}

impl<'a> Bench<'a> {
    fn new(plan: &'a Plan, topo: &'a Topology, pins: &Path) -> Result<Self> {
        let mut bench = EbpfLoader::new()
            .load(netfault_lab::BENCH_OBJECT)
            .context("load the bench object")?;
        progrun::xdp_mut(&mut bench, "bench_drop")?;
        progrun::xdp_mut(&mut bench, "bench_tx")?;
        let _ = pins;
        let frame = frame::udp4(topo::RX_MAC, topo::TX_MAC, MATCH_SRC, DST);
        let tx_ifindex = Topology::ifindex(&topo.tx_ns, &topo.tx_if)?;
        let ctx = xdp_md(frame.len(), tx_ifindex);
        Ok(Self {
            plan,
            topo,
            bench,
            cli: cli()?,
            frame,
            generator: Generator::LiveFrames,
            tx_ifindex,
            ctx,
            mode: RxMode::Softirq,
            two_cpus: sys::online_cpus() >= 2,
            notes: Vec::new(),
        })
    }

    /// GRO on the receiving veth makes it poll through NAPI even with no XDP program (the nft
    /// case). Without NAPI a veth refuses frames redirected into it, and it could not be
    /// threaded either.
    fn enable_napi(&self) -> Result<()> {
        let ifname = &self.topo.rx_if;
        sys::in_netns(&self.topo.rx_ns, || sys::enable_gro(ifname))
    }

    /// Switches where the receive poll runs. False if the kernel refuses threaded NAPI.
    fn set_mode(&mut self, mode: RxMode) -> Result<bool> {
        if mode == RxMode::Threaded && !self.two_cpus {
            self.notes.push("one CPU only: no threaded receive".into());
            return Ok(false);
        }
        let (ns, ifname) = (&self.topo.rx_ns, &self.topo.rx_if);
        let v = u8::from(mode == RxMode::Threaded);
        let cmd = format!("echo {v} > /sys/class/net/{ifname}/threaded");
        // /sys shows the namespace it was mounted in: `ip netns exec` mounts the right one.
        if let Err(e) = topo::run("ip", &["netns", "exec", ns, "sh", "-c", &cmd]) {
            if mode == RxMode::Threaded {
                self.notes.push(format!("threaded NAPI unavailable: {e:#}"));
                return Ok(false);
            }
            return Err(e);
        }
        self.mode = mode;
        Ok(true)
    }

    /// The receiver's IP layer sees only what a hook let through: the frames are addressed to
    /// its MAC, so any the hook let through would show up here.
    fn ip_in_receives(&self) -> Result<u64> {
        sys::in_netns(&self.topo.rx_ns, topo::ip_in_receives)
    }

    /// Threaded: the receive thread gets the other CPU, at real-time priority. Done before every
    /// round: the NAPI thread can be recreated when programs come and go.
    fn place_receiver(&mut self) -> Result<Option<libc::pid_t>> {
        if self.mode != RxMode::Threaded {
            return Ok(None);
        }
        let Some(pid) = napi_thread(&self.topo.rx_if) else {
            bail!(
                "no NAPI thread for {} although threaded NAPI is on",
                self.topo.rx_if
            );
        };
        sys::pin_to_cpu(pid, RX_CPU)?;
        sys::set_fifo(pid)?;
        Ok(Some(pid))
    }

    fn attach(&mut self, r: Receiver) -> Result<Attached> {
        let (ns, ifname) = (self.topo.rx_ns.clone(), self.topo.rx_if.clone());
        let a = match r {
            Receiver::Netfault => {
                // As a user does it: attach, then the rule; the CLI picks the hooks.
                self.cli.run(&ns, &["attach", &ifname])?;
                let desc = self
                    .cli
                    .run(&ns, &DROP_ALL)
                    .and_then(|_| self.cli.json(&ns, &["status", "--json"]));
                match desc {
                    Ok(st) => Attached::Netfault(ingress_desc(&st)),
                    Err(e) => {
                        let _ = self.cli.run(&ns, &["detach"]);
                        return Err(e);
                    }
                }
            }
            Receiver::Nft => {
                let chain = format!("{{ type filter hook ingress device {ifname} priority 0; }}");
                nft(&ns, &["add", "table", "netdev", "nfbench"])?;
                let rest = nft(&ns, &["add", "chain", "netdev", "nfbench", "in", &chain])
                    .and_then(|()| nft(&ns, &["add", "rule", "netdev", "nfbench", "in", "drop"]));
                if let Err(e) = rest {
                    let _ = nft(&ns, &["delete", "table", "netdev", "nfbench"]);
                    return Err(e);
                }
                Attached::Nft
            }
            Receiver::XdpDrop => {
                let prog = progrun::xdp_mut(&mut self.bench, "bench_drop")?;
                let cname = CString::new(ifname)?;
                let id = sys::in_netns(&ns, || {
                    prog.attach(cname.as_c_str(), XdpMode::Driver)
                        .context("attach bench_drop (native XDP)")
                })?;
                Attached::XdpDrop(id)
            }
        };
        sleep(SETTLE);
        Ok(a)
    }

    fn detach(&mut self, a: Attached) -> Result<()> {
        let (ns, ifname) = (self.topo.rx_ns.clone(), self.topo.rx_if.clone());
        match a {
            Attached::Netfault(_) => {
                let _ = ifname;
                self.cli.run(&ns, &["detach"]).map(drop)
            }
            Attached::Nft => nft(&ns, &["delete", "table", "netdev", "nfbench"]),
            Attached::XdpDrop(id) => {
                let prog = progrun::xdp_mut(&mut self.bench, "bench_drop")?;
                prog.detach(id).context("detach bench_drop")
            }
        }
    }

    fn hook_desc(a: &Attached) -> String {
        match a {
            Attached::Netfault(desc) => desc.clone(),
            Attached::Nft => "netdev ingress, skb path".into(),
            Attached::XdpDrop(_) => "XDP native (bench_drop)".into(),
        }
    }

    /// Sends `frames` frames from the sending veth, bounded in time by a watchdog.
    fn generate(&self, frames: u32) -> Result<GenRun> {
        let prog = progrun::xdp(&self.bench, "bench_tx")?;
        let (frame, ctx, pin) = (&self.frame, &self.ctx, self.two_cpus);
        let limit = self.time_limit();
        sys::in_netns(&self.topo.tx_ns, || {
            if pin {
                sys::pin_to_cpu(0, GEN_CPU)?;
            }
            sys::set_fifo(0)?;
            let watchdog = sys::Watchdog::arm(limit);
            let t0 = Instant::now();
            let r = prog.test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            });
            let elapsed = t0.elapsed();
            let fired = watchdog.disarm();
            match r {
                Ok(_) => Ok(GenRun {
                    elapsed,
                    completed: true,
                    sent: u64::from(frames),
                    refusals: 0,
                }),
                Err(e) if sys::is_eintr(&e) => {
                    sys::check_stop()?;
                    if !fired {
                        bail!("generator interrupted");
                    }
                    Ok(GenRun {
                        elapsed,
                        completed: false,
                        sent: 0,
                        refusals: 0,
                    })
                }
                Err(e) => Err(e).context("BPF_PROG_RUN live frames (bench_tx)"),
            }
        })
    }

    /// Sends for `dur` from the sending veth through an AF_PACKET socket, pinned to the
    /// generator's CPU.
    fn send(&self, dur: Duration) -> Result<GenRun> {
        let (frame, ifindex, pin) = (&self.frame, self.tx_ifindex, self.two_cpus);
        sys::in_netns(&self.topo.tx_ns, || {
            if pin {
                sys::pin_to_cpu(0, GEN_CPU)?;
            }
            sys::set_fifo(0)?;
            let sock = sockgen::PacketSocket::open(ifindex)?;
            let s = sock.blast(frame, dur, SOCKET_MAX_FRAMES)?;
            Ok(GenRun {
                elapsed: s.elapsed,
                completed: true,
                sent: s.accepted,
                refusals: s.refusals,
            })
        })
    }

    fn round_time(&self) -> Duration {
        Duration::from_secs_f64(self.plan.round_secs)
    }

    /// True if the kernel refuses BPF_PROG_RUN live frames with EPERM: one batch into the
    /// trivial drop. Any other error is an error.
    fn live_frames_refused(&mut self) -> Result<bool> {
        let a = self.attach(Receiver::XdpDrop)?;
        let r = self.generate(BATCH);
        self.detach(a)?;
        match r {
            Ok(_) => Ok(false),
            Err(e) if refused(&e) => {
                log::debug!("live frames refused: {e:#}");
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Rounds have as many frames as a trivial drop takes in `round_secs`; in softirq mode the
    /// slowest receiver (nft) needs about 5 times that. Past this, the watchdog ends the run.
    fn time_limit(&self) -> Duration {
        Duration::from_secs_f64((self.plan.round_secs * 10.0).max(2.0))
    }

    /// Frames per round for receiver `r`: what it gets through in `round_secs`, from a sizing
    /// run that also warms it up. Rounds of equal length keep the comparison fair: the
    /// kernel takes a CPU away from real-time tasks after 950 ms (RT throttling, fair server),
    /// so with `round_secs` below that no round is cut into.
    /// The socket sender's rounds are timed instead: this is a quarter round of warm-up, and 0.
    fn size(&mut self, r: Receiver) -> Result<u32> {
        let a = self.attach(r)?;
        let run = self.place_receiver().and_then(|_| match self.generator {
            Generator::LiveFrames => self.generate(SIZING_FRAMES),
            Generator::Socket => self.send(self.round_time() / 4),
        });
        self.detach(a)?;
        if self.generator == Generator::Socket {
            return run.map(|_| 0);
        }
        let run = run?;
        if !run.completed {
            bail!(
                "the generator could not send {SIZING_FRAMES} frames within {:?}",
                self.time_limit()
            );
        }
        let fps = f64::from(SIZING_FRAMES) / run.elapsed.as_secs_f64();
        let frames =
            (fps * self.plan.round_secs).clamp(f64::from(MIN_FRAMES), f64::from(MAX_FRAMES));
        Ok(frames as u32)
    }

    /// One round for one receiver: attach, send, count, detach (also when the send fails).
    fn round(&mut self, r: Receiver, s: &mut Summary) -> Result<()> {
        sys::check_stop()?;
        let a = self.attach(r)?;
        s.hook = Self::hook_desc(&a);
        let res = self.measure(s);
        let det = self.detach(a);
        res.and(det)
    }

    fn measure(&mut self, s: &mut Summary) -> Result<()> {
        let frames = s.frames;
        let napi = self.place_receiver()?;
        // The socket sender's figure is the receiver's CPU time.
        let napi = match (self.generator, napi) {
            (Generator::Socket, Some(pid)) => Some((pid, sys::task_runtime_ns(pid)?)),
            // Softirq: sender and receiver share the CPU, the rate is the figure.
            (Generator::Socket, None) | (Generator::LiveFrames, _) => None,
        };
        let rx0 = self.topo.rx_packets()?;
        let nf0 = self.nf_dropped(s.receiver)?;
        let run = match self.generator {
            Generator::LiveFrames => self.generate(frames)?,
            Generator::Socket => self.send(self.round_time())?,
        };
        sleep(SETTLE);
        let rx = self.topo.rx_packets()? - rx0;
        if rx == 0 {
            // A veth refuses redirected frames unless its peer polls through NAPI (GRO or XDP).
            bail!("no frame reached {}: its NAPI is off", self.topo.rx_if);
        }
        let secs = run.elapsed.as_secs_f64();
        if let Some((pid, rt0)) = napi {
            let rt = sys::task_runtime_ns(pid)?.saturating_sub(rt0);
            if rt == 0 {
                bail!(
                    "NAPI thread {pid} ran for 0 ns while {rx} frames were received: not the receiver"
                );
            }
            s.rx_cpu_ns.push(rt as f64 / rx as f64);
            s.busy.push(rt as f64 / 1e9 / secs);
            s.refusals += run.refusals;
        }
        log::debug!(
            "{:?} {:?}: {rx} of {frames} frames received in {secs:.3} s, generator completed: {}",
            self.mode,
            s.receiver,
            run.completed
        );
        s.rx_mpps.push(rx as f64 / secs / 1e6);
        s.offered_mpps
            .push(run.completed.then(|| run.sent as f64 / secs / 1e6));
        if run.completed {
            s.sent += run.sent;
            s.received += rx;
        }
        if s.receiver == Receiver::Netfault {
            let dropped = self.nf_dropped(s.receiver)? - nf0;
            let (d, n) = s.counter_check.unwrap_or((0, 0));
            s.counter_check = Some((d + dropped, n + rx));
        }
        Ok(())
    }

    /// The drop-all rule's dropped counter, through `netfault stats` (0 for other receivers).
    fn nf_dropped(&self, r: Receiver) -> Result<u64> {
        if r != Receiver::Netfault {
            return Ok(0);
        }
        Ok(self.cli.counters(&self.topo.rx_ns, "drop-all")?.dropped)
    }

    /// Every receiver `plan.rounds` times, interleaved (the order rotates each round) so that
    /// drift in the machine's load is spread over all of them.
    fn run_mode(&mut self, mode: RxMode) -> Result<Outcome> {
        let mut summaries: Vec<Summary> = Receiver::ALL
            .iter()
            .map(|&receiver| Summary {
                receiver,
                frames: 0,
                hook: String::new(),
                rx_mpps: Vec::new(),
                offered_mpps: Vec::new(),
                counter_check: None,
                sent: 0,
                received: 0,
                rx_cpu_ns: Vec::new(),
                busy: Vec::new(),
                refusals: 0,
            })
            .collect();
        for s in &mut summaries {
            s.frames = self.size(s.receiver)?;
        }
        let ip0 = self.ip_in_receives()?;
        for round in 0..self.plan.rounds {
            for i in 0..summaries.len() {
                let k = (i + round) % summaries.len();
                let r = summaries[k].receiver;
                self.round(r, &mut summaries[k]).with_context(|| {
                    format!("{mode:?} mode, round {} of {}", round + 1, r.label())
                })?;
            }
        }
        let leaked = self.ip_in_receives()? - ip0;
        Ok(Outcome {
            generator: self.generator,
            mode,
            summaries,
            leaked,
            notes: std::mem::take(&mut self.notes),
        })
    }
}

/// Is this the kernel refusing live frames (EPERM anywhere in the chain)?
fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| sys::is_errno(c, libc::EPERM))
}

/// Both receive modes, softirq (the headline) first; with the socket sender, only the threaded.
pub fn run(plan: &Plan, pins: &Path) -> Result<Vec<Outcome>> {
    let topo = Topology::create()?;
    let mut b = Bench::new(plan, &topo, pins)?;
    b.enable_napi()?;
    if b.live_frames_refused()? {
        b.generator = Generator::Socket;
        let tx_if = topo.tx_if.clone();
        sys::in_netns(&topo.tx_ns, || sys::disable_tso(&tx_if))?;
    }
    let mut out = Vec::new();
    for mode in [RxMode::Softirq, RxMode::Threaded] {
        if b.set_mode(mode)? {
            out.push(b.run_mode(mode)?);
        } else if let Some(last) = out.last_mut() {
            last.notes.append(&mut b.notes);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io;

    use anyhow::Context as _;
    use aya::{programs::ProgramError, sys::SyscallError};

    use super::refused;

    /// The error `generate` returns when BPF_PROG_RUN fails with `errno`.
    fn prog_run_error(errno: i32) -> anyhow::Error {
        let e = ProgramError::SyscallError(SyscallError {
            call: "bpf_prog_test_run",
            io_error: io::Error::from_raw_os_error(errno),
        });
        Err::<(), _>(e)
            .context("BPF_PROG_RUN live frames (bench_tx)")
            .unwrap_err()
    }

    #[test]
    fn eperm_is_a_refusal_other_errors_are_not() {
        assert!(refused(&prog_run_error(libc::EPERM)));
        assert!(!refused(&prog_run_error(libc::EINVAL)));
        assert!(!refused(&prog_run_error(libc::EINTR)));
    }
}
