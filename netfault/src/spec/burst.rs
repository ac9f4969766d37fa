//! Burst loss: a Gilbert-Elliott chain, from a loss rate and a mean run length (`--drop L
//! --burst B`) or from netem's four parameters (`--gemodel p,r,1-h,1-k`). Pure maths.
//!
//! The chain has a good and a bad state. Each packet is lost with the probability of the state
//! the chain is in (1-k in the good state, 1-h in the bad one), then the chain moves: good to
//! bad with probability p, bad to good with probability r. netem draws the same two numbers per
//! packet (its transition first, but the loss still with the state before it), so the meaning
//! of the four parameters is netem's.
//!
//! The simple form loses every packet in the bad state and none in the good one, so a run of
//! losses is a stay in the bad state: geometric, mean 1/r = B. The stationary share of the bad
//! state, p/(p+r), is the loss rate L, hence p = r L / (1 - L).
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::{Prob, SpecError};

/// Longest mean run `--burst` takes: a run of a million packets is an outage.
pub const MAX_BURST: f64 = 1e6;

/// netem's Gilbert-Elliott parameters, each a probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeModel {
    /// Good to bad, per packet.
    pub p: f64,
    /// Bad to good, per packet.
    pub r: f64,
    /// Loss probability in the bad state (netem's 1-h).
    pub loss_bad: f64,
    /// Loss probability in the good state (netem's 1-k).
    pub loss_good: f64,
}

/// Which packets share a chain: each flow its own (default), or the whole rule one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BurstScope {
    #[default]
    Flow,
    Rule,
}

impl FromStr for BurstScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "flow" => Ok(Self::Flow),
            "rule" => Ok(Self::Rule),
            _ => Err(format!("'{s}' is not one of flow, rule")),
        }
    }
}

impl fmt::Display for BurstScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flow => "flow",
            Self::Rule => "rule",
        })
    }
}

impl FromStr for GeModel {
    type Err = String;
    /// `p[,r[,1-h[,1-k]]]`, each `5%` or `0.05`; netem's defaults for those left out: r = 1-p,
    /// 1-h = 100 %, 1-k = 0.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').collect();
        if parts.is_empty() || parts.len() > 4 || parts.iter().any(|p| p.trim().is_empty()) {
            return Err(format!(
                "'{s}' is not p[,r[,1-h[,1-k]]] (up to four probabilities, e.g. 1%,25%,100%,0%)"
            ));
        }
        let v: Vec<f64> = parts
            .iter()
            .map(|p| p.parse::<Prob>().map(|p| p.0))
            .collect::<Result<_, _>>()?;
        let p = v[0];
        Ok(GeModel {
            p,
            r: v.get(1).copied().unwrap_or(1.0 - p),
            loss_bad: v.get(2).copied().unwrap_or(1.0),
            loss_good: v.get(3).copied().unwrap_or(0.0),
        })
    }
}

impl fmt::Display for GeModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            Prob(self.p),
            Prob(self.r),
            Prob(self.loss_bad),
            Prob(self.loss_good)
        )
    }
}

impl GeModel {
    /// The simple chain with loss rate `loss` and mean run `burst` (see the module's text).
    /// None where no such chain exists: `burst` below `loss / (1 - loss)` needs p > 1.
    pub fn simple(loss: f64, burst: f64) -> Option<GeModel> {
        if !(loss > 0.0 && loss < 1.0 && burst >= 1.0 && burst.is_finite()) {
            return None;
        }
        let r = 1.0 / burst;
        let p = r * loss / (1.0 - loss);
        // Rounding must not refuse the shortest mean run a loss rate allows (p = 1 exactly).
        (p <= 1.0 + 1e-12).then_some(GeModel {
            p: p.min(1.0),
            r,
            loss_bad: 1.0,
            loss_good: 0.0,
        })
    }

