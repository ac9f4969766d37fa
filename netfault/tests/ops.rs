//! The controller against what it reports: sequences of `rule add`, `renew`, `rule del`,
//! `apply`, `partition`, `heal` and time passing, run through the real CLI on an attached
//! namespace. After each operation, the data path's verdict for a packet of every rule, and
//! the lifetime each rule's value holds in the generation the data path reads, must be what
//! `rule list --json` says (present, expired, `expires_in_ms`).
//!
//! The verdicts come from the very maps the attached programs read: the test loads a second
//! copy of the programs onto the namespace's pinned maps and runs them with
//! BPF_PROG_TEST_RUN. Lifetimes run on the kernel's clock, so time passes by sleeping; TTLs are
//! a second or two. Fixed seeds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use common::{Lab, Netfault, PREFIX, TempFile, nf, ok_stdout, temp_file};
use netfault::{
    control::{monotonic_ns, netns::key_of, state::Paths},
    dataplane::{self as kernel, Maps},
};
use netfault_common::{RULE_ACTIVE, rule_index};
use netfault_lab::lab::Single;
use proptest::{
    prelude::RngExt as _,
    test_runner::{RngAlgorithm, TestRng},
};

/// tc egress: a drop is a redirect to ifindex 0 (a loss to the sender); a pass goes on.
const TC_ACT_REDIRECT: u32 = 7;
const TCX_NEXT: u32 = u32::MAX;
/// Rules r0..r3, each dropping what goes to its own address.
const RULES: usize = 4;
/// The partition's two sides.
const PART: [&str; 2] = ["203.0.113.1", "203.0.113.2"];

fn rule_dst(i: usize) -> String {
    format!("198.51.100.{}", 10 + i)
}

/// A UDP frame from `src` to `dst` (IPv4, no checksums: the classifier reads none).
fn frame(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (src.parse().unwrap(), dst.parse().unwrap());
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 48, 0, 1, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&d.octets());
    f.extend_from_slice(&[0x03, 0xe8, 0x00, 0x35, 0, 28, 0, 0]);
    f.extend_from_slice(&[0u8; 20]);
    f
}

/// What `rule list --json` says of one entry, read between two clock readings.
#[derive(Debug, Clone)]
struct Listed {
    expires_in_ms: Option<u64>,
    expired: bool,
}

struct Bench {
    ns: String,
    nf: Netfault,
    paths: Paths,
    /// The programs, loaded a second time onto the attached namespace's pinned maps.
    ebpf: aya::Ebpf,
    /// Checks whose packet ran within a clock tick of its rule's expiry (the verdict may go
    /// either way there); must stay rare.
    boundary: u32,
    checks: u32,
    /// Generations found with a trusted flow index, over every check.
    indexed: u32,
    _lab: Lab,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let mut lab = Lab::new(PREFIX).expect("lab");
        let Single { ns, iface, .. } = lab.single(tag).expect("namespace with a veth pair");
        let nf = nf();
        nf.attach(&mut lab, &ns, &iface).expect("attach");
        let paths = Paths::new(&key_of(&ns).expect("state key"));
        assert!(
            paths.maps().is_dir(),
            "no pinned maps at {}",
            paths.maps().display()
        );
        let mut ebpf = kernel::load(&paths.maps()).expect("load onto the pinned maps");
        let p: &mut SchedClassifier = ebpf
            .program_mut("nf_tc_egress")
            .unwrap()
            .try_into()
            .unwrap();
        p.load().expect("load tc egress");
        Bench {
            ns,
            nf,
            paths,
            ebpf,
            boundary: 0,
            checks: 0,
            indexed: 0,
            _lab: lab,
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        ok_stdout(
            self.nf.output(&self.ns, args).unwrap(),
            &format!("netfault {}", args.join(" ")),
        )
    }

