//! What a rule does to the packets it matches, as one type for every surface that gives actions:
//! `rule add` flags, rule-set files (and the agent's `PUT /v1/ruleset`, which is one as JSON),
//! `cluster impair` and scenario `impair` steps. A new action is added here once (its field,
//! its key in [`Actions::set_key`], its checks in [`Actions::validate`], its JSON in
//! [`Actions::to_json`]) and a flag beside the others in the CLI's `ActionArgs`.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use toml::Value;

use super::{
    Prob, RejectKind, RejectRate, Shape, SpecError,
    toml_util::{boolean, duration, parsed, prob},
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
    /// Answer what is dropped (a RST or an ICMP unreachable) instead of dropping silently;
    /// without `drop`, everything matched is dropped and answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject: Option<RejectKind>,
    /// Replies per second and burst; None: `reject::DEFAULT_REJECT_RATE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_rate: Option<RejectRate>,
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
    "reject",
    "reject_rate",
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
        self.drop.0 == 0.0
            && self.duplicate.0 == 0.0
            && !self.shape.is_some()
            && self.reject.is_none()
    }

    /// The drop probability the data path applies: `--reject` alone drops (and answers) all.
    pub fn effective_drop(&self) -> Prob {
        if self.reject.is_some() && self.drop.0 == 0.0 {
            Prob(1.0)
        } else {
            self.drop
        }
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
            // `true` (the default reply), `false` (none) or a reply's name.
            "reject" => {
                self.reject = match v {
                    Value::Boolean(b) => b.then(RejectKind::default),
                    _ => Some(parsed(path, v)?),
                }
            }
            "reject_rate" => self.reject_rate = Some(parsed(path, v)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks combinations that parsing alone cannot (fields are named as the CLI's flags,
    /// `--jitter`; file formats strip the dashes). An empty set of actions is not refused here:
    /// whether that is an error depends on the entry (a partition has its own).
    pub fn validate(&self) -> Result<(), SpecError> {
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
        self.shape.validate()
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
        if let Some(k) = self.reject {
            m.insert("reject".into(), json!(k.to_string()));
        }
        if let Some(r) = self.reject_rate {
            m.insert("reject_rate".into(), json!(r.to_string()));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
reject = "icmp-host"
reject_rate = "10/s,burst=5"
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
        assert!(!a.set_key("x", "name", &Value::from("n")).unwrap());
        assert_eq!(
            a.set_key("rule[0].drop", "drop", &Value::from("150%"))
                .unwrap_err()
                .field,
            "rule[0].drop"
        );
    }
}
