//! From a grudge or an impairment to the rules each node needs, and the protections every
//! node carries so the coordinator's and transports' traffic is never cut.
//!
//! Where each fault goes:
//! - **Partitions** (a grudge): at the receiver. Node X gets, for every node Y in `grudge[X]`
//!   and each address family of Y's addresses, a one-way partition entry on ingress with
//!   `src` = Y's addresses (`<name>.from-Y.v4`). Partitions are evaluated before rules, so a
//!   cut beats any impairment.
//! - **Drop and duplicate** (`impair --from A --to B`): at B's ingress, `src` = A's addresses
//!   (`<name>.from-A.v4`): the receiver acts, as for partitions, and lost packets still crossed
//!   the wire as real losses do.
//! - **Delay, jitter, rate, hold, and late duplicates** (duplicate with a delay): at A's egress, `dst` = B's addresses (`<name>.to-B.v4`).
//!   netfault shapes by departure time, which only an egress queue (fq) honours; delaying at B's
//!   ingress would need an IFB device and a redirect on every receiver, so the sender acts where
//!   the receiver cannot do so natively. One rate rule per (A, B, family): each pair is paced
//!   on its own.
//! - **Corruption**: at A's egress too. There the data path sees the sender's checksum
//!   offload state (a checksum the device completes later) and can leave the checksum bad or
//!   make it good as asked; at B's ingress a packet from a local sender (a veth peer on the same
//!   host) carries an offloaded checksum the receiving stack never checks, so `bad` could not
//!   be made to fail there.
//!
//! Names are made of the step's (or command's) name, the peer and the family, so they are
//! deterministic and the coordinator can heal exactly what it applied; a name longer than 64
//! characters is refused (field `name`). Error fields are relative (`name`, `from[1]`,
//! `jitter`): the caller prefixes its own key path.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use super::{Cluster, Grudge};
use crate::spec::{
    Actions, Conn, Direction, Kind, PortRange, Prob, Proto, RuleSpec, Shape, SpecError, protection,
    validate_name,
};

/// `impair --from A.. --to B..`: faults on the traffic from every `from` node to every `to`
/// node (pairs of a node with itself are skipped: its traffic to itself never leaves it).
#[derive(Debug, Clone, PartialEq)]
pub struct Impair {
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub act: Actions,
    /// Which of the pairs' traffic it meets.
    pub traffic: Traffic,
}

/// Which of the pairs' traffic an impairment meets: all of it, unless a protocol and ports
/// narrow it (`--proto udp --dport 9000`); both rules of a pair (receiver and sender) match
/// the same.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traffic {
    pub proto: Proto,
    pub sport: PortRange,
    pub dport: PortRange,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            proto: Proto::Any,
            sport: PortRange::ALL,
            dport: PortRange::ALL,
        }
    }
}

impl Traffic {
    /// Ports only with a protocol that has them, as for a rule.
    pub fn validate(&self) -> Result<(), SpecError> {
        for (field, r) in [("sport", self.sport), ("dport", self.dport)] {
            if !r.is_all() && !matches!(self.proto, Proto::Tcp | Proto::Udp) {
                return Err(SpecError::new(field, "ports need proto tcp or udp"));
            }
        }
        Ok(())
    }

    /// `proto`, `sport`, `dport` where they narrow the traffic.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if self.proto != Proto::Any {
            m.insert("proto".into(), serde_json::json!(self.proto));
        }
        for (k, r) in [("sport", self.sport), ("dport", self.dport)] {
            if !r.is_all() {
                m.insert(k.into(), r.to_string().into());
            }
        }
        m
    }
}

/// What one node is given: where to attach, what to protect, which rules to hold.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodePlan {
    pub node: String,
    pub ifaces: Vec<String>,
    pub protect: Vec<RuleSpec>,
    pub rules: Vec<RuleSpec>,
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "v4" } else { "v6" }
}

/// `addrs` split by family, v4 first: (suffix, host nets).
fn by_family(addrs: &[IpAddr]) -> Vec<(&'static str, Vec<IpNet>)> {
    ["v4", "v6"]
        .into_iter()
        .map(|f| {
            let nets = addrs
                .iter()
                .filter(|a| family(a) == f)
                .map(|a| IpNet::from(*a))
                .collect::<Vec<_>>();
            (f, nets)
        })
        .filter(|(_, n)| !n.is_empty())
        .collect()
}

