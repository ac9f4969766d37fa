//! The scenario file: what to do to the cluster, and when.
//!
//! ```toml
//! seed = 7                  # optional: random topologies draw from it (default: the CLI's)
//! lease = "5s"              # optional, 1s to 60s: how long a node keeps a fault unrenewed
//!
//! [[step]]
//! name = "flap"             # optional (default step-INDEX); rule names start with it
//! at = "0s"                 # from the start of the run
//! partition = "random-halves"
//! for = "10s"
//! repeat = 3                # optional, default 1
//! every = "15s"             # required when repeat > 1, at least `for`
//!
//! [[step]]
//! at = "1m"
//! impair = { from = ["n1"], to = ["n2", "n3"], drop = "5%", delay = "100ms", jitter = "10ms" }
//! for = "30s"
//! ```
//!
//! Any step may say `verify = true` (its `for` at least 5 s): after each start the coordinator
//! probes between the nodes for 3 s and checks the wire against the step
//! ([`verify`](super::verify)); the run's event log gets a `verify` line.
//!
//! A partition step may say `conn = "new"` (or `"established"`): its entries then cut only TCP,
//! and of it only connections being opened (or only the other segments).
//!
//! A step has exactly one of `partition` (a [`Topology`]), `impair` (keys `from`, `to`,
//! `drop`, `duplicate`, `delay`, `jitter`, `distribution`, `reorder`, `rate`, as in rule-set
//! files) or `pause` (node names: their `pause_target`s stop for `for`, at most 10 minutes,
//! each held by a watchdog on the node's host that resumes it on time even if the
//! coordinator dies; `pause = ["n1"]`, `for = "4s"`, with `repeat` and `every` as any step). Unknown keys and impossible timelines are refused with the key path
//! (`step[1].every`). Steps may be written in any order of `at`; the timeline is sorted.
//!
//! Overlaps: the occurrences of one step never overlap (`every >= for`), but different steps
//! may, even on the same nodes. Their rules coexist under distinct names (each starts with its
//! step's name): a partition beats any impairment (partitions are evaluated first), and of two
//! impairments on the same traffic the one added first wins each packet (first match). That is
//! the data path's ordinary semantics, so it is allowed rather than guessed at.
use std::{collections::BTreeMap, time::Duration};

use toml::{Table, Value};

use super::{Cluster, Grudge, Impair, Topology, Traffic, plan};
use crate::spec::{
    Actions, Conn, RuleSpec, SpecError, actions,
    toml_util::{at, check_keys, duration, err, parse_doc, parsed, string, strings, table, tables},
    validate_name,
};

/// The lease when the file gives none: faults outlive a lost coordinator by at most this.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Shorter leases would need renewals faster than a slow link to a node answers.
pub const MIN_LEASE: Duration = Duration::from_secs(1);
/// A fault left behind by a dead coordinator should heal in about a minute at worst.
pub const MAX_LEASE: Duration = Duration::from_secs(60);
/// Bounds the timeline (two events per occurrence) a file can ask for.
pub const MAX_REPEAT: u32 = 100_000;

/// A validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// `None`: the caller picks one (and should print it, so the run can be repeated).
    pub seed: Option<u64>,
    pub lease: Duration,
    /// In file order; [`Event::step`] indexes this.
    pub steps: Vec<Step>,
}

/// One `[[step]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    /// Start of the first occurrence, from the start of the run.
    pub at: Duration,
    pub action: StepAction,
    /// How long each occurrence lasts (`for`).
    pub duration: Duration,
    /// Occurrences, at least 1.
    pub repeat: u32,
    /// A partition step's `conn`: cut only TCP connections being opened (or only the rest).
    pub conn: Conn,
    /// From one occurrence's start to the next's; `Some` exactly when `repeat > 1`.
    pub every: Option<Duration>,
    /// A partition step's `reject` and `reject_rate` (nothing else is set).
    pub reply: Actions,
    /// `verify = true`: after each start, the coordinator probes between the nodes and checks
    /// the wire against the step (`cluster verify`).
    pub verify: bool,
}

/// What a step does while it lasts.
#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    Partition(Topology),
    /// Boxed: an impairment's actions and traffic outweigh the other variants.
    Impair(Box<Impair>),
    /// The nodes whose processes (`pause_target`) stop for the step's `for`: each node's
    /// watchdog resumes it on that deadline even if the coordinator is gone.
    Pause(Vec<String>),
}

/// Whether an event applies a step's faults or heals them. At equal times ends sort first, so
/// a step that heals at t is gone before one that starts at t arrives (flapping with
/// `every = for` is a clean heal-then-cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    End,
    Start,
}

