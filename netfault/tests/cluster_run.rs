//! `netfault cluster impair` and `cluster run` over the netns transport: five hosts on a bridge,
//! the coordinator a child `netfault` process in the host namespace (the control side), every
//! effect checked on the wire (the 5×5 UDP matrix, both families). Needs root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Child, Command, Output},
    time::{Duration, Instant, SystemTime},
};

use common::*;
use netfault_lab::{cluster, lab::output_within};
use serde_json::Value;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn command(file: &TempFile, args: &[&str]) -> Command {
    cluster::cluster_command(Path::new(env!("CARGO_BIN_EXE_netfault")), &file.0, args)
}

fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    output_within(&mut child, limit).unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// `netfault cluster --cluster FILE args...` from the host namespace, bounded.
fn cluster(file: &TempFile, args: &[&str]) -> Output {
    run_cluster(None, &file.0, args, Duration::from_secs(60))
}

fn cluster_ok(file: &TempFile, args: &[&str]) -> String {
    run_cluster_ok(None, &file.0, args, Duration::from_secs(60))
}

/// Five hosts, each attached beforehand (one at a time: loading the programs is the slow part
/// on a busy machine, and the coordinator's 10 s per node is for changes, not for that). The
/// lab detaches every node on teardown. With `attached` false, nothing is attached (and a
/// node that gets attached anyway is still detached on teardown).
fn cluster_lab_with(attached: bool) -> (Serial, Lab, Netfault, Vec<Host>) {
    // One cluster at a time: the timed checks (lease, flapping) should not share two cores
    // with four other five-node labs. Held until after the lab is gone (dropped last).
    let guard = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (mut lab, nf, hosts) = star(5);
    if attached {
        for h in &hosts {
            attach(&mut lab, &nf, h);
        }
    } else {
        detach_on_teardown(&mut lab, &nf, &hosts);
    }
    (guard, lab, nf, hosts)
}

type Serial = std::sync::MutexGuard<'static, ()>;

fn cluster_lab() -> (Serial, Lab, Netfault, Vec<Host>) {
    cluster_lab_with(true)
}

/// Whether every pair and family is reachable (`want` true) or cut (`want` false).
fn live_faults(file: &TempFile) -> Vec<(String, Vec<String>)> {
    let st: Value = serde_json::from_str(&cluster_ok(file, &["status", "--json"])).unwrap();
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["reachable"], true, "{n}");
            let f = n["faults"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_string())
                .collect();
            (n["node"].as_str().unwrap().to_string(), f)
        })
        .collect()
}

