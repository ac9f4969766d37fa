//! Part 5: command to wire for a cluster-wide partition (issue #18 point 4). A 5-node `halves`
//! partition and its heal, per transport (netns, agent over HTTP, SSH to an sshd in each
//! node's namespace), each next to the same cut made "the Jepsen way" (an nft table per node,
//! applied over the same transport, all nodes in parallel), interleaved run by run; then a
//! 32-node namespace lab: attach time, and the partition and heal over netns.
//!
//! "Command to wire" runs from the command's start until a [`Watch`] (UDP from every node to
//! every other, both families for 5 nodes, IPv4 for 32) shows the cut on every pair that the
//! grudge cuts, with every other pair still through (and, for the heal, every pair through
//! again). The times are the senders', written on the datagrams, so they are exact to one
//! watch period whenever the bench looks. The per-node spread comes twice: on the wire (last
//! pair minus first) and from the coordinator's own events (`spread_ns` of a short
//! `cluster run`).
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netfault_lab::{
    agents::Agents,
    cluster::{self, Grudge, node_name},
    lab::{Host, Lab, Netfault, run_in},
    probe::{mono_ns, percentiles},
    sshd::SshServers,
    watch::{Landed, Watch},
};

use crate::{Plan, report, sys};

/// Namespaces are `nfbc-<pid>-<n>-<role>`; a dead run's are removed at the next start.
const PREFIX: &str = "nfbc";
const WATCH_PORT: u16 = 4600;
const AGENT_PORT: u16 = 7070;
/// The Jepsen way's table in each node.
const TABLE: &str = "nfbench_jepsen";
/// The entries' lifetime: longer than the part, so nothing expires while measured (and a
/// killed bench's entries end on their own, with the namespaces gone anyway).
const TTL: &str = "10m";
/// Bounds one cut or heal, command and wire: far above anything measured, only a broken run
/// reaches it.
const CHANGE_LIMIT: Duration = Duration::from_secs(60);
/// Datagrams per second the watch may send, all pairs together: its period grows with the
/// pairs, so the watch costs the 2-CPU host about the same however many nodes there are.
const WATCH_PPS: u64 = 10_000;
const MIN_PERIOD: Duration = Duration::from_millis(5);

/// One cut and its heal, in ns from each command's start.
#[derive(Debug, Clone)]
struct Sample {
    cut: Landed,
    heal: Landed,
    /// When the command (all of them, for the per-node ways) had returned, as seen by polling.
    cut_ret: i64,
    heal_ret: i64,
}

/// How one way cuts and heals.
trait Way {
    fn name(&self) -> String;
    /// Starts the cut: the processes to wait for.
    fn cut(&self) -> Result<Running>;
    fn heal(&self) -> Result<Running>;
}

/// Processes of one change, killed and reaped if dropped before they finish.
struct Running {
    children: Vec<(String, Child)>,
    done: Vec<bool>,
    started: i64,
    finished: Option<i64>,
}

impl Running {
    fn new(started: i64) -> Self {
        Self {
            children: Vec::new(),
            done: Vec::new(),
            started,
            finished: None,
        }
    }

    fn push(&mut self, what: String, c: Child) {
        self.children.push((what, c));
        self.done.push(false);
    }

    /// Whether every process has ended; an error if one failed, with its stderr.
    fn poll(&mut self) -> Result<bool> {
        if self.finished.is_some() {
            return Ok(true);
        }
        for (i, (what, c)) in self.children.iter_mut().enumerate() {
            if self.done[i] {
                continue;
            }
            if let Some(st) = c.try_wait()? {
                self.done[i] = true;
                if !st.success() {
                    let mut err = String::new();
                    if let Some(mut e) = c.stderr.take() {
                        use std::io::Read as _;
                        let _ = e.read_to_string(&mut err);
                    }
                    bail!("{what}: {st}: {}", err.trim());
                }
            }
        }
        if self.done.iter().all(|d| *d) {
            self.finished = Some(mono_ns() - self.started);
        }
        Ok(self.finished.is_some())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `cmd` (from namespace `ns`, or ours) with `input` on its stdin (then closed).
fn spawn_with(ns: Option<&str>, mut cmd: Command, input: &str) -> Result<Child> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = match ns {
        Some(ns) => run_in(ns, || cmd.spawn())?,
        None => cmd.spawn(),
    }
    .context("spawn")?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(input.as_bytes()).context("write stdin")?;
    }
    Ok(child)
}

