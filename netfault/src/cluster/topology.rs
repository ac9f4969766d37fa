//! `TOPOLOGY` strings and the grudges they give.
//!
//! A grudge maps every node to the set of nodes whose packets it drops. It is enforced where
//! packets arrive (receiver side, ingress): each node needs only its own entry, and a node
//! drops what it was told to whatever the others do, so a one-way cut is just an asymmetric
//! grudge.
//!
//! | topology | grudge | nodes |
//! |---|---|---|
//! | `halves` | the first ⌊n/2⌋ nodes in file order against the rest | n ≥ 2 |
//! | `random-halves` | as `halves`, over a shuffled order | n ≥ 2 |
//! | `isolate:NODE` | NODE against everyone else | n ≥ 2 |
//! | `isolate` | a random node against everyone else | n ≥ 2 |
//! | `majorities-ring` | every node sees a majority (itself included), no two the same one | n ≥ 3 |
//! | `minority-third` | a random group of max(1, ⌈n/3⌉ − 1) nodes against the rest | n ≥ 3 |
//! | `bridge` | `halves`, but the first node of the second half sees both sides | n ≥ 3 |
//! | `complete` | every node alone | n ≥ 2 |
//! | `n1,n2\|n3,n4,n5` | explicit components; every node in exactly one | ≥ 2 components |
//!
//! Random choices come from splitmix64 seeded by the caller (`--seed N`): the same seed and
//! cluster give the same grudge.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
};

use serde::Serialize;

use crate::spec::{dist::splitmix64, validate_name};

/// A named way of cutting a cluster; see the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    Halves,
    RandomHalves,
    /// `None`: a random node.
    Isolate(Option<String>),
    MajoritiesRing,
    MinorityThird,
    Bridge,
    Complete,
    /// Node names per component, as written.
    Components(Vec<Vec<String>>),
}

const NAMES: &str = "halves, random-halves, isolate, isolate:NODE, majorities-ring, minority-third, bridge, complete, or components such as n1,n2|n3";

impl FromStr for Topology {
    type Err = String;
    /// Syntax only: whether the names exist is [`Topology::grudge`]'s to check.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.contains('|') {
            let mut comps = Vec::new();
            for (ci, comp) in t.split('|').enumerate() {
                let mut names = Vec::new();
                for tok in comp.split(',') {
                    let tok = tok.trim();
                    if tok.is_empty() {
                        return Err(format!("'{s}': component {} has an empty name", ci + 1));
                    }
                    validate_name("node", tok).map_err(|e| format!("'{tok}': {}", e.msg))?;
                    names.push(tok.to_string());
                }
                comps.push(names);
            }
            return Ok(Topology::Components(comps));
        }
        if let Some(node) = t.strip_prefix("isolate:") {
            let node = node.trim();
            validate_name("node", node).map_err(|e| format!("isolate:'{node}': {}", e.msg))?;
            return Ok(Topology::Isolate(Some(node.to_string())));
        }
        Ok(match t {
            "halves" => Topology::Halves,
            "random-halves" => Topology::RandomHalves,
            "isolate" => Topology::Isolate(None),
            "majorities-ring" => Topology::MajoritiesRing,
            "minority-third" => Topology::MinorityThird,
            "bridge" => Topology::Bridge,
            "complete" => Topology::Complete,
            _ => return Err(format!("unknown topology '{s}' (expected {NAMES})")),
        })
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Halves => f.write_str("halves"),
            Topology::RandomHalves => f.write_str("random-halves"),
            Topology::Isolate(None) => f.write_str("isolate"),
            Topology::Isolate(Some(n)) => write!(f, "isolate:{n}"),
            Topology::MajoritiesRing => f.write_str("majorities-ring"),
            Topology::MinorityThird => f.write_str("minority-third"),
            Topology::Bridge => f.write_str("bridge"),
            Topology::Complete => f.write_str("complete"),
            Topology::Components(c) => {
                let parts: Vec<String> = c.iter().map(|c| c.join(",")).collect();
                f.write_str(&parts.join("|"))
            }
        }
    }
}

/// A deterministic PRNG over splitmix64.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift: a bias under n / 2^64, none a
    /// cluster could show.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(splitmix64(&mut self.0)) * n as u128) >> 64) as usize
    }

    /// Fisher-Yates.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Who drops whom: every node of the cluster is a key, mapped to the nodes whose packets it
