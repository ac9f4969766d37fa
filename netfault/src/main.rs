//! The netfault command line. Each invocation is a short process; programs and maps stay pinned.
use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use netfault::{
    ops::{self, Ctl},
    spec::{self, Direction, Kind, PortRange, Prob, Proto, RuleSpec, Ttl},
};

#[derive(Parser)]
#[command(
    name = "netfault",
    version,
    about = "Packet loss, duplication and partitions at line rate, in the kernel (eBPF)"
)]
struct Cli {
    /// Act inside the network namespace /run/netns/NAME (state stays in the host's bpffs).
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpModeArg {
    Native,
    Generic,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach the data path to interfaces (a no-op where attached already).
    Attach {
        #[arg(required = true, value_name = "IFACE")]
        ifaces: Vec<String>,
        /// Force an XDP mode instead of native with fallback to generic.
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpModeArg>,
    },
    /// Detach from interfaces; with none named, remove everything netfault owns here.
    Detach {
        #[arg(value_name = "IFACE")]
        ifaces: Vec<String>,
    },
    /// Manage impairment rules.
    Rule {
        #[command(subcommand)]
        cmd: RuleCmd,
    },
    /// Cut traffic between two sets of addresses (both ways unless --oneway).
    Partition {
        /// Comma-separated addresses or CIDRs, v4 or v6.
        #[arg(value_name = "SET_A")]
        set_a: String,
        #[arg(value_name = "SET_B")]
        set_b: String,
        #[arg(long)]
        name: Option<String>,
        /// Cut only traffic from SET_A to SET_B.
        #[arg(long)]
        oneway: bool,
        /// Do not protect the SSH connection this command runs over (see `protect`).
        #[arg(long)]
        no_protect: bool,
        /// Lifetime (`30s`, `2m`), or `none`. Default 10m.
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
        ttl: Option<Ttl>,
    },
    /// Remove partitions by name, or all of them.
    Heal {
        #[arg(value_name = "NAME")]
        names: Vec<String>,
    },
    /// Per-rule counters.
    Stats {
        #[arg(long)]
        json: bool,
        /// Print again every INTERVAL (`1s`, `500ms`) until interrupted.
        #[arg(long, value_name = "INTERVAL", value_parser = parse_interval)]
        watch: Option<Duration>,
    },
    /// Traffic that no rule or partition may touch. Loopback, and the SSH connection of whoever
    /// adds rules (SSH_CONNECTION), are protected automatically.
    Protect {
        #[command(subcommand)]
        cmd: ProtectCmd,
    },
    /// Attached interfaces, hooks and rule count.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ProtectCmd {
    /// Protect traffic to or from CIDR (and PORT, TCP or UDP): `192.0.2.0/24`, `192.0.2.1:22`, `[2001:db8::1]:22`.
    Add {
        #[arg(required = true, value_name = "CIDR[:PORT]")]
        endpoints: Vec<String>,
    },
    /// Remove protections by the label `protect list` shows.
    Del {
        #[arg(required = true, value_name = "LABEL")]
        labels: Vec<String>,
    },
    /// Protected traffic, with counters of what passed through protection.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RuleCmd {
    /// Add a rule. The first matching rule (partitions first, then by --priority, then age) wins.
    Add {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, default_value = "both", value_parser = parse_dir)]
        dir: Direction,
        /// Source addresses or CIDRs, comma-separated.
        #[arg(long, value_name = "CIDR", allow_hyphen_values = true)]
        src: Option<String>,
        /// Destination addresses or CIDRs, comma-separated.
        #[arg(long, value_name = "CIDR", allow_hyphen_values = true)]
        dst: Option<String>,
        #[arg(long, default_value = "any", value_parser = parse_proto)]
        proto: Proto,
        #[arg(long, value_name = "P|LO-HI", value_parser = parse_ports, allow_hyphen_values = true)]
        sport: Option<PortRange>,
        #[arg(long, value_name = "P|LO-HI", value_parser = parse_ports, allow_hyphen_values = true)]
        dport: Option<PortRange>,
        #[arg(long, value_name = "IFACE")]
        iface: Option<String>,
        /// Drop probability: `30%` or `0.3`.
        #[arg(long, value_name = "PROB", value_parser = parse_prob, allow_hyphen_values = true)]
        drop: Option<Prob>,
        /// Duplicate probability: `30%` or `0.3`.
        #[arg(long, value_name = "PROB", value_parser = parse_prob, allow_hyphen_values = true)]
        duplicate: Option<Prob>,
        /// Lifetime (`500ms`, `2m`), or `none`. Default 10m.
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
        ttl: Option<Ttl>,
        /// Do not protect the SSH connection this command runs over (see `protect`).
        #[arg(long)]
        no_protect: bool,
        /// Lower runs first; equal priorities run in the order added.
        #[arg(long, default_value_t = 1000, allow_hyphen_values = true)]
        priority: u32,
    },
    /// Delete rules by name, or all rules.
    Del {
        #[arg(
            value_name = "NAME",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        names: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// List rules and partitions.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn parse_dir(s: &str) -> Result<Direction, String> {
    s.parse()
}
fn parse_proto(s: &str) -> Result<Proto, String> {
    s.parse()
}
fn parse_ports(s: &str) -> Result<PortRange, String> {
    s.parse()
}
fn parse_prob(s: &str) -> Result<Prob, String> {
    s.parse()
}
fn parse_ttl(s: &str) -> Result<Ttl, String> {
    s.parse()
}
fn parse_interval(s: &str) -> Result<Duration, String> {
    spec::parse_duration(s)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<ops::Error>()
                .map_or(1, ops::Error::exit_code);
            eprintln!("netfault: {e:#}");
            ExitCode::from(code as u8)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Validate what needs no kernel before entering anything.
    let plan = plan(&cli.cmd)?;
    // setns applies to this thread only: do it before any other thread exists.
    if let Some(ns) = &cli.netns {
        netfault::netns::enter(ns)
            .map_err(|e| ops::Error::Usage(spec::SpecError::new("--netns", e.to_string())))?;
    }
    let ns = cli.netns.as_deref();
    match cli.cmd {
        Cmd::Attach { ifaces, xdp_mode } => {
            let mode = xdp_mode.map(|m| match m {
                XdpModeArg::Native => aya::programs::XdpMode::Driver,
                XdpModeArg::Generic => aya::programs::XdpMode::Skb,
            });
            let mut ctl = Ctl::open(ns)?;
            for line in ctl.attach(&ifaces, mode)? {
                println!("{line}");
            }
        }
        Cmd::Detach { ifaces } => {
            let ctl = Ctl::open(ns)?;
            for line in ctl.detach(&ifaces)? {
                println!("{line}");
            }
        }
        Cmd::Rule {
            cmd: RuleCmd::Add {
                ttl, no_protect, ..
            },
        }
        | Cmd::Partition {
            ttl, no_protect, ..
        } => {
            let (spec, _) = plan.expect("planned");
            let name = spec.name.clone();
            let kind = spec.kind;
            let mut ctl = Ctl::open(ns)?;
            for w in ctl.add(vec![spec], ttl.unwrap_or_default(), !no_protect)? {
                eprintln!("netfault: warning: {w}");
            }
            println!(
                "{} {name} added",
                if kind == Kind::Partition {
                    "partition"
                } else {
                    "rule"
                }
            );
        }
        Cmd::Rule {
            cmd: RuleCmd::Del { names, all },
        } => {
            let mut ctl = Ctl::open(ns)?;
            let gone = ctl.delete(
                if all { &[] } else { &names },
                if all {
                    &[Kind::Rule]
                } else {
                    &[Kind::Rule, Kind::Partition]
                },
            )?;
            println!(
                "deleted {}",
                if gone.is_empty() {
                    "nothing".into()
                } else {
                    gone.join(", ")
                }
            );
        }
        Cmd::Heal { names } => {
            let mut ctl = Ctl::open(ns)?;
            let gone = ctl.delete(&names, &[Kind::Partition])?;
            println!(
                "healed {}",
                if gone.is_empty() {
                    "nothing".into()
                } else {
                    gone.join(", ")
                }
            );
        }
        Cmd::Rule {
            cmd: RuleCmd::List { json },
        } => netfault_cli::list(ns, json)?,
        Cmd::Stats { json, watch } => netfault_cli::stats(ns, json, watch)?,
        Cmd::Status { json } => netfault_cli::status(ns, json)?,
        Cmd::Protect {
            cmd: ProtectCmd::Add { endpoints },
        } => {
            let eps = endpoints
                .iter()
                .map(|e| spec::parse_protect(e))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ops::Error::Usage)?;
            let mut ctl = Ctl::open(ns)?;
            for l in ctl.protect(&eps)? {
                println!("protected {l}");
            }
        }
        Cmd::Protect {
            cmd: ProtectCmd::Del { labels },
        } => {
            let mut ctl = Ctl::open(ns)?;
            ctl.unprotect(&labels)?;
            println!("unprotected {}", labels.join(", "));
        }
        Cmd::Protect {
            cmd: ProtectCmd::List { json },
        } => netfault_cli::protect_list(ns, json)?,
    }
    Ok(())
}

