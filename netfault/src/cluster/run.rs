//! `cluster run SCENARIO`: a scenario's timeline played on the cluster, under a lease.
//!
//! Every entry the run installs expires in the data path `lease` after it was last renewed
//! (default 5 s); the coordinator renews every live one each `lease / 4`, also while a change is
//! under way (`Runner::during`), so no number of steps due at once delays it. However the run ends,
//! each node is back to normal within the lease: finished (exit 0), Ctrl-C (130) or SIGTERM
//! (143) and errors (1) heal every step before returning, and after `kill -9` nobody renews, so
//! the kernel lets the entries go by itself.
//!
//! Before the first step every node is attached (so each later change is one publish), and
//! entries of this scenario's step names left by an earlier run (killed, live or expired) are
//! deleted, each node's in a `cleared` event line. Each step's change
//! goes to the nodes it gives entries, in parallel, with a deadline of `lease / 2`: a node that
//! fails (or a renewal that finds entries gone, or fails) ends the run with an error, after the
//! others were healed.
//!
//! A `pause` step has no lease: each node's host runs a watchdog that resumes the node's
//! process on the step's `for` deadline whatever becomes of the run; the step's end (or the
//! run's heal) resumes what is still stopped.
use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, Instant, SystemTime},
};

use serde_json::json;

use super::{
    NodePlan, Scenario, StepAction,
    coordinator::{self, Coordinator, NODE_TIMEOUT, PREPARE_TIMEOUT, Timed},
    events::{Log, Occurrence, nanos_between, run_line, verify_line},
    pause::entry as pause_entry,
    scenario::{Action, Event},
    transport::NodeError,
    verify::{self, Fault, Observed},
};
use crate::{
    pause::Schedule,
    spec::{Kind, Ttl},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node failed (the run was healed where it could be; see the message).
    #[error("{0}")]
    Coordinator(#[source] coordinator::Error),
    /// A renewal found entries gone: the data path let them go (the lease ran out before the
    /// coordinator renewed it, or someone deleted them).
    #[error(
        "node {node}: entries expired before their renewal ({}); the run stops and heals every node",
        entries.join(", ")
    )]
    Expired { node: String, entries: Vec<String> },
    #[error("write the event log: {0}")]
    Events(#[source] std::io::Error),
    #[error("start the run's runtime or signal handlers: {0}")]
    Runtime(#[source] std::io::Error),
}

impl From<coordinator::Error> for Error {
    fn from(e: coordinator::Error) -> Self {
        Error::Coordinator(e)
    }
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Coordinator(e) => e.exit_code(),
            Error::Expired { .. } | Error::Events(_) | Error::Runtime(_) => 1,
        }
    }
}

/// How a run ended (every step healed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Finished,
    Interrupted,
    Terminated,
}

impl Ended {
    fn word(self) -> &'static str {
        match self {
            Ended::Finished => "finished",
            Ended::Interrupted => "interrupted",
            Ended::Terminated => "terminated",
        }
    }
}

/// Figures of a run, for its summary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub starts: u64,
    pub ends: u64,
    pub renewals: u64,
    /// Spread of the node times of each start and end (latest - earliest).
    pub spreads: Vec<Duration>,
    /// Verifications (`verify = true` steps) done, and those that found a mismatch.
    pub verified: u64,
    pub mismatched: Vec<String>,
}

/// A step's occurrence that is on: what each node holds.
struct Active {
    occ: Occurrence,
    /// What the wire should show while it is on.
    fault: Fault,
    /// Node index -> the entry names it holds (a pause step: the pause's name on its host).
    nodes: BTreeMap<usize, Vec<String>>,
    /// A pause step's: held by the nodes' watchdogs, not renewed; its end resumes.
    pause: bool,
}

struct Runner<'a> {
    coord: &'a Coordinator,
    sc: &'a Scenario,
    log: &'a mut Log,
    progress: &'a mut dyn Write,
    seed: u64,
    lease: Duration,
    op_timeout: Duration,
    t0: Instant,
    wall0: SystemTime,
    active: BTreeMap<(usize, u32), Active>,
    summary: Summary,
    renew_every: Duration,
    /// When the live entries are renewed next: on this schedule whatever the steps are doing
    /// (`during`).
    next_renew: Instant,
    /// Round trips before the first step, when a `verify` step delays: what its shift is
    /// measured from.
    baseline: Option<Observed>,
}

