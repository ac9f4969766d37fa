//! Device settings that make the data path see wire packets, so that a probability applies per
//! packet on the wire and not per GSO or GRO aggregate.
//!
//! - **Egress.** TCP builds GSO aggregates whatever the device's TSO and GSO features say (the
//!   kernel segments in software *after* tc). The sender's aggregates are left as they are:
//!   an aggregate a probabilistic rule matches is segmented by the kernel in the interface's
//!   egress IFB device before the draw, and each segment meets the rule as one packet
//!   (`control::segment`). (Earlier versions set the device's `gso_max_segs` to 1 instead,
//!   which changed what TCP itself does; a state recording such a change still gets it put
//!   back.)
//! - **Ingress at tc** (duplicate; drop, delay or rate applied at tc; a drop where netfault's
//!   XDP is generic or absent): GRO and LRO aggregate frames before tc, so netfault turns off
//!   `rx-gro`, `large-receive-offload` and `rx-gro-hw` where they were on.
//!
//! - **Transmit checksums** (a rule that corrupts with `--corrupt-checksum bad` at egress): a
//!   veth hands a checksum-offloaded skb (CHECKSUM_PARTIAL) to its peer as it is, and the
//!   receiving stack trusts it without a check, so a damaged packet would be delivered. With
//!   transmit checksum offload off, the stack completes the checksum in software after tc
//!   (from the seed the data path left off by the flip) and the receiver checks it, as netem
//!   resolves the checksum before it flips a bit. On a NIC the device would complete it
//!   itself; netfault turns the offload off there too, so a rule acts alike on every device.
//!
//! Only while a rule with a probability strictly between 0 and 1 (drop or duplicate), or one
//! that corrupts (one bit of one wire packet, at any probability), can apply there: p=0 and
//! p=1 are exact on aggregates too. What was changed is recorded (`Tuned`, in
//! the controller's state), and exactly that is put back when no such rule is left (delete,
//! expiry, detach, the end of `run`): only values netfault set, and only while they are still
//! what netfault set them to.
use serde::{Deserialize, Serialize};

use aya::programs::ProgramFd;

use super::{
    Result,
    segment::{self, Segmenter},
    shaping::Device,
    state::RuleEntry,
};
use crate::{
    netlink,
    spec::{CorruptChecksum, Kind, Prob},
};

/// Receive offloads that merge frames before tc ingress, in the order they are turned off.
pub const GRO_FEATURES: [&str; 3] = ["rx-gro", "large-receive-offload", "rx-gro-hw"];

/// Transmit checksum offloads, turned off for a corrupting rule with a bad checksum at egress.
pub const TX_CSUM_FEATURES: [&str; 3] = [
    "tx-checksum-ipv4",
    "tx-checksum-ip-generic",
    "tx-checksum-ipv6",
];

/// What netfault changed on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuned {
    pub iface: String,
    pub ifindex: u32,
    /// Egress: the segmenting IFB device and filter netfault set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Segmenter>,
    /// Egress, recorded by earlier versions: the `gso_max_segs` netfault replaced with 1.
    /// Only put back; never set any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gso_max_segs: Option<u32>,
    /// Ingress: the receive offloads netfault turned off (each was wanted on before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features_off: Vec<String>,
    /// Egress: the transmit checksum offloads netfault turned off (each was wanted on before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub csum_off: Vec<String>,
}

impl Tuned {
    fn is_empty(&self) -> bool {
        self.segment.is_none()
            && self.gso_max_segs.is_none()
            && self.features_off.is_empty()
            && self.csum_off.is_empty()
    }
}

/// Where a device needs wire packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// At tc egress.
    pub egress: bool,
    /// At tc ingress (or generic XDP).
    pub ingress: bool,
    /// Checksums completed before the packet leaves (transmit checksum offload off).
    pub csum: bool,
}

fn probabilistic(p: Prob) -> bool {
    p.0 > 0.0 && p.0 < 1.0
}

