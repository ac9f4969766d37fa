//! The command line's contract for bad input: exit 2, a message naming the field, and no change
//! to the kernel state (maps compared entry by entry before and after) nor to the rule list.
mod common;

use std::{collections::BTreeSet, process::Command};

use common::{Lab, Netfault, PREFIX, nf};
use netfault::dataplane::Maps;
use netfault_common::{GENERATIONS, MAX_TUPLES};
use netfault_lab::lab::Single;

const BIN: &str = env!("CARGO_BIN_EXE_netfault");

/// One namespace with a veth pair inside, netfault attached to one end (`iface`); the lab
/// detaches and removes everything on drop.
struct Host {
    ns: String,
    iface: String,
    peer: String,
    nf: Netfault,
    _lab: Lab,
}

impl Host {
    fn new(tag: &str) -> Host {
        let mut lab = Lab::new(PREFIX).expect("lab");
        let Single { ns, iface, peer } = lab.single(tag).expect("namespace with a veth pair");
        let nf = nf();
        nf.attach(&mut lab, &ns, &iface).expect("attach");
        Host {
            ns,
            iface,
            peer,
            nf,
            _lab: lab,
        }
    }

    fn nf(&self, args: &[&str]) -> std::process::Output {
        self.nf.output(&self.ns, args).unwrap()
    }

