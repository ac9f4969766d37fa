//! Timeouts and phi thresholds for a measured round-trip-time distribution.
//!
//! The model: a heartbeat every H is answered after one round trip; a heartbeat "misses" when
//! its answer comes later than the timeout T or never (loss `l`), so a miss has probability
//! q(T) = l + (1 - l) S(T), S the survival function of the round-trip time. A suspicion is K
//! misses in a row; heartbeats are taken as independent, so runs of K misses begin at a rate
//! of (1 - q) q^K per heartbeat, and false suspicions per second are (1 - q) q^K / H.
//!
//! The advised timeout is the smallest T whose rate stays within the target: q* solves
//! (1 - q) q^K / H = target, S(T) must be at most s* = (q* - l) / (1 - l), and T is the
//! (1 - s*) quantile: its 95 % upper confidence bound from the order statistics when the
//! samples are enough (distribution-free), else the quantile of a fitted tail (`tail`).
use std::time::Duration;

use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, DiscreteCDF as _};

use super::{
    phi::{Fires, fires_after},
    samples::Rtts,
    tail::{self, Tail},
};

/// The confidence of an empirical upper bound.
pub const CONFIDENCE: f64 = 0.95;
/// phi thresholds reported: Akka's default (8), and the 10 to 12 advised for noisy clouds.
pub const PHI_THRESHOLDS: [f64; 3] = [8.0, 10.0, 12.0];

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub heartbeat: Duration,
    /// Tolerated false suspicions per second.
    pub target_per_s: f64,
    /// Misses in a row that make a suspicion (at least 1).
    pub misses: u32,
    /// The fraction of heartbeats lost, in [0, 1).
    pub loss: f64,
    /// phi's floor for the standard deviation (Akka: `min-std-deviation`, 100 ms).
    pub min_stddev: Duration,
    /// Added to the mean interval (Akka: `acceptable-heartbeat-pause`).
    pub acceptable_pause: Duration,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            heartbeat: Duration::from_secs(1),
            target_per_s: 1.0 / 86_400.0,
            misses: 1,
            loss: 0.0,
            min_stddev: Duration::from_millis(100),
            acceptable_pause: Duration::ZERO,
        }
    }
}

/// `advice` of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    /// The smallest timeout within the target; `None` when none is (`reason` says why).
    pub timeout_ms: Option<f64>,
    /// False suspicions per day at that timeout, estimated from the samples (or the tail).
    pub false_suspicions_per_day: Option<f64>,
    /// The largest miss probability per heartbeat the target allows (q*), and the part of
    /// it left to late answers (s*).
    pub miss_probability: f64,
    pub late_probability: f64,
    /// How the timeout was found.
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail: Option<Tail>,
    /// The heartbeats' inter-arrival times phi assumes (ms): mean, and standard deviation
    /// before the floor.
    pub phi_mean_ms: f64,
    pub phi_stddev_ms: f64,
    pub phi: Vec<Fires>,
}

/// The miss probability per heartbeat at which K-miss runs begin at `per_heartbeat`: the
/// root of (1 - q) q^K = per_heartbeat on [0, K / (K + 1)], where the left side grows.
fn miss_budget(per_heartbeat: f64, k: u32) -> f64 {
    let f = |q: f64| (1.0 - q) * q.powi(k as i32);
    let top = f64::from(k) / f64::from(k + 1);
    if f(top) <= per_heartbeat {
        return top;
    }
    let (mut lo, mut hi) = (0.0, top);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if f(mid) < per_heartbeat {
            lo = mid
        } else {
            hi = mid
        }
    }
    lo
}

