//! Lab clusters (issue #10): Jepsen-style partitions and impairments over many hosts. This is
//! the pure layer, apart from anything that touches a host (as cilium/ebpf keeps a spec apart
//! from loading it): text in, validated plans out, so the coordinator can check a whole run
//! before the first node changes.
//!
//! - [`file`](mod@file): the cluster file (`[[node]]`: names, addresses, interfaces, one transport each).
//! - [`topology`]: `TOPOLOGY` strings (`halves`, `majorities-ring`, `n1,n2|n3`, ...) and the
//!   grudge each one gives: for every node, the nodes whose packets it drops.
//! - [`plan`]: a grudge or an impairment turned into each node's rules
//!   ([`RuleSpec`](crate::spec::RuleSpec)), and the protections that keep the coordinator's and
//!   transports' traffic flowing.
//! - [`coordinator`] and [`transport`]: the one part that touches hosts: plans applied on
//!   every node at once, all or nothing (netns transport only, so far).
//! - [`local`]: what a node does with a request, whichever transport brought it.
//! - [`scenario`]: the scenario file (`[[step]]`s at times, repeated) and its timeline.
//! - [`run`] and [`events`]: a scenario played under a lease, and its JSON-lines event log.
//!
//! Errors are [`SpecError`](crate::spec::SpecError)s naming the key path (`node[2].agent`,
//! `step[1].every`), as rule-set files do: exit 2, nothing changed.
pub mod coordinator;
pub mod events;
pub mod file;
pub mod local;
pub mod plan;
pub mod run;
pub mod scenario;
pub mod topology;
pub mod transport;

pub use file::{Cluster, Node, Transport};
pub use plan::{Impair, NodePlan};
pub use scenario::{Action, Event, Scenario, Step, StepAction};
pub use topology::{Grudge, Topology};

/// Small TOML helpers shared by the cluster and scenario files (the rule-set file's are
/// private to `spec::ruleset`).
pub(crate) mod toml_util {
    use toml::{Table, Value};

    use crate::spec::SpecError;

    pub fn err(path: &str, msg: impl Into<String>) -> SpecError {
        SpecError::new(path, msg)
    }

    pub fn parse_doc(text: &str) -> Result<Table, SpecError> {
        text.parse()
            .map_err(|e: toml::de::Error| err("FILE", e.message().to_string()))
    }

    pub fn string<'a>(path: &str, v: &'a Value) -> Result<&'a str, SpecError> {
        v.as_str()
            .ok_or_else(|| err(path, format!("expected a string, found {}", v.type_str())))
    }

    /// A list of strings; a lone string stands for a list of one (as in rule-set files).
    pub fn strings<'a>(path: &str, v: &'a Value) -> Result<Vec<(String, &'a str)>, SpecError> {
        match v {
            Value::String(s) => Ok(vec![(format!("{path}[0]"), s.as_str())]),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let p = format!("{path}[{i}]");
                    let s = string(&p, e)?;
                    Ok((p, s))
                })
                .collect(),
            _ => Err(err(
                path,
                format!("expected a list of strings, found {}", v.type_str()),
            )),
        }
    }

    pub fn table<'a>(path: &str, v: &'a Value) -> Result<&'a Table, SpecError> {
        v.as_table()
            .ok_or_else(|| err(path, format!("expected a table, found {}", v.type_str())))
    }

    /// `[[key]]` entries: an array of tables.
    pub fn tables<'a>(path: &str, v: &'a Value) -> Result<Vec<(String, &'a Table)>, SpecError> {
        let a = v
            .as_array()
            .ok_or_else(|| err(path, format!("expected [[{path}]] tables")))?;
        a.iter()
            .enumerate()
            .map(|(i, e)| {
                let p = format!("{path}[{i}]");
                let t = table(&p, e)?;
                Ok((p, t))
            })
            .collect()
    }

    pub fn check_keys(path: &str, t: &Table, allowed: &[&str]) -> Result<(), SpecError> {
        for k in t.keys() {
            if !allowed.contains(&k.as_str()) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                return Err(err(
                    &p,
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// `path.key`, or `key` at the top level.
    pub fn at(path: &str, key: &str) -> String {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    }
}