/// `netfault cluster --cluster FILE partition halves` and `heal`, from namespace `ns`.
struct NetfaultWay {
    bin: PathBuf,
    file: PathBuf,
    ns: Option<String>,
    label: &'static str,
}

impl NetfaultWay {
    fn start(&self, args: &[&str]) -> Result<Running> {
        let mut r = Running::new(mono_ns());
        let mut cmd = cluster::cluster_command(&self.bin, &self.file, args);
        cmd.stdout(Stdio::null());
        let child = cluster::spawn_in(self.ns.as_deref(), &mut cmd)?;
        r.push(format!("netfault cluster {}", args.join(" ")), child);
        Ok(r)
    }
}

impl Way for NetfaultWay {
    fn name(&self) -> String {
        format!("netfault cluster ({})", self.label)
    }

    fn cut(&self) -> Result<Running> {
        self.start(&["partition", "halves", "--ttl", TTL])
    }

    fn heal(&self) -> Result<Running> {
        self.start(&["heal"])
    }
}

/// The Jepsen way: on each node, a table that drops what the grudge says in the input hook
/// (Jepsen's `iptables -A INPUT -s ... -j DROP`), all nodes at once.
struct NftWay {
    hosts: Vec<Host>,
    grudge: Grudge,
    over: NftOver,
}

enum NftOver {
    /// `nft -f -` started in each node's namespace (setns, as the netns transport enters).
    Netns,
    /// `ssh root@NODE nft -f -` from the coordinator's namespace, a new connection each.
    Ssh { servers: SshServers, ctl_ns: String },
}

