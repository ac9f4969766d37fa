//! Rule and partition specifications: parsing and validation of user input. Pure; no kernel.
use std::{fmt, str::FromStr, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub mod actions;
pub mod burst;
pub mod cgroup;
pub mod corrupt;
pub mod dist;
pub mod hold;
pub mod protection;
pub mod reject;
pub mod ruleset;
pub(crate) mod toml_util;

pub use actions::Actions;
pub use burst::{BurstScope, GeModel};
pub use cgroup::CgroupMatch;
pub use corrupt::CorruptChecksum;
pub use dist::Distribution;
pub use reject::{RejectKind, RejectRate};

/// Bad input, naming the field it came from. Exit status 2 at the CLI edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {msg}")]
pub struct SpecError {
    pub field: String,
    pub msg: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
    #[default]
    Both,
}

impl Direction {
    /// Whether this direction covers ingress (`true`) or egress (`false`) traffic.
    pub fn includes(self, ingress: bool) -> bool {
        match self {
            Self::Both => true,
            Self::Ingress => ingress,
            Self::Egress => !ingress,
        }
    }
}

impl FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ingress" | "in" => Ok(Self::Ingress),
            "egress" | "out" => Ok(Self::Egress),
            "both" => Ok(Self::Both),
            _ => Err(format!("'{s}' is not one of ingress, egress, both")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Any,
    Tcp,
    Udp,
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp,
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "any" | "all" => Ok(Self::Any),
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "icmp" | "icmpv6" | "icmp6" => Ok(Self::Icmp),
            _ => Err(format!("unknown protocol '{s}' (tcp, udp, icmp, any)")),
        }
    }
}

/// Which TCP segments of a connection an entry matches (`--conn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Conn {
    /// Every packet (no `--conn`).
    #[default]
    Any,
    /// A connection's first segment: TCP SYN without ACK.
    New,
    /// Every other TCP segment.
    Established,
}

impl FromStr for Conn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "new" => Ok(Self::New),
            "established" => Ok(Self::Established),
            _ => Err(format!("'{s}' is not one of new, established")),
        }
    }
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Any => "any",
            Self::New => "new",
            Self::Established => "established",
        })
    }
}

/// Inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };

    pub fn is_all(&self) -> bool {
        *self == Self::ALL
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    let v: u64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a port number"))?;
    u16::try_from(v).map_err(|_| format!("port {v} is out of range 0-65535"))
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (parse_port(a)?, parse_port(b)?),
            None => {
                let p = parse_port(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("range {lo}-{hi} has LO greater than HI"));
        }
        Ok(PortRange { lo, hi })
    }
}

/// A probability in [0, 1], from `30%` or `0.3`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Prob(pub f64);

impl FromStr for Prob {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (num, scale) = match t.strip_suffix('%') {
            Some(n) => (n.trim(), 100.0),
            None => (t, 1.0),
        };
        let v: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a probability (use 30% or 0.3)"))?;
        let p = v / scale;
        if !p.is_finite() || !(0.0..=1.0).contains(&p) {
            return Err(format!("'{s}' is outside [0, 1]"));
        }
        Ok(Prob(p))
    }
}

impl Prob {
    /// The data-path threshold: fire when `prandom_u32 < threshold`; `PROB_ALWAYS` always fires.
    pub fn threshold(self) -> u32 {
        if self.0 <= 0.0 {
            0
        } else if self.0 >= 1.0 {
            netfault_common::PROB_ALWAYS
        } else {
            // Clamp below PROB_ALWAYS so p < 1 never turns into "always", and above 0 so p > 0 can fire.
            let t = (self.0 * 4_294_967_296.0).round();
            (t as u64).clamp(1, u64::from(u32::MAX - 1)) as u32
        }
    }
}

impl fmt::Display for Prob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", (self.0 * 1e6).round() / 1e4)
    }
}

/// A rate in bytes per second, from tc's units: `500kbit`, `10mbit`, `1gbit` (bits, SI),
/// `kbps`, `mbps`, `gbps` (bytes, SI) and `kibit`, `mibit`, `gibit` (bits, binary). A unit is
/// required: a bare number means bits to some and bytes to others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub bytes_per_sec: u64,
}

