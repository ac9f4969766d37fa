//! Pauses: a process or a cgroup stopped for a while and resumed on its deadline, whatever
//! happens to the command that paused it.
//!
//! - A process is stopped with SIGSTOP and resumed with SIGCONT through a pidfd
//!   ([`target`]), so a PID reused after the process ended is never signalled.
//! - A cgroup v2 subtree is frozen (`cgroup.freeze`): its tasks stop where they can still be
//!   killed, and `cgroup.events` says when all of them are `frozen`.
//! - The deadline is held by a watchdog process (`netfault pause-watchdog NAME`, in a session
//!   of its own), which does the stopping itself: the command that asked returns once the
//!   target is stopped, and nothing that happens to it afterwards can leave the target stopped.
//!   The watchdog resumes on its deadline and whenever it is told to end (SIGTERM, SIGINT,
//!   SIGHUP). Only SIGKILL gets past it: its record ([`store`]) then names a watchdog that is
//!   gone, and the next netfault command resumes the target ([`sweep`]).
//! - [`node`]: starting and ending pauses on this host, for the commands and for a cluster's
//!   nodes (`pause_target`), whichever transport asks.
use std::time::Duration;

pub mod node;
pub mod store;
pub mod target;
pub mod watchdog;

pub use store::{Record, Store};
pub use target::Target;

/// Longest pause `--for` takes unless it says `none`: a forgotten pause ends by itself.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input (exit 2): nothing was changed.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("pause '{0}' exists already (resume it first, or give another --name)")]
    Exists(String),
    #[error("no pause named {0}")]
    NotFound(String),
    #[error("the watchdog did not stop the target: {0}")]
    Watchdog(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// 2 for bad input (nothing changed), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Spec(_) | Error::Exists(_) | Error::NotFound(_) => 2,
            Error::Watchdog(_) | Error::Io { .. } => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// When the target stops and runs: `count` stops of `hold` each, one every `every`
/// (`hold` None: until resumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    #[serde(with = "ms_opt")]
    pub hold: Option<Duration>,
    #[serde(with = "ms_opt")]
    pub every: Option<Duration>,
    pub count: u32,
}

impl Schedule {
    /// Checks `--for`, `--every` and `--count` together (fields named as the flags).
    pub fn new(
        hold: Option<Duration>,
        every: Option<Duration>,
        count: Option<u32>,
    ) -> std::result::Result<Schedule, crate::spec::SpecError> {
        use crate::spec::SpecError;
        if let Some(h) = hold
            && h > MAX_HOLD
        {
            return Err(SpecError::new(
                "--for",
                format!(
                    "{} is longer than the {} limit (say `--for none` to pause until `netfault resume`)",
                    humantime::format_duration(h),
                    humantime::format_duration(MAX_HOLD)
                ),
            ));
        }
        match (every, count) {
            (None, None) => Ok(Schedule {
                hold,
                every: None,
                count: 1,
            }),
            (Some(_), None) => Err(SpecError::new("--count", "--every needs --count")),
            (None, Some(_)) => Err(SpecError::new("--every", "--count needs --every")),
            (Some(e), Some(n)) => {
                let Some(h) = hold else {
                    return Err(SpecError::new(
                        "--for",
                        "a strobe (--every) needs a duration, not none",
                    ));
                };
                if e <= h {
                    return Err(SpecError::new(
                        "--every",
                        format!(
                            "must be longer than --for ({}), or the target never runs between pauses",
                            humantime::format_duration(h)
                        ),
                    ));
                }
                if n == 0 {
                    return Err(SpecError::new("--count", "must be at least 1"));
                }
                Ok(Schedule {
                    hold,
                    every: Some(e),
                    count: n,
                })
            }
        }
    }

    /// From the first stop to the last resume; None: until resumed.
    pub fn span(&self) -> Option<Duration> {
        let h = self.hold?;
        Some(self.every.unwrap_or_default() * self.count.saturating_sub(1) + h)
    }
}

/// `Option<Duration>` as whole milliseconds (null: none).
mod ms_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Resumes every pause whose watchdog is gone (killed with SIGKILL, or the host's processes
/// were cleared) and removes its record. Returns what it resumed, for the caller to say.
pub fn sweep(store: &Store) -> Vec<String> {
    let mut done = Vec::new();
    for r in store.list() {
        if r.watchdog.is_some_and(|w| w.alive()) {
            continue;
        }
        // A record just written by `pause`, whose watchdog is starting, has no watchdog yet.
        if r.watchdog.is_none() && r.age() < Duration::from_secs(10) {
            continue;
        }
        let _ = r.target.resume();
        store.remove(&r.name);
        done.push(r.name);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    #[test]
    fn schedules_are_checked_and_named() {
        let s = Schedule::new(ms(100), None, None).unwrap();
        assert_eq!((s.count, s.span()), (1, ms(100)));
        let s = Schedule::new(ms(100), ms(300), Some(3)).unwrap();
        assert_eq!(s.span(), ms(700));
        assert_eq!(Schedule::new(None, None, None).unwrap().span(), None);
        let field = |h, e, n| Schedule::new(h, e, n).unwrap_err().field;
        assert_eq!(field(ms(601_000), None, None), "--for");
        assert_eq!(field(ms(100), ms(300), None), "--count");
        assert_eq!(field(ms(100), None, Some(2)), "--every");
        assert_eq!(field(ms(100), ms(100), Some(2)), "--every");
        assert_eq!(field(None, ms(300), Some(2)), "--for");
        assert_eq!(field(ms(100), ms(300), Some(0)), "--count");
        assert!(Schedule::new(Some(MAX_HOLD), None, None).is_ok());
    }
}
