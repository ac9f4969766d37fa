//! `netfault cluster` over the netns transport: five hosts on a bridge, the coordinator a child
//! `netfault` process in the host namespace, every topology checked on the wire (the full 5×5
//! UDP reachability matrix, both families) against the grudge it printed. Needs root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Output,
    time::{Duration, Instant},
};

use common::*;
use netfault_lab::cluster::{self, Grudge};

/// `[[node]]` n1..: each host's namespace, both addresses, its interface. `netns[i]`
/// overrides a node's namespace name.
fn cluster_text(hosts: &[Host], netns: &BTreeMap<usize, String>) -> String {
    cluster::cluster_text(hosts, |i, h, lines| {
        lines.push(format!("netns = \"{}\"", netns.get(&i).unwrap_or(&h.ns)));
    })
}

/// `netfault cluster --cluster FILE args...` from the host namespace, bounded.
fn cluster(file: &TempFile, args: &[&str]) -> Output {
    run_cluster(None, &file.0, args, Duration::from_secs(30))
}

fn cluster_ok(file: &TempFile, args: &[&str]) -> String {
    run_cluster_ok(None, &file.0, args, Duration::from_secs(30))
}

/// The lab detaches every node on teardown (the coordinator attached them).
fn cluster_lab() -> (Lab, Netfault, Vec<Host>) {
    let (mut lab, nf, hosts) = star(5);
    detach_on_teardown(&mut lab, &nf, &hosts);
    (lab, nf, hosts)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Each topology's defining property, on the grudge it printed.
fn check_property(topology: &str, g: &Grudge) {
    let all: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
    let others =
        |n: &str| -> BTreeSet<String> { all.iter().filter(|m| *m != n).cloned().collect() };
    let visible = |n: &str| -> BTreeSet<String> {
        all.iter().filter(|m| !g[n].contains(*m)).cloned().collect()
    };
    assert_eq!(g.len(), 5, "{topology}: every node is a key");
    match topology {
        "halves" | "n1,n2|n3,n4,n5" => {
            for n in ["n1", "n2"] {
                assert_eq!(g[n], set(&["n3", "n4", "n5"]), "{topology}");
            }
            for n in ["n3", "n4", "n5"] {
                assert_eq!(g[n], set(&["n1", "n2"]), "{topology}");
            }
        }
        "isolate:n2" => {
            assert_eq!(g["n2"], others("n2"));
            for n in ["n1", "n3", "n4", "n5"] {
                assert_eq!(g[n], set(&["n2"]));
            }
        }
        "majorities-ring" => {
            let views: BTreeSet<BTreeSet<String>> = all.iter().map(|n| visible(n)).collect();
            assert_eq!(views.len(), 5, "no two nodes see the same majority: {g:?}");
            for n in &all {
                assert!(visible(n).len() >= 3, "{n} sees a majority: {g:?}");
            }
        }
        "bridge" => {
            assert!(g["n3"].is_empty(), "the bridge sees everyone: {g:?}");
            for n in ["n1", "n2"] {
                assert_eq!(g[n], set(&["n4", "n5"]));
            }
            for n in ["n4", "n5"] {
                assert_eq!(g[n], set(&["n1", "n2"]));
            }
        }
        "complete" => {
            for n in &all {
                assert_eq!(g[n], others(n));
            }
        }
        "minority-third" => {
            // max(1, ⌈5/3⌉ − 1) = 1 node alone.
            let alone: Vec<&String> = all.iter().filter(|n| g[*n].len() == 4).collect();
            assert_eq!(alone.len(), 1, "{g:?}");
            for n in all.iter().filter(|n| *n != alone[0]) {
                assert_eq!(g[n], set(&[alone[0].as_str()]), "{g:?}");
            }
        }
        t => panic!("no property for {t}"),
    }
}

#[test]
fn every_topology_cuts_the_wire_as_its_grudge_says_and_heal_restores() {
    let started = Instant::now();
    let (_lab, nf, hosts) = cluster_lab();
    let file = temp_file("toml", &cluster_text(&hosts, &BTreeMap::new()));
    let full = cluster::full(5);
    assert_matrix(&hosts, &full, "before any partition");
    let cases: [(&str, &[&str]); 7] = [
        ("halves", &[]),
        ("isolate:n2", &[]),
        ("majorities-ring", &["--seed", "7"]),
        ("bridge", &[]),
        ("complete", &[]),
        ("minority-third", &["--seed", "3"]),
        ("n1,n2|n3,n4,n5", &[]),
    ];
    for (topology, extra) in cases {
        let mut args = vec!["partition", topology, "--json", "--ttl", "2m"];
        args.extend_from_slice(extra);
        let doc: serde_json::Value = serde_json::from_str(&cluster_ok(&file, &args)).unwrap();
        let keys: BTreeSet<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            set(&["name", "topology", "grudge"])
                .iter()
                .map(String::as_str)
                .collect()
        );
        let grudge: Grudge = serde_json::from_value(doc["grudge"].clone()).unwrap();
        check_property(topology, &grudge);
        let name = doc["name"].as_str().unwrap();
        // Each node holds exactly its share: one entry per dropped peer and family.
        for (i, h) in hosts.iter().enumerate() {
            assert_eq!(
                partition_entries(&nf, &h.ns),
                cluster::share(&grudge, i, name),
                "{topology}: entries on n{}",
                i + 1
            );
        }
        assert_matrix(&hosts, &cluster::expected(&grudge, 5).unwrap(), topology);
        if topology == "halves" {
            let st: serde_json::Value =
                serde_json::from_str(&cluster_ok(&file, &["status", "--json"])).unwrap();
            assert_halves_status(&st, &hosts, "netns");
        }
        let healed = cluster_ok(&file, &["heal"]);
        assert!(healed.starts_with("healed "), "{healed}");
        for h in &hosts {
            let left: Vec<String> = nf
                .rule_names(&h.ns)
                .unwrap()
                .into_iter()
                .filter(|r| r.contains(".from-"))
                .collect();
            assert!(
                left.is_empty(),
                "{topology}: left after heal on {}: {left:?}",
                h.ns
            );
        }
        assert_matrix_heals(&hosts, &full, &format!("{topology} healed"));
    }
    eprintln!("all topologies in {:?}", started.elapsed());
}

