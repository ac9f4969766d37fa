//! `netfault apply FILE`
use std::io::Write as _;

use netfault::control::Ctl;

/// Replace every rule and partition with a TOML rule-set file's, in one step: packets see the
/// old set or the new one, never a mix.
#[derive(clap::Args)]
pub struct Args {
    /// The rule-set file (`[[rule]]` and `[[partition]]` tables; see the README).
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// Delay and rate may replace a root qdisc another tool installed.
    #[arg(long)]
    pub replace_qdisc: bool,
    /// Do not protect the SSH connection this command runs over.
    #[arg(long)]
    pub no_protect: bool,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    let specs = super::read_ruleset(&a.file)?;
    let n = specs.len();
    let mut ctl = Ctl::open(ns)?;
    ctl.replace_qdisc = a.replace_qdisc;
    for w in ctl.apply(specs, !a.no_protect)? {
        super::warn(w);
    }
    ctl.notes.iter().for_each(super::note);
    writeln!(
        std::io::stdout(),
        "applied {n} rules and partitions from {}",
        a.file.display()
    )?;
    Ok(())
}