    /// Stationary share of packets the chain sees in the bad state (the good one when it never
    /// moves at all).
    pub fn bad_share(&self) -> f64 {
        if self.p + self.r == 0.0 {
            0.0
        } else {
            self.p / (self.p + self.r)
        }
    }

    /// Long-run loss rate.
    pub fn mean_loss(&self) -> f64 {
        let b = self.bad_share();
        b * self.loss_bad + (1.0 - b) * self.loss_good
    }

    /// The data path's thresholds: (p, r, loss in bad, loss in good).
    pub fn thresholds(&self) -> [u32; 4] {
        [self.p, self.r, self.loss_bad, self.loss_good].map(|x| Prob(x).threshold())
    }

    /// Does it lose anything at all (from the good state, or from a bad state it reaches)?
    pub fn loses(&self) -> bool {
        self.loss_good > 0.0 || (self.p > 0.0 && self.loss_bad > 0.0)
    }
}

/// The chain a rule's loss compiles to, if any: `--gemodel`, or `--drop` with `--burst` above 1.
/// `--burst 1` is independent loss (no chain): the rule takes the plain drop path.
pub fn chain(drop: Prob, burst: Option<f64>, gemodel: Option<GeModel>) -> Option<GeModel> {
    gemodel.or_else(|| match burst {
        Some(b) if b > 1.0 => GeModel::simple(drop.0, b),
        _ => None,
    })
}

/// Checks the burst fields together (names are the CLI's flags).
pub fn validate(
    drop: Prob,
    burst: Option<f64>,
    gemodel: Option<GeModel>,
    scope: BurstScope,
) -> Result<(), SpecError> {
    if gemodel.is_some() {
        if drop.0 > 0.0 {
            return Err(SpecError::new(
                "--gemodel",
                "cannot be combined with --drop: the model gives the loss rate itself (or use --drop L --burst B)",
            ));
        }
        if burst.is_some() {
            return Err(SpecError::new(
                "--gemodel",
                "cannot be combined with --burst: give either --drop L --burst B or the full --gemodel p,r,1-h,1-k",
            ));
        }
    }
    if let Some(b) = burst {
        if !b.is_finite() || !(1.0..=MAX_BURST).contains(&b) {
            return Err(SpecError::new(
                "--burst",
                format!("{b} is not a mean run length from 1 to {MAX_BURST}"),
            ));
        }
        if drop.0 <= 0.0 || drop.0 >= 1.0 {
            return Err(SpecError::new(
                "--burst",
                "needs --drop above 0 and below 100% (the loss rate the runs make up)",
            ));
        }
        if b > 1.0 && GeModel::simple(drop.0, b).is_none() {
            let min = drop.0 / (1.0 - drop.0);
            return Err(SpecError::new(
                "--burst",
                format!(
                    "with --drop {drop} runs average at least {min:.3} packets (fewer would need \
                     more than one bad-state entry per packet)"
                ),
            ));
        }
    }
    if scope == BurstScope::Rule && chain(drop, burst, gemodel).is_none() {
        return Err(SpecError::new(
            "--burst-scope",
            "needs --burst above 1 or --gemodel (independent loss has no chain to share)",
        ));
    }
    Ok(())
}