/// drops (on ingress). No node drops itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grudge(pub BTreeMap<String, BTreeSet<String>>);

impl Grudge {
    /// Every node drops every node outside its own component (`nodes` lists them all).
    pub fn from_components(nodes: &[&str], components: &[Vec<&str>]) -> Grudge {
        let mut g = BTreeMap::new();
        for n in nodes {
            let own = components.iter().find(|c| c.contains(n));
            let drops = nodes
                .iter()
                .filter(|m| m != &n && !own.is_some_and(|c| c.contains(m)))
                .map(|m| m.to_string())
                .collect();
            g.insert(n.to_string(), drops);
        }
        Grudge(g)
    }

    /// Does `receiver` drop packets from `sender`?
    pub fn drops(&self, receiver: &str, sender: &str) -> bool {
        self.0.get(receiver).is_some_and(|s| s.contains(sender))
    }

    /// The nodes `node` still hears from: every node (itself included) it does not drop.
    pub fn visible(&self, node: &str) -> BTreeSet<String> {
        let drops = self.0.get(node);
        self.0
            .keys()
            .filter(|k| !drops.is_some_and(|d| d.contains(*k)))
            .cloned()
            .collect()
    }

    /// Whether every cut goes both ways.
    pub fn is_symmetric(&self) -> bool {
        self.0
            .iter()
            .all(|(r, s)| s.iter().all(|s| self.drops(s, r)))
    }

    /// The document `netfault cluster partition --json` prints:
    /// `{"name": ..., "topology": ..., "grudge": {"n1": ["n3", ...], ...}}`.
    pub fn to_json(&self, name: &str, topology: &str) -> serde_json::Value {
        serde_json::json!({ "name": name, "topology": topology, "grudge": self })
    }
}

impl Topology {
    /// The fewest nodes this topology is defined for.
    pub fn min_nodes(&self) -> usize {
        match self {
            Topology::Halves
            | Topology::RandomHalves
            | Topology::Isolate(_)
            | Topology::Complete
            | Topology::Components(_) => 2,
            Topology::MajoritiesRing | Topology::MinorityThird | Topology::Bridge => 3,
        }
    }

    /// Whether the grudge depends on the seed.
    pub fn is_random(&self) -> bool {
        matches!(
            self,
            Topology::RandomHalves
                | Topology::Isolate(None)
                | Topology::MajoritiesRing
                | Topology::MinorityThird
        )
    }

    /// The grudge over `nodes` (file order, names unique), random choices seeded by `seed`.
    pub fn grudge(&self, nodes: &[&str], seed: u64) -> Result<Grudge, String> {
        let n = nodes.len();
        if n < self.min_nodes() {
            return Err(format!(
                "{self} needs at least {} nodes; the cluster has {n}{}",
                self.min_nodes(),
                match self {
                    Topology::MajoritiesRing =>
                        " (with fewer, every majority is the whole cluster: nothing to cut)",
                    Topology::Bridge => " (two sides and a bridge between them)",
                    _ => " (a partition needs two sides)",
                }
            ));
        }
        let mut rng = Rng::new(seed);
        let mut shuffled = nodes.to_vec();
        let two = |v: &[&str], k: usize| {
            Grudge::from_components(nodes, &[v[..k].to_vec(), v[k..].to_vec()])
        };
        Ok(match self {
            Topology::Halves => two(nodes, n / 2),
            Topology::RandomHalves => {
                rng.shuffle(&mut shuffled);
                two(&shuffled, n / 2)
            }
            Topology::Isolate(who) => {
                let who = match who {
                    Some(w) => nodes
                        .iter()
                        .copied()
                        .find(|n| n == w)
                        .ok_or_else(|| unknown(w, nodes))?,
                    None => nodes[rng.below(n)],
                };
                let rest: Vec<&str> = nodes.iter().copied().filter(|m| *m != who).collect();
                Grudge::from_components(nodes, &[vec![who], rest])
            }
            Topology::MinorityThird => {
                rng.shuffle(&mut shuffled);
                two(&shuffled, minority_third(n))
            }
            Topology::Complete => {
                let alone: Vec<Vec<&str>> = nodes.iter().map(|m| vec![*m]).collect();
                Grudge::from_components(nodes, &alone)
            }
            Topology::Bridge => {
                let half = n / 2;
                let bridge = nodes[half];
                let mut g = two(nodes, half);
                // The bridge keeps both sides, and both sides keep it.
                for (k, drops) in g.0.iter_mut() {
                    if k == bridge {
                        drops.clear();
                    } else {
                        drops.remove(bridge);
                    }
                }
                g
            }
            Topology::MajoritiesRing => {
                rng.shuffle(&mut shuffled);
                majorities_ring(&shuffled)
            }
            Topology::Components(comps) => {
                let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
                let mut resolved = Vec::new();
                for (ci, comp) in comps.iter().enumerate() {
                    let mut c = Vec::new();
                    for name in comp {
                        let node = nodes
                            .iter()
                            .copied()
                            .find(|n| n == name)
                            .ok_or_else(|| unknown(name, nodes))?;
                        if let Some(prev) = seen.insert(node, ci) {
                            return Err(if prev == ci {
                                format!("'{node}' is listed twice in component {}", ci + 1)
                            } else {
                                format!(
                                    "'{node}' is in components {} and {}; a node is in exactly one",
                                    prev + 1,
                                    ci + 1
                                )
                            });
                        }
                        c.push(node);
                    }
                    resolved.push(c);
                }
                if let Some(missing) = nodes.iter().find(|n| !seen.contains_key(*n)) {
                    return Err(format!(
                        "'{missing}' is in no component; every node is in exactly one"
                    ));
                }
                if resolved.len() < 2 {
                    return Err("one component cuts nothing; give two or more".into());
                }
                Grudge::from_components(nodes, &resolved)
            }
        })
    }
}

