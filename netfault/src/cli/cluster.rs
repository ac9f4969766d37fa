//! `netfault cluster --cluster FILE partition|impair|heal|run|status|stats`
use std::{io::Write as _, path::PathBuf};

use netfault::{
    cluster::{
        Cluster, Impair, Scenario, StepAction, Topology,
        coordinator::Coordinator,
        events::Log,
        run::{self as cluster_run, Ended},
    },
    spec::{SpecError, Ttl},
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
    },
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
    /// Every node probes every other node's addresses at once (ICMP echo, as `measure
    /// --probe`): the N x N matrix of round-trip times, and the advice per pair.
    Measure {
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
    let mut out = std::io::stdout().lock();
    match a.cmd {
        ClusterCmd::Run { .. } => unreachable!("handled above"),
        ClusterCmd::Impair {
            from,
            to,
            act,
            name,
            ttl,
        } => {
            let imp = Impair {
                from,
                to,
                act: act.actions(),
            };
            let plans = coord.impair_plans(&name, &imp).map_err(impair_flag)?;
            let ttl = ttl.unwrap_or_default();
            coord.apply(plans.clone(), ttl)?;
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
        }
        ClusterCmd::Measure {
            duration,
            interval,
            json,
            advice,
        } => {
            netfault::measure::probe::rounds(interval, duration)
                .map_err(|m| SpecError::new("--duration", m))?;
            let m = coord.measure(interval, duration, advice.params(0.0));
            if json {
                writeln!(out, "{}", serde_json::json!({ "nodes": m }))?;
            } else {
                super::cluster_measure::text(&mut out, &m, &advice)?;
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
                            "  {:<28} {:<9} matched {} dropped {} duplicated {} delayed {} queue_dropped {} rejected {} reject_limited {} held {} dup_delayed {} passed {} bytes {}{}",
                            f.name,
                            format!("{:?}", f.kind).to_lowercase(),
                            c.matched,
                            c.dropped,
                            c.duplicated,
                            c.delayed,
                            c.queue_dropped,
                            c.rejected,
                            c.reject_limited,
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
            let plans = coord.plans(&name, &grudge, &reply, conn.unwrap_or_default())?;
            coord.apply(plans, ttl.unwrap_or_default())?;
            if json {
                writeln!(out, "{}", grudge.to_json(&name, &topo.to_string()))?;
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
            }
        }
        ClusterCmd::Heal { names } => {
            let healed = coord.heal(&names)?;
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
    Ok(Done::Ok)
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
    Ok(match ended {
        Ended::Finished => Done::Ok,
        Ended::Interrupted => Done::Interrupted,
        Ended::Terminated => Done::Terminated,
    })
}
