//! The network-namespace transport: the pinned-mode controller of a namespace on this host.
use super::{LiveFault, NodeError, NodePlan, NodeState, NodeTransport};
use crate::{
    control::{Ctl, monotonic_ns, netns},
    spec::{Kind, Ttl},
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

    fn renew(&self, names: &[String], ttl: Ttl) -> Result<Vec<String>, NodeError> {
        let mut ctl = self.open()?;
        let present: Vec<String> = names
            .iter()
            .filter(|n| ctl.state.find(n).is_some())
            .cloned()
            .collect();
        if !present.is_empty() {
            ctl.renew(&present, ttl)?;
        }
        Ok(present)
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
