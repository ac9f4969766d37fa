//! netfault::netlink against the kernel, as root. Every test runs on a thread of its own that
//! unshares its network namespace: nothing is named in /run/netns, and the namespace with every
//! device made in it goes when the thread ends, passed or panicked. Where useful, what the
//! module reads or writes is checked against iproute2 (`tc`, `ip`), which the product itself
//! no longer runs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
use std::{
    io,
    process::Command,
    time::{Duration, Instant},
};

use netfault::netlink::{self as nl, NetlinkError, XdpAttachMode};

/// Set by `cargo xtask vm-test`, whose guests load every module netfault can use (sch_fq, IFB,
/// cls_basic, act_mirred): there, a kernel feature found missing fails the test instead of
/// having its refusal checked.
fn full_kernel() -> bool {
    std::env::var_os("NETFAULT_FULL_KERNEL").is_some()
}

/// Fails where a kernel feature is missing that the VM's kernels must have (`full_kernel`).
fn missing(what: &str) {
    assert!(
        !full_kernel(),
        "this kernel has no {what}, which every vm-test kernel loads"
    );
}

/// Runs `f` on a new thread in a new, unnamed network namespace. Fails when not root: these
/// tests cannot run without it, and a test that cannot run must not pass.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the netlink tests make network namespaces and devices: run them as root"
    );
    let h = std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread's namespaces.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        f()
    });
    match h.join() {
        Ok(v) => Some(v),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Runs iproute2 in this thread's namespace (a child inherits the thread's); (ok, stdout, stderr).
fn run(prog: &str, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json(prog: &str, args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = run(prog, args);
    assert!(ok, "{prog} {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{prog} {args:?}: {e}: {out}"))
}

/// The root qdisc as `tc -j qdisc show` lists it: (kind, handle).
fn tc_root(dev: &str) -> (String, String) {
    let v = json("tc", &["-j", "qdisc", "show", "dev", dev, "root"]);
    let q = v
        .as_array()
        .and_then(|a| a.iter().find(|q| q["root"] == true))
        .unwrap_or_else(|| panic!("no root in {v}"));
    (
        q["kind"].as_str().unwrap().to_owned(),
        q["handle"].as_str().unwrap().to_owned(),
    )
}

fn veth_up(a: &str, b: &str) -> (u32, u32) {
    let (ia, ib) = nl::veth_add(a, b).unwrap();
    nl::link_set_up(ia).unwrap();
    nl::link_set_up(ib).unwrap();
    (ia, ib)
}

fn ours(q: &nl::QdiscInfo) -> (String, String) {
    (q.kind.clone(), nl::format_handle(q.handle))
}

#[test]
fn root_qdisc_htb_and_default() {
    in_netns(|| {
        let (a, _) = veth_up("nfa0", "nfb0");
        let def = nl::root_qdisc(a).unwrap().unwrap();
        assert_eq!(def.handle, 0, "{def:?}");
        assert_eq!(ours(&def), tc_root("nfa0"));
        assert_eq!(nl::fq_stats(a).unwrap(), None);
        // The default cannot be deleted; asking is fine and changes nothing.
        nl::qdisc_del_root(a).unwrap();
        assert_eq!(nl::root_qdisc(a).unwrap().unwrap(), def);

        let (ok, _, err) = run(
            "tc",
            &["qdisc", "add", "dev", "nfa0", "root", "handle", "1:", "htb"],
        );
        assert!(ok, "{err}");
        let htb = nl::root_qdisc(a).unwrap().unwrap();
        assert_eq!(htb.kind, "htb");
        assert_eq!(htb.handle, 0x1_0000);
        assert_eq!(nl::format_handle(htb.handle), "1:");
        assert_eq!(ours(&htb), tc_root("nfa0"));
        assert_eq!(nl::fq_stats(a).unwrap(), None, "htb is not netfault's fq");

        nl::qdisc_del_root(a).unwrap();
        let back = nl::root_qdisc(a).unwrap().unwrap();
        assert_eq!(back.handle, 0, "{back:?}");
        assert_eq!(ours(&back), tc_root("nfa0"));

        let e = nl::root_qdisc(999_999).unwrap_err();
        assert!(matches!(e, NetlinkError::NoSuchDevice { .. }), "{e}");
        assert_eq!(e.errno(), Some(libc::ENODEV));
    });
}

