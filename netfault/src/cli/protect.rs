//! `netfault protect add|del|list`
use std::io::Write as _;

use netfault::{control::Ctl, spec};

/// Traffic that no rule or partition may touch. Loopback, and the SSH connection of whoever
/// adds rules (SSH_CONNECTION), are protected automatically.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: ProtectCmd,
}

#[derive(clap::Subcommand)]
pub enum ProtectCmd {
    /// Protect traffic to or from CIDR (and PORT, TCP or UDP): `192.0.2.0/24`, `192.0.2.1:22`,
    /// `[2001:db8::1]:22`.
    Add {
        /// Addresses or CIDRs, each with an optional port.
        #[arg(required = true, value_name = "CIDR[:PORT]")]
        endpoints: Vec<String>,
    },
    /// Remove protections by the label `protect list` shows.
    Del {
        /// Labels as `protect list` shows them.
        #[arg(required = true, value_name = "LABEL")]
        labels: Vec<String>,
    },
    /// Protected traffic, with counters of what passed through protection.
    List(super::rule::ListArgs),
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match a.cmd {
        ProtectCmd::Add { endpoints } => {
            let eps = endpoints
                .iter()
                .map(|e| spec::parse_protect(e))
                .collect::<Result<Vec<_>, _>>()?;
            let mut ctl = Ctl::open(ns)?;
            for l in ctl.protect(&eps)? {
                writeln!(out, "protected {l}")?;
            }
        }
        ProtectCmd::Del { labels } => {
            let mut ctl = Ctl::open(ns)?;
            ctl.unprotect(&labels)?;
            writeln!(out, "unprotected {}", labels.join(", "))?;
        }
        ProtectCmd::List(l) => crate::render::protect_list(&mut out, ns, l.json)?,
    }
    Ok(())
}