/// What each device needs for the rules live at `now`. `xdp_frames(iface)` says whether
/// netfault's native XDP program applies ingress drops there (it sees wire frames).
pub fn needs(
    devices: &[Device],
    rules: &[RuleEntry],
    now: u64,
    xdp_frames: impl Fn(&str) -> bool,
) -> Vec<(Device, Need)> {
    devices
        .iter()
        .map(|(iface, ifindex)| {
            let mut need = Need::default();
            for s in rules
                .iter()
                .filter(|r| r.live(now))
                .map(|r| &r.spec)
                .filter(|s| s.kind == Kind::Rule)
                .filter(|s| s.iface.as_ref().is_none_or(|i| i == iface))
            {
                // Corruption flips one bit of one wire packet, whatever its probability.
                let (drop, dup) = (
                    s.act.random_loss(),
                    probabilistic(s.act.duplicate) || s.act.corrupts(),
                );
                if s.dir.includes(false) && (drop || dup) {
                    need.egress = true;
                }
                if s.dir.includes(false)
                    && s.act.corrupts()
                    && s.act.corrupt_checksum.unwrap_or_default() == CorruptChecksum::Bad
                {
                    need.csum = true;
                }
                // The rules XDP cannot apply go to tc ingress (compile: RULE_NEEDS_SKB).
                let at_tc = s.act.duplicate.0 > 0.0
                    || s.act.needs_fq()
                    || s.act.reject.is_some()
                    || s.act.corrupts()
                    || !xdp_frames(iface);
                if s.dir.includes(true) && at_tc && (drop || dup) {
                    need.ingress = true;
                }
            }
            ((iface.clone(), *ifindex), need)
        })
        .collect()
}

/// The device is still the one recorded (not deleted, or made anew under the same name).
fn same_device(iface: &str, ifindex: u32) -> bool {
    matches!(netlink::link_index(iface), Ok(Some(i)) if i == ifindex)
}

/// Makes open IPv4 connections set their route (and so their segment limit) up again on their
/// next packet, after an earlier version's `gso_max_segs` is put back. Not fatal: new
/// connections get the old limit either way.
fn flush_ipv4_routes() {
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/route/flush", "1") {
        log::warn!("flush the IPv4 route cache: {e}; open connections keep their GSO size");
    }
}

/// Turns on what `needs` asks for and is not on yet, recording it in `tuned`. Returns the
/// changes made, for [`undo`] if the publish that follows fails. Never restores anything
/// (that is [`release`]'s, after the publish). `segment_prog` gives the segmenting filter's
/// classifier; it is asked only where a segmenter is set up.
pub fn tune(
    devices: &[Device],
    rules: &[RuleEntry],
    tuned: &mut Vec<Tuned>,
    now: u64,
    xdp_frames: impl Fn(&str) -> bool,
    segment_prog: &mut dyn FnMut() -> Result<ProgramFd>,
) -> Result<Vec<Tuned>> {
    let mut added = Vec::new();
    let res = tune_inner(
        devices,
        rules,
        tuned,
        now,
        xdp_frames,
        segment_prog,
        &mut added,
    );
    if res.is_err() {
        undo(&added, tuned);
        added.clear();
    }
    res.map(|()| added)
}

fn tune_inner(
    devices: &[Device],
    rules: &[RuleEntry],
    tuned: &mut Vec<Tuned>,
    now: u64,
    xdp_frames: impl Fn(&str) -> bool,
    segment_prog: &mut dyn FnMut() -> Result<ProgramFd>,
    added: &mut Vec<Tuned>,
) -> Result<()> {
    for ((iface, ifindex), need) in needs(devices, rules, now, xdp_frames) {
        let pos = tuned
            .iter()
            .position(|t| t.iface == iface && t.ifindex == ifindex);
        let have = pos.map(|p| tuned[p].clone());
        let mut change = Tuned {
            iface: iface.clone(),
            ifindex,
            segment: None,
            gso_max_segs: None,
            features_off: Vec::new(),
            csum_off: Vec::new(),
        };
        if need.egress && have.as_ref().is_none_or(|t| t.segment.is_none()) {
            change.segment = Some(segment::ensure(&iface, ifindex, segment_prog)?);
        }
        if need.ingress && have.as_ref().is_none_or(|t| t.features_off.is_empty()) {
            change.features_off = turn_off(&iface, &GRO_FEATURES)?;
        }
        if need.csum && have.as_ref().is_none_or(|t| t.csum_off.is_empty()) {
            change.csum_off = turn_off(&iface, &TX_CSUM_FEATURES)?;
        }
        if change.is_empty() {
            continue;
        }
        // Recorded before anything later can fail, so that `undo` takes it back.
        added.push(change.clone());
        match pos {
            Some(p) => {
                let t = &mut tuned[p];
                t.segment = t.segment.take().or(change.segment);
                t.features_off.extend(change.features_off);
                t.csum_off.extend(change.csum_off);
            }
            None => tuned.push(change),
        }
    }
    Ok(())
}

