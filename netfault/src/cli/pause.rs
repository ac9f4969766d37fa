//! `netfault pause`, `netfault resume` and the hidden `pause-watchdog` (library: `pause`).
use std::{path::PathBuf, time::Duration};

use netfault::{
    pause::{self, Record, Schedule, Store, Target, store::unix_ms},
    spec::{self, SpecError, validate_name},
};

/// Stop a process or a cgroup for a while; it resumes when the time is up, even if netfault
/// is killed meanwhile (a watchdog process holds the deadline).
///
/// The target: `--pid PID`, a process, stopped with SIGSTOP and resumed with SIGCONT through a
/// pidfd (a reused PID is never signalled); `--cgroup PATH`; or `--container NAME|ID`, a running
/// Docker or Podman container's own cgroup v2, frozen as `--cgroup` is.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A cgroup v2 directory (absolute, or relative to the cgroup2 mount): frozen with
    /// cgroup.freeze, so its processes can still be killed.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// How long each pause lasts (`500ms`, `30s`; at most 10m), or `none`: until `resume`.
    #[arg(long = "for", value_name = "DURATION", required = true)]
    pub hold: String,
    /// A name for `resume` and `status` (default: pid-PID or cgroup-LAST).
    #[arg(long)]
    pub name: Option<String>,
    /// Strobe: start a pause every PERIOD (longer than --for), --count times.
    #[arg(long, value_name = "PERIOD", value_parser = super::args::parse_interval)]
    pub every: Option<Duration>,
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,
}

/// End pauses at once: the targets run again.
#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// Pauses to end (default: all).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct WatchdogArgs {
    pub name: String,
}

/// The cgroup of a running container, as a pause target; a container that is not running, has
/// no cgroup v2 of its own, or whose engine is down is bad input.
fn container_target(name: &str) -> Result<Target, pause::Error> {
    use netfault::control::netns::NetnsError;
    let dir = netfault::targets::container_cgroup(name).map_err(|e| match e {
        NetnsError::Container(m) => pause::Error::Spec(SpecError::new("--container", m)),
        e => pause::Error::io("container engine", std::io::Error::other(e.to_string())),
    })?;
    Ok(Target::cgroup(&dir)?)
}

fn spec_of(
    a: &Args,
    pid: Option<i32>,
    container: Option<&str>,
) -> Result<(Record, Target), pause::Error> {
    let hold = if a.hold.trim().eq_ignore_ascii_case("none") {
        None
    } else {
        Some(spec::parse_duration(&a.hold).map_err(|m| SpecError::new("--for", m))?)
    };
    let schedule = Schedule::new(hold, a.every, a.count)?;
    let target = match (pid, &a.cgroup, container) {
        (Some(p), None, None) => Target::pid(p)?,
        (None, Some(c), None) => Target::cgroup(c)?,
        (None, None, Some(c)) => container_target(c)?,
        (None, None, None) => {
            return Err(SpecError::new(
                "--pid",
                "give the target: --pid PID, --cgroup PATH or --container NAME",
            )
            .into());
        }
        _ => {
            return Err(
                SpecError::new("--cgroup", "give one of --pid, --cgroup and --container").into(),
            );
        }
    };
    let name = match (&a.name, container) {
        (Some(n), _) => n.clone(),
        (None, Some(c)) => format!("container-{c}"),
        (None, None) => match &target {
            Target::Pid { pid, .. } => format!("pid-{pid}"),
            Target::Cgroup { path } => format!(
                "cgroup-{}",
                path.file_name()
                    .map(|f| f.to_string_lossy().replace(
                        |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_' && c != '.',
                        "_"
                    ))
                    .unwrap_or_default()
            ),
        },
    };
    validate_name("--name", &name)?;
    let rec = Record {
        name,
        target: target.clone(),
        schedule,
        created_ms: unix_ms(),
        watchdog: None,
    };
    Ok((rec, target))
}

pub fn run(a: Args, pid: Option<i32>, container: Option<&str>) -> anyhow::Result<()> {
    let store = Store::default();
    sweep(&store);
    let (rec, target) = spec_of(&a, pid, container)?;
    let started = pause::node::start(&store, &rec.name, target, rec.schedule)?;
    let s = rec.schedule;
    let how = match (s.hold, s.every) {
        (None, _) => "until `netfault resume`".to_string(),
        (Some(h), None) => format!("for {}", humantime::format_duration(h)),
        (Some(h), Some(e)) => format!(
            "for {} every {}, {} times",
            humantime::format_duration(h),
            humantime::format_duration(e),
            s.count
        ),
    };
    println!(
        "paused {} as '{}' {how} (watchdog pid {})",
        started.target, rec.name, started.watchdog_pid
    );
    Ok(())
}

pub fn resume(a: ResumeArgs) -> anyhow::Result<()> {
    let store = Store::default();
    sweep(&store);
    let names = (!a.names.is_empty()).then_some(a.names.as_slice());
    for r in pause::node::resume(&store, names, false)? {
        println!("resumed '{}' ({})", r.name, r.target);
    }
    Ok(())
}

pub fn watchdog(a: WatchdogArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    pause::watchdog::run(&Store::default(), &a.name, &mut out)?;
    Ok(())
}

/// Resumes what a killed watchdog left, saying so.
pub fn sweep(store: &Store) {
    for n in pause::sweep(store) {
        super::warn(format!(
            "pause '{n}' had lost its watchdog: resumed its target"
        ));
    }
}
