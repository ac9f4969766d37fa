//! Log-linear histograms of round-trip times, in the buckets the data path uses
//! (`netfault_common::rtt_bucket`: under 1 % relative error from 1 µs to 60 s).
use std::collections::BTreeMap;

use netfault_common::{RTT_BUCKETS, rtt_bucket, rtt_bucket_upper};

/// Counts per bucket, only the non-empty ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram(BTreeMap<u32, u64>);

impl Histogram {
    pub fn of(us: &[f64]) -> Histogram {
        let mut h = Histogram::default();
        for v in us {
            // Values are rounded down to whole µs, as the data path counts them.
            *h.0.entry(rtt_bucket(*v as u64)).or_default() += 1;
        }
        h
    }

    /// The histogram of [`Histogram::buckets`]' pairs.
    pub fn of_buckets(pairs: &[(u64, u64)]) -> Histogram {
        Histogram(
            pairs
                .iter()
                .map(|(upper, n)| (rtt_bucket(upper - 1), *n))
                .collect(),
        )
    }

    /// `[[upper_us, count], ...]`: each non-empty bucket's first value past it, ascending.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.0
            .iter()
            .map(|(b, n)| (rtt_bucket_upper(*b), *n))
            .collect()
    }

    /// Each bucket's count of values at the bucket's middle, ascending.
    pub fn midpoints(&self) -> Vec<f64> {
        self.0
            .iter()
            .flat_map(|(b, n)| {
                let lower = if *b == 0 { 0 } else { rtt_bucket_upper(b - 1) };
                let mid = (lower + rtt_bucket_upper(*b)) as f64 / 2.0;
                std::iter::repeat_n(mid, *n as usize)
            })
            .collect()
    }

    /// Coarse rows for a terminal: the counts per power of two (upper bound in µs).
    pub fn octaves(&self) -> Vec<(u64, u64)> {
        let mut rows: BTreeMap<u64, u64> = BTreeMap::new();
        for (b, n) in &self.0 {
            let upper = rtt_bucket_upper(*b);
            *rows.entry(upper.next_power_of_two()).or_default() += n;
        }
        rows.into_iter().collect()
    }
}

const _: () = assert!(RTT_BUCKETS > 0);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Each value lies in its bucket, and each bucket is at most 1/128 of its values wide
        /// (under 1 % relative error), up to 60 s.
        #[test]
        fn buckets_hold_their_values_within_one_percent(v in 0u64..=60_000_000) {
            let b = rtt_bucket(v);
            let lower = if b == 0 { 0 } else { rtt_bucket_upper(b - 1) };
            let upper = rtt_bucket_upper(b);
            prop_assert!(lower <= v && v < upper, "{v} in [{lower}, {upper})");
            prop_assert!(((upper - lower) as f64) <= (lower.max(1) as f64) / 128.0 + 1.0);
            prop_assert!(b < RTT_BUCKETS);
        }
    }

    #[test]
    fn buckets_are_contiguous_and_clamped() {
        for b in 1..RTT_BUCKETS {
            assert_eq!(rtt_bucket(rtt_bucket_upper(b - 1)), b, "bucket {b}");
        }
        assert_eq!(rtt_bucket(u64::MAX), RTT_BUCKETS - 1);
        let h = Histogram::of(&[1.5, 1.2, 300.0, 301.0]);
        assert_eq!(h.buckets(), vec![(2, 2), (302, 2)]);
    }
}
