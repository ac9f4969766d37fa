//! `cluster pause NODES --for D` and `cluster resume [NODES]`: the nodes' processes
//! (`pause_target`) stopped on their hosts, each held by a watchdog there.
use std::{io::Write, time::Duration};

use netfault::{
    cluster::{coordinator::Coordinator, pause::entry},
    pause::Schedule,
    spec::{self, SpecError},
};

/// `cluster pause`'s arguments.
#[derive(clap::Args, Debug)]
pub struct PauseArgs {
    /// Nodes to pause, comma-separated (`n1,n2`): each needs `pause_target` in the file.
    #[arg(value_name = "NODES", value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// How long each pause lasts (`500ms`, `30s`; at most 10m), or `none`: until `cluster
    /// resume`.
    #[arg(long = "for", value_name = "DURATION", required = true)]
    pub hold: String,
    /// Each node's pause is named NAME.NODE on its host (`netfault status` there).
    #[arg(long, default_value = "pause")]
    pub name: String,
    /// Strobe: start a pause every PERIOD (longer than --for), --count times.
    #[arg(long, value_name = "PERIOD", value_parser = super::args::parse_interval)]
    pub every: Option<Duration>,
    /// How many pauses the strobe makes (with --every).
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,
    /// Print `{"name", "nodes": [{"node", "pause", "target", "watchdog_pid", "stopped_ms"}]}`.
    #[arg(long)]
    pub json: bool,
}

/// `cluster resume`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// Nodes to resume, comma-separated (default: every node with a pause_target).
    #[arg(value_name = "NODES", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Only the pause of this name (default: every `cluster pause` of the nodes).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn schedule(
    hold: &str,
    every: Option<Duration>,
    count: Option<u32>,
) -> Result<Schedule, SpecError> {
    let hold = if hold.trim().eq_ignore_ascii_case("none") {
        None
    } else {
        Some(spec::parse_duration(hold).map_err(|m| SpecError::new("--for", m))?)
    };
    Schedule::new(hold, every, count)
}

pub fn pause(coord: &Coordinator, a: PauseArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let schedule = schedule(&a.hold, a.every, a.count)?;
    let which = coord.pause_nodes("NODES", &a.nodes)?;
    // The longest name a node's pause can have must still be a valid name.
    for &i in &which {
        spec::validate_name("--name", &entry(&a.name, &coord.cluster.nodes[i].name))?;
    }
    let started = coord.pause(&which, &a.name, schedule)?;
    let rows: Vec<serde_json::Value> = started
        .iter()
        .filter_map(|t| {
            let s = t.result.as_ref().ok()?;
            Some(serde_json::json!({
                "node": coord.cluster.nodes[t.node].name,
                "pause": s.name,
                "target": s.target,
                "watchdog_pid": s.watchdog_pid,
                "stopped_ms": s.stopped_ms,
            }))
        })
        .collect();
    if a.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "name": a.name, "nodes": rows })
        )?;
    } else {
        let how = match schedule.hold {
            None => "until `cluster resume`".to_string(),
            Some(h) => format!("for {}", humantime::format_duration(h)),
        };
        writeln!(out, "paused {} node(s) {how}", rows.len())?;
        for r in &rows {
            writeln!(
                out,
                "  {}: {} as '{}' (watchdog pid {})",
                r["node"].as_str().unwrap_or(""),
                r["target"].as_str().unwrap_or(""),
                r["pause"].as_str().unwrap_or(""),
                r["watchdog_pid"]
            )?;
        }
    }
    Ok(())
}

pub fn resume(coord: &Coordinator, a: ResumeArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let which = if a.nodes.is_empty() {
        (0..coord.cluster.nodes.len())
            .filter(|&i| coord.cluster.nodes[i].pause_target.is_some())
            .collect()
    } else {
        coord.pause_nodes("NODES", &a.nodes)?
    };
    let done = coord.resume(&which, a.name.as_deref())?;
    if a.json {
        let nodes: Vec<serde_json::Value> = done
            .iter()
            .map(|(n, v)| serde_json::json!({"node": n, "resumed": v}))
            .collect();
        writeln!(out, "{}", serde_json::json!({ "nodes": nodes }))?;
    } else {
        let total: usize = done.iter().map(|(_, v)| v.len()).sum();
        writeln!(out, "resumed {total} pause(s)")?;
        for (n, v) in done.iter().filter(|(_, v)| !v.is_empty()) {
            writeln!(out, "  {n}: {}", v.join(", "))?;
        }
    }
    Ok(())
}
