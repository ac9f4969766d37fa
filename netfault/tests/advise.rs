//! `netfault advise`: the timeout and phi thresholds of round-trip times read from a file, as a
//! user without privileges runs it; bad input exits 2 naming the line or the flag.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]

mod common;

use std::process::{Command, Output};

use common::{TempFile, temp_file_mode};

const BIN: &str = env!("CARGO_BIN_EXE_netfault");

/// `netfault advise ARGS` as nobody (uid 65534): it needs no privileges.
fn advise(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "advise",
        ])
        .args(args)
        .output()
        .unwrap()
}

/// Exact quantiles of the uniform distribution on [10 ms, 20 ms): 100,000 samples, one per
/// line in µs, readable by nobody.
fn uniform_samples() -> TempFile {
    let mut text = String::from("# rtts, uniform 10-20 ms\n");
    for i in 0..100_000 {
        text.push_str(&format!(
            "{}us\n",
            10_000.0 + 10_000.0 * (f64::from(i) + 0.5) / 1e5
        ));
    }
    temp_file_mode("txt", &text, 0o644)
}

#[test]
fn the_report_has_every_key_and_the_timeout_bounds_the_quantile() {
    let f = uniform_samples();
    // 86.4 false suspicions a day with a heartbeat a second: one heartbeat in 1,000 may miss
    // (a little less: (1 - q) q = 0.001), so the timeout is the 99.9 % quantile's upper bound.
    let out = advise(&[
        "--samples",
        f.arg(),
        "--false-suspicions",
        "86.4/day",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "peer",
        "samples",
        "source",
        "loss",
        "rtt_us",
        "histogram",
        "advice",
    ] {
        assert!(doc.get(k).is_some(), "no {k}: {doc}");
    }
    assert_eq!(doc["samples"], 100_000);
    let rtt = &doc["rtt_us"];
    for k in ["min", "p50", "p90", "p99", "p999", "max", "mean", "stddev"] {
        assert!(rtt[k].is_number(), "no rtt_us.{k}: {rtt}");
    }
    assert!(
        (rtt["p50"].as_f64().unwrap() - 15_000.0).abs() < 1.0,
        "{rtt}"
    );
    let hist = doc["histogram"].as_array().unwrap();
    let total: u64 = hist.iter().map(|b| b[1].as_u64().unwrap()).sum();
    assert_eq!(total, 100_000);
    let advice = &doc["advice"];
    let t = advice["timeout_ms"].as_f64().unwrap();
    // The 99.9 % quantile is 19.99 ms; 100 samples lie above it, and a 95 % bound moves up by
    // about 1.645 sqrt(100) of them (0.16 us each here, 10 ms / 100,000).
    assert!(
        (19.99..=19.99 + 0.03).contains(&t),
        "timeout {t} ms: {advice}"
    );
    assert!(
        advice["method"]
            .as_str()
            .unwrap()
            .starts_with("order statistic")
    );
    assert!(advice["false_suspicions_per_day"].as_f64().unwrap() <= 86.4);
    let phi = advice["phi"].as_array().unwrap();
    let thresholds: Vec<f64> = phi
        .iter()
        .map(|p| p["threshold"].as_f64().unwrap())
        .collect();
    assert_eq!(thresholds, [8.0, 10.0, 12.0]);
    let fires: Vec<f64> = phi
        .iter()
        .map(|p| p["fires_after_ms"].as_f64().unwrap())
        .collect();
    assert!(
        fires[0] > 1000.0 && fires[0] < fires[1] && fires[1] < fires[2],
        "{fires:?}"
    );

    let text = advise(&["--samples", f.arg(), "--false-suspicions", "86.4/day"]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("timeout 19.99"), "{text}");
    assert!(text.contains("threshold    8"), "{text}");
}

#[test]
fn bad_input_exits_2_naming_the_line_or_the_flag() {
    let bad = temp_file_mode("txt", "1ms\n\nfast\n", 0o644);
    let good = uniform_samples();
    let cases: [(Vec<&str>, String); 5] = [
        (vec!["--samples", bad.arg()], format!("{}:3", bad.arg())),
        (vec!["--samples", "/nonexistent/rtt"], "--samples".into()),
        (
            vec!["--samples", good.arg(), "--false-suspicions", "1/fortnight"],
            "--false-suspicions".into(),
        ),
        (
            vec!["--samples", good.arg(), "--loss", "1"],
            "--loss".into(),
        ),
        (
            vec!["--samples", good.arg(), "--misses", "0"],
            "--misses".into(),
        ),
    ];
    for (args, names) in cases {
        let out = advise(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&names), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// `--what-if FILE`: a rule's fixed delay shifts every percentile by exactly that much, its
/// loss joins the measured loss, and what cannot be folded (a rate) is refused naming the rule.
#[test]
fn what_if_folds_a_rule_set_and_refuses_what_it_cannot() {
    let f = uniform_samples();
    let rules = temp_file_mode(
        "toml",
        "[[rule]]\nname = \"slow\"\ndst = [\"192.0.2.2\"]\ndelay = \"20ms\"\n\
         [[rule]]\nname = \"lossy\"\ndst = [\"192.0.2.2\"]\ndrop = 0.01\n",
        0o644,
    );
    let out = advise(&[
        "--samples",
        f.arg(),
        "--what-if",
        rules.arg(),
        "--misses",
        "3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let w = &doc["what_if"];
    assert_eq!(w["file"], rules.arg());
    assert!((w["loss"].as_f64().unwrap() - 0.01).abs() < 1e-12, "{w}");
    for k in ["min", "p50", "p99", "max"] {
        let shift = w["rtt_us"][k].as_f64().unwrap() - doc["rtt_us"][k].as_f64().unwrap();
        assert!((shift - 20_000.0).abs() < 1e-6, "{k}: shifted {shift} us");
    }
    // Three misses in a row for one a day: q* = 0.0228 per heartbeat ((1 - q) q^3 = 1/86,400),
    // of which 1 % is the loss, so late answers may be 1.29 %: the 98.71 % quantile of the
    // shifted uniform, 30 + 10 x 0.9871 = 39.871 ms, and its bound a few samples above.
    let t = w["advice"]["timeout_ms"].as_f64().unwrap();
    assert!((39.86..39.90).contains(&t), "{w}");

    let paced = temp_file_mode(
        "toml",
        "[[rule]]\nname = \"paced\"\ndst = [\"192.0.2.2\"]\nrate = \"1mbit\"\n",
        0o644,
    );
    let out = advise(&["--samples", f.arg(), "--what-if", paced.arg()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--what-if") && err.contains("rule 'paced'"),
        "{err}"
    );
}
