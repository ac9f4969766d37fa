//! `netfault node apply|delete|heal|renew|state|measure|pause|pauses|resume|session` (hidden):
//! the node's side of the SSH transport. The request is JSON on stdin, the answer JSON on
//! stdout; a failure writes `{"error", "exit"}` on stdout as well as the usual message on
//! stderr, and exits as any command does (2: bad input, nothing changed; 1: anything else).
//! `session` serves one request per line until stdin ends (a failure is that request's answer).
//! Not for people: `netfault cluster` runs it over ssh.
use std::io::Write as _;

use netfault::cluster::transport::{
    NodeError, session,
    ssh::{self, Op},
};

/// The node's side of `netfault cluster` over SSH (plumbing).
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: NodeCmd,
}

#[derive(clap::Subcommand, Clone, Copy)]
pub enum NodeCmd {
    /// Attach, protect and add a node plan (`{"plan", "ttl"}`).
    Apply,
    /// Delete entries by name (`{"names"}`).
    Delete,
    /// Delete partitions (`"all"` or `{"partitions": [...]}`).
    Heal,
    /// Renew entries (`{"names", "ttl"}`).
    Renew,
    /// Attached interfaces, live faults and partition names.
    State,
    /// Probe peers and report each (`{"peers", "interval", "duration", ...}`).
    Measure,
    /// Start a pause on this host (`{"name", "target", "schedule"}`).
    Pause,
    /// The live pauses on this host.
    Pauses,
    /// End pauses by name (`{"names"}`).
    Resume,
    /// Serve `{"op", "request"}` lines until stdin ends, each answered by a line.
    Session,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<()> {
    // Inside a named namespace (an sshd started there), the state `--netns NAME` uses.
    let name = ns
        .map(str::to_owned)
        .or_else(netfault::control::netns::own_name);
    let op = match a.cmd {
        NodeCmd::Session => {
            let mut input = std::io::BufReader::new(ssh::DeadlineStdin::new(ssh::CALL_LIMIT));
            let mut out = std::io::stdout().lock();
            return Ok(session::serve_session(
                &mut input,
                &mut out,
                name.as_deref(),
            )?);
        }
        NodeCmd::Apply => Op::Apply,
        NodeCmd::Delete => Op::Delete,
        NodeCmd::Heal => Op::Heal,
        NodeCmd::Renew => Op::Renew,
        NodeCmd::State => Op::State,
        NodeCmd::Measure => Op::Measure,
        NodeCmd::Pause => Op::Pause,
        NodeCmd::Pauses => Op::Pauses,
        NodeCmd::Resume => Op::Resume,
    };
    let mut input = std::io::BufReader::new(ssh::DeadlineStdin::new(ssh::CALL_LIMIT));
    let mut out = std::io::stdout().lock();
    match ssh::serve(op, &mut input, &mut out, name.as_deref()) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = writeln!(out, "{}", ssh::failure(&e));
            // The library's own error, so main maps it to its exit status as for any command.
            Err(match e {
                NodeError::Control(c) => c.into(),
                NodeError::Netns(n) => n.into(),
                NodeError::Pause(p) => p.into(),
                e => e.into(),
            })
        }
    }
}
