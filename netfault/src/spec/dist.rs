//! Delay distributions with netem's meaning: the tables behind `normal`, `pareto` and
//! `paretonormal` (as iproute2's makedist programs build them), and the exact distribution of
//! the per-packet delay the data path draws, for tests and sizing.
use std::{fmt, str::FromStr, sync::OnceLock};

use serde::{Deserialize, Serialize};

/// Entries per table (iproute2's `.dist` files have 4096).
pub const TABLE_SIZE: usize = 4096;
/// Table values are in units of 1/DIST_SCALE standard deviations (netem's NETEM_DIST_SCALE).
pub const DIST_SCALE: i64 = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    #[default]
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

impl Distribution {
    pub const ALL: [Distribution; 4] = [
        Distribution::Uniform,
        Distribution::Normal,
        Distribution::Pareto,
        Distribution::Paretonormal,
    ];

    /// The data path's code (`RuleValue::dist`): 0 uniform, else 1 + the table's index in `NF_DIST`.
    pub fn code(self) -> u8 {
        match self {
            Distribution::Uniform => 0,
            Distribution::Normal => 1,
            Distribution::Pareto => 2,
            Distribution::Paretonormal => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Normal => "normal",
            Distribution::Pareto => "pareto",
            Distribution::Paretonormal => "paretonormal",
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Distribution::ALL
            .into_iter()
            .find(|d| d.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| format!("'{s}' is not one of uniform, normal, pareto, paretonormal"))
    }
}

/// One 64-bit step of splitmix64: a tiny deterministic PRNG for simulations and tests.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// iproute2's makedist programs build a 16384-slot inverse CDF and emit every 4th slot.
const MAKEDIST_SIZE: usize = 16384;

/// `netem/normal.c`: sweep x over [-10, 10.05) and record, per slot `rint(16384 * Phi(x))`,
/// the last x that landed there. Returns the unclamped `rint(x * 8192)` of every 4th slot,
/// which paretonormal needs before clamping.
fn normal_values() -> Vec<i32> {
    let mut slots = [f64::NAN; MAKEDIST_SIZE + 1];
    // Same f64 accumulation as C's `for (x = -10.0; x < 10.05; x += .00005)`, so the output is
    // the same computation rather than a lookalike (`-10 + k * step` drifts from it by
    // up to ~3e-11 and happens to give the same table today).
    let mut x = -10.0f64;
    while x < 10.05 {
        let cdf = 0.5 + 0.5 * libm::erf(x / std::f64::consts::SQRT_2);
        slots[(MAKEDIST_SIZE as f64 * cdf).round_ties_even() as usize] = x;
        x += 0.00005;
    }
    (0..MAKEDIST_SIZE)
        .step_by(4)
        .map(|i| {
            // C would read uninitialised memory here; the step is fine enough that it never does.
            assert!(!slots[i].is_nan(), "normal table slot {i} never filled");
            (slots[i] * DIST_SCALE as f64).round_ties_even() as i32
        })
        .collect()
}

/// `netem/pareto.c` with a = 3, for the i-th emitted entry (already clamped to 32767 like C).
fn pareto_value(i: usize) -> i32 {
    let u = (65536 - 16 * i) as f64 / 65536.0;
    // std's powf is the platform libm pow (glibc here), the same function the C code calls.
    let mut v = 1.0 / u.powf(1.0 / 3.0);
    v -= 1.5;
    v *= (4.0 / 3.0) * DIST_SCALE as f64;
    v.min(32767.0).round_ties_even() as i32
}

fn clamp_i16(v: i32) -> i16 {
    v.clamp(i16::MIN as i32, i16::MAX as i32) as i16
}

fn generate(d: Distribution) -> Option<[i16; TABLE_SIZE]> {
    let values: Vec<i16> = match d {
        Distribution::Uniform => return None,
        Distribution::Normal => normal_values().into_iter().map(clamp_i16).collect(),
        Distribution::Pareto => (0..TABLE_SIZE)
            .map(|i| clamp_i16(pareto_value(i)))
            .collect(),
        // `(normvalue + 3 * parvalue) / 4` in C int arithmetic: truncates toward zero.
        Distribution::Paretonormal => normal_values()
            .into_iter()
            .enumerate()
            .map(|(i, n)| clamp_i16((n + 3 * pareto_value(i)) / 4))
            .collect(),
    };
    // makedist emits TABLE_SIZE values; zip keeps this total whatever the generator returns.
    let mut t = [0i16; TABLE_SIZE];
    for (slot, v) in t.iter_mut().zip(values) {
        *slot = v;
    }
    Some(t)
}

/// A table and its sorted copy, built once per process (the normal sweep is ~400k erf calls).
struct Tables {
    table: [i16; TABLE_SIZE],
    sorted: [i16; TABLE_SIZE],
}

fn cached(d: Distribution) -> Option<&'static Tables> {
    static CACHE: [OnceLock<Option<Tables>>; 4] = [const { OnceLock::new() }; 4];
    CACHE[d.code() as usize]
        .get_or_init(|| {
            generate(d).map(|table| {
                let mut sorted = table;
                sorted.sort_unstable();
                Tables { table, sorted }
            })
        })
        .as_ref()
}

