//! `netfault advise --samples FILE`: the timeout and phi thresholds that round-trip times
//! measured elsewhere advise (library: `measure`). Needs no privileges and no kernel.
use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use netfault::{
    measure::{self, Params, Report, parse_samples, whatif::WhatIf},
    spec::SpecError,
};

/// Advise a heartbeat timeout and phi accrual thresholds from round-trip times measured
/// elsewhere (an application's own logs): one duration per line, with its unit (`12.5ms`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The samples' file (`-`: standard input). Blank lines and `#` comments are skipped.
    #[arg(long, value_name = "FILE")]
    pub samples: PathBuf,
    /// The fraction of heartbeats lost (`0.1%` or `0.001`), counted as misses.
    #[arg(long, value_name = "PROB", default_value = "0", value_parser = super::args::parse_prob)]
    pub loss: netfault::spec::Prob,
    #[command(flatten)]
    pub advice: AdviceArgs,
    /// Also advise for the network as it would be under this rule-set file: each rule's
    /// delay, jitter and loss folded into every round trip once.
    #[arg(long = "what-if", value_name = "FILE")]
    pub what_if: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// The rule-set file of `--what-if`, read and folded into a model; bad input names the file
/// or the rule.
pub fn what_if(file: Option<&std::path::Path>) -> Result<Option<(String, WhatIf)>, SpecError> {
    let Some(f) = file else { return Ok(None) };
    let name = f.display().to_string();
    let text = std::fs::read_to_string(f)
        .map_err(|e| SpecError::new("--what-if", format!("{name}: {e}")))?;
    let rules = netfault::spec::ruleset::parse(&text)
        .map_err(|e| SpecError::new(format!("--what-if {name}: {}", e.field), e.msg))?;
    Ok(Some((name, WhatIf::from_rules(&rules)?)))
}

fn parse_pause(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("'{s}': {e}"))
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let origin = a.samples.display().to_string();
    let text = if origin == "-" {
        std::io::read_to_string(std::io::stdin()).context("read the samples from stdin")?
    } else {
        std::fs::read_to_string(&a.samples)
            .map_err(|e| SpecError::new("--samples", format!("{origin}: {e}")))?
    };
    if a.loss.0 >= 1.0 {
        return Err(SpecError::new("--loss", "must be below 1: every heartbeat lost").into());
    }
    let what_if = what_if(a.what_if.as_deref())?;
    let rtts = parse_samples(&text, &origin)?;
    let params = a.advice.params(a.loss.0);
    let mut report = Report::new(None, "file", &rtts, &params);
    if let Some((file, w)) = &what_if {
        report = report.with_what_if(&rtts, &params, file, w);
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        // Written whole, so a closed stdout is an io error the caller recognises.
        let doc = serde_json::to_string(&report)?;
        writeln!(out, "{doc}")?;
    } else {
        text_report(&mut out, &report, &a.advice)?;
    }
    Ok(())
}

fn ms(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.3} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.3} ms", us / 1e3)
    } else {
        format!("{us:.1} us")
    }
}

/// The advice flags `measure` shares.
#[derive(clap::Args, Debug, Clone)]
pub struct AdviceArgs {
    /// The interval between heartbeats.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::args::parse_interval)]
    pub heartbeat: Duration,
    /// False suspicions of a live peer tolerated: N/UNIT (s, min, h, day, week).
    #[arg(long = "false-suspicions", value_name = "N/UNIT", default_value = "1/day", value_parser = measure::parse_rate)]
    pub false_suspicions: f64,
    /// Consecutive misses that make a suspicion.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub misses: u32,
    /// phi's floor for the standard deviation of heartbeat intervals (Akka's
    /// min-std-deviation).
    #[arg(long = "min-stddev", value_name = "DURATION", default_value = "100ms", value_parser = super::args::parse_interval)]
    pub min_stddev: Duration,
    /// Added to the mean heartbeat interval by phi (Akka's acceptable-heartbeat-pause).
    #[arg(long = "acceptable-pause", value_name = "DURATION", default_value = "0s", value_parser = parse_pause)]
    pub acceptable_pause: Duration,
}

