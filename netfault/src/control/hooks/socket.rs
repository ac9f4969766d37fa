//! The socket-delivery hook of cgroup entries (`nf_cg_ingress`): linked to each cgroup that a
//! live entry matching ingress names, so the first packet of a flow tc ingress cannot tell
//! apart yet (a SYN to a listener, a datagram to a socket that only receives) meets the
//! entry at the socket. Linked before the rule set that needs it is published (until then
//! it finds no slot of its cgroup and does nothing), unlinked after the one that no longer
//! does. The links' pins are the record (`dataplane::cgroup_links`).
use std::collections::BTreeMap;

use crate::{
    control::{
        Result,
        state::{Attachment, Paths, RuleEntry},
    },
    dataplane::{self as kernel, Maps},
    spec::CgroupMatch,
};

/// The cgroups the hook must be on for `rules` at `now`, by id.
pub fn wanted<'a>(
    rules: impl IntoIterator<Item = &'a RuleEntry>,
    now: u64,
) -> BTreeMap<u64, &'a CgroupMatch> {
    rules
        .into_iter()
        .filter(|r| r.live(now) && r.spec.dir.includes(true))
        .filter_map(|r| r.spec.cgroup.as_ref())
        .map(|c| (c.id, c))
        .collect()
}

/// Before a publish: the hook on every cgroup `rules` need it on, and the interfaces it may
/// act on written. A cgroup that is gone (its entries match no socket) is said in a warning.
/// An error (the kernel refused the link) changes no rule.
pub fn prepare(
    attached: &[Attachment],
    rules: &[&RuleEntry],
    maps: &mut Maps,
    paths: &Paths,
    now: u64,
) -> Result<Vec<String>> {
    let want = wanted(rules.iter().copied(), now);
    let links = paths.links();
    let have = kernel::cgroup_links(&links);
    if want.is_empty() && have.is_empty() {
        return Ok(Vec::new());
    }
    let ifindexes: Vec<u32> = attached.iter().map(|a| a.ifindex).collect();
    maps.set_ifaces(&ifindexes)?;
    let mut warnings = Vec::new();
    let prog = paths.progs().join(kernel::PINNED_CG_INGRESS);
    for (id, cg) in want {
        if have.contains(&id) {
            continue;
        }
        super::apply::ensure_pinned(&prog, paths)?;
        if !kernel::attach_cgroup_pinned(&prog, &cg.path, id, &links)? {
            warnings.push(format!(
                "the cgroup {} is gone (or is another cgroup now): its entries match no socket",
                cg.path.display()
            ));
        }
    }
    Ok(warnings)
}

/// After a publish: the hook off every cgroup `rules` no longer need it on.
pub fn release(rules: &[&RuleEntry], paths: &Paths, now: u64) -> Result<()> {
    let want = wanted(rules.iter().copied(), now);
    let links = paths.links();
    for id in kernel::cgroup_links(&links) {
        if !want.contains_key(&id) {
            kernel::detach_cgroup(&links, id)?;
        }
    }
    Ok(())
}