/// sch_fq as tc finds it: whether `tc qdisc replace ... fq` works on a scratch veth.
fn tc_has_fq() -> bool {
    let (i, _) = nl::veth_add("nfprobe0", "nfprobe1").unwrap();
    let (ok, _, err) = run("tc", &["qdisc", "replace", "dev", "nfprobe0", "root", "fq"]);
    if !ok {
        assert!(err.contains("kind is unknown"), "tc: {err}");
    }
    nl::link_del(i).unwrap();
    assert_eq!(
        nl::link_index("nfprobe1").unwrap(),
        None,
        "the peer goes too"
    );
    ok
}

const FQ: nl::FqOptions = nl::FqOptions {
    limit: 12_345,
    flow_limit: 1_234,
    horizon_us: 11_000_000,
    horizon_drop: true,
    maxrate_bytes_per_sec: 4_250_000_000,
};

/// Without sch_fq (this host): QdiscKindUnknown and the root untouched. With it (the VM
/// guests): the kernel holds exactly what tc would have set, and netfault's stats read it.
#[test]
fn fq_replace_matches_tc() {
    in_netns(|| {
        let (a, _) = veth_up("nfa0", "nfb0");
        let before = nl::root_qdisc(a).unwrap();
        if !tc_has_fq() {
            let e = nl::fq_replace(a, 0x4e46, FQ).unwrap_err();
            match &e {
                NetlinkError::QdiscKindUnknown { kind, .. } => assert_eq!(kind, "fq"),
                other => panic!("want QdiscKindUnknown, got {other:?}"),
            }
            assert_eq!(e.errno(), Some(libc::ENOENT));
            assert_eq!(nl::root_qdisc(a).unwrap(), before, "nothing changed");
            // The options and statistics are compared with tc's in `cargo xtask vm-test`.
            missing("sch_fq");
            return;
        }
        nl::fq_replace(a, 0x4e46, FQ).unwrap();
        let root = nl::root_qdisc(a).unwrap().unwrap();
        assert_eq!(ours(&root), ("fq".into(), "4e46:".into()));
        assert_eq!(ours(&root), tc_root("nfa0"));
        let v = json("tc", &["-j", "qdisc", "show", "dev", "nfa0", "root"]);
        let o = &v[0]["options"];
        assert_eq!(o["limit"], 12_345, "{v}");
        assert_eq!(o["flow_limit"], 1_234, "{v}");
        assert_eq!(o["horizon"], 11_000_000, "{v}");
        // tc prints the flag as "horizon_drop": null, its absence as "horizon_cap".
        assert!(o.as_object().unwrap().contains_key("horizon_drop"), "{v}");
        assert_eq!(o["maxrate"], 4_250_000_000u64, "{v}");
        let s = nl::fq_stats(a).unwrap().expect("netfault's fq");
        assert_eq!(s.limit, 12_345);
        assert_eq!((s.backlog_packets, s.dropped, s.horizon_drops), (0, 0, 0));
        // Replace again (resize, cap instead of drop): still ours, new values.
        nl::fq_replace(
            a,
            0x4e46,
            nl::FqOptions {
                limit: 20_000,
                horizon_drop: false,
                ..FQ
            },
        )
        .unwrap();
        assert_eq!(nl::fq_stats(a).unwrap().unwrap().limit, 20_000);
        let v = json("tc", &["-j", "qdisc", "show", "dev", "nfa0", "root"]);
        assert!(
            v[0]["options"]
                .as_object()
                .unwrap()
                .contains_key("horizon_cap"),
            "{v}"
        );
        fq_counters_match_tc(a);
        // fq at another handle is not netfault's.
        nl::fq_replace(a, 0x8001, FQ).unwrap();
        assert_eq!(nl::fq_stats(a).unwrap(), None);
        nl::qdisc_del_root(a).unwrap();
        assert_eq!(nl::root_qdisc(a).unwrap().unwrap().handle, 0);
    });
}

