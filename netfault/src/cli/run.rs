//! `netfault run FILE --iface IFACE...`
use std::{io::Write as _, time::Duration};

use netfault::control::held::{self, Stop};

use super::{Done, args::XdpModeArg};

/// Impair only while this command runs: attach private programs to the IFACEs, apply FILE, and
/// hold until Ctrl-C (exit 130), SIGTERM (exit 143) or --duration (exit 0). However it ends
/// (kill -9 too), traffic is back to normal within a second.
#[derive(clap::Args)]
pub struct Args {
    /// The rule-set file, as for `apply`.
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// An interface to impair (repeat for more); not one `netfault attach` manages.
    #[arg(long = "iface", required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// End after DURATION (`30s`, `5m`); by default, run until interrupted.
    #[arg(long, value_name = "DURATION", value_parser = super::args::parse_interval)]
    pub duration: Option<Duration>,
    /// Do not protect the SSH connection this command runs over.
    #[arg(long)]
    pub no_protect: bool,
    /// Delay and rate may replace a root qdisc another tool installed.
    #[arg(long)]
    pub replace_qdisc: bool,
    /// Demand an XDP mode, as for `attach`.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
}

pub fn run(a: Args, _ns: Option<&str>) -> anyhow::Result<Done> {
    let specs = super::read_ruleset(&a.file)?;
    let mut running = held::start(
        &a.ifaces,
        specs,
        super::xdp_mode(a.xdp_mode),
        !a.no_protect,
        a.replace_qdisc,
    )?;
    running.notes.iter().for_each(super::note);
    let mut out = std::io::stdout().lock();
    for ((i, hooks), why) in running.hooks.iter().zip(&running.why) {
        let how: Vec<String> = hooks.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "{i}: attached ({}) until this command ends; {why}",
            how.join(", ")
        )?;
    }
    let stop = held::hold(&mut running, a.duration)?;
    // Detach before printing: a slow (or gone) reader must not prolong the impairment.
    let counters = running.counters();
    drop(running);
    for (name, kind, c) in counters? {
        writeln!(
            out,
            "{name:<18} {:<9} matched {} dropped {} duplicated {} passed {} bytes {}",
            format!("{kind:?}").to_lowercase(),
            c.matched,
            c.dropped,
            c.duplicated,
            c.passed,
            c.bytes
        )?;
    }
    writeln!(out, "detached")?;
    Ok(match stop {
        Stop::Elapsed => Done::Ok,
        Stop::Interrupted => Done::Interrupted,
        Stop::Terminated => Done::Terminated,
    })
}
