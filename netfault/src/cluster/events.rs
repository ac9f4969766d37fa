//! The event log of `cluster run --events FILE`: one JSON object per line, flushed as it is
//! written (a run killed with `kill -9` leaves every line it wrote whole).
//!
//! A node's line is written for each change on that node:
//!
//! ```json
//! {"ts":"2026-12-01T11:02:03.123456789Z","node":"n2","phase":"start","fault":"partition",
//!  "name":"flap","step":0,"occurrence":1,"entries":["flap.from-n1.v4","flap.from-n1.v6"],
//!  "grudge":["n1"]}
//! ```
//!
//! - `ts`: RFC 3339, UTC, nanoseconds: when the node's change took effect (its publish
//!   returned), or when the coordinator learnt it failed. A test history can be joined on it.
//! - `node`: the node's name; `null` on the coordinator's own lines.
//! - `phase`: `start` (the fault is on), `end` (it is off), `failed` (the node could not do
//!   what was asked; `error` says why, `op` what: `apply`, `delete`, `renew`), `expired` (a
//!   renewal found the entries gone: the data path let them go when the lease ran out),
//!   `cleared` (before the first step: entries of the scenario's step names an earlier run
//!   left, live or expired, deleted; only `ts`, `node`, `phase`, `entries` and `reason`).
//! - `fault`: `partition` or `impair`; `name`: the step's name (entries start with it);
//!   `step`: its index in the file; `occurrence`: 0-based repetition.
//! - `grudge`: for a partition, the nodes whose packets this node drops; `impair`: for an
//!   impairment, the impairment as the step gives it. `entries`: the node's entry names.
//!
//! The coordinator's lines (`"node": null`) follow each step's node lines, with `nodes`, the
//! `planned` time, `first` and `last` (the earliest and latest node `ts`), `spread_ns` (last -
//! first) and `lag_ns` (first - planned). It also writes one `begin` line (seed, lease, nodes)
//! and one `finish` line (`outcome`: `finished`, `interrupted`, `terminated`, `error`).
//!
//! A step with `verify = true` adds, after its start lines, a coordinator line with `phase`
//! `verify` ([`verify_line`]): whether the wire showed what the step configured, and the pairs
//! where it did not.
use std::{
    io::{self, Write},
    path::Path,
    time::SystemTime,
};

use serde_json::{Map, Value, json};

use super::{Grudge, Impair};

/// RFC 3339, UTC, nanoseconds (`2026-12-01T11:02:03.123456789Z`).
pub fn rfc3339(ts: SystemTime) -> String {
    humantime::format_rfc3339_nanos(ts).to_string()
}

/// Where the lines go: a file, stdout (`-`), or nowhere.
pub struct Log {
    out: Option<Box<dyn Write + Send>>,
    pub to_stdout: bool,
}

impl Log {
    pub fn none() -> Self {
        Self {
            out: None,
            to_stdout: false,
        }
    }

    /// Appends to `path` (created if missing); `-` is stdout. One-shot commands keep one
    /// history across invocations this way.
    pub fn append(path: &Path) -> io::Result<Self> {
        if path == Path::new("-") {
            return Self::open(path);
        }
        Ok(Self {
            out: Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
            to_stdout: false,
        })
    }

    /// Creates (truncates) `path`; `-` is stdout.
    pub fn open(path: &Path) -> io::Result<Self> {
        if path == Path::new("-") {
            return Ok(Self {
                out: Some(Box::new(io::stdout())),
                to_stdout: true,
            });
        }
        Ok(Self {
            out: Some(Box::new(std::fs::File::create(path)?)),
            to_stdout: false,
        })
    }

