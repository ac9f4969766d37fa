//! `netfault heal [NAME...]`
use std::io::Write as _;

use netfault::{control::Ctl, spec::Kind};

/// Remove partitions by name, or every partition.
#[derive(clap::Args)]
pub struct Args {
    /// Partitions, by name; none: every partition.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    let mut ctl = Ctl::open(ns)?;
    let gone = ctl.delete(&a.names, &[Kind::Partition])?;
    let line = if a.names.is_empty() {
        super::rule::summary("healed", "partition", &gone)
    } else {
        super::rule::named("healed", "partitions", &gone)
    };
    writeln!(std::io::stdout(), "{line}")?;
    Ok(())
}
