//! Faults verified on the wire (issue #16, point 4): what the coordinator configured, set
//! beside what probes between the nodes show. Pure: the probing is the coordinator's
//! ([`Coordinator::probe_all`](super::coordinator::Coordinator::probe_all), every node probing
//! every other at once and listening for their requests); this module turns its reports into
//! verdicts.
//!
//! - **Partitions** are judged one way: the requests node B hears from node A crossed the wire
//!   from A to B, whatever became of the replies, so each ordered pair is seen apart (a round
//!   trip could not tell a cut A→B from a cut B→A). A direction the grudge cuts must lose every
//!   probe; one it leaves open must carry them, less at most [`RECOVERY`] of them (a healed
//!   IPv6 path resolves its neighbour again within a second, and the nodes start probing a
//!   little apart). Over IPv6 a direction left open beside a cut reverse direction is not
//!   judged: the cut drops the neighbour advertisements the open direction needs.
//! - **Impairments** are judged on round trips (A probes B): the loss of the round trip is
//!   1 − (1 − l₁)(1 − l₂), l₁ and l₂ the configured loss each way, and must lie in the Wilson
//!   interval (alpha 1e-4) of the losses seen; 0 and 1 are exact. The delay is the shift of the
//!   round trips' p50 from a baseline's (the same pair probed before the change), which must be
//!   within [`delay_tolerance`] of d₁ + d₂, plus what the round trips' own scatter allows
//!   ([`scatter_ms`]); when that tolerance reaches the delay itself, the delay is not verifiable.
//! - Probes match what the fault matches: ICMP echo for a rule on every port of every protocol
//!   (or of ICMP), UDP from port P to port P for one on UDP, or on ports ([`probe_for`]): every
//!   node binds P, echoes the others' requests and counts them, so a rule on P as source or
//!   destination port meets the request and its echo as one on every port meets an echo
//!   request and its reply. Whatever no probe can match (TCP only, a cut of new or established
//!   connections, source and destination ports with no port in common) is "not verifiable",
//!   with the reason, never guessed.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use serde::Serialize;

use super::{Cluster, coordinator::NodeMeasure};
use crate::{
    measure::{Summary, probe::Kind as Probe},
    spec::{Conn, Distribution, Kind, Proto, RuleSpec},
};

/// z of a two-sided interval at alpha 1e-4.
pub const Z: f64 = 3.890_591_886_413_094;
/// How long the verifying probes run, and their interval (150 probes a pair and address).
pub const DURATION: Duration = Duration::from_secs(3);
pub const INTERVAL: Duration = Duration::from_millis(20);
/// The probes an open direction may lose at its start: IPv6 neighbour resolution after a heal
/// (1 s retransmit timer) and the nodes starting their probes apart.
pub const RECOVERY: Duration = Duration::from_millis(1500);