fn assert_no_live_faults(file: &TempFile, when: &str) {
    for (node, f) in live_faults(file) {
        assert!(f.is_empty(), "{when}: {node} still has {f:?}");
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn ts(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v["ts"].as_str().unwrap()).unwrap()
}

/// Waits (bounded) for the coordinator's first `start` line: the step is on every node.
fn wait_started(path: &Path, child: &mut Child) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if lines(path)
            .iter()
            .any(|l| l["node"].is_null() && l["phase"] == "start")
        {
            return;
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("run exited ({s}) before its first step started");
        }
        assert!(Instant::now() < end, "no step started within 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `netfault cluster run SCENARIO --events LOG` over `hosts` (netns transport), spawned: its
/// cluster file, scenario and event log (removed on drop) and the child.
struct Running {
    file: TempFile,
    _sc: TempFile,
    events: TempFile,
    child: Child,
}

/// Starts [`Running`] and waits (bounded) until its first step is on every node.
fn start_run(hosts: &[Host], scenario: &str) -> Running {
    let file = temp_file("toml", &cluster::netns_cluster_text(hosts));
    let sc = temp_file("toml", scenario);
    let events = temp_path("jsonl");
    let mut child = command(&file, &["run", sc.arg(), "--events", events.arg()])
        .spawn()
        .unwrap();
    wait_started(&events.0, &mut child);
    Running {
        file,
        _sc: sc,
        events,
        child,
    }
}

#[test]
fn impair_drops_exactly_the_pairs_it_names_one_way_at_the_receivers() {
    let (_serial, _lab, _nf, hosts) = cluster_lab();
    let file = temp_file("toml", &cluster::netns_cluster_text(&hosts));
    assert_matrix(&hosts, &cluster::want(5, &[]), "before");
    let out = cluster_ok(
        &file,
        &[
            "impair", "--from", "n1", "--to", "n2,n3", "--drop", "100%", "--name", "lossy",
            "--ttl", "2m",
        ],
    );
    assert!(out.starts_with("impairment lossy applied"), "{out}");
    // n1 -> n2 and n1 -> n3 cut; n2 -> n1 and everything else untouched.
    assert_matrix(&hosts, &cluster::want(5, &[(0, 1), (0, 2)]), "impaired");
    // The receivers hold the rules (per wire packet at ingress); the sender holds nothing.
    let faults: BTreeMap<String, Vec<String>> = live_faults(&file).into_iter().collect();
    assert!(faults["n1"].is_empty(), "{faults:?}");
    for n in ["n2", "n3"] {
        assert_eq!(faults[n], ["lossy.from-n1.v4", "lossy.from-n1.v6"], "{n}");
    }
    assert!(faults["n4"].is_empty() && faults["n5"].is_empty());
    // Counters per node and fault: every matched packet dropped.
    let st: Value = serde_json::from_str(&cluster_ok(&file, &["stats", "--json"])).unwrap();
    let n2 = &st["nodes"][1];
    assert_eq!(n2["node"], "n2");
    let f = n2["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "lossy.from-n1.v4")
        .unwrap_or_else(|| panic!("{st}"));
    let c = &f["counters"];
    assert!(c["matched"].as_u64().unwrap() >= 20, "{f}");
    assert_eq!(c["matched"], c["dropped"], "{f}");
    assert_eq!(c["passed"], 0, "{f}");
    let text = cluster_ok(&file, &["stats"]);
    assert!(text.contains("lossy.from-n1.v6"), "{text}");
    // Bad input: named, exit 2, nothing added.
    for (args, key) in [
        (
            &["impair", "--from", "n1", "--to", "n2,n9", "--drop", "1"][..],
            "--to[1]",
        ),
        (
            &["impair", "--from", "n1", "--to", "n1", "--drop", "1"][..],
            "--to",
        ),
        (&["impair", "--from", "n1", "--to", "n2"][..], "impair"),
        (
            &[
                "impair", "--from", "n1", "--to", "n2", "--drop", "1", "--jitter", "5ms",
            ][..],
            "--jitter",
        ),
    ] {
        let out = cluster(&file, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(key), "{args:?}: {err}");
    }
    let healed = cluster_ok(&file, &["heal", "lossy"]);
    assert!(healed.starts_with("healed 4 entries"), "{healed}");
    assert_no_live_faults(&file, "after heal");
    assert_matrix(&hosts, &cluster::want(5, &[]), "healed");
}

const FLAP: &str = r#"
seed = 7
lease = "2s"

[[step]]
name = "flap"
at = "0s"
partition = "isolate:n1"
for = "1500ms"
repeat = 3
every = "2500ms"

[[step]]
name = "lossy"
at = "500ms"
impair = { from = ["n4"], to = ["n5"], drop = "100%" }
for = "4s"
"#;

#[test]
fn a_flapping_scenario_logs_every_start_and_end_and_ends_healed() {
    let (_serial, _lab, _nf, hosts) = cluster_lab();
    let Running {
        file,
        _sc,
        events,
        child,
    } = start_run(&hosts, FLAP);
    // On the wire while the first occurrence is on: n2 cannot reach n1.
    let r = UdpBurst::new(20)
        .run(&hosts[1].ns, &hosts[0].ns, hosts[0].sock(false, 4999))
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(60), "cluster run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r.received(), 0, "isolate:n1 on the wire during flap#0: {r}");
    let log = lines(&events.0);
    // Monotone timestamps over the whole file.
    let stamps: Vec<SystemTime> = log.iter().map(ts).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "ts not monotone: {log:#?}"
    );
    assert_eq!(log[0]["phase"], "begin");
    assert_eq!(log[0]["seed"], 7);
    assert_eq!(log.last().unwrap()["phase"], "finish");
    assert_eq!(log.last().unwrap()["outcome"], "finished");
    assert!(
        !log.iter()
            .any(|l| l["phase"] == "failed" || l["phase"] == "expired"),
        "{log:#?}"
    );
    let nodes = |l: &Value| l["node"].as_str().map(str::to_string);
    // flap: every node changes (n1 drops everyone, everyone drops n1), once per occurrence.
    for k in 0..3u64 {
        for n in 1..=5 {
            let node = format!("n{n}");
            let of = |phase: &str| -> Vec<&Value> {
                log.iter()
                    .filter(|l| {
                        l["name"] == "flap"
                            && l["occurrence"] == k
                            && l["phase"] == phase
                            && nodes(l).as_deref() == Some(&node)
                    })
                    .collect()
            };
            let (s, e) = (of("start"), of("end"));
            assert_eq!((s.len(), e.len()), (1, 1), "flap#{k} {node}: {log:#?}");
            assert!(ts(s[0]) < ts(e[0]));
            assert_eq!(s[0]["fault"], "partition");
            assert_eq!(s[0]["step"], 0);
            let g: Vec<&str> = s[0]["grudge"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            if n == 1 {
                assert_eq!(g, ["n2", "n3", "n4", "n5"]);
            } else {
                assert_eq!(g, ["n1"]);
            }
            assert_eq!(s[0]["entries"].as_array().unwrap().len(), 2 * g.len());
        }
        for phase in ["start", "end"] {
            let c: Vec<&Value> = log
                .iter()
                .filter(|l| {
                    l["node"].is_null()
                        && l["name"] == "flap"
                        && l["occurrence"] == k
                        && l["phase"] == phase
                })
                .collect();
            assert_eq!(c.len(), 1, "coordinator {phase} of flap#{k}");
            assert_eq!(c[0]["nodes"].as_array().unwrap().len(), 5);
            let spread = c[0]["spread_ns"].as_u64().unwrap();
            eprintln!(
                "flap#{k} {phase}: node spread {:.2} ms, lag {:.2} ms",
                spread as f64 / 1e6,
                c[0]["lag_ns"].as_i64().unwrap() as f64 / 1e6
            );
        }
    }
    // lossy: drop only, so only the receiver n5 changes.
    let lossy: Vec<(&str, String)> = log
        .iter()
        .filter(|l| l["name"] == "lossy" && !l["node"].is_null())
        .map(|l| (l["phase"].as_str().unwrap(), nodes(l).unwrap()))
        .collect();
    assert_eq!(
        lossy,
        [("start", "n5".to_string()), ("end", "n5".to_string())],
        "{log:#?}"
    );
    let s = log
        .iter()
        .find(|l| l["name"] == "lossy" && l["phase"] == "start")
        .unwrap();
    assert_eq!(s["impair"]["drop"], "100%");
    assert_eq!(s["fault"], "impair");
    assert!(stdout.contains("run finished"), "{stdout}");
    assert_no_live_faults(&file, "after the run");
    assert_matrix(&hosts, &cluster::want(5, &[]), "after the run");
}

/// Nobody renews after kill -9: the data path lets the entries go within the lease (+1 s).
#[test]
fn kill_9_of_a_run_heals_every_node_within_the_lease() {
    let (_serial, _lab, _nf, hosts) = cluster_lab();
    let lease = Duration::from_secs(2);
    let Running {
        file,
        _sc,
        events,
        mut child,
    } = start_run(&hosts, LONG_CUT);
    let all_cut: Vec<(usize, usize)> = (0..5)
        .flat_map(|j| (0..5).map(move |x| (j, x)))
        .filter(|(j, x)| j != x)
        .collect();
    assert_matrix(&hosts, &cluster::want(5, &all_cut), "complete, run alive");
    // Let a few renewals pass: the cut outlives the first lease.
    std::thread::sleep(lease + Duration::from_millis(500));
    assert_matrix(
        &hosts,
        &cluster::want(5, &all_cut),
        "complete, after one lease",
    );
    child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    child.wait().unwrap();
    // Renewed at most lease/4 before the kill: still cut for 3/4 of the lease after it
    // (nothing else heals). A check that took longer could not tell, and fails as such.
    let still_cut = cluster::all_reach(&hosts, false).unwrap();
    let first_took = killed.elapsed();
    assert!(
        first_took < lease * 3 / 4,
        "the check after the kill took {first_took:?}: it cannot tell a heal before the lease ran out"
    );
    assert!(
        still_cut,
        "healed before the lease ran out ({first_took:?} after kill)"
    );
    let deadline = killed + lease + Duration::from_secs(1);
    let mut healed_at = None;
    for _ in 0..60 {
        let started = Instant::now();
        if started > deadline + Duration::from_secs(2) {
            break;
        }
        if cluster::all_reach(&hosts, true).unwrap() {
            healed_at = Some(started.duration_since(killed));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let healed_at = healed_at.expect("not healed within lease + 3 s of kill -9");
    eprintln!(
        "kill -9: full matrix measured from {healed_at:?} after the kill (lease {lease:?}); \
         the first check, {first_took:?} after, was still cut"
    );
    assert!(
        healed_at <= lease + Duration::from_secs(1),
        "full matrix only {healed_at:?} after kill -9 (lease {lease:?})"
    );
    assert_no_live_faults(&file, "after the lease");
    // The log ends with the start: nothing was written after the kill.
    let log = lines(&events.0);
    assert!(log.iter().all(|l| l["phase"] != "end"), "{log:#?}");
}

fn signal_run(sig: libc::c_int, code: i32) {
    let (_serial, _lab, _nf, hosts) = cluster_lab();
    let Running {
        file,
        _sc,
        events,
        child,
    } = start_run(
        &hosts,
        "[[step]]\nname = \"split\"\nat = \"0s\"\npartition = \"halves\"\nfor = \"2m\"\n",
    );
    let halves: Vec<(usize, usize)> = (0..5)
        .flat_map(|j| (0..5).map(move |x| (j, x)))
        .filter(|(j, x)| (*j < 2) != (*x < 2))
        .collect();
    assert_matrix(&hosts, &cluster::want(5, &halves), "halves, run alive");
    // SAFETY: signalling our own child, by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
    let out = wait_bounded(child, Duration::from_secs(20), "cluster run after a signal");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = lines(&events.0);
    let word = if code == 130 {
        "interrupted"
    } else {
        "terminated"
    };
    assert_eq!(log.last().unwrap()["outcome"], word, "{log:#?}");
    let ends: BTreeSet<String> = log
        .iter()
        .filter(|l| l["phase"] == "end" && !l["node"].is_null())
        .map(|l| {
            assert_eq!(l["reason"], word);
            l["node"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ends.len(), 5, "{log:#?}");
    assert_no_live_faults(&file, "after the signal");
    assert_matrix(&hosts, &cluster::want(5, &[]), "after the signal");
}

/// A node that loses entries behind the coordinator's back (here: deleted by hand, as an
/// expiry would) ends the run: an `expired` line, exit 1, every other node healed.
#[test]
fn entries_lost_on_a_node_end_the_run_with_exit_1_and_everything_healed() {
    let (_serial, _lab, nf, hosts) = cluster_lab();
    let Running {
        file,
        _sc,
        events,
        child,
    } = start_run(
        &hosts,
        "lease = \"2s\"\n[[step]]\nname = \"split\"\nat = \"0s\"\npartition = \"halves\"\nfor = \"2m\"\n",
    );
    nf.run(&hosts[0].ns, &["heal", "split.from-n3.v4"]).unwrap();
    let out = wait_bounded(child, Duration::from_secs(20), "cluster run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("node n1") && err.contains("split.from-n3.v4"),
        "{err}"
    );
    let log = lines(&events.0);
    let exp: Vec<&Value> = log.iter().filter(|l| l["phase"] == "expired").collect();
    assert_eq!(exp.len(), 1, "{log:#?}");
    assert_eq!(exp[0]["node"], "n1");
    assert_eq!(exp[0]["entries"], serde_json::json!(["split.from-n3.v4"]));
    assert_eq!(log.last().unwrap()["outcome"], "error");
    assert_no_live_faults(&file, "after the error");
    assert_matrix(&hosts, &cluster::want(5, &[]), "after the error");
}

/// A busy loop on one core until dropped, at nice 19: a loaded machine.
struct Load(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<()>>,
);

impl Load {
    fn new() -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..1)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    // At the lowest priority: it takes every cycle the run leaves, and no more
                    // (the run's own deadlines are for slow nodes, not for a starved CPU).
                    // SAFETY: gettid and setpriority on this thread have no preconditions.
                    unsafe {
                        let tid = libc::gettid() as libc::id_t;
                        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
                    }
                    // Bounded: the test ends it, and so does a minute passing.
                    let end = Instant::now() + Duration::from_secs(60);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Load(stop, threads)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

/// Eighty steps due at the same instant on a 1 s lease, a core busy: each change is quick (XDP
/// stays attached, so no change loads a program), but together they take longer than the
/// lease, and the renewals go on meanwhile, so the run finishes. Each of the 20 ordered pairs
/// is impaired by four steps (the most rules with one match the data path holds).
#[test]
fn renewals_go_on_while_many_steps_start_at_once() {
    let (_serial, _lab, nf, hosts) = cluster_lab_with(false);
    for h in &hosts {
        run(&nf, h, &["attach", &h.iface, "--xdp-mode", "native"]);
    }
    let pairs: Vec<(usize, usize)> = (1..=5)
        .flat_map(|a| (1..=5).filter(move |&b| b != a).map(move |b| (a, b)))
        .collect();
    let steps = 4 * pairs.len();
    let mut sc = String::from("seed = 3\nlease = \"1s\"\n");
    for i in 0..steps {
        let (from, to) = pairs[i % pairs.len()];
        sc += &format!(
            "[[step]]\nname = \"s{i}\"\nat = \"0s\"\nfor = \"4s\"\n\
             impair = {{ from = [\"n{from}\"], to = [\"n{to}\"], drop = \"100%\" }}\n"
        );
    }
    let file = temp_file("toml", &cluster::netns_cluster_text(&hosts));
    let sc = temp_file("toml", &sc);
    let events = temp_path("jsonl");
    let load = Load::new();
    let child = command(&file, &["run", sc.arg(), "--events", events.arg()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(60), "cluster run");
    drop(load);
    let log = lines(&events.0);
    assert!(
        out.status.success(),
        "{}: {}{}\n{log:#?}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
    );
    assert_eq!(log.last().unwrap()["outcome"], "finished");
    let starts = log
        .iter()
        .filter(|l| l["phase"] == "start" && l["node"].is_null())
        .count();
    assert_eq!(starts, steps, "{log:#?}");
    // The changes took longer than the lease together (or nothing was tested).
    let first = log.iter().find(|l| l["phase"] == "start").map(ts).unwrap();
    let last = log
        .iter()
        .filter(|l| l["phase"] == "start")
        .map(ts)
        .max()
        .unwrap();
    let took = last.duration_since(first).unwrap();
    assert!(
        took > Duration::from_secs(1),
        "the {steps} starts took {took:?}, under the 1 s lease: this run could not starve a renewal"
    );
    assert_no_live_faults(&file, "after the run");
}

#[test]
fn ctrl_c_of_a_run_exits_130_with_everything_healed() {
    signal_run(libc::SIGINT, 130);
}

#[test]
fn sigterm_of_a_run_exits_143_with_everything_healed() {
    signal_run(libc::SIGTERM, 143);
}

#[test]
fn bad_scenarios_exit_2_naming_the_key_path_and_change_nothing() {
    let (_serial, _lab, _nf, hosts) = cluster_lab_with(false);
    let file = temp_file("toml", &cluster::netns_cluster_text(&hosts));
    let ok = "at = \"0s\"\npartition = \"halves\"\nfor = \"10s\"";
    let cases = [
        (format!("[[step]]\n{ok}\ncolour = \"red\"\n"), "step[0].colour"),
        (
            "[[step]]\nat = \"0s\"\nfor = \"1s\"\nimpair = { from = [\"n1\"], to = [\"n2\", \"n9\"], drop = 1 }\n"
                .to_string(),
            "step[0].impair.to[1]",
        ),
        (
            "[[step]]\nat = \"0s\"\nfor = \"1s\"\npartition = \"n1,n2|n9\"\n".to_string(),
            "step[0].partition",
        ),
        (
            format!("[[step]]\n{ok}\nrepeat = 3\nevery = \"5s\"\n"),
            "step[0].every",
        ),
        (
            "[[step]]\nat = \"0s\"\npartition = \"halves\"\nfor = \"soon\"\n".to_string(),
            "step[0].for",
        ),
        (
            format!("lease = \"10m\"\n[[step]]\n{ok}\n"),
            "lease",
        ),
    ];
    for (text, key) in &cases {
        let sc = temp_file("toml", text);
        let events = temp_path("jsonl");
        let out = cluster(
            &file,
            &[
                "run",
                sc.0.to_str().unwrap(),
                "--events",
                events.0.to_str().unwrap(),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {err}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(!events.0.exists(), "{key}: the event log was created");
        for h in &hosts {
            for d in netfault_dirs(&h.ns) {
                assert!(!d.exists(), "{key}: {} exists", d.display());
            }
        }
    }
    // A missing scenario file, too.
    let out = cluster(&file, &["run", "/nonexistent/scenario.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SCENARIO"));
}
