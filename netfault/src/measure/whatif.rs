//! `--what-if FILE`: the network as it would be under a rule set, folded into measured round
//! trips. Every rule of the file is taken to act once on each heartbeat's round trip (one
//! direction, as a rule on one side does): its delay and jitter are added, drawn from the
//! same distribution the data path draws from (`spec::dist::DelayModel`), and its loss is
//! combined with the measured loss as independent. What the model cannot honour is refused:
//! partitions (every heartbeat lost), rates (a queue, not a distribution), burst loss (misses
//! would not be independent), reject (a refused heartbeat is an error, not a late one) and
//! corruption with a good checksum (a damaged heartbeat is neither late nor lost). Corruption
//! with the checksum left bad (the default) is a loss: the receiver's stack discards it.
use serde::{Deserialize, Serialize};

use super::{rng::SplitMix, samples::Rtts};
use crate::spec::{CorruptChecksum, Kind, RuleSpec, SpecError, Ttl, dist::DelayModel};

/// What a rule set does to a round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct WhatIf {
    /// The probability that a heartbeat is lost by the rules: 1 - prod(1 - drop).
    pub loss: f64,
    /// Each shaping rule's delay distribution, added once per round trip.
    pub delays: Vec<DelayModel>,
}

/// The figures of a report under the rule set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhatIfReport {
    /// The rule-set file.
    pub file: String,
    /// The loss under it: measured and the rules' together.
    pub loss: f64,
    pub rtt_us: super::Summary,
    pub advice: super::Advice,
}

impl WhatIf {
    /// The rules of a rule-set file (`spec::ruleset::parse`), or the first one the model
    /// cannot honour, named (`rule[NAME]`).
    pub fn from_rules(rules: &[(RuleSpec, Ttl)]) -> Result<WhatIf, SpecError> {
        let mut keep = 1.0;
        let mut delays = Vec::new();
        for (r, _) in rules {
            let at = || format!("--what-if: {} '{}'", kind_name(r.kind), r.name);
            let why = if r.kind != Kind::Rule {
                Some(
                    "a partition loses every heartbeat: no timeout tells it apart from a dead peer",
                )
            } else if r.act.shape.rate.is_some() {
                Some(
                    "a rate is a queue whose delay depends on the traffic, not a distribution to fold",
                )
            } else if r.act.burst.is_some_and(|b| b > 1.0) || r.act.gemodel.is_some() {
                Some(
                    "burst loss makes misses come in runs, and the advice takes them as independent",
                )
            } else if r.act.reject.is_some() {
                Some("a rejected heartbeat fails at once: an error, not a late answer")
            } else if r.act.corrupts() && r.act.corrupt_checksum == Some(CorruptChecksum::Good) {
                Some(
                    "a heartbeat corrupted with a good checksum arrives damaged: neither late nor \
                     lost (corrupt_checksum = \"bad\" is folded as loss)",
                )
            } else {
                None
            };
            if let Some(why) = why {
                return Err(SpecError::new(at(), why));
            }
            // A packet corrupted with its checksum left bad is discarded by the receiver: a loss,
            // drawn after (and independently of) the rule's drop.
            keep *= 1.0 - r.act.drop.0;
            if r.act.corrupts() {
                keep *= 1.0 - r.act.corrupt.0;
            }
            if r.act.shape.delay.is_some() {
                delays.push(r.act.shape.model());
            }
        }
        Ok(WhatIf {
            loss: 1.0 - keep,
            delays,
        })
    }

