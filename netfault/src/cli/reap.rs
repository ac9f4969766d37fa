//! `netfault reap-offloads` (hidden): started by a command that left a probabilistic rule with
//! a lifetime, it waits for that rule's expiry and puts back the segment limit and receive
//! offloads netfault changed for it (`control::features`), since the data path ends the rule
//! with no netfault process running. One per namespace; it ends when nothing it watches
//! remains (the settings are back, the state is gone, or only rules without expiry hold them).
use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use netfault::control::{Ctl, features, monotonic_ns, netns, state::Paths};

/// How often it looks again at most: a rule added meanwhile that expires sooner is seen.
const POLL: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct Args {}

/// Starts a reaper for the namespace if its state wants one. Never fails the command that
/// calls it: without a reaper, the next netfault command puts the settings back.
pub fn spawn_if_wanted(ns: Option<&str>) {
    let Ok(key) = netns::state_key() else {
        return;
    };
    if !features::reaper_wanted(&key) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut c = Command::new(exe);
    if let Some(n) = ns {
        c.arg("--netns").arg(n);
    }
    c.arg("reap-offloads")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; the child leaves the caller's session (a terminal's
    // hangup does not end it) and nothing waits for it.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if let Err(e) = c.spawn() {
        super::warn(format!(
            "cannot start the offload reaper ({e}): the next netfault command puts back what expired rules no longer need"
        ));
    }
}

pub fn run(_: Args, ns: Option<&str>) -> anyhow::Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    let key = netns::state_key()?;
    let paths = Paths::new(&key);
    // One reaper per namespace: an abstract socket name is per network namespace, leaves no
    // file behind, and goes with the process however it ends.
    let name = std::os::unix::net::SocketAddr::from_abstract_name(b"netfault-offload-reaper")?;
    let Ok(me) = std::os::unix::net::UnixListener::bind_addr(&name) else {
        return Ok(()); // another reaper watches this namespace
    };
    loop {
        // No state, nothing to watch (and no lock directory made for nothing).
        if !paths.state_file().exists() {
            return Ok(());
        }
        let mut ctl = Ctl::open(ns)?;
        let Some(due) = ctl.reconcile_offloads()? else {
            // Given up under the state lock: a command that adds a rule after this finds no
            // reaper and starts one.
            drop(me);
            drop(ctl);
            return Ok(());
        };
        drop(ctl);
        let wait = Duration::from_nanos(due.saturating_sub(monotonic_ns()));
        std::thread::sleep(wait.clamp(Duration::from_millis(10), POLL));
    }
}