/// The Wilson score interval of k successes in n trials at `z`; (0, 1) for n = 0.
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (nf, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
    let half = z / (1.0 + z2 / nf) * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(a: &IpAddr) -> Family {
        if a.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    fn parse(s: &str) -> Option<Family> {
        match s {
            "v4" => Some(Family::V4),
            "v6" => Some(Family::V6),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// What the traffic of one direction (from, to, family) meets, as configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leg {
    /// A partition drops it (every packet).
    pub cut: bool,
    /// Loss at the receiver (a reject without a drop rate drops everything).
    pub drop: f64,
    /// The loss comes in runs (a Gilbert-Elliott chain).
    pub burst: bool,
    pub duplicate: f64,
    /// Delay at the sender, and its jitter.
    pub delay: Duration,
    pub jitter: Duration,
    pub distribution: Distribution,
    pub rate: bool,
    /// Why no probe matches what the entry matches.
    pub unprobeable: Option<String>,
}

/// The UDP port a verifying probe uses for a rule on UDP with every port: echo's.
pub const UDP_PORT: u16 = 7;

/// (from, to, family).
pub type Dir = (String, String, Family);

/// A fault as configured, per direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub name: String,
    pub kind: Kind,
    pub legs: BTreeMap<Dir, Leg>,
    /// What verifies it (`None`: nothing can; its legs say why).
    pub probe: Option<Probe>,
    /// It matches every packet of its legs, whatever a probe is.
    pub all: bool,
}

/// The probe that meets what `spec` matches: an ICMP (ICMPv6) echo for a rule on every port
/// of every protocol or of ICMP, UDP from port P to port P for one on UDP or on ports (P the
/// first port both its source and destination ports hold, [`UDP_PORT`] when they hold all);
/// or why no probe of netfault's does.
pub fn probe_for(spec: &RuleSpec) -> Result<Probe, String> {
    if spec.conn != Conn::Any {
        let which = if spec.conn == Conn::New {
            "connections being opened"
        } else {
            "established connections"
        };
        return Err(format!(
            "{} cuts only TCP segments of {which}: no probe of netfault's matches them",
            spec.name
        ));
    }
    let all_ports = spec.sport.is_all() && spec.dport.is_all();
    match spec.proto {
        Proto::Tcp => Err(format!(
            "{} matches TCP only: no probe of netfault's is TCP",
            spec.name
        )),
        Proto::Icmp if !all_ports => Err(format!(
            "{} matches ICMP with ports, which ICMP has none of",
            spec.name
        )),
        Proto::Icmp => Ok(Probe::Icmp),
        Proto::Any if all_ports => Ok(Probe::Icmp),
        Proto::Udp if all_ports => Ok(Probe::Udp(UDP_PORT)),
        Proto::Udp | Proto::Any => {
            let lo = spec.sport.lo.max(spec.dport.lo).max(1);
            let hi = spec.sport.hi.min(spec.dport.hi);
            if lo <= hi {
                Ok(Probe::Udp(lo))
            } else {
                Err(format!(
                    "{} matches source ports {} and destination ports {}: no port is in both, and a verifying UDP probe goes from port P to port P",
                    spec.name, spec.sport, spec.dport
                ))
            }
        }
    }
}

/// Does `spec` match every packet between its addresses (so it cuts any probe)?
fn matches_all(spec: &RuleSpec) -> bool {
    spec.conn == Conn::Any && spec.proto == Proto::Any && spec.sport.is_all() && spec.dport.is_all()
}

/// The probes `faults` are verified with.
pub fn probes<'a>(faults: impl IntoIterator<Item = &'a Fault>) -> BTreeSet<Probe> {
    faults.into_iter().filter_map(|f| f.probe).collect()
}

impl Fault {
    /// The fault of entries named as the coordinator names them (`NAME.from-PEER.v4` on the
    /// receiver, `NAME.to-PEER.v4` on the sender), `entries` being (node, spec) pairs.
    /// Entries of other names, or whose peer is no node of `cluster`, are left out.
    pub fn build<'a>(
        name: &str,
        kind: Kind,
        entries: impl IntoIterator<Item = (&'a str, &'a RuleSpec)>,
        cluster: &Cluster,
    ) -> Fault {
        let mut legs: BTreeMap<Dir, Leg> = BTreeMap::new();
        let (mut probe, mut all) = (None, true);
        for (node, spec) in entries {
            let Some((n, dir, peer, fam)) = split(&spec.name) else {
                continue;
            };
            if n != name || cluster.node(peer).is_none() {
                continue;
            }
            let key = if dir == "from" {
                (peer.to_owned(), node.to_owned(), fam)
            } else {
                (node.to_owned(), peer.to_owned(), fam)
            };
            let leg = legs.entry(key).or_default();
            all &= matches_all(spec);
            match probe_for(spec) {
                Ok(p) if probe.is_none_or(|q| q == p) => probe = Some(p),
                Ok(_) => {
                    leg.unprobeable = Some(format!(
                        "{} matches other traffic than the fault's other entries",
                        spec.name
                    ));
                }
                Err(why) => leg.unprobeable = Some(why),
            }
            let a = &spec.act;
            if spec.kind == Kind::Partition {
                leg.cut = true;
                continue;
            }
            if dir == "from" {
                leg.drop = if a.reject.is_some() && a.drop.0 == 0.0 {
                    1.0
                } else {
                    a.drop.0
                };
                leg.burst = a.burst.is_some_and(|b| b > 1.0) || a.gemodel.is_some();
                leg.duplicate = a.duplicate.0;
            } else {
                leg.delay = a.shape.delay.unwrap_or_default();
                leg.jitter = a.shape.jitter.unwrap_or_default();
                leg.distribution = a.shape.distribution;
                leg.rate = a.shape.rate.is_some();
            }
        }
        let probe = probe.filter(|_| legs.values().all(|l| l.unprobeable.is_none()));
        Fault {
            name: name.to_owned(),
            kind,
            all: all && !legs.is_empty(),
            legs,
            probe,
        }
    }

    /// Does this fault cut (or impair) what `probe` sends?
    fn meets(&self, probe: Probe) -> bool {
        self.all || self.probe == Some(probe)
    }

    fn leg(&self, from: &str, to: &str, f: Family) -> Option<&Leg> {
        self.legs.get(&(from.to_owned(), to.to_owned(), f))
    }

    fn cuts(&self, from: &str, to: &str, f: Family) -> bool {
        self.kind == Kind::Partition && self.leg(from, to, f).is_some_and(|l| l.cut)
    }

    fn word(&self) -> &'static str {
        if self.kind == Kind::Partition {
            "partition"
        } else {
            "impair"
        }
    }
}

/// `NAME.from-PEER.v4` → (NAME, "from", PEER, family); `to-` likewise.
pub fn split(entry: &str) -> Option<(&str, &'static str, &str, Family)> {
    let (rest, fam) = entry.rsplit_once('.')?;
    let fam = Family::parse(fam)?;
    for dir in ["from", "to"] {
        if let Some((n, peer)) = rest.rsplit_once(&format!(".{dir}-")) {
            return Some((n, dir, peer, fam));
        }
    }
    None
}

/// What the probes of one direction and family showed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// Requests the `from` node sent to the `to` node's addresses of the family.
    pub sent: u64,
    /// Of them answered (round trips).
    pub answered: u64,
    /// Requests from the `from` node the `to` node heard (one way); `None`: it did not listen.
    pub heard: Option<u64>,
    /// Round trips of the first address.
    pub rtt_us: Option<Summary>,
}

/// Every direction's probes of each kind, from the nodes' reports; and the nodes that could
/// not probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub seen: BTreeMap<Probe, BTreeMap<Dir, Seen>>,
    pub failed: Vec<(String, String)>,
    pub interval: Duration,
}

impl Observed {
    /// What ICMP probes showed.
    pub fn of(m: &[NodeMeasure], cluster: &Cluster, interval: Duration) -> Observed {
        Observed::of_probe(Probe::Icmp, m, cluster, interval)
    }

