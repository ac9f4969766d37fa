//! Pauses asked of a node (`netfault cluster pause`, scenario `pause` steps): where the node's
//! process is ([`Place`], the cluster file's `pause_target`), the request a transport carries
//! ([`Request`]), and starting and ending pauses on this host ([`start`], [`resume`]), which
//! the `pause` and `resume` commands use too. The watchdog always runs on the host of the
//! target, whichever transport asked: the resume guarantee does not depend on the asker.
use std::{
    fmt,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{Error, Record, Result, Schedule, Store, Target, store::unix_ms};
use crate::spec::{SpecError, validate_name};

/// What a node's pause stops, named as its host sees it (`pause_target` in the cluster file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Place {
    /// `pid:N`.
    Pid(i32),
    /// `pidfile:PATH`: the PID read when the pause starts (a restarted process keeps its node).
    PidFile(PathBuf),
    /// `cgroup:PATH`: a cgroup v2 directory, frozen.
    Cgroup(PathBuf),
    /// `container:NAME`: a Docker or Podman container's own cgroup v2, frozen; asked of the
    /// engine when the pause starts (a restarted container keeps its node).
    Container(String),
}

/// A container's own cgroup v2 directory, as the container engine says (`targets`, a layer
/// above this one, looks it up): a place names a container, resolving it needs the engine.
pub type ContainerCgroup<'a> = &'a dyn Fn(&str) -> std::result::Result<PathBuf, String>;

impl Place {
    /// Parses `cgroup:PATH`, `pidfile:PATH`, `pid:N` or `container:NAME`; `field` names the
    /// key in errors (`node[2].pause_target`).
    pub fn parse(field: &str, s: &str) -> std::result::Result<Place, SpecError> {
        let bad = |m: String| SpecError::new(field, m);
        let (kind, v) = s.split_once(':').ok_or_else(|| {
            bad(format!(
                "'{s}': expected cgroup:PATH, pidfile:PATH, pid:N or container:NAME"
            ))
        })?;
        let path = |v: &str| {
            if v.is_empty() || v.contains('\0') {
                Err(bad(format!("'{s}': expected a path after '{kind}:'")))
            } else {
                Ok(PathBuf::from(v))
            }
        };
        match kind {
            "pid" => v
                .trim()
                .parse::<i32>()
                .ok()
                .filter(|p| *p > 1)
                .map(Place::Pid)
                .ok_or_else(|| {
                    bad(format!(
                        "'{v}' is not a process id (a whole number above 1)"
                    ))
                }),
            "pidfile" => {
                let p = path(v)?;
                if !p.is_absolute() {
                    return Err(bad(format!("'{v}': the pidfile's path must be absolute")));
                }
                Ok(Place::PidFile(p))
            }
            "cgroup" => Ok(Place::Cgroup(path(v)?)),
            "container" => {
                let n = v.trim();
                if n.is_empty() || n.contains(['/', '\0']) {
                    return Err(bad(format!("'{s}': expected a container name or ID")));
                }
                Ok(Place::Container(n.to_string()))
            }
            k => Err(bad(format!(
                "'{k}' is not a pause target kind (cgroup, pidfile, pid or container)"
            ))),
        }
    }

    /// The target as it is now on this host: a pidfile is read here, a container asked of its
    /// engine through `container`. Errors name `field`.
    pub fn resolve(
        &self,
        field: &str,
        container: ContainerCgroup<'_>,
    ) -> std::result::Result<Target, SpecError> {
        let named = |e: SpecError| SpecError::new(field, e.msg);
        match self {
            Place::Container(n) => {
                let dir = container(n).map_err(|m| SpecError::new(field, m))?;
                Target::cgroup(&dir).map_err(named)
            }
            Place::Pid(p) => Target::pid(*p).map_err(named),
            Place::Cgroup(c) => Target::cgroup(c).map_err(named),
            Place::PidFile(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| SpecError::new(field, format!("{}: {e}", f.display())))?;
                let pid = text.trim().parse::<i32>().map_err(|_| {
                    SpecError::new(
                        field,
                        format!("{}: '{}' is not a process id", f.display(), text.trim()),
                    )
                })?;
                Target::pid(pid).map_err(named)
            }
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Pid(p) => write!(f, "pid:{p}"),
            Place::PidFile(p) => write!(f, "pidfile:{}", p.display()),
            Place::Cgroup(p) => write!(f, "cgroup:{}", p.display()),
            Place::Container(n) => write!(f, "container:{n}"),
        }
    }
}

