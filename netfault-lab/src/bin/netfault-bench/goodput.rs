//! Part 3: what attaching costs TCP. iperf3 (one stream) across a veth pair between two
//! namespaces, with nothing attached, and with netfault attached on both ends through the
//! `netfault` binary (so with its protections, default TTL and the hooks it picks): with no
//! rules, with 1k egress drop rules that match nothing of the stream, and with 1k ingress drop
//! rules that match nothing either. Configurations are interleaved, the order rotating each
//! round; medians are reported, and ratios are medians of each round's own ratio.
//!
//! The last configuration shows the price of XDP on a veth: an ingress drop rule makes the CLI
//! add XDP on each end, and an XDP program on a veth turns off TSO/GSO on its peer, so TCP is
//! segmented in software. It has no target: it is the trade the hook choice makes only while
//! such a rule is live.
use std::{
    io::Write as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netfault_lab::lab::Netfault;

use crate::{Plan, droprate, median, sys, topo::Topology};

const TX_ADDR: &str = "192.0.2.1";
const RX_ADDR: &str = "192.0.2.2";
const PORT: &str = "5201";
/// Rules in the rule-set configurations.
const RULES: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Config {
    Nothing,
    Idle,
    EgressRules,
    IngressRules,
}

impl Config {
    pub const ALL: [Config; 4] = [
        Config::Nothing,
        Config::Idle,
        Config::EgressRules,
        Config::IngressRules,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Config::Nothing => "nothing attached",
            Config::Idle => "attached (CLI), no rules",
            Config::EgressRules => "1k egress drop rules, no match",
            Config::IngressRules => "1k ingress drop rules, no match",
        }
    }

    /// The goodput ratio against nothing attached this configuration must reach, and the aim.
    pub fn target(self) -> Option<(f64, f64)> {
        match self {
            Config::Idle | Config::EgressRules => Some((0.90, 0.97)),
            Config::Nothing | Config::IngressRules => None,
        }
    }
}

pub struct Row {
    pub config: Config,
    /// How the receiving end's ingress is hooked (from `status --json`), "-" when detached.
    pub hooks: String,
    pub gbps: Vec<f64>,
    /// Goodput per CPU second the two iperf3 ends used (iperf3's own CPU accounting):
    /// what a shared machine's load moves less than the goodput itself.
    pub gbit_per_cpu: Vec<f64>,
}

/// The iperf3 server in the receiving namespace, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// 1k drop rules in `dir` for hosts and ports the stream never uses (documentation ranges).
fn ruleset(dir: &str) -> String {
    let mut s = String::new();
    for i in 0..RULES {
        let net = if i % 2 == 0 {
            "198.51.100"
        } else {
            "203.0.113"
        };
        s += &format!(
            "[[rule]]\nname = \"r{i}\"\ndir = \"{dir}\"\ndst = [\"{net}.{}\"]\nproto = \"udp\"\n\
             dport = \"{}\"\ndrop = 1\n\n",
            (i / 2) % 256,
            1000 + i / 512
        );
    }
    s
}

struct Goodput<'a> {
    plan: &'a Plan,
    topo: Topology,
    cli: Netfault,
    files: [(Config, std::path::PathBuf); 2],
    secs: u32,
    omit: u32,
    two_cpus: bool,
}