/// Parses `--burst`: a mean run length, 1 or more.
pub fn parse_burst(s: &str) -> Result<f64, String> {
    let b: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a mean run length (e.g. 4)"))?;
    if !b.is_finite() || !(1.0..=MAX_BURST).contains(&b) {
        return Err(format!("'{s}' is not from 1 to {MAX_BURST}"));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn netem_defaults_and_display() {
        let g: GeModel = "1%".parse().unwrap();
        assert_eq!((g.p, g.r, g.loss_bad, g.loss_good), (0.01, 0.99, 1.0, 0.0));
        let g: GeModel = "1%,25%,90%,0.5%".parse().unwrap();
        assert_eq!(
            (g.p, g.r, g.loss_bad, g.loss_good),
            (0.01, 0.25, 0.9, 0.005)
        );
        assert_eq!(g.to_string().parse::<GeModel>().unwrap(), g);
        for bad in ["", "1%,", "1,2", "1%,2%,3%,4%,5%", "x", "-1%"] {
            assert!(bad.parse::<GeModel>().is_err(), "{bad}");
        }
    }

    #[test]
    fn five_percent_in_runs_of_four() {
        let g = GeModel::simple(0.05, 4.0).unwrap();
        assert_eq!(g.r, 0.25);
        assert!((g.p - 0.25 * 0.05 / 0.95).abs() < 1e-15);
        assert!((g.mean_loss() - 0.05).abs() < 1e-12);
        assert_eq!(g.thresholds()[1], 1 << 30);
        assert_eq!(g.thresholds()[2], u32::MAX);
        assert_eq!(g.thresholds()[3], 0);
    }

    #[test]
    fn validation_names_the_flag() {
        let field = |d: f64, b: Option<f64>, g: Option<&str>, s| {
            validate(Prob(d), b, g.map(|g| g.parse().unwrap()), s)
                .err()
                .map(|e| e.field)
        };
        use BurstScope::{Flow, Rule};
        assert_eq!(field(0.05, Some(4.0), None, Flow), None);
        assert_eq!(field(0.05, Some(4.0), None, Rule), None);
        assert_eq!(field(0.0, None, Some("1%"), Rule), None);
        assert_eq!(field(0.05, None, Some("1%"), Flow).unwrap(), "--gemodel");
        assert_eq!(
            field(0.0, Some(4.0), Some("1%"), Flow).unwrap(),
            "--gemodel"
        );
        assert_eq!(field(0.0, Some(4.0), None, Flow).unwrap(), "--burst");
        assert_eq!(field(1.0, Some(4.0), None, Flow).unwrap(), "--burst");
        assert_eq!(field(0.9, Some(2.0), None, Flow).unwrap(), "--burst");
        assert_eq!(field(0.9, Some(9.0), None, Flow), None);
        assert_eq!(field(0.05, Some(0.5), None, Flow).unwrap(), "--burst");
        assert_eq!(field(0.05, None, None, Rule).unwrap(), "--burst-scope");
        assert_eq!(field(0.05, Some(1.0), None, Rule).unwrap(), "--burst-scope");
        assert!(chain(Prob(0.05), Some(1.0), None).is_none());
    }

    proptest! {
        /// The simple chain has the asked loss rate and mean run (1/r), wherever it exists,
        /// and exists exactly where p would be a probability.
        #[test]
        fn simple_chain_round_trips(loss in 0.0001f64..0.9999, burst in 1.0f64..1000.0) {
            match GeModel::simple(loss, burst) {
                Some(g) => {
                    prop_assert!((0.0..=1.0).contains(&g.p));
                    prop_assert!((g.mean_loss() - loss).abs() < 1e-9);
                    prop_assert!((1.0 / g.r - burst).abs() < 1e-9 * burst);
                    prop_assert!(validate(Prob(loss), Some(burst), None, BurstScope::Flow).is_ok());
                }
                None => {
                    prop_assert!(burst < loss / (1.0 - loss) * (1.0 + 1e-12));
                    prop_assert!(validate(Prob(loss), Some(burst), None, BurstScope::Flow).is_err());
                }
            }
        }

        /// Every probability a model holds survives its threshold to within one in 2^32.
        #[test]
        fn thresholds_are_the_probabilities(p in 0.0f64..=1.0, r in 0.0f64..=1.0) {
            let g = GeModel { p, r, loss_bad: 1.0, loss_good: 0.0 };
            let t = g.thresholds();
            prop_assert!((f64::from(t[0]) / 4_294_967_296.0 - p).abs() <= 1.0 / 4_294_967_296.0 + 1e-12);
            prop_assert!((f64::from(t[1]) / 4_294_967_296.0 - r).abs() <= 1.0 / 4_294_967_296.0 + 1e-12);
        }
    }
}