    /// What probes of `probe` showed.
    pub fn of_probe(
        probe: Probe,
        m: &[NodeMeasure],
        cluster: &Cluster,
        interval: Duration,
    ) -> Observed {
        let mut seen: BTreeMap<Dir, Seen> = BTreeMap::new();
        let mut failed = Vec::new();
        for n in m {
            if let Some(e) = &n.error {
                failed.push((n.node.clone(), e.clone()));
                continue;
            }
            for p in &n.pairs {
                let f = Family::of(&p.addr);
                let r = &p.report;
                let fwd = seen.entry((n.node.clone(), p.to.clone(), f)).or_default();
                fwd.sent += r.sent.unwrap_or(0);
                fwd.answered += r.samples as u64;
                if fwd.rtt_us.is_none() {
                    fwd.rtt_us = r.rtt_us;
                }
                // What `n` heard from the peer's address: the other direction, one way.
                let Some(h) = r.heard else { continue };
                let back = seen.entry((p.to.clone(), n.node.clone(), f)).or_default();
                *back.heard.get_or_insert(0) += h;
            }
        }
        // Directions whose listener failed have no `heard`; those whose prober failed no `sent`.
        seen.retain(|(a, b, _), _| cluster.node(a).is_some() && cluster.node(b).is_some());
        Observed {
            seen: BTreeMap::from([(probe, seen)]),
            failed,
            interval,
        }
    }

    /// Both runs' observations (each a kind of probe of its own); a node failed in either is
    /// named once per failure.
    pub fn merge(mut self, o: Observed) -> Observed {
        self.seen.extend(o.seen);
        for f in o.failed {
            if !self.failed.contains(&f) {
                self.failed.push(f);
            }
        }
        self
    }

    fn get(&self, probe: Probe, d: &Dir) -> Option<&Seen> {
        self.seen.get(&probe)?.get(d)
    }
}

/// One direction (partition) or round trip (impairment) judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    pub from: String,
    pub to: String,
    pub family: Family,
    /// `one-way` (heard at `to`) or `round-trip` (`from` probes `to`).
    pub probe: &'static str,
    pub configured: String,
    pub observed: String,
    /// `None`: not verifiable (`note` says why).
    pub ok: Option<bool>,
    pub sent: u64,
    /// One way: requests heard at `to`; round trip: answered.
    pub received: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LossCheck {
    pub configured: f64,
    pub observed: f64,
    /// The Wilson interval at alpha 1e-4 of the observed loss.
    pub interval: [f64; 2],
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DelayCheck {
    /// d₁ + d₂: the shift the round trips should show.
    pub configured_ms: f64,
    pub baseline_p50_ms: f64,
    pub p50_shift_ms: f64,
    pub p90_shift_ms: f64,
    pub p99_shift_ms: f64,
    /// Of the tolerance, what the round trips' own scatter adds ([`scatter_ms`]).
    pub scatter_ms: f64,
    pub tolerance_ms: f64,
    /// `None`: the tolerance is as large as the delay, so no shift could tell.
    pub ok: Option<bool>,
}

/// One fault's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub name: String,
    pub fault: &'static str,
    /// What probed it: `icmp`, `udp:PORT`; `None` when nothing could.
    pub probe: Option<Probe>,
    /// No pair contradicts the configuration (pairs not verifiable do not count).
    pub ok: bool,
    pub checked: usize,
    pub mismatches: usize,
    pub pairs: Vec<Pair>,
    /// What could not be checked, and why.
    pub not_verifiable: Vec<String>,
}

impl Verdict {
    pub fn mismatched(&self) -> impl Iterator<Item = &Pair> {
        self.pairs.iter().filter(|p| p.ok == Some(false))
    }
}

/// The families both nodes have addresses of.
fn families(cluster: &Cluster, a: &str, b: &str) -> Vec<Family> {
    let fams = |n: &str| -> BTreeSet<Family> {
        cluster
            .node(n)
            .map(|n| n.addrs.iter().map(Family::of).collect())
            .unwrap_or_default()
    };
    fams(a).intersection(&fams(b)).copied().collect()
}

fn pct(p: f64) -> String {
    format!("{:.1}%", p * 100.0)
}

/// How far the p50 shift may be from the configured delay: 1 ms (the probes' own scatter on a
/// loaded host), plus 10 % of the delay, plus half the jitter (the sample median of ~150 round
/// trips scatters by about a fifth of a normal jitter's standard deviation; half leaves room).
pub fn delay_tolerance(delay: Duration, jitter: Duration) -> Duration {
    Duration::from_millis(1) + delay / 10 + jitter / 2
}

/// How far two medians of scattered round trips may differ by chance, at alpha 1e-4: each
/// median's standard error is about 1.2533·σ/√n, σ taken robustly as (p90 − p50)/1.2816 (a
/// normal's), so z·√(SE₁² + SE₂²). 0.1 to 4 ms in the TCG guests of `vm-test`; tens of ms in a
/// starved one, where a delay of that size cannot be told at all.
pub fn scatter_ms(a: &Summary, na: u64, b: &Summary, nb: u64) -> f64 {
    let se2 = |s: &Summary, n: u64| {
        let sigma = (s.p90 - s.p50).max(0.0) / 1.2816 / 1e3;
        let se = 1.2533 * sigma / (n.max(1) as f64).sqrt();
        se * se
    };
    Z * (se2(a, na) + se2(b, nb)).sqrt()
}

