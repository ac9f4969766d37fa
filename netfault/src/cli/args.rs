//! The grammar shared by several subcommands, and the rule and partition arguments with their
//! conversion to a rule spec. Pure (the library's spec types, clap and std only): unit-tested
//! here and fuzzed as it is (`fuzz/fuzz_targets/cli_rule.rs` includes this file alone).
use std::time::Duration;

use clap::{Args, ValueEnum};

use netfault::spec::{
    self, Actions, BurstScope, Conn, CorruptChecksum, Direction, Distribution, GeModel, Kind,
    PortRange, Prob, Proto, Rate, RejectKind, RejectRate, RuleSpec, Shape, SpecError, Ttl,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// In the driver, before the kernel allocates an skb.
    Native,
    /// After the skb exists (any driver).
    Generic,
}

/// `rule add NAME ...`
#[derive(Args, Debug)]
pub struct RuleAddArgs {
    /// A name for the rule: letters, digits, `-`, `_`, `.`.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Direction of the traffic to match: ingress, egress or both.
    #[arg(long, default_value = "both", value_parser = parse_dir)]
    pub dir: Direction,
    /// Source addresses or CIDRs, comma-separated, v4 or v6 (one family per rule).
    #[arg(long, value_name = "CIDR", allow_hyphen_values = true)]
    pub src: Option<String>,
    /// Destination addresses or CIDRs, comma-separated, v4 or v6 (one family per rule).
    #[arg(long, value_name = "CIDR", allow_hyphen_values = true)]
    pub dst: Option<String>,
    /// tcp, udp, icmp (ICMPv6 for v6) or any.
    #[arg(long, default_value = "any", value_parser = parse_proto)]
    pub proto: Proto,
    /// Source port or inclusive range (needs --proto tcp or udp).
    #[arg(long, value_name = "P|LO-HI", value_parser = parse_ports, allow_hyphen_values = true)]
    pub sport: Option<PortRange>,
    /// Destination port or inclusive range (needs --proto tcp or udp).
    #[arg(long, value_name = "P|LO-HI", value_parser = parse_ports, allow_hyphen_values = true)]
    pub dport: Option<PortRange>,
    /// Only on this interface.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// Only TCP segments that open a connection (`new`: SYN without ACK) or only the others
    /// (`established`). Needs --proto tcp.
    #[arg(long, value_name = "STATE", value_parser = parse_conn)]
    pub conn: Option<Conn>,
    /// Only the traffic of sockets in this cgroup v2 subtree (a path absolute or relative to
    /// the cgroup2 mount). Applied at tc; delay, rate and hold at egress only.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    #[command(flatten)]
    pub act: ActionArgs,
    /// Delay and rate may replace a root qdisc another tool installed (not restored on detach).
    #[arg(long)]
    pub replace_qdisc: bool,
    /// Lifetime (`500ms`, `2m`), or `none`; enforced by the data path. Default 10m.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    pub ttl: Option<Ttl>,
    /// Do not protect the SSH connection this command runs over (see `protect`).
    #[arg(long)]
    pub no_protect: bool,
    /// Allow a rule that matches every packet (no address, protocol, port or interface).
    #[arg(long)]
    pub all_traffic: bool,
    /// Lower runs first; equal priorities run in the order added.
    #[arg(long, default_value_t = 1000, allow_hyphen_values = true)]
    pub priority: u32,
}

