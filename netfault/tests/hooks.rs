#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
//! Hook choice on a veth, through the real binary: tc ingress alone while no rule needs a
//! per-frame drop, XDP added for an ingress drop rule and removed with it, `--xdp-mode` forcing
//! XDP, and an expired rule leaving XDP idle until the next change. What is attached is read
//! from the kernel (netlink, BPF_PROG_QUERY), not from netfault's own state. Needs root.
mod common;

use std::time::Duration;

use common::*;
use netfault_lab::lab::{self, exec_in};

/// The XDP program on `iface` in `ns` (netlink IFLA_XDP), if any.
fn xdp_on(ns: &str, iface: &str) -> Option<netfault::netlink::XdpInfo> {
    lab::run_in(ns, || {
        let idx = netfault::netlink::link_index(iface).unwrap().unwrap();
        netfault::netlink::xdp_attached(idx).unwrap()
    })
    .unwrap()
}

/// Program ids on the tcx ingress chain of `iface` (empty where the kernel has no tcx).
fn tcx_ingress(ns: &str, iface: &str) -> Vec<u32> {
    tcx_chain(ns, iface, aya::programs::tc::TcAttachType::Ingress)
}

/// Program ids on one tcx chain of `iface`.
fn tcx_chain(ns: &str, iface: &str, t: aya::programs::tc::TcAttachType) -> Vec<u32> {
    use aya::programs::SchedClassifier;
    let c = std::ffi::CString::new(iface).unwrap();
    lab::run_in(ns, || {
        SchedClassifier::query_tcx(c.as_c_str(), t)
            .map(|(_, progs)| progs.iter().map(|p| p.id()).collect())
            .unwrap_or_default()
    })
    .unwrap()
}

/// Frames the veth's XDP program dropped, over all its receive queues (`ethtool -S`).
fn xdp_drops(ns: &str, iface: &str) -> u64 {
    let out = exec_in(ns, "ethtool", &["-S", iface]).unwrap();
    out.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_drops"))
        .map(|(_, v)| v.trim().parse::<u64>().unwrap())
        .sum()
}

fn status(nf: &netfault_lab::lab::Netfault, h: &Host) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&run(nf, h, &["status", "--json"])).unwrap();
    v["interfaces"][0].clone()
}

