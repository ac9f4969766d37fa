//! What a rule does to the packets it matches, as one type for every surface that gives actions:
//! `rule add` flags, rule-set files (and the agent's `PUT /v1/ruleset`, which is one as JSON),
//! `cluster impair` and scenario `impair` steps. A new action is added here once (its field,
//! its key in [`Actions::set_key`], its checks in [`Actions::validate`], its JSON in
//! [`Actions::to_json`]) and a flag beside the others in the CLI's `ActionArgs`.
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use toml::Value;

use super::{
    CorruptChecksum, Prob, RejectKind, RejectRate, Shape, SpecError,
    burst::{self, BurstScope, GeModel},
    hold,
    toml_util::{boolean, duration, err, parsed, prob},
};

/// A rule's actions (all zero: none). Flattened into a rule's stored form, so its keys sit
/// beside the match fields (`drop`, `duplicate`, `shape`), as they always have.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Actions {
    #[serde(default)]
    pub drop: Prob,
    #[serde(default)]
    pub duplicate: Prob,
    /// Delay, jitter, distribution, reorder and rate.
    #[serde(default)]
    pub shape: Shape,
    /// Mean run of lost packets with `drop` as the loss rate (`burst`): above 1, the loss is a
    /// Gilbert-Elliott chain; 1 is independent loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
    /// netem's full Gilbert-Elliott model, instead of `drop` and `burst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemodel: Option<GeModel>,
    /// One chain per flow (default) or per rule.
    #[serde(default)]
    pub burst_scope: BurstScope,
    /// Answer what is dropped (a RST or an ICMP unreachable) instead of dropping silently;
    /// without `drop`, everything matched is dropped and answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject: Option<RejectKind>,
    /// Replies per second and burst; None: `reject::DEFAULT_REJECT_RATE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_rate: Option<RejectRate>,
    /// Flip one random payload bit of this fraction of the packets the rule passes.
    #[serde(default)]
    pub corrupt: Prob,
    /// What becomes of a corrupted packet's checksum; None: `bad` (given only with `corrupt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt_checksum: Option<CorruptChecksum>,
    /// Hold what the rule matches from its start for this long, then release it all at once
    /// (`hold::MAX_HOLD` at most).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::humantime_serde_opt"
    )]
    pub hold: Option<Duration>,
    /// A duplicate leaves this long after its original (with `duplicate`; egress only).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::humantime_serde_opt"
    )]
    pub duplicate_delay: Option<Duration>,
}

/// The keys [`Actions::set_key`] takes, in the order the documentation gives them.
pub const KEYS: &[&str] = &[
    "drop",
    "duplicate",
    "delay",
    "jitter",
    "distribution",
    "reorder",
    "rate",
    "burst",
    "gemodel",
    "burst_scope",
    "reject",
    "reject_rate",
    "corrupt",
    "corrupt_checksum",
    "hold",
    "duplicate_delay",
];

impl Actions {
    /// Only a drop with probability `p`.
    pub fn drops(p: Prob) -> Actions {
        Actions {
            drop: p,
            ..Actions::default()
        }
    }

    /// No action at all: such a rule would only count.
    pub fn is_empty(&self) -> bool {
        !self.loses()
            && self.duplicate.0 == 0.0
            && !self.shape.is_some()
            && self.hold.is_none()
            && !self.corrupts()
    }

    /// Does the rule corrupt packets (`corrupt` above 0)? Such a rule is applied at tc, and
    /// meets wire packets there (one bit of one packet on the wire, not of a GSO aggregate).
    pub fn corrupts(&self) -> bool {
        self.corrupt.0 > 0.0
    }

    /// Does the rule stamp departure times that an fq queue must honour (delay, jitter, rate,
    /// a hold, or late duplicates)?
    pub fn needs_fq(&self) -> bool {
        self.shape.is_some() || self.hold.is_some() || self.late_duplicates()
    }

    /// Are the rule's duplicates sent later than their originals?
    pub fn late_duplicates(&self) -> bool {
        self.duplicate.0 > 0.0 && self.duplicate_delay.is_some()
    }

    /// The latest departure after now that the rule may stamp, beyond its hold: the longest
    /// delay (jitter's worst case), plus the copies' delay.
    pub fn max_stamp_ns(&self) -> u64 {
        self.shape.model().max_ns()
            + self
                .duplicate_delay
                .filter(|_| self.late_duplicates())
                .map_or(0, |d| d.as_nanos() as u64)
    }