impl Goodput<'_> {
    fn ends(&self) -> [(&str, &str); 2] {
        [
            (&self.topo.tx_ns, &self.topo.tx_if),
            (&self.topo.rx_ns, &self.topo.rx_if),
        ]
    }

    /// Puts `c` in place on both ends; returns the receiver's ingress hook.
    fn setup(&self, c: Config) -> Result<String> {
        if c == Config::Nothing {
            return Ok("-".into());
        }
        for (ns, ifname) in self.ends() {
            self.cli.run(ns, &["attach", ifname])?;
            if let Some((_, f)) = self.files.iter().find(|(k, _)| *k == c) {
                let f = f.to_string_lossy();
                self.cli.run(ns, &["apply", &f])?;
            }
        }
        let st = self.cli.json(&self.topo.rx_ns, &["status", "--json"])?;
        Ok(droprate::ingress_desc(&st))
    }

    fn teardown(&self, c: Config) -> Result<()> {
        if c == Config::Nothing {
            return Ok(());
        }
        for (ns, _) in self.ends() {
            self.cli.run(ns, &["detach"])?;
        }
        Ok(())
    }

    /// One iperf3 run: received goodput in Gbit/s, and per CPU second of both ends. The
    /// server takes a moment to listen again after each test: a refused or busy start is
    /// tried again, a few times.
    fn measure(&self) -> Result<(f64, f64)> {
        for attempt in 1.. {
            match self.measure_once() {
                Err(e) if attempt < 5 && format!("{e:#}").contains("unable to") => {
                    std::thread::sleep(Duration::from_millis(300));
                }
                r => return r,
            }
        }
        unreachable!("the loop returns")
    }

    fn measure_once(&self) -> Result<(f64, f64)> {
        sys::check_stop()?;
        let secs = self.secs.to_string();
        let omit = self.omit.to_string();
        let mut args = vec![
            "netns",
            "exec",
            &self.topo.tx_ns,
            "iperf3",
            "-c",
            RX_ADDR,
            "-p",
            PORT,
            "-t",
            &secs,
            "-O",
            &omit,
            "-J",
        ];
        if self.two_cpus {
            // Client on CPU 0, server on CPU 1: less noise from the scheduler.
            args.extend(["-A", "0,1"]);
        }
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run iperf3 (the client)")?;
        let limit = Duration::from_secs(u64::from(self.secs + self.omit) + 15);
        let out = wait_bounded(child, limit)?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "parse iperf3 output: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if let Some(e) = v["error"].as_str() {
            bail!("iperf3: {e}");
        }
        let gbps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .context("iperf3 gave no end.sum_received.bits_per_second")?;
        let cpu = &v["end"]["cpu_utilization_percent"];
        let cpus = (cpu["host_total"].as_f64().unwrap_or(f64::NAN)
            + cpu["remote_total"].as_f64().unwrap_or(f64::NAN))
            / 100.0;
        Ok((gbps, gbps / cpus))
    }

    fn round(&self, c: Config, row: &mut Row) -> Result<()> {
        let hooks = self.setup(c);
        let res = hooks.and_then(|h| {
            row.hooks = h;
            self.measure()
        });
        let down = self.teardown(c);
        let (gbps, per_cpu) = res?;
        row.gbps.push(gbps);
        row.gbit_per_cpu.push(per_cpu);
        down
    }
}

/// Waits for `child` at most `limit`, then kills it.
fn wait_bounded(mut child: Child, limit: Duration) -> Result<std::process::Output> {
    let t0 = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("iperf3 did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(plan: &Plan) -> Result<Vec<Row>> {
    let topo = Topology::create()?;
    for (ns, ifname, addr) in [
        (&topo.tx_ns, &topo.tx_if, TX_ADDR),
        (&topo.rx_ns, &topo.rx_if, RX_ADDR),
    ] {
        crate::topo::run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                ifname,
            ],
        )?;
    }
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let mut files = Vec::new();
    for (c, d) in [
        (Config::EgressRules, "egress"),
        (Config::IngressRules, "ingress"),
    ] {
        let p = dir.join(format!("netfault-bench-{pid}-{d}.toml"));
        std::fs::File::create(&p)
            .and_then(|mut f| f.write_all(ruleset(d).as_bytes()))
            .with_context(|| format!("write {}", p.display()))?;
        files.push((c, p));
    }
    let [a, b]: [(Config, std::path::PathBuf); 2] = files
        .try_into()
        .map_err(|_| anyhow::anyhow!("two rule-set files"))?;
    let g = Goodput {
        plan,
        topo,
        cli: droprate::cli()?,
        files: [a, b],
        secs: if plan.quick { 1 } else { 3 },
        omit: if plan.quick { 0 } else { 1 },
        two_cpus: sys::online_cpus() >= 2,
    };
    let res = run_rounds(&g);
    for (_, p) in &g.files {
        let _ = std::fs::remove_file(p);
    }
    res
}

