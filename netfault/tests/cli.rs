//! The command line's contract for bad input: exit 2, a message naming the field, and no change
//! to the kernel state (maps compared entry by entry before and after) nor to the rule list.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{Lab, Netfault, PREFIX, netfault_dirs, nf, temp_file};
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
        let maps = Maps::open(&netfault_dirs(&self.ns)[0].join("maps")).unwrap();
        let cfg = maps.config().unwrap();
        let tuples: Vec<_> = (0..GENERATIONS * MAX_TUPLES)
            .map(|i| maps.tuples.get(&i, 0).unwrap())
            .collect();
        let flows: BTreeSet<String> = maps
            .flows
            .iter()
            .map(|r| format!("{:?}", r.unwrap()))
            .chain(maps.flows4.iter().map(|r| format!("{:?}", r.unwrap())))
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
        let mut links: Vec<String> = std::fs::read_dir(netfault_dirs(&self.ns)[0].join("links"))
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
        (&["rule", "add", "r", "--corrupt", "150%"], "--corrupt"),
        (&["rule", "add", "r", "--corrupt", "-0.1"], "--corrupt"),
        (
            &[
                "rule",
                "add",
                "r",
                "--src",
                "192.0.2.1",
                "--drop",
                "1",
                "--corrupt-checksum",
                "good",
            ],
            "--corrupt-checksum",
        ),
        (
            &[
                "rule",
                "add",
                "r",
                "--src",
                "192.0.2.1",
                "--corrupt",
                "5%",
                "--corrupt-checksum",
                "fixed",
            ],
            "--corrupt-checksum",
        ),
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
        // Hold and late duplicates (issue 15, points 5 and 6).
        (
            &["rule", "add", "r", "--proto", "udp", "--hold", "0s"],
            "--hold",
        ),
        (
            &["rule", "add", "r", "--proto", "udp", "--hold", "soon"],
            "--hold",
        ),
        (
            &["rule", "add", "r", "--proto", "udp", "--hold", "61s"],
            "--hold",
        ),
        (
            &[
                "rule", "add", "r", "--proto", "udp", "--hold", "2s", "--rate", "1mbit",
            ],
            "--hold",
        ),
        (
            &[
                "rule", "add", "r", "--proto", "udp", "--hold", "2s", "--reject",
            ],
            "--hold",
        ),
        (
            &[
                "rule",
                "add",
                "r",
                "--dir",
                "egress",
                "--proto",
                "udp",
                "--duplicate-delay",
                "100ms",
            ],
            "--duplicate-delay",
        ),
        (
            &[
                "rule",
                "add",
                "r",
                "--proto",
                "udp",
                "--duplicate",
                "1",
                "--duplicate-delay",
                "100ms",
            ],
            "--duplicate-delay",
        ),
        (
            &[
                "rule",
                "add",
                "r",
                "--dir",
                "egress",
                "--proto",
                "udp",
                "--duplicate",
                "1",
                "--duplicate-delay",
                "0s",
            ],
            "--duplicate-delay",
        ),
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
        (
            "[[rule]]\nname = \"x\"\nproto = \"udp\"\ncorrupt = \"2\"",
            "rule[0].corrupt",
        ),
        (
            "[[rule]]\nname = \"x\"\nproto = \"udp\"\ndrop = 1\ncorrupt_checksum = \"good\"",
            "rule[0].corrupt_checksum",
        ),
        (
            "[[rule]]\nname = \"x\"\nproto = \"udp\"\nhold = \"forever\"",
            "rule[0].hold",
        ),
        (
            "[[rule]]\nname = \"x\"\nproto = \"udp\"\ndir = \"egress\"\nduplicate_delay = \"1s\"",
            "rule[0].duplicate_delay",
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

/// The data path walks at most `MAX_CHAIN` rules with one match: a fifth is refused, never
/// left out of the set.
#[test]
fn a_fifth_rule_with_one_match_is_refused_and_changes_nothing() {
    let h = Host::new("chain");
    let same = ["--dir", "egress", "--dst", "198.51.100.9", "--drop", "10%"];
    let n = netfault_common::MAX_CHAIN as usize;
    for i in 0..n {
        let name = format!("r{i}");
        let mut args = vec!["rule", "add", name.as_str()];
        args.extend(same);
        let out = h.nf(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let before = h.snapshot();
    let mut args = vec!["rule", "add", "late"];
    args.extend(same);
    let out = h.nf(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'late'") && err.contains(&format!("at most {n} rules with one match")),
        "the message names neither the rule nor the limit: {err}"
    );
    assert_eq!(
        h.snapshot(),
        before,
        "the refused rule changed the kernel state"
    );
    // The same through a rule-set file.
    let text: String = (0..=n)
        .map(|i| format!("[[rule]]\nname = \"f{i}\"\ndst = [\"198.51.100.9\"]\ndrop = 1\n"))
        .collect();
    let file = temp_file("toml", &text);
    let out = h.nf(&["apply", file.arg()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("'f{n}'")), "{err}");
    assert_eq!(
        h.snapshot(),
        before,
        "the refused file changed the kernel state"
    );
}

#[test]
fn unknown_netns_is_bad_usage() {
    let out = Command::new(BIN)
        .args(["--netns", "nf-no-such-ns", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Said once: what is wrong, and with which flag.
    assert_eq!(err.matches("--netns").count(), 1, "{err}");
    assert!(err.contains("nf-no-such-ns"), "{err}");
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
    let [pins, run_dir] = netfault_dirs(&h.ns);
    let pins = pins.to_str().unwrap().to_string();
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
    // Pinned links: tc only where it is tcx (clsact filters have no link). A veth with no
    // drop rule has no XDP (tests/hooks.rs covers when it comes and goes).
    let tcx = String::from_utf8_lossy(&status1).contains("\"tcx\"");
    let want: &[&str] = if tcx {
        &["_tc_egress", "_tc_ingress"]
    } else {
        &[]
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
    assert!(!run_dir.exists());
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
        // A hold and late copies need fq as a delay does, and are refused where it is.
        &["rule", "add", "d", "--proto", "udp", "--hold", "2s"][..],
        &[
            "rule",
            "add",
            "d",
            "--proto",
            "udp",
            "--dir",
            "egress",
            "--duplicate",
            "50%",
            "--duplicate-delay",
            "100ms",
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

#[test]
fn detach_of_an_interface_not_attached_is_bad_input() {
    let h = Host::new("det");
    let before = h.snapshot();
    for args in [
        &["detach", h.peer.as_str()][..],
        &["detach", h.iface.as_str(), h.peer.as_str()][..],
    ] {
        let out = h.nf(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&h.peer) && err.contains("not attached"),
            "{err}"
        );
        // The attached one stays attached, also when named first.
        assert_eq!(h.snapshot(), before, "{args:?} changed the kernel state");
    }
}

/// A child killed (and reaped) when dropped, so a failing test leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaped {
    fn spawn(cmd: &mut Command) -> Reaped {
        Reaped(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// Lines of stdout, read by a thread that ends at EOF.
    fn lines(&mut self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        let out = self.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        rx
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: a pid of our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.0.id() as libc::pid_t, sig) }, 0);
    }

    /// Exit status within `limit` (polled), or None (the child is then killed on drop).
    fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.0.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

/// Waits for a line containing `want`; all lines seen so far on failure.
fn line_within(rx: &mpsc::Receiver<String>, want: &str, limit: Duration) -> Result<String, String> {
    let end = Instant::now() + limit;
    let mut seen = String::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(want) => return Ok(l),
            Ok(l) => seen += &(l + "\n"),
            Err(_) => break,
        }
    }
    Err(seen)
}

#[test]
fn sigint_ends_stats_watch_with_130() {
    let h = Host::new("wsig");
    let mut c =
        Reaped::spawn(Command::new(BIN).args(["--netns", &h.ns, "stats", "--watch", "100ms"]));
    let lines = c.lines();
    // Two frames: the handler is in place before the first.
    for _ in 0..2 {
        line_within(&lines, "NAME", Duration::from_secs(10)).expect("a frame");
    }
    c.signal(libc::SIGINT);
    let st = c
        .wait_within(Duration::from_secs(10))
        .expect("stats --watch ignored SIGINT");
    assert_eq!(st.code(), Some(130), "{st:?}: {}", c.stderr());
}

#[test]
fn signals_end_run_with_130_and_143_and_it_detaches() {
    let h = Host::new("rsig");
    let file = temp_file(
        "toml",
        "[[rule]]\nname = \"r\"\nproto = \"udp\"\ndport = \"9\"\ndrop = 1\n",
    );
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut c = Reaped::spawn(
            Command::new(BIN)
                .args(["--netns", &h.ns, "run"])
                .arg(&file.0)
                .args(["--iface", &h.peer, "--duration", "60s"]),
        );
        let lines = c.lines();
        let first = line_within(&lines, "until this command ends", Duration::from_secs(15));
        let first =
            first.unwrap_or_else(|seen| panic!("run never attached: {seen} {}", c.stderr()));
        assert!(
            first.starts_with(&format!("{}: attached (ingress: ", h.peer)),
            "{first}"
        );
        // The handlers are installed right after that line: give them a moment.
        std::thread::sleep(Duration::from_millis(300));
        c.signal(sig);
        let st = c
            .wait_within(Duration::from_secs(10))
            .expect("run ignored the signal");
        assert_eq!(
            st.code(),
            Some(code),
            "signal {sig}: {st:?}: {}",
            c.stderr()
        );
        assert!(line_within(&lines, "detached", Duration::from_secs(2)).is_ok());
        let link = Command::new("ip")
            .args(["-n", &h.ns, "-d", "link", "show", &h.peer])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
            "XDP left on {}",
            h.peer
        );
    }
}

/// `| head -c1`: the reader goes away; netfault ends quietly (exit 0), no panic, no message.
#[test]
fn a_closed_pipe_ends_quietly() {
    let h = Host::new("pipe");
    assert!(
        h.nf(&["rule", "add", "r", "--proto", "udp", "--drop", "1"])
            .status
            .success()
    );
    let cases: &[&[&str]] = &[
        &["rule", "list", "--json"],
        &["rule", "list"],
        &["status"],
        &["stats", "--json"],
        &["completions", "bash"],
    ];
    for args in cases {
        let mut c = Reaped::spawn(Command::new(BIN).args(["--netns", &h.ns]).args(*args));
        drop(c.0.stdout.take()); // closed before the first write
        let st = c.wait_within(Duration::from_secs(10)).expect("exit");
        let err = c.stderr();
        assert_eq!(st.code(), Some(0), "{args:?}: {st:?} {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
    // `stats --watch 100ms | head -c1`: one byte read, then the pipe closes.
    let mut c =
        Reaped::spawn(Command::new(BIN).args(["--netns", &h.ns, "stats", "--watch", "100ms"]));
    let mut out = c.0.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    out.read_exact(&mut byte).unwrap();
    drop(out);
    let st = c
        .wait_within(Duration::from_secs(10))
        .expect("stats --watch kept writing to a closed pipe");
    let err = c.stderr();
    assert_eq!(st.code(), Some(0), "{st:?} {err}");
    assert!(!err.contains("panicked") && err.is_empty(), "{err}");
}

/// Capabilities, not the user id: root without CAP_NET_ADMIN (or CAP_BPF and CAP_SYS_ADMIN)
/// is refused, told which, and nothing changes; reading needs no CAP_NET_ADMIN.
#[test]
fn missing_capabilities_are_named_and_change_nothing() {
    let h = Host::new("caps");
    let before = h.snapshot();
    let dropped = |caps: &str, args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--inh-caps=-all",
                &format!("--bounding-set={caps}"),
                BIN,
                "--netns",
                &h.ns,
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let add = ["rule", "add", "r", "--proto", "udp", "--drop", "1"];
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("-net_admin", &add, &["CAP_NET_ADMIN"]),
        (
            "-bpf,-sys_admin",
            &add,
            &["CAP_BPF or CAP_SYS_ADMIN", "--netns"],
        ),
        ("-net_admin", &["attach", &h.peer], &["CAP_NET_ADMIN"]),
        ("-net_admin", &["detach"], &["CAP_NET_ADMIN"]),
    ];
    for (caps, args, want) in cases {
        let out = dropped(caps, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{caps} {args:?}: {err}");
        for w in *want {
            assert!(err.contains(w), "{caps} {args:?}: does not name {w}: {err}");
        }
        assert!(
            !err.contains("CAP_DAC_OVERRIDE"),
            "uid 0 owns the state: {err}"
        );
        assert_eq!(
            h.snapshot(),
            before,
            "{caps} {args:?} changed the kernel state"
        );
    }
    let out = dropped("-net_admin", &["rule", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completions_and_manpage_need_no_kernel() {
    let nobody = |args: &[&str]| {
        // As nobody, without capabilities: these commands touch nothing.
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .output()
            .unwrap()
    };
    for shell in ["bash", "zsh", "fish"] {
        let out = nobody(&["completions", shell]);
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["attach", "partition", "heal", "protect", "--watch"] {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let out = nobody(&["manpage"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = String::from_utf8_lossy(&out.stdout);
    // clap_mangen defines a string (Aq) first; the title header comes before any text.
    let first = page
        .lines()
        .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"));
    assert!(
        first.is_some_and(|l| l.starts_with(".TH netfault")),
        "{page}"
    );
    for sub in [
        "attach",
        "detach",
        "rule add",
        "partition",
        "stats",
        "run",
        "completions",
    ] {
        assert!(
            page.contains(&format!(".SS \"netfault {}\"", sub.replace('-', "\\-"))),
            "no {sub}: {page}"
        );
    }
    assert!(page.contains("\\-\\-watch"), "options listed");
}