/// One point of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Event {
    /// From the start of the run.
    pub t: Duration,
    pub action: Action,
    /// Index into [`Scenario::steps`].
    pub step: usize,
    /// 0-based.
    pub occurrence: u32,
    /// The seed this occurrence's random choices draw from: each occurrence of
    /// `random-halves` cuts afresh, and the same scenario seed repeats the run exactly.
    pub seed: u64,
}

const TOP_KEYS: &[&str] = &["seed", "lease", "step"];
const STEP_KEYS: &[&str] = &[
    "name",
    "at",
    "partition",
    "impair",
    "pause",
    "for",
    "repeat",
    "every",
    // A partition step's reply (spec::reject::PARTITION_KEYS).
    "reject",
    "reject_rate",
    "conn",
    "verify",
];
const IMPAIR_KEYS: &[&str] = &["from", "to", "proto", "sport", "dport"];

/// A point in time from the start: zero allowed, unlike a duration.
fn offset(path: &str, v: &Value) -> Result<Duration, SpecError> {
    let s = string(path, v)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        err(
            path,
            format!("'{s}': {e} (expected a time from the start such as \"0s\" or \"1m30s\")"),
        )
    })
}

fn impair(path: &str, t: &Table) -> Result<Impair, SpecError> {
    let keys: Vec<&str> = IMPAIR_KEYS.iter().chain(actions::KEYS).copied().collect();
    check_keys(path, t, &keys)?;
    let p = |k: &str| at(path, k);
    let names = |k: &str| -> Result<Vec<String>, SpecError> {
        let v = t
            .get(k)
            .ok_or_else(|| err(&p(k), "missing (a list of node names)"))?;
        Ok(strings(&p(k), v)?
            .into_iter()
            .map(|(_, s)| s.to_string())
            .collect())
    };
    let mut imp = Impair {
        from: names("from")?,
        to: names("to")?,
        act: Actions::default(),
        traffic: Traffic::default(),
    };
    for (k, v) in t {
        match k.as_str() {
            "proto" => {
                imp.traffic.proto = string(&p(k), v)?
                    .parse()
                    .map_err(|m: String| err(&p(k), m))?;
            }
            "sport" => imp.traffic.sport = crate::spec::ruleset::ports(&p(k), v)?,
            "dport" => imp.traffic.dport = crate::spec::ruleset::ports(&p(k), v)?,
            _ => {
                imp.act.set_key(&p(k), k, v)?;
            }
        }
    }
    imp.validate().map_err(|e| {
        if e.field == "impair" {
            err(path, e.msg)
        } else {
            err(&p(&e.field), e.msg)
        }
    })?;
    Ok(imp)
}

