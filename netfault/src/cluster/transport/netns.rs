//! The network-namespace transport: the pinned-mode controller of a namespace on this host,
//! named under /run/netns or reached through a process in it (`pid`, `pidfile`, `container`).
use super::{NodeError, NodePlan, NodeState, NodeTransport};
use crate::{
    cluster::local,
    control::{Ctl, netns},
    pause::{Store, node as pause},
    spec::Ttl,
    targets,
};

/// Where the namespace is.
pub enum Place {
    Name(String),
    Pid(i32),
    PidFile(std::path::PathBuf),
    /// A Docker or Podman container, asked of its engine at each use.
    Container(String),
}

/// A namespace on this host: the pinned-mode controller, as `netfault --netns NS` (or `--pid
/// PID`) runs it.
pub struct Netns {
    pub at: Place,
}

impl Netns {
    /// Enters the namespace (this thread only) and locks its state.
    fn open(&self) -> Result<Ctl, NodeError> {
        let label = self.enter()?;
        let name = match &self.at {
            Place::Name(n) => Some(n.as_str()),
            Place::Container(_) => label.as_deref(),
            Place::Pid(_) | Place::PidFile(_) => None,
        };
        Ok(Ctl::open_in_fanout(name)?)
    }

    /// Enters the namespace (this thread only); how `status` names it when /run/netns does not.
    fn enter(&self) -> Result<Option<String>, NodeError> {
        match &self.at {
            Place::Name(n) => {
                targets::Target::Netns(n.clone()).enter()?;
            }
            Place::Pid(pid) => {
                targets::Target::Pid(*pid).enter()?;
            }
            // Asked at each use: a restarted container has a new process.
            Place::Container(c) => return Ok(targets::Target::Container(c.clone()).enter()?),
            Place::PidFile(f) => {
                // Read at each use: a restarted process writes its new PID there.
                let what = |m: String| netns::NetnsError::PidFile(format!("{}: {m}", f.display()));
                let text = std::fs::read_to_string(f).map_err(|e| what(e.to_string()))?;
                let pid = text
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| what(format!("'{}' is not a process id", text.trim())))?;
                netns::enter_pid(pid).map_err(|e| match e {
                    netns::NetnsError::NoProcess(_) => what(format!("process {pid} is gone")),
                    e => e,
                })?;
            }
        };
        Ok(None)
    }
}

impl NodeTransport for Netns {
    fn kind(&self) -> &'static str {
        "netns"
    }

    fn apply(&self, plan: &NodePlan, ttl: Ttl) -> Result<Vec<String>, NodeError> {
        local::apply(&mut self.open()?, plan, ttl)
    }

    fn applies_if_attached(&self) -> bool {
        true
    }

    fn apply_if_attached(
        &self,
        plan: &NodePlan,
        ttl: Ttl,
    ) -> Result<Option<Vec<String>>, NodeError> {
        local::apply_if_attached(&mut self.open()?, plan, ttl)
    }

    fn delete(&self, names: &[String]) -> Result<Vec<String>, NodeError> {
        local::delete(&mut self.open()?, names)
    }

    fn heal(&self, select: &(dyn Fn(&str) -> bool + Sync)) -> Result<Vec<String>, NodeError> {
        local::heal(&mut self.open()?, select)
    }

    fn heal_cluster(
        &self,
        names: &[String],
        peers: &[String],
    ) -> Result<Option<Vec<String>>, NodeError> {
        local::heal_cluster(&mut self.open()?, names, peers).map(Some)
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

    fn measure(
        &self,
        probe: &super::MeasureRequest,
    ) -> Result<Option<Vec<crate::measure::Report>>, NodeError> {
        // Only the namespace: no state is opened or locked while probing.
        self.enter()?;
        probe.run_here().map(Some)
    }

    // Pauses are host-wide (a process or a cgroup is in no network namespace): run here,
    // without entering the namespace, as `netfault pause` would.
    fn pause(&self, req: &pause::Request) -> Result<pause::Started, NodeError> {
        Ok(pause::start_request(
            &Store::default(),
            req,
            &crate::targets::container_cgroup_for_pause,
        )?)
    }

    fn pauses(&self) -> Result<Vec<pause::View>, NodeError> {
        Ok(pause::list(&Store::default()))
    }

    fn resume(&self, names: &[String]) -> Result<Vec<String>, NodeError> {
        let done = pause::resume(&Store::default(), Some(names), true)?;
        Ok(done.into_iter().map(|v| v.name).collect())
    }
}
