//! `netfault measure`: round-trip times of live TCP traffic seen in the data path (passive, the
//! default; library: `measure::passive`), or to peers probed from here (`--probe`,
//! `measure::probe`), with the advice of `advise` per peer.
use std::{io::Write as _, net::IpAddr, time::Duration};

use ipnet::IpNet;
use netfault::{
    measure::{
        self, passive,
        probe::{self, MAX_PEERS},
    },
    spec::SpecError,
};

use super::advise::{AdviceArgs, text_report};

/// Measure round-trip times to peers, and advise a timeout and phi thresholds for each.
///
/// Without `--probe` (passive): for `--duration`, two tc programs on the interfaces
/// (`--iface`, default: each one up with an address, loopback aside) match each TCP segment's
/// timestamp leaving with its echo coming back, and each SYN with its SYN-ACK, into per-peer
/// histograms in the kernel; they are removed afterwards (also on Ctrl-C and SIGTERM, and
/// with the process under tcx). `--peer` then filters the peers reported.
///
/// `--probe` sends ICMP (ICMPv6) echo requests to each peer every `--interval` and reads
/// each reply's arrival time from the kernel; `--probe udp:PORT` sends UDP datagrams to the
/// port, answered by a UDP reply from it or by the ICMP port unreachable of a closed port.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Peers: addresses or CIDRs. Probed: each address of a CIDR (at most 256 in all); passive:
    /// the peers reported (default: every peer seen).
    #[arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ',', value_parser = netfault::spec::parse_net)]
    pub peer: Vec<IpNet>,
    /// Passive: the interfaces watched (default: each one up with an address, except loopback).
    #[arg(long, value_name = "IFACE[,IFACE...]", value_delimiter = ',')]
    pub iface: Vec<String>,
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
        None => return passive(a),
    };
    if !a.iface.is_empty() {
        return Err(SpecError::new(
            "--iface",
            "probes go out by the routing table: --iface is for passive measurement",
        )
        .into());
    }
    if a.peer.is_empty() {
        return Err(SpecError::new("--peer", "--probe needs the peers to probe").into());
    }
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
    print(a, &reports)
}

fn print(a: &Args, reports: &[measure::Report]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if a.json {
        let doc = serde_json::to_string(&serde_json::json!({ "peers": reports }))?;
        writeln!(out, "{doc}")?;
    } else {
        for r in reports {
            text_report(&mut out, r, &a.advice)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Passive measurement (no `--probe`).
fn passive(a: &Args) -> anyhow::Result<()> {
    if a.duration.is_zero() {
        return Err(SpecError::new("--duration", "must be longer than 0").into());
    }
    let ifaces = if a.iface.is_empty() {
        let found = netfault::dataplane::rtt_default_ifaces()?;
        if found.is_empty() {
            return Err(SpecError::new(
                "--iface",
                "no interface here is up with an address (loopback aside): name one",
            )
            .into());
        }
        found
    } else {
        for i in &a.iface {
            if netfault::dataplane::ifindex(i).is_none() {
                return Err(SpecError::new("--iface", format!("no interface '{i}' here")).into());
            }
        }
        let mut v: Vec<String> = Vec::new();
        for i in &a.iface {
            if !v.contains(i) {
                v.push(i.clone());
            }
        }
        v
    };
    let what_if = super::advise::what_if(a.what_if.as_deref())?;
    let m = netfault::dataplane::rtt_measure(&ifaces, a.duration, |hooks| {
        // Said once the programs are in place: from here on, round trips are counted.
        let on: Vec<String> = hooks.iter().map(|(i, k)| format!("{i} ({k})")).collect();
        eprintln!(
            "measure: watching TCP round trips on {} for {}",
            on.join(", "),
            humantime::format_duration(a.duration)
        );
    })?;
    let params = a.advice.params(0.0);
    let reports = passive::reports(
        &m.samples,
        &a.peer,
        &params,
        what_if.as_ref().map(|(f, w)| (f.as_str(), w)),
    );
    if m.interrupted {
        eprintln!("measure: interrupted; the samples taken so far follow");
    }
    if reports.is_empty() && !a.json {
        eprintln!(
            "measure: no TCP round trip seen on {} (TCP timestamps or handshakes)",
            ifaces.join(", ")
        );
    }
    print(a, &reports)
}