/// The 1-based rank j of the smallest order statistic that is at least the `p` quantile with
/// probability `CONFIDENCE`: P(Binomial(n, p) <= j - 1) >= CONFIDENCE. None if even the
/// largest sample is not.
fn upper_rank(n: usize, p: f64) -> Option<usize> {
    let b = Binomial::new(p, n as u64).ok()?;
    if b.cdf(n as u64 - 1) < CONFIDENCE {
        return None;
    }
    let (mut lo, mut hi) = (1usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if b.cdf(mid as u64 - 1) >= CONFIDENCE {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// Samples above t that make their fraction the estimate of P(RTT > t); with fewer, the
/// fitted tail (if any) is.
const EMPIRICAL_MIN_ABOVE: f64 = 10.0;

/// P(RTT > t): the fraction of samples above t while at least ten are, beyond that the
/// fitted tail's.
fn survival(rtts: &Rtts, tail: Option<&Tail>, t: f64) -> f64 {
    let f = rtts.fraction_above(t);
    match tail {
        Some(tl) if f * (rtts.len() as f64) < EMPIRICAL_MIN_ABOVE && t > tl.threshold_us => {
            tl.survival(t)
        }
        _ => f,
    }
}

/// False suspicions per day with timeout `t_us`.
pub fn false_suspicions_per_day(rtts: &Rtts, tail: Option<&Tail>, p: &Params, t_us: f64) -> f64 {
    let q = p.loss + (1.0 - p.loss) * survival(rtts, tail, t_us);
    86_400.0 * (1.0 - q) * q.powi(p.misses as i32) / p.heartbeat.as_secs_f64()
}

pub fn advise(rtts: &Rtts, p: &Params) -> Advice {
    let h = p.heartbeat.as_secs_f64();
    let q = miss_budget(p.target_per_s * h, p.misses.max(1));
    let s = (q - p.loss) / (1.0 - p.loss);
    let tail = Tail::fit(rtts);
    let n = rtts.len();
    let (timeout_us, method, reason) = if s <= 0.0 {
        (
            None,
            "none".to_owned(),
            Some(format!(
                "the loss alone ({:.4} % of heartbeats) makes more false suspicions than the target: raise --misses or the target",
                p.loss * 100.0
            )),
        )
    } else if s >= 1.0 {
        (
            Some(0.0),
            "any: the target allows every heartbeat to miss".to_owned(),
            None,
        )
    } else if let Some(j) = upper_rank(n, 1.0 - s) {
        (
            Some(rtts.sorted()[j - 1]),
            format!(
                "order statistic {j} of {n}: a {:.0} % upper confidence bound for the {} quantile",
                CONFIDENCE * 100.0,
                percent(1.0 - s)
            ),
            None,
        )
    } else if let Some(t) = tail.as_ref().filter(|t| s < t.fraction_above) {
        let bound = t.quantile_upper(rtts, s, CONFIDENCE);
        if bound.is_finite() {
            (
                Some(bound),
                format!(
                    "a {:.0} % upper confidence bound (bootstrap) for the {} quantile of the {} (point estimate {:.3} ms; {n} samples cannot bound it without a model, {} would)",
                    CONFIDENCE * 100.0,
                    percent(1.0 - s),
                    t.describe(),
                    t.quantile(s) / 1e3,
                    samples_needed(s)
                ),
                None,
            )
        } else {
            (
                None,
                "none".to_owned(),
                Some(format!(
                    "the tail is too heavy to bound the {} quantile from {n} samples (more than {:.0} % of the bootstrap's refits have a shape of 1/2 or more); {} samples would bound it without a model",
                    percent(1.0 - s),
                    (1.0 - CONFIDENCE) * 100.0,
                    samples_needed(s)
                )),
            )
        }
    } else {
        let why = if n < tail::MIN_SAMPLES {
            format!("or {} for a fitted tail", tail::MIN_SAMPLES)
        } else {
            "and no tail could be fitted to the top tenth (a shape of 1/2 or more, or all equal)"
                .to_owned()
        };
        (
            None,
            "none".to_owned(),
            Some(format!(
                "{n} samples cannot bound the {} quantile: it needs {} samples, {why}",
                percent(1.0 - s),
                samples_needed(s)
            )),
        )
    };
    let rtt_var = rtts.stddev().powi(2) / 1e6; // ms^2
    let (mean, stddev) = phi_intervals(h * 1e3, p.loss, rtt_var);
    let floor = p.min_stddev.as_secs_f64() * 1e3;
    let pause = p.acceptable_pause.as_secs_f64() * 1e3;
    Advice {
        false_suspicions_per_day: timeout_us
            .map(|t| false_suspicions_per_day(rtts, tail.as_ref(), p, t)),
        timeout_ms: timeout_us.map(|t| t / 1e3),
        miss_probability: q,
        late_probability: s.clamp(0.0, 1.0),
        method,
        reason,
        tail,
        phi_mean_ms: mean,
        phi_stddev_ms: stddev,
        phi: PHI_THRESHOLDS
            .iter()
            .map(|&threshold| Fires {
                threshold,
                fires_after_ms: fires_after(threshold, mean + pause, stddev.max(floor)),
            })
            .collect(),
    }
}

/// The heartbeats' inter-arrival times as a detector's history sees them (ms): a heartbeat
/// sent every `h` arrives one way later, taken as half its round trip (symmetric paths), so an
/// interval is h G + d_i - d_j, G the heartbeats sent until one arrives (geometric, loss `l`):
/// mean h / (1 - l), variance h^2 l / (1 - l)^2 + 2 Var(RTT / 2).
pub fn phi_intervals(h: f64, l: f64, rtt_var: f64) -> (f64, f64) {
    let mean = h / (1.0 - l);
    let var = h * h * l / ((1.0 - l) * (1.0 - l)) + rtt_var / 2.0;
    (mean, var.sqrt())
}

/// Samples an empirical bound of the `1 - s` quantile needs: the largest of n samples is
/// above it with probability 1 - (1 - s)^n.
fn samples_needed(s: f64) -> u64 {
    ((1.0 - CONFIDENCE).ln() / (1.0 - s).ln()).ceil() as u64
}

fn percent(p: f64) -> String {
    // Enough digits to tell 99.99 % from 99.999 %.
    let digits = ((1.0 - p).log10().abs().ceil() as usize)
        .saturating_sub(1)
        .min(8);
    format!("{:.*} %", digits, p * 100.0)
}

#[cfg(test)]
mod tests {
    use statrs::distribution::{ContinuousCDF as _, Normal};

    use super::*;
    use crate::measure::rng::SplitMix;

    /// Known round-trip-time distributions (µs) by their quantile function.
    #[derive(Debug, Clone, Copy)]
    enum Dist {
        /// 50 ms ± 5 ms.
        Normal,
        /// median 20 ms, log-sd 0.5.
        LogNormal,
        /// 10 ms and up, alpha 3.
        Pareto,
    }

    impl Dist {
        fn quantile(self, p: f64) -> f64 {
            let z = || Normal::new(0.0, 1.0).unwrap().inverse_cdf(p);
            match self {
                Dist::Normal => 50_000.0 + 5_000.0 * z(),
                Dist::LogNormal => 20_000.0 * (0.5 * z()).exp(),
                Dist::Pareto => 10_000.0 * (1.0 - p).powf(-1.0 / 3.0),
            }
        }

        fn draw(self, n: usize, seed: u64) -> Rtts {
            let mut u = SplitMix(seed);
            Rtts::new((0..n).map(|_| self.quantile(u.uniform())).collect()).unwrap()
        }
    }

    const ALL: [Dist; 3] = [Dist::Normal, Dist::LogNormal, Dist::Pareto];

    /// A target that leaves late answers a probability `s` (one miss, no loss).
    fn params_for(s: f64) -> Params {
        Params {
            target_per_s: (1.0 - s) * s,
            ..Params::default()
        }
    }

    /// Where samples suffice, the timeout is a 95 % upper confidence bound of the quantile:
    /// over 400 draws it lies at or above the true quantile in 95 % of them or more (the
    /// Wilson interval of the count, alpha 1e-4, reaches 0.95), and it is not much more
    /// cautious than that (the interval reaches below 0.985).
    #[test]
    fn empirical_timeouts_cover_the_quantile_at_their_confidence() {
        let s = 0.01;
        for d in ALL {
            let truth = d.quantile(1.0 - s);
            let runs: usize = 400;
            let covered = (0..runs)
                .filter(|seed| {
                    let a = advise(&d.draw(2_000, *seed as u64), &params_for(s));
                    assert!(a.method.starts_with("order statistic"), "{d:?}: {a:?}");
                    a.timeout_ms.unwrap() * 1e3 >= truth
                })
                .count();
            let (lo, hi) = netfault_lab::lab::wilson_interval(
                covered as u64,
                runs as u64,
                netfault_lab::lab::Z_ALPHA_1E4,
            );
            assert!(
                hi >= CONFIDENCE && lo <= 0.985,
                "{d:?}: covered {covered} of {runs}, interval [{lo:.3}, {hi:.3}]"
            );
        }
    }

    /// Beyond the samples, the timeout is the fitted tail's 95 % bootstrap upper bound, 50
    /// times deeper into the tail than 20,000 samples reach. Over 20 draws each: it lies within
    /// 0.6x to 2.5x of the true quantile for light (normal), moderate (lognormal) and heavy
    /// (Pareto) tails; within 10 % for the normal; at or above it in at least 17 of 20 draws
    /// for the lognormal and the Pareto, where a short timeout would be the costly mistake.
    #[test]
    fn fitted_tails_extrapolate_within_a_stated_bound() {
        let s = 1e-6;
        for d in ALL {
            let truth = d.quantile(1.0 - s);
            let mut covered = 0;
            for seed in 0..20 {
                let a = advise(&d.draw(20_000, 1_000 + seed), &params_for(s));
                assert!(a.method.contains("generalized Pareto"), "{d:?}: {a:?}");
                let ratio = a.timeout_ms.unwrap() * 1e3 / truth;
                let within = match d {
                    Dist::Normal => 0.9..=1.1,
                    _ => 0.6..=2.5,
                };
                assert!(
                    within.contains(&ratio),
                    "{d:?} seed {seed}: timeout {:?} ms, true quantile {:.1} ms ({ratio:.3}x)",
                    a.timeout_ms,
                    truth / 1e3
                );
                covered += usize::from(ratio >= 1.0);
            }
            if !matches!(d, Dist::Normal) {
                assert!(covered >= 17, "{d:?}: covered in {covered} of 20 draws");
            }
        }
    }

    /// The advised timeout meets the target it was found for, with K misses and loss; loss
    /// beyond the budget refuses with a reason; too few samples say how many would do.
    #[test]
    fn timeouts_meet_their_target_with_misses_and_loss() {
        let rtts = Dist::Normal.draw(200_000, 7);
        for (misses, loss) in [(1, 0.0), (2, 0.0), (3, 0.001), (2, 0.01)] {
            let p = Params {
                misses,
                loss,
                target_per_s: 10.0 / 86_400.0,
                ..Params::default()
            };
            let a = advise(&rtts, &p);
            let t = a
                .timeout_ms
                .unwrap_or_else(|| panic!("{misses} {loss}: {a:?}"));
            let per_day = a.false_suspicions_per_day.unwrap();
            assert!(
                per_day <= 10.0 * 1.000_001,
                "{misses} {loss}: {per_day} at {t} ms"
            );
            // q* solves the run-rate equation.
            let q = a.miss_probability;
            let rate = (1.0 - q) * q.powi(misses as i32) * 86_400.0;
            assert!((rate / 10.0 - 1.0).abs() < 1e-6, "{rate}");
            // More misses in a row allow a shorter timeout (with loss, one miss allows none).
            if misses > 1 && loss == 0.0 {
                let one = advise(&rtts, &Params { misses: 1, ..p });
                assert!(t < one.timeout_ms.unwrap(), "{misses}: {t} vs {one:?}");
            }
        }
        let lossy = Params {
            loss: 0.01,
            ..Params::default()
        };
        let a = advise(&rtts, &lossy);
        assert_eq!(a.timeout_ms, None);
        assert!(a.reason.unwrap().contains("loss alone"));
        let few = advise(&Dist::Normal.draw(50, 3), &Params::default());
        assert_eq!(few.timeout_ms, None);
        assert!(few.reason.unwrap().contains("258"), "{:?}", few.method);
    }

    /// phi's figures: the interval model, the floor, the pause, and each threshold where
    /// Akka's formula (written out again here) reaches it.
    #[test]
    fn phi_thresholds_fire_where_akkas_formula_says() {
        let rtts = Dist::Normal.draw(10_000, 11);
        let p = Params {
            acceptable_pause: Duration::from_millis(500),
            ..Params::default()
        };
        let a = advise(&rtts, &p);
        assert!((a.phi_mean_ms - 1000.0).abs() < 1e-9);
        // sd(RTT) 5 ms: intervals vary by 5 / sqrt 2 ms, under the 100 ms floor.
        assert!((a.phi_stddev_ms - 5.0 / 2f64.sqrt()).abs() < 0.2, "{a:?}");
        let akka = |t: f64, mean: f64, sd: f64| {
            let y = (t - mean) / sd;
            let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
            if t > mean {
                -(e / (1.0 + e)).log10()
            } else {
                -(1.0 - 1.0 / (1.0 + e)).log10()
            }
        };
        assert_eq!(a.phi.len(), 3);
        for f in &a.phi {
            let got = akka(f.fires_after_ms, 1500.0, 100.0);
            assert!((got - f.threshold).abs() < 1e-9, "{f:?}: phi {got}");
        }
        // Threshold 8 on N(1500, 100): Akka's logistic puts it near 5.4 sd.
        assert!(
            (a.phi[0].fires_after_ms - 2040.0).abs() < 20.0,
            "{:?}",
            a.phi
        );
        // Loss stretches the intervals: mean h / (1 - l).
        let (m, sd) = phi_intervals(1000.0, 0.5, 0.0);
        assert_eq!(m, 2000.0);
        assert!((sd - 1000.0 * 2f64.sqrt()).abs() < 1e-9);
    }
}
