//! Faults verified on the wire (issue #16, point 4) on five namespaces over the netns transport:
//! `partition halves --verify` reports exactly the grudge, one way per ordered pair and
//! family; a node healed behind the coordinator's back makes `cluster verify` exit 3 naming the
//! pairs it opened; an impairment's loss is checked with its Wilson interval, and found wrong
//! once a receiver's rule is deleted; one on a UDP port is probed with UDP on that port; a
//! scenario step with `verify = true` writes its `verify` line. Needs root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    collections::BTreeSet,
    process::Output,
    time::{Duration, Instant},
};

use common::*;
use netfault_lab::cluster::{self, Grudge};

/// Verifying takes 5 s (3 s of probes, 2 s listening for the last); an apply a few more.
const LIMIT: Duration = Duration::from_secs(60);

fn cluster_lab() -> (Lab, Netfault, Vec<Host>, TempFile) {
    let (mut lab, nf, hosts) = star(5);
    detach_on_teardown(&mut lab, &nf, &hosts);
    let file = temp_file("toml", &cluster::netns_cluster_text(&hosts));
    (lab, nf, hosts, file)
}

fn cluster_cmd(file: &TempFile, args: &[&str]) -> Output {
    run_cluster(None, &file.0, args, LIMIT)
}

fn json_of(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (from, to, family) of the pairs `doc` (a `verify` document) says mismatched, and of every
/// pair judged.
fn pairs(doc: &serde_json::Value, which: Option<bool>) -> BTreeSet<(String, String, String)> {
    doc["faults"][0]["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| which.is_none_or(|ok| p["ok"] == ok))
        .map(|p| {
            (
                p["from"].as_str().unwrap().to_owned(),
                p["to"].as_str().unwrap().to_owned(),
                p["family"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn triple(a: &str, b: &str, f: &str) -> (String, String, String) {
    (a.into(), b.into(), f.into())
}

/// Both round trips of `a` and `b` (a probing b, b probing a) in each of `families`.
fn round_trips(a: &str, b: &str, families: &[&str]) -> BTreeSet<(String, String, String)> {
    families
        .iter()
        .flat_map(|f| [triple(a, b, f), triple(b, a, f)])
        .collect()
}

#[test]
fn a_partition_verifies_as_its_grudge_and_a_node_healed_behind_its_back_exits_3() {
    let started = Instant::now();
    let (_lab, nf, hosts, file) = cluster_lab();
    let events = temp_path("jsonl");
    let out = cluster_cmd(
        &file,
        &[
            "partition",
            "halves",
            "--name",
            "split",
            "--ttl",
            "2m",
            "--json",
            "--verify",
            "--events",
            events.arg(),
        ],
    );
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    let grudge: Grudge = serde_json::from_value(doc["grudge"].clone()).unwrap();
    let v = &doc["verify"];
    assert_eq!(v["ok"], true, "{v:#}");
    let f = &v["faults"][0];
    assert_eq!(
        (f["name"].as_str(), f["fault"].as_str()),
        (Some("split"), Some("partition"))
    );
    // Every ordered pair of the 5 nodes, in both families, judged one way: exactly the grudge.
    assert_eq!(f["checked"], 40, "{f:#}");
    assert_eq!(f["mismatches"], 0);
    for p in f["pairs"].as_array().unwrap() {
        let (from, to) = (p["from"].as_str().unwrap(), p["to"].as_str().unwrap());
        let cut = grudge[to].contains(from);
        let want = if cut { "cut" } else { "open" };
        assert_eq!(p["probe"], "one-way");
        assert_eq!(p["configured"], want, "{p}");
        assert_eq!(p["observed"], want, "{p}");
        assert_eq!(p["ok"], true, "{p}");
        let (sent, heard) = (p["sent"].as_u64().unwrap(), p["received"].as_u64().unwrap());
        assert_eq!(sent, 150, "{p}");
        if cut {
            assert_eq!(heard, 0, "{p}");
        } else {
            // Neighbours were resolved before: nothing to recover from.
            assert!(heard >= 140, "{p}");
        }
    }
    assert!(f["not_verifiable"].as_array().unwrap().is_empty(), "{f:#}");

    // n3 (hosts[2]) loses its share behind the coordinator's back: the local CLI heals it.
    run(&nf, &hosts[2], &["heal"]);
    assert!(partition_entries(&nf, &hosts[2].ns).is_empty());
    let out = cluster_cmd(&file, &["verify", "--json", "--events", events.arg()]);
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(3), "{doc:#}");
    assert_eq!(doc["ok"], false);
    let bad = pairs(&doc, Some(false));
    // n1 and n2 now reach n3 (their requests arrive; n3's replies are still dropped at them).
    // Over IPv4 always; over IPv6 while their neighbour entry for n3 is still usable (n3's
    // advertisements are dropped at them, so a fresh resolution fails and the direction looks
    // cut, as configured).
    let must: BTreeSet<_> = [triple("n1", "n3", "v4"), triple("n2", "n3", "v4")].into();
    let may: BTreeSet<_> = [triple("n1", "n3", "v6"), triple("n2", "n3", "v6")].into();
    assert!(must.is_subset(&bad), "{bad:?}");
    assert!(bad.difference(&must).all(|p| may.contains(p)), "{bad:?}");
    // The text names the pairs too.
    let out = cluster_cmd(&file, &["verify", "split"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verify partition split: MISMATCH"), "{text}");
    assert!(
        text.contains("MISMATCH n1 -> n3 (v4, one-way): configured cut, observed open"),
        "{text}"
    );
    // One `verify` line per verification, the last one naming the pairs.
    let lines = event_log(&events.0);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["phase"] == "verify" && l["node"].is_null())
    );
    assert_eq!(
        (lines[0]["ok"].as_bool(), lines[1]["ok"].as_bool()),
        (Some(true), Some(false))
    );
    let named: BTreeSet<_> = lines[1]["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            triple(
                m["from"].as_str().unwrap(),
                m["to"].as_str().unwrap(),
                m["family"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(named, bad);

    // Healed: the record is empty, nothing to verify.
    ok_stdout(cluster_cmd(&file, &["heal"]), "heal");
    let out = ok_stdout(cluster_cmd(&file, &["verify"]), "verify after heal");
    assert!(out.contains("nothing to verify"), "{out}");
    // A name the record does not hold is bad input.
    let out = cluster_cmd(&file, &["verify", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME[0]"));
    eprintln!("partition verified in {:?}", started.elapsed());
}

#[test]
fn an_impairment_loss_is_verified_with_its_wilson_interval() {
    let (_lab, nf, hosts, file) = cluster_lab();
    let out = cluster_cmd(
        &file,
        &[
            "impair", "--from", "n1", "--to", "n2", "--drop", "30%", "--name", "lossy", "--ttl",
            "2m", "--json", "--verify",
        ],
    );
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    let v = &doc["verify"];
    assert_eq!(v["ok"], true, "{v:#}");
    // n1's probes of n2 lose their requests, n2's probes of n1 their replies: both round
    // trips lose 30 %, in each family.
    let all = pairs(v, None);
    let want = round_trips("n1", "n2", &["v4", "v6"]);
    assert_eq!(all, want);
    for p in v["faults"][0]["pairs"].as_array().unwrap() {
        let l = &p["loss"];
        let (lo, hi) = (
            l["interval"][0].as_f64().unwrap(),
            l["interval"][1].as_f64().unwrap(),
        );
        assert!(
            (l["configured"].as_f64().unwrap() - 0.3).abs() < 1e-9,
            "{p}"
        );
        assert!(lo <= 0.3 && 0.3 <= hi && lo > 0.0 && hi < 1.0, "{p}");
        assert_eq!(
            (p["ok"].as_bool(), p["probe"].as_str()),
            (Some(true), Some("round-trip"))
        );
    }
    // The receiver's IPv4 entry deleted behind the coordinator's back: no loss on v4.
    run(&nf, &hosts[1], &["rule", "del", "lossy.from-n1.v4"]);
    let out = cluster_cmd(&file, &["verify", "lossy", "--json"]);
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(3), "{doc:#}");
    let bad = pairs(&doc, Some(false));
    assert_eq!(bad, round_trips("n1", "n2", &["v4"]), "{doc:#}");
    ok_stdout(cluster_cmd(&file, &["heal", "lossy"]), "heal");
}

/// An impairment of UDP port 9000 is verified with UDP probes from port 9000 to port 9000
/// (each node echoing the others'), which meet it as an echo request meets a rule on every
/// port: its loss shows in both round trips of the pair; ICMP echo, which it does not meet,
/// crosses untouched; the receiver's IPv4 entry deleted, `cluster verify` exits 3 naming
/// the v4 round trips.
#[test]
fn a_udp_impairment_is_verified_with_udp_probes_of_its_port() {
    let (_lab, nf, hosts, file) = cluster_lab();
    let out = cluster_cmd(
        &file,
        &[
            "impair", "--from", "n1", "--to", "n2", "--proto", "udp", "--dport", "9000", "--drop",
            "30%", "--name", "dns", "--ttl", "2m", "--json", "--verify",
        ],
    );
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    let v = &doc["verify"];
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["faults"][0]["probe"], "udp:9000", "{v:#}");
    let want = round_trips("n1", "n2", &["v4", "v6"]);
    assert_eq!(pairs(v, Some(true)), want, "{v:#}");
    for p in v["faults"][0]["pairs"].as_array().unwrap() {
        let l = &p["loss"];
        let observed = l["observed"].as_f64().unwrap();
        // 150 probes a pair: 30 % lost lies well inside (0.15, 0.45) at alpha 1e-4.
        assert!(observed > 0.15 && observed < 0.45, "{p}");
    }
    // ICMP echo between the same nodes meets no rule.
    let out = cluster_cmd(
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
    let doc = json_of(&out);
    assert_eq!(doc["probe"], "icmp", "{doc:#}");
    for n in doc["nodes"].as_array().unwrap() {
        for p in n["pairs"].as_array().unwrap() {
            assert_eq!(p["report"]["samples"], 50, "{p}");
        }
    }
    run(&nf, &hosts[1], &["rule", "del", "dns.from-n1.v4"]);
    let out = cluster_cmd(&file, &["verify", "dns", "--json"]);
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(3), "{doc:#}");
    assert_eq!(
        pairs(&doc, Some(false)),
        round_trips("n1", "n2", &["v4"]),
        "{doc:#}"
    );
    ok_stdout(cluster_cmd(&file, &["heal", "dns"]), "heal");
}

#[test]
fn a_scenario_step_with_verify_writes_its_verdict() {
    let (_lab, _nf, _hosts, file) = cluster_lab();
    let sc = temp_file(
        "toml",
        r#"
lease = "5s"

[[step]]
name = "iso"
at = "0s"
partition = "isolate:n2"
for = "6s"
verify = true
"#,
    );
    let events = temp_path("jsonl");
    let out = cluster_cmd(&file, &["run", sc.arg(), "--events", events.arg()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = event_log(&events.0);
    let v: Vec<&serde_json::Value> = lines.iter().filter(|l| l["phase"] == "verify").collect();
    assert_eq!(v.len(), 1, "{lines:?}");
    assert_eq!(
        (
            v[0]["ok"].as_bool(),
            v[0]["step"].as_u64(),
            v[0]["checked"].as_u64()
        ),
        (Some(true), Some(0), Some(40)),
        "{}",
        v[0]
    );
    let fin = lines.last().unwrap();
    assert_eq!(
        (fin["phase"].as_str(), fin["verified"].as_u64()),
        (Some("finish"), Some(1))
    );
    // A step too short to verify is refused before anything runs.
    let short = temp_file(
        "toml",
        "[[step]]\nat = \"0s\"\npartition = \"halves\"\nfor = \"2s\"\nverify = true\n",
    );
    let out = cluster_cmd(&file, &["run", short.arg()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("step[0].verify"));
}
