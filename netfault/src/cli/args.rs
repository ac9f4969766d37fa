//! The command line's grammar, and the rule specs built from it. Pure: no kernel, no state, so
//! it is unit-tested and fuzzed as it is.
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use netfault::spec::{
    self, Direction, Distribution, Kind, PortRange, Prob, Proto, Rate, RuleSpec, Shape, SpecError,
    Ttl,
};

#[derive(Parser)]
#[command(
    name = "netfault",
    version,
    about = "Packet loss, duplication and partitions at line rate, in the kernel (eBPF)"
)]
pub struct Cli {
    /// Act inside the network namespace /run/netns/NAME (state stays in the host's bpffs).
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum XdpModeArg {
    Native,
    Generic,
}

#[derive(Subcommand)]
pub enum Cmd {
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
    /// Replace the whole rule set (rules and partitions) with a TOML file's, in one step.
    Apply {
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
        /// Replace a root qdisc another tool installed, where a rule delays or paces.
        #[arg(long)]
        replace_qdisc: bool,
        /// Do not protect the SSH connection this command runs over.
        #[arg(long)]
        no_protect: bool,
    },
    /// Impair only while this command runs: attach private programs to IFACEs, apply FILE, and
    /// hold until Ctrl-C, SIGTERM or --duration. However it ends (kill -9 too), traffic is back to
    /// normal within a second.
    Run {
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
        #[arg(long = "iface", required = true, value_name = "IFACE")]
        ifaces: Vec<String>,
        #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
        duration: Option<Duration>,
        #[arg(long)]
        no_protect: bool,
        /// Replace a root qdisc another tool installed, where a rule delays or paces.
        #[arg(long)]
        replace_qdisc: bool,
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpModeArg>,
    },
    /// Give rules or partitions a new lifetime from now (`--ttl none`: no expiry).
    Renew {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
        ttl: Ttl,
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
pub enum ProtectCmd {
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
pub enum RuleCmd {
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
        /// Delay each matched packet (`50ms`); netfault installs an fq qdisc to hold them.
        #[arg(long, value_name = "DURATION", value_parser = parse_interval, allow_hyphen_values = true)]
        delay: Option<Duration>,
        /// Vary the delay: standard deviation (normal, pareto, paretonormal) or half-width (uniform).
        #[arg(long, value_name = "DURATION", value_parser = parse_interval, allow_hyphen_values = true)]
        jitter: Option<Duration>,
        /// Jitter distribution, as netem's.
        #[arg(long, value_name = "DIST", value_parser = parse_distribution)]
        distribution: Option<Distribution>,
        /// Let jittered packets overtake each other (by default a flow keeps its order).
        #[arg(long)]
        reorder: bool,
        /// Pace matched traffic to RATE (`500kbit`, `10mbit`, `1gbit`).
        #[arg(long, value_name = "RATE", value_parser = parse_rate, allow_hyphen_values = true)]
        rate: Option<Rate>,
        /// Replace a root qdisc another tool installed (it is not restored on detach).
        #[arg(long)]
        replace_qdisc: bool,
        /// Lifetime (`500ms`, `2m`), or `none`. Default 10m.
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
        ttl: Option<Ttl>,
        /// Do not protect the SSH connection this command runs over (see `protect`).
        #[arg(long)]
        no_protect: bool,
        /// Allow a rule that matches every packet (no address, protocol, port or interface).
        #[arg(long)]
        all_traffic: bool,
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

pub fn parse_dir(s: &str) -> Result<Direction, String> {
    s.parse()
}
pub fn parse_proto(s: &str) -> Result<Proto, String> {
    s.parse()
}
pub fn parse_ports(s: &str) -> Result<PortRange, String> {
    s.parse()
}
pub fn parse_prob(s: &str) -> Result<Prob, String> {
    s.parse()
}
pub fn parse_ttl(s: &str) -> Result<Ttl, String> {
    s.parse()
}
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    spec::parse_duration(s)
}
pub fn parse_distribution(s: &str) -> Result<Distribution, String> {
    s.parse()
}
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    s.parse()
}

/// Builds the spec of `rule add` / `partition` from arguments alone (no kernel, no state).
pub fn rule_spec(cmd: &Cmd) -> Result<Option<RuleSpec>, SpecError> {
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
                    delay,
                    jitter,
                    distribution,
                    reorder,
                    rate,
                    priority,
                    all_traffic,
                    ..
                },
        } => {
            let src = src
                .as_deref()
                .map(|s| spec::parse_set("--src", s))
                .transpose()?
                .unwrap_or_default();
            let dst = dst
                .as_deref()
                .map(|s| spec::parse_set("--dst", s))
                .transpose()?
                .unwrap_or_default();
            let r = RuleSpec {
                dir: *dir,
                src,
                dst,
                proto: *proto,
                sport: sport.unwrap_or(PortRange::ALL),
                dport: dport.unwrap_or(PortRange::ALL),
                iface: iface.clone(),
                drop: drop.unwrap_or_default(),
                duplicate: duplicate.unwrap_or_default(),
                shape: Shape {
                    delay: *delay,
                    jitter: *jitter,
                    distribution: distribution.unwrap_or_default(),
                    reorder: *reorder,
                    rate: *rate,
                },
                priority: *priority,
                ..RuleSpec::new(name.clone(), Kind::Rule)
            };
            r.validate()?;
            if r.matches_everything() && !all_traffic {
                return Err(SpecError::new(
                    "--all-traffic",
                    "this rule matches every packet; add --src, --dst, --proto, a port or --iface, \
                     or say --all-traffic if that is what you want",
                ));
            }
            Some(r)
        }
        Cmd::Partition {
            set_a,
            set_b,
            name,
            oneway,
            ..
        } => {
            let a = spec::parse_set("SET_A", set_a)?;
            let b = spec::parse_set("SET_B", set_b)?;
            let name = name.clone().unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                format!("part-{}", t.as_millis() % 1_000_000_000)
            });
            let r = RuleSpec {
                src: a,
                dst: b,
                oneway: *oneway,
                ..RuleSpec::new(name, Kind::Partition)
            };
            r.validate()?;
            Some(r)
        }
        _ => None,
    })
}
