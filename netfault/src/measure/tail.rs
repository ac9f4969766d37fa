//! The tail beyond the samples: a generalized Pareto distribution fitted to the excesses over
//! a high threshold (peaks over threshold), by probability-weighted moments (Hosking and
//! Wallis, 1987). The GPD is the limit law of excesses for any distribution regular enough
//! (Pickands-Balkema-de Haan): shape 0 is an exponential tail (normal, lognormal come near
//! it), shape > 0 a power law (Pareto), shape < 0 a bounded tail.
use serde::{Deserialize, Serialize};

use super::{rng::SplitMix, samples::Rtts};

/// Fewest samples a tail is fitted from: their top tenth (at least 20) are the excesses.
pub const MIN_SAMPLES: usize = 200;
/// The fraction of the samples above the threshold.
pub const TAIL_FRACTION: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tail {
    /// The threshold u (µs): the largest sample below the top tenth.
    pub threshold_us: f64,
    /// The fraction of samples above u.
    pub fraction_above: f64,
    /// How many excesses the fit used.
    pub excesses: usize,
    /// GPD scale (µs) and shape (xi).
    pub scale_us: f64,
    pub shape: f64,
}

/// Bootstrap resamples for a tail quantile's upper confidence bound.
pub const BOOTSTRAP: usize = 400;

impl Tail {
    /// The fit; `None` with fewer than [`MIN_SAMPLES`] samples, or when the excesses do not
    /// determine one (all equal, or a shape of 1/2 or more, where these moments do not exist).
    pub fn fit(rtts: &Rtts) -> Option<Tail> {
        let x = rtts.sorted();
        let n = x.len();
        if n < MIN_SAMPLES {
            return None;
        }
        let m = (n as f64 * TAIL_FRACTION) as usize;
        let u = x[n - m - 1];
        let y: Vec<f64> = x[n - m..].iter().map(|v| v - u).collect();
        let (scale, shape) = pwm(&y)?;
        Some(Tail {
            threshold_us: u,
            fraction_above: m as f64 / n as f64,
            excesses: m,
            scale_us: scale,
            shape,
        })
    }

    /// An upper confidence bound (level `confidence`) of the quantile with survival `s`: the
    /// excesses resampled [`BOOTSTRAP`] times (a fixed seed: the same samples give the same
    /// bound), refitted, and the `confidence` quantile of their quantiles taken (percentile
    /// bootstrap). Fits that fail count as infinitely large, so they never lower the bound.
    pub fn quantile_upper(&self, rtts: &Rtts, s: f64, confidence: f64) -> f64 {
        let x = rtts.sorted();
        let y: Vec<f64> = x[x.len() - self.excesses..]
            .iter()
            .map(|v| v - self.threshold_us)
            .collect();
        let mut rng = SplitMix(0x6e66_7461_696c ^ y.len() as u64);
        let mut qs: Vec<f64> = (0..BOOTSTRAP)
            .map(|_| {
                let mut r: Vec<f64> = (0..y.len())
                    .map(|_| y[(rng.next() % y.len() as u64) as usize])
                    .collect();
                r.sort_by(f64::total_cmp);
                match pwm(&r) {
                    Some((scale, shape)) => Tail {
                        scale_us: scale,
                        shape,
                        ..*self
                    }
                    .quantile(s),
                    None => f64::INFINITY,
                }
            })
            .collect();
        qs.sort_by(f64::total_cmp);
        let i = ((confidence * BOOTSTRAP as f64).ceil() as usize).clamp(1, BOOTSTRAP) - 1;
        qs[i].max(self.quantile(s))
    }
}

/// GPD scale and shape of excesses `y` (sorted ascending) by probability-weighted moments.
fn pwm(y: &[f64]) -> Option<(f64, f64)> {
    let m = y.len();
    if m < 2 {
        return None;
    }
    // a0 = E[Y], a1 = E[Y (1 - F(Y))], unbiased over the sorted excesses.
    let a0 = y.iter().sum::<f64>() / m as f64;
    let a1 = y
        .iter()
        .enumerate()
        .map(|(j, v)| v * (m - 1 - j) as f64 / (m - 1) as f64)
        .sum::<f64>()
        / m as f64;
    let d = a0 - 2.0 * a1;
    if !(a0 > 0.0 && d > 0.0) {
        return None;
    }
    // Hosking's k is -xi.
    let k = a0 / d - 2.0;
    let scale = 2.0 * a0 * a1 / d;
    let shape = -k;
    if !(scale > 0.0 && shape < 0.5 && shape.is_finite()) {
        return None;
    }
    Some((scale, shape))
}

impl Tail {
    /// P(RTT > t) for t at or above the threshold.
    pub fn survival(&self, t: f64) -> f64 {
        let z = (t - self.threshold_us).max(0.0) / self.scale_us;
        let s = if self.shape.abs() < 1e-9 {
            (-z).exp()
        } else {
            let b = 1.0 + self.shape * z;
            if b <= 0.0 {
                return 0.0;
            }
            b.powf(-1.0 / self.shape)
        };
        self.fraction_above * s
    }

    /// The t with P(RTT > t) = `s`, for `s` below the fraction above the threshold.
    pub fn quantile(&self, s: f64) -> f64 {
        let r = self.fraction_above / s;
        let z = if self.shape.abs() < 1e-9 {
            r.ln()
        } else {
            (r.powf(self.shape) - 1.0) / self.shape
        };
        self.threshold_us + self.scale_us * z
    }

    /// Which tail this is, for a report.
    pub fn describe(&self) -> String {
        format!(
            "generalized Pareto tail (shape {:.3}, scale {:.1} us) fitted by probability-weighted moments to the {} samples above {:.1} us",
            self.shape, self.scale_us, self.excesses, self.threshold_us
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact quantiles as samples: an exponential tail is fitted with shape near 0 and its
    /// scale; a Pareto one with shape 1/alpha.
    #[test]
    fn fits_known_tails() {
        let n = 100_000;
        let p = |i: usize| (i as f64 + 0.5) / n as f64;
        let exp = Rtts::new((0..n).map(|i| -1000.0 * (1.0 - p(i)).ln()).collect()).unwrap();
        let t = Tail::fit(&exp).unwrap();
        assert!(t.shape.abs() < 0.01, "{t:?}");
        assert!((t.scale_us / 1000.0 - 1.0).abs() < 0.01, "{t:?}");
        let pareto = Rtts::new(
            (0..n)
                .map(|i| 1000.0 * (1.0 - p(i)).powf(-1.0 / 3.0))
                .collect(),
        )
        .unwrap();
        let t = Tail::fit(&pareto).unwrap();
        assert!((t.shape - 1.0 / 3.0).abs() < 0.01, "{t:?}");
        // The quantile inverts the survival.
        for s in [1e-2, 1e-4, 1e-7] {
            let q = t.quantile(s);
            assert!((t.survival(q) / s - 1.0).abs() < 1e-9, "{s}");
        }
        assert!(Tail::fit(&Rtts::new(vec![5.0; 1000]).unwrap()).is_none());
        assert!(Tail::fit(&Rtts::new(vec![5.0; 10]).unwrap()).is_none());
    }
}
