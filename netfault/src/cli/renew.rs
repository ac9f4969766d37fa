//! `netfault renew NAME... --ttl DURATION`
use std::io::Write as _;

use netfault::{control::Ctl, spec::Ttl};

/// Give rules or partitions a new lifetime from now (`--ttl none`: no expiry).
#[derive(clap::Args)]
pub struct Args {
    /// Rules or partitions, by name.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// The new lifetime (`30s`, `10m`), or `none`.
    #[arg(long, value_name = "DURATION", value_parser = super::args::parse_ttl, allow_hyphen_values = true)]
    pub ttl: Ttl,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    let mut ctl = Ctl::open(ns)?;
    ctl.renew(&a.names, a.ttl)?;
    writeln!(std::io::stdout(), "renewed {}", a.names.join(", "))?;
    Ok(())
}