/// What a rule does: the flags `rule add` and `cluster impair` share (spec::Actions).
#[derive(Args, Debug, Default)]
pub struct ActionArgs {
    /// Drop probability: `30%` or `0.3`.
    #[arg(long, value_name = "PROB", value_parser = parse_prob, allow_hyphen_values = true)]
    pub drop: Option<Prob>,
    /// Duplicate probability: `30%` or `0.3`.
    #[arg(long, value_name = "PROB", value_parser = parse_prob, allow_hyphen_values = true)]
    pub duplicate: Option<Prob>,
    /// Delay each matched packet (`50ms`); netfault installs an fq qdisc to hold them.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, allow_hyphen_values = true)]
    pub delay: Option<Duration>,
    /// Vary the delay: standard deviation (normal, pareto, paretonormal) or half-width
    /// (uniform). Needs --delay.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, allow_hyphen_values = true)]
    pub jitter: Option<Duration>,
    /// Jitter distribution, as netem's: uniform (default), normal, pareto, paretonormal.
    #[arg(long, value_name = "DIST", value_parser = parse_distribution)]
    pub distribution: Option<Distribution>,
    /// Let jittered packets overtake each other (by default a flow keeps its order).
    #[arg(long)]
    pub reorder: bool,
    /// Pace matched traffic to RATE (`500kbit`, `10mbit`, `1gbit`; `kbps`/`mbps` are bytes).
    #[arg(long, value_name = "RATE", value_parser = parse_rate, allow_hyphen_values = true)]
    pub rate: Option<Rate>,
    /// Lose in runs: with --drop L, a Gilbert-Elliott chain whose runs of lost packets average
    /// this many (geometric); 1 is independent loss.
    #[arg(long, value_name = "MEAN_RUN", value_parser = parse_burst)]
    pub burst: Option<f64>,
    /// netem's Gilbert-Elliott model `p,r,1-h,1-k` (r, 1-h, 1-k optional), instead of
    /// --drop and --burst.
    #[arg(long, value_name = "P,R,1-H,1-K", value_parser = parse_gemodel)]
    pub gemodel: Option<GeModel>,
    /// One chain per flow (default: one flow's burst does not spill onto another's) or one
    /// for the whole rule.
    #[arg(long, value_name = "flow|rule", value_parser = parse_burst_scope)]
    pub burst_scope: Option<BurstScope>,
    /// Hold every matched packet from the rule's start for DURATION (`2s`, at most 60s), then
    /// release them all at once, in each flow's order; after that the rule holds nothing.
    /// Needs fq, as --delay does.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, allow_hyphen_values = true)]
    pub hold: Option<Duration>,
    /// Send each copy --duplicate makes DURATION after its original (`100ms`), instead of
    /// back to back. Needs --duplicate and --dir egress (fq holds the copy).
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, allow_hyphen_values = true)]
    pub duplicate_delay: Option<Duration>,
    #[command(flatten)]
    pub reject: RejectArgs,
    /// Flip one random bit of the transport payload of this fraction of the packets the rule
    /// passes (`5%` or `0.05`); packets without payload are left alone.
    #[arg(long, value_name = "PROB", value_parser = parse_prob, allow_hyphen_values = true)]
    pub corrupt: Option<Prob>,
    /// bad (default): the checksum stays the undamaged packet's, so the receiver's stack
    /// discards the packet; good: the checksum is made right, so the application receives the
    /// damaged bytes. Needs --corrupt.
    #[arg(long, value_name = "bad|good", value_parser = parse_corrupt_checksum)]
    pub corrupt_checksum: Option<CorruptChecksum>,
}

/// `--reject [KIND]` and `--reject-rate`: rules and partitions take them alike.
#[derive(Args, Debug, Default)]
pub struct RejectArgs {
    /// Answer what is dropped instead of dropping silently: tcp-reset (the default: a RST for
    /// TCP, ICMP port unreachable for the rest), icmp-port, icmp-host or icmp-admin. Without
    /// --drop a rule drops (and answers) every packet it matches.
    #[arg(long, value_name = "KIND", num_args = 0..=1, default_missing_value = "tcp-reset",
          value_parser = parse_reject)]
    pub reject: Option<RejectKind>,
    /// Replies per second at most, per rule, and the burst (`100/s`, `100/s,burst=20`;
    /// default 1000/s, burst 1000). Packets beyond it are dropped unanswered.
    #[arg(long, value_name = "RATE", value_parser = parse_reject_rate)]
    pub reject_rate: Option<RejectRate>,
}

impl ActionArgs {
    /// The actions as given (validated with the entry they belong to).
    pub fn actions(&self) -> Actions {
        Actions {
            drop: self.drop.unwrap_or_default(),
            duplicate: self.duplicate.unwrap_or_default(),
            shape: Shape {
                delay: self.delay,
                jitter: self.jitter,
                distribution: self.distribution.unwrap_or_default(),
                reorder: self.reorder,
                rate: self.rate,
            },
            burst: self.burst,
            gemodel: self.gemodel,
            burst_scope: self.burst_scope.unwrap_or_default(),
            reject: self.reject.reject,
            reject_rate: self.reject.reject_rate,
            corrupt: self.corrupt.unwrap_or_default(),
            corrupt_checksum: self.corrupt_checksum,
            hold: self.hold,
            duplicate_delay: self.duplicate_delay,
        }
    }
}

