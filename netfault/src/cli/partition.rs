//! `netfault partition SET_A SET_B`
use std::io::Write as _;

use netfault::control::Ctl;

/// Cut traffic between two sets of addresses, both ways unless --oneway. Partitions come
/// before all rules: a cut is a cut.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub partition: super::args::PartitionArgs,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    let p = a.partition;
    let spec = p.spec()?;
    let name = spec.name.clone();
    let mut ctl = Ctl::open(ns)?;
    for w in ctl.add(vec![spec], p.ttl.unwrap_or_default(), !p.no_protect)? {
        super::warn(w);
    }
    ctl.notes.iter().for_each(super::note);
    writeln!(std::io::stdout(), "partition {name} added")?;
    Ok(())
}