/// The table netem (and the data path's `NF_DIST` map) uses for `d`, bit-identical to
/// iproute2's `<name>.dist`; None for uniform, which needs no table.
pub fn table(d: Distribution) -> Option<Box<[i16; TABLE_SIZE]>> {
    cached(d).map(|t| Box::new(t.table))
}

/// Table-driven offset for table value `t`, exactly as the data path computes it.
fn table_offset(jitter_ns: u64, t: i16) -> i64 {
    (jitter_ns as i64 * t as i64) >> 13
}

/// The per-packet delay the data path draws from the random words `r1`, `r2` (its contract,
/// reproduced bit for bit). `table` must be `table(dist)` for table distributions; it is unused
/// for uniform. Assumes delay and jitter below 2^47 ns (~39 h) so nothing overflows.
pub fn draw(
    delay_ns: u64,
    jitter_ns: u64,
    dist: Distribution,
    table: Option<&[i16; TABLE_SIZE]>,
    r1: u32,
    r2: u32,
) -> u64 {
    if jitter_ns == 0 {
        return delay_ns;
    }
    let off = match dist {
        Distribution::Uniform => {
            let r64 = ((r1 as u64) << 32) | r2 as u64;
            (r64 % (2 * jitter_ns)) as i64 - jitter_ns as i64
        }
        // Table distributions always come with their table (`table(dist)`); without one
        // there is nothing to draw from, and the delay stays fixed.
        _ => table.map_or(0, |t| table_offset(jitter_ns, t[(r1 & 4095) as usize])),
    };
    (delay_ns as i64 + off).max(0) as u64
}

/// The exact distribution of `draw`'s output for uniformly random `r1`, `r2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayModel {
    pub delay_ns: u64,
    pub jitter_ns: u64,
    pub dist: Distribution,
}

impl DelayModel {
    /// The delay for table value `t` (monotone in `t`, which lets cdf/quantile binary-search).
    fn at(&self, t: i16) -> u64 {
        (self.delay_ns as i64 + table_offset(self.jitter_ns, t)).max(0) as u64
    }

    /// Sorted table when the delay is table-driven; None for uniform or zero jitter.
    fn sorted(&self) -> Option<&'static [i16; TABLE_SIZE]> {
        if self.jitter_ns == 0 {
            return None;
        }
        cached(self.dist).map(|t| &t.sorted)
    }

    /// Lowest draw of the uniform case (may be negative: the clamp at 0 then holds the mass).
    fn uniform_lo(&self) -> f64 {
        self.delay_ns as f64 - self.jitter_ns as f64
    }

    /// P(delay <= x_ns). Tables: fraction of the 4096 entries whose delay is <= x. Uniform:
    /// the discrete uniform over [delay - jitter, delay + jitter) (the modulo bias is below
    /// 2^-16 for any jitter under 2^47 ns). Draws below 0 are clamped to 0, a point mass there.
    pub fn cdf(&self, x_ns: f64) -> f64 {
        if x_ns < 0.0 || x_ns.is_nan() {
            return 0.0;
        }
        if self.jitter_ns == 0 {
            return if x_ns >= self.delay_ns as f64 {
                1.0
            } else {
                0.0
            };
        }
        match self.sorted() {
            Some(sorted) => {
                sorted.partition_point(|&t| self.at(t) as f64 <= x_ns) as f64 / TABLE_SIZE as f64
            }
            None => {
                let width = 2.0 * self.jitter_ns as f64;
                ((x_ns.floor() - self.uniform_lo() + 1.0) / width).clamp(0.0, 1.0)
            }
        }
    }

    /// Smallest x with cdf(x) >= p (p clamped to [0, 1]; p = 0 gives the minimum).
    pub fn quantile(&self, p: f64) -> f64 {
        let p = p.clamp(0.0, 1.0);
        if self.jitter_ns == 0 {
            return self.delay_ns as f64;
        }
        match self.sorted() {
            Some(sorted) => {
                let k = ((p * TABLE_SIZE as f64).ceil() as usize).clamp(1, TABLE_SIZE);
                self.at(sorted[k - 1]) as f64
            }
            None => {
                let width = 2.0 * self.jitter_ns as f64;
                let k = (p * width).ceil().clamp(1.0, width);
                (self.uniform_lo() + k - 1.0).max(0.0)
            }
        }
    }

    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    /// The smallest delay `draw` can produce.
    pub fn min_ns(&self) -> u64 {
        self.quantile(0.0) as u64
    }

    /// The largest delay `draw` can produce.
    pub fn max_ns(&self) -> u64 {
        if self.jitter_ns == 0 {
            return self.delay_ns;
        }
        match self.sorted() {
            Some(sorted) => self.at(sorted[TABLE_SIZE - 1]),
            None => self.delay_ns + self.jitter_ns - 1,
        }
    }
}

