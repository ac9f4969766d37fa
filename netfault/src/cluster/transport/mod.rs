//! How the coordinator acts on one node: one module per transport: the network namespace on
//! this host ([`Netns`]), a `netfault agent` over HTTP(S) ([`Agent`]) and OpenSSH running
//! `netfault node` on the remote ([`Ssh`]).
//!
//! A transport's methods block and may change the calling thread (the netns transport enters
//! the node's namespace with setns, which applies to one thread only): the coordinator calls
//! each on a fresh thread of its own.
pub mod agent;
pub mod mux;
mod netns;
pub mod secret;
pub mod session;
pub mod ssh;

use std::time::Duration;

pub use self::{agent::Agent, netns::Netns, ssh::Ssh};
use super::{Node, NodePlan, Transport};
use crate::{
    control::{self, netns as ns},
    measure::Report,
    pause::node as pause,
    spec::{Kind, SpecError, Ttl},
};

/// What went wrong on one node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Netns(#[from] ns::NetnsError),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    /// The agent transport: what the agent answered, or why it could not be asked.
    #[error("{0}")]
    Agent(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the node's worker thread panicked")]
    Panicked,
    #[error("start the node's worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Probe(#[from] crate::measure::probe::ProbeError),
    #[error(transparent)]
    Passive(#[from] crate::measure::passive::PassiveError),
    /// A pause on the node: bad input (exit 2) or the watchdog's failure.
    #[error(transparent)]
    Pause(#[from] crate::pause::Error),
    /// The node's transport cannot carry this operation (yet).
    #[error("the {0} transport cannot {1}")]
    Unsupported(&'static str, &'static str),
}

/// A fault live on a node, as `status` shows it (and as the SSH transport's `state` carries it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LiveFault {
    pub name: String,
    pub kind: Kind,
    /// Seconds left; `None`: no expiry.
    pub ttl_left_s: Option<u64>,
    /// What the entry matches and does: what `cluster verify` checks the wire against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<crate::spec::RuleSpec>,
}

/// One node's state, as `status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeState {
    pub attached: Vec<String>,
    pub faults: Vec<LiveFault>,
}

/// The operations the coordinator needs on a node.
pub trait NodeTransport: Send + Sync {
    /// `"netns"`, `"agent"`, `"ssh"`.
    fn kind(&self) -> &'static str;
    /// Attaches the plan's interfaces where not attached, then adds its protections (those the
    /// node lacks) and rules in one publish. Returns the names it added, for an undo.
    fn apply(&self, plan: &NodePlan, ttl: Ttl) -> Result<Vec<String>, NodeError>;
    /// Whether [`apply_if_attached`](Self::apply_if_attached) is one quick exchange: then the
    /// coordinator applies in one step where every node is attached. Not over SSH, whose
    /// first exchange of a command opens the connection (hundreds of milliseconds, unevenly
    /// across nodes): there every node is made ready first, so that the cut lands on all at
    /// once.
    fn applies_if_attached(&self) -> bool {
        false
    }
    /// [`apply`](Self::apply) only where every interface of the plan is attached already:
    /// then the publish follows at once. `None`, with nothing changed, where one is not (or
    /// where the node cannot be asked this way).
    fn apply_if_attached(
        &self,
        plan: &NodePlan,
        ttl: Ttl,
    ) -> Result<Option<Vec<String>>, NodeError> {
        let _ = (plan, ttl);
        Ok(None)
    }
    /// Deletes the entries (of any kind) named `names` that exist; a node that is not attached
    /// has none. Returns the names deleted.
    fn delete(&self, names: &[String]) -> Result<Vec<String>, NodeError>;
    /// Deletes the partitions `select` picks. Returns the names deleted.
    fn heal(&self, select: &(dyn Fn(&str) -> bool + Sync)) -> Result<Vec<String>, NodeError>;
    /// `cluster heal` in one exchange: the node deletes `local::cluster_entries` itself.
    /// `None`: this transport (or this node's netfault) cannot; the coordinator picks.
    fn heal_cluster(
        &self,
        names: &[String],
        peers: &[String],
    ) -> Result<Option<Vec<String>>, NodeError> {
        let _ = (names, peers);
        Ok(None)
    }
    /// Sets the lifetime of the entries named `names` that exist to `ttl` from now (a lease's
    /// renewal). Returns the names renewed.
    fn renew(&self, names: &[String], ttl: Ttl) -> Result<Vec<String>, NodeError>;
    fn state(&self) -> Result<NodeState, NodeError>;
    /// Every entry's counters (`cluster stats`); `None`: this transport cannot report them.
    fn stats(&self) -> Result<Option<Vec<crate::observe::StatView>>, NodeError> {
        Ok(None)
    }
    /// Probes `peers` from the node (`measure --probe`) and reports each (`cluster measure`);
    /// `None`: this transport cannot yet.
    fn measure(&self, probe: &MeasureRequest) -> Result<Option<Vec<Report>>, NodeError> {
        let _ = probe;
        Ok(None)
    }
    /// Starts a pause on the node's host (its watchdog runs there); returns once the target
    /// is stopped.
    fn pause(&self, req: &pause::Request) -> Result<pause::Started, NodeError> {
        let _ = req;
        Err(NodeError::Unsupported(self.kind(), "pause"))
    }
    /// The live pauses on the node's host.
    fn pauses(&self) -> Result<Vec<pause::View>, NodeError> {
        Err(NodeError::Unsupported(self.kind(), "list pauses"))
    }
    /// Ends the pauses named `names` that are live (a missing one is no error: it ended by
    /// itself). Returns the names resumed.
    fn resume(&self, names: &[String]) -> Result<Vec<String>, NodeError> {
        let _ = names;
        Err(NodeError::Unsupported(self.kind(), "resume"))
    }
}