/// Fills a tiny fq (flow_limit 5, paced at 1000 B/s) with one UDP flow to TEST-NET-1 and
/// compares fq_stats' counters, xstats included, with `tc -s`.
fn fq_counters_match_tc(a: u32) {
    nl::fq_replace(
        a,
        0x4e46,
        nl::FqOptions {
            limit: 100,
            flow_limit: 5,
            horizon_us: 10_000_000,
            horizon_drop: true,
            maxrate_bytes_per_sec: 1000,
        },
    )
    .unwrap();
    for args in [
        &["addr", "add", "192.0.2.1/24", "dev", "nfa0"][..],
        &[
            "neigh",
            "replace",
            "192.0.2.2",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "nfa0",
        ],
    ] {
        let (ok, _, err) = run("ip", args);
        assert!(ok, "ip {args:?}: {err}");
    }
    let sock = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
    for _ in 0..40 {
        // fq drops past the flow limit; the socket may see ENOBUFS for those: ignore.
        let _ = sock.send_to(&[0u8; 200], "192.0.2.2:9");
    }
    let s = nl::fq_stats(a).unwrap().expect("netfault's fq");
    let v = json("tc", &["-s", "-j", "qdisc", "show", "dev", "nfa0", "root"]);
    let q = &v[0];
    eprintln!("fq_stats {s:?}\ntc -s {q}");
    assert_eq!(s.limit, 100);
    assert!(s.flows_plimit > 0, "{s:?}");
    assert_eq!(u64::from(s.dropped), q["drops"].as_u64().unwrap(), "{q}");
    assert_eq!(s.flows_plimit, q["flows_plimit"].as_u64().unwrap(), "{q}");
    // tc prints horizon_drops only when non-zero.
    assert_eq!(
        s.horizon_drops,
        q["horizon_drops"].as_u64().unwrap_or(0),
        "{q}"
    );
    assert_eq!(
        u64::from(s.backlog_packets),
        q["qlen"].as_u64().unwrap(),
        "{q}"
    );
    assert!(s.backlog_packets > 0 && s.backlog_packets <= 5, "{s:?}");
}