impl NftWay {
    fn script(&self, i: usize) -> String {
        let peers: Vec<usize> = self
            .grudge
            .get(&node_name(i))
            .into_iter()
            .flatten()
            .filter_map(|p| p.strip_prefix('n')?.parse::<usize>().ok())
            .map(|k| k - 1)
            .collect();
        let set = |v6: bool| {
            peers
                .iter()
                .map(|&k| self.hosts[k].ip(v6).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!(
            "table inet {TABLE} {{\n chain input {{\n  type filter hook input priority filter; \
             policy accept;\n"
        );
        if !peers.is_empty() {
            s.push_str(&format!("  ip saddr {{ {} }} drop\n", set(false)));
            s.push_str(&format!("  ip6 saddr {{ {} }} drop\n", set(true)));
        }
        s.push_str(" }\n}\n");
        s
    }

    fn each(&self, script: impl Fn(usize) -> String) -> Result<Running> {
        let mut r = Running::new(mono_ns());
        for (i, h) in self.hosts.iter().enumerate() {
            let what = format!("nft on {}", node_name(i));
            let child = match &self.over {
                NftOver::Netns => {
                    let mut c = Command::new("nft");
                    c.args(["-f", "-"]);
                    spawn_with(Some(&h.ns), c, &script(i))?
                }
                NftOver::Ssh { servers, ctl_ns } => {
                    let c = servers.ssh_command(&[], &format!("root@{}", h.v4), "nft -f -");
                    spawn_with(Some(ctl_ns), c, &script(i))?
                }
            };
            r.push(what, child);
        }
        Ok(r)
    }
}

impl Way for NftWay {
    fn name(&self) -> String {
        match self.over {
            NftOver::Netns => "nft per node (setns, parallel)".into(),
            NftOver::Ssh { .. } => "nft per node (one ssh each, parallel)".into(),
        }
    }

    fn cut(&self) -> Result<Running> {
        self.each(|i| self.script(i))
    }

    fn heal(&self) -> Result<Running> {
        self.each(|_| format!("delete table inet {TABLE}\n"))
    }
}

/// One cut and heal of `way`, each timed on the wire.
fn one(w: &Watch, cut: &[(usize, usize)], way: &dyn Way) -> Result<Sample> {
    sys::check_stop()?;
    let mut r = way.cut()?;
    let t0 = r.started;
    let c = w
        .wait_cut(t0, cut, CHANGE_LIMIT, || r.poll())
        .with_context(|| format!("{}: partition", way.name()))?;
    let cut_ret = r.finished.unwrap_or(0);
    drop(r);
    sys::check_stop()?;
    let mut r = way.heal()?;
    let t0 = r.started;
    let h = w
        .wait_healed(t0, cut, CHANGE_LIMIT, || r.poll())
        .with_context(|| format!("{}: heal", way.name()))?;
    Ok(Sample {
        cut: c,
        heal: h,
        cut_ret,
        heal_ret: r.finished.unwrap_or(0),
    })
}

/// `runs` rounds, each way once per round (interleaved: load drifts alike for all).
fn measure(
    w: &Watch,
    cut: &[(usize, usize)],
    ways: &[&dyn Way],
    runs: usize,
) -> Result<Vec<Vec<Sample>>> {
    let mut out = vec![Vec::new(); ways.len()];
    for _ in 0..runs {
        for (i, way) in ways.iter().enumerate() {
            out[i].push(one(w, cut, *way)?);
        }
    }
    Ok(out)
}

/// The ordered pairs `grudge` cuts among `n` nodes.
fn cut_pairs(grudge: &Grudge, n: usize) -> Result<Vec<(usize, usize)>> {
    Ok(cluster::expected(grudge, n)?
        .into_iter()
        .filter(|(_, reach)| !reach)
        .map(|(p, _)| p)
        .collect())
}

/// The watch's period for `flows` (pair, family) flows: [`WATCH_PPS`] in all, at least
/// [`MIN_PERIOD`].
fn period_for(flows: usize) -> Duration {
    let ns = (flows as u64).saturating_mul(1_000_000_000) / WATCH_PPS;
    Duration::from_nanos(ns).max(MIN_PERIOD)
}

/// A directory of its own under the temp dir (cluster files, events), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!("nfbench-cluster-{}", std::process::id()));
        if p.exists() {
            fs::remove_dir_all(&p).ok();
        }
        fs::create_dir(&p).with_context(|| format!("create {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
        Ok(Self(p))
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.0.join(name);
        fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `netfault --netns NS attach IFACE` on every host, as many at once as there are CPUs (more
/// only thrash: loading and verifying is CPU work): the wall time until all returned.
fn attach_all(nf: &Netfault, hosts: &[Host]) -> Result<Duration> {
    let t = Instant::now();
    for chunk in hosts.chunks(sys::online_cpus().max(1)) {
        sys::check_stop()?;
        let children: Vec<Child> = chunk
            .iter()
            .map(|h| {
                Command::new(&nf.bin)
                    .env_remove("SSH_CONNECTION")
                    .args(["--netns", &h.ns, "attach", &h.iface])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("spawn netfault attach")
            })
            .collect::<Result<_>>()?;
        let mut first_err = None;
        for (h, c) in chunk.iter().zip(children) {
            let out = netfault_lab::lab::wait_bounded(c, Duration::from_secs(120))?;
            if !out.status.success() && first_err.is_none() {
                first_err = Some(format!(
                    "attach in {}: {}: {}",
                    h.ns,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        if let Some(e) = first_err {
            bail!(e);
        }
    }
    Ok(t.elapsed())
}

/// Detaches every host on the lab's teardown (before its namespaces go).
fn detach_on_teardown(lab: &mut Lab, nf: &Netfault, hosts: &[Host]) {
    for h in hosts {
        let (nf, ns) = (nf.clone(), h.ns.clone());
        lab.on_teardown(move || {
            let _ = nf.run(&ns, &["detach"]);
        });
    }
}

/// The first `cluster partition halves --json` (not timed: a node's first change may do more)
/// and its heal: the grudge it printed.
fn first_cut(way: &NetfaultWay) -> Result<Grudge> {
    let out = cluster::run_cluster(
        way.ns.as_deref(),
        &way.bin,
        &way.file,
        &["partition", "halves", "--ttl", TTL, "--json"],
        CHANGE_LIMIT,
    )?;
    ensure!(
        out.status.success(),
        "{}: first partition: {}: {}",
        way.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("partition --json output")?;
    let g: Grudge = serde_json::from_value(doc["grudge"].clone()).context("its grudge")?;
    let out = cluster::run_cluster(
        way.ns.as_deref(),
        &way.bin,
        &way.file,
        &["heal"],
        CHANGE_LIMIT,
    )?;
    ensure!(
        out.status.success(),
        "{}: first heal: {}",
        way.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(g)
}

/// `spread_ns` of each change of a `cluster run` of `halves`, `changes / 2` times on and off,
/// each `hold` long: the coordinator's own account of how far apart the nodes took it.
fn event_spreads(
    way: &NetfaultWay,
    dir: &TempDir,
    changes: usize,
    hold: Duration,
) -> Result<Vec<i64>> {
    let repeat = changes.div_ceil(2).max(1);
    let hold_ms = hold.as_millis().max(200);
    let mut text = format!(
        "lease = \"20s\"\n\n[[step]]\nname = \"spread\"\nat = \"0s\"\npartition = \
         \"halves\"\nfor = \"{hold_ms}ms\"\n"
    );
    if repeat > 1 {
        text.push_str(&format!(
            "repeat = {repeat}\nevery = \"{}ms\"\n",
            2 * hold_ms
        ));
    }
    let scen = dir.write(&format!("spread-{}.toml", way.label), &text)?;
    let events = dir.0.join(format!("events-{}.jsonl", way.label));
    let limit = Duration::from_millis(2 * hold_ms as u64 * repeat as u64) + CHANGE_LIMIT;
    let scen_s = scen.to_str().context("temp paths are UTF-8")?;
    let events_s = events.to_str().context("temp paths are UTF-8")?;
    let out = cluster::run_cluster(
        way.ns.as_deref(),
        &way.bin,
        &way.file,
        &["run", scen_s, "--events", events_s],
        limit,
    )?;
    ensure!(
        out.status.success(),
        "{}: cluster run: {}: {}",
        way.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = fs::read_to_string(&events)?;
    let mut v = Vec::new();
    for l in text.lines() {
        let j: serde_json::Value = serde_json::from_str(l).context("an event line")?;
        if j["node"].is_null()
            && let Some(s) = j["spread_ns"].as_i64()
        {
            v.push(s);
        }
    }
    ensure!(!v.is_empty(), "{}: no spread_ns in the events", way.name());
    Ok(v)
}

/// One transport's rows: (way name, samples), and the coordinator's spreads.
struct Transport {
    name: &'static str,
    first: Duration,
    rows: Vec<(String, Vec<Sample>)>,
    /// Index into the part's rows of the nft way it is compared with.
    baseline: (&'static str, usize),
    spreads: Vec<i64>,
}

pub struct Figures {
    /// Load average at the part's start, and how long it took.
    load: String,
    took: Duration,
    period5: Duration,
    attach5: Duration,
    transports: Vec<Transport>,
    n32: Option<Big>,
    /// What could not be measured (transport: why): printed, and the part fails.
    pub failed: Vec<String>,
}

struct Big {
    runs: usize,
    period: Duration,
    attach: Duration,
    first: Duration,
    rows: Vec<(String, Vec<Sample>)>,
}

pub fn run(plan: &Plan) -> Result<Figures> {
    let (load, started) = (report::load_avg(), Instant::now());
    let nf = Netfault::next_to_current_exe().context("the netfault binary")?;
    let dir = TempDir::new()?;
    let mut lab = Lab::new(PREFIX)?;
    // Five nodes and the coordinator's namespace (agent and SSH), on one bridge.
    let mut hosts = lab.star(6)?;
    let ctl = hosts.pop().context("six hosts")?;
    detach_on_teardown(&mut lab, &nf, &hosts);
    let attach5 = attach_all(&nf, &hosts)?;
    progress(started, "5 nodes attached");
    let period5 = period_for(5 * 4 * 2);
    let w = Watch::start(&hosts, &[false, true], WATCH_PORT, period5)?;
    w.wait_flowing(Duration::from_secs(10))
        .context("the lab before any cut")?;
    let lab5 = Lab5 {
        nf: &nf,
        dir: &dir,
        hosts: &hosts,
        ctl: &ctl,
        w: &w,
    };
    let mut transports = Vec::new();
    let mut failed = Vec::new();
    // netns first: its grudge (the one `halves` gives) is every other transport's too.
    let grudge = match lab5.netns(plan) {
        Ok((t, g)) => {
            transports.push(t);
            Some(g)
        }
        Err(e) => {
            failed.push(format!("netns: {e:#}"));
            None
        }
    };
    progress(started, "netns measured");
    if let Some(g) = &grudge {
        for name in ["agent", "ssh"] {
            sys::check_stop()?;
            let r = if name == "agent" {
                lab5.agent(plan, g)
            } else {
                lab5.ssh(plan, g)
            };
            match r {
                Ok(t) => transports.push(t),
                Err(e) => failed.push(format!("{name}: {e:#}")),
            }
            progress(started, &format!("{name} measured"));
        }
    }
    w.stop()?;
    drop(lab);
    sys::check_stop()?;
    let n32 = if plan.cluster_big > 0 {
        let r = big(plan, &nf, &dir);
        progress(started, "32 nodes measured");
        r.map_err(|e| failed.push(format!("{} nodes: {e:#}", plan.cluster_big)))
            .ok()
    } else {
        None
    };
    Ok(Figures {
        load,
        took: started.elapsed(),
        period5,
        attach5,
        transports,
        n32,
        failed,
    })
}

/// A line on stderr: where the part is, and since when.
fn progress(started: Instant, what: &str) {
    eprintln!(
        "netfault-bench: cluster: {what} ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
}

/// The 5-node lab every transport shares: nodes attached once, one watch.
struct Lab5<'a> {
    nf: &'a Netfault,
    dir: &'a TempDir,
    hosts: &'a [Host],
    ctl: &'a Host,
    w: &'a Watch,
}

impl Lab5<'_> {
    /// The coordinator in the host's namespace, as `netfault cluster` on a lab host; nft
    /// entered the same way. Also the grudge `halves` gave.
    fn netns(&self, plan: &Plan) -> Result<(Transport, Grudge)> {
        let file = self
            .dir
            .write("netns.toml", &cluster::netns_cluster_text(self.hosts))?;
        let nfw = NetfaultWay {
            bin: self.nf.bin.clone(),
            file,
            ns: None,
            label: "netns",
        };
        let t = Instant::now();
        let grudge = first_cut(&nfw)?;
        let first = t.elapsed();
        let cut = cut_pairs(&grudge, self.hosts.len())?;
        let nft = NftWay {
            hosts: self.hosts.to_vec(),
            grudge: grudge.clone(),
            over: NftOver::Netns,
        };
        let s = measure(self.w, &cut, &[&nfw, &nft], plan.cluster_runs)?;
        let spreads = event_spreads(&nfw, self.dir, 4, hold_for(&s[0]))?;
        let mut it = s.into_iter();
        Ok((
            Transport {
                name: "netns",
                first,
                rows: vec![
                    (nfw.name(), it.next().unwrap_or_default()),
                    (nft.name(), it.next().unwrap_or_default()),
                ],
                baseline: ("netns", 1),
                spreads,
            },
            grudge,
        ))
    }

    /// One `netfault agent` per node, the coordinator in its own namespace. The agent runs no
    /// command but netfault's: its nft baseline is the netns one.
    fn agent(&self, plan: &Plan, grudge: &Grudge) -> Result<Transport> {
        let agents = Agents::start(
            &self.nf.bin,
            self.hosts,
            AGENT_PORT,
            &self.ctl.ns,
            Duration::from_secs(120),
        )?;
        let file = self
            .dir
            .write("agent.toml", &agents.cluster_text(self.hosts))?;
        let aw = NetfaultWay {
            bin: self.nf.bin.clone(),
            file,
            ns: Some(self.ctl.ns.clone()),
            label: "agent",
        };
        let t = Instant::now();
        ensure!(
            first_cut(&aw)? == *grudge,
            "the agents' halves is another grudge"
        );
        let first = t.elapsed();
        let cut = cut_pairs(grudge, self.hosts.len())?;
        let s = measure(self.w, &cut, &[&aw], plan.cluster_runs)?;
        let spreads = event_spreads(&aw, self.dir, 4, hold_for(&s[0]))?;
        Ok(Transport {
            name: "agent",
            first,
            rows: vec![(aw.name(), s.into_iter().next().unwrap_or_default())],
            baseline: ("netns", 1),
            spreads,
        })
    }

    /// An sshd in each node's namespace, the coordinator (and every ssh) in its own. The
    /// servers stop (with the nft way that holds them) before the lab detaches and goes.
    fn ssh(&self, plan: &Plan, grudge: &Grudge) -> Result<Transport> {
        let mut servers = SshServers::new()?;
        for h in self.hosts {
            servers.start(&h.ns, &[std::net::SocketAddr::new(h.v4.into(), 22)])?;
        }
        let opts: Vec<String> = servers
            .client_options()
            .iter()
            .map(|o| format!("{o:?}"))
            .collect();
        let text = cluster::cluster_text(self.hosts, |_, h, lines| {
            lines.extend([
                format!("ssh = \"root@{}\"", h.v4),
                format!("ssh_options = [{}]", opts.join(", ")),
                format!("netfault = {:?}", self.nf.bin.display().to_string()),
            ]);
        });
        let file = self.dir.write("ssh.toml", &text)?;
        let sw = NetfaultWay {
            bin: self.nf.bin.clone(),
            file,
            ns: Some(self.ctl.ns.clone()),
            label: "ssh",
        };
        let nft = NftWay {
            hosts: self.hosts.to_vec(),
            grudge: grudge.clone(),
            over: NftOver::Ssh {
                servers,
                ctl_ns: self.ctl.ns.clone(),
            },
        };
        let t = Instant::now();
        ensure!(
            first_cut(&sw)? == *grudge,
            "the SSH nodes' halves is another grudge"
        );
        let first = t.elapsed();
        let cut = cut_pairs(grudge, self.hosts.len())?;
        let s = measure(self.w, &cut, &[&sw, &nft], plan.cluster_ssh_runs)?;
        let spreads = event_spreads(&sw, self.dir, 2, hold_for(&s[0]))?;
        let mut it = s.into_iter();
        Ok(Transport {
            name: "ssh",
            first,
            rows: vec![
                (sw.name(), it.next().unwrap_or_default()),
                (nft.name(), it.next().unwrap_or_default()),
            ],
            baseline: ("ssh", 1),
            spreads,
        })
    }
}

/// How long a `cluster run` step holds: longer than the slowest measured command, so a change
/// is done before the next.
fn hold_for(s: &[Sample]) -> Duration {
    let slowest = s
        .iter()
        .map(|x| x.cut_ret.max(x.heal_ret).max(x.cut.all()).max(x.heal.all()))
        .max()
        .unwrap_or(0);
    Duration::from_nanos(slowest.max(0) as u64 * 5 / 4) + Duration::from_millis(100)
}

/// The 32-node namespace lab: attach (all at once), then partitions over netns next to nft.
fn big(plan: &Plan, nf: &Netfault, dir: &TempDir) -> Result<Big> {
    let n = plan.cluster_big;
    let mut lab = Lab::new(PREFIX)?;
    let hosts = lab.star(u8::try_from(n).context("at most 64 nodes")?)?;
    detach_on_teardown(&mut lab, nf, &hosts);
    sys::check_stop()?;
    let attach = attach_all(nf, &hosts)?;
    let period = period_for(n * (n - 1));
    let w = Watch::start(&hosts, &[false], WATCH_PORT, period)?;
    w.wait_flowing(Duration::from_secs(20))
        .context("the 32-node lab before any cut")?;
    let file = dir.write("netns32.toml", &cluster::netns_cluster_text(&hosts))?;
    let nfw = NetfaultWay {
        bin: nf.bin.clone(),
        file,
        ns: None,
        label: "netns",
    };
    let t = Instant::now();
    let grudge = first_cut(&nfw)?;
    let first = t.elapsed();
    let cut = cut_pairs(&grudge, n)?;
    let nft = NftWay {
        hosts: hosts.clone(),
        grudge,
        over: NftOver::Netns,
    };
    let runs = plan.cluster_big_runs;
    let s = measure(&w, &cut, &[&nfw, &nft], runs)?;
    w.stop()?;
    let mut it = s.into_iter();
    Ok(Big {
        runs,
        period,
        attach,
        first,
        rows: vec![
            (nfw.name(), it.next().unwrap_or_default()),
            (nft.name(), it.next().unwrap_or_default()),
        ],
    })
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn ms(ns: f64) -> String {
    if ns >= 10e9 {
        format!("{:.1} s", ns / 1e9)
    } else if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else {
        format!("{:.0} ms", ns / 1e6)
    }
}

/// p50 and p99 of one field.
fn p50_99(s: &[Sample], f: impl Fn(&Sample) -> i64) -> (f64, f64) {
    let v: Vec<f64> = s.iter().map(|x| f(x) as f64).collect();
    let p = percentiles(&v, &[0.5, 0.99]);
    (p[0], p[1])
}

fn row(transport: &str, way: &str, s: &[Sample]) {
    let (c50, c99) = p50_99(s, |x| x.cut.all());
    let (h50, h99) = p50_99(s, |x| x.heal.all());
    let (cr, _) = p50_99(s, |x| x.cut_ret);
    let (hr, _) = p50_99(s, |x| x.heal_ret);
    let (cs, _) = p50_99(s, |x| x.cut.spread());
    let (hs, _) = p50_99(s, |x| x.heal.spread());
    println!(
        "{transport:<9} {way:<40} {:>3} {:>17} {:>17} {:>17} {:>17}",
        s.len(),
        format!("{} / {}", ms(c50), ms(c99)),
        format!("{} / {}", ms(h50), ms(h99)),
        format!("{} / {}", ms(cr), ms(hr)),
        format!("{} / {}", ms(cs), ms(hs)),
    );
}

fn header_row() {
    println!(
        "{:<9} {:<40} {:>3} {:>17} {:>17} {:>17} {:>17}",
        "transport",
        "way",
        "n",
        "cut p50 / p99",
        "heal p50 / p99",
        "returned cut/heal",
        "wire spread c/h",
    );
}

fn p50(s: &[Sample], f: impl Fn(&Sample) -> i64) -> f64 {
    p50_99(s, f).0
}

/// `met` or `NOT MET` for `ratio <= max`.
fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT MET" }
}

pub fn report(plan: &Plan, f: &Figures) {
    println!();
    println!(
        "5. cluster: command to wire, 5-node `halves` (n1,n2 | n3,n4,n5: 12 ordered pairs cut) \
         and its heal, n runs per way, ways interleaved run by run; load average {} at the \
         part's start, {} at its end, {:.0} s in all",
        f.load,
        report::load_avg(),
        f.took.as_secs_f64()
    );
    println!(
        "(from the command's start until a UDP watch shows the cut on every cut pair with every \
         other pair through, both families; heal: every pair through again. Watch: every node to \
         every other every {:?}, times written by the senders, exact to one period. \"returned\": \
         when the command (every per-node command) had exited; \"wire spread\": last pair minus \
         first. nft: a table per node dropping the grudge's peers in the input hook, Jepsen's \
         iptables INPUT DROP, applied to all nodes at once over the transport)",
        f.period5
    );
    println!(
        "attach, 5 namespaces (`netfault --netns NS attach` each, {} at once): {}",
        sys::online_cpus(),
        ms(f.attach5.as_nanos() as f64)
    );
    header_row();
    let mut nft_p50 = BTreeMap::new();
    for t in &f.transports {
        for (i, (way, s)) in t.rows.iter().enumerate() {
            row(t.name, way, s);
            if i > 0 {
                nft_p50.insert(
                    (t.name, i),
                    (p50(s, |x| x.cut.all()), p50(s, |x| x.heal.all())),
                );
            }
        }
    }
    if f.transports.iter().any(|t| t.name == "agent") {
        println!(
            "agent     (no nft row: the agent runs nothing but netfault, so it is compared with \
             the netns nft row)"
        );
    }
    println!();
    println!(
        "first partition and heal per transport (not in the rows: a node's first change may \
         do more):"
    );
    for t in &f.transports {
        println!("  {:<6} {}", t.name, ms(t.first.as_nanos() as f64));
    }
    println!(
        "spread_ns in the coordinator's events (`cluster run` of halves on and off; node ts \
         latest minus earliest):"
    );
    for t in &f.transports {
        let v: Vec<f64> = t.spreads.iter().map(|s| *s as f64).collect();
        let p = percentiles(&v, &[0.0, 0.5, 1.0]);
        println!(
            "  {:<6} {} changes: min {} p50 {} max {}",
            t.name,
            v.len(),
            ms(p[0]),
            ms(p[1]),
            ms(p[2])
        );
    }
    let mut netns_cut5 = None;
    println!();
    println!("targets (issue #18 point 5; ratios of p50 command to wire, same run):");
    for t in &f.transports {
        let Some((_, s)) = t.rows.first() else {
            continue;
        };
        let (c, h) = (p50(s, |x| x.cut.all()), p50(s, |x| x.heal.all()));
        if t.name == "netns" {
            netns_cut5 = Some(c);
        }
        let Some(&(bc, bh)) = nft_p50.get(&t.baseline) else {
            continue;
        };
        let (max, aim) = match t.name {
            "ssh" => (1.0, None),
            _ => (1.0, Some(0.5)),
        };
        for (what, x, b) in [("partition", c, bc), ("heal", h, bh)] {
            let r = x / b;
            println!(
                "  {:<6} {what:<9} netfault/nft ({} nft) {r:.2}x, target <= {max:.1}x{}: {}",
                t.name,
                t.baseline.0,
                aim.map_or(String::new(), |a| format!(" (aim {a:.1}x)")),
                verdict(r <= max)
            );
        }
    }
    if let Some(b) = &f.n32 {
        println!();
        println!(
            "32-node namespace lab (netns transport, halves: 512 ordered pairs cut), {} runs per \
             way; watch: IPv4 only, every {:?}",
            b.runs, b.period
        );
        println!(
            "attach, 32 namespaces ({} at once): {}; first partition and heal: {}",
            sys::online_cpus(),
            ms(b.attach.as_nanos() as f64),
            ms(b.first.as_nanos() as f64)
        );
        header_row();
        for (way, s) in &b.rows {
            row("netns32", way, s);
        }
        if let (Some((_, s)), Some(c5)) = (b.rows.first(), netns_cut5) {
            let c = p50(s, |x| x.cut.all());
            println!(
                "  32 nodes: partition p50 {} = {:.2}x the 5-node p50 ({}), target <= 3x: {}",
                ms(c),
                c / c5,
                ms(c5),
                verdict(c / c5 <= 3.0)
            );
            println!(
                "  32 nodes: partition p50 {}, target under 1 s on this host: {}",
                ms(c),
                verdict(c < 1e9)
            );
        }
    }
    for e in &f.failed {
        println!("NOT MEASURED: {e}");
    }
    let _ = plan;
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn hosts(n: u8) -> Vec<Host> {
        (1..=n)
            .map(|i| Host {
                ns: format!("x{i}"),
                iface: "eth0".into(),
                v4: Ipv4Addr::new(192, 0, 2, i),
                v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)),
            })
            .collect()
    }

    #[test]
    fn the_nft_way_drops_what_the_grudge_says_in_both_families() {
        let grudge: Grudge =
            serde_json::from_str(r#"{"n1":["n3"],"n2":[],"n3":["n1","n2"]}"#).expect("a grudge");
        let way = NftWay {
            hosts: hosts(3),
            grudge,
            over: NftOver::Netns,
        };
        let s = way.script(0);
        assert!(s.contains("ip saddr { 192.0.2.3 } drop"), "{s}");
        assert!(s.contains("ip6 saddr { 2001:db8::3 } drop"), "{s}");
        assert!(s.contains("hook input"), "{s}");
        assert!(!way.script(1).contains("saddr"), "{}", way.script(1));
        let s = way.script(2);
        assert!(s.contains("ip saddr { 192.0.2.1, 192.0.2.2 } drop"), "{s}");
        assert!(
            s.contains("ip6 saddr { 2001:db8::1, 2001:db8::2 } drop"),
            "{s}"
        );
    }

    #[test]
    fn the_watch_period_keeps_its_datagram_rate_with_a_floor() {
        // 5 nodes, both families: 40 flows would allow 4 ms; the floor is 5 ms.
        assert_eq!(period_for(40), MIN_PERIOD);
        // 32 nodes, IPv4: 992 flows at 10,000 datagrams per second.
        assert_eq!(period_for(992), Duration::from_micros(99_200));
    }
}
