//! Samples as users give them, one duration per line with its unit, and their summary.
use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// Round-trip times in µs, sorted ascending (never empty, every value finite and >= 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Rtts(Vec<f64>);

impl Rtts {
    /// The samples, sorted; `None` when there are none or one is not a finite non-negative
    /// number.
    pub fn new(mut us: Vec<f64>) -> Option<Rtts> {
        if us.is_empty() || us.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return None;
        }
        us.sort_by(f64::total_cmp);
        Some(Rtts(us))
    }

    pub fn sorted(&self) -> &[f64] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p` quantile by nearest rank: the smallest sample with at least a fraction `p` of
    /// the samples at or below it.
    pub fn quantile(&self, p: f64) -> f64 {
        let n = self.0.len();
        let rank = (p * n as f64).ceil().clamp(1.0, n as f64) as usize;
        self.0[rank - 1]
    }

    /// The fraction of samples above `t`.
    pub fn fraction_above(&self, t: f64) -> f64 {
        let at_or_below = self.0.partition_point(|v| *v <= t);
        (self.0.len() - at_or_below) as f64 / self.0.len() as f64
    }

    pub fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }

    /// The sample standard deviation (n - 1; 0 for one sample).
    pub fn stddev(&self) -> f64 {
        let n = self.0.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.0.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64).sqrt()
    }

    pub fn summary(&self) -> Summary {
        Summary {
            min: self.0[0],
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
            p999: self.quantile(0.999),
            max: self.0[self.0.len() - 1],
            mean: self.mean(),
            stddev: self.stddev(),
        }
    }
}

/// `rtt_us` of a report: percentiles by nearest rank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub stddev: f64,
}

/// A duration with its unit (`12.5ms`, `800us`, `800µs`, `1.2s`, `950ns`), in µs.
pub fn parse_us(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || c == '+'))
        .ok_or_else(|| format!("'{t}' has no unit (ns, us, ms or s)"))?;
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{t}' does not start with a number"))?;
    let scale = match unit.trim() {
        "ns" => 1e-3,
        "us" | "µs" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        u => return Err(format!("'{t}': unknown unit '{u}' (ns, us, ms or s)")),
    };
    if !v.is_finite() {
        return Err(format!("'{t}' is not a finite number"));
    }
    Ok(v * scale)
}

/// Samples from `text`, one per line; blank lines and lines starting with `#` are skipped.
/// An error names `origin:LINE`.
pub fn parse_samples(text: &str, origin: &str) -> Result<Rtts, SpecError> {
    let mut us = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let v = parse_us(l).map_err(|m| SpecError::new(format!("{origin}:{}", i + 1), m))?;
        us.push(v);
    }
    Rtts::new(us).ok_or_else(|| SpecError::new(origin, "no samples (one duration per line)"))
}

/// A rate `N/UNIT` (`1/day`, `3/h`, `0.5/min`, `2/s`) in events per second; N > 0.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, unit) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not N/UNIT (`1/day`, `3/h`)"))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("'{s}': '{n}' is not a number"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("'{s}': the count must be above 0"));
    }
    let secs = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "min" | "minute" => 60.0,
        "h" | "hour" => 3_600.0,
        "d" | "day" => 86_400.0,
        "week" => 604_800.0,
        u => {
            return Err(format!(
                "'{s}': unknown unit '{u}' (s, min, h, day or week)"
            ));
        }
    };
    Ok(n / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse_us("12.5ms").unwrap(), 12_500.0);
        assert_eq!(parse_us(" 800us").unwrap(), 800.0);
        assert_eq!(parse_us("800 µs").unwrap(), 800.0);
        assert_eq!(parse_us("1.2s").unwrap(), 1_200_000.0);
        assert_eq!(parse_us("1500ns").unwrap(), 1.5);
        assert!(parse_us("12").unwrap_err().contains("no unit"));
        assert!(parse_us("12 parsecs").unwrap_err().contains("unknown unit"));
        let e = parse_samples("# rtts\n1ms\n\n2ms\nfast\n", "rtt.txt").unwrap_err();
        assert_eq!(e.field, "rtt.txt:5");
        assert_eq!(parse_samples("# none\n", "f").unwrap_err().field, "f");
        let r = parse_samples("3ms\n1ms\n2ms\n", "f").unwrap();
        assert_eq!(r.sorted(), &[1_000.0, 2_000.0, 3_000.0]);
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1/day").unwrap(), 1.0 / 86_400.0);
        assert_eq!(parse_rate("3/h").unwrap(), 3.0 / 3_600.0);
        assert!(parse_rate("0/day").is_err());
        assert!(
            parse_rate("1/fortnight")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_rate("daily").is_err());
    }

    #[test]
    fn nearest_rank_quantiles() {
        let r = Rtts::new((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!(r.quantile(0.5), 50.0);
        assert_eq!(r.quantile(0.99), 99.0);
        assert_eq!(r.quantile(0.999), 100.0);
        assert_eq!(r.quantile(0.0), 1.0);
        assert_eq!(r.fraction_above(90.0), 0.1);
        assert!(Rtts::new(vec![]).is_none());
        assert!(Rtts::new(vec![1.0, f64::NAN]).is_none());
    }
}
