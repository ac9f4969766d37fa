//! The network-namespace transport: the pinned-mode controller of a namespace on this host.
use super::{NodeError, NodePlan, NodeState, NodeTransport};
use crate::{
    cluster::local,
    control::{Ctl, netns},
    spec::Ttl,
};

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

impl NodeTransport for Netns {
    fn kind(&self) -> &'static str {
        "netns"
    }

    fn apply(&self, plan: &NodePlan, ttl: Ttl) -> Result<Vec<String>, NodeError> {
        local::apply(&mut self.open()?, plan, ttl)
    }

    fn delete(&self, names: &[String]) -> Result<Vec<String>, NodeError> {
        local::delete(&mut self.open()?, names)
    }

    fn heal(&self, select: &(dyn Fn(&str) -> bool + Sync)) -> Result<Vec<String>, NodeError> {
        local::heal(&mut self.open()?, select)
    }

    fn renew(&self, names: &[String], ttl: Ttl) -> Result<Vec<String>, NodeError> {
        local::renew(&mut self.open()?, names, ttl)
    }

    fn state(&self) -> Result<NodeState, NodeError> {
        Ok(local::state(&self.open()?))
    }

    fn stats(&self) -> Result<Option<Vec<crate::observe::StatView>>, NodeError> {
        local::stats(&self.open()?).map(Some)
    }
}