/// Lines of a batch of node answers, in time order: the log's `ts` stays monotone.
fn by_time<T>(mut v: Vec<Timed<T>>) -> Vec<Timed<T>> {
    v.sort_by_key(|t| t.ts);
    v
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

impl Runner<'_> {
    fn name(&self, i: usize) -> &str {
        &self.coord.cluster.nodes[i].name
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<(), Error> {
        self.log.write(line).map_err(Error::Events)
    }

    fn say(&mut self, msg: &str) {
        let t = self.t0.elapsed().as_secs_f64();
        let _ = writeln!(self.progress, "  +{t:7.3}s {msg}");
    }

    fn fail(&self, failed: Vec<(String, NodeError)>, outcome: &str) -> Error {
        coordinator::node_error(failed, outcome.to_string()).into()
    }

    fn occurrence(&self, ev: &Event) -> Result<(Occurrence, Vec<NodePlan>, Fault), Error> {
        let cluster = &self.coord.cluster;
        let step = &self.sc.steps[ev.step];
        let rules = self
            .sc
            .rules(ev, cluster)
            .map_err(coordinator::Error::from)?;
        let grudge = self
            .sc
            .grudge(ev, cluster)
            .map_err(coordinator::Error::from)?;
        let (topology, impair, pause) = match &step.action {
            StepAction::Partition(t) => (Some(t.to_string()), None, None),
            StepAction::Impair(i) => (None, Some(super::Impair::clone(i)), None),
            StepAction::Pause(n) => (None, None, Some(n.clone())),
        };
        let kind = if impair.is_some() {
            Kind::Rule
        } else {
            Kind::Partition
        };
        let fault = Fault::build(
            &step.name,
            kind,
            rules
                .iter()
                .flat_map(|(n, v)| v.iter().map(move |r| (n.as_str(), r))),
            cluster,
        );
        let occ = Occurrence {
            step: ev.step,
            occurrence: ev.occurrence,
            name: step.name.clone(),
            topology,
            grudge,
            impair,
            pause,
        };
        Ok((occ, self.coord.rule_plans(&rules)?, fault))
    }

    fn start(&mut self, ev: &Event) -> Result<(), Error> {
        let (occ, plans, fault) = self.occurrence(ev)?;
        let plans: Vec<(usize, NodePlan)> = plans
            .into_iter()
            .enumerate()
            .filter(|(_, p)| !p.rules.is_empty())
            .collect();
        let names: BTreeMap<usize, Vec<String>> = plans
            .iter()
            .map(|(i, p)| (*i, p.rules.iter().map(|r| r.name.clone()).collect()))
            .collect();
        let planned = self.wall0 + ev.t;
        let (lease, timeout) = (self.lease, self.op_timeout);
        // A copy of the reference: the step stays borrowed across `during` (which takes self).
        let sc = self.sc;
        let step = &sc.steps[ev.step];
        let (results, renew_failed, names) = match &step.action {
            StepAction::Pause(nodes) => {
                let which = self
                    .coord
                    .pause_nodes(&format!("step[{}].pause", ev.step), nodes)
                    .map_err(coordinator::Error::from)?;
                let schedule = Schedule::new(Some(step.duration), None, None)
                    .map_err(coordinator::Error::from)?;
                let name = step.name.clone();
                let names: BTreeMap<usize, Vec<String>> = which
                    .iter()
                    .map(|&i| (i, vec![pause_entry(&name, self.name(i))]))
                    .collect();
                let (res, rf) =
                    self.during(move |c| c.pause_timed(&which, &name, schedule, timeout));
                let res: Vec<Timed<Vec<String>>> = res
                    .into_iter()
                    .map(|t| Timed {
                        node: t.node,
                        ts: t.ts,
                        result: t.result.map(|s| vec![s.name]),
                    })
                    .collect();
                (res, rf, names)
            }
            _ => {
                let (res, rf) =
                    self.during(move |c| c.apply_timed(plans, Ttl::For(lease), timeout));
                (res, rf, names)
            }
        };
        let is_pause = matches!(step.action, StepAction::Pause(_));
        let results = by_time(results);
        let (mut ok, mut failed, mut stamps) = (BTreeMap::new(), Vec::new(), Vec::new());
        for t in results {
            let node = self.name(t.node).to_string();
            let entries = names.get(&t.node).cloned().unwrap_or_default();
            match t.result {
                Ok(_) => {
                    let line = occ.node_line(t.ts, &node, "start", &entries, &[]);
                    self.write(&line)?;
                    stamps.push((node, t.ts));
                    ok.insert(t.node, entries);
                }
                Err(e) => {
                    let line = occ.node_line(
                        t.ts,
                        &node,
                        "failed",
                        &entries,
                        &[("op", json!("apply")), ("error", json!(e.to_string()))],
                    );
                    self.write(&line)?;
                    failed.push((node, e));
                }
            }
        }
        if !ok.is_empty() {
            // Recorded first: whatever happens next, these are healed.
            self.active.insert(
                (ev.step, ev.occurrence),
                Active {
                    occ: occ.clone(),
                    fault,
                    nodes: ok,
                    pause: is_pause,
                },
            );
        }
        if let Some(e) = renew_failed {
            return Err(e);
        }
        if !failed.is_empty() {
            return Err(self.fail(failed, "; the run stops and heals every node"));
        }
        let line = occ.coordinator_line(SystemTime::now(), "start", planned, &stamps);
        self.write(&line)?;
        self.summary.starts += 1;
        let spread = spread(&stamps);
        self.summary.spreads.push(spread);
        let what = match (&occ.topology, &occ.impair, &occ.pause) {
            (Some(t), _, _) => format!("partition {t}"),
            (None, Some(i), _) => format!("impair {} -> {}", i.from.join(","), i.to.join(",")),
            (None, None, Some(p)) => format!("pause {}", p.join(",")),
            (None, None, None) => occ.fault().to_string(),
        };
        self.say(&format!(
            "start {}#{} ({what}) on {} nodes, spread {}",
            occ.name,
            occ.occurrence,
            stamps.len(),
            ms(spread)
        ));
        if self.sc.steps[ev.step].verify {
            self.verify((ev.step, ev.occurrence))?;
        }
        Ok(())
    }

    /// Probes between the nodes (renewing meanwhile) and checks an occurrence that just
    /// started against the wire, the other occurrences on as what else is live; writes its
    /// `verify` line. A mismatch is counted, not fatal: the run goes on and exits 3.
    fn verify(&mut self, key: (usize, u32)) -> Result<(), Error> {
        let Some(probes) = self.active.get(&key).map(|a| verify::probes([&a.fault])) else {
            return Ok(());
        };
        let (seen, renew_failed) =
            self.during(|c| c.verify_probe(&probes, verify::INTERVAL, verify::DURATION));
        if let Some(e) = renew_failed {
            return Err(e);
        }
        let Some(a) = self.active.get(&key) else {
            return Ok(());
        };
        let others: Vec<Fault> = self
            .active
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(_, o)| o.fault.clone())
            .collect();
        let v = verify::judge(
            &a.fault,
            &others,
            &self.coord.cluster,
            &seen,
            self.baseline.as_ref(),
        );
        let mut fields = vec![("step", json!(key.0)), ("occurrence", json!(key.1))];
        if !seen.failed.is_empty() {
            let f: Vec<serde_json::Value> = seen
                .failed
                .iter()
                .map(|(n, e)| json!({"node": n, "error": e}))
                .collect();
            fields.push(("failed", json!(f)));
        }
        let line = verify_line(SystemTime::now(), &v, &fields);
        let name = format!("{}#{}", a.occ.name, a.occ.occurrence);
        self.write(&line)?;
        self.summary.verified += 1;
        let mut text = Vec::new();
        let _ = verify::text(std::slice::from_ref(&v), &mut text);
        let text = String::from_utf8_lossy(&text);
        for l in text.lines() {
            self.say(l.trim_start());
        }
        if !v.ok {
            let pairs: Vec<String> = v
                .mismatched()
                .map(|p| format!("{} -> {} ({:?})", p.from, p.to, p.family).to_lowercase())
                .collect();
            self.summary
                .mismatched
                .push(format!("{name}: {}", pairs.join(", ")));
        }
        Ok(())
    }

    /// Deletes an occurrence's entries everywhere; `reason` goes on the lines of a heal that is
    /// not the timeline's own end.
    fn end(
        &mut self,
        key: (usize, u32),
        planned: SystemTime,
        reason: Option<&str>,
    ) -> Result<(), Error> {
        let Some(a) = self.active.remove(&key) else {
            return Ok(());
        };
        let timeout = if reason.is_some() {
            NODE_TIMEOUT
        } else {
            self.op_timeout
        };
        let nodes: Vec<(usize, Vec<String>)> = a.nodes.clone().into_iter().collect();
        // A pause usually ended on its own deadline just now: resuming one that is gone is no
        // error, and one still stopped (a late watchdog) runs again.
        let (results, renew_failed) = if a.pause {
            self.during(move |c| c.resume_timed(nodes, timeout))
        } else {
            self.during(move |c| c.delete_timed(nodes, timeout))
        };
        let results = by_time(results);
        let extra: Vec<(&str, serde_json::Value)> =
            reason.map(|r| ("reason", json!(r))).into_iter().collect();
        let (mut failed, mut stamps) = (Vec::new(), Vec::new());
        for t in results {
            let node = self.name(t.node).to_string();
            let entries = a.nodes.get(&t.node).cloned().unwrap_or_default();
            match t.result {
                Ok(_) => {
                    let line = a.occ.node_line(t.ts, &node, "end", &entries, &extra);
                    self.write(&line)?;
                    stamps.push((node, t.ts));
                }
                Err(e) => {
                    let mut x = extra.clone();
                    x.push(("op", json!("delete")));
                    x.push(("error", json!(e.to_string())));
                    let line = a.occ.node_line(t.ts, &node, "failed", &entries, &x);
                    self.write(&line)?;
                    failed.push((node, e));
                }
            }
        }
        let mut line = a
            .occ
            .coordinator_line(SystemTime::now(), "end", planned, &stamps);
        if let (Some(r), Some(m)) = (reason, line.as_object_mut()) {
            m.insert("reason".into(), json!(r));
        }
        self.write(&line)?;
        self.summary.ends += 1;
        let spread = spread(&stamps);
        self.summary.spreads.push(spread);
        self.say(&format!(
            "end   {}#{} on {} nodes, spread {}{}",
            a.occ.name,
            a.occ.occurrence,
            stamps.len(),
            ms(spread),
            reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ));
        if let Some(e) = renew_failed {
            return Err(e);
        }
        if failed.is_empty() {
            Ok(())
        } else {
            let outcome = format!(
                "; its entries there expire within the lease ({})",
                humantime::format_duration(self.lease)
            );
            Err(self.fail(failed, &outcome))
        }
    }

    /// Runs a change (`op`, which blocks for up to `op_timeout`) on a thread of its own, while
    /// this one renews the live entries whenever they are due: several changes due at once,
    /// each as slow as its deadline allows, never starve the renewals. Entries the change
    /// touches are not among those renewed: a start's are recorded after it, an end's were
    /// removed before. A renewal that fails is handed back with the change's result (the
    /// change's entries are recorded first, so that they are healed).
    fn during<T: Send>(&mut self, op: impl FnOnce(&Coordinator) -> T + Send) -> (T, Option<Error>) {
        let coord = self.coord;
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            let h = s.spawn(move || {
                let _ = tx.send(op(coord));
            });
            let mut failed = None;
            loop {
                // After a failed renewal, none more: the run stops once the change is done.
                let wait = if failed.is_none() {
                    self.next_renew.saturating_duration_since(Instant::now())
                } else {
                    NODE_TIMEOUT * 4
                };
                match rx.recv_timeout(wait) {
                    Ok(v) => return (v, failed),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if failed.is_none()
                            && let Err(e) = self.renew_due()
                        {
                            failed = Some(e);
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        // The change panicked: so does the run, as it would have inline.
                        match h.join() {
                            Err(p) => std::panic::resume_unwind(p),
                            Ok(()) => unreachable!("the change ended without an answer"),
                        }
                    }
                }
            }
        })
    }

    /// Renews the live entries if their renewal is due.
    fn renew_due(&mut self) -> Result<(), Error> {
        if Instant::now() < self.next_renew {
            return Ok(());
        }
        let res = self.renew();
        self.next_renew = Instant::now() + self.renew_every;
        res
    }

    /// Renews every live entry on every node holding some. A node that fails, or that no
    /// longer has entries it should (they expired), ends the run.
    fn renew(&mut self) -> Result<(), Error> {
        let mut per_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        // Pauses have no lease: each node's watchdog holds its deadline.
        for a in self.active.values().filter(|a| !a.pause) {
            for (i, names) in &a.nodes {
                per_node
                    .entry(*i)
                    .or_default()
                    .extend(names.iter().cloned());
            }
        }
        if per_node.is_empty() {
            return Ok(());
        }
        let results = by_time(self.coord.renew_timed(
            per_node.clone().into_iter().collect(),
            Ttl::For(self.lease),
            self.op_timeout,
        ));
        self.summary.renewals += 1;
        let (mut failed, mut expired) = (Vec::new(), None);
        for t in results {
            let node = self.name(t.node).to_string();
            match t.result {
                Ok(renewed) => {
                    let mut lines = Vec::new();
                    let mut lost = Vec::new();
                    for a in self.active.values().filter(|a| !a.pause) {
                        let Some(want) = a.nodes.get(&t.node) else {
                            continue;
                        };
                        let gone: Vec<String> = want
                            .iter()
                            .filter(|n| !renewed.contains(n))
                            .cloned()
                            .collect();
                        if !gone.is_empty() {
                            lines.push(a.occ.node_line(t.ts, &node, "expired", &gone, &[]));
                            lost.extend(gone);
                        }
                    }
                    for l in &lines {
                        self.write(l)?;
                    }
                    if !lost.is_empty() && expired.is_none() {
                        expired = Some(Error::Expired {
                            node,
                            entries: lost,
                        });
                    }
                }
                Err(e) => {
                    let lines: Vec<serde_json::Value> = self
                        .active
                        .values()
                        .filter(|a| !a.pause)
                        .filter_map(|a| {
                            let want = a.nodes.get(&t.node)?;
                            Some(a.occ.node_line(
                                t.ts,
                                &node,
                                "failed",
                                want,
                                &[("op", json!("renew")), ("error", json!(e.to_string()))],
                            ))
                        })
                        .collect();
                    for l in &lines {
                        self.write(l)?;
                    }
                    failed.push((node, e));
                }
            }
        }
        if !failed.is_empty() {
            return Err(self.fail(
                failed,
                "; renewal failed: the run stops and heals every node (entries not renewed expire within the lease)",
            ));
        }
        expired.map_or(Ok(()), Err)
    }

    /// Deletes, on every node, the entries of this scenario's step names an earlier run left
    /// (killed, its lease run out or not; or still running): each would make a start fail on a
    /// taken name. One `cleared` line per node that had some, naming them.
    fn clear_left(&mut self) -> Result<(), Error> {
        let steps: Vec<String> = self.sc.steps.iter().map(|s| s.name.clone()).collect();
        let names = self.coord.step_entries(&steps);
        let all: Vec<(usize, Vec<String>)> = (0..self.coord.cluster.nodes.len())
            .map(|i| (i, names.clone()))
            .collect();
        let results = by_time(self.coord.delete_timed(all, NODE_TIMEOUT));
        let (mut failed, mut n) = (Vec::new(), 0);
        for t in results {
            let node = self.name(t.node).to_string();
            match t.result {
                Ok(mut gone) if !gone.is_empty() => {
                    gone.sort();
                    n += gone.len();
                    let mut line = run_line(
                        t.ts,
                        "cleared",
                        &[
                            ("entries", json!(gone)),
                            ("reason", json!("left by an earlier run")),
                        ],
                    );
                    line["node"] = json!(node);
                    self.write(&line)?;
                }
                Ok(_) => {}
                Err(e) => {
                    let mut line = run_line(
                        t.ts,
                        "failed",
                        &[("op", json!("clear")), ("error", json!(e.to_string()))],
                    );
                    line["node"] = json!(node);
                    self.write(&line)?;
                    failed.push((node, e));
                }
            }
        }
        if !failed.is_empty() {
            return Err(self.fail(failed, "; no fault was applied"));
        }
        if n > 0 {
            self.say(&format!(
                "deleted {n} entries an earlier run of these steps left"
            ));
        }
        Ok(())
    }

    /// Heals every occurrence still on; the first failure is returned after all were tried.
    fn heal_all(&mut self, reason: &str) -> Result<(), Error> {
        let keys: Vec<(usize, u32)> = self.active.keys().copied().collect();
        let mut first = None;
        for k in keys {
            if let Err(e) = self.end(k, SystemTime::now(), Some(reason)) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn spread(stamps: &[(String, SystemTime)]) -> Duration {
    let first = stamps.iter().map(|(_, t)| *t).min();
    let last = stamps.iter().map(|(_, t)| *t).max();
    match (first, last) {
        (Some(f), Some(l)) => Duration::from_nanos(nanos_between(f, l)),
        _ => Duration::ZERO,
    }
}

/// Plays `sc` (already [checked](Scenario::check) against the cluster) with `seed`. Progress
/// lines go to `progress`, the event log to `log`. Returns how the run ended once every step
/// is healed; an error after healing what could be.
pub fn run(
    coord: &Coordinator,
    sc: &Scenario,
    seed: u64,
    log: &mut Log,
    progress: &mut dyn Write,
) -> Result<(Ended, Summary), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Before any node changes: a signal from here on heals, never kills.
        let mut int = signal(SignalKind::interrupt()).map_err(Error::Runtime)?;
        let mut term = signal(SignalKind::terminate()).map_err(Error::Runtime)?;
        let lease = sc.lease;
        let renew_every = lease / 4;
        let mut r = Runner {
            coord,
            sc,
            log,
            progress,
            seed,
            lease,
            op_timeout: lease / 2,
            t0: Instant::now(),
            wall0: SystemTime::now(),
            active: BTreeMap::new(),
            summary: Summary::default(),
            renew_every,
            next_renew: Instant::now() + renew_every,
            baseline: None,
        };
        let nodes: Vec<&str> = coord.cluster.names();
        r.write(&run_line(
            SystemTime::now(),
            "begin",
            &[
                ("seed", json!(seed)),
                ("lease_ms", json!(lease.as_millis() as u64)),
                ("nodes", json!(nodes)),
                ("steps", json!(sc.steps.len())),
                ("duration_ms", json!(sc.end().as_millis() as u64)),
            ],
        ))?;
        let outcome = play(&mut r, &mut int, &mut term).await;
        let reason = match &outcome {
            Ok(e) => e.word(),
            Err(_) => "error",
        };
        let healed = r.heal_all(reason);
        let outcome = match (outcome, healed) {
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(e), Ok(())) => Ok(e),
        };
        let mut fields = vec![
            ("outcome", json!(reason)),
            ("starts", json!(r.summary.starts)),
            ("ends", json!(r.summary.ends)),
            ("renewals", json!(r.summary.renewals)),
        ];
        if r.summary.verified > 0 {
            fields.push(("verified", json!(r.summary.verified)));
            fields.push(("mismatched", json!(r.summary.mismatched)));
        }
        if let Err(e) = &outcome {
            fields.push(("error", json!(e.to_string())));
        }
        // The finish line is best effort once the run failed: the error is what matters.
        let fin = r.write(&run_line(SystemTime::now(), "finish", &fields));
        let ended = outcome?;
        fin?;
        Ok((ended, r.summary))
    })
}

