//! The queues delay and rate need: planned from the rules, then installed with an undo journal.
//! `device` changes the devices (through netlink); `probe` asks the kernel how ingress reaches
//! an IFB device.
mod device;
pub mod probe;

use std::time::Duration;

use netfault_common::IFB_VIA_MIRRED;

use super::{Error, Result};
use crate::{
    compile,
    control::{
        queues::{self as qdisc, FqSize, Shaped},
        state::RuleEntry,
    },
    dataplane::Maps,
    spec::{Kind, RuleSpec},
};

pub use device::{fq_stats, link_info, queue_stats};

/// An attached interface: name and index.
pub type Device = (String, u32);

/// One queue the rules need, sized: fq as `iface`'s root (egress) or on its IFB (ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub iface: String,
    pub ifindex: u32,
    pub ingress: bool,
    pub size: FqSize,
}

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
/// `link` gives a device's MTU and speed; it is asked only where some rule shapes.
fn queue_needs(
    devices: &[Device],
    rules: &[RuleEntry],
    now: u64,
    mut link: impl FnMut(&str) -> (u32, Option<u64>),
) -> Vec<QueueNeed> {
    let mut out = Vec::new();
    for (iface, ifindex) in devices {
        let mut link_info = None;
        for ingress in [false, true] {
            let rules: Vec<&RuleSpec> = rules
                .iter()
                .filter(|r| r.live(now))
                .map(|r| &r.spec)
                .filter(|s| s.kind == Kind::Rule && s.act.needs_fq())
                .filter(|s| s.iface.as_ref().is_none_or(|i| i == iface))
                .filter(|s| s.dir.includes(ingress))
                .collect();
            if rules.is_empty() {
                continue;
            }
            let (mtu, link) = *link_info.get_or_insert_with(|| link(iface));
            let max_delay_ns = rules
                .iter()
                .map(|s| {
                    s.act.max_stamp_ns()
                        + s.act
                            .shape
                            .rate
                            .map_or(0, |_| compile::RATE_QUEUE.as_nanos() as u64)
                })
                .max()
                .unwrap_or(0);
            let hold = rules.iter().filter_map(|s| s.act.hold).max();
            let paced: Option<u64> = rules
                .iter()
                .map(|s| s.act.shape.rate.map(|r| r.bytes_per_sec * 8))
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
                iface: iface.clone(),
                ifindex: *ifindex,
                ingress,
                need: qdisc::Need {
                    max_delay: Duration::from_nanos(max_delay_ns),
                    hold: hold.unwrap_or_default(),
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
            Undo::Fq(dev) => device::remove_fq(&dev).map_err(Error::from),
            Undo::Ifb(name) => device::remove_ifb(&name).map_err(Error::from),
            Undo::IfbMap(i) => maps.set_ifb(i, None).map_err(Error::from),
            Undo::Mirred(iface) => {
                device::remove_mirred_filter(&iface);
                Ok(())
            }
        };
    }
}

/// The queues to install or grow for `rules` on `devices`, sized; pure but for `link`. A
/// queue that cannot be held within the memory budget is refused here, before any change.
pub fn plan(
    devices: &[Device],
    rules: &[RuleEntry],
    now: u64,
    link: impl FnMut(&str) -> (u32, Option<u64>),
    mem_total: u64,
) -> Result<Vec<Planned>> {
    queue_needs(devices, rules, now, link)
        .into_iter()
        .map(|n| {
            Ok(Planned {
                size: qdisc::size(&n.iface, &n.need, mem_total)?,
                iface: n.iface,
                ifindex: n.ifindex,
                ingress: n.ingress,
            })
        })
        .collect()
}

/// Installs or grows the fq qdiscs (and IFB devices) the rules need, recording them in
/// `shaped`. Plans (sizes) everything before changing anything, so a delay that cannot be held
/// changes nothing, and undoes what it did (`shaped` included) if a later step fails; queues
/// only grow here (detach removes them).
pub fn reconcile(
    devices: &[Device],
    rules: &[RuleEntry],
    shaped: &mut Vec<Shaped>,
    maps: &mut Maps,
    replace_foreign: bool,
    now: u64,
) -> Result<()> {
    let planned = plan(devices, rules, now, device::link_info, qdisc::mem_total())?;
    if planned.is_empty() {
        return Ok(());
    }
    let before = shaped.clone();
    let mut undo = Vec::new();
    let res = apply(planned, shaped, maps, replace_foreign, &mut undo);
    if res.is_err() {
        for u in undo.into_iter().rev() {
            u.run(maps);
        }
        *shaped = before;
    }
    res
}

/// Carries out a plan, journalling each change in `undo`.
fn apply(
    planned: Vec<Planned>,
    shaped: &mut Vec<Shaped>,
    maps: &mut Maps,
    replace_foreign: bool,
    undo: &mut Vec<Undo>,
) -> Result<()> {
    // How ingress reaches an IFB: as an IFB already set up here was reached, else probed once.
    let mut known_mirred = shaped.iter().find_map(|s| s.ifb.as_ref().map(|i| i.mirred));
    for n in planned {
        let size = n.size;
        let pos = match shaped.iter().position(|s| s.iface == n.iface) {
            Some(p) => p,
            None => {
                shaped.push(Shaped {
                    iface: n.iface.clone(),
                    ifindex: n.ifindex,
                    egress: None,
                    ifb: None,
                    replaced: None,
                });
                shaped.len() - 1
            }
        };
        let sh = &mut shaped[pos];
        if !n.ingress {
            let want = sh.egress.map_or(size, |c| c.max(&size));
            if sh.egress.is_some_and(|c| c.covers(&size)) && device::has_our_fq(&n.iface) {
                continue;
            }
            if let Some(prev) = device::ensure_fq(&n.iface, &want, replace_foreign)? {
                undo.push(Undo::Fq(n.iface.clone()));
                if !device::is_default(&prev) {
                    sh.replaced = Some(device::describe(&prev));
                }
            }
            sh.egress = Some(want);
        } else {
            // Decided before the IFB exists: the probe changes nothing outside its namespace.
            let mirred = match sh.ifb.as_ref().map(|i| i.mirred).or(known_mirred) {
                Some(m) => m,
                None => !redirect_works()?,
            };
            known_mirred = Some(mirred);
            let name = qdisc::ifb_name(n.ifindex);
            let existed = crate::netlink::link_index(&name)
                .map_err(|source| qdisc::QdiscError::Netlink {
                    what: format!("look up {name}"),
                    source,
                })?
                .is_some();
            let ifb_index = device::ensure_ifb(&name)?;
            if !existed {
                undo.push(Undo::Ifb(name.clone()));
            }
            let want = sh.ifb.as_ref().map_or(size, |i| i.fq.max(&size));
            if !sh.ifb.as_ref().is_some_and(|i| i.fq.covers(&size)) || !device::has_our_fq(&name) {
                // The IFB device is netfault's: whatever root it has may go.
                device::ensure_fq(&name, &want, true)?;
            }
            if sh.ifb.as_ref().map(|i| i.ifindex) != Some(ifb_index) {
                if mirred {
                    device::ensure_mirred_filter(&n.iface, &name)?;
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

/// Whether bpf_redirect reaches an IFB device: probed, or by the kernel's version where the
/// probe cannot tell (it says why in the log).
fn redirect_works() -> Result<bool> {
    match probe::bpf_redirect_to_ifb_works() {
        Err(Error::Qdisc(qdisc::QdiscError::Probe(why))) => {
            log::warn!("{why}; deciding by the kernel version instead");
            Ok(probe::redirect_works_by_version())
        }
        other => other,
    }
}

/// Takes away what netfault installed on one interface: its fq (the kernel's default comes
/// back) and its IFB device.
pub fn unshape(sh: &Shaped) -> Result<()> {
    if sh.egress.is_some() {
        device::remove_fq(&sh.iface)?;
    }
    if let Some(i) = &sh.ifb {
        if i.mirred {
            device::remove_mirred_filter(&sh.iface);
        }
        device::remove_ifb(&i.name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Direction, Rate};

    fn rule(name: &str, dir: Direction, delay_ms: u64, rate_bytes: Option<u64>) -> RuleEntry {
        let mut spec = RuleSpec::new(name, Kind::Rule);
        spec.dir = dir;
        spec.act.shape.delay = Some(Duration::from_millis(delay_ms));
        spec.act.shape.rate = rate_bytes.map(|b| Rate { bytes_per_sec: b });
        RuleEntry {
            spec,
            slot: 0,
            seq: 0,
            expires_mono_ns: 0,
            hold_until_mono_ns: 0,
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn plan_sizes_each_direction_from_the_link_or_the_rate() {
        let devs = vec![("eth0".to_string(), 2)];
        let mut asked = Vec::new();
        let p = plan(
            &devs,
            &[rule("slow", Direction::Egress, 100, None)],
            0,
            |i| {
                asked.push(i.to_string());
                (1500, Some(1_000_000_000))
            },
            16 * GIB,
        )
        .unwrap();
        assert_eq!(
            asked,
            ["eth0"],
            "the link is asked once, where a rule shapes"
        );
        assert_eq!(p.len(), 1);
        assert!(!p[0].ingress && p[0].iface == "eth0" && p[0].ifindex == 2);
        // 1 Gbit/s for 100 ms of full-size frames, plus a quarter.
        let want = (1e9 / 8.0 * 0.1 / 1514.0 * 1.25) as u32;
        assert!(p[0].size.limit.abs_diff(want) <= 2, "{:?}", p[0]);

        // Both directions; a paced rule at 1 MB/s needs far less than the link.
        let p = plan(
            &devs,
            &[rule("paced", Direction::Both, 10_000, Some(1_000_000))],
            0,
            |_| (1500, Some(10_000_000_000)),
            16 * GIB,
        )
        .unwrap();
        assert_eq!(p.iter().filter(|q| q.ingress).count(), 1);
        assert_eq!(p.iter().filter(|q| !q.ingress).count(), 1);
        let paced = (1e6 * (10.0 + compile::RATE_QUEUE.as_secs_f64()) / 1514.0 * 1.25) as u32;
        assert!(
            p[0].size.limit.abs_diff(paced.max(qdisc::FQ_DEFAULT_LIMIT)) <= 2,
            "{:?}",
            p[0]
        );
    }

    /// A hold is sized as far as memory allows and never refused for it (fq drops what comes
    /// beyond its limit: README); its horizon reaches past the hold. A late duplicate's delay
    /// counts as a delay.
    #[test]
    fn plan_sizes_holds_within_memory_and_late_copies_as_delays() {
        let devs = vec![("eth0".to_string(), 2)];
        let mut held = rule("held", Direction::Egress, 0, None);
        held.spec.act.shape.delay = None;
        held.spec.act.hold = Some(Duration::from_secs(30));
        let p = plan(&devs, &[held], 0, |_| (1500, Some(10_000_000_000)), GIB).unwrap();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].size.horizon_us, 31_000_000);
        let most = (GIB / qdisc::MEM_SHARE / qdisc::per_packet_bytes(1500)) as u32;
        assert_eq!(p[0].size.limit, most, "{:?}", p[0]);
        let mut late = rule("late", Direction::Egress, 0, None);
        late.spec.act.shape.delay = None;
        late.spec.act.duplicate = crate::spec::Prob(1.0);
        late.spec.act.duplicate_delay = Some(Duration::from_secs(12));
        let p = plan(&devs, &[late], 0, |_| (1500, Some(1_000_000)), GIB).unwrap();
        assert_eq!(p[0].size.horizon_us, 13_000_000);
    }

    #[test]
    fn plan_skips_expired_and_unshaped_rules_and_refuses_what_memory_cannot_hold() {
        let devs = vec![("eth0".to_string(), 2)];
        let mut expired = rule("old", Direction::Both, 100, None);
        expired.expires_mono_ns = 5;
        let mut plain = rule("plain", Direction::Both, 0, None);
        plain.spec.act.shape.delay = None;
        let p = plan(&devs, &[expired, plain], 10, |_| panic!("not asked"), GIB).unwrap();
        assert!(p.is_empty());
        let e = plan(
            &devs,
            &[rule("huge", Direction::Egress, 50_000, None)],
            0,
            |_| (1500, Some(10_000_000_000)),
            GIB,
        )
        .unwrap_err();
        assert!(e.to_string().contains("eth0"), "{e}");
    }
}
