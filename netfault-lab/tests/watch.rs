//! The watch the cluster bench times cuts with, against a cut whose pairs are known: an nft
//! table in one host of three that drops one peer in the input hook. It must name that pair
//! and no other, time it within a second, see the heal, and refuse to call a wrong set of pairs
//! cut. Needs root (namespaces, nft).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use netfault_lab::{
    lab::{Host, Lab, run_in},
    probe::mono_ns,
    watch::Watch,
};

/// `nft -f -` with `script`, inside `h`'s namespace; must succeed.
fn nft(h: &Host, script: &str) {
    let mut c = Command::new("nft");
    c.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = run_in(&h.ns, || c.spawn()).unwrap().expect("nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_watch_times_exactly_the_pairs_a_cut_cuts_and_its_heal() {
    let mut lab = Lab::new("nfwatch").expect("lab");
    let hosts = lab.star(3).expect("bridge");
    let w = Watch::start(&hosts, &[false, true], 4600, Duration::from_millis(5)).unwrap();
    w.wait_flowing(Duration::from_secs(10)).unwrap();
    // n3 drops n1, both families: the pair (n1 -> n3) only.
    let t0 = mono_ns();
    nft(
        &hosts[2],
        &format!(
            "table inet nfwatch {{\n chain input {{\n  type filter hook input priority \
             filter;\n  ip saddr {} drop\n  ip6 saddr {} drop\n }}\n}}\n",
            hosts[0].v4, hosts[0].v6
        ),
    );
    let returned = mono_ns() - t0;
    // A wrong set is never settled: (n2 -> n3) still flows, (n1 -> n3) is cut.
    let wrong = w.wait_cut(t0, &[(1, 2)], Duration::from_millis(300), || Ok(true));
    assert!(wrong.is_err(), "{wrong:?}");
    let cut = w
        .wait_cut(t0, &[(0, 2)], Duration::from_secs(5), || Ok(true))
        .unwrap();
    assert_eq!(cut.pairs.len(), 1);
    // Landed after the start and no later than one period after nft returned.
    let t = cut.all();
    assert!(
        t > 0 && t <= returned + 5_000_000 + 1_000_000,
        "cut at {t} ns, nft returned at {returned} ns"
    );
    let t0 = mono_ns();
    nft(&hosts[2], "delete table inet nfwatch");
    let returned = mono_ns() - t0;
    let healed = w
        .wait_healed(t0, &[(0, 2)], Duration::from_secs(5), || Ok(true))
        .unwrap();
    let t = healed.all();
    assert!(
        (0..=returned + 5_000_000 + 1_000_000).contains(&t),
        "healed at {t} ns, nft returned at {returned} ns"
    );
    assert!(w.received() > 0);
    w.stop().unwrap();
}
