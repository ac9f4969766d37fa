//! The netfault command line. Each invocation is a short process; programs and maps stay pinned.
//!
//! Exit status: 0 success (also when stdout is closed early, `| head`); 1 runtime failure;
//! 2 bad input (nothing changed); 3 `cluster --verify` or `cluster verify` found the wire
//! differing from what was configured; 130 `run` or `stats --watch` ended by SIGINT; 143 `run`
//! ended by SIGTERM.
use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use netfault::{
    control::{self as ops, netns::NetnsError, privileges::PrivilegeError},
    dataplane::KernelError,
    spec::SpecError,
};

mod cli;
mod render;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(done) => ExitCode::from(done.code()),
        // The reader went away (`| head`): it has what it wanted; nothing to say.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "netfault: {}", report(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// 2 for bad input, 1 for everything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    for c in e.chain() {
        // Before its sources: a node's bad interface is a failure of the run (1), not bad input.
        if let Some(e) = c.downcast_ref::<netfault::cluster::coordinator::Error>() {
            return e.exit_code();
        }
        if let Some(e) = c.downcast_ref::<netfault::pause::Error>() {
            return e.exit_code();
        }
        if let Some(e) = c.downcast_ref::<ops::Error>() {
            return if e.exit_code() == 2 { 2 } else { 1 };
        }
        if c.is::<SpecError>()
            || matches!(
                c.downcast_ref::<NetnsError>(),
                Some(NetnsError::Unknown(_) | NetnsError::NoProcess(_) | NetnsError::Container(_))
            )
        {
            return 2;
        }
    }
    1
}

/// The message, once: the library's errors say what their sources said (a verifier log cut
/// short), so the chain is followed only through the binary's own context.
fn report(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for c in e.chain() {
        let t = c.to_string();
        if !msg.contains(&t) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&t);
        }
        if c.is::<ops::Error>()
            || c.is::<netfault::pause::Error>()
            || c.is::<KernelError>()
            || c.is::<NetnsError>()
            || c.is::<SpecError>()
            || c.is::<PrivilegeError>()
        {
            break;
        }
    }
    msg
}