    /// The samples as they would be: each with one draw from every delay added, the draws
    /// stratified (sample i of n takes the quantile at a shuffled (k + 1/2) / n), so n samples
    /// carry the delay's whole distribution and no more confidence than n measured ones.
    #[expect(
        clippy::expect_used,
        reason = "sums of finite non-negative samples and delays are finite and non-negative"
    )]
    pub fn fold(&self, rtts: &Rtts) -> Rtts {
        let n = rtts.len();
        let mut out: Vec<f64> = rtts.sorted().to_vec();
        let mut rng = SplitMix(0x005e_ed0f_u64 ^ n as u64);
        for d in &self.delays {
            let mut strata: Vec<usize> = (0..n).collect();
            // Fisher-Yates, with a fixed seed: a report is reproducible.
            for i in (1..n).rev() {
                strata.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            for (v, k) in out.iter_mut().zip(strata) {
                *v += d.quantile((k as f64 + 0.5) / n as f64) / 1e3;
            }
        }
        Rtts::new(out).expect("finite sums of finite samples")
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Rule => "rule",
        Kind::Partition => "partition",
        Kind::Protect => "protection",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ruleset;

    #[test]
    fn rules_fold_their_delay_and_loss_and_the_rest_is_refused() {
        let rules = ruleset::parse(
            "[[rule]]\nname = \"slow\"\ndst = [\"192.0.2.2\"]\ndelay = \"20ms\"\njitter = \"5ms\"\ndistribution = \"normal\"\n\
             [[rule]]\nname = \"lossy\"\ndst = [\"192.0.2.2\"]\ndrop = 0.1\n\
             [[rule]]\nname = \"lossier\"\ndst = [\"192.0.2.2\"]\ndrop = 0.2\n",
        )
        .unwrap();
        let w = WhatIf::from_rules(&rules).unwrap();
        assert!((w.loss - (1.0 - 0.9 * 0.8)).abs() < 1e-12);
        assert_eq!(w.delays.len(), 1);
        // 10,000 samples of exactly 1 ms: the folded ones are 1 ms + the delay's distribution,
        // its quantiles within one stratum of the model's.
        let base = Rtts::new(vec![1_000.0; 10_000]).unwrap();
        let f = w.fold(&base);
        let model = rules[0].0.act.shape.model();
        for p in [0.01, 0.1, 0.5, 0.9, 0.99] {
            let got = f.quantile(p) - 1_000.0;
            let lo = model.quantile(p - 1e-4) / 1e3;
            let hi = model.quantile(p + 1e-4) / 1e3;
            assert!(
                lo <= got && got <= hi,
                "p {p}: {got} us not in [{lo}, {hi}]"
            );
        }
        for (text, names) in [
            (
                "[[partition]]\nname = \"cut\"\na = [\"192.0.2.1\"]\nb = [\"192.0.2.2\"]\n",
                "partition 'cut'",
            ),
            (
                "[[rule]]\nname = \"paced\"\ndst = [\"192.0.2.2\"]\nrate = \"1mbit\"\n",
                "rule 'paced'",
            ),
            (
                "[[rule]]\nname = \"bursty\"\ndst = [\"192.0.2.2\"]\ndrop = 0.05\nburst = 4\n",
                "rule 'bursty'",
            ),
            (
                "[[rule]]\nname = \"refused\"\ndst = [\"192.0.2.2\"]\nproto = \"tcp\"\nreject = \"tcp-reset\"\n",
                "rule 'refused'",
            ),
            (
                "[[rule]]\nname = \"damaged\"\ndst = [\"192.0.2.2\"]\ncorrupt = 0.1\ncorrupt_checksum = \"good\"\n",
                "rule 'damaged'",
            ),
        ] {
            let rules = ruleset::parse(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            let e = WhatIf::from_rules(&rules).unwrap_err();
            assert!(e.field.contains(names), "{text}: {e:?}");
        }
    }

    /// Corruption with its checksum left bad is discarded by the receiver: folded as loss.
    #[test]
    fn corruption_with_a_bad_checksum_folds_as_loss() {
        let rules = ruleset::parse(
            "[[rule]]\nname = \"c\"\ndst = [\"192.0.2.2\"]\ndrop = 0.1\ncorrupt = 0.5\n",
        )
        .unwrap();
        let w = WhatIf::from_rules(&rules).unwrap();
        assert!((w.loss - (1.0 - 0.9 * 0.5)).abs() < 1e-12, "{}", w.loss);
    }
}