/// Builds the spec of `rule add` / `partition` from arguments alone.
fn plan(cmd: &Cmd) -> anyhow::Result<Option<(RuleSpec, ())>> {
    let usage = |e: spec::SpecError| anyhow::Error::from(ops::Error::Usage(e));
    Ok(match cmd {
        Cmd::Rule {
            cmd:
                RuleCmd::Add {
                    name,
                    dir,
                    src,
                    dst,
                    proto,
                    sport,
                    dport,
                    iface,
                    drop,
                    duplicate,
                    priority,
                    ..
                },
        } => {
            let src = src
                .as_deref()
                .map(|s| spec::parse_set("--src", s))
                .transpose()
                .map_err(usage)?
                .unwrap_or_default();
            let dst = dst
                .as_deref()
                .map(|s| spec::parse_set("--dst", s))
                .transpose()
                .map_err(usage)?
                .unwrap_or_default();
            let r = RuleSpec {
                name: name.clone(),
                kind: Kind::Rule,
                dir: *dir,
                src,
                dst,
                proto: *proto,
                sport: sport.unwrap_or(PortRange::ALL),
                dport: dport.unwrap_or(PortRange::ALL),
                iface: iface.clone(),
                drop: drop.unwrap_or_default(),
                duplicate: duplicate.unwrap_or_default(),
                priority: *priority,
                oneway: false,
            };
            r.validate().map_err(usage)?;
            Some((r, ()))
        }
        Cmd::Partition {
            set_a,
            set_b,
            name,
            oneway,
            ..
        } => {
            let a = spec::parse_set("SET_A", set_a).map_err(usage)?;
            let b = spec::parse_set("SET_B", set_b).map_err(usage)?;
            let name = name.clone().unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                format!("part-{}", t.as_millis() % 1_000_000_000)
            });
            let r = RuleSpec {
                name,
                kind: Kind::Partition,
                dir: Direction::Both,
                src: a,
                dst: b,
                proto: Proto::Any,
                sport: PortRange::ALL,
                dport: PortRange::ALL,
                iface: None,
                drop: Prob(1.0),
                duplicate: Prob(0.0),
                priority: 0,
                oneway: *oneway,
            };
            r.validate().map_err(usage)?;
            Some((r, ()))
        }
        _ => None,
    })
}

