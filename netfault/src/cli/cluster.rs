//! `netfault cluster --cluster FILE partition|impair|pause|resume|heal|run|status|stats`
use std::{io::Write as _, path::PathBuf};

use netfault::{
    cluster::{
        Cluster, Impair, Scenario, StepAction, Topology,
        coordinator::{Coordinator, NodeMeasure, PairReport},
        events::{Log, verify_line},
        plan,
        record::{self, Record, Recorded},
        run::{self as cluster_run, Ended},
        verify::{self, Fault, Observed, Verdict},
    },
    spec::{Kind, SpecError, Ttl},
};

use super::{Done, args::ActionArgs};

/// Partition and impair a lab cluster: every node of a cluster file at once, all or nothing,
/// by hand or from a scenario file, over netns, agent (HTTP) or SSH transports.
#[derive(clap::Args)]
pub struct Args {
    /// The cluster file (`[[node]]`: name, addrs, iface, and one transport).
    #[arg(long, value_name = "FILE")]
    pub cluster: PathBuf,
    #[command(subcommand)]
    pub cmd: ClusterCmd,
}

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// Cut the cluster as TOPOLOGY says (halves, random-halves, isolate[:NODE],
    /// majorities-ring, minority-third, bridge, complete, or components such as n1,n2|n3).
    Partition {
        #[arg(value_name = "TOPOLOGY")]
        topology: String,
        /// Entries are named NAME.from-PEER.v4/.v6 (default: from the topology).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime of the entries (default 10m; `none`: no expiry).
        #[arg(long, value_name = "DURATION", value_parser = super::args::parse_ttl, allow_hyphen_values = true)]
        ttl: Option<Ttl>,
        /// Seed of random topologies (printed when not given).
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
        /// Cut only TCP, and of it only connections being opened (`new`: SYN without ACK;
        /// established connections keep flowing) or only the other segments (`established`).
        #[arg(long, value_name = "STATE", value_parser = super::args::parse_conn)]
        conn: Option<netfault::spec::Conn>,
        /// Print `{"name", "topology", "grudge"}`.
        #[arg(long)]
        json: bool,
        /// Each node answers what it drops (`--reject [KIND]`, `--reject-rate`).
        #[command(flatten)]
        reject: super::args::RejectArgs,
        #[command(flatten)]
        verify: VerifyArgs,
    },
    /// Impair the traffic from every --from node to every --to node: loss and duplication at
    /// the receivers' ingress (per wire packet, invisible to the sender), delay, jitter and
    /// rate at the senders' egress.
    Impair {
        /// Sending nodes, comma-separated (`n1,n2`).
        #[arg(long, value_name = "NODES", value_delimiter = ',', required = true)]
        from: Vec<String>,
        /// Receiving nodes, comma-separated.
        #[arg(long, value_name = "NODES", value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// Only this protocol: tcp, udp, icmp (ICMPv6 for v6) or any.
        #[arg(long, default_value = "any", value_parser = super::args::parse_proto)]
        proto: netfault::spec::Proto,
        /// Only this source port or inclusive range (needs --proto tcp or udp).
        #[arg(long, value_name = "P|LO-HI", value_parser = super::args::parse_ports, allow_hyphen_values = true)]
        sport: Option<netfault::spec::PortRange>,
        /// Only this destination port or inclusive range (needs --proto tcp or udp).
        #[arg(long, value_name = "P|LO-HI", value_parser = super::args::parse_ports, allow_hyphen_values = true)]
        dport: Option<netfault::spec::PortRange>,
        /// Loss, duplication and the rest act at the receivers' ingress (after the wire);
        /// delay, jitter and rate at the senders' egress (needs fq there).
        #[command(flatten)]
        act: ActionArgs,
        /// Entries are named NAME.from-PEER.v4 (receivers) and NAME.to-PEER.v4 (senders).
        #[arg(long, default_value = "impair")]
        name: String,
        /// Lifetime of the entries (default 10m; `none`: no expiry).
        #[arg(long, value_name = "DURATION", value_parser = super::args::parse_ttl, allow_hyphen_values = true)]
        ttl: Option<Ttl>,
        /// Print `{"name", "nodes": {NODE: [ENTRY...]}}` (and `"verify"` with --verify).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        verify: VerifyArgs,
    },
    /// Check the faults this coordinator made live (its record, whatever the nodes hold) on
    /// the wire: every node probes every other (ICMP echo, listening for the others' requests),
    /// and each fault's pairs are set beside what was configured. A mismatch exits 3.
    Verify {
        /// The faults to check (default: every live one).
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// A `cluster measure --json` document taken while the cluster was healthy: the
        /// baseline of the round trips a delay shifts (without it delays are not verified).
        #[arg(long, value_name = "FILE")]
        baseline: Option<PathBuf>,
        /// Append a `verify` line per fault to this event log (`-`: stdout).
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Stop the nodes' processes (their `pause_target`) for a while, all at once: each node's
    /// host runs a watchdog that resumes it on the deadline, even if this command is killed.
    Pause(super::cluster_pause::PauseArgs),
    /// End `cluster pause`s at once: the nodes' processes run again.
    Resume(super::cluster_pause::ResumeArgs),
    /// Delete this tool's partitions and impairments by name on every node, or all of them.
    Heal {
        #[arg(value_name = "NAME")]
        names: Vec<String>,
    },
    /// Play a scenario file (steps at times, repeated) under a lease the coordinator renews:
    /// however the run ends (finished 0, Ctrl-C 130, SIGTERM 143, error 1), every step is
    /// healed; after kill -9, every node heals itself within the lease.
    Run {
        #[arg(value_name = "SCENARIO")]
        scenario: PathBuf,
        /// Write JSON lines, one per node change and step (`-`: stdout).
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// Seed of random topologies (default: the file's `seed`, else a fresh one, printed).
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
    },
    /// Per node: reachable, transport, attached interfaces, live faults.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Per node, each live fault's counters (matched, dropped, duplicated, passed, ...).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Every node probes every other node's addresses at once (ICMP echo or UDP, as `measure
    /// --probe`), or watches its live TCP traffic to them (`--passive`): the N x N matrix of
    /// round-trip times, and the advice per pair.
    Measure {
        /// What to send: `icmp` or `udp:PORT` (as `measure --probe`).
        #[arg(long, value_name = "KIND", default_value = "icmp")]
        probe: String,
        /// Send nothing: each node watches the TCP round trips of its own traffic to the other
        /// nodes for `--duration` (TCP timestamps and handshakes, as `measure` without
        /// `--probe`); a pair without TCP traffic meanwhile has no report.
        #[arg(long, conflicts_with_all = ["probe", "interval"])]
        passive: bool,
        /// Also advise for each pair as it would be under this rule-set file (as `measure
        /// --what-if`), folded into the pair's histogram.
        #[arg(long = "what-if", value_name = "FILE")]
        what_if: Option<std::path::PathBuf>,
        /// How long each node probes.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::args::parse_interval)]
        duration: std::time::Duration,
        /// The interval between probes to a peer.
        #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = super::args::parse_interval)]
        interval: std::time::Duration,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        advice: super::advise::AdviceArgs,
    },
}