/// Slowest pace: one 1500-byte packet every 12 s still fits the data path's arithmetic easily;
/// below this a "rate" is an outage, which `--drop 100%` says better.
pub const MIN_RATE_BITS: u64 = 1_000;
/// Beyond any NIC a rule could pace.
pub const MAX_RATE_BITS: u64 = 10_000_000_000_000;

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("'{s}' has no unit (use e.g. 500kbit, 10mbit, 1gbit)"))?;
        let (num, unit) = t.split_at(split);
        let v: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a rate (use e.g. 500kbit, 10mbit, 1gbit)"))?;
        let bits_per_unit: f64 = match unit {
            "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "tbit" => 1e12,
            "kibit" => 1024.0,
            "mibit" => 1024.0 * 1024.0,
            "gibit" => 1024.0 * 1024.0 * 1024.0,
            "bps" => 8.0,
            "kbps" => 8e3,
            "mbps" => 8e6,
            "gbps" => 8e9,
            _ => {
                return Err(format!(
                    "'{s}': unknown unit '{unit}' (bit, kbit, mbit, gbit, tbit, kibit, mibit, gibit, bps, kbps, mbps, gbps)"
                ));
            }
        };
        let bits = v * bits_per_unit;
        if !bits.is_finite() || bits < MIN_RATE_BITS as f64 || bits > MAX_RATE_BITS as f64 {
            return Err(format!("'{s}' is outside 1kbit to 10tbit"));
        }
        Ok(Rate {
            bytes_per_sec: (bits / 8.0).round() as u64,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bytes_per_sec as f64 * 8.0;
        for (unit, scale) in [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)] {
            if bits >= scale {
                return write!(f, "{}{unit}", (bits / scale * 1000.0).round() / 1000.0);
            }
        }
        write!(f, "{bits}bit")
    }
}

/// Longest delay (and delay plus jitter) a rule may ask for: fq's horizon must exceed it, and
/// anything longer is an outage, better said with `--drop 100%`.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Parses a human duration (`500ms`, `2m`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("'{s}': {e}"))?;
    if d.is_zero() {
        return Err(format!("'{s}' is zero"));
    }
    Ok(d)
}

/// A time to live: a duration, or `none` for no expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ttl {
    For(Duration),
    Never,
}

/// Rules and partitions expire after this unless told otherwise: a forgotten fault heals itself.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

impl FromStr for Ttl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("none") {
            Ok(Ttl::Never)
        } else {
            parse_duration(s).map(Ttl::For)
        }
    }
}

impl Default for Ttl {
    fn default() -> Self {
        Ttl::For(DEFAULT_TTL)
    }
}

/// Parses a CIDR or a bare address (a host route).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty address".into());
    }
    if t.contains('/') {
        let n: IpNet = t
            .parse()
            .map_err(|_| format!("'{t}' is not a CIDR (e.g. 192.0.2.0/24, 2001:db8::/32)"))?;
        if n.network() != n.addr() {
            return Err(format!(
                "'{t}' has host bits set; did you mean {}?",
                n.trunc()
            ));
        }
        Ok(n)
    } else {
        let a: std::net::IpAddr = t
            .parse()
            .map_err(|_| format!("'{t}' is not an IP address or CIDR"))?;
        Ok(IpNet::from(a))
    }
}

/// Parses a comma-separated set of addresses/CIDRs; empty sets are refused.
pub fn parse_set(field: &str, s: &str) -> Result<Vec<IpNet>, SpecError> {
    let mut out = Vec::new();
    for part in s.split(',') {
        if part.trim().is_empty() {
            return Err(SpecError::new(field, format!("empty element in '{s}'")));
        }
        out.push(parse_net(part).map_err(|m| SpecError::new(field, m))?);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Rule,
    Partition,
    /// Passes matching traffic before any rule or partition: the operator's own connection.
    Protect,
}

/// A validated rule or partition, as stored in the controller's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub name: String,
    pub kind: Kind,
    pub dir: Direction,
    /// Empty: any source.
    pub src: Vec<IpNet>,
    /// Empty: any destination.
    pub dst: Vec<IpNet>,
    pub proto: Proto,
    pub sport: PortRange,
    pub dport: PortRange,
    pub iface: Option<String>,
    /// Drop, duplicate, delay, ...: what the entry does to what it matches.
    #[serde(flatten)]
    pub act: Actions,
    /// Lower runs first; equal priorities run in creation order.
    pub priority: u32,
    /// Partition only: traffic from `dst` to `src` too is cut unless oneway.
    pub oneway: bool,
    /// Only TCP segments that open a connection, or only the others (a match, for rules and
    /// partitions alike); `Any`: every packet.
    #[serde(default, skip_serializing_if = "is_any_conn")]
    pub conn: Conn,
    /// Only the traffic of sockets in this cgroup v2 subtree (`--cgroup`); tc only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupMatch>,
}

