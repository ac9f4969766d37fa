//! netfault on a host without iproute2: every command runs through
//! [`Netfault::without_iproute2`], in a private mount namespace where `/usr/sbin` and
//! `/usr/bin` (and so, merged-/usr, `/sbin` and `/bin`) are empty. Attach, a dropping rule with
//! real traffic, the fq refusal (this host's kernel has no sch_fq), stats, status and detach
//! all work; the lab itself builds its hosts with `ip` outside that namespace, and the checks
//! read the kernel with `tc` there.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::*;
use netfault_lab::lab::{IPROUTE2_DIRS, exec_in};

/// Every file under netfault's pin and state directories of `ns`, as relative paths.
fn files(ns: &str) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    for d in netfault_dirs(ns) {
        walk(&d, &d, &mut out);
    }
    out.sort();
    out
}

/// A `--json` document without its countdowns (`expires_in_ms` moves between two reads).
fn timeless(mut v: serde_json::Value) -> serde_json::Value {
    match &mut v {
        serde_json::Value::Object(m) => {
            m.remove("expires_in_ms");
            for x in m.values_mut() {
                *x = timeless(x.take());
            }
        }
        serde_json::Value::Array(a) => {
            for x in a.iter_mut() {
                *x = timeless(x.take());
            }
        }
        _ => {}
    }
    v
}

/// What a refused command must leave as it was: the state as netfault reports it and as it is
/// stored, its pins, and the interface's qdiscs as the kernel lists them.
type Snapshot = (
    serde_json::Value,
    serde_json::Value,
    Vec<PathBuf>,
    String,
    String,
);

fn snapshot(nf: &Netfault, h: &Host) -> Snapshot {
    let state = netfault_dirs(&h.ns)[1].join("state.json");
    (
        timeless(nf.json(&h.ns, &["status", "--json"]).expect("status")),
        timeless(
            nf.json(&h.ns, &["rule", "list", "--json"])
                .expect("rule list"),
        ),
        files(&h.ns),
        fs::read_to_string(&state).unwrap_or_else(|e| panic!("{}: {e}", state.display())),
        exec_in(&h.ns, "tc", &["-j", "qdisc", "show", "dev", &h.iface]).expect("tc qdisc show"),
    )
}

/// Waits (bounded) until `pid` runs `netfault`, past its fork and pre_exec.
fn wait_exec(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.file_name().is_some_and(|n| n == "netfault") {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} did not exec netfault");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn netfault_runs_without_tc_and_ip() {
    for tool in ["/usr/sbin/tc", "/usr/bin/ip"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing on this host: the hiding could not be checked"
        );
    }
    let (mut lab, nf, [a, b]) = pair();
    let nf = nf.without_iproute2();

    attach(&mut lab, &nf, &b);
    let st = nf.status(&b.ns).expect("status");
    assert_eq!(st.len(), 1, "{st:?}");
    // tc ingress and egress; XDP only once a drop rule needs it (a veth).
    assert!(!st[0].lost && st[0].hooks.len() == 2, "{st:?}");

    // A dropping rule, with real traffic before and after.
    assert_udp_flows(&a, &b, false);
    let port = UDP_PORT.to_string();
    run(
        &nf,
        &b,
        &[
            "rule", "add", "cut", "--proto", "udp", "--dport", &port, "--drop", "100%",
        ],
    );
    assert_udp_cut(&a, &b, false);
    assert_udp_cut(&a, &b, true);
    let c = counters(&nf, &b, "cut");
    assert_eq!((c.matched, c.dropped), (400, 400), "{c:?}");

    // Delay needs fq, which this kernel may lack: then the refusal, and no change at all.
    let before = snapshot(&nf, &b);
    let slow = [
        "rule", "add", "slow", "--dir", "egress", "--proto", "udp", "--delay", "50ms",
    ];
    let out = nf.output(&b.ns, &slow).expect("run netfault");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("this kernel has sch_fq: the refusal is not exercised here");
        let q = exec_in(&b.ns, "tc", &["qdisc", "show", "dev", &b.iface, "root"]).expect("tc");
        assert!(q.contains("fq 4e46:"), "{q}");
        run(&nf, &b, &["rule", "del", "slow"]);
    } else {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("this kernel has no fq qdisc (sch_fq, CONFIG_NET_SCH_FQ)")
                && stderr.contains("nothing was changed"),
            "{stderr}"
        );
        assert_eq!(
            snapshot(&nf, &b),
            before,
            "the refused rule changed something"
        );
    }

    // The hiding is real: a long-running hidden command sees neither tc nor ip, in a mount
    // namespace of its own, while the host has both.
    let mut watch = nf
        .spawn(&b.ns, &["stats", "--watch", "1s"])
        .expect("stats --watch");
    let pid = watch.id();
    wait_exec(pid);
    let ns_of = |p: &str| fs::read_link(format!("{p}/ns/mnt")).expect("mount namespace");
    assert_ne!(ns_of(&format!("/proc/{pid}")), ns_of("/proc/self"));
    for tool in ["usr/sbin/tc", "usr/bin/ip", "sbin/tc", "bin/ip"] {
        assert!(
            !Path::new(&format!("/proc/{pid}/root/{tool}")).exists(),
            "/{tool} is visible to the hidden command"
        );
    }
    for d in IPROUTE2_DIRS {
        let seen = fs::read_dir(format!("/proc/{pid}/root{d}"))
            .expect("hidden dir")
            .count();
        assert_eq!(seen, 0, "{d} is not empty for the hidden command");
    }
    // It keeps printing (two ticks) rather than failing without them.
    std::thread::sleep(Duration::from_millis(1500));
    let exited = watch.try_wait().expect("try_wait");
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(exited.is_none(), "stats --watch exited: {exited:?}");

    let stats = nf.json(&b.ns, &["stats", "--json"]).expect("stats");
    assert!(stats["rules"].is_array(), "{stats}");
    assert_eq!(
        nf.rule_names(&b.ns).expect("rule list"),
        ["cut"],
        "only the dropping rule"
    );

    run(&nf, &b, &["detach"]);
    assert!(
        files(&b.ns).iter().all(|f| !f.starts_with("links")),
        "{:?}",
        files(&b.ns)
    );
    for dir in ["ingress", "egress"] {
        let f = exec_in(&b.ns, "tc", &["filter", "show", "dev", &b.iface, dir]).expect("tc");
        assert!(!f.contains("bpf"), "a tc filter is left on {dir}: {f}");
    }
    let q = exec_in(&b.ns, "tc", &["qdisc", "show", "dev", &b.iface]).expect("tc");
    assert!(!q.contains("clsact"), "{q}");
    assert_udp_flows(&a, &b, false);
}