/// `--verify` on `partition` and `impair`.
#[derive(clap::Args, Debug, Default)]
pub struct VerifyArgs {
    /// After the change, probe between every pair of nodes and check the wire shows what was
    /// configured (3 s of ICMP echo every 20 ms); a mismatch exits 3, naming the pairs.
    #[arg(long)]
    pub verify: bool,
    /// Append the `verify` lines to this event log (`-`: stdout). Needs --verify.
    #[arg(long, value_name = "FILE", requires = "verify")]
    pub events: Option<PathBuf>,
}

/// `plan::impair`'s relative fields as the flags that gave them.
fn impair_flag(e: netfault::cluster::coordinator::Error) -> anyhow::Error {
    match e {
        netfault::cluster::coordinator::Error::Spec(s) => {
            let f = match s.field.as_str() {
                "impair" | "name" => format!("--{}", s.field).replace("--impair", "impair"),
                // Keys are the file's (`duplicate_delay`), flags have dashes.
                f => format!("--{}", f.replace('_', "-")),
            };
            SpecError::new(f, s.msg).into()
        }
        e => e.into(),
    }
}

/// `n1,n2|n3` → `n1-n2_n3`: a rule name made of the topology; `cluster` if that is too long
/// to leave room for `.from-PEER.v6`.
fn default_name(topology: &str) -> String {
    let s: String = topology
        .chars()
        .map(|c| match c {
            '|' => '_',
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => c,
            _ => '-',
        })
        .collect();
    if s.is_empty() || s.len() > 32 {
        "cluster".into()
    } else {
        s
    }
}