fn step(index: usize, path: &str, t: &Table) -> Result<Step, SpecError> {
    check_keys(path, t, STEP_KEYS)?;
    let p = |k: &str| at(path, k);
    let required = |k: &str| t.get(k).ok_or_else(|| err(&p(k), "missing"));
    let name = match t.get("name") {
        Some(v) => {
            let n = string(&p("name"), v)?.to_string();
            validate_name(&p("name"), &n)?;
            n
        }
        None => format!("step-{index}"),
    };
    let at_ = offset(&p("at"), required("at")?)?;
    let given: Vec<&str> = t
        .keys()
        .map(String::as_str)
        .filter(|k| matches!(*k, "partition" | "impair" | "pause"))
        .collect();
    let action = match given.as_slice() {
        [] => {
            return Err(err(
                path,
                "needs partition = \"TOPOLOGY\", impair = { ... } or pause = [\"NODE\", ...]",
            ));
        }
        ["partition"] => StepAction::Partition(parsed(&p("partition"), required("partition")?)?),
        ["pause"] => {
            let list = strings(&p("pause"), required("pause")?)?;
            if list.is_empty() {
                return Err(err(&p("pause"), "empty (name the nodes to pause)"));
            }
            let mut nodes: Vec<String> = Vec::new();
            for (np, n) in list {
                if nodes.iter().any(|x| x == n) {
                    return Err(err(&np, format!("'{n}' is listed twice")));
                }
                nodes.push(n.to_string());
            }
            StepAction::Pause(nodes)
        }
        [_] => StepAction::Impair(Box::new(impair(
            &p("impair"),
            table(&p("impair"), required("impair")?)?,
        )?)),
        [first, second, ..] => {
            return Err(err(
                &p(second),
                format!("a step does one thing, and this one has {first} already"),
            ));
        }
    };
    let duration_ = duration(&p("for"), required("for")?)?;
    if matches!(action, StepAction::Pause(_)) && duration_ > crate::pause::MAX_HOLD {
        return Err(err(
            &p("for"),
            format!(
                "a pause lasts at most {}",
                humantime::format_duration(crate::pause::MAX_HOLD)
            ),
        ));
    }
    let repeat = match t.get("repeat") {
        None => 1,
        Some(v) => v
            .as_integer()
            .and_then(|i| u32::try_from(i).ok())
            .filter(|r| (1..=MAX_REPEAT).contains(r))
            .ok_or_else(|| {
                err(
                    &p("repeat"),
                    format!("expected a whole number 1 to {MAX_REPEAT}"),
                )
            })?,
    };
    let every = match (t.get("every"), repeat) {
        (None, 1) => None,
        (None, _) => return Err(err(&p("every"), "missing (needed when repeat > 1)")),
        (Some(_), 1) => return Err(err(&p("every"), "only with repeat > 1")),
        (Some(v), _) => {
            let e = duration(&p("every"), v)?;
            if e < duration_ {
                return Err(err(
                    &p("every"),
                    format!(
                        "{} is shorter than for = {}: occurrences would overlap",
                        humantime::format_duration(e),
                        humantime::format_duration(duration_)
                    ),
                ));
            }
            Some(e)
        }
    };
    let reply = crate::spec::reject::partition_keys(t, p)?;
    if reply.reject.is_some() && !matches!(action, StepAction::Partition(_)) {
        return Err(err(
            &p("reject"),
            "belongs to a partition step (an impairment says reject inside impair = { ... })",
        ));
    }
    let conn = match (t.get("conn"), &action) {
        (None, _) => Conn::Any,
        (Some(v), StepAction::Partition(_)) => parsed(&p("conn"), v)?,
        (Some(_), StepAction::Impair(_) | StepAction::Pause(_)) => {
            return Err(err(
                &p("conn"),
                "only with partition (a step's impairments match every packet)",
            ));
        }
    };
    let verify = match t.get("verify") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| err(&p("verify"), "expected true or false"))?,
    };
    if verify && matches!(action, StepAction::Pause(_)) {
        return Err(err(
            &p("verify"),
            "checks the wire; a pause step puts nothing on it",
        ));
    }
    // The probes take their time, and the step must still be on when they end.
    let needs = super::verify::DURATION + crate::measure::probe::LISTEN_TAIL;
    if verify && duration_ < needs {
        return Err(err(
            &p("verify"),
            format!(
                "needs for = {} or more (the probes run {} after the start)",
                humantime::format_duration(needs),
                humantime::format_duration(needs)
            ),
        ));
    }
    let s = Step {
        verify,
        name,
        at: at_,
        action,
        reply,
        duration: duration_,
        repeat,
        every,
        conn,
    };
    if s.end().is_none() {
        return Err(err(
            &p("repeat"),
            "the timeline would run past any representable time",
        ));
    }
    Ok(s)
}

impl Step {
    /// Start of occurrence `k`.
    pub fn start(&self, k: u32) -> Option<Duration> {
        match self.every {
            Some(e) => self.at.checked_add(e.checked_mul(k)?),
            None => (k == 0).then_some(self.at),
        }
    }

    /// When the last occurrence ends.
    pub fn end(&self) -> Option<Duration> {
        self.start(self.repeat.checked_sub(1)?)?
            .checked_add(self.duration)
    }
}

/// A seed per (step, occurrence), from the scenario's: splitmix64 over the three mixed, so
/// neighbouring occurrences draw unrelated choices.
fn occurrence_seed(seed: u64, step: usize, occurrence: u32) -> u64 {
    let mut s = seed
        ^ (step as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)
        ^ u64::from(occurrence).wrapping_mul(0xa076_1d64_78bd_642f);
    crate::spec::dist::splitmix64(&mut s)
}

impl Scenario {
    /// Parses and validates a scenario file (what it needs no cluster for; see
    /// [`check`](Self::check)).
    pub fn parse(text: &str) -> Result<Scenario, SpecError> {
        let doc = parse_doc(text)?;
        check_keys("", &doc, TOP_KEYS)?;
        let seed = match doc.get("seed") {
            None => None,
            Some(v) => Some(
                v.as_integer()
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or_else(|| err("seed", "expected a whole number 0 or more"))?,
            ),
        };
        let lease = match doc.get("lease") {
            None => DEFAULT_LEASE,
            Some(v) => {
                let l = duration("lease", v)?;
                if !(MIN_LEASE..=MAX_LEASE).contains(&l) {
                    return Err(err(
                        "lease",
                        format!(
                            "{} is outside {}s to {}s",
                            humantime::format_duration(l),
                            MIN_LEASE.as_secs(),
                            MAX_LEASE.as_secs()
                        ),
                    ));
                }
                l
            }
        };
        let entries = match doc.get("step") {
            None => vec![],
            Some(v) => tables("step", v)?,
        };
        if entries.is_empty() {
            return Err(err("step", "the scenario needs at least one [[step]]"));
        }
        let mut steps: Vec<Step> = Vec::new();
        for (i, (path, t)) in entries.iter().enumerate() {
            let s = step(i, path, t)?;
            if let Some(j) = steps.iter().position(|o| o.name == s.name) {
                return Err(err(
                    &at(path, "name"),
                    format!("'{}' is the name of step[{j}] already", s.name),
                ));
            }
            steps.push(s);
        }
        Ok(Scenario { seed, lease, steps })
    }

