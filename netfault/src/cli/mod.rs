//! The command line: one module per subcommand, each with its arguments and its `run`; `args`
//! holds the grammar they share and the (pure, fuzzed) rule and partition arguments.
use clap::{Parser, Subcommand};

use netfault::{
    control::{netns, privileges},
    targets::Target,
};

pub mod advise;
pub mod agent;
pub mod apply;
pub mod args;
pub mod attach;
pub mod cluster;
pub mod cluster_measure;
pub mod cluster_pause;
pub mod completions;
pub mod detach;
pub mod heal;
pub mod manpage;
pub mod measure;
pub mod node;
pub mod partition;
pub mod pause;
pub mod protect;
pub mod reap;
pub mod renew;
pub mod rule;
pub mod run;
pub mod stats;
pub mod status;

/// How a command that ran to its end finished: its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Ok,
    /// Ended by SIGINT (Ctrl-C): 130, as shells report it.
    Interrupted,
    /// Ended by SIGTERM: 143.
    Terminated,
    /// `--verify` (or `cluster verify`) found the wire differing from what was configured: 3.
    Mismatch,
}

impl Done {
    pub fn code(self) -> u8 {
        match self {
            Done::Ok => 0,
            Done::Interrupted => 130,
            Done::Terminated => 143,
            Done::Mismatch => 3,
        }
    }
}

#[derive(Parser)]
#[command(
    name = "netfault",
    version,
    about = "Network faults at line rate, in the kernel (eBPF): drop, duplicate, delay, jitter, \
             pace, reorder and partition matching traffic",
    long_about = "Network faults at line rate, in the kernel (eBPF): drop, duplicate, delay, \
                  jitter, pace, reorder and partition the packets that match flow rules.\n\n\
                  Every rule and partition expires (default 10 minutes, enforced by the data \
                  path), and loopback, `protect`ed traffic and the SSH connection of whoever \
                  adds rules are never touched.\n\n\
                  Exit status: 0 success; 1 runtime failure (not attached, missing privileges, \
                  kernel errors); 2 bad input (nothing changed); 130 `run` or `stats --watch` \
                  ended by Ctrl-C (SIGINT); 143 `run` ended by SIGTERM. A closed stdout (`| \
                  head`) ends a command quietly with 0."
)]
pub struct Cli {
    /// Act inside the network namespace /run/netns/NAME (state stays in the host's bpffs).
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    /// Act inside the network namespace of process PID (a container's, a service's): one
    /// namespace has one state however it is reached. For `pause`: the process to stop.
    #[arg(long, global = true, value_name = "PID", conflicts_with = "netns")]
    pub pid: Option<i32>,
    /// Act inside the network namespace of a running Docker or Podman container, found at each
    /// command through the engine's API socket ($DOCKER_HOST if unix:///PATH, else
    /// /run/docker.sock, then /run/podman/podman.sock). For `pause`: the container to freeze.
    #[arg(
        long,
        global = true,
        value_name = "NAME|ID",
        conflicts_with_all = ["netns", "pid"]
    )]
    pub container: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    Attach(attach::Args),
    Detach(detach::Args),
    Rule(rule::Args),
    Partition(partition::Args),
    Heal(heal::Args),
    Stats(stats::Args),
    Status(status::Args),
    Apply(apply::Args),
    Run(run::Args),
    Renew(renew::Args),
    Protect(protect::Args),
    Cluster(cluster::Args),
    Agent(agent::Args),
    Pause(pause::Args),
    Resume(pause::ResumeArgs),
    Advise(advise::Args),
    Measure(measure::Args),
    Completions(completions::Args),
    Manpage(manpage::Args),
    #[command(hide = true)]
    Node(node::Args),
    /// Puts back offload settings when the rules that needed them expire (started by netfault).
    #[command(hide = true, name = "reap-offloads")]
    ReapOffloads(reap::Args),
    /// Holds a pause's deadline and resumes its target (started by `pause`).
    #[command(hide = true, name = "pause-watchdog")]
    PauseWatchdog(pause::WatchdogArgs),
}

impl Cmd {
    /// Whether the command changes anything (attach, rules, queues), not only reads.
    fn changes(&self) -> bool {
        !matches!(
            self,
            Cmd::Stats(_)
                | Cmd::Status(_)
                | Cmd::Measure(_)
                | Cmd::Rule(rule::Args {
                    cmd: rule::RuleCmd::List(_)
                })
                | Cmd::Protect(protect::Args {
                    cmd: protect::ProtectCmd::List(_)
                })
                | Cmd::Cluster(cluster::Args {
                    cmd: cluster::ClusterCmd::Status { .. }
                        | cluster::ClusterCmd::Stats { .. }
                        | cluster::ClusterCmd::Measure { .. },
                    ..
                })
        )
    }
}