/// A seed for a random topology that was given none: different on every run.
fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Adds `f` to the coordinator's record of live faults; a record that cannot be written is
/// reported, not fatal (the nodes have the faults; only `verify` needs the record).
fn remember(path: &std::path::Path, f: Recorded) {
    let mut r = Record::load(path);
    r.add(f);
    if let Err(e) = r.store(path) {
        let _ = writeln!(
            std::io::stderr(),
            "netfault: warning: cannot write the coordinator's record {}: {e} (`cluster verify` will not know this fault)",
            path.display()
        );
    }
}

/// What `verify` found, whole.
struct Verified {
    verdicts: Vec<Verdict>,
    /// Nodes that could not probe: (node, why).
    failed: Vec<(String, String)>,
}

impl Verified {
    fn json(&self) -> serde_json::Value {
        let failed: Vec<serde_json::Value> = self
            .failed
            .iter()
            .map(|(n, e)| serde_json::json!({"node": n, "error": e}))
            .collect();
        serde_json::json!({
            "ok": self.ok(),
            "probe": {
                // Each fault's own probe is in its verdict.
                "kinds": self.verdicts.iter().filter_map(|v| v.probe).collect::<std::collections::BTreeSet<_>>(),
                "duration_ms": verify::DURATION.as_millis() as u64,
                "interval_ms": verify::INTERVAL.as_millis() as u64,
            },
            "faults": self.verdicts,
            "failed": failed,
        })
    }

    fn ok(&self) -> bool {
        self.verdicts.iter().all(|v| v.ok)
    }

    fn text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        verify::text(&self.verdicts, out)?;
        for (n, e) in &self.failed {
            writeln!(out, "  node {n} could not probe: {e}")?;
        }
        Ok(())
    }

    /// Exit 3 on a mismatch, 1 when a node could not probe (and nothing mismatched).
    fn done(&self) -> anyhow::Result<Done> {
        if !self.ok() {
            let pairs: usize = self.verdicts.iter().map(|v| v.mismatches).sum();
            let _ = writeln!(
                std::io::stderr(),
                "netfault: the wire differs from the configuration on {pairs} pair(s) (exit 3)"
            );
            return Ok(Done::Mismatch);
        }
        if !self.failed.is_empty() {
            let f: Vec<String> = self
                .failed
                .iter()
                .map(|(n, e)| format!("{n}: {e}"))
                .collect();
            anyhow::bail!("not verified on every node: {}", f.join("; "));
        }
        Ok(Done::Ok)
    }
}

/// Probes and judges `faults` (with `others` live meanwhile), appending a `verify` line per
/// fault to `events`.
fn verify_now(
    coord: &Coordinator,
    faults: &[Fault],
    others: &[Fault],
    baseline: Option<&Observed>,
    events: Option<&std::path::Path>,
) -> anyhow::Result<Verified> {
    let mut log = match events {
        Some(p) => Log::append(p)
            .map_err(|e| SpecError::new("--events", format!("{}: {e}", p.display())))?,
        None => Log::none(),
    };
    let seen = coord.verify_probe(&verify::probes(faults), verify::INTERVAL, verify::DURATION);
    let verdicts: Vec<Verdict> = faults
        .iter()
        .map(|f| verify::judge(f, others, &coord.cluster, &seen, baseline))
        .collect();
    for v in &verdicts {
        log.write(&verify_line(std::time::SystemTime::now(), v, &[]))?;
    }
    Ok(Verified {
        verdicts,
        failed: seen.failed,
    })
}

