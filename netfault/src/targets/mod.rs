//! Targets: the one place that turns how a namespace is named on the command line or in a
//! cluster file (`--netns NAME`, `--pid PID`, `--container NAME|ID`) into the namespace this
//! thread enters, and a container into the cgroup a pause freezes.
//!
//! State is keyed by the namespace entered ([`netns::state_key`]), never by how it was named:
//! one namespace, one state, however it was reached. A container is looked up at each use
//! (its engine's API socket), so a restarted container is found at its new process.
pub mod engine;

use std::path::{Path, PathBuf};

use crate::control::netns::{self, NetnsError};

/// How a namespace was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/run/netns/NAME`.
    Netns(String),
    /// The namespace of a process.
    Pid(i32),
    /// The namespace of a Docker or Podman container's process.
    Container(String),
}

impl Target {
    /// The target the global flags name (clap keeps them mutually exclusive), if any.
    pub fn from_flags(
        netns: Option<&str>,
        pid: Option<i32>,
        container: Option<&str>,
    ) -> Option<Target> {
        netns
            .map(|n| Target::Netns(n.to_string()))
            .or(pid.map(Target::Pid))
            .or(container.map(|c| Target::Container(c.to_string())))
    }

    /// Enters the namespace (this thread only: setns(2)); returns how `status` names it when
    /// /run/netns does not (`container web, id 4bdf46f5ac8c`).
    pub fn enter(&self) -> Result<Option<String>, NetnsError> {
        match self {
            Target::Netns(n) => netns::enter(n).map(|()| None),
            Target::Pid(pid) => netns::enter_pid(*pid).map(|()| None),
            Target::Container(name) => {
                let c = engine::Engine::locate(name)?.running(name)?;
                netns::enter_pid(c.pid).map_err(|e| match e {
                    // Exited between the engine's answer and the open.
                    NetnsError::NoProcess(_) => {
                        NetnsError::Container(format!("{name}: its process {} is gone", c.pid))
                    }
                    e => e,
                })?;
                Ok(Some(c.label()))
            }
        }
    }
}

/// [`container_cgroup`] for a pause place (`pause_target = "container:NAME"`), whose errors are
/// the place's own (exit 2 or 400, naming its key).
pub fn container_cgroup_for_pause(name: &str) -> Result<PathBuf, String> {
    container_cgroup(name).map_err(|e| e.to_string())
}

/// The cgroup v2 directory of a running container, to freeze: the `0::` line of its process's
/// /proc/PID/cgroup under the cgroup2 mount. Refused unless the container has a cgroup of its
/// own (its last component names the container's ID, as runc and crun name it under Docker and
/// Podman, and every process in it is in the container's PID namespace): freezing a cgroup the
/// container shares would stop other processes too.
pub fn container_cgroup(name: &str) -> Result<PathBuf, NetnsError> {
    let c = engine::Engine::locate(name)?.running(name)?;
    if c.paused {
        return Err(NetnsError::Container(format!(
            "{name}: is paused by its engine (`docker unpause` it first; a netfault pause would thaw it at its end)"
        )));
    }
    let root = crate::pause::target::cgroup2_root().ok_or_else(|| {
        NetnsError::Container(format!("{name}: no cgroup2 file system is mounted"))
    })?;
    let text = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid))
        .map_err(|e| NetnsError::Container(format!("{name}: /proc/{}/cgroup: {e}", c.pid)))?;
    let rel = unified_path(&text).ok_or_else(|| {
        NetnsError::Container(format!(
            "{name}: its process {} has no cgroup v2 (no `0::` line in /proc/{}/cgroup)",
            c.pid, c.pid
        ))
    })?;
    let dir = root.join(rel.trim_start_matches('/'));
    own_cgroup(&dir, &c).map_err(|why| NetnsError::Container(format!("{name}: {why}")))?;
    Ok(dir)
}

/// The path of the `0::` (cgroup v2) line of a /proc/PID/cgroup text.
pub fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| p.starts_with('/'))
}

/// Is `dir` the container's own cgroup (why not, if not)?
fn own_cgroup(dir: &Path, c: &engine::Container) -> Result<(), String> {
    let shown = dir.display();
    let last = dir.file_name().and_then(|f| f.to_str()).unwrap_or("");
    if c.id.len() < 12 || !last.contains(&c.id) {
        return Err(format!(
            "its cgroup v2 {shown} is not one of its own (the engine did not give it one: its \
             name does not carry the container's ID); netfault never freezes a shared cgroup"
        ));
    }
    if !dir.join("cgroup.freeze").exists() {
        return Err(format!("{shown} has no cgroup.freeze"));
    }
    let its_ns = pid_ns(c.pid).ok_or_else(|| format!("process {} is gone", c.pid))?;
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: a container's subtree has few levels; a runaway walk would mean a loop.
    for _ in 0..10_000 {
        let Some(d) = stack.pop() else {
            return Ok(());
        };
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if p == std::process::id() as i32 || pid_ns(p).is_some_and(|ns| ns != its_ns) {
                return Err(format!(
                    "its cgroup v2 {shown} holds process {p}, which is not in the container; \
                     netfault never freezes a shared cgroup"
                ));
            }
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    Err(format!("{shown}: too many cgroups below it"))
}

fn pid_ns(pid: i32) -> Option<(u64, u64)> {
    netns::ns_id(format!("/proc/{pid}/ns/pid").as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_line() {
        let hybrid = "9:name=systemd:/docker/ab\n1:cpu:/docker/ab\n0::/docker/ab\n";
        assert_eq!(unified_path(hybrid), Some("/docker/ab"));
        assert_eq!(
            unified_path("0::/system.slice/docker-ab.scope"),
            Some("/system.slice/docker-ab.scope")
        );
        // cgroup v1 only: no unified line.
        assert_eq!(
            unified_path("4:memory:/docker/ab\n1:cpu:/docker/ab\n"),
            None
        );
    }

    #[test]
    fn flags_to_target() {
        assert_eq!(Target::from_flags(None, None, None), None);
        assert_eq!(
            Target::from_flags(Some("n1"), None, None),
            Some(Target::Netns("n1".into()))
        );
        assert_eq!(
            Target::from_flags(None, Some(42), None),
            Some(Target::Pid(42))
        );
        assert_eq!(
            Target::from_flags(None, None, Some("web")),
            Some(Target::Container("web".into()))
        );
    }
}