    fn dropped(&self, pkt: &[u8]) -> bool {
        let p: &SchedClassifier = self
            .ebpf
            .program("nf_tc_egress")
            .unwrap()
            .try_into()
            .unwrap();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN")
            .return_value;
        assert!(
            r == TC_ACT_REDIRECT || r == TCX_NEXT,
            "unexpected tc verdict {r}"
        );
        r == TC_ACT_REDIRECT
    }

    fn list(&self) -> BTreeMap<String, Listed> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["rule", "list", "--json"])).unwrap();
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_owned(),
                    Listed {
                        expires_in_ms: r["expires_in_ms"].as_u64(),
                        expired: r["expired"].as_bool().unwrap(),
                    },
                )
            })
            .collect()
    }

    /// The kernel's value of each rule in the generation the data path reads, by name (the
    /// names' slots from the state netfault keeps).
    fn kernel_expiries(&self) -> BTreeMap<String, u64> {
        // The state file itself: `read_state` wants to run inside the namespace it reads.
        let state: netfault::control::state::State =
            serde_json::from_slice(&std::fs::read(self.paths.state_file()).expect("state file"))
                .expect("state");
        let maps = Maps::open(&self.paths.maps()).expect("open maps");
        let active = maps.config().unwrap().active & 1;
        state
            .rules
            .iter()
            .filter(|r| r.spec.kind != netfault::spec::Kind::Protect)
            .map(|r| {
                let v = maps
                    .rules
                    .get(&rule_index(active, r.slot), 0)
                    .expect("rule value");
                assert_ne!(
                    v.flags & RULE_ACTIVE,
                    0,
                    "{}: slot {} of generation {active} is not active",
                    r.spec.name,
                    r.slot
                );
                (r.spec.name.clone(), v.expires_ns)
            })
            .collect()
    }

    /// Verdict of `pkt` against what the list says of `name`; `exp` is the kernel's expiry of
    /// that entry (0: never). A packet run within 10 ms of the expiry is not judged.
    fn judge(&mut self, what: &str, pkt: &[u8], listed: Option<&Listed>, exp: Option<u64>) {
        let before = monotonic_ns();
        let dropped = self.dropped(pkt);
        let after = monotonic_ns();
        self.checks += 1;
        let want = match (listed, exp) {
            (None, _) => false,
            (Some(l), _) if l.expired => false,
            (Some(_), Some(0) | None) => true,
            (Some(_), Some(e)) => {
                if before + 10_000_000 >= e && after <= e + 10_000_000 {
                    self.boundary += 1;
                    return;
                }
                after < e
            }
        };
        assert_eq!(
            dropped,
            want,
            "{what}: the data path {} it, the list says {listed:?}",
            if dropped { "drops" } else { "passes" }
        );
    }

    /// Each generation's flow keys: the flow maps hold exactly those its index lists, when
    /// the config's digest vouches for the index (a rewrite deletes the generation's old
    /// flows by its index, so a key it missed would stay here); and once anything was
    /// published, the generation the data path reads has such an index (changes do not walk
    /// the maps). Returns how many generations had one.
    fn check_flow_index(&self, step: &str) -> u32 {
        use std::collections::HashSet;

        use netfault::dataplane::flow_index::FlowIndex;
        let maps = Maps::open(&self.paths.maps()).expect("open maps");
        let cfg = maps.config().unwrap();
        let mut trusted = 0;
        for g in 0..2u32 {
            let digest = cfg.digest[g as usize];
            let index = FlowIndex::read(&self.paths.run, g).filter(|i| i.digest == digest);
            if g == cfg.active & 1 && digest != 0 {
                assert!(
                    index.is_some(),
                    "{step}: generation {g} (read by the data path) has no index of its digest"
                );
            }
            let Some(index) = index.filter(|_| digest != 0) else {
                continue;
            };
            trusted += 1;
            let v6: HashSet<_> = maps.flows.keys().map(Result::unwrap).collect();
            let v4: HashSet<_> = maps.flows4.keys().map(Result::unwrap).collect();
            let (v6, v4) = (
                v6.into_iter().filter(|k| u32::from(k.gen_) == g),
                v4.into_iter().filter(|k| u32::from(k.gen_) == g),
            );
            assert_eq!(
                (v6.collect::<HashSet<_>>(), v4.collect::<HashSet<_>>()),
                (
                    index.v6.iter().copied().collect(),
                    index.v4.iter().copied().collect()
                ),
                "{step}: flows of generation {g} (IPv6, IPv4) against its index"
            );
        }
        trusted
    }

    /// Everything the list says equals what the data path does, now.
    fn check(&mut self, step: &str) {
        self.indexed += self.check_flow_index(step);
        let t0 = monotonic_ns();
        let listed = self.list();
        let t1 = monotonic_ns();
        let exp = self.kernel_expiries();
        // Lifetimes: the same entries, and each kernel expiry is what `expires_in_ms` said.
        let live_listed: Vec<_> = listed.keys().cloned().collect();
        let in_kernel: Vec<_> = exp.keys().cloned().collect();
        assert_eq!(live_listed, in_kernel, "{step}: listed vs in the data path");
        for (name, l) in &listed {
            let e = exp[name];
            match l.expires_in_ms {
                None => assert_eq!(
                    e, 0,
                    "{step}: {name} never expires by the list, the data path ends it at {e}"
                ),
                Some(ms) => {
                    assert_ne!(
                        e, 0,
                        "{step}: {name} expires in {ms} ms by the list, never in the data path"
                    );
                    let (hi, lo) = (
                        e.saturating_sub(t0) / 1_000_000,
                        e.saturating_sub(t1) / 1_000_000,
                    );
                    assert!(
                        (lo..=hi).contains(&ms),
                        "{step}: {name} expires in {ms} ms by the list, in [{lo}, {hi}] ms in the data path"
                    );
                }
            }
        }
        for i in 0..RULES {
            let name = format!("r{i}");
            let pkt = frame("192.0.2.1", &rule_dst(i));
            self.judge(
                &format!("{step}: {name}"),
                &pkt,
                listed.get(&name),
                exp.get(&name).copied(),
            );
        }
        for (a, b) in [(PART[0], PART[1]), (PART[1], PART[0])] {
            let pkt = frame(a, b);
            self.judge(
                &format!("{step}: p {a} -> {b}"),
                &pkt,
                listed.get("p"),
                exp.get("p").copied(),
            );
        }
    }
}