/// The faults of the record, but `name` (of `kind`).
fn others(path: &std::path::Path, cluster: &Cluster, name: &str, kind: Kind) -> Vec<Fault> {
    Record::load(path)
        .live(&[])
        .into_iter()
        .filter(|f| !(f.name == name && f.kind == kind))
        .map(|f| fault_of(f, cluster))
        .collect()
}

fn fault_of(f: &Recorded, cluster: &Cluster) -> Fault {
    Fault::build(
        &f.name,
        f.kind,
        f.rules
            .iter()
            .flat_map(|(n, v)| v.iter().map(move |r| (n.as_str(), r))),
        cluster,
    )
}

/// A `cluster measure --json` document as the nodes' reports (`--baseline`), and what
/// probed them (`probe`; ICMP when absent).
fn baseline_file(
    path: &std::path::Path,
) -> anyhow::Result<(netfault::measure::probe::Kind, Vec<NodeMeasure>)> {
    let bad = |m: String| SpecError::new("--baseline", format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let nodes = doc["nodes"]
        .as_array()
        .ok_or_else(|| bad("no \"nodes\" list (not a `cluster measure --json` document)".into()))?;
    if doc["passive"] == true {
        return Err(bad(
            "a passive measurement (`cluster measure --passive`): a baseline for probes is taken with probes".into(),
        )
        .into());
    }
    let probe = match doc.get("probe") {
        None => netfault::measure::probe::Kind::Icmp,
        Some(p) => serde_json::from_value(p.clone()).map_err(|e| bad(format!("probe: {e}")))?,
    };
    let mut out = Vec::new();
    for n in nodes {
        let mut pairs = Vec::new();
        for p in n["pairs"].as_array().into_iter().flatten() {
            let pr = (|| -> Option<PairReport> {
                Some(PairReport {
                    to: p["to"].as_str()?.to_owned(),
                    addr: p["addr"].as_str()?.parse().ok()?,
                    report: serde_json::from_value(p["report"].clone()).ok()?,
                })
            })()
            .ok_or_else(|| bad(format!("a pair it cannot read: {p}")))?;
            pairs.push(pr);
        }
        out.push(NodeMeasure {
            node: n["node"].as_str().unwrap_or_default().to_owned(),
            transport: "baseline",
            error: n["error"].as_str().map(str::to_owned),
            pairs,
        });
    }
    Ok((probe, out))
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<Done> {
    if ns.is_some() {
        // Each node names its own namespace in the cluster file.
        return Err(SpecError::new("--netns", "does not apply to `cluster`").into());
    }
    let text = std::fs::read_to_string(&a.cluster)
        .map_err(|e| SpecError::new("FILE", format!("{}: {e}", a.cluster.display())))?;
    let cluster = Cluster::parse(&text)?;
    if let ClusterCmd::Run {
        scenario,
        events,
        seed,
    } = a.cmd
    {
        return run_scenario(cluster, &scenario, events.as_deref(), seed);
    }
    let coord = Coordinator::new(cluster)?;
    let rec = record::path_for(&a.cluster);
    let mut out = std::io::stdout().lock();
    let mut done = Done::Ok;
    match a.cmd {
        ClusterCmd::Run { .. } => unreachable!("handled above"),
        ClusterCmd::Impair {
            from,
            to,
            proto,
            sport,
            dport,
            act,
            name,
            ttl,
            json,
            verify: va,
        } => {
            let imp = Impair {
                from,
                to,
                act: act.actions(),
                traffic: netfault::cluster::Traffic {
                    proto,
                    sport: sport.unwrap_or(netfault::spec::PortRange::ALL),
                    dport: dport.unwrap_or(netfault::spec::PortRange::ALL),
                },
            };
            let plans = coord.impair_plans(&name, &imp).map_err(impair_flag)?;
            let rules =
                plan::impair(&name, &coord.cluster, &imp).map_err(|e| impair_flag(e.into()))?;
            let fault = Fault::build(
                &name,
                Kind::Rule,
                rules
                    .iter()
                    .flat_map(|(n, v)| v.iter().map(move |r| (n.as_str(), r))),
                &coord.cluster,
            );
            // A delay shows as a shift from the round trips before the change.
            let shaped = imp.act.shape.delay.is_some() || imp.act.shape.jitter.is_some();
            let baseline = (va.verify && shaped).then(|| {
                coord.verify_probe(
                    &verify::probes([&fault]),
                    verify::INTERVAL,
                    verify::DURATION,
                )
            });
            let ttl = ttl.unwrap_or_default();
            coord.apply(plans.clone(), ttl)?;
            remember(&rec, Recorded::new(&name, Kind::Rule, None, rules, ttl));
            let verified = if va.verify {
                let others = others(&rec, &coord.cluster, &name, Kind::Rule);
                Some(verify_now(
                    &coord,
                    &[fault],
                    &others,
                    baseline.as_ref(),
                    va.events.as_deref(),
                )?)
            } else {
                None
            };
            if json {
                let nodes: serde_json::Map<String, serde_json::Value> = plans
                    .iter()
                    .filter(|p| !p.rules.is_empty())
                    .map(|p| {
                        let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
                        (p.node.clone(), serde_json::json!(names))
                    })
                    .collect();
                let mut doc = serde_json::json!({"name": name, "nodes": nodes});
                if let Some(v) = &verified {
                    doc["verify"] = v.json();
                }
                writeln!(out, "{doc}")?;
            } else {
                writeln!(
                    out,
                    "impairment {name} applied: {} -> {}",
                    imp.from.join(","),
                    imp.to.join(",")
                )?;
                for p in plans.iter().filter(|p| !p.rules.is_empty()) {
                    let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
                    writeln!(out, "  {}: {}", p.node, names.join(", "))?;
                }
                if let Some(v) = &verified {
                    v.text(&mut out)?;
                }
            }
            if let Some(v) = &verified {
                done = v.done()?;
            }
        }
        ClusterCmd::Verify {
            names,
            baseline,
            events,
            json,
        } => {
            for (i, n) in names.iter().enumerate() {
                netfault::spec::validate_name(&format!("NAME[{i}]"), n)?;
            }
            let record = Record::load(&rec);
            let live = record.live(&[]);
            for (i, n) in names.iter().enumerate() {
                if !live.iter().any(|f| f.name == *n) {
                    return Err(SpecError::new(
                        format!("NAME[{i}]"),
                        format!(
                            "'{n}' is no live fault of this coordinator's (its record: {})",
                            rec.display()
                        ),
                    )
                    .into());
                }
            }
            let base = match &baseline {
                Some(p) => {
                    let (probe, m) = baseline_file(p)?;
                    Some(Observed::of_probe(
                        probe,
                        &m,
                        &coord.cluster,
                        verify::INTERVAL,
                    ))
                }
                None => None,
            };
            let all: Vec<(bool, Fault)> = live
                .iter()
                .map(|f| {
                    (
                        names.is_empty() || names.contains(&f.name),
                        fault_of(f, &coord.cluster),
                    )
                })
                .collect();
            let chosen: Vec<Fault> = all
                .iter()
                .filter(|(c, _)| *c)
                .map(|(_, f)| f.clone())
                .collect();
            if chosen.is_empty() {
                if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"ok": true, "faults": [], "failed": []})
                    )?;
                } else {
                    writeln!(
                        out,
                        "no live fault in this coordinator's record: nothing to verify"
                    )?;
                }
                return Ok(Done::Ok);
            }
            let v = {
                let mut verdicts = Vec::new();
                let mut failed = Vec::new();
                // One probe for every fault: each is judged with the others as what else is live.
                let mut log = match &events {
                    Some(p) => Log::append(p)
                        .map_err(|e| SpecError::new("--events", format!("{}: {e}", p.display())))?,
                    None => Log::none(),
                };
                let seen = coord.verify_probe(
                    &verify::probes(chosen.iter()),
                    verify::INTERVAL,
                    verify::DURATION,
                );
                for (i, (c, f)) in all.iter().enumerate() {
                    if !*c {
                        continue;
                    }
                    let others: Vec<Fault> = all
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, (_, o))| o.clone())
                        .collect();
                    let v = verify::judge(f, &others, &coord.cluster, &seen, base.as_ref());
                    log.write(&verify_line(std::time::SystemTime::now(), &v, &[]))?;
                    verdicts.push(v);
                }
                failed.extend(seen.failed);
                Verified { verdicts, failed }
            };
            if json {
                writeln!(out, "{}", v.json())?;
            } else {
                v.text(&mut out)?;
            }
            done = v.done()?;
        }
        ClusterCmd::Measure {
            probe,
            passive,
            what_if,
            duration,
            interval,
            json,
            advice,
        } => {
            let kind: netfault::measure::probe::Kind =
                probe.parse().map_err(|m| SpecError::new("--probe", m))?;
            netfault::measure::probe::rounds(interval, duration)
                .map_err(|m| SpecError::new("--duration", m))?;
            let what_if = super::advise::what_if(what_if.as_deref())?;
            let mut m = if passive {
                coord.measure_passive(duration, advice.params(0.0))
            } else {
                coord.measure(kind, interval, duration, advice.params(0.0))
            };
            if let Some((file, w)) = &what_if {
                for p in m.iter_mut().flat_map(|n| n.pairs.iter_mut()) {
                    p.report = p.report.clone().with_what_if_of_histogram(
                        &advice.params(p.report.loss.unwrap_or(0.0)),
                        file,
                        w,
                    );
                }
            }
            if json {
                let doc = if passive {
                    serde_json::json!({ "passive": true, "nodes": m })
                } else {
                    serde_json::json!({ "probe": kind, "nodes": m })
                };
                writeln!(out, "{doc}")?;
            } else {
                super::cluster_measure::text(&mut out, &m, &advice, passive)?;
            }
            let failed: Vec<String> = m
                .iter()
                .filter_map(|n| Some(format!("{}: {}", n.node, n.error.as_ref()?)))
                .collect();
            if !failed.is_empty() {
                anyhow::bail!("not measured on every node: {}", failed.join("; "));
            }
        }
        ClusterCmd::Stats { json } => {
            let st = coord.stats();
            if json {
                writeln!(out, "{}", serde_json::json!({ "nodes": st }))?;
            } else {
                for s in &st {
                    if let Some(e) = &s.error {
                        let what = if s.reachable {
                            "no counters"
                        } else {
                            "unreachable"
                        };
                        writeln!(out, "{} ({}): {what}: {e}", s.node, s.transport)?;
                        continue;
                    }
                    writeln!(
                        out,
                        "{} ({}): {} faults",
                        s.node,
                        s.transport,
                        s.faults.len()
                    )?;
                    for f in &s.faults {
                        let c = &f.counters;
                        writeln!(
                            out,
                            "  {:<28} {:<9} matched {} dropped {} duplicated {} delayed {} queue_dropped {} rejected {} reject_limited {} corrupted {} held {} dup_delayed {} passed {} bytes {}{}",
                            f.name,
                            format!("{:?}", f.kind).to_lowercase(),
                            c.matched,
                            c.dropped,
                            c.duplicated,
                            c.delayed,
                            c.queue_dropped,
                            c.rejected,
                            c.reject_limited,
                            c.corrupted,
                            c.held,
                            c.dup_delayed,
                            c.passed,
                            c.bytes,
                            if f.expired { " (expired)" } else { "" }
                        )?;
                    }
                }
            }
        }
        ClusterCmd::Partition {
            topology,
            name,
            ttl,
            seed,
            conn,
            json,
            reject,
            verify: va,
        } => {
            let topo: Topology = topology
                .parse()
                .map_err(|e: String| SpecError::new("TOPOLOGY", e))?;
            let seed = match seed {
                Some(s) => s,
                None if topo.is_random() => {
                    let s = fresh_seed();
                    // stderr: --json keeps stdout to the one document.
                    let _ = writeln!(
                        std::io::stderr(),
                        "netfault: seed {s} (--seed {s} repeats this)"
                    );
                    s
                }
                None => 0,
            };
            let grudge = topo
                .grudge(&coord.cluster.names(), seed)
                .map_err(|e| SpecError::new("TOPOLOGY", e))?;
            let name = name.unwrap_or_else(|| default_name(&topology));
            let reply = netfault::spec::Actions {
                reject: reject.reject,
                reject_rate: reject.reject_rate,
                ..Default::default()
            };
            if reply.reject_rate.is_some() && reply.reject.is_none() {
                return Err(SpecError::new("--reject-rate", "needs --reject").into());
            }
            let conn = conn.unwrap_or_default();
            let plans = coord.plans(&name, &grudge, &reply, conn)?;
            let rules = plan::partition(&name, &coord.cluster, &grudge, &reply, conn)?;
            let ttl = ttl.unwrap_or_default();
            coord.apply(plans, ttl)?;
            let fault = Fault::build(
                &name,
                Kind::Partition,
                rules
                    .iter()
                    .flat_map(|(n, v)| v.iter().map(move |r| (n.as_str(), r))),
                &coord.cluster,
            );
            remember(
                &rec,
                Recorded::new(&name, Kind::Partition, Some(topo.to_string()), rules, ttl),
            );
            let verified = if va.verify {
                let others = others(&rec, &coord.cluster, &name, Kind::Partition);
                Some(verify_now(
                    &coord,
                    &[fault],
                    &others,
                    None,
                    va.events.as_deref(),
                )?)
            } else {
                None
            };
            if json {
                let mut doc = grudge.to_json(&name, &topo.to_string());
                if let Some(v) = &verified {
                    doc["verify"] = v.json();
                }
                writeln!(out, "{doc}")?;
            } else {
                writeln!(
                    out,
                    "partition {name} ({topo}) applied on {} nodes; each drops packets from:",
                    grudge.0.len()
                )?;
                for (node, drops) in &grudge.0 {
                    let d: Vec<&str> = drops.iter().map(String::as_str).collect();
                    let d = if d.is_empty() {
                        "-".to_string()
                    } else {
                        d.join(", ")
                    };
                    writeln!(out, "  {node}: {d}")?;
                }
                if let Some(v) = &verified {
                    v.text(&mut out)?;
                }
            }
            if let Some(v) = &verified {
                done = v.done()?;
            }
        }
        ClusterCmd::Pause(p) => super::cluster_pause::pause(&coord, p, &mut out)?,
        ClusterCmd::Resume(r) => super::cluster_pause::resume(&coord, r, &mut out)?,
        ClusterCmd::Heal { names } => {
            let healed = coord.heal(&names)?;
            if rec.exists() {
                let mut r = Record::load(&rec);
                r.heal(&names);
                if let Err(e) = r.store(&rec) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "netfault: warning: cannot write the coordinator's record {}: {e}",
                        rec.display()
                    );
                }
            }
            let total: usize = healed.iter().map(|(_, v)| v.len()).sum();
            writeln!(out, "healed {total} entries")?;
            for (node, v) in healed.iter().filter(|(_, v)| !v.is_empty()) {
                writeln!(out, "  {node}: {}", v.join(", "))?;
            }
        }
        ClusterCmd::Status { json } => {
            let st = coord.status();
            if json {
                writeln!(out, "{}", serde_json::json!({ "nodes": st }))?;
            } else {
                for s in &st {
                    if !s.reachable {
                        let why = s.error.as_deref().unwrap_or("unreachable");
                        writeln!(out, "{} ({}): unreachable: {why}", s.node, s.transport)?;
                        continue;
                    }
                    let att = if s.attached.is_empty() {
                        "not attached".to_string()
                    } else {
                        format!("attached {}", s.attached.join(", "))
                    };
                    writeln!(
                        out,
                        "{} ({}): {att}; {} live faults",
                        s.node,
                        s.transport,
                        s.faults.len()
                    )?;
                    for f in &s.faults {
                        let ttl = f
                            .ttl_left_s
                            .map_or("no expiry".to_string(), |t| format!("{t}s left"));
                        writeln!(out, "  {:?} {} ({ttl})", f.kind, f.name)?;
                    }
                }
            }
        }
    }
    Ok(done)
}