fn rule_name(name: &str, tail: &str) -> Result<String, SpecError> {
    let full = format!("{name}.{tail}");
    validate_name("name", &full).map_err(|e| {
        SpecError::new(
            "name",
            format!(
                "the rule name '{full}' is invalid ({}); use a shorter name",
                e.msg
            ),
        )
    })?;
    Ok(full)
}

/// Every node's partition entries for `grudge` (every node of the cluster is a key; a node
/// that drops nobody maps to an empty list). Of `reply`, only `reject` and `reject_rate`
/// apply: each node answers what it drops ("the port is closed") instead of staying silent.
/// With `conn` other than `Any`, each entry cuts only TCP, and of it only the segments `conn`
/// names (`New`: peers cannot open connections to the node; those already open keep flowing).
pub fn partition(
    name: &str,
    cluster: &Cluster,
    grudge: &Grudge,
    reply: &Actions,
    conn: Conn,
) -> Result<BTreeMap<String, Vec<RuleSpec>>, SpecError> {
    let mut out = BTreeMap::new();
    for node in &cluster.nodes {
        let mut rules = Vec::new();
        for peer in grudge.0.get(&node.name).into_iter().flatten() {
            let p = cluster.node(peer).ok_or_else(|| {
                SpecError::new("grudge", format!("'{peer}' is not a node of this cluster"))
            })?;
            for (fam, nets) in by_family(&p.addrs) {
                let mut r = RuleSpec {
                    dir: Direction::Ingress,
                    src: nets,
                    oneway: true,
                    conn,
                    ..RuleSpec::new(
                        rule_name(name, &format!("from-{peer}.{fam}"))?,
                        Kind::Partition,
                    )
                };
                (r.act.reject, r.act.reject_rate) = (reply.reject, reply.reject_rate);
                rules.push(r);
            }
        }
        out.insert(node.name.clone(), rules);
    }
    Ok(out)
}

/// Node names as given, checked against the cluster and for repeats (`field[i]`).
fn members<'a>(
    field: &str,
    names: &'a [String],
    cluster: &'a Cluster,
) -> Result<Vec<&'a super::Node>, SpecError> {
    if names.is_empty() {
        return Err(SpecError::new(field, "empty (name at least one node)"));
    }
    let mut out: Vec<&super::Node> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let node = cluster.node(n).ok_or_else(|| {
            SpecError::new(
                &f,
                format!(
                    "'{n}' is not a node of this cluster (nodes: {})",
                    cluster.names().join(", ")
                ),
            )
        })?;
        if out.iter().any(|o| o.name == *n) {
            return Err(SpecError::new(&f, format!("'{n}' is listed twice")));
        }
        out.push(node);
    }
    Ok(out)
}

/// Validation field names are the CLI's (`--jitter`, `--corrupt-checksum`); this module's are
/// the file keys (`jitter`, `corrupt_checksum`).
fn bare(e: SpecError) -> SpecError {
    // As the file's key: `--duplicate-delay` is `duplicate_delay` there.
    SpecError::new(e.field.trim_start_matches("--").replace('-', "_"), e.msg)
}

impl Impair {
    /// Checks what needs no cluster: an action is given, the shape is consistent.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.act.validate().map_err(bare)?;
        self.traffic.validate()?;
        if self.act.is_empty() {
            return Err(SpecError::new(
                "impair",
                "give drop, duplicate, delay, rate, hold or corrupt (an impairment with no action does nothing)",
            ));
        }
        Ok(())
    }
}

