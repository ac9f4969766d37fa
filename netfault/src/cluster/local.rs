//! What a node does with a coordinator's request, on the node itself: the same code whether
//! the request came by the netns transport (in this process, inside the namespace), from the
//! agent (HTTP) or over SSH (a remote `netfault` process).
use super::NodePlan;
use super::transport::{LiveFault, NodeError, NodeState};
use crate::{
    control::{Ctl, monotonic_ns},
    spec::{Kind, Ttl},
};

/// Whether the controller has programs to hold entries: deleting on a node that was never
/// attached is a no-op, not an error.
fn attached(ctl: &Ctl) -> bool {
    !ctl.state.attached.is_empty()
}

/// Attaches the plan's interfaces where not attached, then adds its protections (those the
/// node lacks) and rules in one publish. Returns the names added, for an undo.
pub fn apply(ctl: &mut Ctl, plan: &NodePlan, ttl: Ttl) -> Result<Vec<String>, NodeError> {
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
        // No SSH protection: the connection the command came over may not be this node's;
        // the plan's protections are what keeps the coordinator's traffic.
        ctl.add(specs, ttl, false)?;
    }
    Ok(names)
}

/// [`apply`] where every interface of the plan is attached already (nothing to load, so the
/// publish follows at once); None, and nothing changed, where one is not.
pub fn apply_if_attached(
    ctl: &mut Ctl,
    plan: &NodePlan,
    ttl: Ttl,
) -> Result<Option<Vec<String>>, NodeError> {
    if !plan.ifaces.iter().all(|i| ctl.is_attached(i)) {
        return Ok(None);
    }
    apply(ctl, plan, ttl).map(Some)
}

/// Deletes the entries (of any kind) named `names` that exist. Returns the names deleted.
pub fn delete(ctl: &mut Ctl, names: &[String]) -> Result<Vec<String>, NodeError> {
    if !attached(ctl) {
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

/// Every partition entry the node holds, live or expired: what [`heal`] picks from.
pub fn partitions(ctl: &Ctl) -> Vec<String> {
    ctl.state
        .rules
        .iter()
        .filter(|r| r.spec.kind == Kind::Partition)
        .map(|r| r.spec.name.clone())
        .collect()
}

/// Deletes the partitions `select` picks. Returns the names deleted.
pub fn heal(
    ctl: &mut Ctl,
    select: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<String>, NodeError> {
    if !attached(ctl) {
        return Ok(Vec::new());
    }
    let picked: Vec<String> = partitions(ctl).into_iter().filter(|n| select(n)).collect();
    if picked.is_empty() {
        return Ok(picked);
    }
    Ok(ctl.delete(&picked, &[Kind::Partition])?)
}

/// The entries `cluster heal` deletes on a node: the partitions and impairment rules the
/// coordinator made (`coordinator::cluster_entry`, `impair_entry`), live or expired, of
/// `names` (any when empty), `peers` being the cluster's nodes.
pub fn cluster_entries(ctl: &Ctl, names: &[String], peers: &[String]) -> Vec<String> {
    use super::coordinator::{cluster_entry, impair_entry};
    ctl.state
        .rules
        .iter()
        .filter(|r| match r.spec.kind {
            Kind::Partition => cluster_entry(&r.spec.name, names, peers),
            Kind::Rule => impair_entry(&r.spec.name, names, peers),
            Kind::Protect => false,
        })
        .map(|r| r.spec.name.clone())
        .collect()
}

/// `cluster heal` on one node in one step: deletes [`cluster_entries`]. Returns the names
/// deleted.
pub fn heal_cluster(
    ctl: &mut Ctl,
    names: &[String],
    peers: &[String],
) -> Result<Vec<String>, NodeError> {
    let picked = cluster_entries(ctl, names, peers);
    delete(ctl, &picked)
}

/// Sets the lifetime of the entries named `names` that exist and have not expired (an expired
/// lease stays expired: the caller learns which were lost). Returns the names renewed.
pub fn renew(ctl: &mut Ctl, names: &[String], ttl: Ttl) -> Result<Vec<String>, NodeError> {
    let now = monotonic_ns();
    let present: Vec<String> = names
        .iter()
        .filter(|n| ctl.state.find(n).is_some_and(|r| r.live(now)))
        .cloned()
        .collect();
    if !present.is_empty() {
        ctl.renew(&present, ttl)?;
    }
    Ok(present)
}

/// Every entry's counters, in evaluation order; none on a node that was never attached.
pub fn stats(ctl: &Ctl) -> Result<Vec<crate::observe::StatView>, NodeError> {
    if !attached(ctl) {
        return Ok(Vec::new());
    }
    Ok(crate::observe::stats(ctl.paths(), &ctl.state)?)
}

/// The node's interfaces and live faults.
pub fn state(ctl: &Ctl) -> NodeState {
    let now = monotonic_ns();
    NodeState {
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
                spec: Some(r.spec.clone()),
            })
            .collect(),
    }
}