/// Read-only commands and their output.
mod netfault_cli {
    use super::*;
    use netfault::ops::{read_state, stats as read_stats, ttl_left};
    use serde_json::json;

    fn fmt_left(left: Option<u64>, expired: bool) -> String {
        match (left, expired) {
            (_, true) => "expired".into(),
            (None, _) => "never".into(),
            (Some(ms), _) => {
                humantime::format_duration(Duration::from_millis(ms / 1000 * 1000)).to_string()
            }
        }
    }

    fn nets(v: &[ipnet::IpNet]) -> Vec<String> {
        v.iter()
            .map(|n| {
                if n.prefix_len() == n.max_prefix_len() {
                    n.addr().to_string()
                } else {
                    n.to_string()
                }
            })
            .collect()
    }

    pub fn list(ns: Option<&str>, json_out: bool) -> anyhow::Result<()> {
        let (_, state) = read_state(ns)?;
        let now = ops::monotonic_ns();
        let shown: Vec<_> = state
            .ordered()
            .into_iter()
            .filter(|r| r.spec.kind != Kind::Protect)
            .collect();
        let rows: Vec<_> = shown
            .iter()
            .map(|r| {
                let s = &r.spec;
                let (left, expired) = ttl_left(r, now);
                let port = |p: &PortRange| {
                    if p.is_all() {
                        serde_json::Value::Null
                    } else {
                        json!(p.to_string())
                    }
                };
                match s.kind {
                    Kind::Partition => json!({
                        "name": s.name, "kind": "partition", "a": nets(&s.src), "b": nets(&s.dst),
                        "oneway": s.oneway, "expires_in_ms": left, "expired": expired,
                    }),
                    Kind::Rule | Kind::Protect => json!({
                        "name": s.name, "kind": "rule", "priority": s.priority, "dir": s.dir,
                        "src": nets(&s.src), "dst": nets(&s.dst), "proto": s.proto,
                        "sport": port(&s.sport), "dport": port(&s.dport), "iface": s.iface,
                        "drop": s.drop.0, "duplicate": s.duplicate.0,
                        "expires_in_ms": left, "expired": expired,
                    }),
                }
            })
            .collect();
        if json_out {
            println!("{}", json!({ "rules": rows }));
            return Ok(());
        }
        if rows.is_empty() {
            println!("no rules");
        }
        for (r, v) in shown.iter().zip(&rows) {
            let s = &r.spec;
            let left = fmt_left(
                v["expires_in_ms"].as_u64(),
                v["expired"].as_bool().unwrap_or(false),
            );
            match s.kind {
                Kind::Partition => println!(
                    "partition {:<16} {} {} {}  ttl {left}",
                    s.name,
                    nets(&s.src).join(","),
                    if s.oneway { "-/->" } else { "<-/->" },
                    nets(&s.dst).join(","),
                ),
                Kind::Rule | Kind::Protect => {
                    let mut m = vec![format!("dir {:?}", s.dir).to_lowercase()];
                    if !s.src.is_empty() {
                        m.push(format!("src {}", nets(&s.src).join(",")));
                    }
                    if !s.dst.is_empty() {
                        m.push(format!("dst {}", nets(&s.dst).join(",")));
                    }
                    if s.proto != Proto::Any {
                        m.push(format!("proto {:?}", s.proto).to_lowercase());
                    }
                    if !s.sport.is_all() {
                        m.push(format!("sport {}", s.sport));
                    }
                    if !s.dport.is_all() {
                        m.push(format!("dport {}", s.dport));
                    }
                    if let Some(i) = &s.iface {
                        m.push(format!("iface {i}"));
                    }
                    let mut a = vec![];
                    if s.drop.0 > 0.0 {
                        a.push(format!("drop {}", s.drop));
                    }
                    if s.duplicate.0 > 0.0 {
                        a.push(format!("duplicate {}", s.duplicate));
                    }
                    println!(
                        "rule      {:<16} prio {:<5} {}  => {}  ttl {left}",
                        s.name,
                        s.priority,
                        m.join(" "),
                        a.join(", ")
                    );
                }
            }
        }
        Ok(())
    }