/// Where each action of an impairment acts: (at the receiver's ingress, at the sender's
/// egress). Shaping needs the sender's queue (fq), and corruption the sender's checksum state
/// (see the [module documentation](self)); everything else acts where the packet arrives,
/// after it crossed the wire (a reject's reply then leaves the receiver as a closed port's
/// would).
///
/// A hold goes with shaping (it is a departure time too), and so do late duplicates, which
/// only an egress queue can send late (spec::hold): the duplicate moves to the sender with them.
fn split(act: &Actions) -> (Actions, Actions) {
    let late = act.late_duplicates();
    let receiver = Actions {
        shape: Shape::default(),
        corrupt: Prob(0.0),
        corrupt_checksum: None,
        hold: None,
        duplicate: if late { Prob(0.0) } else { act.duplicate },
        duplicate_delay: None,
        ..*act
    };
    let sender = Actions {
        shape: act.shape,
        corrupt: act.corrupt,
        corrupt_checksum: act.corrupt_checksum,
        hold: act.hold,
        duplicate: if late { act.duplicate } else { Prob(0.0) },
        duplicate_delay: act.duplicate_delay.filter(|_| late),
        ..Actions::default()
    };
    (receiver, sender)
}

/// Every node's rules for `imp`: drop and duplicate at the receivers' ingress, delay, jitter
/// and rate at the senders' egress (see the [module documentation](self)).
pub fn impair(
    name: &str,
    cluster: &Cluster,
    imp: &Impair,
) -> Result<BTreeMap<String, Vec<RuleSpec>>, SpecError> {
    imp.validate()?;
    let from = members("from", &imp.from, cluster)?;
    let to = members("to", &imp.to, cluster)?;
    let mut out: BTreeMap<String, Vec<RuleSpec>> = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), Vec::new()))
        .collect();
    let (at_receiver, at_sender) = split(&imp.act);
    let mut pairs = 0;
    for a in &from {
        for b in &to {
            if a.name == b.name {
                continue;
            }
            pairs += 1;
            if !at_receiver.is_empty() {
                for (fam, nets) in by_family(&a.addrs) {
                    let r = RuleSpec {
                        dir: Direction::Ingress,
                        src: nets,
                        proto: imp.traffic.proto,
                        sport: imp.traffic.sport,
                        dport: imp.traffic.dport,
                        act: at_receiver,
                        ..RuleSpec::new(
                            rule_name(name, &format!("from-{}.{fam}", a.name))?,
                            Kind::Rule,
                        )
                    };
                    r.validate().map_err(bare)?;
                    out.entry(b.name.clone()).or_default().push(r);
                }
            }
            if !at_sender.is_empty() {
                for (fam, nets) in by_family(&b.addrs) {
                    let r = RuleSpec {
                        dir: Direction::Egress,
                        dst: nets,
                        proto: imp.traffic.proto,
                        sport: imp.traffic.sport,
                        dport: imp.traffic.dport,
                        act: at_sender,
                        ..RuleSpec::new(
                            rule_name(name, &format!("to-{}.{fam}", b.name))?,
                            Kind::Rule,
                        )
                    };
                    r.validate().map_err(bare)?;
                    out.entry(a.name.clone()).or_default().push(r);
                }
            }
        }
    }
    if pairs == 0 {
        return Err(SpecError::new(
            "to",
            "every pair is a node with itself: nothing to impair",
        ));
    }
    Ok(out)
}

/// The protections every node carries, the same on each:
/// - all traffic to and from each `coordinator` address that is not a cluster node's (a node's
///   address protected whole would exempt that node from every cut, so a coordinator running on
///   a node relies on the next item alone);
/// - TCP and UDP to and from every `endpoints` address and port: each node's agent or SSH
///   server (every node protects every node's endpoint, since a coordinator on a node sends
///   from there, and replies cross its own rules too).
///
/// `endpoints` are [`Transport::literal_endpoint`](super::Transport::literal_endpoint)s, plus
/// the addresses the coordinator resolved for transports that name a host.
pub fn protections(
    cluster: &Cluster,
    coordinator: &[IpAddr],
    endpoints: &[SocketAddr],
) -> Vec<RuleSpec> {
    let mut out = Vec::new();
    let mut coord: Vec<IpAddr> = coordinator
        .iter()
        .copied()
        .filter(|a| cluster.owner(*a).is_none())
        .collect();
    coord.sort();
    coord.dedup();
    for a in coord {
        let net = IpNet::from(a);
        out.extend(protection::endpoint(
            &format!("coordinator:{}", protection::label(&net, None)),
            net,
            None,
        ));
    }
    let mut eps = endpoints.to_vec();
    eps.sort();
    eps.dedup();
    for e in eps {
        let net = IpNet::from(e.ip());
        out.extend(protection::endpoint(
            &format!("control:{}", protection::label(&net, Some(e.port()))),
            net,
            Some(e.port()),
        ));
    }
    out
}