/// `partition SET_A SET_B ...`
#[derive(Args, Debug)]
pub struct PartitionArgs {
    /// Comma-separated addresses or CIDRs, v4 or v6.
    #[arg(value_name = "SET_A")]
    pub set_a: String,
    /// Comma-separated addresses or CIDRs, of the same family as SET_A.
    #[arg(value_name = "SET_B")]
    pub set_b: String,
    /// A name for `heal` and `renew` (default: part-NUMBER).
    #[arg(long)]
    pub name: Option<String>,
    /// Cut only traffic from SET_A to SET_B.
    #[arg(long)]
    pub oneway: bool,
    /// Cut only TCP, and of it only connections being opened (`new`: SYN without ACK, so
    /// established connections keep flowing) or only the other segments (`established`).
    #[arg(long, value_name = "STATE", value_parser = parse_conn)]
    pub conn: Option<Conn>,
    /// Cut only the traffic of sockets in this cgroup v2 subtree (a path absolute or relative
    /// to the cgroup2 mount), both ways; applied at tc.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Do not protect the SSH connection this command runs over (see `protect`).
    #[arg(long)]
    pub no_protect: bool,
    /// Lifetime (`30s`, `2m`), or `none`; enforced by the data path. Default 10m.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    pub ttl: Option<Ttl>,
    #[command(flatten)]
    pub reject: RejectArgs,
}

pub fn parse_reject(s: &str) -> Result<RejectKind, String> {
    s.parse()
}
pub fn parse_corrupt_checksum(s: &str) -> Result<CorruptChecksum, String> {
    s.parse()
}
pub fn parse_reject_rate(s: &str) -> Result<RejectRate, String> {
    s.parse()
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
pub fn parse_conn(s: &str) -> Result<Conn, String> {
    s.parse()
}
pub fn parse_burst(s: &str) -> Result<f64, String> {
    spec::burst::parse_burst(s)
}
pub fn parse_gemodel(s: &str) -> Result<GeModel, String> {
    s.parse()
}
pub fn parse_burst_scope(s: &str) -> Result<BurstScope, String> {
    s.parse()
}

/// `--cgroup PATH`, resolved (the only argument read from the host: the cgroup's id).
fn cgroup(path: &Option<String>) -> Result<Option<spec::CgroupMatch>, SpecError> {
    path.as_deref()
        .map(|p| spec::CgroupMatch::resolve("--cgroup", p))
        .transpose()
}

impl RuleAddArgs {
    /// The rule's spec, validated, from arguments alone (no kernel, no state).
    pub fn spec(&self) -> Result<RuleSpec, SpecError> {
        let set = |field: &str, v: &Option<String>| {
            v.as_deref()
                .map(|s| spec::parse_set(field, s))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let r = RuleSpec {
            dir: self.dir,
            src: set("--src", &self.src)?,
            dst: set("--dst", &self.dst)?,
            proto: self.proto,
            sport: self.sport.unwrap_or(PortRange::ALL),
            dport: self.dport.unwrap_or(PortRange::ALL),
            iface: self.iface.clone(),
            conn: self.conn.unwrap_or_default(),
            cgroup: cgroup(&self.cgroup)?,
            act: self.act.actions(),
            priority: self.priority,
            ..RuleSpec::new(self.name.clone(), Kind::Rule)
        };
        r.validate()?;
        if r.matches_everything() && !self.all_traffic {
            return Err(SpecError::new(
                "--all-traffic",
                "this rule matches every packet; add --src, --dst, --proto, a port or --iface, \
                 or say --all-traffic if that is what you want",
            ));
        }
        Ok(r)
    }
}

impl PartitionArgs {
    /// The partition's spec, validated, from arguments alone.
    pub fn spec(&self) -> Result<RuleSpec, SpecError> {
        let a = spec::parse_set("SET_A", &self.set_a)?;
        let b = spec::parse_set("SET_B", &self.set_b)?;
        let name = self.name.clone().unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!("part-{}", t.as_millis() % 1_000_000_000)
        });
        let r = RuleSpec {
            src: a,
            dst: b,
            oneway: self.oneway,
            conn: self.conn.unwrap_or_default(),
            cgroup: cgroup(&self.cgroup)?,
            ..RuleSpec::new(name, Kind::Partition)
        };
        let r = RuleSpec {
            act: Actions {
                reject: self.reject.reject,
                reject_rate: self.reject.reject_rate,
                ..r.act
            },
            ..r
        };
        r.validate()?;
        Ok(r)
    }
}