#[test]
fn ifb_round_trip_and_mtu() {
    in_netns(|| {
        let i = match nl::ifb_add("nfifb7") {
            Ok(i) => i,
            Err(NetlinkError::LinkKindUnsupported { kind, .. }) => {
                panic!("this kernel has no {kind}: netfault's ingress shaping needs it")
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(nl::link_index("nfifb7").unwrap(), Some(i));
        assert_eq!(nl::ifb_add("nfifb7").unwrap(), i, "an existing IFB is kept");
        let v = json("ip", &["-j", "-d", "link", "show", "dev", "nfifb7"]);
        assert_eq!(v[0]["linkinfo"]["info_kind"], "ifb", "{v}");
        assert!(
            v[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{v}"
        );
        assert_eq!(
            u64::from(nl::link_mtu(i).unwrap()),
            v[0]["mtu"].as_u64().unwrap()
        );
        let (ok, _, err) = run("ip", &["link", "set", "dev", "nfifb7", "mtu", "1400"]);
        assert!(ok, "{err}");
        assert_eq!(nl::link_mtu(i).unwrap(), 1400);
        nl::link_del(i).unwrap();
        assert_eq!(nl::link_index("nfifb7").unwrap(), None);
        nl::link_del(i).unwrap(); // gone is fine
        let e = nl::link_mtu(i).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
        assert!(matches!(e, NetlinkError::NoSuchDevice { .. }));
    });
}

/// The legacy ETHTOOL_GSET ioctl, as qdisc.rs reads link speed today.
fn ioctl_speed_bits(iface: &str) -> Option<u64> {
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolCmd {
        cmd: u32,
        supported: u32,
        advertising: u32,
        speed: u16,
        duplex: u8,
        port: u8,
        phy_address: u8,
        transceiver: u8,
        autoneg: u8,
        mdio_support: u8,
        maxtxpkt: u32,
        maxrxpkt: u32,
        speed_hi: u16,
        eth_tp_mdix: u8,
        eth_tp_mdix_ctrl: u8,
        lp_advertising: u32,
        reserved: [u32; 2],
    }
    // SAFETY: plain socket(2), closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(iface.as_bytes()) {
        *d = *s as libc::c_char;
    }
    let mut cmd = EthtoolCmd {
        cmd: 1, // ETHTOOL_GSET
        ..Default::default()
    };
    req.ifr_ifru.ifru_data = (&mut cmd as *mut EthtoolCmd).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GSET writes an ethtool_cmd through ifru_data.
    let r = unsafe { libc::ioctl(fd, 0x8946, &mut req) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if r != 0 {
        return None;
    }
    let mbit = (u32::from(cmd.speed_hi) << 16) | u32::from(cmd.speed);
    (mbit != 0 && mbit != u32::MAX && mbit != u32::from(u16::MAX))
        .then(|| u64::from(mbit) * 1_000_000)
}

#[test]
fn link_speed_matches_the_ioctl() {
    in_netns(|| {
        veth_up("nfa0", "nfb0");
        let speed = nl::link_speed_bits("nfa0").unwrap();
        assert_eq!(speed, ioctl_speed_bits("nfa0"));
        eprintln!("veth speed: {speed:?}");
        // Devices without link settings (IFB; dummy where built) report none, as by ioctl.
        for (name, add) in [
            ("nfd0", nl::dummy_add as fn(&str) -> nl::Result<u32>),
            ("nfi0", nl::ifb_add),
        ] {
            match add(name) {
                Ok(_) => {
                    let s = nl::link_speed_bits(name).unwrap();
                    assert_eq!(s, ioctl_speed_bits(name), "{name}");
                    assert_eq!(s, None, "{name}");
                }
                Err(e @ NetlinkError::LinkKindUnsupported { .. }) => {
                    assert_eq!(e.errno(), Some(libc::EOPNOTSUPP));
                    // dummy is not built on every kernel; IFB must be.
                    assert_eq!(name, "nfd0", "{e}");
                }
                Err(e) => panic!("{e}"),
            }
        }
        let e = nl::link_speed_bits("nfnone").unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
    });
}

/// `tc filter show` text with the numbers that differ between two equal filters (priority,
/// action index, reference counts) blanked.
fn normalized_filter(dev: &str, prio: &str) -> String {
    let (ok, out, err) = run(
        "tc",
        &["filter", "show", "dev", dev, "ingress", "prio", prio],
    );
    assert!(ok, "{err}");
    let mut words: Vec<&str> = out.split_whitespace().collect();
    for i in 1..words.len() {
        if [
            "pref",
            "index",
            "ref",
            "bind",
            "installed",
            "used",
            "firstused",
        ]
        .contains(&words[i - 1])
        {
            words[i] = "N";
        }
    }
    words.join(" ")
}

#[test]
fn mirred_filter_matches_tc() {
    in_netns(|| {
        let (a, _) = veth_up("nfa0", "nfb0");
        let ifb = match nl::ifb_add("nfifb1") {
            Ok(i) => i,
            Err(NetlinkError::LinkKindUnsupported { kind, .. }) => {
                panic!("this kernel has no {kind}: netfault's ingress shaping needs it")
            }
            Err(e) => panic!("{e}"),
        };
        aya::programs::tc::qdisc_add_clsact(a).unwrap();
        match nl::mirred_filter_add(a, 49153, 7, ifb) {
            Ok(()) => {}
            Err(e @ NetlinkError::FilterKindUnknown { .. }) => {
                assert_eq!(e.errno(), Some(libc::ENOENT));
                // tc agrees that this kernel cannot have the filter.
                let (ok, _, _) = run(
                    "tc",
                    &[
                        "filter",
                        "add",
                        "dev",
                        "nfa0",
                        "ingress",
                        "prio",
                        "49154",
                        "protocol",
                        "all",
                        "basic",
                        "match",
                        "meta(tc_index eq 7)",
                        "action",
                        "mirred",
                        "egress",
                        "redirect",
                        "dev",
                        "nfifb1",
                    ],
                );
                assert!(!ok, "tc added the filter netlink could not: {e}");
                // The filter itself is compared with tc's in `cargo xtask vm-test`.
                missing("cls_basic and act_mirred");
                nl::mirred_filter_del(a, 49153).unwrap();
                nl::clsact_del(a).unwrap();
                assert!(
                    !run("tc", &["qdisc", "show", "dev", "nfa0"])
                        .1
                        .contains("clsact")
                );
                return;
            }
            Err(e) => panic!("{e}"),
        }
        // The same filter by tc, one priority later: the kernel must hold the same thing.
        let (ok, _, err) = run(
            "tc",
            &[
                "filter",
                "add",
                "dev",
                "nfa0",
                "ingress",
                "prio",
                "49154",
                "protocol",
                "all",
                "basic",
                "match",
                "meta(tc_index eq 7)",
                "action",
                "mirred",
                "egress",
                "redirect",
                "dev",
                "nfifb1",
            ],
        );
        assert!(ok, "{err}");
        let mine = normalized_filter("nfa0", "49153");
        let theirs = normalized_filter("nfa0", "49154");
        eprintln!("netlink: {mine}\ntc:      {theirs}");
        assert!(mine.contains("basic"), "{mine}");
        assert!(mine.contains("meta(tc_index eq 7)"), "{mine}");
        assert!(mine.contains("Egress Redirect to device nfifb1"), "{mine}");
        assert_eq!(mine, theirs);
        // (Not `tc -j`: iproute2 6.1 prints the ematch into its JSON unquoted.)
        nl::mirred_filter_del(a, 49153).unwrap();
        assert!(normalized_filter("nfa0", "49153").is_empty());
        nl::mirred_filter_del(a, 49153).unwrap(); // gone is fine
        assert!(!normalized_filter("nfa0", "49154").is_empty(), "tc's stays");
        nl::clsact_del(a).unwrap();
        assert!(
            !run("tc", &["qdisc", "show", "dev", "nfa0"])
                .1
                .contains("clsact")
        );
        nl::clsact_del(a).unwrap(); // none is fine
        nl::mirred_filter_del(a, 49153).unwrap(); // no clsact is fine
    });
}

#[test]
fn xdp_attached_generic() {
    in_netns(|| {
        let (a, _) = veth_up("nfa0", "nfb0");
        assert_eq!(nl::xdp_attached(a).unwrap(), None);
        assert_eq!(nl::xdp_holder(a), None);
        let mut bpf = aya::Ebpf::load(netfault_lab::BENCH_OBJECT).unwrap();
        let prog: &mut aya::programs::Xdp =
            bpf.program_mut("bench_pass").unwrap().try_into().unwrap();
        prog.load().unwrap();
        let id = prog.info().unwrap().id();
        let link = prog
            .attach(
                aya::programs::NetworkInterface::Index(a),
                aya::programs::XdpMode::Skb,
            )
            .unwrap();
        let got = nl::xdp_attached(a).unwrap().expect("attached");
        assert_eq!(got.prog_id, id);
        assert_eq!(got.mode, XdpAttachMode::Generic);
        let v = json("ip", &["-j", "-d", "link", "show", "dev", "nfa0"]);
        let ip_id = v[0]["xdp"]["prog"]["id"]
            .as_u64()
            .or_else(|| v[0]["xdp"]["attached"][0]["prog"]["id"].as_u64());
        assert_eq!(ip_id, Some(u64::from(id)), "{v}");
        assert_eq!(
            nl::xdp_holder(a).as_deref(),
            Some(format!("program {id} (bench_pass)").as_str())
        );
        prog.detach(link).unwrap();
        // Other tests in this process spawn `tc` and `ip`: a child that has not exec'd yet
        // holds a copy of the link's fd (CLOEXEC closes it only at exec), so the kernel may
        // release the link a moment after our close. Bounded wait, then the query must agree.
        let deadline = Instant::now() + Duration::from_secs(2);
        while nl::xdp_attached(a).unwrap().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(nl::xdp_attached(a).unwrap(), None);
        assert_eq!(nl::xdp_holder(a), None);
    });
}

#[test]
fn features_round_trip() {
    in_netns(|| {
        veth_up("nfa0", "nfb0");
        const TSO: &str = "tx-tcp-segmentation";
        let before = nl::features("nfa0").unwrap();
        assert!(before.changeable.contains(TSO), "{before:?}");
        assert!(before.is_active(TSO), "veth starts with TSO on: {before:?}");
        assert!(before.is_active("tx-scatter-gather"), "bit 0 is read");
        let prev = nl::set_features("nfa0", &[(TSO, false)]).unwrap();
        assert_eq!(prev, before);
        let off = nl::features("nfa0").unwrap();
        assert!(!off.is_active(TSO) && !off.wanted.contains(TSO), "{off:?}");
        // TSO off may take dependent features with it (tx-tcp-mangleid-segmentation), never
        // turns one on, and leaves the other wanted bits alone.
        assert!(off.active.is_subset(&before.active), "{off:?}");
        let mut wanted = before.wanted.clone();
        wanted.remove(TSO);
        assert_eq!(off.wanted, wanted);
        let restore = prev.restore(&[TSO]);
        assert_eq!(restore, vec![(TSO.to_owned(), true)]);
        let owned: Vec<(&str, bool)> = restore.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        nl::set_features("nfa0", &owned).unwrap();
        assert_eq!(nl::features("nfa0").unwrap(), before);
        let e = nl::set_features("nfa0", &[("no-such-feature", false)]).unwrap_err();
        assert!(e.errno().is_some(), "{e}");
        assert_eq!(nl::features("nfa0").unwrap(), before);
    });
}