/// The endpoints of the cluster's transports whose hosts are address literals, sorted; the
/// others name hosts the coordinator must resolve before [`protections`].
pub fn literal_endpoints(cluster: &Cluster) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = cluster
        .nodes
        .iter()
        .filter_map(|n| n.transport.literal_endpoint())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// One [`NodePlan`] per node, in file order: its interfaces, `protect`, and its share of each of
/// `rules` (maps as [`partition`] and [`impair`] return, merged in order).
pub fn plans(
    cluster: &Cluster,
    protect: &[RuleSpec],
    rules: &[BTreeMap<String, Vec<RuleSpec>>],
) -> Vec<NodePlan> {
    cluster
        .nodes
        .iter()
        .map(|n| NodePlan {
            node: n.name.clone(),
            ifaces: n.ifaces.clone(),
            protect: protect.to_vec(),
            rules: rules
                .iter()
                .filter_map(|m| m.get(&n.name))
                .flatten()
                .cloned()
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::spec::Prob;

    use netfault_common::{DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6, FlowKey};

    use super::*;
    use crate::{
        cluster::Topology,
        compile::{Compiled, Input, classify, compile},
    };

    const CLUSTER: &str = r#"
[[node]]
name = "n1"
addrs = ["192.0.2.1", "2001:db8::1"]
iface = ["eth1"]
agent = "http://192.0.2.1:7070"
token_file = "/t"
[[node]]
name = "n2"
addrs = ["192.0.2.2"]
iface = ["eth1"]
ssh = "root@192.0.2.2"
[[node]]
name = "n3"
addrs = ["192.0.2.3", "2001:db8::3"]
iface = ["eth1"]
netns = "n3"
[[node]]
name = "n4"
addrs = ["192.0.2.4"]
iface = ["eth1"]
agent = "https://agent4.lab:7070"
token_file = "/t"
"#;

    fn cluster() -> Cluster {
        Cluster::parse(CLUSTER).unwrap()
    }

    /// Compiles in the pipeline's order: protections, partitions, rules.
    fn compiled(protect: &[RuleSpec], rules: &[RuleSpec]) -> Compiled {
        let mut all: Vec<&RuleSpec> = protect.iter().collect();
        all.extend(rules.iter().filter(|r| r.kind == Kind::Partition));
        all.extend(rules.iter().filter(|r| r.kind == Kind::Rule));
        let inputs: Vec<Input<'_>> = all
            .iter()
            .enumerate()
            .map(|(i, s)| Input {
                slot: i as u32,
                spec: s,
                ifindex: None,
            })
            .collect();
        compile(&inputs).unwrap()
    }

    fn words(a: IpAddr) -> ([u32; 4], u8) {
        let mut b = [0u8; 16];
        let fam = match a {
            IpAddr::V4(v) => {
                b[..4].copy_from_slice(&v.octets());
                FAMILY_V4
            }
            IpAddr::V6(v) => {
                b.copy_from_slice(&v.octets());
                FAMILY_V6
            }
        };
        let w = std::array::from_fn(|i| {
            u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
        });
        (w, fam)
    }

    fn pkt(src: &str, dst: &str, sport: u16, dport: u16, dir: u8) -> FlowKey {
        let (s, family) = words(src.parse().unwrap());
        let (d, _) = words(dst.parse().unwrap());
        FlowKey {
            src: s,
            dst: d,
            family,
            proto: 6,
            sport,
            dport,
            dir,
            ifindex: 3,
            // The parser read the ports (a whole TCP header).
            flags: netfault_common::KEY_PORTS,
            ..Default::default()
        }
    }

    /// The name of the entry a packet hits, if any.
    fn verdict<'a>(c: &Compiled, order: &[&'a RuleSpec], k: FlowKey) -> Option<&'a str> {
        classify(c, &k).map(|f| order[f.slot as usize].name.as_str())
    }

    fn order<'a>(protect: &'a [RuleSpec], rules: &'a [RuleSpec]) -> Vec<&'a RuleSpec> {
        let mut all: Vec<&RuleSpec> = protect.iter().collect();
        all.extend(rules.iter().filter(|r| r.kind == Kind::Partition));
        all.extend(rules.iter().filter(|r| r.kind == Kind::Rule));
        all
    }

    #[test]
    fn a_grudge_becomes_ingress_partitions_that_compile_and_cut() {
        let c = cluster();
        let gr = Topology::Halves.grudge(&c.names(), 0).unwrap();
        let per = partition("split", &c, &gr, &Actions::default(), Conn::Any).unwrap();
        let names = |n: &str| per[n].iter().map(|r| r.name.as_str()).collect::<Vec<_>>();
        assert_eq!(
            names("n1"),
            ["split.from-n3.v4", "split.from-n3.v6", "split.from-n4.v4"]
        );
        assert_eq!(
            names("n3"),
            ["split.from-n1.v4", "split.from-n1.v6", "split.from-n2.v4"]
        );
        for rules in per.values() {
            for r in rules {
                assert_eq!(
                    (r.kind, r.dir, r.oneway),
                    (Kind::Partition, Direction::Ingress, true)
                );
                r.validate().unwrap();
            }
        }
        let protect = protections(&c, &["192.0.2.9".parse().unwrap()], &literal_endpoints(&c));
        let rules = &per["n1"];
        let comp = compiled(&protect, rules);
        let ord = order(&protect, rules);
        let at_n1 = |src: &str, sport: u16, dport: u16| {
            verdict(
                &comp,
                &ord,
                pkt(src, "192.0.2.1", sport, dport, DIR_INGRESS),
            )
        };
        assert_eq!(at_n1("192.0.2.3", 40000, 5432), Some("split.from-n3.v4"));
        assert_eq!(at_n1("192.0.2.4", 40000, 5432), Some("split.from-n4.v4"));
        assert_eq!(at_n1("192.0.2.2", 40000, 5432), None);
        // The agent port on n1, from a cut node: protected, whatever the grudge.
        assert!(
            at_n1("192.0.2.3", 40000, 7070)
                .unwrap()
                .starts_with("control:192.0.2.1:7070/")
        );
        // The coordinator, outside the cluster: every port. No rule cuts it here, so no entry
        // wins (a protection counts only packets it saves from a rule).
        assert!(at_n1("192.0.2.9", 1, 2).is_none_or(|n| n.starts_with("coordinator:192.0.2.9/")));
        let v6 = verdict(
            &comp,
            &ord,
            pkt("2001:db8::3", "2001:db8::1", 1, 2, DIR_INGRESS),
        );
        assert_eq!(v6, Some("split.from-n3.v6"));
        // Egress is untouched: the receiver acts.
        let out = verdict(&comp, &ord, pkt("192.0.2.1", "192.0.2.3", 1, 2, DIR_EGRESS));
        assert_eq!(out, None);
    }

    #[test]
    fn protections_cover_the_endpoints_but_never_a_whole_node() {
        let c = cluster();
        let eps = literal_endpoints(&c);
        // n3 is a namespace, n4 names a host to resolve.
        assert_eq!(
            eps,
            [
                "192.0.2.1:7070".parse().unwrap(),
                "192.0.2.2:22".parse().unwrap()
            ]
        );
        let p = protections(&c, &["192.0.2.2".parse().unwrap()], &eps);
        assert!(p.iter().all(|r| r.kind == Kind::Protect));
        assert!(p.iter().all(|r| !r.sport.is_all() || !r.dport.is_all()));
        assert_eq!(p.len(), 8);
        let mut names: Vec<&str> = p.iter().map(|r| r.name.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), 8);
    }

    fn imp(from: &[&str], to: &[&str]) -> Impair {
        Impair {
            from: from.iter().map(|s| s.to_string()).collect(),
            to: to.iter().map(|s| s.to_string()).collect(),
            act: Actions::default(),
            traffic: Traffic::default(),
        }
    }

    #[test]
    fn impairments_split_between_receiver_and_sender() {
        let c = cluster();
        let mut i = imp(&["n1"], &["n2", "n3"]);
        i.act.drop = Prob(0.05);
        i.act.shape.delay = Some(Duration::from_millis(100));
        i.act.shape.rate = Some("10mbit".parse().unwrap());
        let per = impair("lossy", &c, &i).unwrap();
        let names = |n: &str| per[n].iter().map(|r| r.name.as_str()).collect::<Vec<_>>();
        assert_eq!(
            names("n1"),
            ["lossy.to-n2.v4", "lossy.to-n3.v4", "lossy.to-n3.v6"]
        );
        assert_eq!(names("n2"), ["lossy.from-n1.v4", "lossy.from-n1.v6"]);
        assert_eq!(names("n3"), ["lossy.from-n1.v4", "lossy.from-n1.v6"]);
        assert!(names("n4").is_empty());
        for r in &per["n1"] {
            assert_eq!(r.dir, Direction::Egress);
            assert_eq!(r.act.drop, Prob(0.0));
            assert!(r.act.shape.delay.is_some() && r.src.is_empty());
        }
        for r in &per["n2"] {
            assert_eq!((r.dir, r.act.drop), (Direction::Ingress, Prob(0.05)));
            assert!(!r.act.shape.is_some() && r.dst.is_empty());
        }
        for rules in per.values() {
            compiled(&[], rules);
        }
        let comp = compiled(&[], &per["n1"]);
        let ord = order(&[], &per["n1"]);
        let k = pkt("192.0.2.1", "192.0.2.3", 1, 2, DIR_EGRESS);
        assert_eq!(verdict(&comp, &ord, k), Some("lossy.to-n3.v4"));
    }

    /// A hold and late duplicates act at the sender's egress (its fq holds them); a plain
    /// duplicate and the drop stay at the receiver.
    #[test]
    fn holds_and_late_duplicates_go_to_the_sender() {
        let c = cluster();
        let mut i = imp(&["n1"], &["n2"]);
        i.act.drop = Prob(0.05);
        i.act.hold = Some(Duration::from_secs(2));
        i.act.duplicate = Prob(0.5);
        i.act.duplicate_delay = Some(Duration::from_millis(100));
        let per = impair("stall", &c, &i).unwrap();
        for r in &per["n1"] {
            assert_eq!(r.dir, Direction::Egress);
            assert_eq!(r.act.hold, Some(Duration::from_secs(2)));
            assert_eq!(r.act.duplicate, Prob(0.5));
            assert_eq!(r.act.duplicate_delay, Some(Duration::from_millis(100)));
            assert_eq!(r.act.drop, Prob(0.0));
        }
        for r in &per["n2"] {
            assert_eq!((r.dir, r.act.drop), (Direction::Ingress, Prob(0.05)));
            assert_eq!((r.act.hold, r.act.duplicate), (None, Prob(0.0)));
            assert_eq!(r.act.duplicate_delay, None);
        }
        i.act.duplicate_delay = None;
        let per = impair("stall", &c, &i).unwrap();
        assert!(per["n2"].iter().all(|r| r.act.duplicate == Prob(0.5)));
        assert!(per["n1"].iter().all(|r| r.act.duplicate == Prob(0.0)));
        i.act.duplicate = Prob(0.0);
        i.act.duplicate_delay = Some(Duration::from_millis(100));
        assert_eq!(
            impair("stall", &c, &i).unwrap_err().field,
            "duplicate_delay"
        );
    }

    #[test]
    fn impairments_refuse_what_cannot_work() {
        let c = cluster();
        let mut i = imp(&["n1"], &["n2"]);
        assert_eq!(impair("x", &c, &i).unwrap_err().field, "impair");
        i.act.drop = Prob(1.0);
        assert!(impair("x", &c, &i).is_ok());
        i.act.shape.jitter = Some(Duration::from_millis(5));
        assert_eq!(impair("x", &c, &i).unwrap_err().field, "jitter");
        i.act.shape.jitter = None;
        i.to = vec!["n2".into(), "n9".into()];
        let e = impair("x", &c, &i).unwrap_err();
        assert_eq!(e.field, "to[1]");
        assert!(e.msg.contains("'n9'"), "{e}");
        i.to = vec!["n2".into(), "n2".into()];
        assert_eq!(impair("x", &c, &i).unwrap_err().field, "to[1]");
        i.to = vec![];
        assert_eq!(impair("x", &c, &i).unwrap_err().field, "to");
        i.to = vec!["n1".into()];
        assert_eq!(impair("x", &c, &i).unwrap_err().field, "to");
        // All to all: every ordered pair but the self-pairs.
        let mut all = imp(&["n1", "n2", "n3"], &["n1", "n2", "n3"]);
        all.act.duplicate = Prob(0.1);
        let per = impair("dup", &c, &all).unwrap();
        assert_eq!(per["n2"].len(), 4); // from n1 and from n3, each v4 and v6
        let long = "x".repeat(60);
        assert_eq!(impair(&long, &c, &all).unwrap_err().field, "name");
    }

    #[test]
    fn a_rejecting_partition_and_impairment_answer_at_the_receiver() {
        let c = cluster();
        let gr = Topology::Isolate(Some("n2".into()))
            .grudge(&c.names(), 0)
            .unwrap();
        let reply = Actions {
            reject: Some(crate::spec::RejectKind::IcmpPort),
            ..Actions::default()
        };
        let part = partition("iso", &c, &gr, &reply, Conn::Any).unwrap();
        assert!(
            part.values()
                .flatten()
                .all(|r| r.act.reject == reply.reject && r.dir == Direction::Ingress)
        );
        assert!(!part.values().flatten().collect::<Vec<_>>().is_empty());
        let silent = partition("iso", &c, &gr, &Actions::default(), Conn::Any).unwrap();
        assert!(silent.values().flatten().all(|r| r.act.reject.is_none()));
        let mut i = imp(&["n1"], &["n2"]);
        i.act.reject = Some(crate::spec::RejectKind::TcpReset);
        let per = impair("rej", &c, &i).unwrap();
        assert!(
            per["n2"]
                .iter()
                .all(|r| r.act.reject.is_some() && r.dir == Direction::Ingress)
        );
        assert!(per["n1"].iter().all(|r| r.act.reject.is_none()));
    }

    #[test]
    fn corruption_acts_at_the_senders_egress_and_loss_at_the_receiver() {
        let c = cluster();
        let mut i = imp(&["n1"], &["n2"]);
        i.act.drop = Prob(0.1);
        i.act.corrupt = Prob(0.2);
        i.act.corrupt_checksum = Some(crate::spec::CorruptChecksum::Good);
        let per = impair("cor", &c, &i).unwrap();
        assert!(!per["n1"].is_empty() && !per["n2"].is_empty());
        assert!(per["n1"].iter().all(|r| r.dir == Direction::Egress
            && r.act.corrupt == Prob(0.2)
            && r.act.corrupt_checksum == i.act.corrupt_checksum
            && r.act.drop == Prob(0.0)));
        assert!(per["n2"].iter().all(|r| r.dir == Direction::Ingress
            && !r.act.corrupts()
            && r.act.corrupt_checksum.is_none()
            && r.act.drop == Prob(0.1)));
    }

    #[test]
    fn node_plans_gather_everything_in_file_order() {
        let c = cluster();
        let gr = Topology::Isolate(Some("n2".into()))
            .grudge(&c.names(), 0)
            .unwrap();
        let part = partition("iso", &c, &gr, &Actions::default(), Conn::Any).unwrap();
        let mut i = imp(&["n3"], &["n4"]);
        i.act.drop = Prob(0.5);
        let lossy = impair("lossy", &c, &i).unwrap();
        let p = protections(&c, &[], &literal_endpoints(&c));
        let plans = plans(&c, &p, &[part, lossy]);
        assert_eq!(
            plans.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(),
            c.names()
        );
        let n4 = &plans[3];
        assert_eq!(
            n4.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["iso.from-n2.v4", "lossy.from-n3.v4", "lossy.from-n3.v6"]
        );
        assert_eq!(n4.ifaces, ["eth1"]);
        assert_eq!(n4.protect.len(), p.len());
        for plan in &plans {
            compiled(&plan.protect, &plan.rules);
        }
    }
}
