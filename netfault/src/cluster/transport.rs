//! How the coordinator acts on one node. Only the network-namespace transport exists yet; the
//! agent and SSH transports are parsed from the cluster file but refused here
//! ([`for_node`]), before any node is touched.
//!
//! A transport's methods block and may change the calling thread (the netns transport enters
//! the node's namespace with setns, which applies to one thread only): the coordinator calls
//! each on a fresh thread of its own.
use std::time::Duration;

use super::{Node, NodePlan, Transport};
use crate::{
    control::{self, Ctl, monotonic_ns, netns},
    spec::{Kind, Ttl},
};

/// What went wrong on one node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the node's worker thread panicked")]
    Panicked,
    #[error("start the node's worker thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// A fault live on a node, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LiveFault {
    pub name: String,
    pub kind: Kind,
    /// Seconds left; `None`: no expiry.
    pub ttl_left_s: Option<u64>,
}

/// One node's state, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
    /// Deletes the entries (of any kind) named `names` that exist; a node that is not attached
    /// has none. Returns the names deleted.
    fn delete(&self, names: &[String]) -> Result<Vec<String>, NodeError>;
    /// Deletes the partitions `select` picks. Returns the names deleted.
    fn heal(&self, select: &(dyn Fn(&str) -> bool + Sync)) -> Result<Vec<String>, NodeError>;
    fn state(&self) -> Result<NodeState, NodeError>;
}

/// A transport the cluster file names but this build cannot drive yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {node}: the {transport} transport is not implemented yet (only netns is)")]
pub struct NotImplemented {
    pub node: String,
    pub transport: &'static str,
}

/// The transport for `node`; refuses those not implemented yet.
pub fn for_node(node: &Node) -> Result<Box<dyn NodeTransport>, NotImplemented> {
    match &node.transport {
        Transport::Netns(ns) => Ok(Box::new(Netns { ns: ns.clone() })),
        Transport::Agent { .. } => Err(NotImplemented {
            node: node.name.clone(),
            transport: "agent",
        }),
        Transport::Ssh { .. } => Err(NotImplemented {
            node: node.name.clone(),
            transport: "ssh",
        }),
    }
}

/// A namespace on this host: the pinned-mode controller, as `netfault --netns NS` runs it.
pub struct Netns {
    pub ns: String,
}

impl Netns {
    /// Enters the namespace (this thread only) and locks its state.
    fn open(&self) -> Result<Ctl, NodeError> {
        netns::enter(&self.ns)?;
        Ok(Ctl::open(Some(&self.ns))?)
    }
}

/// Whether the namespace's controller has programs to hold entries: deleting on a node that was
/// never attached is a no-op, not an error.
fn attached(ctl: &Ctl) -> bool {
    !ctl.state.attached.is_empty()
}

impl NodeTransport for Netns {
    fn kind(&self) -> &'static str {
        "netns"
    }

    fn apply(&self, plan: &NodePlan, ttl: Ttl) -> Result<Vec<String>, NodeError> {
        let mut ctl = self.open()?;
        ctl.attach(&plan.ifaces, None)?;
        // Protections are shared by every partition: add only the missing ones (a name present
        // twice is refused).
        let mut specs: Vec<_> = plan
            .protect
            .iter()
            .filter(|p| ctl.state.find(&p.name).is_none())
            .cloned()
            .collect();
        specs.extend(plan.rules.iter().cloned());
        let names = specs.iter().map(|s| s.name.clone()).collect();
        if !specs.is_empty() {
            // No SSH protection: the connection the command came over is not in this namespace;
            // the plan's protections are what keeps the coordinator's traffic.
            ctl.add(specs, ttl, false)?;
        }
        Ok(names)
    }

    fn delete(&self, names: &[String]) -> Result<Vec<String>, NodeError> {
        let mut ctl = self.open()?;
        if !attached(&ctl) {
            return Ok(Vec::new());
        }
        let present: Vec<String> = names
            .iter()
            .filter(|n| ctl.state.find(n).is_some())
            .cloned()
            .collect();
        if present.is_empty() {
            return Ok(present);
        }
        Ok(ctl.delete(&present, &[Kind::Partition, Kind::Rule, Kind::Protect])?)
    }

    fn heal(&self, select: &(dyn Fn(&str) -> bool + Sync)) -> Result<Vec<String>, NodeError> {
        let mut ctl = self.open()?;
        if !attached(&ctl) {
            return Ok(Vec::new());
        }
        let picked: Vec<String> = ctl
            .state
            .rules
            .iter()
            .filter(|r| r.spec.kind == Kind::Partition && select(&r.spec.name))
            .map(|r| r.spec.name.clone())
            .collect();
        if picked.is_empty() {
            return Ok(picked);
        }
        Ok(ctl.delete(&picked, &[Kind::Partition])?)
    }

    fn state(&self) -> Result<NodeState, NodeError> {
        let ctl = self.open()?;
        let now = monotonic_ns();
        Ok(NodeState {
            attached: ctl.state.attached.iter().map(|a| a.iface.clone()).collect(),
            faults: ctl
                .state
                .rules
                .iter()
                .filter(|r| r.spec.kind != Kind::Protect && r.live(now))
                .map(|r| LiveFault {
                    name: r.spec.name.clone(),
                    kind: r.spec.kind,
                    ttl_left_s: (r.expires_mono_ns != 0)
                        .then(|| r.expires_mono_ns.saturating_sub(now) / 1_000_000_000),
                })
                .collect(),
        })
    }
}