    /// Checks the scenario against a cluster before anything runs: every topology defined for
    /// its size and its names known, every impairment's nodes known, every rule name short
    /// enough. Errors name the step's key (`step[2].partition`, `step[0].impair.to[1]`).
    pub fn check(&self, cluster: &Cluster) -> Result<(), SpecError> {
        let longest = cluster
            .nodes
            .iter()
            .map(|n| n.name.len())
            .max()
            .unwrap_or(0);
        for (i, s) in self.steps.iter().enumerate() {
            // The longest name any occurrence could make, whatever its random draw.
            let worst = format!("{}.from-{}.v4", s.name, "x".repeat(longest));
            if validate_name("name", &worst).is_err() {
                return Err(err(
                    &format!("step[{i}].name"),
                    format!(
                        "'{}' is too long: rule names '{}.from-NODE.v4' must fit in 64 characters",
                        s.name, s.name
                    ),
                ));
            }
            self.rules_at(i, 0, 0, cluster)?;
        }
        Ok(())
    }

    /// When the last step ends.
    pub fn end(&self) -> Duration {
        self.steps
            .iter()
            .filter_map(Step::end)
            .max()
            .unwrap_or_default()
    }

    /// Every start and end, sorted by time (ends before starts at the same time, then by step
    /// and occurrence): deterministic for a given `seed` (`self.seed`, or the caller's).
    pub fn timeline(&self, seed: u64) -> Vec<Event> {
        let mut v = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            for k in 0..s.repeat {
                // Parsing checked the last occurrence's end, so none of these overflow.
                let Some(start) = s.start(k) else { continue };
                let Some(end) = start.checked_add(s.duration) else {
                    continue;
                };
                let seed = occurrence_seed(seed, i, k);
                let ev = |t, action| Event {
                    t,
                    action,
                    step: i,
                    occurrence: k,
                    seed,
                };
                v.push(ev(start, Action::Start));
                v.push(ev(end, Action::End));
            }
        }
        v.sort();
        v
    }

    /// The grudge a partition step's occurrence applies (`None` for an impairment).
    pub fn grudge(&self, event: &Event, cluster: &Cluster) -> Result<Option<Grudge>, SpecError> {
        let Some(s) = self.steps.get(event.step) else {
            return Err(err("step", format!("no step {}", event.step)));
        };
        match &s.action {
            StepAction::Partition(t) => t
                .grudge(&cluster.names(), event.seed)
                .map(Some)
                .map_err(|m| err(&format!("step[{}].partition", event.step), m)),
            StepAction::Impair(_) | StepAction::Pause(_) => Ok(None),
        }
    }

    /// Each node's rules for an event's occurrence (the same for its start and its end: the
    /// end removes them by name).
    pub fn rules(
        &self,
        event: &Event,
        cluster: &Cluster,
    ) -> Result<BTreeMap<String, Vec<RuleSpec>>, SpecError> {
        self.rules_at(event.step, event.occurrence, event.seed, cluster)
    }

    fn rules_at(
        &self,
        i: usize,
        occurrence: u32,
        seed: u64,
        cluster: &Cluster,
    ) -> Result<BTreeMap<String, Vec<RuleSpec>>, SpecError> {
        let Some(s) = self.steps.get(i) else {
            return Err(err("step", format!("no step {i}")));
        };
        let path = format!("step[{i}]");
        let ev = Event {
            t: Duration::ZERO,
            action: Action::Start,
            step: i,
            occurrence,
            seed,
        };
        // Errors from the plan are relative: `name` is the step's, the rest the impairment's.
        let relocate = |e: SpecError| {
            let f = match (e.field.as_str(), &s.action) {
                ("name", _) => at(&path, "name"),
                (_, StepAction::Partition(_)) => at(&path, "partition"),
                ("impair", _) => at(&path, "impair"),
                (f, _) => format!("{path}.impair.{f}"),
            };
            SpecError::new(f, e.msg)
        };
        match &s.action {
            StepAction::Partition(_) => {
                let g = self
                    .grudge(&ev, cluster)?
                    .unwrap_or_else(|| Grudge(BTreeMap::new()));
                plan::partition(&s.name, cluster, &g, &s.reply, s.conn).map_err(relocate)
            }
            StepAction::Impair(imp) => plan::impair(&s.name, cluster, imp).map_err(relocate),
            StepAction::Pause(nodes) => {
                for (k, n) in nodes.iter().enumerate() {
                    let f = format!("{path}.pause[{k}]");
                    let node = cluster
                        .node(n)
                        .ok_or_else(|| err(&f, format!("no node named '{n}'")))?;
                    if node.pause_target.is_none() {
                        return Err(err(
                            &f,
                            format!("node '{n}' has no pause_target in the cluster file"),
                        ));
                    }
                }
                Ok(BTreeMap::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::file::tests::EXAMPLE as CLUSTER;

    const EXAMPLE: &str = r#"
seed = 7
lease = "5s"

[[step]]
name = "flap"
at = "0s"
partition = "random-halves"
for = "10s"
repeat = 3
every = "15s"

[[step]]
at = "1m"
impair = { from = ["n1"], to = ["n2", "n3"], drop = "5%", delay = "100ms", jitter = "10ms" }
for = "30s"
"#;

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    /// A partition step's `conn` reaches every entry it makes; an impair step cannot have one.
    #[test]
    fn a_partition_step_carries_conn() {
        let s = Scenario::parse(
            "[[step]]\nat = \"0s\"\npartition = \"halves\"\nconn = \"new\"\nfor = \"1s\"\n",
        )
        .unwrap();
        let c = Cluster::parse(CLUSTER).unwrap();
        let rules = s.rules(&s.timeline(1)[0], &c).unwrap();
        let all: Vec<_> = rules.values().flatten().collect();
        assert!(!all.is_empty());
        assert!(all.iter().all(|r| r.conn == Conn::New));
        let e = Scenario::parse(
            "[[step]]\nat = \"0s\"\nimpair = { from = [\"n1\"], to = [\"n2\"], drop = 1 }\nconn = \"new\"\nfor = \"1s\"\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "step[0].conn");
        let e = Scenario::parse(
            "[[step]]\nat = \"0s\"\npartition = \"halves\"\nconn = \"half\"\nfor = \"1s\"\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "step[0].conn");
    }

    /// A step can hold (`impair = { ..., hold = "5s" }`): the senders' rules carry it, and a
    /// late duplicate goes with them; a bad hold names its key.
    #[test]
    fn an_impair_step_holds() {
        let s = Scenario::parse(
            "[[step]]\nat = \"0s\"\nimpair = { from = [\"n1\"], to = [\"n2\"], hold = \"5s\", duplicate = 1, duplicate_delay = \"100ms\" }\nfor = \"10s\"\n",
        )
        .unwrap();
        let c = Cluster::parse(CLUSTER).unwrap();
        let rules = s.rules(&s.timeline(1)[0], &c).unwrap();
        let n1 = &rules["n1"];
        assert!(!n1.is_empty());
        assert!(n1.iter().all(|r| r.act.hold == Some(Duration::from_secs(5))
            && r.act.duplicate_delay == Some(Duration::from_millis(100))));
        assert!(rules["n2"].is_empty(), "{:?}", rules["n2"]);
        let e = Scenario::parse(
            "[[step]]\nat = \"0s\"\nimpair = { from = [\"n1\"], to = [\"n2\"], hold = \"2m\" }\nfor = \"10s\"\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "step[0].impair.hold");
    }

    /// An impair step narrowed to UDP port 9000: every entry it makes matches that traffic;
    /// ports without a protocol that has them name their key.
    #[test]
    fn an_impair_step_can_be_narrowed_to_a_protocol_and_ports() {
        let s = Scenario::parse(
            "[[step]]\nat = \"0s\"\nimpair = { from = [\"n1\"], to = [\"n2\"], proto = \"udp\", dport = 9000, sport = \"1000-2000\", drop = \"10%\", delay = \"5ms\" }\nfor = \"10s\"\n",
        )
        .unwrap();
        let c = Cluster::parse(CLUSTER).unwrap();
        let rules = s.rules(&s.timeline(1)[0], &c).unwrap();
        let all: Vec<_> = rules.values().flatten().collect();
        // At n2 from each of n1's two addresses, at n1 to n2's one.
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all.iter().all(|r| r.proto == crate::spec::Proto::Udp
            && r.dport.to_string() == "9000"
            && r.sport.to_string() == "1000-2000"));
        for (keys, field) in [
            ("dport = 9000", "step[0].impair.dport"),
            ("proto = \"icmp\", sport = 1", "step[0].impair.sport"),
            ("proto = \"sctp\"", "step[0].impair.proto"),
            ("proto = \"udp\", dport = \"x\"", "step[0].impair.dport"),
        ] {
            let e = Scenario::parse(&format!(
                "[[step]]\nat = \"0s\"\nimpair = {{ from = [\"n1\"], to = [\"n2\"], drop = 1, {keys} }}\nfor = \"1s\"\n"
            ))
            .unwrap_err();
            assert_eq!(e.field, field, "{keys}: {e}");
        }
    }

    #[test]
    fn the_documented_example_parses_and_flaps() {
        let s = Scenario::parse(EXAMPLE).unwrap();
        assert_eq!((s.seed, s.lease), (Some(7), DEFAULT_LEASE));
        assert_eq!(s.steps[1].name, "step-1");
        assert_eq!(s.end(), Duration::from_secs(90));
        let tl = s.timeline(7);
        let of = |step: usize, a: Action| -> Vec<Duration> {
            tl.iter()
                .filter(|e| e.step == step && e.action == a)
                .map(|e| e.t)
                .collect()
        };
        assert_eq!(of(0, Action::Start), secs(&[0, 15, 30]));
        assert_eq!(of(0, Action::End), secs(&[10, 25, 40]));
        assert_eq!(of(1, Action::Start), secs(&[60]));
        assert_eq!(of(1, Action::End), secs(&[90]));
        assert!(tl.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(tl, s.timeline(7));
        assert_ne!(tl[0].seed, tl[2].seed, "each occurrence draws afresh");
        assert_ne!(s.timeline(8)[0].seed, tl[0].seed);
        let c = Cluster::parse(CLUSTER).unwrap();
        s.check(&c).unwrap();
        let start = tl[0];
        let rules = s.rules(&start, &c).unwrap();
        assert_eq!(rules.len(), 3);
        assert!(
            rules
                .values()
                .flatten()
                .all(|r| r.name.starts_with("flap.from-"))
        );
        let g = s.grudge(&start, &c).unwrap().unwrap();
        assert_eq!(g, s.grudge(&start, &c).unwrap().unwrap());
        let imp = tl.iter().find(|e| e.step == 1).unwrap();
        assert_eq!(s.grudge(imp, &c).unwrap(), None);
        assert_eq!(s.rules(imp, &c).unwrap()["n1"][0].name, "step-1.to-n2.v4");
    }

    #[test]
    fn ends_come_before_starts_at_the_same_time_and_steps_are_sorted() {
        let s = Scenario::parse(
            "[[step]]\nat = \"20s\"\npartition = \"halves\"\nfor = \"5s\"\n\
             [[step]]\nat = \"0s\"\npartition = \"complete\"\nfor = \"10s\"\nrepeat = 2\nevery = \"10s\"\n",
        )
        .unwrap();
        let tl: Vec<(u64, Action, usize, u32)> = s
            .timeline(0)
            .iter()
            .map(|e| (e.t.as_secs(), e.action, e.step, e.occurrence))
            .collect();
        assert_eq!(
            tl,
            [
                (0, Action::Start, 1, 0),
                (10, Action::End, 1, 0),
                (10, Action::Start, 1, 1),
                (20, Action::End, 1, 1),
                (20, Action::Start, 0, 0),
                (25, Action::End, 0, 0),
            ]
        );
    }

    #[test]
    fn malformed_scenarios_name_the_key_path() {
        let st = |body: &str| format!("[[step]]\n{body}\n");
        let ok = "at = \"0s\"\npartition = \"halves\"\nfor = \"10s\"";
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "step"),
            ("seed = 1".into(), "step"),
            (format!("sed = 1\n{}", st(ok)), "sed"),
            (format!("seed = -1\n{}", st(ok)), "seed"),
            (format!("lease = \"2m\"\n{}", st(ok)), "lease"),
            (format!("lease = \"500ms\"\n{}", st(ok)), "lease"),
            (format!("lease = \"0s\"\n{}", st(ok)), "lease"),
            (st(&format!("{ok}\nfro = 1")), "step[0].fro"),
            (st("partition = \"halves\"\nfor = \"1s\""), "step[0].at"),
            (
                st("at = \"soon\"\npartition = \"halves\"\nfor = \"1s\""),
                "step[0].at",
            ),
            (
                st("at = 0\npartition = \"halves\"\nfor = \"1s\""),
                "step[0].at",
            ),
            (st("at = \"0s\"\npartition = \"halves\""), "step[0].for"),
            (
                st("at = \"0s\"\npartition = \"halves\"\nfor = \"0s\""),
                "step[0].for",
            ),
            (st("at = \"0s\"\nfor = \"1s\""), "step[0]"),
            (
                st("at = \"0s\"\npartition = \"halvez\"\nfor = \"1s\""),
                "step[0].partition",
            ),
            (
                st(
                    "at = \"0s\"\npartition = \"halves\"\nimpair = { from = [\"a\"], to = [\"b\"], drop = 1 }\nfor = \"1s\"",
                ),
                "step[0].impair",
            ),
            (st(&format!("{ok}\nrepeat = 3")), "step[0].every"),
            (
                st(&format!("{ok}\nrepeat = 0\nevery = \"1m\"")),
                "step[0].repeat",
            ),
            (
                st(&format!("{ok}\nrepeat = 1000001\nevery = \"1m\"")),
                "step[0].repeat",
            ),
            (
                st(&format!("{ok}\nrepeat = 3\nevery = \"5s\"")),
                "step[0].every",
            ),
            (st(&format!("{ok}\nevery = \"15s\"")), "step[0].every"),
            (
                st(&format!(
                    "{ok}\nrepeat = 100000\nevery = \"1000000000000000000s\""
                )),
                "step[0].repeat",
            ),
            (st(&format!("{ok}\nname = \"a b\"")), "step[0].name"),
            (
                format!(
                    "{}{}",
                    st(&format!("{ok}\nname = \"x\"")),
                    st(&format!("{ok}\nname = \"x\""))
                ),
                "step[1].name",
            ),
            (
                format!("{}{}", st(ok), st(&format!("{ok}\nname = \"step-0\""))),
                "step[1].name",
            ),
            (
                st("at = \"0s\"\nimpair = { to = [\"b\"], drop = 1 }\nfor = \"1s\""),
                "step[0].impair.from",
            ),
            (
                st("at = \"0s\"\nimpair = { from = [\"a\"], to = [\"b\"] }\nfor = \"1s\""),
                "step[0].impair",
            ),
            (
                st(
                    "at = \"0s\"\nimpair = { from = [\"a\"], to = [\"b\"], drop = \"200%\" }\nfor = \"1s\"",
                ),
                "step[0].impair.drop",
            ),
            (
                st(
                    "at = \"0s\"\nimpair = { from = [\"a\"], to = [\"b\"], drop = 1, dorp = 1 }\nfor = \"1s\"",
                ),
                "step[0].impair.dorp",
            ),
            (
                st(
                    "at = \"0s\"\nimpair = { from = [\"a\"], to = [\"b\"], jitter = \"5ms\" }\nfor = \"1s\"",
                ),
                "step[0].impair.jitter",
            ),
            (
                st(
                    "at = \"0s\"\nimpair = { from = [\"a\"], to = [\"b\"], rate = \"10\" }\nfor = \"1s\"",
                ),
                "step[0].impair.rate",
            ),
            (
                st(
                    "at = \"0s\"\nimpair = { from = [\"a\"], to = [\"b\"], delay = \"2m\" }\nfor = \"1s\"",
                ),
                "step[0].impair.delay",
            ),
            (
                st("at = \"0s\"\nimpair = \"n1\"\nfor = \"1s\""),
                "step[0].impair",
            ),
            ("step = 1".into(), "step"),
            ("[[step]\n".into(), "FILE"),
        ];
        for (text, path) in &cases {
            let e = Scenario::parse(text).expect_err(text);
            assert_eq!(e.field, *path, "{text}: {e}");
        }
    }

    #[test]
    fn checks_against_the_cluster_name_the_step() {
        let c = Cluster::parse(CLUSTER).unwrap(); // three nodes
        let check = |body: &str| {
            Scenario::parse(&format!("[[step]]\nat = \"0s\"\nfor = \"1s\"\n{body}\n"))
                .unwrap()
                .check(&c)
        };
        check("partition = \"majorities-ring\"").unwrap();
        check("partition = \"n1|n2,n3\"").unwrap();
        let e = check("partition = \"n1|n2,n4\"").unwrap_err();
        assert_eq!(e.field, "step[0].partition");
        assert!(e.msg.contains("'n4'"), "{e}");
        let e = check("impair = { from = [\"n1\"], to = [\"n2\", \"n5\"], drop = 1 }").unwrap_err();
        assert_eq!(e.field, "step[0].impair.to[1]");
        let e = check("impair = { from = [\"n1\"], to = [\"n1\"], drop = 1 }").unwrap_err();
        assert_eq!(e.field, "step[0].impair.to");
        // 53 + ".from-n1.v4" is 64: the longest that fits.
        check(&format!(
            "name = \"{}\"\npartition = \"halves\"",
            "x".repeat(53)
        ))
        .unwrap();
        let e = check(&format!(
            "name = \"{}\"\npartition = \"halves\"",
            "x".repeat(54)
        ))
        .unwrap_err();
        assert_eq!(e.field, "step[0].name");
        let small = Cluster::parse(
            "[[node]]\nname = \"a\"\naddrs = [\"192.0.2.1\"]\niface = [\"e\"]\nnetns = \"a\"\n\
             [[node]]\nname = \"b\"\naddrs = [\"192.0.2.2\"]\niface = [\"e\"]\nnetns = \"b\"\n",
        )
        .unwrap();
        let s = Scenario::parse(
            "[[step]]\nat = \"0s\"\nfor = \"1s\"\npartition = \"majorities-ring\"\n",
        )
        .unwrap();
        let e = s.check(&small).unwrap_err();
        assert_eq!(e.field, "step[0].partition");
        assert!(e.msg.contains("at least 3"), "{e}");
    }

    #[test]
    fn a_partition_step_can_reject() {
        let c = Cluster::parse(CLUSTER).unwrap();
        let s = Scenario::parse(
            "[[step]]\nat = \"0s\"\nfor = \"1s\"\npartition = \"halves\"\nreject = true\nreject_rate = \"10/s\"\n",
        )
        .unwrap();
        let rules = s.rules_at(0, 0, 1, &c).unwrap();
        let all: Vec<_> = rules.values().flatten().collect();
        assert!(!all.is_empty());
        assert!(all.iter().all(|r| r.act.reject.is_some()
            && r.act.reject_rate.map(|r| r.per_sec) == Some(10)));
        let e = Scenario::parse(
            "[[step]]\nat = \"0s\"\nfor = \"1s\"\nimpair = { from = [\"n1\"], to = [\"n2\"], drop = 1 }\nreject = true\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "step[0].reject");
        // In an impairment it is an action like the others.
        let s = Scenario::parse(
            "[[step]]\nat = \"0s\"\nfor = \"1s\"\nimpair = { from = [\"n1\"], to = [\"n2\"], reject = \"icmp-host\" }\n",
        )
        .unwrap();
        let rules = s.rules_at(0, 0, 1, &c).unwrap();
        assert!(rules["n2"].iter().all(|r| r.act.reject.is_some()));
    }

    /// An impair step corrupts as `cluster impair` does: at the sender's egress; a checksum
    /// choice without corruption is refused with its key path.
    #[test]
    fn an_impair_step_can_corrupt() {
        let c = Cluster::parse(CLUSTER).unwrap();
        let s = Scenario::parse(
            "[[step]]\nat = \"0s\"\nfor = \"1s\"\nimpair = { from = [\"n1\"], to = [\"n2\"], corrupt = \"1%\", corrupt_checksum = \"good\" }\n",
        )
        .unwrap();
        let rules = s.rules_at(0, 0, 1, &c).unwrap();
        assert!(!rules["n1"].is_empty());
        assert!(rules["n1"].iter().all(|r| r.act.corrupts()
            && r.act.corrupt_checksum == Some(crate::spec::CorruptChecksum::Good)
            && r.dir == crate::spec::Direction::Egress));
        assert!(rules["n2"].iter().all(|r| !r.act.corrupts()));
        let e = Scenario::parse(
            "[[step]]\nat = \"0s\"\nfor = \"1s\"\nimpair = { from = [\"n1\"], to = [\"n2\"], drop = 1, corrupt_checksum = \"bad\" }\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "step[0].impair.corrupt_checksum");
    }

    #[test]
    fn a_pause_step_names_nodes_with_a_pause_target() {
        let sc = Scenario::parse(
            "[[step]]\nname = \"gc\"\nat = \"1s\"\npause = [\"n1\"]\nfor = \"2s\"\nrepeat = 2\nevery = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(sc.steps[0].action, StepAction::Pause(vec!["n1".into()]));
        assert_eq!(sc.timeline(1).len(), 4);
        assert_eq!(sc.steps[0].end(), Some(Duration::from_secs(8)));
        let mut c = Cluster::parse(CLUSTER).unwrap();
        // The example's nodes have no pause_target: refused, naming the entry.
        assert_eq!(sc.check(&c).unwrap_err().field, "step[0].pause[0]");
        c.nodes[0].pause_target = Some(crate::pause::node::Place::Pid(4242));
        sc.check(&c).unwrap();
        let ev = sc.timeline(1)[0];
        assert!(sc.rules(&ev, &c).unwrap().is_empty());
        assert_eq!(sc.grudge(&ev, &c).unwrap(), None);
        let bad =
            Scenario::parse("[[step]]\nat = \"0s\"\npause = [\"n9\"]\nfor = \"2s\"\n").unwrap();
        assert_eq!(bad.check(&c).unwrap_err().field, "step[0].pause[0]");
        let field = |body: &str| {
            Scenario::parse(&format!("[[step]]\nat = \"0s\"\n{body}\n"))
                .unwrap_err()
                .field
        };
        assert_eq!(field("pause = []\nfor = \"1s\""), "step[0].pause");
        assert_eq!(
            field("pause = [\"n1\", \"n1\"]\nfor = \"1s\""),
            "step[0].pause[1]"
        );
        assert_eq!(field("pause = [\"n1\"]\nfor = \"11m\""), "step[0].for");
        assert_eq!(
            field("pause = [\"n1\"]\nfor = \"5s\"\nverify = true"),
            "step[0].verify"
        );
        assert_eq!(
            field("pause = [\"n1\"]\nfor = \"1s\"\nconn = \"new\""),
            "step[0].conn"
        );
        assert_eq!(
            field("pause = [\"n1\"]\npartition = \"halves\"\nfor = \"1s\""),
            "step[0].partition"
        );
    }
}
