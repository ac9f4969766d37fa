//! Burst loss, measured: the runs of lost packets in a sequence of verdicts, their histogram,
//! and the tests that compare them with a Gilbert-Elliott chain (loss rate in a Wilson
//! interval widened for the chain's correlation, mean run, chi-square and Kolmogorov-Smirnov
//! against the geometric run length). `xdp_verdicts` gets the verdicts from BPF_PROG_TEST_RUN,
//! one frame per run (a run of `repeat` frames reports only the last verdict).
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use netfault::spec::GeModel;

use crate::{ks, lab::wilson_interval};

/// XDP_DROP, the verdict of a lost frame at XDP.
pub const XDP_DROP: u32 = 1;

/// `rounds` rounds of the frames in turn (flow 0, flow 1, ... interleaved, as a link carries
/// them) through `prog`, one BPF_PROG_TEST_RUN each: per frame, whether each of its packets was
/// lost (XDP_DROP).
pub fn xdp_verdicts(prog: &Xdp, frames: &[Vec<u8>], rounds: usize) -> Result<Vec<Vec<bool>>> {
    let mut out = vec![Vec::with_capacity(rounds); frames.len()];
    for _ in 0..rounds {
        for (f, v) in frames.iter().zip(out.iter_mut()) {
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(f),
                    repeat: 1,
                    ..Default::default()
                })
                .context("BPF_PROG_TEST_RUN")?;
            v.push(r.return_value == XDP_DROP);
        }
    }
    Ok(out)
}

/// Lengths of the complete runs of lost packets in `lost`, in order. A run still going at the
/// end is left out: its length is not known (counting it would bias the mean down).
pub fn runs(lost: &[bool]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut cur = 0u64;
    for &l in lost {
        if l {
            cur += 1;
        } else if cur > 0 {
            out.push(cur);
            cur = 0;
        }
    }
    out
}

/// Runs begun in `lost`, the last one included even if unfinished (what a `bursts` counter
/// counts).
pub fn runs_begun(lost: &[bool]) -> u64 {
    let mut prev = false;
    let mut n = 0;
    for &l in lost {
        n += u64::from(l && !prev);
        prev = l;
    }
    n
}

/// Run length -> how many runs had it.
pub fn histogram(runs: &[u64]) -> BTreeMap<u64, u64> {
    let mut h = BTreeMap::new();
    for &r in runs {
        *h.entry(r).or_insert(0) += 1;
    }
    h
}

/// The histogram as text bars (`len  count  ####`), up to `max_len` (longer runs in the last
/// row), for the demo.
pub fn histogram_text(runs: &[u64], max_len: u64, width: usize) -> String {
    let mut rows: BTreeMap<u64, u64> = BTreeMap::new();
    for &r in runs {
        *rows.entry(r.min(max_len)).or_insert(0) += 1;
    }
    let top = rows.values().copied().max().unwrap_or(1).max(1);
    let mut s = String::new();
    for (len, n) in rows {
        let bar = "#".repeat(((n as f64 / top as f64) * width as f64).round() as usize);
        let label = if len == max_len {
            format!("{len}+")
        } else {
            len.to_string()
        };
        s += &format!("{label:>4} {n:>7} {bar}\n");
    }
    s
}

/// P(run = k) for runs geometric with mean `mean` (on 1, 2, ...).
pub fn geometric_pmf(mean: f64, k: u64) -> f64 {
    let q = 1.0 / mean;
    (1.0 - q).powi(k as i32 - 1) * q
}

/// The chain's asymptotic variance of the loss fraction, as a multiple of an independent
/// sample's m(1-m): 1 + 2 pi_b pi_g (f_b - f_g)^2 lambda / ((1 - lambda) m (1 - m)), with
/// lambda = 1 - p - r the chain's second eigenvalue and f the loss probability per state.
/// Dividing n by it gives the effective sample size a Wilson interval needs.
pub fn variance_factor(g: &GeModel) -> f64 {
    let m = g.mean_loss();
    let b = g.bad_share();
    let lambda = 1.0 - g.p - g.r;
    let d = g.loss_bad - g.loss_good;
    1.0 + 2.0 * b * (1.0 - b) * d * d * lambda / ((1.0 - lambda) * m * (1.0 - m))
}

/// Is the observed loss fraction within the Wilson interval (at `z`) of a chain's mean loss,
/// with the sample size cut to its effective size? Returns the verdict and the interval.
pub fn loss_rate_holds(lost: &[bool], g: &GeModel, z: f64) -> (bool, (f64, f64)) {
    let n = lost.len() as f64 / variance_factor(g);
    let k = lost.iter().filter(|&&l| l).count() as f64 * n / lost.len() as f64;
    let (lo, hi) = wilson_interval(k.round() as u64, n.round() as u64, z);
    let m = g.mean_loss();
    (lo <= m && m <= hi, (lo, hi))
}

/// Is the mean of geometric runs within `z` standard errors of `mean` (variance B(B-1))?
pub fn mean_run_holds(runs: &[u64], mean: f64, z: f64) -> (bool, f64, (f64, f64)) {
    let n = runs.len() as f64;
    let got = runs.iter().sum::<u64>() as f64 / n;
    let half = z * (mean * (mean - 1.0) / n).sqrt();
    ((got - mean).abs() <= half, got, (mean - half, mean + half))
}