fn ttl_arg(ttl: Option<&str>) -> Vec<&str> {
    ttl.map(|t| vec!["--ttl", t]).unwrap_or_default()
}

fn add_rule(b: &Bench, i: usize, ttl: Option<&str>) {
    let (name, dst) = (format!("r{i}"), rule_dst(i));
    let mut args = vec![
        "rule", "add", &name, "--dir", "egress", "--dst", &dst, "--drop", "100%",
    ];
    args.extend(ttl_arg(ttl));
    b.ok(&args);
}

fn partition(b: &Bench, ttl: Option<&str>) {
    let mut args = vec!["partition", PART[0], PART[1], "--name", "p"];
    args.extend(ttl_arg(ttl));
    b.ok(&args);
}

/// A rule-set file of the rules in `which` (by index) and, with `part`, the partition.
fn ruleset(which: &[(usize, &str)], part: Option<&str>) -> TempFile {
    let mut text = String::new();
    for (i, ttl) in which {
        text += &format!(
            "[[rule]]\nname = \"r{i}\"\ndir = \"egress\"\ndst = [\"{}\"]\ndrop = \"100%\"\nttl = \"{ttl}\"\n\n",
            rule_dst(*i)
        );
    }
    if let Some(ttl) = part {
        text += &format!(
            "[[partition]]\nname = \"p\"\na = [\"{}\"]\nb = [\"{}\"]\nttl = \"{ttl}\"\n",
            PART[0], PART[1]
        );
    }
    temp_file("toml", &text)
}