    /// Writes one line and flushes it.
    pub fn write(&mut self, line: &Value) -> io::Result<()> {
        if let Some(out) = self.out.as_mut() {
            let mut text = line.to_string();
            text.push('\n');
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        Ok(())
    }
}

/// What one occurrence of a step is: the fields its lines share.
#[derive(Debug, Clone)]
pub struct Occurrence {
    pub step: usize,
    pub occurrence: u32,
    pub name: String,
    pub topology: Option<String>,
    pub grudge: Option<Grudge>,
    pub impair: Option<Impair>,
    /// A pause step's nodes.
    pub pause: Option<Vec<String>>,
}

impl Occurrence {
    pub fn fault(&self) -> &'static str {
        if self.impair.is_some() {
            "impair"
        } else if self.pause.is_some() {
            "pause"
        } else {
            "partition"
        }
    }

    fn common(&self, ts: SystemTime, node: Option<&str>, phase: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("ts".into(), json!(rfc3339(ts)));
        m.insert("node".into(), json!(node));
        m.insert("phase".into(), json!(phase));
        m.insert("fault".into(), json!(self.fault()));
        m.insert("name".into(), json!(self.name));
        m.insert("step".into(), json!(self.step));
        m.insert("occurrence".into(), json!(self.occurrence));
        m
    }

    /// A node's line: `entries` are its entry names; `error` for `failed`.
    pub fn node_line(
        &self,
        ts: SystemTime,
        node: &str,
        phase: &str,
        entries: &[String],
        extra: &[(&str, Value)],
    ) -> Value {
        let mut m = self.common(ts, Some(node), phase);
        m.insert("entries".into(), json!(entries));
        if let Some(g) = &self.grudge {
            m.insert(
                "grudge".into(),
                json!(g.0.get(node).cloned().unwrap_or_default()),
            );
        }
        if let Some(i) = &self.impair {
            m.insert("impair".into(), impair_json(i));
        }
        for (k, v) in extra {
            m.insert((*k).into(), v.clone());
        }
        Value::Object(m)
    }

    /// The coordinator's line after a step's node lines: the spread of their times.
    pub fn coordinator_line(
        &self,
        ts: SystemTime,
        phase: &str,
        planned: SystemTime,
        stamps: &[(String, SystemTime)],
    ) -> Value {
        let mut m = self.common(ts, None, phase);
        let nodes: Vec<&str> = stamps.iter().map(|(n, _)| n.as_str()).collect();
        m.insert("nodes".into(), json!(nodes));
        if let Some(t) = &self.topology {
            m.insert("topology".into(), json!(t));
        }
        if let Some(g) = &self.grudge {
            m.insert("grudge".into(), json!(g.0));
        }
        if let Some(i) = &self.impair {
            m.insert("impair".into(), impair_json(i));
        }
        if let Some(p) = &self.pause {
            m.insert("pause".into(), json!(p));
        }
        m.insert("planned".into(), json!(rfc3339(planned)));
        let first = stamps.iter().map(|(_, t)| *t).min();
        let last = stamps.iter().map(|(_, t)| *t).max();
        if let (Some(f), Some(l)) = (first, last) {
            m.insert("first".into(), json!(rfc3339(f)));
            m.insert("last".into(), json!(rfc3339(l)));
            m.insert("spread_ns".into(), json!(nanos_between(f, l)));
            m.insert("lag_ns".into(), json!(signed_nanos(planned, f)));
        }
        Value::Object(m)
    }
}

