//! The coordinator: one plan per node, applied on every node at once, all or nothing.
//!
//! Every node is driven from a thread of its own (a transport may change its thread, as setns
//! does), each with a deadline: a node that has not answered by then counts as failed. When any
//! node fails, the entries the others took are deleted again before the error is returned, so a
//! cluster is never left half partitioned. A node that answers after its deadline undoes its own
//! change (the coordinator has given up on it and will not).
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::{Duration, Instant, SystemTime},
};

use super::{
    Cluster, Grudge, Impair, NodePlan, plan,
    transport::{self, LiveFault, NodeError, NodeTransport},
};
use crate::{
    observe::StatView,
    spec::{Conn, Kind, RuleSpec, SpecError, Ttl, validate_name},
};

/// How long a node may take to answer one operation. The controller's own lock wait is 10 s
/// too: a node busy with another command for longer counts as failed.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long each node may take to attach before a change: loading and verifying the programs
/// is the slow part of a first change on a busy machine, and nothing is cut yet.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input (cluster file, topology, names): nothing changed; exit 2.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// One or more nodes failed; `outcome` says what was done about the others.
    #[error("node {node}: {source}{}{outcome}", others_text(others))]
    Node {
        node: String,
        #[source]
        source: Box<NodeError>,
        others: Vec<(String, String)>,
        outcome: String,
    },
}

/// The error for a change that failed on some nodes (the first one named, the others listed).
pub(super) fn node_error(mut failed: Vec<(String, NodeError)>, outcome: String) -> Error {
    let (node, source) = failed.remove(0);
    Error::Node {
        node,
        source: Box::new(source),
        others: failed
            .into_iter()
            .map(|(n, e)| (n, e.to_string()))
            .collect(),
        outcome,
    }
}

fn others_text(others: &[(String, String)]) -> String {
    others
        .iter()
        .map(|(n, e)| format!("; node {n}: {e}"))
        .collect()
}

impl Error {
    /// 2 for bad input (nothing changed on any node), 1 for a failure on a node.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Spec(_) => 2,
            Error::Node { .. } => 1,
        }
    }
}

/// What `status` reports for one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub transport: &'static str,
    /// Whether the node could be reached and its state opened.
    pub reachable: bool,
    pub error: Option<String>,
    pub attached: Vec<String>,
    pub faults: Vec<LiveFault>,
}

/// What `stats` reports for one node: each live fault's counters (protections left out).
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStats {
    pub node: String,
    pub transport: &'static str,
    pub reachable: bool,
    pub error: Option<String>,
    pub faults: Vec<StatView>,
}

/// What `cluster measure` reports for one node: its probes of every other node's addresses.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeMeasure {
    pub node: String,
    pub transport: &'static str,
    pub error: Option<String>,
    pub pairs: Vec<PairReport>,
}

/// One node's report of one address of another.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PairReport {
    pub to: String,
    pub addr: std::net::IpAddr,
    pub report: crate::measure::Report,
}

/// One node's answer to a timed operation: when it finished (the wall clock the event log
/// prints: right after the node's change took effect, or when the coordinator gave up on it).
#[derive(Debug)]
pub struct Timed<T> {
    /// Index into the cluster's nodes.
    pub node: usize,
    pub ts: SystemTime,
    pub result: Result<T, NodeError>,
}

enum Slot<T> {
    Waiting,
    Done(Result<T, NodeError>),
    /// The coordinator gave up on the node: a late success is the worker's to undo.
    Abandoned,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked holding the slot still left a valid value in it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct Coordinator {
    pub cluster: Cluster,
    transports: Vec<Arc<dyn NodeTransport>>,
    pub timeout: Duration,
    /// The SSH nodes' shared connections: closed (masters stopped, control directory removed)
    /// when the coordinator goes, even while a late worker still holds its transport.
    mux: Arc<transport::mux::Mux>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.mux.close();
    }
}