    fn print_stats(ns: Option<&str>, json_out: bool) -> anyhow::Result<()> {
        let (paths, state) = read_state(ns)?;
        let rows: Vec<_> = read_stats(&paths, &state)?
            .into_iter()
            .filter(|r| r.kind != Kind::Protect)
            .collect();
        if json_out {
            println!("{}", json!({ "rules": rows }));
            return Ok(());
        }
        println!(
            "{:<18} {:<9} {:>10} {:>10} {:>10} {:>10} {:>12}  TTL",
            "NAME", "KIND", "MATCHED", "DROPPED", "DUPLICATED", "PASSED", "BYTES"
        );
        for r in rows {
            println!(
                "{:<18} {:<9} {:>10} {:>10} {:>10} {:>10} {:>12}  {}",
                r.name,
                format!("{:?}", r.kind).to_lowercase(),
                r.counters.matched,
                r.counters.dropped,
                r.counters.duplicated,
                r.counters.passed,
                r.counters.bytes,
                fmt_left(r.expires_in_ms, r.expired)
            );
        }
        Ok(())
    }

    pub fn stats(ns: Option<&str>, json_out: bool, watch: Option<Duration>) -> anyhow::Result<()> {
        let Some(every) = watch else {
            return print_stats(ns, json_out);
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        rt.block_on(async {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => print_stats(ns, json_out)?,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        })
    }

    pub fn protect_list(ns: Option<&str>, json_out: bool) -> anyhow::Result<()> {
        let (paths, state) = read_state(ns)?;
        let stats = read_stats(&paths, &state)?;
        // One row per label; its entries' counters summed.
        let mut rows: Vec<(String, u64, u64)> = Vec::new();
        for st in stats.iter().filter(|r| r.kind == Kind::Protect) {
            let label = st.name.split('/').next().unwrap_or(&st.name).to_string();
            match rows.iter_mut().find(|r| r.0 == label) {
                Some(r) => {
                    r.1 += st.counters.matched;
                    r.2 += st.counters.bytes;
                }
                None => rows.push((label, st.counters.matched, st.counters.bytes)),
            }
        }
        if json_out {
            let v: Vec<_> = rows
                .iter()
                .map(|(l, p, b)| json!({"label": l, "packets": p, "bytes": b}))
                .collect();
            println!("{}", json!({ "protected": v }));
            return Ok(());
        }
        println!("{:<44} {:>12} {:>14}", "PROTECTED", "PACKETS", "BYTES");
        for (l, p, b) in rows {
            println!("{l:<44} {p:>12} {b:>14}");
        }
        Ok(())
    }

    pub fn status(ns: Option<&str>, json_out: bool) -> anyhow::Result<()> {
        let (paths, state) = read_state(ns)?;
        let ifaces: Vec<_> = state
            .attached
            .iter()
            .map(|a| {
                let now = netfault::kernel::ifindex(&a.iface);
                let lost = now != Some(a.ifindex);
                json!({
                    "iface": a.iface, "ifindex": a.ifindex, "lost": lost,
                    "hooks": a.hooks.iter().map(|h| json!({"hook": h.hook, "kind": h.kind, "prog_id": h.prog_id})).collect::<Vec<_>>(),
                })
            })
            .collect();
        if json_out {
            println!(
                "{}",
                json!({ "state": paths.key, "interfaces": ifaces, "rules": state.rules.len() })
            );
            return Ok(());
        }
        println!("namespace state: {}", paths.key);
        if ifaces.is_empty() {
            println!("not attached");
        }
        for (a, v) in state.attached.iter().zip(&ifaces) {
            let hooks: Vec<String> = a
                .hooks
                .iter()
                .map(|h| format!("{:?}: {:?} (prog {})", h.hook, h.kind, h.prog_id))
                .collect();
            println!(
                "{} (ifindex {}){}: {}",
                a.iface,
                a.ifindex,
                if v["lost"].as_bool() == Some(true) {
                    " LOST"
                } else {
                    ""
                },
                hooks.join("; ")
            );
        }
        println!("rules and partitions: {}", state.rules.len());
        Ok(())
    }
}