    /// The drop probability the data path applies: `--reject` alone (no `drop`, no
    /// `gemodel`) drops (and answers) all.
    pub fn effective_drop(&self) -> Prob {
        if self.reject.is_some() && self.drop.0 == 0.0 && self.gemodel.is_none() {
            Prob(1.0)
        } else {
            self.drop
        }
    }

    /// The Gilbert-Elliott chain the loss follows, if it is not independent.
    pub fn chain(&self) -> Option<GeModel> {
        burst::chain(self.drop, self.burst, self.gemodel)
    }

    /// Does the rule lose packets at all (`--drop`, a `--gemodel` that loses, or `--reject`,
    /// which answers what it loses and alone loses everything)?
    pub fn loses(&self) -> bool {
        self.drop.0 > 0.0 || self.gemodel.is_some_and(|g| g.loses()) || self.reject.is_some()
    }

    /// Is whether a packet is lost a draw (not always, not never)? Then the data path must see
    /// wire packets for the draw to be per packet (control::features).
    pub fn random_loss(&self) -> bool {
        (self.drop.0 > 0.0 && self.drop.0 < 1.0) || self.chain().is_some()
    }

    /// Sets the action `key` (one of [`KEYS`]) from a file's value; `path` names it in errors.
    /// Returns false for a key that is not an action's.
    pub fn set_key(&mut self, path: &str, key: &str, v: &Value) -> Result<bool, SpecError> {
        match key {
            "drop" => self.drop = prob(path, v)?,
            "duplicate" => self.duplicate = prob(path, v)?,
            "delay" => self.shape.delay = Some(duration(path, v)?),
            "jitter" => self.shape.jitter = Some(duration(path, v)?),
            "distribution" => self.shape.distribution = parsed(path, v)?,
            "reorder" => self.shape.reorder = boolean(path, v)?,
            "rate" => self.shape.rate = Some(parsed(path, v)?),
            "burst" => {
                let b = match v {
                    Value::Integer(i) => format!("{i}"),
                    Value::Float(f) => format!("{f}"),
                    Value::String(s) => s.clone(),
                    _ => return Err(err(path, "expected a mean run length (e.g. 4)")),
                };
                self.burst = Some(burst::parse_burst(&b).map_err(|m| err(path, m))?);
            }
            "gemodel" => self.gemodel = Some(parsed(path, v)?),
            "burst_scope" => self.burst_scope = parsed(path, v)?,
            // `true` (the default reply), `false` (none) or a reply's name.
            "reject" => {
                self.reject = match v {
                    Value::Boolean(b) => b.then(RejectKind::default),
                    _ => Some(parsed(path, v)?),
                }
            }
            "reject_rate" => self.reject_rate = Some(parsed(path, v)?),
            "corrupt" => self.corrupt = prob(path, v)?,
            "corrupt_checksum" => self.corrupt_checksum = Some(parsed(path, v)?),
            "hold" => self.hold = Some(duration(path, v)?),
            "duplicate_delay" => self.duplicate_delay = Some(duration(path, v)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks combinations that parsing alone cannot (fields are named as the CLI's flags,
    /// `--jitter`; file formats strip the dashes). An empty set of actions is not refused here:
    /// whether that is an error depends on the entry (a partition has its own).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.corrupt_checksum.is_some() && !self.corrupts() {
            return Err(SpecError::new(
                "--corrupt-checksum",
                "needs --corrupt (above 0): it says what becomes of a corrupted packet's checksum",
            ));
        }
        if self.reject_rate.is_some() && self.reject.is_none() {
            return Err(SpecError::new("--reject-rate", "needs --reject"));
        }
        if self.reject.is_some() && self.duplicate.0 > 0.0 {
            return Err(SpecError::new(
                "--reject",
                "cannot go with --duplicate (a packet is either answered or passed on)",
            ));
        }
        if self.reject.is_some() && self.shape.is_some() {
            return Err(SpecError::new(
                "--reject",
                "cannot go with --delay or --rate (a rejected packet never leaves)",
            ));
        }
        self.shape.validate()?;
        hold::validate(self)?;
        burst::validate(self.drop, self.burst, self.gemodel, self.burst_scope)
    }

    /// The actions as a file or a scenario step writes them (only those given).
    pub fn to_json(&self) -> Map<String, Json> {
        let mut m = Map::new();
        if self.drop.0 > 0.0 {
            m.insert("drop".into(), json!(self.drop.to_string()));
        }
        if self.duplicate.0 > 0.0 {
            m.insert("duplicate".into(), json!(self.duplicate.to_string()));
        }
        let dur = |d: std::time::Duration| humantime::format_duration(d).to_string();
        let s = &self.shape;
        if let Some(d) = s.delay {
            m.insert("delay".into(), json!(dur(d)));
        }
        if let Some(d) = s.jitter {
            m.insert("jitter".into(), json!(dur(d)));
            m.insert("distribution".into(), json!(s.distribution.to_string()));
        }
        if s.reorder {
            m.insert("reorder".into(), json!(true));
        }
        if let Some(r) = s.rate {
            m.insert("rate".into(), json!(r.to_string()));
        }
        if let Some(b) = self.burst {
            m.insert("burst".into(), json!(b));
        }
        if let Some(g) = self.gemodel {
            m.insert("gemodel".into(), json!(g.to_string()));
        }
        if self.burst_scope != BurstScope::Flow {
            m.insert("burst_scope".into(), json!(self.burst_scope.to_string()));
        }
        if let Some(k) = self.reject {
            m.insert("reject".into(), json!(k.to_string()));
        }
        if let Some(r) = self.reject_rate {
            m.insert("reject_rate".into(), json!(r.to_string()));
        }
        if self.corrupts() {
            m.insert("corrupt".into(), json!(self.corrupt.to_string()));
        }
        if let Some(c) = self.corrupt_checksum {
            m.insert("corrupt_checksum".into(), json!(c.to_string()));
        }
        if let Some(d) = self.hold {
            m.insert("hold".into(), json!(dur(d)));
        }
        if let Some(d) = self.duplicate_delay {
            m.insert("duplicate_delay".into(), json!(dur(d)));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `--gemodel` rule loses with `drop` at 0, and a chain is a draw even at `--drop 100%`
    /// alone's threshold: the hooks and device settings follow these (control::hooks, features).
    #[test]
    fn a_chain_is_random_loss_and_an_action() {
        let mut a = Actions {
            gemodel: Some("1%".parse().unwrap()),
            ..Actions::default()
        };
        assert!(a.loses() && a.random_loss() && !a.is_empty());
        a.gemodel = Some("0%,0%,0%,0%".parse().unwrap());
        assert!(!a.loses() && a.is_empty());
        let b = Actions {
            drop: Prob(0.05),
            burst: Some(1.0),
            ..Actions::default()
        };
        assert!(b.random_loss() && b.chain().is_none());
        let c = Actions::drops(Prob(1.0));
        assert!(c.loses() && !c.random_loss());
    }

    #[test]
    fn every_key_sets_what_to_json_writes_back() {
        let text = r#"
drop = "30%"
duplicate = 0.1
delay = "50ms"
jitter = "5ms"
distribution = "normal"
reorder = true
rate = "10mbit"
burst = 4
gemodel = "1%,25%,100%,0%"
burst_scope = "rule"
reject = "icmp-host"
reject_rate = "10/s,burst=5"
corrupt = "2%"
corrupt_checksum = "good"
hold = "2s"
duplicate_delay = "100ms"
"#;
        let t: toml::Table = text.parse().unwrap();
        let mut a = Actions::default();
        for (k, v) in &t {
            assert!(a.set_key(k, k, v).unwrap(), "{k}");
        }
        assert_eq!(t.len(), KEYS.len(), "the example covers every key");
        let back: toml::Table = toml::Table::try_from(a.to_json()).unwrap();
        let mut b = Actions::default();
        for (k, v) in &back {
            assert!(b.set_key(k, k, v).unwrap(), "{k}");
        }
        assert_eq!(a, b);
        assert_eq!(a.reject, Some(RejectKind::IcmpHost));
        let mut r = Actions::default();
        assert!(r.set_key("reject", "reject", &Value::from(true)).unwrap());
        assert_eq!(r.reject, Some(RejectKind::TcpReset));
        assert_eq!(r.effective_drop(), Prob(1.0));
        assert!(r.set_key("reject", "reject", &Value::from(false)).unwrap());
        assert_eq!(r.reject, None);
        r.reject_rate = Some("5/s".parse().unwrap());
        assert_eq!(r.validate().unwrap_err().field, "--reject-rate");
        assert_eq!(a.corrupt_checksum, Some(CorruptChecksum::Good));
        assert!(a.corrupts() && !a.is_empty());
        let mut c = Actions {
            corrupt_checksum: Some(CorruptChecksum::Bad),
            ..Actions::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "--corrupt-checksum");
        c.corrupt = Prob(0.5);
        c.validate().unwrap();
        assert!(!a.set_key("x", "name", &Value::from("n")).unwrap());
        assert_eq!(
            a.set_key("rule[0].drop", "drop", &Value::from("150%"))
                .unwrap_err()
                .field,
            "rule[0].drop"
        );
    }
}
