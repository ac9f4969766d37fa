//! `netfault rule add|del|list`
use std::io::Write as _;

use netfault::{control::Ctl, spec::Kind};

use super::args::RuleAddArgs;

/// Add, delete and list rules.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: RuleCmd,
}

#[derive(clap::Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only move the arguments to the heap"
)]
pub enum RuleCmd {
    /// Add a rule. The first matching rule wins: partitions first, then by --priority, then the
    /// order added.
    Add(RuleAddArgs),
    /// Delete rules (or partitions) by name, or every rule with --all.
    Del(DelArgs),
    /// List rules and partitions with their lifetimes.
    List(ListArgs),
}

#[derive(clap::Args)]
pub struct DelArgs {
    /// Rules or partitions, by name.
    #[arg(
        value_name = "NAME",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub names: Vec<String>,
    /// Every rule (partitions stay: `heal` removes them).
    #[arg(long)]
    pub all: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// One JSON document, for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    match a.cmd {
        RuleCmd::Add(add) => {
            let spec = add.spec()?;
            let name = spec.name.clone();
            let mut ctl = Ctl::open(ns)?;
            ctl.replace_qdisc = add.replace_qdisc;
            for w in ctl.add(vec![spec], add.ttl.unwrap_or_default(), !add.no_protect)? {
                super::warn(w);
            }
            ctl.notes.iter().for_each(super::note);
            writeln!(std::io::stdout(), "rule {name} added")?;
        }
        RuleCmd::Del(d) => {
            let mut ctl = Ctl::open(ns)?;
            let line = if d.all {
                let gone = ctl.delete(&[], &[Kind::Rule])?;
                summary("deleted", "rule", &gone)
            } else {
                let gone = ctl.delete(&d.names, &[Kind::Rule, Kind::Partition])?;
                named("deleted", "rules and partitions", &gone)
            };
            writeln!(std::io::stdout(), "{line}")?;
        }
        RuleCmd::List(l) => crate::render::list(&mut std::io::stdout().lock(), ns, l.json)?,
    }
    Ok(())
}

/// Up to this many names are listed; beyond, a count says enough.
const LIST_NAMES: usize = 5;

/// What a removal of everything of a kind did: `deleted 3000 rules`, `healed 1 partition (p)`.
pub fn summary(verb: &str, noun: &str, gone: &[String]) -> String {
    match gone.len() {
        0 => format!("{verb} nothing"),
        1 => format!("{verb} 1 {noun} ({})", gone[0]),
        n if n <= LIST_NAMES => format!("{verb} {n} {noun}s ({})", gone.join(", ")),
        n => format!("{verb} {n} {noun}s"),
    }
}

/// What a removal by name did: the names when few (`deleted a, b`), else a count.
pub fn named(verb: &str, plural: &str, gone: &[String]) -> String {
    match gone.len() {
        0 => format!("{verb} nothing"),
        n if n <= LIST_NAMES => format!("{verb} {}", gone.join(", ")),
        n => format!("{verb} {n} {plural}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_count_and_list_few_names() {
        let names = |n: usize| (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>();
        assert_eq!(summary("deleted", "rule", &[]), "deleted nothing");
        assert_eq!(
            summary("healed", "partition", &names(1)),
            "healed 1 partition (r0)"
        );
        assert_eq!(
            summary("deleted", "rule", &names(2)),
            "deleted 2 rules (r0, r1)"
        );
        assert_eq!(
            summary("deleted", "rule", &names(3000)),
            "deleted 3000 rules"
        );
        assert_eq!(
            named("deleted", "rules and partitions", &names(2)),
            "deleted r0, r1"
        );
        assert_eq!(
            named("deleted", "rules and partitions", &names(6)),
            "deleted 6 rules and partitions"
        );
    }
}
