//! Reject: what a rule or partition answers for the packets it drops (`--reject [KIND]`), and
//! how fast (`--reject-rate`). The data path builds the replies (netfault-ebpf's `reject`).
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// The reply to a rejected packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectKind {
    /// A RST for TCP; ICMP port unreachable for every other protocol.
    #[default]
    TcpReset,
    /// ICMP destination unreachable (ICMPv6: type 1) for every protocol, TCP included, with
    /// the code for a closed port (3; v6: 4), an unreachable host (1; v6: 3) or a prohibition
    /// (13; v6: 1).
    IcmpPort,
    IcmpHost,
    IcmpAdmin,
}

impl RejectKind {
    pub const ALL: [RejectKind; 4] = [
        RejectKind::TcpReset,
        RejectKind::IcmpPort,
        RejectKind::IcmpHost,
        RejectKind::IcmpAdmin,
    ];

    /// `RuleValue::reject`.
    pub fn code(self) -> u8 {
        match self {
            RejectKind::TcpReset => netfault_common::REJECT_TCP_RESET,
            RejectKind::IcmpPort => netfault_common::REJECT_ICMP_PORT,
            RejectKind::IcmpHost => netfault_common::REJECT_ICMP_HOST,
            RejectKind::IcmpAdmin => netfault_common::REJECT_ICMP_ADMIN,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RejectKind::TcpReset => "tcp-reset",
            RejectKind::IcmpPort => "icmp-port",
            RejectKind::IcmpHost => "icmp-host",
            RejectKind::IcmpAdmin => "icmp-admin",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RejectKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        RejectKind::ALL
            .into_iter()
            .find(|k| k.name() == t)
            .ok_or_else(|| {
                format!("'{s}' is not a reply (use tcp-reset, icmp-port, icmp-host or icmp-admin)")
            })
    }
}

/// Replies per second and the burst allowed at once: `100/s` (burst 100) or `100/s,burst=20`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct RejectRate {
    pub per_sec: u32,
    pub burst: u32,
}

/// Cilium's and the brief's default: enough for any test, far too few to reflect a flood.
pub const DEFAULT_REJECT_RATE: RejectRate = RejectRate {
    per_sec: 1000,
    burst: 1000,
};
/// Beyond this the pacing interval (1 s / rate) would round to nothing useful.
pub const MAX_REJECT_RATE: u32 = 1_000_000;

impl RejectRate {
    /// Nanoseconds between replies on average (GCRA's emission interval).
    pub fn interval_ns(&self) -> u64 {
        1_000_000_000 / u64::from(self.per_sec.max(1))
    }

    /// How far ahead of now the next due time may run: `burst - 1` intervals.
    pub fn tolerance_ns(&self) -> u64 {
        u64::from(self.burst.max(1) - 1) * self.interval_ns()
    }
}

impl fmt::Display for RejectRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s,burst={}", self.per_sec, self.burst)
    }
}

impl FromStr for RejectRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a reply rate (use e.g. 100/s or 100/s,burst=20)");
        let t = s.trim().to_ascii_lowercase();
        let (rate, burst) = match t.split_once(',') {
            Some((r, b)) => (r.trim(), Some(b.trim())),
            None => (t.as_str(), None),
        };
        let n = rate.strip_suffix("/s").unwrap_or(rate).trim();
        let per_sec: u32 = n.parse().map_err(|_| bad())?;
        let burst = match burst {
            Some(b) => b
                .strip_prefix("burst=")
                .ok_or_else(bad)?
                .trim()
                .parse()
                .map_err(|_| bad())?,
            None => per_sec,
        };
        let in_range = |v: u32| (1..=MAX_REJECT_RATE).contains(&v);
        if !in_range(per_sec) || !in_range(burst) {
            return Err(format!(
                "'{s}': the rate and the burst must be 1 to {MAX_REJECT_RATE}"
            ));
        }
        Ok(RejectRate { per_sec, burst })
    }
}

impl From<RejectRate> for String {
    fn from(r: RejectRate) -> String {
        r.to_string()
    }
}

impl TryFrom<String> for RejectRate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// The keys a partition takes besides its own (rule-set file `[[partition]]`, scenario
/// partition steps).
pub const PARTITION_KEYS: [&str; 2] = ["reject", "reject_rate"];

/// A partition's `reject` and `reject_rate` from its table, as actions with nothing else set;
/// `at(key)` names a key in errors.
pub fn partition_keys(
    t: &toml::Table,
    at: impl Fn(&str) -> String,
) -> Result<super::Actions, super::SpecError> {
    let mut a = super::Actions::default();
    for k in PARTITION_KEYS {
        if let Some(v) = t.get(k) {
            a.set_key(&at(k), k, v)?;
        }
    }
    if a.reject_rate.is_some() && a.reject.is_none() {
        return Err(super::SpecError::new(at("reject_rate"), "needs reject"));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_rates_parse_and_print_back() {
        for k in RejectKind::ALL {
            assert_eq!(k.to_string().parse::<RejectKind>().unwrap(), k);
        }
        assert!("rst".parse::<RejectKind>().is_err());
        let r: RejectRate = "100/s".parse().unwrap();
        assert_eq!((r.per_sec, r.burst), (100, 100));
        let r: RejectRate = "10/s,burst=3".parse().unwrap();
        assert_eq!((r.per_sec, r.burst), (10, 3));
        assert_eq!(r.to_string().parse::<RejectRate>().unwrap(), r);
        assert_eq!(r.interval_ns(), 100_000_000);
        assert_eq!(r.tolerance_ns(), 200_000_000);
        for bad in ["0/s", "x", "10/s,3", "10/s,burst=0", "2000000/s"] {
            assert!(bad.parse::<RejectRate>().is_err(), "{bad}");
        }
    }
}