pub fn run(cli: Cli) -> anyhow::Result<Done> {
    let ns = cli.netns.as_deref();
    match &cli.cmd {
        // None needs a kernel, privileges nor a namespace.
        Cmd::Completions(a) => return completions::run(a).map(|()| Done::Ok),
        Cmd::Manpage(a) => return manpage::run(a).map(|()| Done::Ok),
        Cmd::Advise(a) => return advise::run(a).map(|()| Done::Ok),
        _ => {}
    }
    // setns applies to this thread only: before any other thread exists (a container's
    // lookup runs on a thread of its own that has ended by then). Privileges first, so a
    // missing CAP_SYS_ADMIN is named rather than reported as EPERM. `--pid` and `--container`
    // name what to stop for `pause`; for the rest, where to act. A child (the offload reaper)
    // inherits the namespace entered here.
    if let Some(c) = &cli.container
        && matches!(cli.cmd, Cmd::Cluster(_))
    {
        // Each node names its own target in the cluster file (`container = "NAME"`).
        return Err(netfault::spec::SpecError::new(
            "--container",
            format!("{c}: does not apply to `cluster` (a node says container = \"NAME\" in the cluster file)"),
        )
        .into());
    }
    let pausing = matches!(
        cli.cmd,
        Cmd::Pause(_) | Cmd::Resume(_) | Cmd::PauseWatchdog(_)
    );
    let target = Target::from_flags(
        ns,
        cli.pid.filter(|_| !pausing),
        cli.container.as_deref().filter(|_| !pausing),
    );
    if let Some(t) = target {
        privileges::require(privileges::Need {
            change: cli.cmd.changes(),
            netns: true,
        })?;
        if let Some(label) = t.enter()? {
            netns::set_label(label);
        }
    }
    // A command that leaves a probabilistic rule with a lifetime starts the reaper that puts
    // the offload settings back when it expires (control::features).
    let reaper = cli.cmd.changes()
        && !matches!(
            cli.cmd,
            Cmd::Run(_)
                | Cmd::ReapOffloads(_)
                | Cmd::Pause(_)
                | Cmd::Resume(_)
                | Cmd::PauseWatchdog(_)
        );
    let done = match cli.cmd {
        Cmd::Attach(a) => attach::run(a, ns).map(|()| Done::Ok)?,
        Cmd::Detach(a) => detach::run(a, ns).map(|()| Done::Ok)?,
        Cmd::Rule(a) => rule::run(a, ns).map(|()| Done::Ok)?,
        Cmd::Partition(a) => partition::run(a, ns).map(|()| Done::Ok)?,
        Cmd::Heal(a) => heal::run(a, ns).map(|()| Done::Ok)?,
        Cmd::Stats(a) => stats::run(a, ns)?,
        Cmd::Status(a) => status::run(a, ns).map(|()| Done::Ok)?,
        Cmd::Apply(a) => apply::run(a, ns).map(|()| Done::Ok)?,
        Cmd::Run(a) => run::run(a, ns)?,
        Cmd::Renew(a) => renew::run(a, ns).map(|()| Done::Ok)?,
        Cmd::Protect(a) => protect::run(a, ns).map(|()| Done::Ok)?,
        Cmd::Cluster(a) => cluster::run(a, ns)?,
        Cmd::Node(a) => node::run(a, ns).map(|()| Done::Ok)?,
        Cmd::ReapOffloads(a) => reap::run(a, ns).map(|()| Done::Ok)?,
        Cmd::Agent(a) => agent::run(a, ns)?,
        Cmd::Pause(a) => pause::run(a, cli.pid, cli.container.as_deref()).map(|()| Done::Ok)?,
        Cmd::Resume(a) => pause::resume(a).map(|()| Done::Ok)?,
        Cmd::PauseWatchdog(a) => pause::watchdog(a).map(|()| Done::Ok)?,
        Cmd::Measure(a) => measure::run(&a).map(|()| Done::Ok)?,
        Cmd::Completions(_) | Cmd::Manpage(_) | Cmd::Advise(_) => unreachable!("handled above"),
    };
    if reaper {
        reap::spawn_if_wanted(ns);
    }
    Ok(done)
}

/// Writes a warning; a closed stderr is no reason to fail the command.
pub fn warn(msg: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "netfault: warning: {msg}");
}

/// Writes what the operator should know that is no warning (which SSH connection netfault
/// found and protected).
pub fn note(msg: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "netfault: {msg}");
}

/// Reads and validates a rule-set file; any problem with it is bad input (exit 2).
pub fn read_ruleset(
    file: &std::path::Path,
) -> Result<Vec<(netfault::spec::RuleSpec, netfault::spec::Ttl)>, netfault::spec::SpecError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| netfault::spec::SpecError::new("FILE", format!("{}: {e}", file.display())))?;
    netfault::spec::ruleset::parse(&text)
}

/// The aya XDP mode for `--xdp-mode`.
pub fn xdp_mode(m: Option<args::XdpModeArg>) -> Option<aya::programs::XdpMode> {
    m.map(|m| match m {
        args::XdpModeArg::Native => aya::programs::XdpMode::Driver,
        args::XdpModeArg::Generic => aya::programs::XdpMode::Skb,
    })
}