/// Turns off those of `names` that are wanted on and changeable on `iface`; returns them.
fn turn_off(iface: &str, names: &[&str]) -> Result<Vec<String>> {
    let f = netlink::features(iface)?;
    let off: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| f.wanted.contains(*n) && f.changeable.contains(*n))
        .filter(|n| !f.fixed.contains(*n))
        .collect();
    if !off.is_empty() {
        let changes: Vec<(&str, bool)> = off.iter().map(|n| (*n, false)).collect();
        netlink::set_features(iface, &changes)?;
    }
    Ok(off.into_iter().map(str::to_owned).collect())
}

/// Turns back on those of `names` that are wanted off on `iface` (netfault's doing).
fn turn_on(iface: &str, names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let f = netlink::features(iface)?;
    let on: Vec<(&str, bool)> = names
        .iter()
        .filter(|n| !f.wanted.contains(*n))
        .map(|n| (n.as_str(), true))
        .collect();
    if !on.is_empty() {
        netlink::set_features(iface, &on)?;
    }
    Ok(())
}

/// Puts back what one record says netfault changed, where it is still as netfault left it.
/// A device that is gone has nothing to put back.
fn put_back(t: &Tuned) -> Result<()> {
    // The IFB device outlives its interface: it goes in any case.
    if let Some(s) = &t.segment {
        segment::remove(&t.iface, t.ifindex, s)?;
    }
    if !same_device(&t.iface, t.ifindex) {
        return Ok(());
    }
    if let Some(prev) = t.gso_max_segs
        && netlink::link_gso_max_segs(t.ifindex)? == 1
    {
        netlink::link_set_gso_max_segs(t.ifindex, prev)?;
        flush_ipv4_routes();
    }
    if !t.features_off.is_empty() {
        let f = netlink::features(&t.iface)?;
        let on: Vec<(&str, bool)> = t
            .features_off
            .iter()
            .filter(|n| !f.wanted.contains(*n))
            .map(|n| (n.as_str(), true))
            .collect();
        if !on.is_empty() {
            netlink::set_features(&t.iface, &on)?;
        }
    }
    turn_on(&t.iface, &t.csum_off)?;
    Ok(())
}

/// Undoes `added` (from [`tune`]) and forgets it in `tuned`. Best effort: it runs on a path
/// that is failing already.
pub fn undo(added: &[Tuned], tuned: &mut Vec<Tuned>) {
    for a in added {
        if let Err(e) = put_back(a) {
            log::warn!("{}: put back the offload settings: {e}", a.iface);
        }
        if let Some(t) = tuned
            .iter_mut()
            .find(|t| t.iface == a.iface && t.ifindex == a.ifindex)
        {
            if a.segment.is_some() {
                t.segment = None;
            }
            t.features_off.retain(|n| !a.features_off.contains(n));
            t.csum_off.retain(|n| !a.csum_off.contains(n));
        }
    }
    tuned.retain(|t| !t.is_empty());
}