impl TryFrom<String> for Place {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Place, String> {
        Place::parse("target", &s).map_err(|e| e.msg)
    }
}

impl From<Place> for String {
    fn from(p: Place) -> String {
        p.to_string()
    }
}

/// A pause asked of a node: what the agent's `POST /v1/pauses` and `netfault node pause` take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub name: String,
    pub target: Place,
    pub schedule: Schedule,
}

/// A pause that has started: its target is stopped, and a watchdog holds its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub name: String,
    /// As `status` says it (`pid 4242`).
    pub target: String,
    pub watchdog_pid: u32,
    /// When the target was seen stopped, Unix milliseconds (the node's clock).
    pub stopped_ms: u64,
}

/// A live pause, as `status --json`, the agent's status and `cluster pause` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub name: String,
    pub target: String,
    /// Until the last resume; None: until resumed.
    pub left_ms: Option<u64>,
    pub watchdog_pid: Option<i32>,
}

impl From<&Record> for View {
    fn from(r: &Record) -> View {
        View {
            name: r.name.clone(),
            target: r.target.describe(),
            left_ms: r.left().map(|d| d.as_millis() as u64),
            watchdog_pid: r.watchdog.map(|w| w.pid),
        }
    }
}

/// Every live pause on this host.
pub fn list(store: &Store) -> Vec<View> {
    store.list().iter().map(View::from).collect()
}

/// Checks `req` and starts it: [`start`] of the target its place resolves to.
pub fn start_request(
    store: &Store,
    req: &Request,
    container: ContainerCgroup<'_>,
) -> Result<Started> {
    validate_name("name", &req.name)?;
    let target = req.target.resolve("target", container)?;
    start(store, &req.name, target, req.schedule)
}

/// Starts pause `name` of `target`: records it, starts the watchdog (`netfault pause-watchdog
/// NAME`, this executable, in a session of its own) and returns once the watchdog has stopped
/// the target. On any failure the target runs and no record stays.
pub fn start(store: &Store, name: &str, target: Target, schedule: Schedule) -> Result<Started> {
    validate_name("--name", name)?;
    let rec = Record {
        name: name.to_string(),
        target: target.clone(),
        schedule,
        created_ms: unix_ms(),
        watchdog: None,
    };
    store.create(&rec)?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("finding this executable", e))
        .inspect_err(|_| store.remove(name))?;
    let mut c = Command::new(exe);
    c.arg("pause-watchdog")
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe. The watchdog leaves this command's session and
    // process group: a terminal's hangup or a Ctrl-C meant for the asker does not end it (and
    // if it did, it would resume the target, which is safe).
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = c
        .spawn()
        .map_err(|e| Error::io("starting the pause watchdog", e))
        .inspect_err(|_| store.remove(name))?;
    let mut line = String::new();
    // The watchdog answers within the stop's own 5 s bound.
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let stopped_ms = unix_ms();
    match line.trim() {
        "stopped" => {
            let watchdog_pid = child.id();
            // Reaped by whoever outlives it: a long-lived asker (the agent) must not gather
            // zombies, so a thread waits for it.
            std::thread::spawn(move || child.wait());
            Ok(Started {
                name: name.to_string(),
                target: target.describe(),
                watchdog_pid,
                stopped_ms,
            })
        }
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = target.resume();
            store.remove(name);
            let why = other.strip_prefix("error: ").unwrap_or(other);
            Err(Error::Watchdog(if why.is_empty() {
                "the watchdog ended without a word".into()
            } else {
                why.to_string()
            }))
        }
    }
}