fn is_any_conn(c: &Conn) -> bool {
    *c == Conn::Any
}

/// Delay, jitter and rate of a rule (all zero/none: no shaping).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Shape {
    #[serde(default, with = "humantime_serde_opt")]
    pub delay: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub jitter: Option<Duration>,
    #[serde(default)]
    pub distribution: Distribution,
    /// Let jittered packets overtake each other (default: per-flow order is kept).
    #[serde(default)]
    pub reorder: bool,
    #[serde(default)]
    pub rate: Option<Rate>,
}

impl Shape {
    pub fn is_some(&self) -> bool {
        self.delay.is_some() || self.rate.is_some()
    }

    pub fn model(&self) -> crate::spec::dist::DelayModel {
        crate::spec::dist::DelayModel {
            delay_ns: self.delay.map_or(0, |d| d.as_nanos() as u64),
            jitter_ns: self.jitter.map_or(0, |d| d.as_nanos() as u64),
            dist: self.distribution,
        }
    }

    /// Checks combinations parsing cannot: jitter needs a delay, and so on.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.jitter.is_some() && self.delay.is_none() {
            return Err(SpecError::new("--jitter", "needs --delay"));
        }
        if self.distribution != Distribution::Uniform && self.jitter.is_none() {
            return Err(SpecError::new("--distribution", "needs --jitter"));
        }
        if self.reorder && self.jitter.is_none() {
            return Err(SpecError::new(
                "--reorder",
                "needs --jitter (a fixed delay never reorders)",
            ));
        }
        let worst = self.model().max_ns();
        if worst > MAX_DELAY.as_nanos() as u64 {
            let field = if self.jitter.is_some() {
                "--jitter"
            } else {
                "--delay"
            };
            return Err(SpecError::new(
                field,
                format!(
                    "the longest delay this asks for is {}, beyond the {}s limit",
                    humantime::format_duration(Duration::from_nanos(worst)),
                    MAX_DELAY.as_secs()
                ),
            ));
        }
        Ok(())
    }
}