/// `cluster run SCENARIO`: every problem with the scenario (or the event file) exits 2 before
/// any node is touched.
fn run_scenario(
    cluster: Cluster,
    path: &std::path::Path,
    events: Option<&std::path::Path>,
    seed: Option<u64>,
) -> anyhow::Result<Done> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SpecError::new("SCENARIO", format!("{}: {e}", path.display())))?;
    let sc = Scenario::parse(&text)?;
    sc.check(&cluster)?;
    let coord = Coordinator::new(cluster)?;
    let random = sc
        .steps
        .iter()
        .any(|s| matches!(&s.action, StepAction::Partition(t) if t.is_random()));
    let seed = match seed.or(sc.seed) {
        Some(s) => s,
        None if !random => 0,
        None => {
            let s = fresh_seed();
            let _ = writeln!(
                std::io::stderr(),
                "netfault: seed {s} (--seed {s} repeats this)"
            );
            s
        }
    };
    let mut log = match events {
        Some(p) => {
            Log::open(p).map_err(|e| SpecError::new("--events", format!("{}: {e}", p.display())))?
        }
        None => Log::none(),
    };
    // Progress goes where the events do not.
    let mut progress: Box<dyn std::io::Write> = if log.to_stdout {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let _ = writeln!(
        progress,
        "run {}: {} steps, {} on {} nodes, lease {}, seed {seed}",
        path.display(),
        sc.steps.len(),
        humantime::format_duration(sc.end()),
        coord.cluster.nodes.len(),
        humantime::format_duration(sc.lease)
    );
    let (ended, summary) = cluster_run::run(&coord, &sc, seed, &mut log, &mut *progress)?;
    let mut spreads = summary.spreads.clone();
    spreads.sort();
    let max = spreads.last().copied().unwrap_or_default();
    let p50 = spreads.get(spreads.len() / 2).copied().unwrap_or_default();
    let _ = writeln!(
        progress,
        "run {}: {} starts, {} ends, {} renewals; node spread p50 {:.1} ms, max {:.1} ms; every step healed",
        match ended {
            Ended::Finished => "finished",
            Ended::Interrupted => "interrupted",
            Ended::Terminated => "terminated",
        },
        summary.starts,
        summary.ends,
        summary.renewals,
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    if summary.verified > 0 {
        let _ = writeln!(
            progress,
            "verified {} step starts on the wire: {}",
            summary.verified,
            if summary.mismatched.is_empty() {
                "every one as configured".to_string()
            } else {
                format!("MISMATCH in {}", summary.mismatched.join("; "))
            }
        );
    }
    Ok(match ended {
        Ended::Finished if !summary.mismatched.is_empty() => Done::Mismatch,
        Ended::Finished => Done::Ok,
        Ended::Interrupted => Done::Interrupted,
        Ended::Terminated => Done::Terminated,
    })
}