impl AdviceArgs {
    pub fn params(&self, loss: f64) -> Params {
        Params {
            heartbeat: self.heartbeat,
            target_per_s: self.false_suspicions,
            misses: self.misses,
            loss,
            min_stddev: self.min_stddev,
            acceptable_pause: self.acceptable_pause,
        }
    }
}

/// A report for a terminal: the summary, a histogram by powers of two, the advice.
pub fn text_report(
    out: &mut impl std::io::Write,
    r: &Report,
    a: &AdviceArgs,
) -> std::io::Result<()> {
    if let Some(p) = &r.peer {
        writeln!(out, "{p} ({})", r.source)?;
    }
    match r.loss {
        Some(l) => writeln!(out, "{} samples, loss {:.4} %", r.samples, l * 100.0)?,
        // Passive: nothing was sent to be lost.
        None => writeln!(out, "{} samples", r.samples)?,
    }
    if let Some(a) = &r.answers {
        writeln!(
            out,
            "answered by UDP {}, by ICMP port unreachable {}",
            a.udp, a.icmp_unreachable
        )?;
    }
    let (Some(s), Some(ad)) = (&r.rtt_us, &r.advice) else {
        return Ok(());
    };
    writeln!(
        out,
        "rtt  min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}  stddev {}",
        ms(s.min),
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.p999),
        ms(s.max),
        ms(s.mean),
        ms(s.stddev)
    )?;
    let rows = measure::Histogram::of_buckets(&r.histogram).octaves();
    let top = rows.iter().map(|(_, n)| *n).max().unwrap_or(1);
    for (upper, n) in rows {
        let bar = "#".repeat(((n * 40).div_ceil(top)) as usize);
        writeln!(out, "  < {:>10}  {n:>9}  {bar}", ms(upper as f64))?;
    }
    writeln!(
        out,
        "advice for a heartbeat every {}, a suspicion after {} miss(es) in a row, at most {:.3} false suspicions a day:",
        humantime::format_duration(a.heartbeat),
        a.misses,
        a.false_suspicions * 86_400.0
    )?;
    match ad.timeout_ms {
        Some(t) => {
            writeln!(out, "  timeout {}  ({})", ms(t * 1e3), ad.method)?;
            if let Some(f) = ad.false_suspicions_per_day {
                writeln!(
                    out,
                    "  false suspicions at that timeout: {f:.3} a day (estimated)"
                )?;
            }
        }
        None => writeln!(
            out,
            "  no timeout: {}",
            ad.reason.as_deref().unwrap_or("none meets the target")
        )?,
    }
    writeln!(
        out,
        "  phi accrual (Akka's formula; intervals: mean {:.1} ms, stddev {:.1} ms, floor {} ms, pause {} ms):",
        ad.phi_mean_ms,
        ad.phi_stddev_ms,
        a.min_stddev.as_millis(),
        a.acceptable_pause.as_millis()
    )?;
    for f in &ad.phi {
        writeln!(
            out,
            "    threshold {:>4}  fires {} after the last heartbeat",
            f.threshold,
            ms(f.fires_after_ms * 1e3)
        )?;
    }
    if let Some(w) = &r.what_if {
        let t = match w.advice.timeout_ms {
            Some(t) => format!("timeout {}", ms(t * 1e3)),
            None => format!(
                "no timeout: {}",
                w.advice
                    .reason
                    .as_deref()
                    .unwrap_or("none meets the target")
            ),
        };
        writeln!(
            out,
            "  under {}: loss {:.4} %, rtt p50 {} p99 {} p99.9 {}; {t}; phi {} fires {} after the last heartbeat",
            w.file,
            w.loss * 100.0,
            ms(w.rtt_us.p50),
            ms(w.rtt_us.p99),
            ms(w.rtt_us.p999),
            w.advice.phi.first().map_or(0.0, |f| f.threshold),
            ms(w.advice.phi.first().map_or(0.0, |f| f.fires_after_ms) * 1e3)
        )?;
    }
    Ok(())
}
