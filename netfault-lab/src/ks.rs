//! Kolmogorov-Smirnov goodness of fit, for asserting that observed delays follow the
//! configured distribution.

/// Kolmogorov-Smirnov statistic D_n = sup_x |F_n(x) - F(x)| of `samples` against `cdf`.
///
/// Exact for discrete as well as continuous `cdf`: at each distinct sample value v it compares
/// F_n(v) with F(v) and F_n(v-) with F(v-), taking F(v-) as `cdf(v.next_down())` (exact for
/// any distribution on f64 values). Ties are grouped, so a step of F_n is never split.
/// Panics on an empty slice or NaN samples.
pub fn statistic(samples: &[f64], cdf: impl Fn(f64) -> f64) -> f64 {
    assert!(!samples.is_empty(), "KS statistic of no samples");
    assert!(samples.iter().all(|x| !x.is_nan()), "NaN sample");
    let mut sorted = samples.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mut d: f64 = 0.0;
    let mut below = 0; // samples < v
    while below < sorted.len() {
        let v = sorted[below];
        let upto = below + sorted[below..].partition_point(|&x| x <= v); // samples <= v
        d = d
            .max(upto as f64 / n - cdf(v))
            .max(cdf(v.next_down()) - below as f64 / n);
        below = upto;
    }
    d
}

/// Stephens' effective sample size sqrt(n) + 0.12 + 0.11 / sqrt(n): scaling D by it makes the
/// asymptotic Kolmogorov distribution accurate to a few percent in alpha already for n >= 5.
fn stephens(n: usize) -> f64 {
    let s = (n as f64).sqrt();
    s + 0.12 + 0.11 / s
}

/// Critical value of D_n at significance `alpha` (reject when D_n > it).
///
/// Uses c(alpha) = sqrt(-ln(alpha / 2) / 2), the first term of the Kolmogorov series (relative
/// error in alpha about alpha^3 / 8, so 1e-3 at alpha = 0.2), divided by Stephens' corrected
/// sqrt(n) rather than sqrt(n), which keeps it accurate for small n too.
pub fn critical_value(n: usize, alpha: f64) -> f64 {
    assert!(n > 0 && alpha > 0.0 && alpha < 1.0);
    (-(alpha / 2.0).ln() / 2.0).sqrt() / stephens(n)
}

/// P(D_n >= d) under the null hypothesis, from the Kolmogorov distribution at
/// lambda = d * (sqrt(n) + 0.12 + 0.11 / sqrt(n)) (Stephens' correction, as critical_value).
pub fn p_value(d: f64, n: usize) -> f64 {
    assert!(n > 0);
    let lambda = d * stephens(n);
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.18 {
        // The alternating series converges slowly here; use the Jacobi theta form
        // P(K <= l) = sqrt(2 pi) / l * sum_{k>=1} exp(-(2k-1)^2 pi^2 / (8 l^2)).
        let w = -std::f64::consts::PI.powi(2) / (8.0 * lambda * lambda);
        let sum: f64 = (1..=20)
            .map(|k| ((2 * k - 1) as f64).powi(2) * w)
            .map(f64::exp)
            .sum();
        return (1.0 - (2.0 * std::f64::consts::PI).sqrt() / lambda * sum).clamp(0.0, 1.0);
    }
    // P(K > l) = 2 sum_{k>=1} (-1)^(k-1) exp(-2 k^2 l^2); terms fall below 1e-300 by k = 20.
    let sum: f64 = (1..=20)
        .map(|k| {
            let sign = if k % 2 == 1 { 1.0 } else { -1.0 };
            sign * (-2.0 * (k * k) as f64 * lambda * lambda).exp()
        })
        .sum();
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netfault::spec::dist::splitmix64;

    /// Uniform [0, 1) from the top 53 bits.
    fn uniforms(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| (splitmix64(&mut s) >> 11) as f64 / (1u64 << 53) as f64)
            .collect()
    }

    fn uniform_cdf(x: f64) -> f64 {
        x.clamp(0.0, 1.0)
    }

    fn normal_cdf(x: f64) -> f64 {
        0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
    }

    #[test]
    fn hand_computed_statistic() {
        // F_n steps to 1/3, 2/3, 1 at 0.1, 0.4, 0.7; largest gap is 1 - 0.7 just at 0.7.
        let d = statistic(&[0.7, 0.1, 0.4], uniform_cdf);
        assert!((d - 0.3).abs() < 1e-12, "{d}");
        // Both samples tie at 0.5: F_n jumps 0 -> 1 there, |0 - 0.5| on the left, |1 - 0.5| right.
        assert_eq!(statistic(&[0.5, 0.5], uniform_cdf), 0.5);
        // Discrete F with mass 1/2 at 1 and 2: F_n(1) = 2/3 vs F(1) = 1/2, all else closer.
        let two_atoms = |x: f64| {
            if x >= 2.0 {
                1.0
            } else if x >= 1.0 {
                0.5
            } else {
                0.0
            }
        };
        let d = statistic(&[1.0, 2.0, 1.0], two_atoms);
        assert!((d - 1.0 / 6.0).abs() < 1e-12, "{d}");
        // An exact sample of a discrete law has D = 0 (the left limits are taken correctly).
        assert_eq!(statistic(&[1.0, 2.0], two_atoms), 0.0);
    }

    #[test]
    fn uniform_samples_pass() {
        for (n, seed) in [(100, 1), (1000, 2), (100_000, 3)] {
            let d = statistic(&uniforms(n, seed), uniform_cdf);
            assert!(d < critical_value(n, 1e-4), "n={n}: D={d}");
            assert!(p_value(d, n) > 1e-4, "n={n}: p={}", p_value(d, n));
        }
    }

    #[test]
    fn shifted_normal_fails() {
        // Box-Muller normals shifted by 0.2 sigma; D should be about 0.08, far above ~0.03.
        let u = uniforms(5000, 7);
        let samples: Vec<f64> = u
            .chunks(2)
            .flat_map(|p| {
                let r = (-2.0 * (1.0 - p[0]).ln()).sqrt();
                let a = 2.0 * std::f64::consts::PI * p[1];
                [r * a.cos() + 0.2, r * a.sin() + 0.2]
            })
            .collect();
        let d = statistic(&samples, normal_cdf);
        assert!(d > critical_value(samples.len(), 1e-4), "D={d}");
        assert!(p_value(d, samples.len()) < 1e-4);
        // The unshifted samples pass.
        let d0 = statistic(
            &samples.iter().map(|x| x - 0.2).collect::<Vec<_>>(),
            normal_cdf,
        );
        assert!(d0 < critical_value(samples.len(), 1e-4), "D={d0}");
    }

    #[test]
    fn p_value_inverts_critical_value() {
        for n in [10, 100, 5000] {
            for alpha in [0.2, 0.05, 0.01, 1e-4, 1e-8] {
                let p = p_value(critical_value(n, alpha), n);
                assert!((p / alpha - 1.0).abs() < 2e-3, "n={n} alpha={alpha}: p={p}");
            }
        }
        // Both branches agree where they meet, and the tails are right.
        let d = 1.18 / stephens(1);
        let (lo, hi) = (p_value(d * (1.0 - 1e-12), 1), p_value(d * (1.0 + 1e-12), 1));
        assert!(((lo - hi) / lo).abs() < 1e-9, "{lo} vs {hi}");
        assert_eq!(p_value(0.0, 10), 1.0);
        assert!(p_value(1.0, 10_000) < 1e-300);
    }
}