impl Coordinator {
    /// A coordinator for every node of `cluster`, each by its own transport.
    pub fn new(cluster: Cluster) -> Result<Self, Error> {
        // Before any node is touched: a transport's bad input (a token file others may read)
        // fails the whole command.
        let mux = Arc::new(transport::mux::Mux::new());
        let transports = cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| transport::for_node(i, n, &mux).map(Arc::from))
            .collect::<Result<Vec<Arc<dyn NodeTransport>>, SpecError>>()?;
        Ok(Self {
            cluster,
            transports,
            timeout: NODE_TIMEOUT,
            mux,
        })
    }

    /// Runs `f` on every node in `which` (indices into the cluster), each on a thread of its
    /// own, and waits for them until the deadline. `undo` runs on a worker whose success came
    /// too late.
    fn on_nodes<T, F, U>(
        &self,
        which: &[usize],
        f: F,
        undo: U,
    ) -> Vec<(usize, Result<T, NodeError>)>
    where
        T: Send + 'static,
        F: Fn(usize, &dyn NodeTransport) -> Result<T, NodeError> + Send + Sync + 'static,
        U: Fn(&dyn NodeTransport, &T) + Send + Sync + 'static,
    {
        self.on_nodes_within(self.timeout, which, f, undo)
    }

    /// [`on_nodes`](Self::on_nodes) with a deadline of its own.
    fn on_nodes_within<T, F, U>(
        &self,
        timeout: Duration,
        which: &[usize],
        f: F,
        undo: U,
    ) -> Vec<(usize, Result<T, NodeError>)>
    where
        T: Send + 'static,
        F: Fn(usize, &dyn NodeTransport) -> Result<T, NodeError> + Send + Sync + 'static,
        U: Fn(&dyn NodeTransport, &T) + Send + Sync + 'static,
    {
        let (f, undo) = (Arc::new(f), Arc::new(undo));
        let (tx, rx) = mpsc::channel::<()>();
        let (mut slots, mut running) = (Vec::new(), 0);
        for &i in which {
            let slot = Arc::new(Mutex::new(Slot::<T>::Waiting));
            let (t, f, undo, tx, s) = (
                Arc::clone(&self.transports[i]),
                Arc::clone(&f),
                Arc::clone(&undo),
                tx.clone(),
                Arc::clone(&slot),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("node-{}", self.cluster.nodes[i].name))
                .spawn(move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i, &*t)))
                        .unwrap_or(Err(NodeError::Panicked));
                    let mut g = lock(&s);
                    if matches!(*g, Slot::Abandoned) {
                        if let Ok(v) = &r {
                            undo(&*t, v);
                        }
                    } else {
                        *g = Slot::Done(r);
                    }
                    let _ = tx.send(());
                });
            match spawned {
                Ok(_) => running += 1,
                Err(e) => *lock(&slot) = Slot::Done(Err(NodeError::Spawn(e))),
            }
            slots.push((i, slot));
        }
        drop(tx);
        let deadline = Instant::now() + timeout;
        for _ in 0..running {
            let left = deadline.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left).is_err() {
                break;
            }
        }
        slots
            .into_iter()
            .map(|(i, s)| {
                let mut g = lock(&s);
                match std::mem::replace(&mut *g, Slot::Abandoned) {
                    Slot::Done(r) => (i, r),
                    _ => (i, Err(NodeError::Timeout(timeout))),
                }
            })
            .collect()
    }

    fn all(&self) -> Vec<usize> {
        (0..self.cluster.nodes.len()).collect()
    }

    /// The plans a grudge gives, every node's entries checked (names, specs) before any node
    /// is touched.
    /// `reply`: see [`plan::partition`].
    pub fn plans(
        &self,
        name: &str,
        grudge: &Grudge,
        reply: &crate::spec::Actions,
        conn: Conn,
    ) -> Result<Vec<NodePlan>, Error> {
        validate_name("name", name)?;
        let part = plan::partition(name, &self.cluster, grudge, reply, conn)?;
        self.rule_plans(&part)
    }

    /// The plans an impairment gives (`impair --from .. --to ..`), checked as [`plans`](Self::plans).
    /// Error fields are relative (`from[1]`, `jitter`, `impair`), as [`plan::impair`]'s.
    pub fn impair_plans(&self, name: &str, imp: &Impair) -> Result<Vec<NodePlan>, Error> {
        validate_name("name", name)?;
        let rules = plan::impair(name, &self.cluster, imp)?;
        self.rule_plans(&rules)
    }

    /// Every node's plan for per-node rules (as [`plan::partition`] and [`plan::impair`] and a
    /// scenario's steps give them), with the protections, every entry validated.
    pub fn rule_plans(
        &self,
        rules: &BTreeMap<String, Vec<RuleSpec>>,
    ) -> Result<Vec<NodePlan>, Error> {
        // Netns nodes need no protection; agent and SSH endpoints will (their transports
        // resolve hosts and pass the coordinator's addresses).
        let protect =
            plan::protections(&self.cluster, &[], &plan::literal_endpoints(&self.cluster));
        let plans = plan::plans(&self.cluster, &protect, std::slice::from_ref(rules));
        // As the controller checks them: protections carry labels (`control:192.0.2.1:22/0`),
        // not rule names.
        for p in &plans {
            for r in &p.rules {
                r.validate()?;
            }
        }
        Ok(plans)
    }

    /// Runs `f` on the nodes `which`, each answer stamped with the wall clock when it came.
    pub(super) fn timed<T, F, U>(
        &self,
        timeout: Duration,
        which: &[usize],
        f: F,
        undo: U,
    ) -> Vec<Timed<T>>
    where
        T: Send + 'static,
        F: Fn(usize, &dyn NodeTransport) -> Result<T, NodeError> + Send + Sync + 'static,
        U: Fn(&dyn NodeTransport, &T) + Send + Sync + 'static,
    {
        self.on_nodes_within(
            timeout,
            which,
            move |i, t| f(i, t).map(|v| (v, SystemTime::now())),
            move |t, (v, _)| undo(t, v),
        )
        .into_iter()
        .map(|(node, r)| match r {
            Ok((v, ts)) => Timed {
                node,
                ts,
                result: Ok(v),
            },
            Err(e) => Timed {
                node,
                ts: SystemTime::now(),
                result: Err(e),
            },
        })
        .collect()
    }

    /// Applies each plan on its node (index into the cluster), all at once, within `timeout`.
    /// No rollback here: the caller decides what a partial failure means (a late success is
    /// undone by its worker). Each success returns the names added.
    pub fn apply_timed(
        &self,
        plans: Vec<(usize, NodePlan)>,
        ttl: Ttl,
        timeout: Duration,
    ) -> Vec<Timed<Vec<String>>> {
        let which: Vec<usize> = plans.iter().map(|(i, _)| *i).collect();
        let plans: Arc<BTreeMap<usize, NodePlan>> = Arc::new(plans.into_iter().collect());
        self.timed(
            timeout,
            &which,
            move |i, t| match plans.get(&i) {
                Some(p) => t.apply(p, ttl),
                None => Ok(Vec::new()),
            },
            |t, added| {
                let _ = t.delete(added);
            },
        )
    }

    /// Deletes the named entries on each node, all at once, within `timeout`.
    pub fn delete_timed(
        &self,
        names: Vec<(usize, Vec<String>)>,
        timeout: Duration,
    ) -> Vec<Timed<Vec<String>>> {
        let which: Vec<usize> = names.iter().map(|(i, _)| *i).collect();
        let names: Arc<BTreeMap<usize, Vec<String>>> = Arc::new(names.into_iter().collect());
        self.timed(
            timeout,
            &which,
            move |i, t| t.delete(names.get(&i).map_or(&[][..], Vec::as_slice)),
            |_, _| {},
        )
    }

    /// Sets the lifetime of the named entries on each node to `ttl` from now (a lease's
    /// renewal); each success returns the names the node still had live.
    pub fn renew_timed(
        &self,
        names: Vec<(usize, Vec<String>)>,
        ttl: Ttl,
        timeout: Duration,
    ) -> Vec<Timed<Vec<String>>> {
        let which: Vec<usize> = names.iter().map(|(i, _)| *i).collect();
        let names: Arc<BTreeMap<usize, Vec<String>>> = Arc::new(names.into_iter().collect());
        self.timed(
            timeout,
            &which,
            move |i, t| t.renew(names.get(&i).map_or(&[][..], Vec::as_slice), ttl),
            |_, _| {},
        )
    }

    /// Every node attached (an empty plan: interfaces and protections), within `timeout`, so
    /// that later changes are one publish each. Fails naming the first node that failed.
    pub fn prepare(&self, timeout: Duration) -> Result<(), Error> {
        let failed = self.prepare_nodes(&self.all(), timeout)?;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(node_error(failed, "; no fault was applied".into()))
        }
    }

    /// [`prepare`](Self::prepare) for the nodes `which`: those that failed, with why.
    fn prepare_nodes(
        &self,
        which: &[usize],
        timeout: Duration,
    ) -> Result<Vec<(String, NodeError)>, Error> {
        let plans = self.rule_plans(&BTreeMap::new())?;
        let plans: Vec<(usize, NodePlan)> = plans
            .into_iter()
            .enumerate()
            .filter(|(i, _)| which.contains(i))
            .collect();
        Ok(self
            .apply_timed(plans, Ttl::Never, timeout)
            .into_iter()
            .filter_map(|t| {
                t.result
                    .err()
                    .map(|e| (self.cluster.nodes[t.node].name.clone(), e))
            })
            .collect())
    }

    /// Applies `plans` on every node in one publish each, all or nothing, in one exchange per
    /// node where every node is attached already (each applies only if it is: every command
    /// after a lab's first, every agent, which attaches when it starts) and every transport
    /// can ask so in one quick exchange (netns, agent; not SSH). Nodes that are not
    /// are attached first ([`prepare`](Self::prepare), with [`PREPARE_TIMEOUT`]: loading and
    /// verifying the programs took 4 s per node on a busy 2-core machine, more than the 10 s
    /// deadline allows for five at once), then applied: on a new lab none is attached, so
    /// nothing is cut until every node is ready; where some were attached, they apply at once
    /// and the others follow once attached (the events' spread shows it).
    pub fn apply(&self, plans: Vec<NodePlan>, ttl: Ttl) -> Result<(), Error> {
        let plans = Arc::new(plans);
        let (mut ok, mut failed, mut later) = (Vec::new(), Vec::new(), Vec::new());
        if self.transports.iter().all(|t| t.applies_if_attached()) {
            let p = Arc::clone(&plans);
            for (i, r) in self.on_nodes(
                &self.all(),
                move |i, t| t.apply_if_attached(&p[i], ttl),
                |t, added| {
                    if let Some(a) = added {
                        let _ = t.delete(a);
                    }
                },
            ) {
                match r {
                    Ok(Some(added)) => ok.push((i, added)),
                    Ok(None) => later.push(i),
                    Err(e) => failed.push((self.cluster.nodes[i].name.clone(), e)),
                }
            }
        } else {
            // Every node made ready first (see `applies_if_attached`).
            later = self.all();
        }
        if failed.is_empty() && !later.is_empty() {
            let unready = match self.prepare_nodes(&later, PREPARE_TIMEOUT) {
                Ok(f) => f,
                Err(e) => {
                    self.undo(ok);
                    return Err(e);
                }
            };
            if !unready.is_empty() {
                let outcome = if ok.is_empty() {
                    "; no fault was applied".into()
                } else {
                    self.undo(ok)
                };
                return Err(node_error(unready, outcome));
            }
            let p = Arc::clone(&plans);
            for (i, r) in self.on_nodes(
                &later,
                move |i, t| t.apply(&p[i], ttl),
                |t, added| {
                    let _ = t.delete(added);
                },
            ) {
                match r {
                    Ok(added) => ok.push((i, added)),
                    Err(e) => failed.push((self.cluster.nodes[i].name.clone(), e)),
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let outcome = self.undo(ok);
        Err(node_error(failed, outcome))
    }

    /// Deletes what each node took; says what happened, for the error message.
    fn undo(&self, done: Vec<(usize, Vec<String>)>) -> String {
        let done: Vec<_> = done.into_iter().filter(|(_, a)| !a.is_empty()).collect();
        if done.is_empty() {
            return "; no other node had changed".into();
        }
        let which: Vec<usize> = done.iter().map(|(i, _)| *i).collect();
        let added: Arc<BTreeMap<usize, Vec<String>>> = Arc::new(done.into_iter().collect());
        let a = Arc::clone(&added);
        let results = self.on_nodes(
            &which,
            move |i, t| t.delete(a.get(&i).map_or(&[][..], Vec::as_slice)),
            |_, _| {},
        );
        self.rollback_outcome(results, "undone on", "its entries expire with their TTL")
    }

    /// What a rollback did, for an error message: `; DID A, B; NOT DID C (why; fallback)`.
    pub(super) fn rollback_outcome<T>(
        &self,
        results: impl IntoIterator<Item = (usize, Result<T, NodeError>)>,
        did: &str,
        fallback: &str,
    ) -> String {
        let (mut done, mut left) = (Vec::new(), Vec::new());
        for (i, r) in results {
            let n = &self.cluster.nodes[i].name;
            match r {
                Ok(_) => done.push(n.clone()),
                Err(e) => left.push(format!("{n} ({e}; {fallback})")),
            }
        }
        let mut s = String::new();
        if !done.is_empty() {
            s.push_str(&format!("; {did} {}", done.join(", ")));
        }
        if !left.is_empty() {
            s.push_str(&format!("; NOT {did} {}", left.join(", ")));
        }
        s
    }

    /// Each node's answer with its name, in the order given; or, when a node failed, the error
    /// naming it and the others that failed, and the nodes that answered (`; DID A, B`).
    pub(super) fn by_name<T>(
        &self,
        results: impl IntoIterator<Item = (usize, Result<T, NodeError>)>,
        did: &str,
    ) -> Result<Vec<(String, T)>, Error> {
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for (i, r) in results {
            let n = self.cluster.nodes[i].name.clone();
            match r {
                Ok(v) => ok.push((n, v)),
                Err(e) => failed.push((n, e)),
            }
        }
        if failed.is_empty() {
            return Ok(ok);
        }
        let done: Vec<&str> = ok.iter().map(|(n, _)| n.as_str()).collect();
        let outcome = if done.is_empty() {
            String::new()
        } else {
            format!("; {did} {}", done.join(", "))
        };
        Err(node_error(failed, outcome))
    }

    /// Deletes partitions on every node: those named `NAME.from-<node>.<family>` for each of
    /// `names`, or every partition of that form (any name) when `names` is empty; and the
    /// live impairment rules of those names (`NAME.from-<node>.<family>` at receivers,
    /// `NAME.to-<node>.<family>` at senders). Returns what each node deleted, in file order.
    pub fn heal(&self, names: &[String]) -> Result<Vec<(String, Vec<String>)>, Error> {
        for (i, n) in names.iter().enumerate() {
            validate_name(&format!("NAME[{i}]"), n)?;
        }
        let peers: Vec<String> = self.cluster.names().iter().map(|s| s.to_string()).collect();
        let names = names.to_vec();
        let results = self.on_nodes(
            &self.all(),
            move |_, t| {
                // One exchange where the node can pick itself.
                if let Some(healed) = t.heal_cluster(&names, &peers)? {
                    return Ok(healed);
                }
                let select = |entry: &str| cluster_entry(entry, &names, &peers);
                let mut healed = t.heal(&select)?;
                let rules: Vec<String> = t
                    .state()?
                    .faults
                    .into_iter()
                    .filter(|f| f.kind == Kind::Rule && impair_entry(&f.name, &names, &peers))
                    .map(|f| f.name)
                    .collect();
                if !rules.is_empty() {
                    healed.extend(t.delete(&rules)?);
                }
                Ok(healed)
            },
            |_, _| {},
        );
        self.by_name(results, "healed on")
    }

    /// Every entry name the coordinator can give a step of one of `steps` on any node
    /// (`STEP.from-PEER.v4|v6`, `STEP.to-PEER.v4|v6`, a node of the cluster as `PEER`): what a
    /// run deletes before its first step, live or expired, whoever left it.
    pub fn step_entries(&self, steps: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for s in steps {
            for p in self.cluster.names() {
                for dir in ["from", "to"] {
                    for fam in ["v4", "v6"] {
                        out.push(format!("{s}.{dir}-{p}.{fam}"));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Every node's state; an unreachable node is reported, not an error.
    pub fn status(&self) -> Vec<NodeStatus> {
        self.on_nodes(&self.all(), |_, t| t.state(), |_, _| {})
            .into_iter()
            .map(|(i, r)| {
                let transport = self.transports[i].kind();
                let node = self.cluster.nodes[i].name.clone();
                match r {
                    Ok(s) => NodeStatus {
                        node,
                        transport,
                        reachable: true,
                        error: None,
                        attached: s.attached,
                        faults: s.faults,
                    },
                    Err(e) => NodeStatus {
                        node,
                        transport,
                        reachable: false,
                        error: Some(e.to_string()),
                        attached: Vec::new(),
                        faults: Vec::new(),
                    },
                }
            })
            .collect()
    }
}

impl Coordinator {
    /// Every node's live faults with their counters; an unreachable node is reported, not an
    /// error.
    /// Every node probes every other node's addresses at once (`cluster measure`), each for
    /// `duration`; a node whose transport cannot probe says so in `error`.
    pub fn measure(
        &self,
        probe: crate::measure::probe::Kind,
        interval: Duration,
        duration: Duration,
        params: crate::measure::Params,
    ) -> Vec<NodeMeasure> {
        self.probe_all(transport::MeasureRequest {
            peers: Vec::new(),
            probe,
            interval,
            duration,
            params,
            listen: None,
            passive: false,
        })
    }

    /// Every node watches its live TCP traffic for `duration` at once (`cluster measure
    /// --passive`) and reports its round trips to the other nodes' addresses.
    pub fn measure_passive(
        &self,
        duration: Duration,
        params: crate::measure::Params,
    ) -> Vec<NodeMeasure> {
        self.probe_all(transport::MeasureRequest {
            peers: Vec::new(),
            probe: crate::measure::probe::Kind::Icmp,
            interval: duration,
            duration,
            params,
            listen: None,
            passive: true,
        })
    }

    /// `req` on every node at once, its peers every other node's addresses (`cluster measure`;
    /// listening, `cluster verify`).
    pub fn probe_all(&self, req: transport::MeasureRequest) -> Vec<NodeMeasure> {
        let nodes = self.cluster.nodes.clone();
        let timeout = self.timeout + req.length();
        let owners: Vec<(std::net::IpAddr, String)> = nodes
            .iter()
            .flat_map(|n| n.addrs.iter().map(|a| (*a, n.name.clone())))
            .collect();
        self.on_nodes_within(
            timeout,
            &self.all(),
            move |i, t| {
                let peers = nodes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .flat_map(|(_, n)| n.addrs.iter().copied())
                    .collect();
                t.measure(&transport::MeasureRequest {
                    peers,
                    ..req.clone()
                })
            },
            |_, _| {},
        )
        .into_iter()
        .map(|(i, r)| {
            let transport = self.transports[i].kind();
            let node = self.cluster.nodes[i].name.clone();
            let (error, reports) = match r {
                Ok(Some(v)) => (None, v),
                Ok(None) => (
                    Some(format!("the {transport} transport cannot measure yet")),
                    Vec::new(),
                ),
                Err(e) => (Some(e.to_string()), Vec::new()),
            };
            let pairs = reports
                .into_iter()
                .filter_map(|report| {
                    let addr: std::net::IpAddr = report.peer.as_deref()?.parse().ok()?;
                    let to = owners.iter().find(|(a, _)| *a == addr)?.1.clone();
                    Some(PairReport { to, addr, report })
                })
                .collect();
            NodeMeasure {
                node,
                transport,
                error,
                pairs,
            }
        })
        .collect()
    }

    /// Every node probes every other for `duration` with each of `probes` in turn (ICMP when
    /// none), and listens for their requests (a fresh nonce tells this run's from any
    /// other's): what `verify` judges.
    pub fn verify_probe(
        &self,
        probes: &std::collections::BTreeSet<crate::measure::probe::Kind>,
        interval: Duration,
        duration: Duration,
    ) -> super::verify::Observed {
        let icmp = std::collections::BTreeSet::from([crate::measure::probe::Kind::Icmp]);
        let probes = if probes.is_empty() { &icmp } else { probes };
        let mut out: Option<super::verify::Observed> = None;
        for &probe in probes {
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let nonce = (t ^ (u64::from(std::process::id()) << 40)) | 1;
            let m = self.probe_all(transport::MeasureRequest {
                peers: Vec::new(),
                probe,
                interval,
                duration,
                params: crate::measure::Params::default(),
                listen: Some(nonce),
                passive: false,
            });
            let o = super::verify::Observed::of_probe(probe, &m, &self.cluster, interval);
            out = Some(match out {
                Some(a) => a.merge(o),
                None => o,
            });
        }
        out.unwrap_or_default()
    }

    pub fn stats(&self) -> Vec<NodeStats> {
        self.on_nodes(&self.all(), |_, t| t.stats(), |_, _| {})
            .into_iter()
            .map(|(i, r)| {
                let transport = self.transports[i].kind();
                let node = self.cluster.nodes[i].name.clone();
                let (reachable, error, faults) = match r {
                    Ok(Some(v)) => (
                        true,
                        None,
                        v.into_iter().filter(|s| s.kind != Kind::Protect).collect(),
                    ),
                    Ok(None) => (
                        true,
                        Some(format!(
                            "the {transport} transport does not report counters"
                        )),
                        Vec::new(),
                    ),
                    Err(e) => (false, Some(e.to_string()), Vec::new()),
                };
                NodeStats {
                    node,
                    transport,
                    reachable,
                    error,
                    faults,
                }
            })
            .collect()
    }
}

/// `NAME.<dir>PEER.v4|v6` split into NAME and PEER, for `dir` one of `dirs` (`"from-"`, `"to-"`).
fn split_entry<'a>(entry: &'a str, dirs: &[&str]) -> Option<(&'a str, &'a str)> {
    let rest = entry
        .strip_suffix(".v4")
        .or_else(|| entry.strip_suffix(".v6"))?;
    dirs.iter().find_map(|d| rest.rsplit_once(&format!(".{d}")))
}

/// Whether an impairment rule is one the coordinator made (`NAME.from-<peer>.v4` or
/// `NAME.to-<peer>.v4`, `peer` a node of the cluster), of one of `names` (any when empty).
pub(super) fn impair_entry(entry: &str, names: &[String], peers: &[String]) -> bool {
    let Some((name, peer)) = split_entry(entry, &["from-", "to-"]) else {
        return false;
    };
    peers.iter().any(|p| p == peer) && (names.is_empty() || names.iter().any(|n| n == name))
}

/// Whether a partition entry is one the coordinator made (`NAME.from-<peer>.v4|v6`, `peer` a
/// node of the cluster), of one of `names` (any name when empty).
pub(super) fn cluster_entry(entry: &str, names: &[String], peers: &[String]) -> bool {
    let Some((name, peer)) = split_entry(entry, &["from-"]) else {
        return false;
    };
    peers.iter().any(|p| p == peer) && (names.is_empty() || names.iter().any(|n| n == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heal_picks_only_the_coordinators_entries() {
        let peers = vec!["n1".to_string(), "n2".to_string()];
        let any: Vec<String> = vec![];
        assert!(cluster_entry("split.from-n1.v4", &any, &peers));
        assert!(cluster_entry("a.b.from-n2.v6", &any, &peers));
        assert!(!cluster_entry("split.from-n9.v4", &any, &peers));
        assert!(!cluster_entry("cut", &any, &peers));
        assert!(!cluster_entry("split.from-n1.v5", &any, &peers));
        let named = vec!["a.b".to_string()];
        assert!(cluster_entry("a.b.from-n2.v6", &named, &peers));
        assert!(!cluster_entry("split.from-n1.v4", &named, &peers));
        assert!(!cluster_entry("lossy.to-n1.v4", &any, &peers));
        assert!(impair_entry("lossy.to-n1.v4", &any, &peers));
        assert!(impair_entry("lossy.from-n2.v6", &any, &peers));
        assert!(!impair_entry("lossy.to-n9.v6", &any, &peers));
        assert!(!impair_entry("lossy.to-n1.v4", &named, &peers));
        assert!(impair_entry("a.b.to-n1.v4", &named, &peers));
    }
}