/// `b - a` in nanoseconds, 0 when b is earlier.
pub fn nanos_between(a: SystemTime, b: SystemTime) -> u64 {
    b.duration_since(a)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `b - a` in nanoseconds, negative when b is earlier.
fn signed_nanos(a: SystemTime, b: SystemTime) -> i64 {
    match b.duration_since(a) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// An impairment as a scenario step writes it.
pub fn impair_json(i: &Impair) -> Value {
    let mut m = Map::new();
    m.insert("from".into(), json!(i.from));
    m.insert("to".into(), json!(i.to));
    m.extend(i.traffic.to_json());
    m.extend(i.act.to_json());
    Value::Object(m)
}

/// The coordinator's `verify` line for one fault: `ok`, `checked`, the `mismatches` (each
/// `from`, `to`, `family`, `probe`, `configured`, `observed`, `sent`, `received`) and what was
/// `not_verifiable`. `fields` come first (a scenario's `step` and `occurrence`).
pub fn verify_line(ts: SystemTime, v: &super::verify::Verdict, fields: &[(&str, Value)]) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), json!(rfc3339(ts)));
    m.insert("node".into(), Value::Null);
    m.insert("phase".into(), json!("verify"));
    m.insert("fault".into(), json!(v.fault));
    m.insert("name".into(), json!(v.name));
    for (k, x) in fields {
        m.insert((*k).into(), x.clone());
    }
    m.insert("ok".into(), json!(v.ok));
    m.insert("checked".into(), json!(v.checked));
    let bad: Vec<Value> = v
        .mismatched()
        .map(|p| {
            json!({
                "from": p.from, "to": p.to, "family": p.family, "probe": p.probe,
                "configured": p.configured, "observed": p.observed,
                "sent": p.sent, "received": p.received,
            })
        })
        .collect();
    m.insert("mismatches".into(), json!(bad));
    m.insert("not_verifiable".into(), json!(v.not_verifiable));
    Value::Object(m)
}

/// The coordinator's `begin` or `finish` line.
pub fn run_line(ts: SystemTime, phase: &str, fields: &[(&str, Value)]) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), json!(rfc3339(ts)));
    m.insert("node".into(), Value::Null);
    m.insert("phase".into(), json!(phase));
    for (k, v) in fields {
        m.insert((*k).into(), v.clone());
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use std::time::Duration;

    use crate::spec::{Actions, Prob, Shape};

    #[test]
    fn lines_carry_the_documented_fields() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_796_000_000_123_456_789);
        let g = Grudge(BTreeMap::from([
            ("n1".to_string(), BTreeSet::from(["n2".to_string()])),
            ("n2".to_string(), BTreeSet::new()),
        ]));
        let occ = Occurrence {
            step: 0,
            occurrence: 1,
            name: "flap".into(),
            topology: Some("halves".into()),
            grudge: Some(g),
            impair: None,
            pause: None,
        };
        let l = occ.node_line(t0, "n1", "start", &["flap.from-n2.v4".into()], &[]);
        assert_eq!(l["ts"], "2026-11-30T00:53:20.123456789Z");
        assert_eq!(l["node"], "n1");
        assert_eq!(l["fault"], "partition");
        assert_eq!(l["grudge"], json!(["n2"]));
        assert_eq!(l["occurrence"], 1);
        let later = t0 + Duration::from_micros(1500);
        let c = occ.coordinator_line(
            later,
            "start",
            t0 - Duration::from_millis(2),
            &[("n1".into(), t0), ("n2".into(), later)],
        );
        assert!(c["node"].is_null());
        assert_eq!(c["spread_ns"], 1_500_000);
        assert_eq!(c["lag_ns"], 2_000_000);
        assert_eq!(c["grudge"]["n1"], json!(["n2"]));
        let imp = Occurrence {
            grudge: None,
            topology: None,
            impair: Some(Impair {
                from: vec!["n1".into()],
                to: vec!["n2".into()],
                act: Actions {
                    drop: Prob(0.05),
                    shape: Shape {
                        delay: Some(Duration::from_millis(100)),
                        ..Shape::default()
                    },
                    ..Actions::default()
                },
                traffic: crate::cluster::plan::Traffic::default(),
            }),
            ..occ
        };
        let l = imp.node_line(t0, "n2", "end", &[], &[("reason", json!("finished"))]);
        assert_eq!(l["fault"], "impair");
        assert_eq!(
            l["impair"],
            json!({"from": ["n1"], "to": ["n2"], "drop": "5%", "delay": "100ms"})
        );
        assert_eq!(l["reason"], "finished");
        assert!(l.get("grudge").is_none());
        let p = Occurrence {
            impair: None,
            pause: Some(vec!["n1".into()]),
            ..imp
        };
        assert_eq!(p.node_line(t0, "n1", "start", &[], &[])["fault"], "pause");
        let c = p.coordinator_line(t0, "start", t0, &[("n1".into(), t0)]);
        assert_eq!(c["pause"], json!(["n1"]));
    }
}