/// The program id status reports for one hook ("xdp-ingress", "tc-ingress", "tc-egress").
fn prog_of(st: &serde_json::Value, hook: &str) -> Option<u32> {
    st["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == hook)
        .map(|h| h["prog_id"].as_u64().unwrap() as u32)
}

/// tc ingress is netfault's and in the kernel: on the tcx chain where tcx was used.
fn assert_tc_ingress(st: &serde_json::Value, h: &Host) {
    let id = prog_of(st, "tc-ingress").expect("no tc ingress hook");
    let kind = st["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["hook"] == "tc-ingress")
        .unwrap()["kind"]
        .clone();
    if kind == "tcx" {
        assert!(
            tcx_ingress(&h.ns, &h.iface).contains(&id),
            "tc ingress program {id} is not on the tcx chain: {st}"
        );
    } else {
        assert_eq!(kind, "clsact", "{st}");
    }
}

#[test]
fn a_veth_has_xdp_only_while_an_ingress_drop_rule_is_live() {
    const N: u32 = 2_000;
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);

    // Attached, no rule: tc ingress and egress, no XDP program on the device.
    let st = status(&nf, &b);
    assert_eq!(xdp_on(&b.ns, &b.iface), None, "XDP with no rule: {st}");
    assert_tc_ingress(&st, &b);
    assert_eq!(prog_of(&st, "xdp-ingress"), None, "{st}");
    assert_eq!(
        st["device"],
        serde_json::json!({"class": "virtual", "kind": "veth"})
    );
    assert_eq!(st["xdp"]["attached"], false, "{st}");
    assert_eq!(st["xdp"]["why"]["reason"], "virtual-idle", "{st}");
    assert_udp_flows(&a, &b, false);

    // An egress drop rule needs no XDP: still none.
    run(
        &nf,
        &b,
        &[
            "rule", "add", "out", "--dir", "egress", "--proto", "udp", "--dport", "4001", "--drop",
            "1",
        ],
    );
    assert_eq!(xdp_on(&b.ns, &b.iface), None);

    // An ingress drop rule: XDP comes, and it is the program status names.
    run(
        &nf,
        &b,
        &[
            "rule", "add", "cut", "--dir", "ingress", "--proto", "udp", "--dport", "4000",
            "--drop", "100%",
        ],
    );
    let st = status(&nf, &b);
    let xdp = xdp_on(&b.ns, &b.iface).expect("no XDP program after an ingress drop rule");
    let first = xdp.prog_id;
    assert_eq!(Some(xdp.prog_id), prog_of(&st, "xdp-ingress"), "{st}");
    assert_eq!(st["xdp"]["why"]["reason"], "virtual-drop", "{st}");
    assert_eq!(st["xdp"]["why"]["detail"], "cut", "{st}");
    assert_tc_ingress(&st, &b);

    // p = 1: every datagram dropped, counted exactly, and by XDP (the veth's own counter).
    let drops0 = xdp_drops(&b.ns, &b.iface);
    let r = udp(&a, &b, false, N);
    let c = counters(&nf, &b, "cut");
    assert_eq!((r.sent, r.received()), (N, 0), "{r}");
    assert_eq!(
        (c.matched, c.dropped, c.passed),
        (u64::from(N), u64::from(N), 0),
        "{c:?}"
    );
    assert_eq!(
        xdp_drops(&b.ns, &b.iface) - drops0,
        u64::from(N),
        "the drops did not happen in XDP"
    );

    // Deleted: XDP goes, tc ingress stays, traffic flows.
    run(&nf, &b, &["rule", "del", "cut"]);
    assert_eq!(
        xdp_on(&b.ns, &b.iface),
        None,
        "XDP stayed after its rule went"
    );
    let st = status(&nf, &b);
    assert_eq!(prog_of(&st, "xdp-ingress"), None, "{st}");
    assert_tc_ingress(&st, &b);
    assert_udp_flows(&a, &b, false);

    // The same rule again, then detach: nothing of netfault's is left on the device.
    run(
        &nf,
        &b,
        &[
            "rule", "add", "cut", "--dir", "ingress", "--proto", "udp", "--dport", "4000",
            "--drop", "100%",
        ],
    );
    // The program `attach` loaded, linked again: no rule change loads or verifies one.
    let again = xdp_on(&b.ns, &b.iface).expect("no XDP program after the rule came back");
    assert_eq!(
        again.prog_id, first,
        "XDP came back as another program: a rule change loaded the object again"
    );
    run(&nf, &b, &["detach"]);
    assert_eq!(xdp_on(&b.ns, &b.iface), None, "XDP left after detach");
    assert_eq!(tcx_ingress(&b.ns, &b.iface), Vec::<u32>::new());
    for d in netfault_dirs(&b.ns) {
        assert!(!d.exists(), "{} left after detach", d.display());
    }
    assert_udp_flows(&a, &b, false);
}

#[test]
fn xdp_mode_native_forces_xdp_on_a_veth() {
    let (mut lab, nf, [a, b]) = pair();
    let (ns, nfc) = (b.ns.clone(), nf.clone());
    lab.on_teardown(move || {
        let _ = nfc.run(&ns, &["detach"]);
    });
    run(&nf, &b, &["attach", &b.iface, "--xdp-mode", "native"]);
    let st = status(&nf, &b);
    let xdp = xdp_on(&b.ns, &b.iface).expect("--xdp-mode native attached no XDP");
    assert_eq!(xdp.mode, netfault::netlink::XdpAttachMode::Native);
    assert_eq!(Some(xdp.prog_id), prog_of(&st, "xdp-ingress"), "{st}");
    assert_eq!(st["xdp"]["why"]["reason"], "forced", "{st}");
    assert_eq!(st["xdp"]["permanent"], true, "{st}");
    // A drop rule that comes and goes leaves it where it is.
    run(
        &nf,
        &b,
        &[
            "rule", "add", "cut", "--dir", "ingress", "--proto", "udp", "--dport", "4000",
            "--drop", "1",
        ],
    );
    assert_udp_cut(&a, &b, false);
    run(&nf, &b, &["rule", "del", "cut"]);
    assert_eq!(
        xdp_on(&b.ns, &b.iface).map(|x| x.prog_id),
        Some(xdp.prog_id),
        "forced XDP removed"
    );
    assert_udp_flows(&a, &b, false);
    run(&nf, &b, &["detach"]);
    assert_eq!(xdp_on(&b.ns, &b.iface), None, "XDP left after detach");
}

#[test]
fn an_expired_drop_rule_leaves_xdp_idle_until_the_next_change() {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    // Long enough for the cut to be seen on a loaded machine (a 1 s lifetime ran out before
    // the probe under CI's load), and checked: the probe must end before the expiry.
    const TTL: Duration = Duration::from_secs(4);
    let start = std::time::Instant::now();
    run(
        &nf,
        &b,
        &[
            "rule", "add", "brief", "--dir", "ingress", "--proto", "udp", "--dport", "4000",
            "--drop", "1", "--ttl", "4s",
        ],
    );
    assert!(xdp_on(&b.ns, &b.iface).is_some());
    assert_udp_cut(&a, &b, false);
    assert!(
        start.elapsed() < TTL,
        "the cut was probed after the rule's lifetime ({:?}): too slow to tell",
        start.elapsed()
    );
    // Expired in the data path, with no netfault process alive: traffic flows, XDP stays idle,
    // and status says so.
    std::thread::sleep((TTL + Duration::from_millis(300)).saturating_sub(start.elapsed()));
    assert_udp_flows(&a, &b, false);
    assert!(xdp_on(&b.ns, &b.iface).is_some());
    let st = status(&nf, &b);
    assert_eq!(st["xdp"]["idle"], true, "{st}");
    let text = run(&nf, &b, &["status"]);
    assert!(text.contains("XDP idle"), "{text}");
    // The next change removes it.
    run(
        &nf,
        &b,
        &[
            "rule", "add", "other", "--dir", "egress", "--proto", "udp", "--dport", "9", "--drop",
            "1",
        ],
    );
    assert_eq!(
        xdp_on(&b.ns, &b.iface),
        None,
        "idle XDP outlived the next change"
    );
    assert_eq!(status(&nf, &b)["xdp"]["idle"], false);
}

/// A child process killed (SIGKILL) and reaped on drop, so a failing step leaves no `run` behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `run` chooses as `attach` does: on a veth, XDP only when its rule set has an ingress drop.
#[test]
fn run_chooses_the_same_way() {
    let (_lab, nf, [a, b]) = pair();
    let dir = std::env::temp_dir();
    for (tag, rule, want_xdp) in [
        (
            "egress",
            "dir = \"egress\"\nproto = \"udp\"\ndport = \"9\"\ndrop = 1\n",
            false,
        ),
        (
            "ingress",
            "dir = \"ingress\"\nproto = \"udp\"\ndport = \"4000\"\ndrop = 1\n",
            true,
        ),
    ] {
        let file = dir.join(format!("nf-hooks-run-{}-{tag}.toml", std::process::id()));
        std::fs::write(&file, format!("[[rule]]\nname = \"r\"\n{rule}")).unwrap();
        let f = file.to_string_lossy().into_owned();
        let mut child = Reaped(
            nf.spawn(
                &b.ns,
                &["run", &f, "--iface", &b.iface, "--duration", "30s"],
            )
            .unwrap(),
        );
        // Attached once tc egress, the last hook run attaches, is on the device (bounded).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tcx_chain(&b.ns, &b.iface, aya::programs::tc::TcAttachType::Egress).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{tag}: run never attached"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Read by now; a failing step below leaves no file behind.
        let _ = std::fs::remove_file(&file);
        // The rules are published right after: give that a moment.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(xdp_on(&b.ns, &b.iface).is_some(), want_xdp, "{tag}");
        if want_xdp {
            assert_udp_cut(&a, &b, false);
        } else {
            assert_udp_flows(&a, &b, false);
        }
        // SAFETY: a plain kill(2) of the child this test started.
        unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.0.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                panic!("{tag}: run ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(xdp_on(&b.ns, &b.iface), None, "{tag}: XDP outlived run");
        assert_udp_flows(&a, &b, false);
    }
}