/// Judges `fault` on what the probes saw. `others` are the other faults live meanwhile (a
/// partition among them makes the pairs it cuts unverifiable for an impairment, and is part of
/// what a partition's pairs should show); `baseline` the probes taken before the change, for
/// delays.
pub fn judge(
    fault: &Fault,
    others: &[Fault],
    cluster: &Cluster,
    seen: &Observed,
    baseline: Option<&Observed>,
) -> Verdict {
    let mut not_verifiable: BTreeSet<String> = fault
        .legs
        .values()
        .filter_map(|l| l.unprobeable.clone())
        .collect();
    let Some(probe) = fault.probe else {
        return Verdict {
            name: fault.name.clone(),
            fault: fault.word(),
            probe: None,
            ok: true,
            checked: 0,
            mismatches: 0,
            pairs: Vec::new(),
            not_verifiable: not_verifiable.into_iter().collect(),
        };
    };
    // What else is live matters where it meets the same probes.
    let others: Vec<Fault> = others.iter().filter(|o| o.meets(probe)).cloned().collect();
    let at = Probed {
        probe,
        seen,
        baseline,
    };
    let pairs = match fault.kind {
        Kind::Partition if not_verifiable.is_empty() => partition(fault, &others, cluster, &at),
        Kind::Partition => Vec::new(),
        _ => impairment(fault, &others, cluster, &at),
    };
    // A note says what of a pair was not verified, whether or not the rest was.
    not_verifiable.extend(pairs.iter().filter_map(|p| p.note.clone()));
    let checked = pairs.iter().filter(|p| p.ok.is_some()).count();
    let mismatches = pairs.iter().filter(|p| p.ok == Some(false)).count();
    Verdict {
        name: fault.name.clone(),
        fault: fault.word(),
        probe: Some(probe),
        ok: mismatches == 0,
        checked,
        mismatches,
        pairs,
        not_verifiable: not_verifiable.into_iter().collect(),
    }
}

/// The observations a fault is judged on: those of its probe.
struct Probed<'a> {
    probe: Probe,
    seen: &'a Observed,
    baseline: Option<&'a Observed>,
}

impl Probed<'_> {
    fn get(&self, d: &Dir) -> Option<&Seen> {
        self.seen.get(self.probe, d)
    }

    fn base(&self, d: &Dir) -> Option<&Seen> {
        self.baseline?.get(self.probe, d)
    }

    fn interval(&self) -> Duration {
        self.seen.interval
    }
}

fn partition(fault: &Fault, others: &[Fault], cluster: &Cluster, seen: &Probed) -> Vec<Pair> {
    let allowance = (RECOVERY.as_nanos() / seen.interval().as_nanos().max(1)) as u64;
    let cut = |a: &str, b: &str, f: Family| -> Option<String> {
        std::iter::once(fault)
            .chain(others)
            .find(|x| x.cuts(a, b, f))
            .map(|x| x.name.clone())
    };
    let mut out = Vec::new();
    for a in cluster.names() {
        for b in cluster.names() {
            if a == b {
                continue;
            }
            for f in families(cluster, a, b) {
                let by = cut(a, b, f);
                let configured = match &by {
                    Some(n) if *n == fault.name => "cut".to_string(),
                    Some(n) => format!("cut (by {n})"),
                    None => "open".to_string(),
                };
                let mut p = Pair {
                    from: a.to_owned(),
                    to: b.to_owned(),
                    family: f,
                    probe: "one-way",
                    configured,
                    observed: "unknown".into(),
                    ok: None,
                    sent: 0,
                    received: 0,
                    loss: None,
                    delay: None,
                    note: None,
                };
                let s = seen.get(&(a.to_owned(), b.to_owned(), f));
                let (Some(s), Some(heard)) = (s, s.and_then(|s| s.heard)) else {
                    p.note = Some(format!(
                        "{a} -> {b} ({}): not probed (a node failed, or did not listen)",
                        f.as_str()
                    ));
                    out.push(p);
                    continue;
                };
                (p.sent, p.received) = (s.sent, heard);
                p.observed = if heard == 0 {
                    "cut"
                } else if s.sent.saturating_sub(heard) <= allowance {
                    "open"
                } else {
                    "partial"
                }
                .into();
                if by.is_none() && f == Family::V6 && cut(b, a, f).is_some() {
                    p.note = Some(format!(
                        "IPv6 directions left open beside a cut one ({b} -> {a}): the cut drops the neighbour advertisements they need"
                    ));
                } else if s.sent == 0 {
                    p.note = Some(format!("{a} -> {b}: no probe sent"));
                } else {
                    p.ok = Some(if by.is_some() {
                        p.observed == "cut"
                    } else {
                        p.observed == "open"
                    });
                }
                out.push(p);
            }
        }
    }
    out
}