/// Pearson's chi-square of `runs` against the geometric law with `mean`, over the lengths
/// whose expected count is at least 5 and one tail bin for the rest. Returns the statistic and
/// its degrees of freedom (bins - 1: the mean is given, not fitted).
pub fn chi_square_geometric(runs: &[u64], mean: f64) -> (f64, usize) {
    let n = runs.len() as f64;
    let h = histogram(runs);
    let mut stat = 0.0;
    let mut bins = 0;
    let mut k = 1u64;
    let mut below = 0.0; // P(run < k)
    loop {
        let p = geometric_pmf(mean, k);
        let tail = 1.0 - below - p; // P(run > k)
        if n * p < 5.0 || n * tail < 5.0 {
            // Bin k.. as the tail.
            let e = n * (1.0 - below);
            let o = h.range(k..).map(|(_, c)| *c).sum::<u64>() as f64;
            stat += (o - e) * (o - e) / e;
            bins += 1;
            break;
        }
        let o = h.get(&k).copied().unwrap_or(0) as f64;
        stat += (o - n * p) * (o - n * p) / (n * p);
        bins += 1;
        below += p;
        k += 1;
    }
    (stat, bins - 1)
}

/// Upper critical value of chi-square with `dof` degrees of freedom for a one-sided normal
/// quantile `z` (Wilson-Hilferty; within a few percent from 3 degrees of freedom up).
pub fn chi_square_critical(dof: usize, z: f64) -> f64 {
    let k = dof as f64;
    let a = 2.0 / (9.0 * k);
    k * (1.0 - a + z * a.sqrt()).powi(3)
}

/// Kolmogorov-Smirnov p-value of `runs` against the geometric law with `mean`. Conservative
/// for a discrete law (it rejects less often than alpha says), so a failure means a real misfit.
pub fn ks_geometric(runs: &[u64], mean: f64) -> f64 {
    let q = 1.0 / mean;
    let samples: Vec<f64> = runs.iter().map(|&r| r as f64).collect();
    let cdf = |x: f64| {
        if x < 1.0 {
            0.0
        } else {
            1.0 - (1.0 - q).powf(x.floor())
        }
    };
    ks::p_value(ks::statistic(&samples, cdf), samples.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain simulated here (splitmix64), for checking the checks themselves.
    fn simulate(g: &GeModel, n: usize, seed: u64) -> Vec<bool> {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut bad = false;
        (0..n)
            .map(|_| {
                let lost = next() < if bad { g.loss_bad } else { g.loss_good };
                if next() < if bad { g.r } else { g.p } {
                    bad = !bad;
                }
                lost
            })
            .collect()
    }

    #[test]
    fn runs_and_counts() {
        let v = [true, true, false, true, false, false, true, true, true];
        assert_eq!(runs(&v), vec![2, 1]);
        assert_eq!(runs_begun(&v), 3);
        assert_eq!(histogram(&[1, 2, 1]), BTreeMap::from([(1, 2), (2, 1)]));
        assert!(histogram_text(&[1, 1, 9], 5, 10).contains("5+"));
    }

    /// The checks pass a simulated chain and fail the wrong one: the tests built on them can
    /// fail.
    #[test]
    fn checks_tell_the_right_chain_from_wrong_ones() {
        let z = 3.8906;
        let g = GeModel::simple(0.05, 4.0).unwrap();
        let v = simulate(&g, 200_000, 7);
        let r = runs(&v);
        assert!(loss_rate_holds(&v, &g, z).0);
        assert!(mean_run_holds(&r, 4.0, z).0);
        let (chi, dof) = chi_square_geometric(&r, 4.0);
        assert!(chi < chi_square_critical(dof, 3.719), "{chi} {dof}");
        assert!(ks_geometric(&r, 4.0) > 1e-4);
        // Independent loss at the same rate: runs far too short.
        let ind = GeModel::simple(0.05, 1.0 / 0.95).unwrap();
        let w = simulate(&ind, 200_000, 8);
        let rw = runs(&w);
        assert!(!mean_run_holds(&rw, 4.0, z).0);
        let (chi, dof) = chi_square_geometric(&rw, 4.0);
        assert!(chi > chi_square_critical(dof, 3.719));
        assert!(ks_geometric(&rw, 4.0) < 1e-4);
        // Runs of exactly 4: right mean, wrong law.
        let fixed: Vec<u64> = vec![4; r.len()];
        assert!(ks_geometric(&fixed, 4.0) < 1e-4);
        // A 10 % loss rate is not 5 %.
        assert!(
            !loss_rate_holds(
                &simulate(&GeModel::simple(0.1, 4.0).unwrap(), 200_000, 9),
                &g,
                z
            )
            .0
        );
        // The widening matters: an independent-sample Wilson interval would be too narrow for
        // the chain (variance factor (1 + lambda) / (1 - lambda)).
        let lambda = 1.0 - g.p - g.r;
        assert!((variance_factor(&g) - (1.0 + lambda) / (1.0 - lambda)).abs() < 1e-9);
    }
}
