//! The netfault command line. Each invocation is a short process; programs and maps stay pinned.
use std::process::ExitCode;

use clap::Parser as _;
use netfault::{
    control::{self as ops, Ctl},
    spec::{self, Kind},
};

mod cli;
mod render;

use cli::args::{Cli, Cmd, ProtectCmd, RuleCmd, XdpModeArg};
use render as output;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<ops::Error>()
                .map_or(1, ops::Error::exit_code);
            eprintln!("netfault: {e:#}");
            ExitCode::from(code as u8)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Validate what needs no kernel before entering anything.
    let plan = cli::args::rule_spec(&cli.cmd).map_err(ops::Error::Usage)?;
    // setns applies to this thread only: do it before any other thread exists.
    if let Some(ns) = &cli.netns {
        netfault::control::netns::enter(ns)
            .map_err(|e| ops::Error::Usage(spec::SpecError::new("--netns", e.to_string())))?;
    }
    let ns = cli.netns.as_deref();
    match cli.cmd {
        Cmd::Attach { ifaces, xdp_mode } => {
            let mode = xdp_mode.map(|m| match m {
                XdpModeArg::Native => aya::programs::XdpMode::Driver,
                XdpModeArg::Generic => aya::programs::XdpMode::Skb,
            });
            let mut ctl = Ctl::open(ns)?;
            for line in ctl.attach(&ifaces, mode)? {
                println!("{line}");
            }
            for w in &ctl.warnings {
                eprintln!("netfault: warning: {w}");
            }
        }
        Cmd::Detach { ifaces } => {
            let ctl = Ctl::open(ns)?;
            for line in ctl.detach(&ifaces)? {
                println!("{line}");
            }
        }
        Cmd::Rule {
            cmd:
                RuleCmd::Add {
                    ttl,
                    no_protect,
                    replace_qdisc,
                    ..
                },
        } => add(ns, plan, ttl, no_protect, replace_qdisc)?,
        Cmd::Partition {
            ttl, no_protect, ..
        } => add(ns, plan, ttl, no_protect, false)?,
        Cmd::Rule {
            cmd: RuleCmd::Del { names, all },
        } => {
            let mut ctl = Ctl::open(ns)?;
            let gone = ctl.delete(
                if all { &[] } else { &names },
                if all {
                    &[Kind::Rule]
                } else {
                    &[Kind::Rule, Kind::Partition]
                },
            )?;
            println!(
                "deleted {}",
                if gone.is_empty() {
                    "nothing".into()
                } else {
                    gone.join(", ")
                }
            );
        }
        Cmd::Heal { names } => {
            let mut ctl = Ctl::open(ns)?;
            let gone = ctl.delete(&names, &[Kind::Partition])?;
            println!(
                "healed {}",
                if gone.is_empty() {
                    "nothing".into()
                } else {
                    gone.join(", ")
                }
            );
        }
        Cmd::Rule {
            cmd: RuleCmd::List { json },
        } => output::list(ns, json)?,
        Cmd::Stats { json, watch } => output::stats(ns, json, watch)?,
        Cmd::Status { json } => output::status(ns, json)?,
        Cmd::Apply {
            file,
            no_protect,
            replace_qdisc,
        } => {
            let specs = read_ruleset(&file)?;
            let n = specs.len();
            let mut ctl = Ctl::open(ns)?;
            ctl.replace_qdisc = replace_qdisc;
            for w in ctl.apply(specs, !no_protect)? {
                eprintln!("netfault: warning: {w}");
            }
            println!("applied {n} rules and partitions from {}", file.display());
        }
        Cmd::Run {
            file,
            ifaces,
            duration,
            no_protect,
            xdp_mode,
            replace_qdisc,
        } => {
            let specs = read_ruleset(&file)?;
            let mode = xdp_mode.map(|m| match m {
                XdpModeArg::Native => aya::programs::XdpMode::Driver,
                XdpModeArg::Generic => aya::programs::XdpMode::Skb,
            });
            let mut running = netfault::control::held::start(
                ns,
                &ifaces,
                specs,
                mode,
                !no_protect,
                replace_qdisc,
            )?;
            for (i, hooks) in &running.hooks {
                let how: Vec<String> = hooks
                    .iter()
                    .map(|h| format!("{:?}={:?}", h.hook, h.kind))
                    .collect();
                println!("{i}: attached ({}) until this command ends", how.join(", "));
            }
            netfault::control::held::hold(&mut running, duration)?;
            for (name, kind, c) in running.counters()? {
                println!(
                    "{name:<18} {:<9} matched {} dropped {} duplicated {} passed {} bytes {}",
                    format!("{kind:?}").to_lowercase(),
                    c.matched,
                    c.dropped,
                    c.duplicated,
                    c.passed,
                    c.bytes
                );
            }
            drop(running);
            println!("detached");
        }
        Cmd::Renew { names, ttl } => {
            let mut ctl = Ctl::open(ns)?;
            ctl.renew(&names, ttl)?;
            println!("renewed {}", names.join(", "));
        }
        Cmd::Protect {
            cmd: ProtectCmd::Add { endpoints },
        } => {
            let eps = endpoints
                .iter()
                .map(|e| spec::parse_protect(e))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ops::Error::Usage)?;
            let mut ctl = Ctl::open(ns)?;
            for l in ctl.protect(&eps)? {
                println!("protected {l}");
            }
        }
        Cmd::Protect {
            cmd: ProtectCmd::Del { labels },
        } => {
            let mut ctl = Ctl::open(ns)?;
            ctl.unprotect(&labels)?;
            println!("unprotected {}", labels.join(", "));
        }
        Cmd::Protect {
            cmd: ProtectCmd::List { json },
        } => output::protect_list(ns, json)?,
    }
    Ok(())
}

/// Reads and validates a rule-set file; any problem with it is bad input (exit 2).
fn read_ruleset(
    file: &std::path::Path,
) -> Result<Vec<(netfault::spec::RuleSpec, netfault::spec::Ttl)>, ops::Error> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ops::Error::Usage(spec::SpecError::new(
            "FILE",
            format!("{}: {e}", file.display()),
        ))
    })?;
    netfault::spec::ruleset::parse(&text).map_err(ops::Error::Usage)
}

/// `rule add` and `partition`.
fn add(
    ns: Option<&str>,
    plan: Option<netfault::spec::RuleSpec>,
    ttl: Option<netfault::spec::Ttl>,
    no_protect: bool,
    replace_qdisc: bool,
) -> anyhow::Result<()> {
    let spec = plan.expect("planned");
    let name = spec.name.clone();
    let kind = spec.kind;
    let mut ctl = Ctl::open(ns)?;
    ctl.replace_qdisc = replace_qdisc;
    for w in ctl.add(vec![spec], ttl.unwrap_or_default(), !no_protect)? {
        eprintln!("netfault: warning: {w}");
    }
    let what = if kind == Kind::Partition {
        "partition"
    } else {
        "rule"
    };
    println!("{what} {name} added");
    Ok(())
}