/// Puts back what no live rule needs any more (after the publish that stopped needing it).
/// Every record is tried; the first error is returned, and the records that failed stay.
pub fn release(
    devices: &[Device],
    rules: &[RuleEntry],
    tuned: &mut Vec<Tuned>,
    now: u64,
    xdp_frames: impl Fn(&str) -> bool,
) -> Result<()> {
    let needs = needs(devices, rules, now, xdp_frames);
    let mut first_err = None;
    for t in tuned.iter_mut() {
        let need = needs
            .iter()
            .find(|((i, x), _)| *i == t.iface && *x == t.ifindex)
            .map(|(_, n)| *n)
            .unwrap_or_default();
        let part = Tuned {
            iface: t.iface.clone(),
            ifindex: t.ifindex,
            segment: t.segment.clone().filter(|_| !need.egress),
            gso_max_segs: t.gso_max_segs,
            features_off: if need.ingress {
                Vec::new()
            } else {
                t.features_off.clone()
            },
            csum_off: if need.csum {
                Vec::new()
            } else {
                t.csum_off.clone()
            },
        };
        if part.is_empty() {
            continue;
        }
        match put_back(&part) {
            Ok(()) => {
                if part.segment.is_some() {
                    t.segment = None;
                }
                t.gso_max_segs = None;
                if !part.features_off.is_empty() {
                    t.features_off.clear();
                }
                if !part.csum_off.is_empty() {
                    t.csum_off.clear();
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    tuned.retain(|t| !t.is_empty());
    first_err.map_or(Ok(()), Err)
}

/// Puts back everything recorded for `iface` (all devices with None), forgetting it.
pub fn restore(tuned: &mut Vec<Tuned>, iface: Option<&str>) -> Result<()> {
    let mut first_err = None;
    tuned.retain(|t| {
        if iface.is_some_and(|i| i != t.iface) {
            return true;
        }
        match put_back(t) {
            Ok(()) => false,
            Err(e) => {
                first_err.get_or_insert(e);
                true
            }
        }
    });
    first_err.map_or(Ok(()), Err)
}

/// The earliest expiry (CLOCK_MONOTONIC ns) after `now` of a live rule that needs wire
/// packets somewhere: when a recorded change may stop being needed. None: no such rule
/// expires.
pub fn next_release(rules: &[RuleEntry], now: u64) -> Option<u64> {
    rules
        .iter()
        .filter(|r| r.live(now) && r.expires_mono_ns != 0 && r.spec.kind == Kind::Rule)
        .filter(|r| {
            r.spec.act.random_loss() || probabilistic(r.spec.act.duplicate) || r.spec.act.corrupts()
        })
        .map(|r| r.expires_mono_ns)
        .min()
}

/// When a reaper should look again at a namespace whose state records `wire`: the earliest
/// expiry of a rule that needs wire packets. None when nothing is recorded or nothing expires.
pub fn due(wire: &[Tuned], rules: &[RuleEntry], now: u64) -> Option<u64> {
    if wire.is_empty() {
        None
    } else {
        next_release(rules, now)
    }
}

/// Whether the namespace `key` names needs a reaper: its state (read without the lock; a
/// reaper checks again under it) records changed settings that an expiry will make unneeded.
pub fn reaper_wanted(key: &str) -> bool {
    let Ok(text) = std::fs::read(super::state::Paths::new(key).state_file()) else {
        return false;
    };
    let Ok(state) = serde_json::from_slice::<super::state::State>(&text) else {
        return false;
    };
    due(&state.wire, &state.rules, super::monotonic_ns()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Direction, RuleSpec};

    fn rule(name: &str, dir: Direction, drop: f64, dup: f64, expires: u64) -> RuleEntry {
        let mut spec = RuleSpec::new(name, Kind::Rule);
        spec.dir = dir;
        spec.act.drop = Prob(drop);
        spec.act.duplicate = Prob(dup);
        RuleEntry {
            spec,
            slot: 0,
            seq: 0,
            expires_mono_ns: expires,
            hold_until_mono_ns: 0,
        }
    }

    fn dev(i: &str, x: u32) -> Device {
        (i.into(), x)
    }

    #[test]
    fn only_probabilities_between_0_and_1_need_wire_packets() {
        let devs = [dev("eth0", 2)];
        let need = |rules: &[RuleEntry], xdp: bool| needs(&devs, rules, 10, |_| xdp)[0].1;
        let none = Need::default();
        assert_eq!(need(&[rule("a", Direction::Both, 1.0, 0.0, 0)], true), none);
        assert_eq!(
            need(&[rule("a", Direction::Both, 0.0, 1.0, 0)], false),
            none
        );
        let both = need(&[rule("a", Direction::Both, 0.1, 0.0, 0)], false);
        assert_eq!(
            both,
            Need {
                egress: true,
                ingress: true,
                csum: false,
            }
        );
        // A drop at ingress where native XDP applies it meets wire frames already.
        let e = need(&[rule("a", Direction::Both, 0.1, 0.0, 0)], true);
        assert_eq!(
            e,
            Need {
                egress: true,
                ingress: false,
                csum: false,
            }
        );
        // A duplicate always runs at tc ingress.
        let i = need(&[rule("a", Direction::Ingress, 0.0, 0.1, 0)], true);
        assert_eq!(
            i,
            Need {
                egress: false,
                ingress: true,
                csum: false,
            }
        );
        // Expired rules need nothing; rules bound to another interface neither.
        assert_eq!(
            need(&[rule("a", Direction::Both, 0.1, 0.0, 5)], false),
            none
        );
        let mut other = rule("a", Direction::Both, 0.1, 0.1, 0);
        other.spec.iface = Some("eth1".into());
        assert_eq!(need(&[other], false), none);
    }

    /// Corruption meets wire packets (whatever P) where it acts; a bad checksum at egress also
    /// needs the checksum completed before the packet leaves.
    #[test]
    fn corruption_needs_wire_packets_and_a_bad_one_transmit_checksums() {
        let devs = [dev("eth0", 2)];
        let need = |r: RuleEntry| needs(&devs, &[r], 10, |_| true)[0].1;
        let corrupt = |dir, p: f64, c: CorruptChecksum| {
            let mut r = rule("c", dir, 0.0, 0.0, 0);
            r.spec.act.corrupt = Prob(p);
            r.spec.act.corrupt_checksum = Some(c);
            r
        };
        let all = Need {
            egress: true,
            ingress: true,
            csum: true,
        };
        assert_eq!(
            need(corrupt(Direction::Both, 1.0, CorruptChecksum::Bad)),
            all
        );
        assert_eq!(
            need(corrupt(Direction::Both, 0.5, CorruptChecksum::Good)),
            Need { csum: false, ..all }
        );
        assert_eq!(
            need(corrupt(Direction::Ingress, 0.5, CorruptChecksum::Bad)),
            Need {
                egress: false,
                ingress: true,
                csum: false
            }
        );
        assert_eq!(
            next_release(&[corrupt(Direction::Egress, 1.0, CorruptChecksum::Good)], 0),
            None
        );
        let mut timed = corrupt(Direction::Egress, 1.0, CorruptChecksum::Good);
        timed.expires_mono_ns = 50;
        assert_eq!(next_release(&[timed], 10), Some(50));
    }

    #[test]
    fn next_release_is_the_earliest_probabilistic_expiry() {
        let rules = [
            rule("a", Direction::Egress, 0.1, 0.0, 50),
            rule("b", Direction::Egress, 0.1, 0.0, 30),
            rule("c", Direction::Egress, 1.0, 0.0, 20),
            rule("d", Direction::Egress, 0.1, 0.0, 5),
            rule("e", Direction::Egress, 0.1, 0.0, 0),
        ];
        assert_eq!(next_release(&rules, 10), Some(30));
        assert_eq!(next_release(&rules[4..], 10), None);
    }

    #[test]
    fn records_round_trip_and_stay_small() {
        let t = Tuned {
            iface: "eth0".into(),
            ifindex: 2,
            segment: Some(Segmenter {
                ifb: segment::ifb_name(2),
                ifb_index: 7,
                clsact_added: true,
            }),
            gso_max_segs: None,
            features_off: vec!["rx-gro".into()],
            csum_off: vec!["tx-checksum-ip-generic".into()],
        };
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Tuned>(&j).unwrap(), t);
        let bare: Tuned = serde_json::from_str(r#"{"iface":"eth0","ifindex":2}"#).unwrap();
        assert!(bare.is_empty());
    }
}
