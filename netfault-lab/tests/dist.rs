//! netfault's jitter draws against the configured distribution (Kolmogorov-Smirnov lives in
//! the lab crate, so the test does too).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
use netfault::spec::dist::{DelayModel, Distribution, TABLE_SIZE, draw, splitmix64, table};
use netfault_lab::ks;

const MS: u64 = 1_000_000;

/// (50, 20) stays positive; (5, 20) puts mass on the clamp at 0; jitter 0 is a point.
fn models() -> Vec<DelayModel> {
    let mut v = vec![];
    for dist in Distribution::ALL {
        for (delay_ns, jitter_ns) in [(50 * MS, 20 * MS), (5 * MS, 20 * MS), (3, 0), (10, 7)] {
            v.push(DelayModel {
                delay_ns,
                jitter_ns,
                dist,
            });
        }
    }
    v
}

#[test]
fn draw_matches_cdf() {
    for m in models() {
        let t = table(m.dist);
        // Every table index once: the empirical law is the model exactly.
        if m.dist != Distribution::Uniform {
            let all: Vec<f64> = (0..TABLE_SIZE as u32)
                .map(|r1| draw(m.delay_ns, m.jitter_ns, m.dist, t.as_deref(), r1, 0) as f64)
                .collect();
            assert_eq!(ks::statistic(&all, |x| m.cdf(x)), 0.0, "{m:?}");
        }
        let n = 100_000;
        let mut s = 42;
        let samples: Vec<f64> = (0..n)
            .map(|_| {
                let r = splitmix64(&mut s);
                draw(
                    m.delay_ns,
                    m.jitter_ns,
                    m.dist,
                    t.as_deref(),
                    (r >> 32) as u32,
                    r as u32,
                ) as f64
            })
            .collect();
        let d = ks::statistic(&samples, |x| m.cdf(x));
        assert!(d < ks::critical_value(n, 1e-4), "{m:?}: D={d}");
    }
}