/// Bad input exits 2 naming the key path and touches no node; a node that cannot be reached
/// fails the run (exit 1, naming it) and the others are left with nothing.
#[test]
fn bad_input_changes_nothing_and_a_failed_node_rolls_everything_back() {
    let (_lab, nf, hosts) = cluster_lab();
    let good = cluster_text(&hosts, &BTreeMap::new());
    let untouched = |when: &str| {
        for h in &hosts {
            for d in netfault_dirs(&h.ns) {
                assert!(!d.exists(), "{when}: {} exists", d.display());
            }
        }
    };
    // One more line in node[1]'s table.
    let with = |line: &str| {
        let mut parts: Vec<String> = good.split("[[node]]\n").map(str::to_owned).collect();
        parts[2].insert_str(0, &format!("{line}\n"));
        parts.join("[[node]]\n")
    };
    let bad_files = [
        (with("colour = \"red\""), "node[1].colour"),
        (with("ssh = \"root@192.0.2.2\""), "node[1].netns"),
    ];
    for (text, key) in &bad_files {
        let f = temp_file("toml", text);
        let out = cluster(&f, &["partition", "halves"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {err}");
        assert!(err.contains(key), "{key}: {err}");
        untouched(key);
    }
    let f = temp_file("toml", &good);
    for (args, what) in [
        (&["partition", "triangles"][..], "unknown topology"),
        (&["partition", "isolate:n9"][..], "'n9'"),
        (&["partition", "n1,n2|n3"][..], "'n4'"),
    ] {
        let out = cluster(&f, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("TOPOLOGY") && err.contains(what),
            "{args:?}: {err}"
        );
        untouched(what);
    }
    // An agent node whose token file cannot be read: fails naming it, and the netns nodes'
    // changes are rolled back (tests/agent.rs drives real agents).
    let agent = good.replacen(
        &format!("netns = \"{}\"", hosts[2].ns),
        "agent = \"http://192.0.2.3:7070\"\ntoken_file = \"/nonexistent\"",
        1,
    );
    let out = cluster(
        &temp_file("toml", &agent),
        &["partition", "halves", "--name", "noagent"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("node n3") && err.contains("token file /nonexistent"),
        "{err}"
    );
    for h in &hosts {
        if let Ok(names) = nf.rule_names(&h.ns) {
            assert!(
                !names.iter().any(|n| n.starts_with("noagent.")),
                "{}: {names:?}; {err}",
                h.ns
            );
        }
    }

    // n5's namespace does not exist: n1..n4 take their entries, then give them back.
    let missing = format!("{PREFIX}-{}-missing", std::process::id());
    let text = cluster_text(&hosts, &BTreeMap::from([(4, missing.clone())]));
    let f = temp_file("toml", &text);
    let out = cluster(&f, &["partition", "complete", "--name", "doomed"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("node n5") && err.contains(&missing), "{err}");
    for h in &hosts[..4] {
        let names = nf.rule_names(&h.ns).unwrap();
        assert!(
            !names.iter().any(|n| n.starts_with("doomed.")),
            "{}: {names:?}; {err}",
            h.ns
        );
    }
    // Status names the unreachable node and still reports the others.
    let st: serde_json::Value =
        serde_json::from_str(&cluster_ok(&f, &["status", "--json"])).unwrap();
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes[4]["reachable"], false, "{st}");
    assert!(nodes[..4].iter().all(|n| n["reachable"] == true), "{st}");
}

/// A process in each of the given namespaces, killed on drop: what a container is to its
/// namespace.
struct Sleepers(Vec<std::process::Child>);

impl Sleepers {
    fn new(hosts: &[&Host]) -> Sleepers {
        Sleepers(
            hosts
                .iter()
                .map(|h| {
                    netfault_lab::lab::run_in(&h.ns, || {
                        std::process::Command::new("sleep").arg("300").spawn()
                    })
                    .unwrap()
                    .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Nodes reached through a process in their namespace (`pid`, and `pidfile` read at each
/// operation) are cut and healed on the wire like named ones, and share state with `--netns`.
#[test]
fn nodes_reached_by_pid_and_pidfile_are_cut_and_healed() {
    let (_lab, nf, hosts) = cluster_lab();
    let procs = Sleepers::new(&[&hosts[0], &hosts[1]]);
    let pidfile = temp_file("pid", &format!("{}\n", procs.0[1].id()));
    let pid0 = procs.0[0].id();
    let text = cluster::cluster_text(&hosts, |i, h, lines| {
        lines.push(match i {
            0 => format!("pid = {pid0}"),
            1 => format!("pidfile = \"{}\"", pidfile.arg()),
            _ => format!("netns = \"{}\"", h.ns),
        });
    });
    let file = temp_file("toml", &text);
    let doc: serde_json::Value = serde_json::from_str(&cluster_ok(
        &file,
        &["partition", "halves", "--json", "--ttl", "2m"],
    ))
    .unwrap();
    let grudge: Grudge = serde_json::from_value(doc["grudge"].clone()).unwrap();
    check_property("halves", &grudge);
    // The entries are in the namespaces' own state, as `--netns` reads it.
    let name = doc["name"].as_str().unwrap();
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(
            partition_entries(&nf, &h.ns),
            cluster::share(&grudge, i, name),
            "entries on n{}",
            i + 1
        );
    }
    assert_matrix(
        &hosts,
        &cluster::expected(&grudge, 5).unwrap(),
        "halves by pid",
    );
    cluster_ok(&file, &["heal"]);
    assert_matrix_heals(&hosts, &cluster::full(5), "healed by pid");
    // A pidfile naming no process fails the run on that node (exit 1, as any node that cannot
    // be reached), naming the file and the process.
    let gone = temp_file("pid", "2147483646\n");
    let text = cluster::cluster_text(&hosts[..2], |i, h, lines| {
        lines.push(match i {
            0 => format!("pidfile = \"{}\"", gone.arg()),
            _ => format!("netns = \"{}\"", h.ns),
        });
    });
    let bad = temp_file("toml", &text);
    let o = cluster(&bad, &["partition", "halves"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("n1") && err.contains(gone.arg()) && err.contains("2147483646 is gone"),
        "{err}"
    );
}

/// `cluster measure --probe udp:PORT --what-if FILE`: every node probes every other node's
/// closed port 9000, each probe answered by an ICMP port unreachable (the nodes' ICMP error
/// limits lifted: see README), and each pair's report gets the file's 10 ms folded into its
/// histogram. Bad probe kinds exit 2 naming `--probe`.
#[test]
fn measure_probes_udp_ports_and_folds_a_what_if_into_each_pair() {
    let (_lab, _nf, hosts) = cluster_lab();
    hosts.iter().for_each(unlimit_icmp_errors);
    let file = temp_file("toml", &cluster_text(&hosts, &BTreeMap::new()));
    let rules = temp_file(
        "toml",
        "[[rule]]\nname = \"slow\"\nall = true\ndelay = \"10ms\"\n",
    );
    let out = cluster_ok(
        &file,
        &[
            "measure",
            "--probe",
            "udp:9000",
            "--what-if",
            rules.arg(),
            "--duration",
            "1s",
            "--interval",
            "20ms",
            "--json",
        ],
    );
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_measured(&doc, "netns", 50, &hosts);
    for n in doc["nodes"].as_array().unwrap() {
        for p in n["pairs"].as_array().unwrap() {
            let r = &p["report"];
            assert_eq!(r["answers"]["icmp_unreachable"], r["samples"], "{p}");
            assert_eq!(r["answers"]["udp"], 0, "{p}");
            let w = &r["what_if"];
            assert_eq!(w["file"], rules.arg(), "{p}");
            // A fixed 10 ms on each round trip, folded into buckets under 1 % wide taken at
            // their middle: the p50 moves by 10 ms within half a bucket.
            let (p50, folded) = (
                r["rtt_us"]["p50"].as_f64().unwrap(),
                w["rtt_us"]["p50"].as_f64().unwrap(),
            );
            assert!(
                (folded - p50 - 10_000.0).abs() <= 0.005 * p50 + 1.0,
                "p50 {p50} µs, under the file {folded} µs: {p}"
            );
        }
    }
    for bad in ["udp:0", "udp:x", "tcp:1"] {
        let o = cluster(&file, &["measure", "--probe", bad, "--duration", "1s"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--probe"), "{bad}: {err}");
    }
}

/// `cluster measure --passive`: no probe is sent; each node watches its own TCP traffic to the
/// others. With transfers from n1 to n2 only, n1 reports round trips to n2's address (seen in
/// TCP timestamps or handshakes, no loss: nothing was sent), n2 to n1's, and the nodes that
/// exchanged nothing report nothing. A passive file is no `--baseline` for `verify`, and
/// `--passive` with `--probe` is refused.
#[test]
fn measure_passive_reports_the_tcp_traffic_each_node_saw() {
    let (_lab, _nf, hosts) = cluster_lab();
    let file = temp_file("toml", &cluster_text(&hosts, &BTreeMap::new()));
    let echo = TcpEcho::start(&hosts[1].ns, hosts[1].sock(false, 5004)).unwrap();
    let traffic = Transfers::start(&hosts[0], echo.addr, Duration::from_secs(30));
    let out = cluster_ok(
        &file,
        &["measure", "--passive", "--duration", "3s", "--json"],
    );
    assert!(traffic.stop() > 0, "no transfer while the nodes watched");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["passive"], true, "{doc}");
    let seen = |node: &str| -> Vec<(String, String)> {
        let n = doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .unwrap();
        assert!(n["error"].is_null(), "{n}");
        n["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let r = &p["report"];
                assert!(
                    r["loss"].is_null() && r["samples"].as_u64().unwrap() > 0,
                    "{p}"
                );
                (
                    p["to"].as_str().unwrap().to_owned(),
                    p["addr"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let n1 = seen("n1");
    assert!(!n1.is_empty(), "{doc}");
    assert!(
        n1.iter()
            .all(|(to, addr)| to == "n2" && *addr == hosts[1].v4.to_string()),
        "{doc}"
    );
    assert!(
        seen("n2")
            .iter()
            .all(|(to, addr)| to == "n1" && *addr == hosts[0].v4.to_string()),
        "{doc}"
    );
    for n in ["n3", "n4", "n5"] {
        assert!(seen(n).is_empty(), "{n}: {doc}");
    }
    let passive = temp_file("json", &out);
    let o = cluster(&file, &["verify", "--baseline", passive.arg()]);
    let err = String::from_utf8_lossy(&o.stderr);
    // No live fault: nothing to verify, but the baseline is read first.
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--baseline") && err.contains("passive"),
        "{err}"
    );
    let o = cluster(&file, &["measure", "--passive", "--probe", "udp:9"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `cluster measure`: every node probes every other node's two addresses at once; the matrix
/// is complete and clean on a healthy cluster, and under `halves` (n1,n2 | n3,n4,n5) exactly
/// the cut pairs lose every probe, in both families.
#[test]
fn measure_gives_the_whole_matrix_and_shows_a_partition() {
    let (_lab, _nf, hosts) = cluster_lab();
    let file = temp_file("toml", &cluster_text(&hosts, &BTreeMap::new()));
    let measure = || -> serde_json::Value {
        let out = cluster_ok(
            &file,
            &[
                "measure",
                "--duration",
                "1s",
                "--interval",
                "20ms",
                "--json",
            ],
        );
        serde_json::from_str(&out).unwrap()
    };
    // (from, to) -> samples of each of `to`'s two addresses.
    let matrix = |doc: &serde_json::Value| -> BTreeMap<(String, String), Vec<u64>> {
        let mut m: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        for n in doc["nodes"].as_array().unwrap() {
            assert!(n["error"].is_null(), "{n}");
            for p in n["pairs"].as_array().unwrap() {
                let key = (
                    n["node"].as_str().unwrap().to_owned(),
                    p["to"].as_str().unwrap().to_owned(),
                );
                m.entry(key)
                    .or_default()
                    .push(p["report"]["samples"].as_u64().unwrap());
            }
        }
        m
    };
    assert_measured(&measure(), "netns", 50, &hosts);
    let doc: serde_json::Value = serde_json::from_str(&cluster_ok(
        &file,
        &["partition", "n1,n2|n3,n4,n5", "--json", "--ttl", "2m"],
    ))
    .unwrap();
    assert!(doc["grudge"].is_object());
    let side = |n: &str| usize::from(n == "n1" || n == "n2");
    // Cut pairs answer nothing, exactly; the others are not cut (a probe the lab's wire lost
    // under load aside: see `assert_measured`).
    for ((from, to), samples) in matrix(&measure()) {
        if side(&from) == side(&to) {
            assert!(
                samples.iter().all(|s| *s >= 50 - ENV_LOSS),
                "{from} -> {to} under the partition: {samples:?}"
            );
        } else {
            assert_eq!(samples, [0, 0], "{from} -> {to} under the partition");
        }
    }
    cluster_ok(&file, &["heal"]);
}
