//! The phi accrual failure detector as Akka computes it (`PhiAccrualFailureDetector`):
//! phi(t) = -log10(P(the next heartbeat comes later than t)), with the normal distribution of
//! the heartbeats' inter-arrival times approximated by a logistic function:
//!
//! ```text
//! y = (t - (mean + acceptable_pause)) / max(stddev, min_stddev)
//! e = exp(-y (1.5976 + 0.070566 y^2))
//! phi = -log10(e / (1 + e))            if t > mean + acceptable_pause
//!     = -log10(1 - 1 / (1 + e))        otherwise
//! ```
use serde::{Deserialize, Serialize};

/// The phi of `t` (ms since the last heartbeat) for inter-arrival times of `mean` and
/// `stddev` (ms, already at least the minimum), as Akka computes it.
pub fn phi(t: f64, mean: f64, stddev: f64) -> f64 {
    let y = (t - mean) / stddev;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if t > mean {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

/// When a threshold fires: ms after the last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fires {
    pub threshold: f64,
    pub fires_after_ms: f64,
}

/// The t (ms after the last heartbeat) at which phi reaches `threshold` (above log10(2), where
/// t passes the mean): phi grows with t, so the root is found by bisection.
pub fn fires_after(threshold: f64, mean: f64, stddev: f64) -> f64 {
    // For t > mean, phi = log10(1 + exp(g(y))) with g(y) = y (1.5976 + 0.070566 y^2),
    // increasing: solve g(y) = ln(10^threshold - 1).
    let target = (10f64.powf(threshold) - 1.0).ln();
    let g = |y: f64| y * (1.5976 + 0.070566 * y * y);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while g(hi) < target {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if g(mid) < target { lo = mid } else { hi = mid }
    }
    mean + stddev * (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_where_phi_reaches_the_threshold() {
        for th in [1.0, 3.0, 8.0, 10.0, 12.0, 16.0] {
            let t = fires_after(th, 1000.0, 100.0);
            assert!((phi(t, 1000.0, 100.0) - th).abs() < 1e-9, "{th}: {t}");
            assert!(t > 1000.0);
        }
        // At the mean, phi is log10(2): one heartbeat in two is later.
        assert!((phi(1000.0, 1000.0, 100.0) - 2f64.log10()).abs() < 1e-12);
        // Akka's logistic is close to the normal it stands for: phi 1 (10 % later) near
        // 1.2816 standard deviations past the mean.
        let t = fires_after(1.0, 0.0, 1.0);
        assert!((t - 1.2816).abs() < 0.01, "{t}");
    }
}