/// Ends the pauses `names` (None: all) at once; a name with no live pause is an error
/// ([`Error::NotFound`], nothing resumed) unless `missing_ok`. Returns what it resumed.
pub fn resume(store: &Store, names: Option<&[String]>, missing_ok: bool) -> Result<Vec<View>> {
    let all = store.list();
    let chosen: Vec<Record> = match names {
        None => all,
        Some(names) => {
            let missing: Vec<&str> = names
                .iter()
                .filter(|n| !all.iter().any(|r| &r.name == *n))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() && !missing_ok {
                return Err(Error::NotFound(missing.join(", ")));
            }
            all.into_iter()
                .filter(|r| names.contains(&r.name))
                .collect()
        }
    };
    let mut done = Vec::new();
    for r in chosen {
        match r.watchdog.filter(|w| w.alive()) {
            // The watchdog resumes and removes the record.
            Some(w) => {
                // SAFETY: plain kill; the watchdog's identity was just checked.
                unsafe { libc::kill(w.pid, libc::SIGTERM) };
                let t = Instant::now();
                while store.get(&r.name).is_some() && t.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if store.get(&r.name).is_some() {
                    r.target.resume()?;
                    store.remove(&r.name);
                }
            }
            None => {
                r.target.resume()?;
                store.remove(&r.name);
            }
        }
        done.push(View::from(&r));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_parse_and_name_the_key() {
        let f = "node[2].pause_target";
        assert_eq!(Place::parse(f, "pid:4242").unwrap(), Place::Pid(4242));
        assert_eq!(
            Place::parse(f, "pidfile:/run/n1.pid").unwrap(),
            Place::PidFile("/run/n1.pid".into())
        );
        assert_eq!(
            Place::parse(f, "cgroup:lab/n1").unwrap(),
            Place::Cgroup("lab/n1".into())
        );
        for bad in [
            "4242",
            "pid:1",
            "pid:x",
            "pidfile:",
            "pidfile:rel.pid",
            "cgroup:",
            "vm:n1",
            "container:",
            "container:a/b",
        ] {
            let e = Place::parse(f, bad).unwrap_err();
            assert_eq!(e.field, f, "{bad}");
        }
        assert_eq!(
            Place::parse(f, "container:etcd1").unwrap(),
            Place::Container("etcd1".into())
        );
        for s in [
            "pid:4242",
            "pidfile:/run/n1.pid",
            "cgroup:lab/n1",
            "container:etcd1",
        ] {
            let p = Place::parse(f, s).unwrap();
            assert_eq!(p.to_string(), s);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Place>(&json).unwrap(), p);
        }
        assert!(serde_json::from_str::<Place>("\"pid:0\"").is_err());
    }

    fn no_engine(name: &str) -> std::result::Result<PathBuf, String> {
        Err(format!("{name}: no engine in unit tests"))
    }

    #[test]
    fn a_container_place_asks_the_engine_and_names_the_field() {
        let p = Place::Container("web".into());
        let e = p.resolve("node[1].pause_target", &no_engine).unwrap_err();
        assert_eq!(e.field, "node[1].pause_target");
        assert!(e.msg.contains("web: no engine"), "{}", e.msg);
    }

    #[test]
    fn a_pidfile_is_read_when_resolved() {
        let dir = std::env::temp_dir().join(format!("nf-pause-place-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.pid");
        let p = Place::PidFile(f.clone());
        assert_eq!(
            p.resolve("t", &no_engine).unwrap_err().field,
            "t",
            "no file yet"
        );
        std::fs::write(&f, "nonsense\n").unwrap();
        assert!(
            p.resolve("t", &no_engine)
                .unwrap_err()
                .msg
                .contains("not a process id")
        );
        // This process: a real PID, refused for being netfault's own (the resolve went through).
        std::fs::write(&f, format!("{}\n", std::process::id())).unwrap();
        assert!(
            p.resolve("t", &no_engine)
                .unwrap_err()
                .msg
                .contains("itself")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
