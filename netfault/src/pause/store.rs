//! Live pauses, one JSON file each under `/run/netfault/pauses/` (host-wide: a process or a
//! cgroup belongs to no network namespace). Gone on reboot, with every stopped process.
use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{Error, Result, Schedule, Target, target::start_time};

pub const DIR: &str = "/run/netfault/pauses";

/// The process that holds a pause's deadline, by PID and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watchdog {
    pub pid: i32,
    pub start: u64,
}

impl Watchdog {
    pub fn me() -> Option<Watchdog> {
        let pid = std::process::id() as i32;
        Some(Watchdog {
            pid,
            start: start_time(pid)?,
        })
    }

    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub target: Target,
    pub schedule: Schedule,
    /// When it was asked for, Unix milliseconds.
    pub created_ms: u64,
    /// Set by the watchdog once it runs.
    pub watchdog: Option<Watchdog>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Record {
    pub fn age(&self) -> Duration {
        Duration::from_millis(unix_ms().saturating_sub(self.created_ms))
    }

    /// Until the last resume; None: until `netfault resume`.
    pub fn left(&self) -> Option<Duration> {
        self.schedule.span().map(|s| s.saturating_sub(self.age()))
    }
}

/// The directory of records (tests give their own).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Store { dir: DIR.into() }
    }
}

impl Store {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Writes `r` whole (a reader never sees half a record). The directory goes with its last
    /// record ([`Store::remove`]), so another command may remove it between our making it and
    /// writing in it: then it is made again (a bounded number of times).
    pub fn put(&self, r: &Record) -> Result<()> {
        let text = serde_json::to_vec_pretty(r)
            .map_err(|e| Error::io("encoding a pause record", std::io::Error::other(e)))?;
        let tmp = self.dir.join(format!(".{}.{}", r.name, std::process::id()));
        let mut tries = 0;
        loop {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
            match std::fs::write(&tmp, &text)
                .and_then(|()| std::fs::rename(&tmp, self.path(&r.name)))
            {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 8 => tries += 1,
                res => {
                    return res.map_err(|e| {
                        Error::io(format!("writing {}", self.path(&r.name).display()), e)
                    });
                }
            }
        }
    }

    /// A new record, refused when the name is taken by a live pause.
    pub fn create(&self, r: &Record) -> Result<()> {
        if self.get(&r.name).is_some() {
            return Err(Error::Exists(r.name.clone()));
        }
        self.put(r)
    }

    pub fn get(&self, name: &str) -> Option<Record> {
        let text = std::fs::read(self.path(name)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Removes the record, and the directory when it was the last: nothing of a pause stays
    /// behind it (`rmdir` refuses a directory that still holds another's record).
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// Every record, by name.
    pub fn list(&self) -> Vec<Record> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<Record> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                self.get(n.strip_suffix(".json").filter(|_| !n.starts_with('.'))?)
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_names_are_unique() {
        let dir = std::env::temp_dir().join(format!("nf-pause-store-{}", std::process::id()));
        let s = Store::at(&dir);
        let r = Record {
            name: "p1".into(),
            target: Target::Pid { pid: 42, start: 7 },
            schedule: Schedule::new(Some(Duration::from_secs(2)), None, None).unwrap(),
            created_ms: unix_ms(),
            watchdog: None,
        };
        s.create(&r).unwrap();
        assert!(matches!(s.create(&r), Err(Error::Exists(_))));
        assert_eq!(s.list(), vec![r.clone()]);
        assert!(r.left().unwrap() <= Duration::from_secs(2));
        let r2 = Record {
            name: "p2".into(),
            ..r.clone()
        };
        s.create(&r2).unwrap();
        s.remove("p1");
        assert_eq!(s.list(), vec![r2], "another pause's record went with p1's");
        s.remove("p2");
        assert!(s.list().is_empty());
        assert!(!dir.exists(), "the directory stayed after its last record");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