/// Median delay of a simulated flow that keeps its packet order: packets are sent every
/// `gap_ns`, each draws a delay from `model` (random words from splitmix64 seeded by `seed`),
/// and a packet may not leave before its predecessor: `departure_i = max(send_i + d_i,
/// departure_{i-1})`. Returns the median of `departure_i - send_i` over `n` packets.
///
/// Keeping order skews delays upward: a packet's delay becomes `max_k(d_{i-k} - k * gap)`, the
/// largest earlier draw less the time since it was sent. When `gap` is small against the
/// jitter spread, short draws are mostly overridden by a recent long one, so the median (and
/// every quantile but the maximum) moves toward the upper tail and the spread shrinks; with
/// `gap` well above the spread the distribution is unchanged. So an order-keeping data path
/// cannot reproduce netem's delay distribution for dense flows, and tests must expect this.
pub fn order_kept_median(model: &DelayModel, gap_ns: u64, n: usize, seed: u64) -> f64 {
    assert!(n > 0, "need at least one packet");
    let table = cached(model.dist).map(|t| &t.table);
    let mut state = seed;
    let mut prev_departure = 0u64;
    let mut delays: Vec<u64> = (0..n as u64)
        .map(|i| {
            let r = splitmix64(&mut state);
            let d = draw(
                model.delay_ns,
                model.jitter_ns,
                model.dist,
                table,
                (r >> 32) as u32,
                r as u32,
            );
            let send = i * gap_ns;
            prev_departure = (send + d).max(prev_departure);
            prev_departure - send
        })
        .collect();
    delays.sort_unstable();
    if n % 2 == 1 {
        delays[n / 2] as f64
    } else {
        (delays[n / 2 - 1] as f64 + delays[n / 2] as f64) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(d: Distribution) -> Vec<i16> {
        let path = format!("/usr/lib/x86_64-linux-gnu/tc/{}.dist", d.name());
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (install iproute2; this test must not skip)"));
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(str::split_whitespace)
            .map(|w| w.parse().unwrap_or_else(|e| panic!("{path}: '{w}': {e}")))
            .collect()
    }

    const TABLED: [Distribution; 3] = [
        Distribution::Normal,
        Distribution::Pareto,
        Distribution::Paretonormal,
    ];
    const MS: u64 = 1_000_000;

    #[test]
    fn tables_match_iproute2_files() {
        // Generated with glibc's pow and libm's erf, these are bit-identical to the shipped
        // files (iproute2 6.1), so exact equality is asserted.
        for d in TABLED {
            let ours = table(d).unwrap();
            let theirs = shipped(d);
            assert_eq!(theirs.len(), TABLE_SIZE, "{d}");
            let diffs: Vec<_> = (0..TABLE_SIZE).filter(|&i| ours[i] != theirs[i]).collect();
            assert!(
                diffs.is_empty(),
                "{d}: {} entries differ, first at {:?}",
                diffs.len(),
                &diffs[..1]
            );
        }
        assert!(table(Distribution::Uniform).is_none());
    }

    #[test]
    fn table_spot_values() {
        // (dist, [entry 0, 1000, 2048, 4095]) as in iproute2's .dist files; independent of them.
        let spots = [
            (Distribution::Normal, [-32768, -5677, 0, 28858]),
            (Distribution::Pareto, [-5461, -4393, -2622, 32767]),
            (Distribution::Paretonormal, [-12305, -4714, -1966, 31789]),
        ];
        for (d, want) in spots {
            let t = table(d).unwrap();
            assert_eq!([t[0], t[1000], t[2048], t[4095]], want, "{d}");
        }
    }

    #[test]
    fn draw_follows_the_contract() {
        let n = table(Distribution::Normal).unwrap();
        assert_eq!(draw(7, 0, Distribution::Normal, None, 1, 2), 7);
        // Uniform: (2^32 * r1 + r2) mod 2j - j.
        assert_eq!(draw(100, 10, Distribution::Uniform, None, 0, 25), 95);
        assert_eq!(
            draw(100, 10, Distribution::Uniform, None, 1, 0),
            100 + (1 << 32) % 20 - 10
        );
        assert_eq!(draw(5, 10, Distribution::Uniform, None, 0, 0), 0); // clamped at 0
        // Tables: index r1 & 4095, offset floor(j * t / 8192) (1 * -1 >> 13 is -1, not 0).
        assert_eq!(
            draw(10_000, 8192, Distribution::Normal, Some(&n), 4096 + 1000, 9),
            4323
        );
        assert_eq!(draw(100, 1, Distribution::Normal, Some(&n), 1000, 0), 99);
        assert_eq!(draw(100, 1, Distribution::Normal, Some(&n), 4095, 0), 103);
    }

    fn models() -> Vec<DelayModel> {
        let mut v = vec![];
        for dist in Distribution::ALL {
            // (50, 20) stays positive; (5, 20) puts mass on the clamp at 0; jitter 0 is a point.
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
    fn cdf_is_a_cdf() {
        for m in models() {
            let (lo, hi) = (m.min_ns() as f64, m.max_ns() as f64);
            assert_eq!(m.cdf(lo - 1.0), 0.0, "{m:?}");
            assert!(m.cdf(lo) > 0.0, "{m:?}");
            assert!(m.cdf(hi - 1.0) < 1.0, "{m:?}");
            assert_eq!(m.cdf(hi), 1.0, "{m:?}");
            let step = ((hi - lo) / 5000.0).max(0.25);
            let mut prev = 0.0;
            let mut x = lo - 2.0 * step;
            while x <= hi + 2.0 * step {
                let c = m.cdf(x);
                assert!(c >= prev && (0.0..=1.0).contains(&c), "{m:?} at {x}");
                prev = c;
                x += step;
            }
            // quantile is the generalised inverse.
            for p in [0.0, 1e-4, 0.1, 0.5, 0.9, 0.9999, 1.0] {
                let q = m.quantile(p);
                assert!(
                    m.cdf(q) >= p && (q == lo || m.cdf(q - 1.0) < p),
                    "{m:?} p={p}"
                );
            }
        }
        let clamped = DelayModel {
            delay_ns: 5 * MS,
            jitter_ns: 20 * MS,
            dist: Distribution::Normal,
        };
        assert!(clamped.cdf(0.0) > 0.3, "point mass at 0");
        let u = DelayModel {
            delay_ns: 100,
            jitter_ns: 10,
            dist: Distribution::Uniform,
        };
        assert_eq!((u.min_ns(), u.max_ns(), u.cdf(94.5)), (90, 109, 0.25));
    }

    #[test]
    fn normal_median() {
        let m = DelayModel {
            delay_ns: 50 * MS,
            jitter_ns: 20 * MS,
            dist: Distribution::Normal,
        };
        assert!((m.median() - 50e6).abs() < 0.1e6, "{}", m.median());
    }

    #[test]
    fn keeping_order_raises_the_median() {
        let m = DelayModel {
            delay_ns: 50 * MS,
            jitter_ns: 20 * MS,
            dist: Distribution::Normal,
        };
        // Gaps far above the spread: order never binds.
        let sparse = order_kept_median(&m, 1000 * MS, 20_001, 1);
        assert!((sparse - m.median()).abs() < 1.0 * MS as f64, "{sparse}");
        // Dense flow: steady-state delay is max_k(d_k - k gap), so P(D <= x) = prod_k F(x + k gap).
        let gap = MS;
        let kept_cdf = |x: f64| {
            (0..200)
                .map(|k| m.cdf(x + (k * gap) as f64))
                .product::<f64>()
        };
        let (mut lo, mut hi) = (m.min_ns() as f64, m.max_ns() as f64);
        while hi - lo > 1.0 {
            let mid = (lo + hi) / 2.0;
            if kept_cdf(mid) >= 0.5 {
                hi = mid
            } else {
                lo = mid
            }
        }
        let dense = order_kept_median(&m, gap, 200_001, 2);
        assert!(dense > m.median() + 20.0 * MS as f64, "{dense}");
        assert!((dense - hi).abs() < 0.5 * MS as f64, "{dense} vs {hi}");
    }
}
