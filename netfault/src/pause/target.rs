//! What a pause stops: one process (by pidfd) or a cgroup v2 subtree (by its freezer).
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::spec::SpecError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A process, and its start time in clock ticks since boot (`/proc/PID/stat` field 22):
    /// with the PID, the process's identity, so a record never names a later process that
    /// took the same PID.
    Pid { pid: i32, start: u64 },
    /// A cgroup v2 directory (absolute path).
    Cgroup { path: PathBuf },
}

/// Field 22 of `/proc/PID/stat` (start time), or None when there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and ')'.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The process state letter (`/proc/PID/stat` field 3): `T` when stopped.
pub fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

pub use crate::spec::cgroup::cgroup2_root;

impl Target {
    /// `--pid PID`: a live process other than this one and pid 1.
    pub fn pid(pid: i32) -> std::result::Result<Target, SpecError> {
        if pid <= 1 || pid == std::process::id() as i32 {
            return Err(SpecError::new(
                "--pid",
                format!("{pid}: netfault pauses neither init nor itself"),
            ));
        }
        let start =
            start_time(pid).ok_or_else(|| SpecError::new("--pid", format!("no process {pid}")))?;
        Ok(Target::Pid { pid, start })
    }

    /// `--cgroup PATH`: a cgroup v2 directory other than the root, absolute or relative to
    /// the cgroup2 mount.
    pub fn cgroup(path: &Path) -> std::result::Result<Target, SpecError> {
        let field = "--cgroup";
        let root = cgroup2_root()
            .ok_or_else(|| SpecError::new(field, "no cgroup2 file system is mounted"))?;
        let full = if path.is_absolute() {
            path.to_path_buf()
        } else {
            root.join(path)
        };
        let full = full
            .canonicalize()
            .map_err(|e| SpecError::new(field, format!("{}: {e}", full.display())))?;
        if !full.starts_with(&root) {
            return Err(SpecError::new(
                field,
                format!(
                    "{} is not under the cgroup2 mount {} (cgroup v1's freezer is not used: it blocks even SIGKILL)",
                    full.display(),
                    root.display()
                ),
            ));
        }
        if !full.join("cgroup.freeze").exists() {
            return Err(SpecError::new(
                field,
                format!(
                    "{} has no cgroup.freeze (the root cgroup cannot be frozen)",
                    full.display()
                ),
            ));
        }
        Ok(Target::Cgroup { path: full })
    }

    /// How `status` names it.
    pub fn describe(&self) -> String {
        match self {
            Target::Pid { pid, .. } => format!("pid {pid}"),
            Target::Cgroup { path } => format!("cgroup {}", path.display()),
        }
    }

    /// Is the target still there (the same process; the cgroup directory)?
    pub fn exists(&self) -> bool {
        match self {
            Target::Pid { pid, start } => start_time(*pid) == Some(*start),
            Target::Cgroup { path } => path.join("cgroup.freeze").exists(),
        }
    }

    /// A handle that signals only this process, or None when it is gone.
    pub fn pidfd(&self) -> Option<Pidfd> {
        let Target::Pid { pid, start } = self else {
            return None;
        };
        let fd = Pidfd::open(*pid).ok()?;
        // Opened first, checked second: a PID reused before the open has another start time.
        (start_time(*pid) == Some(*start)).then_some(fd)
    }

    /// Stops the target; returns once it is stopped (bounded wait).
    pub fn stop(&self, fd: Option<&Pidfd>) -> Result<()> {
        match self {
            Target::Pid { pid, .. } => {
                let fd = fd.ok_or_else(|| Error::Watchdog(format!("process {pid} is gone")))?;
                fd.signal(libc::SIGSTOP)
                    .map_err(|e| Error::io(format!("SIGSTOP to {pid}"), e))?;
                wait_for(|| state(*pid) == Some('T') || !self.exists())
                    .then_some(())
                    .ok_or_else(|| Error::Watchdog(format!("process {pid} did not stop")))
            }
            Target::Cgroup { path } => {
                write(path, "1")?;
                if wait_for(|| frozen(path) != Some(false)) {
                    Ok(())
                } else {
                    let _ = write(path, "0");
                    Err(Error::Watchdog(format!(
                        "{} did not report frozen within 5 s (thawed again)",
                        path.display()
                    )))
                }
            }
        }
    }

    /// Lets the target run again. Without a pidfd (a sweep after the watchdog was killed),
    /// a new one is opened and the process's identity checked first.
    pub fn resume(&self) -> Result<()> {
        match self {
            Target::Pid { pid, .. } => match self.pidfd() {
                Some(fd) => fd
                    .signal(libc::SIGCONT)
                    .map_err(|e| Error::io(format!("SIGCONT to {pid}"), e)),
                None => Ok(()), // gone: nothing to resume
            },
            Target::Cgroup { path } if path.exists() => write(path, "0"),
            Target::Cgroup { .. } => Ok(()),
        }
    }

    /// `resume` with the watchdog's own pidfd.
    pub fn resume_with(&self, fd: Option<&Pidfd>) -> Result<()> {
        match (self, fd) {
            (Target::Pid { pid, .. }, Some(fd)) => match fd.signal(libc::SIGCONT) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                r => r.map_err(|e| Error::io(format!("SIGCONT to {pid}"), e)),
            },
            _ => self.resume(),
        }
    }
}

fn write(cgroup: &Path, v: &str) -> Result<()> {
    let f = cgroup.join("cgroup.freeze");
    std::fs::write(&f, v).map_err(|e| Error::io(format!("writing {v} to {}", f.display()), e))
}

/// `frozen` from `cgroup.events`, or None when unreadable.
pub fn frozen(cgroup: &Path) -> Option<bool> {
    let ev = std::fs::read_to_string(cgroup.join("cgroup.events")).ok()?;
    ev.lines()
        .find_map(|l| l.strip_prefix("frozen "))
        .map(|v| v.trim() == "1")
}

/// Polls `done` for up to 5 s.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done()
}

/// A pidfd (`pidfd_open`, Linux 5.3): signals through it reach this process or none.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    pub fn open(pid: i32) -> std::io::Result<Pidfd> {
        // SAFETY: plain syscall; the result is a new fd we own, or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned to us and is owned by nothing else.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        // SAFETY: plain syscall on an fd we own; no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time_and_is_refused() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        // The main thread's state: sleeping while the test threads run, never stopped.
        assert!(state(me).is_some_and(|c| c != 'T'));
        assert_eq!(Target::pid(me).unwrap_err().field, "--pid");
        assert_eq!(Target::pid(1).unwrap_err().field, "--pid");
        assert!(
            Target::pid(i32::MAX)
                .unwrap_err()
                .msg
                .contains("no process")
        );
    }

    #[test]
    fn a_cgroup_outside_cgroup2_is_refused() {
        let e = Target::cgroup(Path::new("/proc")).unwrap_err();
        assert_eq!(e.field, "--cgroup");
    }
}