/// What `cluster measure` asks of each node.
#[derive(Debug, Clone)]
pub struct MeasureRequest {
    pub peers: Vec<std::net::IpAddr>,
    /// What is sent: ICMP echo requests or UDP datagrams to a port.
    pub probe: crate::measure::probe::Kind,
    pub interval: Duration,
    pub duration: Duration,
    pub params: crate::measure::Params,
    /// Listen for the other nodes' requests carrying this nonce (`cluster verify`): each
    /// report then says how many of its peer's requests were heard.
    pub listen: Option<u64>,
    /// Watch the node's live TCP traffic instead of probing (`measure` without `--probe`).
    pub passive: bool,
}

impl MeasureRequest {
    /// How long the node probes and waits for the last replies (or requests, listening), or
    /// watches and attaches its programs first.
    pub fn length(&self) -> Duration {
        self.duration
            + if self.passive {
                PASSIVE_SETUP
            } else if self.listen.is_some() && !self.probe.is_icmp() {
                crate::measure::probe::LISTEN_TAIL + crate::measure::probe::LISTEN_LEAD
            } else if self.listen.is_some() {
                crate::measure::probe::LISTEN_TAIL
            } else {
                crate::measure::probe::GRACE
            }
    }
}

impl MeasureRequest {
    /// Runs it in this thread's namespace: the probes, or the passive watch.
    pub fn run_here(&self) -> Result<Vec<crate::measure::Report>, NodeError> {
        if self.passive {
            return Ok(crate::measure::passive::measure(
                &self.peers,
                self.duration,
                &self.params,
            )?);
        }
        Ok(crate::measure::probe_reports(
            &self.peers,
            self.probe,
            self.interval,
            self.duration,
            &self.params,
            None,
            self.listen,
        )?)
    }
}

/// What a passive measurement may take beyond its duration: loading and verifying its two
/// programs (about 13,000 instructions each) and attaching them.
pub const PASSIVE_SETUP: Duration = Duration::from_secs(10);

/// The transport for `node`, the `index`th of the cluster file: bad input (an agent's
/// `token_file` that is not private to this user) names the key, `node[INDEX].token_file`.
/// An SSH node shares one connection from `mux` for the coordinator's life.
pub fn for_node(
    index: usize,
    node: &Node,
    mux: &std::sync::Arc<mux::Mux>,
) -> Result<Box<dyn NodeTransport>, SpecError> {
    Ok(match &node.transport {
        Transport::Netns(ns) => Box::new(Netns {
            at: netns::Place::Name(ns.clone()),
        }),
        Transport::Pid(pid) => Box::new(Netns {
            at: netns::Place::Pid(*pid),
        }),
        Transport::PidFile(f) => Box::new(Netns {
            at: netns::Place::PidFile(f.clone()),
        }),
        Transport::Container(c) => Box::new(Netns {
            at: netns::Place::Container(c.clone()),
        }),
        Transport::Agent {
            url,
            token_file,
            ca_file,
        } => Box::new(
            Agent::new(url, token_file, ca_file.as_deref())
                .map_err(|e| SpecError::new(format!("node[{index}].token_file"), e.to_string()))?,
        ),
        Transport::Ssh {
            target,
            options,
            netfault,
        } => Box::new(
            Ssh::new(target.clone(), options.clone(), netfault.clone())
                .shared(std::sync::Arc::clone(mux), index),
        ),
    })
}
