//! `netfault attach IFACE...`
use std::io::Write as _;

use netfault::control::Ctl;

use super::args::XdpModeArg;

/// Attach the data path (XDP ingress, tc ingress and egress) to interfaces; a no-op where it is
/// attached already.
#[derive(clap::Args)]
pub struct Args {
    /// Interfaces in this namespace (or the one --netns names).
    #[arg(required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// Demand an XDP mode, refusing where it is unavailable. By default: native, else generic,
    /// else (XDP held by another program) tc ingress.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    let mut ctl = Ctl::open(ns)?;
    let report = ctl.attach(&a.ifaces, super::xdp_mode(a.xdp_mode))?;
    for w in &ctl.warnings {
        super::warn(w);
    }
    let mut out = std::io::stdout().lock();
    for line in report {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