fn impairment(fault: &Fault, others: &[Fault], cluster: &Cluster, seen: &Probed) -> Vec<Pair> {
    let none = Leg::default();
    let mut out = Vec::new();
    for a in cluster.names() {
        for b in cluster.names() {
            if a == b {
                continue;
            }
            for f in families(cluster, a, b) {
                let (l1, l2) = (fault.leg(a, b, f), fault.leg(b, a, f));
                if l1.is_none() && l2.is_none() {
                    continue;
                }
                let (l1, l2) = (l1.unwrap_or(&none), l2.unwrap_or(&none));
                let loss = 1.0 - (1.0 - l1.drop) * (1.0 - l2.drop);
                let delay = l1.delay + l2.delay;
                let jitter = l1.jitter + l2.jitter;
                let mut p = Pair {
                    from: a.to_owned(),
                    to: b.to_owned(),
                    family: f,
                    probe: "round-trip",
                    configured: format!(
                        "loss {}, delay {:.1} ms",
                        pct(loss),
                        delay.as_secs_f64() * 1e3
                    ),
                    observed: "unknown".into(),
                    ok: None,
                    sent: 0,
                    received: 0,
                    loss: None,
                    delay: None,
                    note: None,
                };
                let cutter = others
                    .iter()
                    .find(|x| x.cuts(a, b, f) || x.cuts(b, a, f))
                    .map(|x| x.name.clone());
                let why = match cutter {
                    Some(c) => Some(format!("{a} <-> {b}: cut by partition {c}")),
                    None => l1.unprobeable.clone().or(l2.unprobeable.clone()),
                };
                let Some(s) = seen.get(&(a.to_owned(), b.to_owned(), f)) else {
                    p.note = Some(why.unwrap_or(format!(
                        "{a} -> {b} ({}): not probed (a node failed)",
                        f.as_str()
                    )));
                    out.push(p);
                    continue;
                };
                (p.sent, p.received) = (s.sent, s.answered);
                let lost = s.sent.saturating_sub(s.answered);
                let observed = if s.sent == 0 {
                    0.0
                } else {
                    lost as f64 / s.sent as f64
                };
                p.observed = format!("loss {}", pct(observed));
                if let Some(w) = why {
                    p.note = Some(w);
                    out.push(p);
                    continue;
                }
                let mut notes = Vec::new();
                let mut oks = Vec::new();
                if l1.burst || l2.burst {
                    notes.push("loss not verified: it comes in runs, which the Wilson interval (independent losses) does not bound".to_string());
                } else if s.sent > 0 {
                    let (lo, hi) = wilson(lost, s.sent, Z);
                    let ok = if loss <= 0.0 {
                        lost == 0
                    } else if loss >= 1.0 {
                        lost == s.sent
                    } else {
                        lo <= loss && loss <= hi
                    };
                    oks.push(ok);
                    p.loss = Some(LossCheck {
                        configured: loss,
                        observed,
                        interval: [lo, hi],
                        ok,
                    });
                }
                let shifted = !delay.is_zero() || !jitter.is_zero();
                if shifted {
                    let dist_ok = [l1, l2].iter().all(|l| {
                        l.jitter.is_zero()
                            || matches!(
                                l.distribution,
                                Distribution::Uniform | Distribution::Normal
                            )
                    });
                    let base = seen
                        .base(&(a.to_owned(), b.to_owned(), f))
                        .and_then(|s| Some((s.rtt_us?, s.answered)));
                    match (&s.rtt_us, base, dist_ok) {
                        (_, _, false) => notes.push(
                            "delay not verified: the median of a pareto jitter is not the delay"
                                .into(),
                        ),
                        (_, None, _) => notes.push(
                            "delay not verified: no baseline (probes of the pair before the change)"
                                .into(),
                        ),
                        (None, _, _) => notes.push("delay not verified: no round trip".into()),
                        (Some(now), Some((base, n_base)), true) => {
                            let scatter = scatter_ms(now, s.answered, &base, n_base);
                            let tol =
                                delay_tolerance(delay, jitter).as_secs_f64() * 1e3 + scatter;
                            let want = delay.as_secs_f64() * 1e3;
                            let shift = (now.p50 - base.p50) / 1e3;
                            let ok = if want > 0.0 && tol >= want {
                                notes.push(format!(
                                    "delay not verified: the round trips scatter too much (±{scatter:.1} ms at alpha 1e-4) to tell a {want:.1} ms shift"
                                ));
                                None
                            } else {
                                Some((shift - want).abs() <= tol)
                            };
                            oks.extend(ok);
                            p.observed
                                .push_str(&format!(", p50 shift {shift:.1} ms"));
                            p.delay = Some(DelayCheck {
                                configured_ms: want,
                                baseline_p50_ms: base.p50 / 1e3,
                                p50_shift_ms: shift,
                                p90_shift_ms: (now.p90 - base.p90) / 1e3,
                                p99_shift_ms: (now.p99 - base.p99) / 1e3,
                                scatter_ms: scatter,
                                tolerance_ms: tol,
                                ok,
                            });
                        }
                    }
                }
                if l1.duplicate > 0.0 || l2.duplicate > 0.0 {
                    notes.push("duplication not verified: a duplicated request is answered twice and counted once".into());
                }
                if l1.rate || l2.rate {
                    notes.push("rate not verified: a rate shows only under load".into());
                }
                p.ok = (!oks.is_empty()).then(|| oks.iter().all(|o| *o));
                if !notes.is_empty() {
                    p.note = Some(notes.join("; "));
                }
                out.push(p);
            }
        }
    }
    out
}