    /// Everything the data path reads, plus the rule list: what bad input must not change.
    fn snapshot(&self) -> String {
        let maps =
            Maps::open(format!("/sys/fs/bpf/netfault/netns-{}/maps", self.ns).as_ref()).unwrap();
        let cfg = maps.config().unwrap();
        let tuples: Vec<_> = (0..GENERATIONS * MAX_TUPLES)
            .map(|i| maps.tuples.get(&i, 0).unwrap())
            .collect();
        let flows: BTreeSet<String> = maps
            .flows
            .iter()
            .map(|r| format!("{:?}", r.unwrap()))
            .collect();
        let rules: Vec<_> = (0..64u32).map(|i| maps.rules.get(&i, 0).unwrap()).collect();
        let list = self.nf(&["rule", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        let names: Vec<_> = list["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].clone())
            .collect();
        // Links and programs: the pins, and the program ids status reports.
        let mut links: Vec<String> =
            std::fs::read_dir(format!("/sys/fs/bpf/netfault/netns-{}/links", self.ns))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        links.sort();
        let status: serde_json::Value =
            serde_json::from_slice(&self.nf(&["status", "--json"]).stdout).unwrap();
        let hooks = &status["interfaces"];
        // Qdiscs and devices: delay and rate install fq (and IFB devices).
        let qdiscs = self.tc_show();
        let devices = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-n", &self.ns, "-br", "link"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        format!(
            "{cfg:?}\n{tuples:?}\n{flows:?}\n{rules:?}\n{names:?}\n{links:?}\n{hooks}\n{qdiscs}\n{devices}"
        )
    }

    fn tc_show(&self) -> String {
        let out = Command::new("tc")
            .args(["-n", &self.ns, "qdisc", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn malformed_input_exits_2_names_the_field_and_changes_nothing() {
    let h = Host::new("bad");
    let ok = h.nf(&[
        "rule",
        "add",
        "keep",
        "--src",
        "192.0.2.0/24",
        "--drop",
        "10%",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ok = h.nf(&["partition", "198.51.100.1", "198.51.100.2", "--name", "p0"]);
    assert!(ok.status.success());
    let before = h.snapshot();

    // (arguments, a word the message must contain)
    let cases: &[(&[&str], &str)] = &[
        (&["rule", "add", "r", "--drop", "1.5"], "--drop"),
        (&["rule", "add", "r", "--drop", "abc"], "--drop"),
        (&["rule", "add", "r", "--drop", "-10%"], "--drop"),
        (&["rule", "add", "r", "--duplicate", "101%"], "--duplicate"),
        (
            &["rule", "add", "r", "--src", "192.0.2.0/33", "--drop", "1"],
            "--src",
        ),
        (
            &["rule", "add", "r", "--src", "300.1.1.1", "--drop", "1"],
            "--src",
        ),
        (
            &["rule", "add", "r", "--src", "192.0.2.1/24", "--drop", "1"],
            "--src",
        ),
        (
            &["rule", "add", "r", "--dst", "2001:db8::/129", "--drop", "1"],
            "--dst",
        ),
        (
            &[
                "rule",
                "add",
                "r",
                "--dst",
                "192.0.2.1,,192.0.2.2",
                "--drop",
                "1",
            ],
            "--dst",
        ),
        (
            &[
                "rule", "add", "r", "--proto", "udp", "--dport", "70000", "--drop", "1",
            ],
            "--dport",
        ),
        (
            &[
                "rule",
                "add",
                "r",
                "--proto",
                "udp",
                "--dport",
                "2000-1000",
                "--drop",
                "1",
            ],
            "--dport",
        ),
        (
            &[
                "rule", "add", "r", "--proto", "udp", "--sport", "x-1", "--drop", "1",
            ],
            "--sport",
        ),
        (
            &["rule", "add", "r", "--sport", "80", "--drop", "1"],
            "--sport",
        ),
        (
            &["rule", "add", "r", "--proto", "sctpx", "--drop", "1"],
            "--proto",
        ),
        (
            &["rule", "add", "r", "--dir", "sideways", "--drop", "1"],
            "--dir",
        ),
        (
            &["rule", "add", "r", "--iface", "nf-nosuch0", "--drop", "1"],
            "--iface",
        ),
        (
            &["rule", "add", "r", "--ttl", "soon", "--drop", "1"],
            "--ttl",
        ),
        (&["rule", "add", "r", "--ttl", "0s", "--drop", "1"], "--ttl"),
        (
            &[
                "rule",
                "add",
                "r",
                "--src",
                "192.0.2.1",
                "--dst",
                "2001:db8::1",
                "--drop",
                "1",
            ],
            "--dst",
        ),
        (&["rule", "add", "r"], "action"),
        (
            &["rule", "add", "keep", "--proto", "udp", "--drop", "1"],
            "NAME",
        ),
        (
            &["rule", "add", "p0", "--proto", "udp", "--drop", "1"],
            "NAME",
        ),
        (&["rule", "add", "r", "--drop", "1"], "--all-traffic"),
        (
            &["rule", "add", "r", "--src", "0.0.0.0/0", "--drop", "1"],
            "--all-traffic",
        ),
        (&["rule", "add", "bad name", "--drop", "1"], "NAME"),
        (
            &["rule", "add", "r", "--priority", "-1", "--drop", "1"],
            "--priority",
        ),
        (
            &["rule", "add", "r", "--frobnicate", "--drop", "1"],
            "--frobnicate",
        ),
        (&["rule", "del", "nosuch"], "NAME"),
        (&["partition", "192.0.2.1,,x", "192.0.2.2"], "SET_A"),
        (&["partition", "192.0.2.1", "2001:db8::1/200"], "SET_B"),
        (
            &["partition", "192.0.2.1", "192.0.2.2", "--ttl", "forever"],
            "--ttl",
        ),
        (&["heal", "nosuch"], "NAME"),
        (&["rule", "add", "r", "--delay", "0s"], "--delay"),
        (&["rule", "add", "r", "--delay", "soon"], "--delay"),
        (&["rule", "add", "r", "--jitter", "5ms"], "--jitter"),
        (
            &[
                "rule",
                "add",
                "r",
                "--delay",
                "9ms",
                "--distribution",
                "normal",
            ],
            "--distribution",
        ),
        (
            &[
                "rule",
                "add",
                "r",
                "--delay",
                "9ms",
                "--jitter",
                "1ms",
                "--distribution",
                "gauss",
            ],
            "--distribution",
        ),
        (
            &["rule", "add", "r", "--delay", "9ms", "--reorder"],
            "--reorder",
        ),
        (
            &["rule", "add", "r", "--delay", "59s", "--jitter", "2s"],
            "--jitter",
        ),
        (&["rule", "add", "r", "--rate", "10"], "--rate"),
        (&["rule", "add", "r", "--rate", "10furlong"], "--rate"),
        (&["rule", "add", "r", "--rate", "1bit"], "--rate"),
        // 50 s at the veth's 10 Gbit/s cannot be held in RAM: refused with the numbers, before
        // any qdisc is touched.
        (
            &["rule", "add", "r", "--proto", "udp", "--delay", "50s"],
            "--delay",
        ),
        (&["attach", "nf-nosuch0"], "IFACE"),
        (&["stats", "--watch", "often"], "--watch"),
    ];
    for (args, field) in cases {
        let out = h.nf(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: exit {:?}, stderr: {err}",
            out.status.code()
        );
        assert!(
            err.contains(field),
            "{args:?}: message does not name {field}: {err}"
        );
        assert_eq!(h.snapshot(), before, "{args:?} changed the kernel state");
    }
    assert!(cases.len() >= 30);

    // Rule-set files through `apply`: the same contract, the key's path named.
    let files: &[(&str, &str)] = &[
        (
            "[[rule]]\nname = \"x\"\nsrcc = [\"192.0.2.1\"]\ndrop = 1",
            "rule[0].srcc",
        ),
        ("[[rule]]\nname = \"x\"\nsrc = []\ndrop = 1", "rule[0].src"),
        ("[[rule]]\nname = \"x\"\ndrop = 1", "all = true"),
        (
            "[[rule]]\nname = \"x\"\nproto = \"udp\"\ndport = 70000\ndrop = 1",
            "rule[0].dport",
        ),
        (
            "[[partition]]\nname = \"p\"\na = [\"192.0.2.1\"]\nb = []",
            "partition[0].b",
        ),
        (
            "[[rule]]\nname = \"x\"\nproto = \"udp\"\ndrop = \"2\"",
            "rule[0].drop",
        ),
        (
            "[[rule]]\nname = \"x\"\nproto = \"udp\"\ndrop = 1\n[[rule]]\nname = \"x\"\nproto = \"tcp\"\ndrop = 1",
            "name",
        ),
        (
            "[[rule]]\nname = \"x\"\niface = \"nf-nosuch0\"\ndrop = 1",
            "--iface",
        ),
        ("[[rule] name", "FILE"),
        (
            "[[rule]]\nname = \"x\"\nproto = \"udp\"\ndelay = \"soon\"",
            "rule[0].delay",
        ),
        (
            "[[rule]]\nname = \"x\"\nproto = \"udp\"\njitter = \"5ms\"",
            "rule[0].jitter",
        ),
        (
            "[[rule]]\nname = \"x\"\nproto = \"udp\"\nrate = \"fast\"",
            "rule[0].rate",
        ),
    ];
    for (i, (text, field)) in files.iter().enumerate() {
        let path = std::env::temp_dir().join(format!("nf-cli-bad-{}-{i}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let out = h.nf(&["apply", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains(field),
            "{text}: message does not name {field}: {err}"
        );
        assert_eq!(h.snapshot(), before, "{text} changed the kernel state");
    }
}

#[test]
fn unknown_netns_is_bad_usage() {
    let out = Command::new(BIN)
        .args(["--netns", "nf-no-such-ns", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--netns"));
}

#[test]
fn not_attached_is_a_runtime_error() {
    let mut lab = Lab::new(PREFIX).expect("lab");
    let ns = lab.netns("na").expect("netns");
    let out = nf()
        .output(&ns, &["rule", "add", "r", "--proto", "udp", "--drop", "1"])
        .unwrap();
    drop(lab);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not attached"));
}

#[test]
fn without_root_it_says_so() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "rule",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("root"));
}

#[test]
fn attach_twice_is_a_no_op_and_detach_leaves_nothing() {
    let h = Host::new("twice");
    let pins = format!("/sys/fs/bpf/netfault/netns-{}", h.ns);
    let links = |p: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("{p}/links"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let first = links(&pins);
    let status1 = h.nf(&["status", "--json"]).stdout;
    // Pinned links: XDP always, tc only where it is tcx (clsact filters have no link).
    let tcx = String::from_utf8_lossy(&status1).contains("\"tcx\"");
    let want: &[&str] = if tcx {
        &["_tc_egress", "_tc_ingress", "_xdp"]
    } else {
        &["_xdp"]
    };
    let want: Vec<String> = want.iter().map(|w| format!("{}{w}", h.iface)).collect();
    assert_eq!(first, want);
    let out = h.nf(&["attach", &h.iface]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already attached"));
    assert_eq!(
        h.nf(&["status", "--json"]).stdout,
        status1,
        "program ids changed"
    );
    assert_eq!(links(&pins), first);

    let out = h.nf(&["detach"]);
    assert!(out.status.success());
    assert!(!std::path::Path::new(&pins).exists(), "pins left behind");
    assert!(!std::path::Path::new(&format!("/run/netfault/netns-{}", h.ns)).exists());
    let link = Command::new("ip")
        .args(["-n", &h.ns, "-d", "link", "show", &h.iface])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "XDP still attached"
    );
    let tc = Command::new("tc")
        .args(["-n", &h.ns, "qdisc", "show", "dev", &h.iface])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&tc.stdout).contains("clsact"));
    // Program ids from status are gone from the kernel.
    let st: serde_json::Value = serde_json::from_slice(&status1).unwrap();
    for hk in st["interfaces"][0]["hooks"].as_array().unwrap() {
        let id = hk["prog_id"].as_u64().unwrap();
        let show = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .unwrap();
        assert!(!show.status.success(), "program {id} still loaded");
    }
}

/// Delay and rate need the fq qdisc. Where the kernel has none (this project's dev and CI
/// host), `rule add` fails with exit 1, names fq, and changes nothing; where it has one (the
/// test VM), netfault installs its own fq as root and detach puts the default back.
#[test]
fn delay_needs_fq_and_says_so() {
    let h = Host::new("fq");
    let probe = Command::new("tc")
        .args(["-n", &h.ns, "qdisc", "add", "dev", &h.peer, "root", "fq"])
        .output()
        .unwrap();
    let have_fq = probe.status.success();
    let _ = Command::new("tc")
        .args(["-n", &h.ns, "qdisc", "del", "dev", &h.peer, "root"])
        .output();
    let before = h.snapshot();
    for args in [
        &["rule", "add", "d", "--proto", "udp", "--delay", "50ms"][..],
        &[
            "rule", "add", "d", "--proto", "udp", "--rate", "10mbit", "--dir", "ingress",
        ][..],
    ] {
        let out = h.nf(args);
        let err = String::from_utf8_lossy(&out.stderr);
        if have_fq {
            assert!(out.status.success(), "{args:?}: {err}");
            assert!(h.tc_show().contains("qdisc fq 4e46:"), "{}", h.tc_show());
            assert!(h.nf(&["rule", "del", "d"]).status.success());
        } else {
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.contains("no fq qdisc") && err.contains("sch_fq"),
                "{err}"
            );
            assert_eq!(h.snapshot(), before, "{args:?} changed the kernel state");
        }
    }
    if have_fq {
        assert!(h.nf(&["detach", &h.iface]).status.success());
        let q = h.tc_show();
        assert!(!q.contains("4e46:") && !q.contains("nfifb"), "{q}");
    }
}
