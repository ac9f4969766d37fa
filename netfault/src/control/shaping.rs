//! The queues delay and rate need: planned from the rules, then installed with an undo journal.
use std::time::Duration;

use netfault_common::IFB_VIA_MIRRED;

use super::{Error, Result};
use crate::{
    compile,
    control::{queues as qdisc, state::State},
    dataplane::{self as kernel, Maps},
    spec::{Kind, RuleSpec},
};

/// One queue an interface needs for its delaying rules.
struct QueueNeed {
    iface: String,
    ifindex: u32,
    ingress: bool,
    need: qdisc::Need,
}

/// The queues the live rules need: per attached interface and direction, the longest delay any
/// rule there stamps (jitter's worst case and the rate's backlog included) and the rate the
/// traffic comes at (the link's, or the sum of the rules' `--rate` where every rule has one).
fn queue_needs(state: &State, now: u64) -> Vec<QueueNeed> {
    let mut out = Vec::new();
    for a in &state.attached {
        // Asked of the device only where some rule shapes: this runs on every publish.
        let mut link_info = None;
        for ingress in [false, true] {
            let rules: Vec<&RuleSpec> = state
                .rules
                .iter()
                .filter(|r| r.live(now))
                .map(|r| &r.spec)
                .filter(|s| s.kind == Kind::Rule && s.shape.is_some())
                .filter(|s| s.iface.as_ref().is_none_or(|i| i == &a.iface))
                .filter(|s| s.dir.includes(ingress))
                .collect();
            if rules.is_empty() {
                continue;
            }
            let (mtu, link) = *link_info.get_or_insert_with(|| qdisc::link_info(&a.iface));
            let max_delay_ns = rules
                .iter()
                .map(|s| {
                    s.shape.model().max_ns()
                        + s.shape
                            .rate
                            .map_or(0, |_| compile::RATE_QUEUE.as_nanos() as u64)
                })
                .max()
                .unwrap_or(0);
            let paced: Option<u64> = rules
                .iter()
                .map(|s| s.shape.rate.map(|r| r.bytes_per_sec * 8))
                .sum();
            let (rate_bits, rate_source) = match (paced, link) {
                (Some(p), Some(l)) if p < l => (p, "the sum of the rules' --rate"),
                (Some(p), None) if p < qdisc::ASSUMED_LINK_BITS => {
                    (p, "the sum of the rules' --rate")
                }
                (_, Some(l)) => (l, "the link's speed"),
                (_, None) => (
                    qdisc::ASSUMED_LINK_BITS,
                    "assumed: the device reports no speed",
                ),
            };
            out.push(QueueNeed {
                iface: a.iface.clone(),
                ifindex: a.ifindex,
                ingress,
                need: qdisc::Need {
                    max_delay: Duration::from_nanos(max_delay_ns),
                    rate_bits,
                    rate_source,
                    mtu,
                },
            });
        }
    }
    out
}

/// A change `reconcile_shaping` made, undone if a later step fails.
enum Undo {
    Fq(String),
    Ifb(String),
    IfbMap(u32),
    Mirred(String),
}

impl Undo {
    fn run(self, maps: &mut Maps) {
        let _ = match self {
            Undo::Fq(dev) => qdisc::remove_fq(&dev).map_err(Error::from),
            Undo::Ifb(name) => qdisc::remove_ifb(&name).map_err(Error::from),
            Undo::IfbMap(i) => maps.set_ifb(i, None).map_err(Error::from),
            Undo::Mirred(iface) => {
                qdisc::remove_mirred_filter(&iface);
                Ok(())
            }
        };
    }
}

/// Installs or grows the fq qdiscs (and IFB devices) the rules need. Sizes everything before
/// changing anything, so a delay that cannot be held changes nothing, and undoes what it did
/// (state included) if a later step fails; queues only grow here (detach removes them).
pub(crate) fn reconcile_shaping(
    state: &mut State,
    maps: &mut Maps,
    replace_foreign: bool,
    now: u64,
) -> Result<()> {
    let before = state.shaped.clone();
    let mut undo = Vec::new();
    let res = grow_queues(state, maps, replace_foreign, now, &mut undo);
    if res.is_err() {
        for u in undo.into_iter().rev() {
            u.run(maps);
        }
        state.shaped = before;
    }
    res
}

fn grow_queues(
    state: &mut State,
    maps: &mut Maps,
    replace_foreign: bool,
    now: u64,
    undo: &mut Vec<Undo>,
) -> Result<()> {
    let needs = queue_needs(state, now);
    if needs.is_empty() {
        return Ok(());
    }
    let mem = qdisc::mem_total();
    let mut sized = Vec::new();
    for n in needs {
        let size = qdisc::size(&n.iface, &n.need, mem)?;
        sized.push((n, size));
    }
    for (n, size) in sized {
        let pos = match state.shaped.iter().position(|s| s.iface == n.iface) {
            Some(p) => p,
            None => {
                state.shaped.push(qdisc::Shaped {
                    iface: n.iface.clone(),
                    ifindex: n.ifindex,
                    egress: None,
                    ifb: None,
                    replaced: None,
                });
                state.shaped.len() - 1
            }
        };
        let sh = &mut state.shaped[pos];
        if !n.ingress {
            let want = sh.egress.map_or(size, |c| c.max(&size));
            if sh.egress.is_some_and(|c| c.covers(&size))
                && qdisc::root(&n.iface).is_ok_and(|r| r.is_ours())
            {
                continue;
            }
            if let Some(prev) = qdisc::ensure_fq(&n.iface, &want, replace_foreign)? {
                undo.push(Undo::Fq(n.iface.clone()));
                if !prev.is_default() {
                    sh.replaced = Some(format!("{} {}", prev.kind, prev.handle));
                }
            }
            sh.egress = Some(want);
        } else {
            let name = qdisc::ifb_name(n.ifindex);
            let existed = kernel::ifindex(&name).is_some();
            let ifb_index = qdisc::ensure_ifb(&name)?;
            if !existed {
                undo.push(Undo::Ifb(name.clone()));
            }
            let want = sh.ifb.as_ref().map_or(size, |i| i.fq.max(&size));
            if !sh.ifb.as_ref().is_some_and(|i| i.fq.covers(&size))
                || !qdisc::root(&name).is_ok_and(|r| r.is_ours())
            {
                // The IFB device is netfault's: whatever root it has may go.
                qdisc::ensure_fq(&name, &want, true)?;
            }
            let mirred = !qdisc::bpf_redirect_to_ifb_works();
            if sh.ifb.as_ref().map(|i| i.ifindex) != Some(ifb_index) {
                if mirred {
                    qdisc::ensure_mirred_filter(&n.iface, &name)?;
                    undo.push(Undo::Mirred(n.iface.clone()));
                }
                let value = ifb_index | if mirred { IFB_VIA_MIRRED } else { 0 };
                maps.set_ifb(n.ifindex, Some(value))?;
                undo.push(Undo::IfbMap(n.ifindex));
            }
            sh.ifb = Some(qdisc::Ifb {
                name,
                ifindex: ifb_index,
                fq: want,
                mirred,
            });
        }
    }
    Ok(())
}

/// Takes away what netfault installed on one interface: its fq (the kernel's default comes
/// back) and its IFB device.
pub(crate) fn unshape(sh: &qdisc::Shaped) -> Result<()> {
    if sh.egress.is_some() {
        qdisc::remove_fq(&sh.iface)?;
    }
    if let Some(i) = &sh.ifb {
        if i.mirred {
            qdisc::remove_mirred_filter(&sh.iface);
        }
        qdisc::remove_ifb(&i.name)?;
    }
    Ok(())
}