/// The text of verdicts: one line per fault, one per mismatch and per thing not verifiable.
pub fn text(v: &[Verdict], out: &mut impl std::io::Write) -> std::io::Result<()> {
    for x in v {
        writeln!(
            out,
            "verify {} {}: {} ({} checked, {} mismatched{})",
            x.fault,
            x.name,
            if x.ok { "as configured" } else { "MISMATCH" },
            x.checked,
            x.mismatches,
            x.probe.map(|p| format!(", probed {p}")).unwrap_or_default()
        )?;
        for p in x.mismatched() {
            let extra = match (&p.loss, &p.delay) {
                (Some(l), _) if !l.ok => format!(
                    " (Wilson interval [{}, {}] at alpha 1e-4 misses {})",
                    pct(l.interval[0]),
                    pct(l.interval[1]),
                    pct(l.configured)
                ),
                (_, Some(d)) if d.ok == Some(false) => format!(
                    " (p50 shift {:.1} ms, configured {:.1} ms ± {:.1} ms)",
                    d.p50_shift_ms, d.configured_ms, d.tolerance_ms
                ),
                _ => String::new(),
            };
            writeln!(
                out,
                "  MISMATCH {} -> {} ({}, {}): configured {}, observed {} ({} of {} {}){extra}",
                p.from,
                p.to,
                p.family.as_str(),
                p.probe,
                p.configured,
                p.observed,
                p.received,
                p.sent,
                if p.probe == "one-way" {
                    "heard"
                } else {
                    "answered"
                }
            )?;
        }
        for n in &x.not_verifiable {
            writeln!(out, "  not verifiable: {n}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::{
            Grudge, Impair, Topology,
            coordinator::PairReport,
            plan::{self},
        },
        measure::Report,
        spec::{Actions, PortRange, Prob},
    };

    const CLUSTER: &str = r#"
[[node]]
name = "n1"
addrs = ["192.0.2.1", "2001:db8::1"]
iface = ["eth0"]
netns = "n1"
[[node]]
name = "n2"
addrs = ["192.0.2.2", "2001:db8::2"]
iface = ["eth0"]
netns = "n2"
[[node]]
name = "n3"
addrs = ["192.0.2.3", "2001:db8::3"]
iface = ["eth0"]
netns = "n3"
"#;

    fn cluster() -> Cluster {
        Cluster::parse(CLUSTER).unwrap()
    }

    fn entries(rules: &BTreeMap<String, Vec<RuleSpec>>) -> Vec<(&str, &RuleSpec)> {
        rules
            .iter()
            .flat_map(|(n, v)| v.iter().map(move |r| (n.as_str(), r)))
            .collect()
    }

    /// Reports as the nodes would give them: `deliver(from, to, fam)` is what fraction of the
    /// requests from -> to arrive, `rtt_ms` every round trip's time.
    fn measured(
        c: &Cluster,
        sent: u64,
        deliver: impl Fn(&str, &str) -> f64,
        rtt_ms: f64,
    ) -> Vec<NodeMeasure> {
        c.nodes
            .iter()
            .map(|n| NodeMeasure {
                node: n.name.clone(),
                transport: "netns",
                error: None,
                pairs: c
                    .nodes
                    .iter()
                    .filter(|p| p.name != n.name)
                    .flat_map(|p| {
                        p.addrs.iter().map(|a| {
                            let there = deliver(&n.name, &p.name);
                            let back = deliver(&p.name, &n.name);
                            let answered = (sent as f64 * there * back).round() as u64;
                            let rtts = vec![rtt_ms * 1e3; answered as usize];
                            let params = crate::measure::Params::default();
                            let mut r = match crate::measure::Rtts::new(rtts) {
                                Some(r) => Report::new(Some(a.to_string()), "probe", &r, &params),
                                None => Report::silent(Some(a.to_string()), "probe", 1.0),
                            };
                            r.sent = Some(sent);
                            // What n heard from p.
                            r.heard = Some((sent as f64 * back).round() as u64);
                            PairReport {
                                to: p.name.clone(),
                                addr: *a,
                                report: r,
                            }
                        })
                    })
                    .collect(),
            })
            .collect()
    }

    fn grudge(c: &Cluster, t: &str) -> Grudge {
        t.parse::<Topology>()
            .unwrap()
            .grudge(&c.names(), 0)
            .unwrap()
    }

    #[test]
    fn wilson_matches_known_values() {
        let (lo, hi) = wilson(30, 100, 1.96);
        assert!((lo - 0.2189).abs() < 1e-3 && (hi - 0.3958).abs() < 1e-3);
        assert_eq!(wilson(0, 0, Z), (0.0, 1.0));
        // 0 of n: the interval starts at 0.
        assert_eq!(wilson(0, 150, Z).0, 0.0);
    }

    #[test]
    fn entry_names_split() {
        assert_eq!(
            split("a.b.from-n2.v6"),
            Some(("a.b", "from", "n2", Family::V6))
        );
        assert_eq!(split("x.to-n1.v4"), Some(("x", "to", "n1", Family::V4)));
        assert_eq!(split("x.to-n1.v5"), None);
        assert_eq!(split("cut"), None);
    }

    #[test]
    fn a_partition_as_configured_passes_and_a_healed_node_is_named() {
        let c = cluster();
        let g = grudge(&c, "n1|n2,n3");
        let rules = plan::partition("split", &c, &g, &Actions::default(), Conn::Any).unwrap();
        let fault = Fault::build("split", Kind::Partition, entries(&rules), &c);
        let side = |n: &str| n == "n1";
        let wire = measured(&c, 150, |a, b| f64::from(u8::from(side(a) == side(b))), 1.0);
        let seen = Observed::of(&wire, &c, INTERVAL);
        let v = judge(&fault, &[], &c, &seen, None);
        assert!(v.ok, "{v:#?}");
        // 3 nodes, 6 directions, 2 families.
        assert_eq!(v.checked, 12);
        // n2 healed behind the coordinator's back: n1 -> n2 now arrives at n2 (the reply is
        // still dropped at n1, so a round trip would not tell).
        let wire = measured(
            &c,
            150,
            |a, b| f64::from(u8::from(side(a) == side(b) || (a, b) == ("n1", "n2"))),
            1.0,
        );
        let v = judge(&fault, &[], &c, &Observed::of(&wire, &c, INTERVAL), None);
        assert!(!v.ok);
        let bad: Vec<(&str, &str, Family)> = v
            .mismatched()
            .map(|p| (p.from.as_str(), p.to.as_str(), p.family))
            .collect();
        assert_eq!(
            bad,
            [("n1", "n2", Family::V4), ("n1", "n2", Family::V6)],
            "{v:#?}"
        );
        let mut text = Vec::new();
        super::text(&[v], &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("MISMATCH n1 -> n2 (v4, one-way): configured cut, observed open"));
    }

    #[test]
    fn a_one_way_cut_leaves_the_open_ipv6_direction_unjudged() {
        let c = cluster();
        let mut g = Grudge(BTreeMap::new());
        for n in c.names() {
            g.0.insert(n.to_string(), BTreeSet::new());
        }
        // n2 drops n1: n1 -> n2 is cut; n2 -> n1 is open over v4 only.
        g.0.get_mut("n2").unwrap().insert("n1".into());
        let rules = plan::partition("one", &c, &g, &Actions::default(), Conn::Any).unwrap();
        let fault = Fault::build("one", Kind::Partition, entries(&rules), &c);
        let wire = measured(
            &c,
            150,
            |a, b| f64::from(u8::from((a, b) != ("n1", "n2"))),
            1.0,
        );
        let v = judge(&fault, &[], &c, &Observed::of(&wire, &c, INTERVAL), None);
        assert!(v.ok, "{v:#?}");
        let back6 = v
            .pairs
            .iter()
            .find(|p| (p.from.as_str(), p.to.as_str(), p.family) == ("n2", "n1", Family::V6))
            .unwrap();
        assert_eq!(back6.ok, None);
        assert_eq!(v.checked, 11);
    }

    #[test]
    fn a_tcp_only_cut_is_not_verifiable() {
        let c = cluster();
        let g = grudge(&c, "n1|n2,n3");
        let rules = plan::partition("syn", &c, &g, &Actions::default(), Conn::New).unwrap();
        let fault = Fault::build("syn", Kind::Partition, entries(&rules), &c);
        let wire = measured(&c, 150, |_, _| 1.0, 1.0);
        let v = judge(&fault, &[], &c, &Observed::of(&wire, &c, INTERVAL), None);
        assert!(v.ok && v.checked == 0);
        assert!(v.not_verifiable[0].contains("only TCP"), "{v:#?}");
    }

    fn impair_fault(c: &Cluster, act: Actions) -> Fault {
        let imp = Impair {
            from: vec!["n1".into()],
            to: vec!["n2".into()],
            act,
            traffic: crate::cluster::Traffic::default(),
        };
        let rules = plan::impair("lossy", c, &imp).unwrap();
        Fault::build("lossy", Kind::Rule, entries(&rules), c)
    }

    #[test]
    fn loss_is_judged_by_its_wilson_interval_and_delay_by_the_shift() {
        let c = cluster();
        let act = Actions {
            drop: Prob(0.3),
            ..Actions::default()
        };
        let fault = impair_fault(&c, act);
        let lossy = |a: &str, b: &str| if (a, b) == ("n1", "n2") { 0.7 } else { 1.0 };
        let v = judge(
            &fault,
            &[],
            &c,
            &Observed::of(&measured(&c, 150, lossy, 1.0), &c, INTERVAL),
            None,
        );
        // n1 -> n2 and n2 -> n1 (its replies cross the lossy way), both families.
        assert_eq!((v.ok, v.checked), (true, 4), "{v:#?}");
        let far = |a: &str, b: &str| if (a, b) == ("n1", "n2") { 0.4 } else { 1.0 };
        let v = judge(
            &fault,
            &[],
            &c,
            &Observed::of(&measured(&c, 150, far, 1.0), &c, INTERVAL),
            None,
        );
        assert_eq!((v.ok, v.mismatches), (false, 4), "{v:#?}");
        // Delay: the p50 shift against the baseline.
        let mut act = Actions::default();
        act.shape.delay = Some(Duration::from_millis(20));
        let fault = impair_fault(&c, act);
        let base = Observed::of(&measured(&c, 150, |_, _| 1.0, 1.0), &c, INTERVAL);
        let now = Observed::of(&measured(&c, 150, |_, _| 1.0, 21.5), &c, INTERVAL);
        let v = judge(&fault, &[], &c, &now, Some(&base));
        assert_eq!((v.ok, v.checked), (true, 4), "{v:#?}");
        assert!(
            v.pairs
                .iter()
                .all(|p| p.delay.as_ref().unwrap().scatter_ms == 0.0)
        );
        let slow = Observed::of(&measured(&c, 150, |_, _| 1.0, 41.0), &c, INTERVAL);
        let v = judge(&fault, &[], &c, &slow, Some(&base));
        assert_eq!((v.ok, v.mismatches), (false, 4), "{v:#?}");
        // Without a baseline only the loss (none configured, none seen) is checked.
        let v = judge(&fault, &[], &c, &now, None);
        assert_eq!((v.ok, v.checked), (true, 4));
        assert!(
            v.pairs
                .iter()
                .all(|p| p.delay.is_none() && p.loss.is_some())
        );
        assert!(v.not_verifiable[0].contains("no baseline"), "{v:#?}");
    }

    #[test]
    fn a_delay_hidden_in_scatter_is_not_verifiable() {
        let c = cluster();
        let mut act = Actions::default();
        act.shape.delay = Some(Duration::from_millis(20));
        let fault = impair_fault(&c, act);
        // Round trips spread evenly over 1..300 ms, before and after: a 20 ms shift of the
        // median is within chance.
        let spread = |shift_ms: f64| -> Observed {
            let rtts: Vec<f64> = (0..150)
                .map(|i| (1.0 + 2.0 * f64::from(i) + shift_ms) * 1e3)
                .collect();
            let sum = crate::measure::Rtts::new(rtts).unwrap().summary();
            let mut o = Observed {
                interval: INTERVAL,
                ..Observed::default()
            };
            for (a, b) in [("n1", "n2"), ("n2", "n1")] {
                for f in [Family::V4, Family::V6] {
                    o.seen.entry(Probe::Icmp).or_default().insert(
                        (a.into(), b.into(), f),
                        Seen {
                            sent: 150,
                            answered: 150,
                            heard: Some(150),
                            rtt_us: Some(sum),
                        },
                    );
                }
            }
            o
        };
        let v = judge(&fault, &[], &c, &spread(0.0), Some(&spread(0.0)));
        // Only the loss (none) is checked; the delay says why not.
        assert_eq!((v.ok, v.checked), (true, 4), "{v:#?}");
        let d = v.pairs[0].delay.as_ref().unwrap();
        assert!(d.ok.is_none() && d.scatter_ms > 20.0, "{d:?}");
        assert!(v.not_verifiable[0].contains("scatter too much"), "{v:#?}");
        // A quiet host's few µs of scatter leave the check as tight as documented.
        let tight = |ms: f64| -> Summary {
            crate::measure::Rtts::new(
                (0..150)
                    .map(|i| (ms + f64::from(i % 10) * 0.001) * 1e3)
                    .collect(),
            )
            .unwrap()
            .summary()
        };
        assert!(scatter_ms(&tight(1.0), 150, &tight(21.0), 150) < 0.01);
    }

    #[test]
    fn a_partition_makes_an_impairment_under_it_unverifiable() {
        let c = cluster();
        let g = grudge(&c, "n1|n2,n3");
        let rules = plan::partition("split", &c, &g, &Actions::default(), Conn::Any).unwrap();
        let split = Fault::build("split", Kind::Partition, entries(&rules), &c);
        let fault = impair_fault(
            &c,
            Actions {
                drop: Prob(0.1),
                ..Actions::default()
            },
        );
        let wire = measured(
            &c,
            150,
            |a, b| f64::from(u8::from((a == "n1") == (b == "n1"))),
            1.0,
        );
        let v = judge(
            &fault,
            &[split],
            &c,
            &Observed::of(&wire, &c, INTERVAL),
            None,
        );
        assert_eq!((v.ok, v.checked), (true, 0));
        assert!(v.not_verifiable[0].contains("cut by partition split"));
        // A cut of new TCP connections meets no echo: the impairment is judged under it.
        let syn = plan::partition("syn", &c, &g, &Actions::default(), Conn::New).unwrap();
        let syn = Fault::build("syn", Kind::Partition, entries(&syn), &c);
        let lossy = |a: &str, b: &str| if (a, b) == ("n1", "n2") { 0.9 } else { 1.0 };
        let wire = Observed::of(&measured(&c, 150, lossy, 1.0), &c, INTERVAL);
        let v = judge(&fault, &[syn], &c, &wire, None);
        assert_eq!((v.ok, v.checked), (true, 4), "{v:#?}");
    }

    fn spec(proto: Proto, sport: (u16, u16), dport: (u16, u16)) -> RuleSpec {
        RuleSpec {
            proto,
            sport: PortRange {
                lo: sport.0,
                hi: sport.1,
            },
            dport: PortRange {
                lo: dport.0,
                hi: dport.1,
            },
            ..RuleSpec::new("r", Kind::Rule)
        }
    }

    #[test]
    fn each_fault_is_probed_with_what_it_matches() {
        let all = (0, u16::MAX);
        assert_eq!(probe_for(&spec(Proto::Any, all, all)), Ok(Probe::Icmp));
        assert_eq!(probe_for(&spec(Proto::Icmp, all, all)), Ok(Probe::Icmp));
        assert_eq!(
            probe_for(&spec(Proto::Udp, all, all)),
            Ok(Probe::Udp(UDP_PORT))
        );
        // From port P to port P: P lies in both ranges.
        assert_eq!(
            probe_for(&spec(Proto::Udp, all, (9000, 9000))),
            Ok(Probe::Udp(9000))
        );
        assert_eq!(
            probe_for(&spec(Proto::Udp, (5000, 6000), all)),
            Ok(Probe::Udp(5000))
        );
        assert_eq!(
            probe_for(&spec(Proto::Udp, (5000, 6000), (5500, 9000))),
            Ok(Probe::Udp(5500))
        );
        assert_eq!(
            probe_for(&spec(Proto::Udp, all, (0, 0))),
            Err(
                "r matches source ports 0-65535 and destination ports 0: no port is in both, and a verifying UDP probe goes from port P to port P"
                    .into()
            )
        );
        assert!(
            probe_for(&spec(Proto::Udp, (1, 2), (3, 4)))
                .unwrap_err()
                .contains("no port is in both")
        );
        assert!(
            probe_for(&spec(Proto::Tcp, all, all))
                .unwrap_err()
                .contains("TCP only")
        );
    }

    #[test]
    fn a_udp_impairment_is_judged_on_udp_probes_of_its_port() {
        let c = cluster();
        let imp = Impair {
            from: vec!["n1".into()],
            to: vec!["n2".into()],
            act: Actions {
                drop: Prob(0.3),
                ..Actions::default()
            },
            traffic: crate::cluster::Traffic {
                proto: Proto::Udp,
                dport: PortRange { lo: 9000, hi: 9000 },
                ..crate::cluster::Traffic::default()
            },
        };
        let rules = plan::impair("u", &c, &imp).unwrap();
        let fault = Fault::build("u", Kind::Rule, entries(&rules), &c);
        assert_eq!((fault.probe, fault.all), (Some(Probe::Udp(9000)), false));
        assert_eq!(probes([&fault]), BTreeSet::from([Probe::Udp(9000)]));
        let lossy = |a: &str, b: &str| if (a, b) == ("n1", "n2") { 0.7 } else { 1.0 };
        let udp = |deliver: &dyn Fn(&str, &str) -> f64| {
            Observed::of_probe(
                Probe::Udp(9000),
                &measured(&c, 150, deliver, 1.0),
                &c,
                INTERVAL,
            )
        };
        let v = judge(&fault, &[], &c, &udp(&lossy), None);
        assert_eq!(
            (v.ok, v.checked, v.probe),
            (true, 4, Some(Probe::Udp(9000)))
        );
        // Echoes lose nothing: the loss configured is not on the wire.
        let v = judge(&fault, &[], &c, &udp(&|_, _| 1.0), None);
        assert_eq!((v.ok, v.mismatches), (false, 4), "{v:#?}");
        // ICMP probes alone do not judge it (echo requests do not meet the rule).
        let icmp = Observed::of(&measured(&c, 150, lossy, 1.0), &c, INTERVAL);
        let v = judge(&fault, &[], &c, &icmp, None);
        assert_eq!(v.checked, 0, "{v:#?}");
        assert!(v.not_verifiable[0].contains("not probed"), "{v:#?}");
        // Both runs merged: the UDP one judges it.
        let v = judge(&fault, &[], &c, &icmp.merge(udp(&lossy)), None);
        assert_eq!((v.ok, v.checked), (true, 4));
    }
}
