//! netfault-demo: three hosts on a bridge, real traffic, and what netfault does to it.
//!
//! Builds a lab of network namespaces (hosts a, b, c on one bridge), shows traffic flowing, then
//! applies a 30 % loss rule, burst loss (its run-length histogram), a duplicate rule, a
//! partition, and a `connect()` refused by `partition --reject` beside one that a silent
//! partition leaves to time out, with the real `netfault` binary
//! (the one next to this executable), printing the counters and the effect on traffic before
//! and after. Then a lab cluster of five hosts: `netfault cluster partition` with several
//! topologies, each shown as the 5×5 reachability matrix measured on the wire, and healed.
//! Before the cluster, `netfault pause` stops a heartbeat sender for 2 s: its peer's timeout
//! fires ("suspect") and clears ("alive") when the watchdog resumes it.
//! Heals, detaches and removes the labs, also on Ctrl-C or failure.
//!
//! Exit status: 0 when every effect was as expected, 1 when one was not (or the lab could not
//! be built), 130 when interrupted. Needs root.
use std::{
    io,
    net::TcpStream,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use netfault_lab::{
    cluster,
    lab::{self, Host, Lab, Netfault, TcpEcho, UdpBurst, UdpReport, Z_ALPHA_1E4, wilson_interval},
};

const PORT: u16 = 4000;
const LOSS: f64 = 0.3;
const TCP_PORT: u16 = 7000;
/// How long the demo lets a `connect()` wait behind a silent partition (Linux itself would
/// retry the SYN for about two minutes).
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// A refusal must come this fast (the first SYN retransmit is 1 s after the SYN).
const REFUSED_WITHIN: Duration = Duration::from_millis(500);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C (and kill) only raise a flag: the demo stops at the next step and the lab's guard
/// still detaches netfault and deletes the namespaces. Every step is bounded to a few seconds.
fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn main() -> ExitCode {
    // The pause step's heartbeat sender: this binary again, in a namespace of the lab.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("heartbeat") {
        return heartbeat(args.get(2).map(String::as_str));
    }
    install_signal_handlers();
    let start = Instant::now();
    let result = run();
    match result {
        Ok(failures) if failures.is_empty() => {
            section("Result");
            println!(
                "  every effect was as expected ({:.1} s)",
                start.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Ok(failures) => {
            section("Result");
            println!("  {} check(s) FAILED:", failures.len());
            for f in failures {
                println!("    - {f}");
            }
            ExitCode::from(1)
        }
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("\nnetfault-demo: interrupted; netfault detached and the lab removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\nnetfault-demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The running demo: its lab (the cleanup guard), the binary and the checks that failed.
struct Demo {
    lab: Lab,
    nf: Netfault,
    a: Host,
    b: Host,
    c: Host,
    failures: Vec<String>,
}

fn section(title: &str) {
    println!("\n== {title} ==");
}

/// Stops between steps once Ctrl-C was pressed.
fn step() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn run() -> Result<Vec<String>> {
    let nf = Netfault::next_to_current_exe()?;
    let mut demo = Demo::build(nf)?;
    demo.baseline()?;
    demo.loss()?;
    demo.burst()?;
    demo.duplicate()?;
    demo.partition()?;
    demo.heal()?;
    demo.reject()?;
    demo.pause()?;
    demo.cluster()?;
    let failures = std::mem::take(&mut demo.failures);
    demo.cleanup()?;
    Ok(failures)
}

impl Demo {
    fn build(nf: Netfault) -> Result<Self> {
        section("Lab: three hosts on one bridge");
        let mut lab = Lab::new("nfdemo")?;
        let hosts = lab.star(3)?;
        let [a, b, c] = [hosts[0].clone(), hosts[1].clone(), hosts[2].clone()];
        for (name, h) in [("a", &a), ("b", &b), ("c", &c)] {
            println!("  {name}  {:<20} {}  {:<10} {}", h.ns, h.iface, h.v4, h.v6);
        }
        println!(
            "  (bridge in {})",
            lab.namespaces().last().map_or("?", String::as_str)
        );
        let mut demo = Self {
            lab,
            nf,
            a,
            b,
            c,
            failures: Vec::new(),
        };
        step()?;
        section("netfault attach (XDP ingress, tc egress and ingress)");
        for h in [demo.a.clone(), demo.b.clone(), demo.c.clone()] {
            let out = demo.nf.attach(&mut demo.lab, &h.ns, &h.iface)?;
            print!("  {}: {out}", short(&h));
        }
        Ok(demo)
    }

    fn check(&mut self, ok: bool, what: &str) {
        println!("  [{}] {what}", if ok { "ok" } else { "FAIL" });
        if !ok {
            self.failures.push(what.to_owned());
        }
    }

    /// Runs a netfault command on a host, echoing it as a shell line.
    fn netfault(&self, h: &Host, args: &[&str]) -> Result<String> {
        println!("  $ netfault --netns {} {}", h.ns, args.join(" "));
        self.nf.run(&h.ns, args)
    }

    fn print_stats(&self, h: &Host) -> Result<()> {
        println!("  counters on {}:", short(h));
        for line in self.nf.run(&h.ns, &["stats"])?.lines() {
            println!("    {line}");
        }
        Ok(())
    }

    fn baseline(&mut self) -> Result<()> {
        step()?;
        section("Baseline: no rules");
        let (a, b, c) = (self.a.clone(), self.b.clone(), self.c.clone());
        let mut ok = true;
        for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
            for v6 in [false, true] {
                let r = udp(x, y, v6, 2000)?;
                ok &= r.every_seq_exactly(1);
                let p = lab::ping(&x.ns, y.ip(v6), 5)?;
                ok &= p.received == 5;
                println!("  {}  |  ping {}/5", flow(x, y, v6, &r), p.received);
            }
        }
        self.check(ok, "every datagram and every ping arrives once");
        Ok(())
    }

    fn loss(&mut self) -> Result<()> {
        step()?;
        section("30 % loss on b: UDP arriving at b");
        let (a, b) = (self.a.clone(), self.b.clone());
        let before = udp(&a, &b, false, 5000)?;
        println!("  before: {}", flow(&a, &b, false, &before));
        self.netfault(
            &b,
            &[
                "rule", "add", "loss30", "--dir", "ingress", "--proto", "udp", "--drop", "30%",
            ],
        )?;
        let after = udp(&a, &b, false, 5000)?;
        let lost = after.lost() as f64 / f64::from(after.sent);
        let (lo, hi) = wilson_interval(after.lost(), u64::from(after.sent), Z_ALPHA_1E4);
        println!("  after:  {}", flow(&a, &b, false, &after));
        println!(
            "          {:.2} % lost; 99.99 % Wilson interval [{:.2} %, {:.2} %]",
            lost * 100.0,
            lo * 100.0,
            hi * 100.0
        );
        let ping = lab::ping(&a.ns, b.ip(false), 10)?;
        println!("  ping a -> b: {}/10 (the rule is UDP only)", ping.received);
        self.print_stats(&b)?;
        let c = self.nf.counters(&b.ns, "loss30")?;
        self.check(
            before.every_seq_exactly(1),
            "before the rule nothing was lost",
        );
        // A correct data path fails this about once in 10 000 runs.
        self.check(
            lo <= LOSS && LOSS <= hi,
            "observed loss consistent with 30 % (alpha = 1e-4)",
        );
        self.check(
            c.matched == u64::from(after.sent)
                && c.passed == after.received()
                && c.dropped == after.lost(),
            "counters match the receiver: matched = sent, passed = received, dropped = lost",
        );
        self.check(ping.received == 10, "ICMP untouched by a UDP rule");
        self.netfault(&b, &["rule", "del", "loss30"])?;
        Ok(())
    }

    fn burst(&mut self) -> Result<()> {
        use netfault_lab::burst as runs;
        const N: u32 = 20_000;
        step()?;
        section("Burst loss on b: 5 % of UDP lost, in runs 4 packets long on average");
        let (a, b) = (self.a.clone(), self.b.clone());
        self.netfault(
            &b,
            &[
                "rule", "add", "bursty", "--dir", "ingress", "--proto", "udp", "--drop", "5%",
                "--burst", "4",
            ],
        )?;
        let r = UdpBurst::new(N)
            .rate(50_000)
            .run(&a.ns, &b.ns, b.sock(false, PORT))?;
        let lost: Vec<bool> = r.copies.iter().map(|&c| c == 0).collect();
        let seen = runs::runs(&lost);
        let g = netfault::spec::GeModel::simple(0.05, 4.0)
            .ok_or_else(|| anyhow::anyhow!("5 %, runs of 4: a valid chain"))?;
        let (rate_ok, (lo, hi)) = runs::loss_rate_holds(&lost, &g, Z_ALPHA_1E4);
        let (mean_ok, mean, (mlo, mhi)) = runs::mean_run_holds(&seen, 4.0, Z_ALPHA_1E4);
        println!("  {}", flow(&a, &b, false, &r));
        println!(
            "  {:.2} % lost (interval [{:.2} %, {:.2} %]); {} runs, mean {mean:.2} (interval [{mlo:.2}, {mhi:.2}])",
            100.0 * r.lost() as f64 / f64::from(N),
            lo * 100.0,
            hi * 100.0,
            seen.len()
        );
        println!("  run length  runs");
        for line in runs::histogram_text(&seen, 12, 40).lines() {
            println!("    {line}");
        }
        self.print_stats(&b)?;
        let c = self.nf.counters(&b.ns, "bursty")?;
        self.check(
            r.rcvbuf_errors == 0 && rate_ok,
            "loss rate consistent with 5 % (alpha = 1e-4, widened for the chain)",
        );
        self.check(mean_ok, "mean run length consistent with 4 (alpha = 1e-4)");
        self.check(
            c.dropped == r.lost() && c.bursts == runs::runs_begun(&lost),
            "counters match the receiver: dropped = lost, bursts = runs begun",
        );
        self.netfault(&b, &["rule", "del", "bursty"])?;
        Ok(())
    }

    fn duplicate(&mut self) -> Result<()> {
        step()?;
        section("100 % duplication on c: UDP arriving at c");
        let (a, c) = (self.a.clone(), self.c.clone());
        let before = udp(&a, &c, true, 2000)?;
        println!("  before: {}", flow(&a, &c, true, &before));
        self.netfault(
            &c,
            &[
                "rule",
                "add",
                "dup",
                "--dir",
                "ingress",
                "--proto",
                "udp",
                "--duplicate",
                "100%",
            ],
        )?;
        let after = udp(&a, &c, true, 2000)?;
        println!("  after:  {}", flow(&a, &c, true, &after));
        self.print_stats(&c)?;
        let k = self.nf.counters(&c.ns, "dup")?;
        self.check(
            before.every_seq_exactly(1),
            "before the rule every datagram arrived once",
        );
        self.check(
            after.every_seq_exactly(2),
            "with the rule every datagram arrived exactly twice",
        );
        self.check(
            k.duplicated == u64::from(after.sent) && k.passed + k.duplicated == after.received(),
            "counters match: duplicated = sent, passed + duplicated = received",
        );
        self.netfault(&c, &["rule", "del", "dup"])?;
        Ok(())
    }

    fn partition(&mut self) -> Result<()> {
        step()?;
        section("Partition {a} | {b, c}, on every host");
        let (a, b, c) = (self.a.clone(), self.b.clone(), self.c.clone());
        let others = format!("{},{}", b.set(), c.set());
        for h in [&a, &b, &c] {
            self.netfault(h, &["partition", &a.set(), &others, "--name", "split"])?;
        }
        let mut cut = true;
        for (x, y) in [(&a, &b), (&b, &a), (&a, &c), (&c, &a)] {
            let r = udp(x, y, false, 500)?;
            cut &= r.received() == 0;
            println!("  {}", flow(x, y, false, &r));
        }
        let ping_ab = lab::ping(&a.ns, b.ip(true), 3)?;
        println!("  ping a -> b (v6): {}/3", ping_ab.received);
        cut &= ping_ab.received == 0;
        let mut works = true;
        for (x, y) in [(&b, &c), (&c, &b)] {
            let r = udp(x, y, true, 500)?;
            works &= r.every_seq_exactly(1);
            println!("  {}", flow(x, y, true, &r));
        }
        let ping_bc = lab::ping(&b.ns, c.ip(false), 5)?;
        println!("  ping b -> c: {}/5", ping_bc.received);
        works &= ping_bc.received == 5;
        println!(
            "  (every host drops on egress what it sends across the cut, so b and c never see"
        );
        println!("   a's packets: their counters hold only what they sent towards a)");
        for h in [&a, &b, &c] {
            self.print_stats(h)?;
        }
        self.check(cut, "a is cut off from b and c, both ways");
        self.check(works, "b and c still reach each other");
        Ok(())
    }

    fn heal(&mut self) -> Result<()> {
        step()?;
        section("Heal");
        let (a, b, c) = (self.a.clone(), self.b.clone(), self.c.clone());
        for h in [&a, &b, &c] {
            self.netfault(h, &["heal", "split"])?;
        }
        let mut ok = true;
        for (x, y) in [(&a, &b), (&b, &a), (&a, &c), (&c, &a)] {
            // Neighbour entries failed during the cut; a ping resolves them again first.
            ok &= lab::ping(&x.ns, y.ip(false), 1)?.received == 1;
            let r = udp(x, y, false, 500)?;
            ok &= r.every_seq_exactly(1);
            println!("  {}", flow(x, y, false, &r));
        }
        self.check(ok, "traffic flows again between all hosts");
        Ok(())
    }

    /// Fail fast versus silence: the same `connect()` to a silent partition and to one with
    /// `--reject`, side by side.
    fn reject(&mut self) -> Result<()> {
        step()?;
        section(
            "Fail fast versus silence: TCP connect() from a, silent partition on b, --reject on c",
        );
        let (a, b, c) = (self.a.clone(), self.b.clone(), self.c.clone());
        let _servers = [
            TcpEcho::start(&b.ns, b.sock(false, TCP_PORT))?,
            TcpEcho::start(&c.ns, c.sock(false, TCP_PORT))?,
            TcpEcho::start(&c.ns, c.sock(true, TCP_PORT))?,
        ];
        let targets = [(&b, false), (&c, false), (&c, true)];
        let mut before = true;
        for &(h, v6) in &targets {
            let (r, took) = connect_timed(&a, h.sock(v6, TCP_PORT))?;
            before &= r.is_ok();
            println!("  before: {}", connected(&a, h, v6, &r, took));
        }
        self.netfault(&b, &["partition", &a.set(), &b.set(), "--name", "quiet"])?;
        self.netfault(
            &c,
            &[
                "partition",
                &a.set(),
                &c.set(),
                "--name",
                "closed",
                "--reject",
            ],
        )?;
        let mut silent = true;
        let mut refused = true;
        for &(h, v6) in &targets {
            let (r, took) = connect_timed(&a, h.sock(v6, TCP_PORT))?;
            let kind = r.as_ref().err().map(io::Error::kind);
            if h.ns == b.ns {
                silent &= kind == Some(io::ErrorKind::TimedOut) && took >= CONNECT_WAIT;
            } else {
                refused &= kind == Some(io::ErrorKind::ConnectionRefused) && took < REFUSED_WITHIN;
            }
            println!("  after:  {}", connected(&a, h, v6, &r, took));
        }
        println!("  (b drops a's SYNs and says nothing: the client retries until its timeout;");
        println!("   c answers each with a RST, as a closed port would)");
        self.print_stats(&c)?;
        let k = self.nf.counters(&c.ns, "closed")?;
        self.check(before, "before the partitions every connect() succeeds");
        self.check(
            silent,
            &format!(
                "silent partition: connect() still waiting after {CONNECT_WAIT:?} (timed out)"
            ),
        );
        self.check(
            refused,
            &format!("partition --reject: connect() refused (ECONNREFUSED) within {REFUSED_WITHIN:?}, v4 and v6"),
        );
        self.check(
            k.rejected >= 2 && k.rejected == k.dropped && k.reject_limited == 0,
            "counters on c: rejected = dropped (every packet cut was answered), none rate-limited",
        );
        self.netfault(&b, &["heal", "quiet"])?;
        self.netfault(&c, &["heal", "closed"])?;
        Ok(())
    }

    /// A heartbeat sender on a (this binary, `heartbeat ADDR`: a datagram every 100 ms) and its
    /// peer on b, which suspects it after 500 ms of silence: `netfault pause` stops the sender
    /// for 2 s; the peer's timeout fires during the pause and clears once the watchdog resumes.
    fn pause(&mut self) -> Result<()> {
        step()?;
        section("Pause: a heartbeat sender on a stopped 2 s, its peer on b times out and recovers");
        let (a, b) = (self.a.clone(), self.b.clone());
        let dst = b.sock(false, HEARTBEAT_PORT);
        let sink = lab::run_in(&b.ns, || std::net::UdpSocket::bind(dst))??;
        sink.set_read_timeout(Some(Duration::from_millis(20)))?;
        let exe = std::env::current_exe()?;
        let sender = lab::KillOnDrop(
            std::process::Command::new("ip")
                .args(["netns", "exec", &a.ns])
                .arg(&exe)
                .args(["heartbeat", &dst.to_string()])
                .stdin(std::process::Stdio::null())
                .spawn()?,
        );
        let pid = sender.id() as i32;
        /// The peer's view, in order: (when, alive?).
        fn watch(
            sink: &std::net::UdpSocket,
            t0: Instant,
            until: Duration,
        ) -> Vec<(Duration, bool)> {
            let (mut last, mut alive, mut seen) = (None::<Instant>, false, Vec::new());
            let mut buf = [0u8; 64];
            while t0.elapsed() < until {
                if sink.recv(&mut buf).is_ok() {
                    last = Some(Instant::now());
                    if !alive {
                        alive = true;
                        seen.push((t0.elapsed(), true));
                    }
                } else if alive && last.is_some_and(|l| l.elapsed() > HEARTBEAT_TIMEOUT) {
                    alive = false;
                    seen.push((t0.elapsed(), false));
                }
            }
            seen
        }
        // The peer watches the whole time, on a thread of its own, while this one pauses.
        let t0 = Instant::now();
        let lead = Duration::from_millis(800);
        let window = lead + PAUSE_FOR + Duration::from_millis(800);
        let (seen, paused_at, out, stopped) = std::thread::scope(|sc| {
            let peer = sc.spawn(|| watch(&sink, t0, window));
            std::thread::sleep(lead);
            println!(
                "  $ netfault --pid {pid} pause --for {}ms --name demo-heartbeat",
                PAUSE_FOR.as_millis()
            );
            let paused_at = t0.elapsed();
            let out = std::process::Command::new(&self.nf.bin)
                .args([
                    "--pid",
                    &pid.to_string(),
                    "pause",
                    "--name",
                    "demo-heartbeat",
                ])
                .args(["--for", &format!("{}ms", PAUSE_FOR.as_millis())])
                .output();
            let stopped = netfault::pause::target::state(pid) == Some('T');
            let seen = peer.join().unwrap_or_default();
            (seen, paused_at, out, stopped)
        });
        let out = out?;
        print!("  {}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!(
                "netfault pause: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let (before, after): (Vec<_>, Vec<_>) = seen.iter().partition(|(t, _)| *t < paused_at);
        for (t, alive) in &seen {
            let ms = t.as_secs_f64() * 1e3;
            if *alive {
                println!("  b: +{ms:6.0} ms  a is alive");
            } else {
                println!(
                    "  b: +{ms:6.0} ms  a is SUSPECT (no heartbeat for {} ms)",
                    HEARTBEAT_TIMEOUT.as_millis()
                );
            }
        }
        let suspect = after.iter().find(|(_, alive)| !alive).map(|(t, _)| *t);
        let back = after
            .iter()
            .find(|(t, alive)| *alive && suspect.is_some_and(|s| *t > s))
            .map(|(t, _)| *t);
        let resume_at = paused_at + PAUSE_FOR;
        self.check(
            before.first().is_some_and(|(_, alive)| *alive) && before.len() == 1,
            "before the pause the peer hears every heartbeat (alive, never suspect)",
        );
        self.check(
            stopped,
            "the sender is stopped (state T) once `pause` returns",
        );
        self.check(
            suspect.is_some_and(|s| s > paused_at && s < resume_at),
            "during the pause the peer's timeout fires (suspect)",
        );
        self.check(
            back.is_some_and(|t| t >= resume_at && t < resume_at + Duration::from_millis(500)),
            "the watchdog resumes the sender on time and the peer hears it again (alive)",
        );
        Ok(())
    }

    /// Five hosts, one cluster file, four topologies: each partition applied with `netfault
    /// cluster`, the matrix measured with UDP from every node to every other, then healed.
    fn cluster(&mut self) -> Result<()> {
        step()?;
        section("Lab cluster: five hosts, Jepsen-style partitions with `netfault cluster`");
        let mut lab = Lab::new("nfdemo")?;
        let hosts = lab.star(5)?;
        let text = cluster::netns_cluster_text(&hosts);
        let file = std::env::temp_dir().join(format!("nfdemo-cluster-{}.toml", std::process::id()));
        std::fs::write(&file, &text)?;
        let _file = RemoveOnDrop(file.clone());
        for (i, h) in hosts.iter().enumerate() {
            println!("  n{}  {:<20} {}  {}", i + 1, h.ns, h.v4, h.v6);
        }
        // Neighbours resolved, and every node attached, before any cut.
        for a in &hosts {
            for b in &hosts {
                if a.ns != b.ns {
                    lab::ping(&a.ns, b.ip(false), 1)?;
                }
            }
        }
        for h in &hosts {
            self.nf.attach(&mut lab, &h.ns, &h.iface)?;
        }
        let full = reach_matrix(&hosts)?;
        println!("  before any partition:");
        print_grid(&full);
        let ok = full.iter().all(|r| r.iter().flatten().all(|&x| x));
        self.check(ok, "every node reaches every other");
        for (topology, extra) in [
            ("halves", &[][..]),
            ("majorities-ring", &["--seed", "7"][..]),
            ("isolate:n3", &[][..]),
            ("bridge", &[][..]),
        ] {
            step()?;
            let mut args = vec!["partition", topology, "--json", "--ttl", "1m"];
            args.extend_from_slice(extra);
            println!(
                "\n  $ netfault cluster --cluster {} {}",
                file.display(),
                args.join(" ")
            );
            let t = Instant::now();
            let doc: serde_json::Value =
                serde_json::from_str(&cluster_cmd(&self.nf, &file, &args)?)?;
            let took = t.elapsed();
            let grudge = &doc["grudge"];
            let drops = |x: usize, j: usize| {
                grudge[format!("n{}", x + 1)]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|v| v == &format!("n{}", j + 1)))
            };
            println!(
                "  applied on 5 nodes in {:.0} ms; grudge (each node drops packets from):",
                took.as_secs_f64() * 1e3
            );
            for x in 0..5 {
                let d: Vec<String> = (0..5)
                    .filter(|&j| drops(x, j))
                    .map(|j| format!("n{}", j + 1))
                    .collect();
                println!(
                    "    n{}: {}",
                    x + 1,
                    if d.is_empty() {
                        "-".into()
                    } else {
                        d.join(", ")
                    }
                );
            }
            let m = reach_matrix(&hosts)?;
            print_grid(&m);
            let matches = (0..5).all(|j| (0..5).all(|x| j == x || m[j][x] == Some(!drops(x, j))));
            self.check(matches, &format!("{topology}: the wire matches the grudge"));
            cluster_cmd(&self.nf, &file, &["heal"])?;
        }
        let after = reach_matrix(&hosts)?;
        let ok = after.iter().all(|r| r.iter().flatten().all(|&x| x));
        println!(
            "\n  $ netfault cluster --cluster {} heal   (after each)",
            file.display()
        );
        self.check(ok, "healed: every node reaches every other again");
        self.measure(&file)?;
        drop(lab);
        Ok(())
    }

    /// Measure and advise: every node probes every other (ICMP echo every 1 ms for 3 s, both
    /// families), and the coordinator prints the matrix and the timeout advice per pair for a
    /// heartbeat every 100 ms and one false suspicion a minute: a quantile 3,000 samples
    /// bound without a model (a rarer target needs a longer measurement).
    fn measure(&mut self, file: &std::path::Path) -> Result<()> {
        step()?;
        section("Measure the lab's round trips, and the timeouts they advise");
        let args = [
            "measure",
            "--duration",
            "3s",
            "--interval",
            "1ms",
            "--heartbeat",
            "100ms",
            "--false-suspicions",
            "1/min",
        ];
        println!(
            "  $ netfault cluster --cluster {} {}",
            file.display(),
            args.join(" ")
        );
        let mut json = args.to_vec();
        json.push("--json");
        let doc: serde_json::Value = serde_json::from_str(&cluster_cmd(&self.nf, file, &json)?)?;
        let text = cluster_cmd(&self.nf, file, &args)?;
        for (i, line) in text.lines().enumerate() {
            // The matrix, then the advice for the pairs from n1 (the rest are alike).
            if i < 7 || line.contains("n1 ->") {
                println!("  {line}");
            }
        }
        let pairs: Vec<&serde_json::Value> = doc["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|n| n["pairs"].as_array().into_iter().flatten())
            .collect();
        self.check(
            pairs.len() == 40
                && pairs
                    .iter()
                    .all(|p| p["report"]["samples"].as_u64().is_some_and(|n| n >= 2_970)),
            "every node answered the probes of every other (20 pairs, 2 families, 99 % of 3,000 or more)",
        );
        self.check(
            pairs
                .iter()
                .all(|p| p["report"]["advice"]["timeout_ms"].as_f64().is_some()),
            "a timeout advised for every pair",
        );
        Ok(())
    }

    /// The orderly path; on failure or Ctrl-C the lab's guard does the same when it drops.
    fn cleanup(self) -> Result<()> {
        section("Cleanup");
        for h in [&self.a, &self.b, &self.c] {
            for line in self.nf.run(&h.ns, &["detach"])?.lines() {
                println!("  {}: {line}", short(h));
            }
        }
        let namespaces = self.lab.namespaces().to_vec();
        drop(self.lab);
        let left: Vec<_> = namespaces
            .iter()
            .filter(|ns| std::path::Path::new("/run/netns").join(ns).exists())
            .collect();
        if !left.is_empty() {
            bail!("namespaces left behind: {left:?}");
        }
        println!("  removed {} namespaces", namespaces.len());
        Ok(())
    }
}

/// The pause step's heartbeats: port, period, the peer's timeout, and the pause.
const HEARTBEAT_PORT: u16 = 4100;
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);
const PAUSE_FOR: Duration = Duration::from_secs(2);

/// `netfault-demo heartbeat ADDR`: a datagram to ADDR every 100 ms, for at most a minute (the
/// demo kills it sooner).
fn heartbeat(addr: Option<&str>) -> ExitCode {
    let Some(addr) = addr.and_then(|a| a.parse::<std::net::SocketAddr>().ok()) else {
        eprintln!("usage: netfault-demo heartbeat ADDR:PORT");
        return ExitCode::from(2);
    };
    let Ok(s) = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)) else {
        return ExitCode::from(1);
    };
    let t0 = Instant::now();
    let mut n: u64 = 0;
    while t0.elapsed() < Duration::from_secs(60) {
        let _ = s.send_to(&n.to_be_bytes(), addr);
        n += 1;
        std::thread::sleep(HEARTBEAT_EVERY);
    }
    ExitCode::SUCCESS
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `netfault cluster --cluster FILE args...` from the host namespace (bounded); its stdout.
fn cluster_cmd(nf: &Netfault, file: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = cluster::run_cluster(None, &nf.bin, file, args, Duration::from_secs(60))?;
    if !out.status.success() {
        bail!(
            "netfault cluster {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// m[j][x]: whether UDP (v4) from node j arrives at node x; `None` on the diagonal. All 20
/// bursts at once, each to a port of its own.
fn reach_matrix(hosts: &[Host]) -> Result<Vec<Vec<Option<bool>>>> {
    let n = hosts.len();
    let mut m = vec![vec![None; n]; n];
    for ((j, x, _), ok) in cluster::reach(hosts, &[false])? {
        m[j][x] = Some(ok);
    }
    Ok(m)
}

/// The matrix as a grid: rows send, columns receive.
fn print_grid(m: &[Vec<Option<bool>>]) {
    let n = m.len();
    let head: String = (1..=n).map(|i| format!(" n{i}")).collect();
    println!("    from \\ to {head}");
    for (j, row) in m.iter().enumerate() {
        let cells: String = row
            .iter()
            .map(|c| match c {
                None => "  -",
                Some(true) => " ok",
                Some(false) => "  x",
            })
            .collect();
        println!("    n{}        {cells}", j + 1);
    }
}

/// The host's letter: the last part of its namespace name.
fn short(h: &Host) -> &str {
    h.ns.rsplit('-').next().unwrap_or(&h.ns)
}

/// `connect()` from `from` to `dst`, bounded by [`CONNECT_WAIT`]: its result and how long it
/// took.
fn connect_timed(
    from: &Host,
    dst: std::net::SocketAddr,
) -> Result<(io::Result<TcpStream>, Duration)> {
    lab::run_in(&from.ns, move || {
        let t = Instant::now();
        let r = TcpStream::connect_timeout(&dst, CONNECT_WAIT);
        (r, t.elapsed())
    })
}

/// One line per connect: `TCP a -> c (v4) connect(): refused (ECONNREFUSED) after 0.2 ms`.
fn connected(
    from: &Host,
    to: &Host,
    v6: bool,
    r: &io::Result<TcpStream>,
    took: Duration,
) -> String {
    let what = match r {
        Ok(_) => "connected".to_owned(),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            "refused (ECONNREFUSED)".to_owned()
        }
        Err(e) if e.kind() == io::ErrorKind::TimedOut => "timed out (no answer)".to_owned(),
        Err(e) => format!("failed ({e})"),
    };
    format!(
        "TCP {} -> {} ({}) connect(): {what} after {:.1} ms",
        short(from),
        short(to),
        if v6 { "v6" } else { "v4" },
        took.as_secs_f64() * 1e3
    )
}

fn udp(from: &Host, to: &Host, v6: bool, count: u32) -> Result<UdpReport> {
    UdpBurst::new(count).run(&from.ns, &to.ns, to.sock(v6, PORT))
}

/// One line per burst: `UDP a -> b (v4)  2000 sent, 1400 received, 0 duplicates`.
fn flow(from: &Host, to: &Host, v6: bool, r: &UdpReport) -> String {
    format!(
        "UDP {} -> {} ({}): {:>5} sent, {:>5} received, {:>4} duplicates, {:>5} lost",
        short(from),
        short(to),
        if v6 { "v6" } else { "v4" },
        r.sent,
        r.received(),
        r.duplicates(),
        r.lost()
    )
}