/// `Option<Duration>` as a humantime string (`"50ms"`) in state files.
pub(crate) mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let v: Option<String> = Option::deserialize(d)?;
        v.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub fn validate_name(field: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > 64 {
        return Err(SpecError::new(field, "must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(SpecError::new(
            field,
            format!("'{name}' may contain only letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

fn family_of(nets: &[IpNet]) -> Option<Option<bool>> {
    // Some(None): empty; Some(Some(is_v6)): one family; None: mixed.
    let mut fam = None;
    for n in nets {
        let v6 = matches!(n, IpNet::V6(_));
        match fam {
            None => fam = Some(v6),
            Some(f) if f != v6 => return None,
            _ => {}
        }
    }
    Some(fam)
}

/// Priority of rules that do not say: after any rule that does, in the order added.
pub const DEFAULT_PRIORITY: u32 = 1000;

impl RuleSpec {
    /// A `kind` entry named `name` that matches everything: set the fields it needs. Rules start
    /// with no action and the default priority; partitions drop (both ways) and protections pass.
    pub fn new(name: impl Into<String>, kind: Kind) -> Self {
        RuleSpec {
            name: name.into(),
            kind,
            dir: Direction::Both,
            src: vec![],
            dst: vec![],
            proto: Proto::Any,
            sport: PortRange::ALL,
            dport: PortRange::ALL,
            iface: None,
            act: Actions {
                drop: Prob(if kind == Kind::Partition { 1.0 } else { 0.0 }),
                ..Actions::default()
            },
            priority: if kind == Kind::Rule {
                DEFAULT_PRIORITY
            } else {
                0
            },
            oneway: false,
            conn: Conn::Any,
            cgroup: None,
        }
    }

    /// The protocol the entry matches: a partition with `--conn` is a TCP partition.
    pub fn effective_proto(&self) -> Proto {
        if self.conn != Conn::Any {
            Proto::Tcp
        } else {
            self.proto
        }
    }

    /// Would this rule hit every packet? (No match field, or only 0.0.0.0/0 and ::/0.)
    pub fn matches_everything(&self) -> bool {
        let any = |v: &[IpNet]| v.iter().all(|n| n.prefix_len() == 0);
        any(&self.src)
            && any(&self.dst)
            && self.proto == Proto::Any
            && self.iface.is_none()
            && self.cgroup.is_none()
            && self.sport.is_all()
            && self.dport.is_all()
    }

    /// Checks what parsing alone cannot: families that can never meet, actions present.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("NAME", &self.name)?;
        if self.kind == Kind::Partition
            && self.act.reject_rate.is_some()
            && self.act.reject.is_none()
        {
            return Err(SpecError::new("--reject-rate", "needs --reject"));
        }
        if self.cgroup.is_some() && self.kind == Kind::Protect {
            return Err(SpecError::new(
                "--cgroup",
                "protections match addresses only",
            ));
        }
        if self.cgroup.is_some()
            && self.kind == Kind::Rule
            && self.dir.includes(true)
            && self.act.needs_fq()
        {
            return Err(SpecError::new(
                "--cgroup",
                "delay, rate and hold apply to a cgroup's traffic at egress only: add --dir egress",
            ));
        }
        if self.kind == Kind::Rule {
            let s = family_of(&self.src).ok_or_else(|| {
                SpecError::new("--src", "mixes IPv4 and IPv6; use one rule per family")
            })?;
            let d = family_of(&self.dst).ok_or_else(|| {
                SpecError::new("--dst", "mixes IPv4 and IPv6; use one rule per family")
            })?;
            if let (Some(a), Some(b)) = (s, d)
                && a != b
            {
                return Err(SpecError::new(
                    "--dst",
                    "is of a different IP family from --src; the rule could never match",
                ));
            }
            if (!self.sport.is_all() || !self.dport.is_all())
                && !matches!(self.proto, Proto::Tcp | Proto::Udp)
            {
                let f = if self.sport.is_all() {
                    "--dport"
                } else {
                    "--sport"
                };
                return Err(SpecError::new(f, "needs --proto tcp or udp"));
            }
            if self.conn != Conn::Any && self.proto != Proto::Tcp {
                return Err(SpecError::new(
                    "--conn",
                    "needs --proto tcp: only TCP says in each packet whether it opens a \
                     connection (SYN without ACK); the state of UDP and other flows is not \
                     tracked",
                ));
            }
            self.act.validate()?;
            hold::validate_dir(&self.act, self.dir)?;
            if self.act.is_empty() {
                return Err(SpecError::new(
                    "action",
                    "give --drop, --gemodel, --duplicate, --delay, --rate, --hold, --reject or --corrupt (a rule with no action would only count)",
                ));
            }
        }
        Ok(())
    }
}

/// A protected endpoint from `protect add`: `CIDR`, `CIDR:PORT`, or `[V6CIDR]:PORT`.
pub fn parse_protect(s: &str) -> Result<(IpNet, Option<u16>), SpecError> {
    let field = "CIDR[:PORT]";
    let t = s.trim();
    let (addr, port) = if let Some(rest) = t.strip_prefix('[') {
        let (a, p) = rest
            .split_once("]:")
            .ok_or_else(|| SpecError::new(field, format!("'{s}': expected [V6ADDR]:PORT")))?;
        (a, Some(p))
    } else if let Some((a, p)) = t.split_once(':').filter(|_| t.matches(':').count() == 1) {
        (a, Some(p))
    } else {
        (t, None)
    };
    let net = parse_net(addr).map_err(|m| SpecError::new(field, m))?;
    let port = port
        .map(|p| parse_port(p).map_err(|m| SpecError::new(field, m)))
        .transpose()?;
    Ok((net, port))
}

/// The SSH connection a command runs over, from `SSH_CONNECTION`
/// ("client_ip client_port server_ip server_port").
pub fn parse_ssh_connection(v: &str) -> Option<(std::net::IpAddr, u16, std::net::IpAddr, u16)> {
    let f: Vec<&str> = v.split_whitespace().collect();
    if f.len() != 4 {
        return None;
    }
    // Link-local addresses may carry a zone (%eth0) that IpAddr does not parse.
    let ip = |s: &str| s.split('%').next().and_then(|a| a.parse().ok());
    Some((ip(f[0])?, f[1].parse().ok()?, ip(f[2])?, f[3].parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protect_endpoints() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            parse_protect("192.0.2.0/24").unwrap(),
            (n("192.0.2.0/24"), None)
        );
        assert_eq!(
            parse_protect("192.0.2.1:22").unwrap(),
            (n("192.0.2.1/32"), Some(22))
        );
        assert_eq!(
            parse_protect("2001:db8::1").unwrap(),
            (n("2001:db8::1/128"), None)
        );
        assert_eq!(
            parse_protect("[2001:db8::/32]:22").unwrap(),
            (n("2001:db8::/32"), Some(22))
        );
        assert!(parse_protect("192.0.2.1:99999").is_err());
        assert!(parse_protect("[2001:db8::1]").is_err());
        assert_eq!(
            parse_ssh_connection("192.0.2.9 50022 192.0.2.1 22"),
            Some((
                "192.0.2.9".parse().unwrap(),
                50022,
                "192.0.2.1".parse().unwrap(),
                22
            ))
        );
        assert!(parse_ssh_connection("fe80::1%eth0 5 fe80::2%eth0 22").is_some());
        assert!(parse_ssh_connection("garbage").is_none());
    }

    #[test]
    fn probabilities() {
        assert_eq!("30%".parse::<Prob>().unwrap(), Prob(0.3));
        assert_eq!("0.3".parse::<Prob>().unwrap(), Prob(0.3));
        assert_eq!("100%".parse::<Prob>().unwrap().threshold(), u32::MAX);
        assert_eq!("1".parse::<Prob>().unwrap().threshold(), u32::MAX);
        assert_eq!("0".parse::<Prob>().unwrap().threshold(), 0);
        assert_eq!("0%".parse::<Prob>().unwrap().threshold(), 0);
        assert_eq!(Prob(0.5).threshold(), 1 << 31);
        assert_eq!(Prob(1e-12).threshold(), 1);
        assert_eq!(Prob(1.0 - 1e-12).threshold(), u32::MAX - 1);
        for bad in ["1.5", "-0.1", "101%", "abc", "", "nan", "inf", "%"] {
            assert!(bad.parse::<Prob>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(
            "80".parse::<PortRange>().unwrap(),
            PortRange { lo: 80, hi: 80 }
        );
        assert_eq!(
            "1000-2000".parse::<PortRange>().unwrap(),
            PortRange { lo: 1000, hi: 2000 }
        );
        assert_eq!("0-65535".parse::<PortRange>().unwrap(), PortRange::ALL);
        for bad in ["65536", "2000-1000", "-1", "a", "1-", "80-70000", ""] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nets() {
        assert_eq!(
            parse_net("192.0.2.1").unwrap(),
            "192.0.2.1/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_net("2001:db8::/32").unwrap(),
            "2001:db8::/32".parse::<IpNet>().unwrap()
        );
        assert!(parse_net("192.0.2.1/24").unwrap_err().contains("host bits"));
        for bad in ["192.0.2.0/33", "300.1.1.1", "2001:db8::/129", "x", ""] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_set("SET_A", "192.0.2.1,192.0.2.2").unwrap().len(), 2);
        assert_eq!(
            parse_set("SET_A", "192.0.2.1,,x").unwrap_err().field,
            "SET_A"
        );
    }

    #[test]
    fn ttl_and_names() {
        assert_eq!("none".parse::<Ttl>().unwrap(), Ttl::Never);
        assert_eq!(
            "500ms".parse::<Ttl>().unwrap(),
            Ttl::For(Duration::from_millis(500))
        );
        assert!("0s".parse::<Ttl>().is_err());
        assert!("soon".parse::<Ttl>().is_err());
        assert!(validate_name("NAME", "web-1.a_b").is_ok());
        assert!(validate_name("NAME", "a b").is_err());
        assert!(validate_name("NAME", "").is_err());
    }

    fn rule() -> RuleSpec {
        let mut r = RuleSpec::new("r", Kind::Rule);
        r.act.drop = Prob(0.5);
        r
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = rule();
        r.src = vec![parse_net("192.0.2.1").unwrap()];
        r.dst = vec![parse_net("2001:db8::1").unwrap()];
        assert_eq!(r.validate().unwrap_err().field, "--dst");
        let mut r = rule();
        r.dport = "80".parse().unwrap();
        assert_eq!(r.validate().unwrap_err().field, "--dport");
        let mut r = rule();
        r.act.drop = Prob(0.0);
        assert_eq!(r.validate().unwrap_err().field, "action");
        assert!(rule().validate().is_ok());
    }
}