/// The case of the bug report: a renewal to a lifetime and back to none flips back to a
/// generation whose flows are unchanged; its values must be the ones it was published with.
#[test]
fn a_renewal_back_to_no_lifetime_never_expires_in_the_data_path() {
    let mut b = Bench::new("renew");
    add_rule(&b, 0, Some("none"));
    b.check("add r0 --ttl none");
    b.ok(&["renew", "r0", "--ttl", "1s"]);
    b.check("renew r0 --ttl 1s");
    b.ok(&["renew", "r0", "--ttl", "none"]);
    b.check("renew r0 --ttl none");
    std::thread::sleep(Duration::from_millis(1300));
    b.check("1.3 s later");
    assert!(
        b.dropped(&frame("192.0.2.1", &rule_dst(0))),
        "r0 no longer drops"
    );
    // And the other way: from none to a lifetime and back to the same lifetime's set.
    partition(&b, Some("1s"));
    b.ok(&["renew", "p", "--ttl", "none"]);
    b.ok(&["renew", "p", "--ttl", "1s"]);
    b.check("partition renewed to none and back");
    std::thread::sleep(Duration::from_millis(1300));
    b.check("1.3 s after the partition's renewal");
    assert!(
        !b.dropped(&frame(PART[0], PART[1])),
        "the partition outlived its lifetime"
    );
}

/// Random operation sequences, the clock advanced between them.
#[test]
fn any_sequence_of_changes_keeps_the_data_path_and_the_list_equal() {
    let mut b = Bench::new("ops");
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[0x14; 32]);
    const TTLS: [&str; 4] = ["none", "1s", "2s", "5m"];
    let start = Instant::now();
    let steps = 60;
    for n in 0..steps {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "step {n}: the sequence takes too long"
        );
        let listed = b.list();
        // Entries that may be renewed or deleted without racing their own expiry.
        let safe = |name: &str| {
            listed
                .get(name)
                .is_some_and(|l| !l.expired && l.expires_in_ms.is_none_or(|ms| ms > 400))
        };
        let i = rng.random_range(0..RULES);
        let name = format!("r{i}");
        let ttl = TTLS[rng.random_range(0..TTLS.len())];
        let step = match rng.random_range(0..8) {
            0..=1 if !listed.contains_key(&name) => {
                add_rule(&b, i, Some(ttl));
                format!("rule add {name} --ttl {ttl}")
            }
            0..=2 if safe(&name) => {
                b.ok(&["renew", &name, "--ttl", ttl]);
                format!("renew {name} --ttl {ttl}")
            }
            3 if safe(&name) => {
                b.ok(&["rule", "del", &name]);
                format!("rule del {name}")
            }
            4 => {
                let mut which: Vec<(usize, &str)> = Vec::new();
                for i in 0..RULES {
                    if rng.random_bool(0.5) {
                        which.push((i, TTLS[rng.random_range(0..TTLS.len())]));
                    }
                }
                let part = rng
                    .random_bool(0.5)
                    .then(|| TTLS[rng.random_range(0..TTLS.len())]);
                let file = ruleset(&which, part);
                b.ok(&["apply", file.arg()]);
                format!("apply {which:?} partition {part:?}")
            }
            5 if !listed.contains_key("p") => {
                partition(&b, Some(ttl));
                format!("partition p --ttl {ttl}")
            }
            5 if safe("p") => {
                b.ok(&["heal", "p"]);
                "heal p".to_owned()
            }
            _ => {
                let ms = [300, 700, 1200][rng.random_range(0..3)];
                std::thread::sleep(Duration::from_millis(ms));
                format!("{ms} ms pass")
            }
        };
        b.check(&format!("step {n} ({step})"));
    }
    assert!(
        b.boundary * 20 <= b.checks,
        "{} of {} checks fell on an expiry and were not judged",
        b.boundary,
        b.checks
    );
    // Both generations indexed after most steps: the indexes were used, not just kept.
    assert!(b.indexed >= 30, "{} generations indexed in all", b.indexed);
}
