//! `netfault measure --probe`: round-trip times to peers, probed from here (library:
//! `measure::probe`), with the advice of `advise` per peer.
use std::{io::Write as _, net::IpAddr, time::Duration};

use ipnet::IpNet;
use netfault::{
    measure::{
        self,
        probe::{self, MAX_PEERS},
    },
    spec::SpecError,
};

use super::advise::{AdviceArgs, text_report};

/// Measure round-trip times to peers, and advise a timeout and phi thresholds for each.
///
/// `--probe` sends ICMP (ICMPv6) echo requests to each peer every `--interval` and reads
/// each reply's arrival time from the kernel; `--probe udp:PORT` sends UDP datagrams to the
/// port, answered by a UDP reply from it or by the ICMP port unreachable of a closed port.
/// Passive measurement of live TCP traffic in the data path is not built yet.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Peers: addresses or CIDRs (each address of a CIDR is probed; at most 256 in all).
    #[arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ',', required = true, value_parser = netfault::spec::parse_net)]
    pub peer: Vec<IpNet>,
    /// How long to measure.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::args::parse_interval)]
    pub duration: Duration,
    /// Probe actively: `icmp` (the default) or `udp:PORT` (answered by a UDP reply from the
    /// port, or by the ICMP port unreachable of a closed port).
    #[arg(long, value_name = "KIND", num_args = 0..=1, default_missing_value = "icmp")]
    pub probe: Option<String>,
    /// The interval between probes to a peer.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = super::args::parse_interval)]
    pub interval: Duration,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub advice: AdviceArgs,
    /// Also advise for the network as it would be under this rule-set file (as `advise`).
    #[arg(long = "what-if", value_name = "FILE")]
    pub what_if: Option<std::path::PathBuf>,
}

/// The addresses `--peer` names, validated: at most [`MAX_PEERS`].
fn peers(nets: &[IpNet]) -> Result<Vec<IpAddr>, SpecError> {
    let mut out = Vec::new();
    for n in nets {
        let room = MAX_PEERS.saturating_sub(out.len());
        let addrs: Vec<IpAddr> = if n.prefix_len() == n.max_prefix_len() {
            vec![n.addr()]
        } else {
            n.hosts().take(room + 1).collect()
        };
        if addrs.len() > room {
            return Err(SpecError::new(
                "--peer",
                format!("more than {MAX_PEERS} addresses to probe (at {n})"),
            ));
        }
        out.extend(addrs);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let kind: probe::Kind = match a.probe.as_deref() {
        Some(k) => k.parse().map_err(|m| SpecError::new("--probe", m))?,
        None => {
            return Err(SpecError::new(
                "--probe",
                "passive measurement (TCP timestamps in the data path) is not built yet: give --probe",
            )
            .into());
        }
    };
    let peers = peers(&a.peer)?;
    probe::rounds(a.interval, a.duration).map_err(|m| SpecError::new("--duration", m))?;
    let what_if = super::advise::what_if(a.what_if.as_deref())?;
    let reports = measure::probe_reports(
        &peers,
        kind,
        a.interval,
        a.duration,
        &a.advice.params(0.0),
        what_if.as_ref().map(|(f, w)| (f.as_str(), w)),
        None,
    )?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let doc = serde_json::to_string(&serde_json::json!({ "peers": reports }))?;
        writeln!(out, "{doc}")?;
    } else {
        for r in &reports {
            text_report(&mut out, r, &a.advice)?;
            writeln!(out)?;
        }
    }
    Ok(())
}
