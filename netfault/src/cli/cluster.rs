//! `netfault cluster --cluster FILE partition|heal|status`
use std::{io::Write as _, path::PathBuf};

use netfault::{
    cluster::{Cluster, Topology, coordinator::Coordinator},
    spec::{SpecError, Ttl},
};

/// Partition a lab cluster: every node of a cluster file at once, all or nothing. Faults go
/// on each receiver's ingress. Only the netns transport is implemented yet.
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
        /// Print `{"name", "topology", "grudge"}`.
        #[arg(long)]
        json: bool,
    },
    /// Delete this tool's partitions by name on every node, or all of them.
    Heal {
        #[arg(value_name = "NAME")]
        names: Vec<String>,
    },
    /// Per node: reachable, transport, attached interfaces, live faults.
    Status {
        #[arg(long)]
        json: bool,
    },
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

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    if ns.is_some() {
        // Each node names its own namespace in the cluster file.
        return Err(SpecError::new("--netns", "does not apply to `cluster`").into());
    }
    let text = std::fs::read_to_string(&a.cluster)
        .map_err(|e| SpecError::new("FILE", format!("{}: {e}", a.cluster.display())))?;
    let cluster = Cluster::parse(&text)?;
    let coord = Coordinator::new(cluster)?;
    let mut out = std::io::stdout().lock();
    match a.cmd {
        ClusterCmd::Partition {
            topology,
            name,
            ttl,
            seed,
            json,
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
            let plans = coord.plans(&name, &grudge)?;
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
            writeln!(out, "healed {total} partition entries")?;
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
    Ok(())
}