async fn play(
    r: &mut Runner<'_>,
    int: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
) -> Result<Ended, Error> {
    r.coord.prepare(PREPARE_TIMEOUT)?;
    r.clear_left()?;
    // A verified delay is the shift from the round trips before any step.
    let delays = r.sc.steps.iter().any(|s| {
        s.verify
            && matches!(&s.action, StepAction::Impair(i)
                if i.act.shape.delay.is_some() || i.act.shape.jitter.is_some())
    });
    let timeline = r.sc.timeline(r.seed);
    if delays {
        // With each probe a verified step's fault is probed with.
        let mut probes = std::collections::BTreeSet::new();
        for ev in timeline
            .iter()
            .filter(|e| e.action == Action::Start && r.sc.steps[e.step].verify)
        {
            probes.extend(verify::probes([&r.occurrence(ev)?.2]));
        }
        r.say("baseline: probing every pair before the first step");
        r.baseline = Some(
            r.coord
                .verify_probe(&probes, verify::INTERVAL, verify::DURATION),
        );
    }
    r.t0 = Instant::now();
    r.wall0 = SystemTime::now();
    let mut next = 0;
    r.next_renew = r.t0 + r.renew_every;
    loop {
        // Signals first: one that came during a change is seen before the next.
        if let Some(e) = pending(int, term) {
            return Ok(e);
        }
        let Some(ev) = timeline.get(next) else {
            return Ok(Ended::Finished);
        };
        let due = r.t0 + ev.t;
        let wake = due.min(r.next_renew);
        tokio::select! {
            biased;
            _ = int.recv() => return Ok(Ended::Interrupted),
            _ = term.recv() => return Ok(Ended::Terminated),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        r.renew_due()?;
        while let Some(ev) = timeline.get(next) {
            if r.t0 + ev.t > Instant::now() {
                break;
            }
            // Between changes too: many due at once take their time (`during` renews meanwhile).
            r.renew_due()?;
            match ev.action {
                Action::Start => r.start(ev)?,
                Action::End => r.end((ev.step, ev.occurrence), r.wall0 + ev.t, None)?,
            }
            next += 1;
            if pending(int, term).is_some() {
                break;
            }
        }
    }
}

/// A signal that arrived and was not yet seen.
fn pending(
    int: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
) -> Option<Ended> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if int.poll_recv(&mut cx).is_ready() {
        return Some(Ended::Interrupted);
    }
    if term.poll_recv(&mut cx).is_ready() {
        return Some(Ended::Terminated);
    }
    None
}