fn unknown(name: &str, nodes: &[&str]) -> String {
    format!(
        "'{name}' is not a node of this cluster (nodes: {})",
        nodes.join(", ")
    )
}

/// The largest group strictly smaller than a third of the cluster (Jepsen's minority third:
/// the most faulty nodes a BFT system of n tolerates), but at least one node.
pub fn minority_third(n: usize) -> usize {
    n.div_ceil(3).saturating_sub(1).max(1)
}

/// Jepsen's perfect majorities ring over `ring` (already shuffled): with m = ⌊n/2⌋ + 1, the
/// node at position i sees the m consecutive positions starting at i − ⌊(m − 1)/2⌋ (itself
/// near the middle) and drops the rest. The window is a strict majority holding the node
/// itself; windows starting at different positions differ because m < n (n ≥ 3), so no two
/// nodes see the same majority. With m odd each node sees (m−1)/2 neighbours on each side and
/// the grudge is symmetric; with m even it sees one more on the right than on the left, so a
/// few cuts are one-way (as in Jepsen).
fn majorities_ring(ring: &[&str]) -> Grudge {
    let n = ring.len();
    let m = n / 2 + 1;
    let mut g = BTreeMap::new();
    for i in 0..n {
        let start = (i + n - (m - 1) / 2) % n;
        let window: BTreeSet<&str> = (0..m).map(|k| ring[(start + k) % n]).collect();
        let drops = ring
            .iter()
            .filter(|x| !window.contains(*x))
            .map(|x| x.to_string())
            .collect();
        g.insert(ring[i].to_string(), drops);
    }
    Grudge(g)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn g(t: &str, n: usize, seed: u64) -> Result<Grudge, String> {
        let v = names(n);
        t.parse::<Topology>()?.grudge(&refs(&v), seed)
    }

    /// Every node a key, nobody dropping itself or a stranger.
    fn well_formed(gr: &Grudge, n: usize) {
        let all: BTreeSet<String> = names(n).into_iter().collect();
        assert_eq!(gr.0.keys().cloned().collect::<BTreeSet<_>>(), all);
        for (k, d) in &gr.0 {
            assert!(!d.contains(k), "{k} drops itself");
            assert!(d.is_subset(&all));
        }
    }

    /// Two groups that drop each other entirely and nothing inside; returns their sizes.
    fn two_sides(gr: &Grudge) -> (usize, usize) {
        let mut sides: Vec<BTreeSet<String>> = Vec::new();
        for k in gr.0.keys() {
            let v = gr.visible(k);
            if !sides.contains(&v) {
                sides.push(v);
            }
        }
        assert_eq!(sides.len(), 2, "{gr:?}");
        assert!(sides[0].is_disjoint(&sides[1]));
        for (k, d) in &gr.0 {
            let other = if sides[0].contains(k) {
                &sides[1]
            } else {
                &sides[0]
            };
            assert_eq!(d, other);
        }
        assert!(gr.is_symmetric());
        let (a, b) = (sides[0].len(), sides[1].len());
        (a.min(b), a.max(b))
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "halves",
            "random-halves",
            "isolate",
            "isolate:n3",
            "majorities-ring",
            "minority-third",
            "bridge",
            "complete",
            "n1,n2|n3,n4,n5",
            "a|b",
        ] {
            assert_eq!(s.parse::<Topology>().unwrap().to_string(), s);
        }
        assert_eq!(
            " n1 , n2 | n3 ".parse::<Topology>().unwrap().to_string(),
            "n1,n2|n3"
        );
        for bad in [
            "",
            "halve",
            "isolate:",
            "isolate:a b",
            "n1,|n2",
            "n1||n2",
            "|",
            "n1|n 2",
        ] {
            assert!(bad.parse::<Topology>().is_err(), "{bad}");
        }
    }

    #[test]
    fn halves_follow_file_order() {
        let gr = g("halves", 5, 0).unwrap();
        assert_eq!(gr.0["n1"], set(&["n3", "n4", "n5"]));
        assert_eq!(gr.0["n2"], set(&["n3", "n4", "n5"]));
        assert_eq!(gr.0["n5"], set(&["n1", "n2"]));
        assert_eq!(two_sides(&gr), (2, 3));
    }

    #[test]
    fn components_and_isolate_name_the_bad_token() {
        let gr = g("n1,n2|n3,n4,n5", 5, 0).unwrap();
        assert_eq!(gr.0["n3"], set(&["n1", "n2"]));
        assert_eq!(gr.0["n1"], set(&["n3", "n4", "n5"]));
        let gr = g("n1|n2|n3", 3, 0).unwrap();
        assert_eq!(gr, g("complete", 3, 0).unwrap());
        let e = g("n1,n2|n3,n9", 4, 0).unwrap_err();
        assert!(e.contains("'n9'") && e.contains("not a node"), "{e}");
        let e = g("n1,n2|n3", 4, 0).unwrap_err();
        assert!(e.contains("'n4'") && e.contains("no component"), "{e}");
        let e = g("n1,n2|n2,n3", 3, 0).unwrap_err();
        assert!(e.contains("'n2'") && e.contains("exactly one"), "{e}");
        let e = g("n1,n1|n2", 2, 0).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = g("isolate:n7", 3, 0).unwrap_err();
        assert!(e.contains("'n7'"), "{e}");
        let gr = g("isolate:n2", 3, 0).unwrap();
        assert_eq!(gr.0["n2"], set(&["n1", "n3"]));
        assert_eq!(gr.0["n1"], set(&["n2"]));
    }

    #[test]
    fn small_clusters_are_refused_clearly() {
        let e = g("majorities-ring", 2, 0).unwrap_err();
        assert!(e.contains("at least 3") && e.contains("has 2"), "{e}");
        assert!(g("bridge", 2, 0).is_err());
        assert!(g("minority-third", 2, 0).is_err());
        for t in ["halves", "random-halves", "isolate", "complete"] {
            assert!(g(t, 1, 0).unwrap_err().contains("at least 2"), "{t}");
            assert!(g(t, 2, 0).is_ok(), "{t}");
        }
    }

    #[test]
    fn bridge_of_five() {
        let gr = g("bridge", 5, 0).unwrap();
        // Halves n1,n2 | n3,n4,n5; n3 bridges.
        assert!(gr.0["n3"].is_empty());
        assert_eq!(gr.0["n1"], set(&["n4", "n5"]));
        assert_eq!(gr.0["n4"], set(&["n1", "n2"]));
        assert!(gr.is_symmetric());
    }

    #[test]
    fn majorities_ring_property_for_3_to_9() {
        for n in 3..=9 {
            for seed in 0..50 {
                let gr = g("majorities-ring", n, seed).unwrap();
                well_formed(&gr, n);
                let mut seen = BTreeSet::new();
                for k in gr.0.keys() {
                    let v = gr.visible(k);
                    assert!(2 * v.len() > n, "n={n}: {k} sees {v:?}");
                    assert!(v.contains(k));
                    assert!(
                        seen.insert(v),
                        "n={n} seed={seed}: two nodes see the same set"
                    );
                }
                // Symmetric exactly when the majority is odd.
                assert_eq!(gr.is_symmetric(), (n / 2 + 1) % 2 == 1, "n={n}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_grudge() {
        for t in [
            "random-halves",
            "isolate",
            "majorities-ring",
            "minority-third",
        ] {
            assert_eq!(g(t, 7, 42), g(t, 7, 42), "{t}");
            let distinct: BTreeSet<String> = (0..20)
                .map(|s| format!("{:?}", g(t, 7, s).unwrap()))
                .collect();
            assert!(distinct.len() > 1, "{t} ignores the seed");
        }
    }

    #[test]
    fn json_document() {
        let gr = g("isolate:n1", 3, 0).unwrap();
        let j = gr.to_json("p1", "isolate:n1");
        assert_eq!(
            j,
            serde_json::json!({
                "name": "p1",
                "topology": "isolate:n1",
                "grudge": {"n1": ["n2", "n3"], "n2": ["n1"], "n3": ["n1"]}
            })
        );
    }

    #[test]
    fn minority_thirds() {
        let want = [
            (3, 1),
            (4, 1),
            (5, 1),
            (6, 1),
            (7, 2),
            (9, 2),
            (10, 3),
            (12, 3),
        ];
        for (n, k) in want {
            assert_eq!(minority_third(n), k, "n={n}");
        }
    }

    proptest! {
        #[test]
        fn every_topology_keeps_its_defining_property(n in 1usize..=12, seed in any::<u64>()) {
            let all = names(n);
            let nodes = refs(&all);
            let ok = |t: &str| {
                let top: Topology = t.parse().unwrap();
                let r = top.grudge(&nodes, seed);
                assert_eq!(r.is_ok(), n >= top.min_nodes(), "{t} n={n}");
                r.ok().inspect(|gr| well_formed(gr, n))
            };
            if let Some(gr) = ok("halves") {
                prop_assert_eq!(two_sides(&gr), (n / 2, n - n / 2));
                for i in 0..n / 2 {
                    prop_assert!(gr.visible(nodes[i]).contains(nodes[0]));
                }
            }
            if let Some(gr) = ok("random-halves") {
                prop_assert_eq!(two_sides(&gr), (n / 2, n - n / 2));
            }
            if let Some(gr) = ok("minority-third") {
                prop_assert_eq!(two_sides(&gr), (minority_third(n), n - minority_third(n)));
                prop_assert!(2 * minority_third(n) < n);
            }
            for t in ["isolate".to_string(), format!("isolate:n{}", 1 + seed as usize % n)] {
                if let Some(gr) = ok(&t) {
                    let lonely: Vec<&String> =
                        gr.0.iter().filter(|(_, d)| d.len() == n - 1).map(|(k, _)| k).collect();
                    let who = if n == 2 { gr.0.keys().next().unwrap() } else { lonely[0] };
                    prop_assert!(n == 2 || lonely.len() == 1);
                    for (k, d) in &gr.0 {
                        if k != who {
                            prop_assert_eq!(d, &set(&[who.as_str()]));
                        }
                    }
                    prop_assert!(gr.is_symmetric());
                }
            }
            if let Some(gr) = ok("majorities-ring") {
                let mut seen = BTreeSet::new();
                for k in gr.0.keys() {
                    let v = gr.visible(k);
                    prop_assert!(2 * v.len() > n && v.contains(k));
                    prop_assert!(seen.insert(v));
                }
            }
            if let Some(gr) = ok("bridge") {
                let bridge = nodes[n / 2];
                prop_assert!(gr.0[bridge].is_empty());
                for (i, k) in nodes.iter().enumerate() {
                    prop_assert!(!gr.drops(k, bridge));
                    if *k == bridge {
                        continue;
                    }
                    let other: BTreeSet<String> = nodes
                        .iter()
                        .enumerate()
                        .filter(|(j, m)| **m != bridge && (*j < n / 2) != (i < n / 2))
                        .map(|(_, m)| m.to_string())
                        .collect();
                    prop_assert_eq!(&gr.0[*k], &other);
                }
                prop_assert!(gr.is_symmetric());
            }
            if let Some(gr) = ok("complete") {
                for (k, d) in &gr.0 {
                    prop_assert_eq!(d.len(), n - 1);
                    prop_assert!(!d.contains(k));
                }
            }
        }
    }
}
