//! `netfault detach [IFACE...]`
use std::io::Write as _;

use netfault::control::Ctl;

/// Detach from interfaces; with none named, remove everything netfault owns in this namespace
/// (programs, pins, queues, state).
#[derive(clap::Args)]
pub struct Args {
    /// Interfaces netfault is attached to (see `status`).
    #[arg(value_name = "IFACE")]
    pub ifaces: Vec<String>,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    let ctl = Ctl::open(ns)?;
    let report = ctl.detach(&a.ifaces)?;
    let mut out = std::io::stdout().lock();
    for line in report {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
