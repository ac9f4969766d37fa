//! Hold and release (`--hold`), and late duplicates (`--duplicate-delay`): which combinations
//! netfault can make exact, checked before anything changes. Both stamp departure times that fq
//! honours, as a delay does (issue 15, points 5 and 6).
use std::time::Duration;

use super::{Actions, Direction, MAX_DELAY, SpecError};

/// Longest hold: fq's horizon must reach past its end (the queue is sized for it), and a longer
/// stall is an outage, better said with `--drop 100%` (or a partition).
pub const MAX_HOLD: Duration = Duration::from_secs(60);

/// The combinations of actions a hold or a late duplicate cannot go with.
pub fn validate(a: &Actions) -> Result<(), SpecError> {
    if let Some(h) = a.hold {
        if h > MAX_HOLD {
            return Err(SpecError::new(
                "--hold",
                format!(
                    "{} is beyond the {}s limit (fq's horizon is sized for the hold; a longer \
                     stall is an outage: use --drop 100% or a partition)",
                    humantime::format_duration(h),
                    MAX_HOLD.as_secs()
                ),
            ));
        }
        // The held packets leave together at the hold's end: as a burst above any rate, so a
        // rate could not be kept; and a rejected packet is never held.
        if a.shape.rate.is_some() {
            return Err(SpecError::new(
                "--hold",
                "cannot go with --rate (the held packets leave together at the hold's end, \
                 faster than the rate)",
            ));
        }
        if a.reject.is_some() {
            return Err(SpecError::new(
                "--hold",
                "cannot go with --reject (a rejected packet never leaves)",
            ));
        }
    }
    if let Some(d) = a.duplicate_delay {
        if a.duplicate.0 == 0.0 {
            return Err(SpecError::new(
                "--duplicate-delay",
                "needs --duplicate (it delays the copies --duplicate makes)",
            ));
        }
        let worst = a.shape.model().max_ns() + d.as_nanos() as u64;
        if worst > MAX_DELAY.as_nanos() as u64 {
            return Err(SpecError::new(
                "--duplicate-delay",
                format!(
                    "a copy would leave up to {} after its packet arrived, beyond the {}s limit",
                    humantime::format_duration(Duration::from_nanos(worst)),
                    MAX_DELAY.as_secs()
                ),
            ));
        }
    }
    Ok(())
}

/// Late copies are made at egress only: the copy re-enters the sender's egress and waits in
/// its fq. (At ingress the copy would re-enter the stack, where nothing holds it.)
pub fn validate_dir(a: &Actions, dir: Direction) -> Result<(), SpecError> {
    if a.duplicate_delay.is_some() && dir != Direction::Egress {
        return Err(SpecError::new(
            "--duplicate-delay",
            "needs --dir egress (the copy waits in the sender's fq queue; at ingress nothing \
             would hold it)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Kind, Prob, RuleSpec};

    fn rule(f: impl FnOnce(&mut Actions)) -> RuleSpec {
        let mut r = RuleSpec::new("r", Kind::Rule);
        r.dir = Direction::Egress;
        f(&mut r.act);
        r
    }

    fn field(r: &RuleSpec) -> String {
        r.validate().unwrap_err().field
    }

    #[test]
    fn a_hold_is_an_action_that_needs_fq() {
        let r = rule(|a| a.hold = Some(Duration::from_secs(2)));
        assert!(r.validate().is_ok());
        assert!(!r.act.is_empty() && r.act.needs_fq());
        // Beside a delay and jitter: allowed (departure = the later of the two).
        let r = rule(|a| {
            a.hold = Some(Duration::from_secs(2));
            a.shape.delay = Some(Duration::from_millis(50));
            a.shape.jitter = Some(Duration::from_millis(5));
        });
        assert!(r.validate().is_ok());
        assert!((54_999_000..=55_000_000).contains(&r.act.max_stamp_ns()));
    }

    #[test]
    fn hold_refusals_name_the_flag() {
        let r = rule(|a| a.hold = Some(Duration::from_secs(61)));
        assert_eq!(field(&r), "--hold");
        assert!(r.validate().unwrap_err().msg.contains("60s"));
        let r = rule(|a| {
            a.hold = Some(Duration::from_secs(1));
            a.shape.rate = Some("10mbit".parse().unwrap());
        });
        assert_eq!(field(&r), "--hold");
        let r = rule(|a| {
            a.hold = Some(Duration::from_secs(1));
            a.reject = Some(Default::default());
        });
        // --reject's own refusal of shaping does not cover a hold: this one does.
        assert_eq!(field(&r), "--hold");
        assert_eq!(
            rule(|a| a.hold = Some(MAX_HOLD)).validate(),
            Ok(()),
            "the limit itself is allowed"
        );
    }

    #[test]
    fn late_duplicates_need_duplicate_and_egress() {
        let d = Some(Duration::from_millis(100));
        let r = rule(|a| a.duplicate_delay = d);
        assert_eq!(field(&r), "--duplicate-delay");
        assert!(r.validate().unwrap_err().msg.contains("--duplicate"));
        let mut r = rule(|a| {
            a.duplicate = Prob(1.0);
            a.duplicate_delay = d;
        });
        assert!(r.validate().is_ok());
        assert!(r.act.late_duplicates() && r.act.needs_fq());
        assert_eq!(r.act.max_stamp_ns(), 100_000_000);
        for dir in [Direction::Ingress, Direction::Both] {
            r.dir = dir;
            assert_eq!(field(&r), "--duplicate-delay", "{dir:?}");
        }
        let r = rule(|a| {
            a.duplicate = Prob(0.5);
            a.shape.delay = Some(Duration::from_secs(50));
            a.duplicate_delay = Some(Duration::from_secs(11));
        });
        assert_eq!(field(&r), "--duplicate-delay");
        // A plain duplicate needs no queue.
        let r = rule(|a| a.duplicate = Prob(0.5));
        assert!(!r.act.needs_fq() && !r.act.late_duplicates());
    }
}