fn run_rounds(g: &Goodput<'_>) -> Result<Vec<Row>> {
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &g.topo.rx_ns,
            "iperf3",
            "-s",
            "-B",
            RX_ADDR,
            "-p",
            PORT,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run iperf3 (the server; Debian package iperf3)")?;
    let _server = Server(server);
    // The server listens within a moment; a first short run also fills the neighbour tables.
    let t0 = Instant::now();
    loop {
        let probe = Command::new("ip")
            .args(["netns", "exec", &g.topo.tx_ns, "iperf3", "-c", RX_ADDR])
            .args(["-p", PORT, "-t", "1", "-J"])
            .stdin(Stdio::null())
            .output()?;
        if probe.status.success() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!(
                "the iperf3 server did not answer within 10 s: {}",
                String::from_utf8_lossy(&probe.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut rows: Vec<Row> = Config::ALL
        .iter()
        .map(|&config| Row {
            config,
            hooks: String::new(),
            gbps: Vec::new(),
            gbit_per_cpu: Vec::new(),
        })
        .collect();
    for round in 0..g.plan.rounds {
        for i in 0..rows.len() {
            let k = (i + round) % rows.len();
            let c = rows[k].config;
            g.round(c, &mut rows[k])
                .with_context(|| format!("goodput round {}, {}", round + 1, c.label()))?;
        }
    }
    Ok(rows)
}

pub fn report(plan: &Plan, rows: &[Row]) {
    println!();
    println!(
        "3. TCP goodput across a veth pair: iperf3, one stream, {} s per run ({} s omitted), \
         median of {} interleaved rounds; netfault attached on both ends through the CLI",
        if plan.quick { 1 } else { 3 },
        if plan.quick { 0 } else { 1 },
        plan.rounds
    );
    println!(
        "   (rules: {RULES} drop rules to documentation hosts and UDP ports the stream never uses, \
         applied on both ends)"
    );
    println!(
        "   (\"vs none\": the median over rounds of this run / the run with nothing attached in \
         the same round, so what drifts between rounds cancels)"
    );
    let med = |r: &Row| median(&mut r.gbps.clone());
    let med_cpu = |r: &Row| median(&mut r.gbit_per_cpu.clone());
    let nothing = rows.iter().find(|r| r.config == Config::Nothing);
    // Round i of every row is at index i: each round runs every configuration once.
    let paired = |v: &[f64], base: Option<&[f64]>| {
        let mut q: Vec<f64> = base
            .map(|b| v.iter().zip(b).map(|(x, y)| x / y).collect())
            .unwrap_or_default();
        median(&mut q)
    };
    println!(
        "{:<34} {:<28} {:>7} {:>6} {:>6} {:>8} {:>8} {:>8}  target (goodput vs none)",
        "config", "receiver's ingress", "Gbit/s", "min", "max", "vs none", "Gb/cpu-s", "vs none"
    );
    for r in rows {
        let m = med(r);
        let mut v = r.gbps.clone();
        v.sort_by(f64::total_cmp);
        let ratio = paired(&r.gbps, nothing.map(|n| &n.gbps[..]));
        let target = match r.config.target() {
            Some((t, aim)) => format!(
                ">= {t:.2}x (aim {aim:.2}x): {}",
                if ratio >= t { "met" } else { "NOT MET" }
            ),
            None if r.config == Config::IngressRules => {
                "none (XDP on a veth: its peer segments in software)".into()
            }
            None => String::new(),
        };
        let c = med_cpu(r);
        println!(
            "{:<34} {:<28} {:>7.2} {:>6.2} {:>6.2} {:>7.2}x {:>8.2} {:>7.2}x  {}",
            r.config.label(),
            r.hooks,
            m,
            v.first().copied().unwrap_or(f64::NAN),
            v.last().copied().unwrap_or(f64::NAN),
            ratio,
            c,
            paired(&r.gbit_per_cpu, nothing.map(|n| &n.gbit_per_cpu[..])),
            target
        );
    }
}
