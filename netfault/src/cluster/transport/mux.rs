//! OpenSSH connection sharing for the SSH transport: one connection per node for the life of a
//! coordinator (one `cluster` command, or a whole `cluster run`).
//!
//! - A node's first operation starts its master, `ssh -M -N -o ControlPath=DIR/SLOT -o
//!   ControlPersist=no [the node's ssh arguments] -- TARGET`, and waits until its control
//!   socket appears (OpenSSH creates it after authentication, by a rename: it accepts sessions
//!   once it is there). Every operation then runs `ssh -o ControlPath=DIR/SLOT -o
//!   ControlMaster=no ...`: a new session on the master's connection, no TCP handshake, key
//!   exchange or authentication. Nodes open theirs at once (each from its own worker).
//! - DIR is private (mkdtemp: mode 0700) in the temporary directory, `nfmux-PID-XXXXXX`,
//!   short enough for a socket path (108 bytes, and OpenSSH adds 17 while it binds).
//!   [`Mux::close`] (the coordinator's end, errors and handled signals included) stops the
//!   masters and removes it.
//! - The masters are started by a keeper thread that lives until [`Mux::close`], with
//!   `PR_SET_PDEATHSIG`: the signal follows the *thread* that forked, and the node workers
//!   end after each operation. A coordinator killed with -9 takes its masters with it; its
//!   directory (its pid in the name) is removed by the next coordinator that needs one.
//! - A master that cannot be opened (or a node whose `ssh_options` set ControlMaster,
//!   ControlPath or ControlPersist: theirs win) leaves the node's operations to connect each
//!   on its own, as without sharing; a master that dies later makes ssh do the same (a missing
//!   socket is not an error with `ControlMaster=no`).
use std::{
    collections::BTreeMap,
    ffi::{CString, OsString},
    io::{self, Read as _},
    os::unix::{ffi::OsStringExt as _, fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

/// The control directories' name: `nfmux-PID-XXXXXX`.
pub const DIR_PREFIX: &str = "nfmux-";
/// The longest temporary directory used as is; a longer one gives way to /tmp (socket paths).
const MAX_BASE: usize = 60;
/// How often a starting master is looked at.
const POLL: Duration = Duration::from_millis(2);
/// How long a master may take to end after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// The most of a failed master's log quoted in the warning.
const MAX_LOG: u64 = 4 << 10;

type Job = Box<dyn FnOnce() + Send>;

/// Why a node has no shared connection.
#[derive(Debug)]
pub enum NoMaster {
    /// The coordinator is ending: nothing new is started.
    Closed,
    /// The master could not be opened: why.
    Failed(String),
}

#[derive(Default)]
struct Inner {
    dir: Option<PathBuf>,
    closed: bool,
    masters: BTreeMap<usize, Child>,
    keeper: Option<(mpsc::Sender<Job>, thread::JoinHandle<()>)>,
}

/// The masters of one coordinator and their private directory.
#[derive(Default)]
pub struct Mux {
    inner: Mutex<Inner>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the node's ssh arguments already choose connection sharing (or refuse it).
pub fn sets_sharing(options: &[String]) -> bool {
    options.iter().any(|o| {
        let l = o.to_ascii_lowercase();
        o == "-M"
            || o.starts_with("-S")
            || ["controlmaster", "controlpath", "controlpersist"]
                .iter()
                .any(|k| l.contains(k))
    })
}

/// Where control directories go: the temporary directory, or /tmp when its path is long.
fn base() -> PathBuf {
    let t = std::env::temp_dir();
    if t.as_os_str().len() <= MAX_BASE {
        t
    } else {
        PathBuf::from("/tmp")
    }
}

/// Whether a master still listens in `dir` (a coordinator whose pid we cannot see, in another
/// pid namespace sharing the directory, is alive all the same).
fn serving(dir: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_type().is_ok_and(|t| t.is_socket())
                && std::os::unix::net::UnixStream::connect(e.path()).is_ok()
        })
    })
}

/// Removes the control directories of coordinators that are gone (killed with -9), ours only.
fn sweep(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = e.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && !serving(&path)
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// A new private directory `BASE/nfmux-PID-XXXXXX` (mode 0700).
fn make_dir() -> io::Result<PathBuf> {
    let base = base();
    sweep(&base);
    let template = base.join(format!("{DIR_PREFIX}{}-XXXXXX", std::process::id()));
    let c = CString::new(template.into_os_string().into_vec())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = c.into_bytes_with_nul();
    // SAFETY: a NUL-terminated template we own, rewritten in place.
    if unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    buf.pop();
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

/// The last lines of a master's log, for the warning.
fn log_tail(path: &Path) -> String {
    let mut b = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_LOG).read_to_end(&mut b);
    }
    let text = String::from_utf8_lossy(&b);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(2)..].join("; ")
}

impl Mux {
    pub fn new() -> Self {
        Self::default()
    }

    /// The control directory, once a master was asked for.
    pub fn dir(&self) -> Option<PathBuf> {
        lock(&self.inner).dir.clone()
    }

    /// Starts the master of node `slot` (`ssh_args`: ssh's arguments for that node, target
    /// last) and waits at most `limit` until it accepts sessions. Returns its control path.
    pub fn open(
        &self,
        slot: usize,
        ssh_args: &[String],
        limit: Duration,
    ) -> Result<PathBuf, NoMaster> {
        let failed = |m: String| NoMaster::Failed(m);
        let (path, log) = {
            let mut g = lock(&self.inner);
            if g.closed {
                return Err(NoMaster::Closed);
            }
            let dir = match &g.dir {
                Some(d) => d.clone(),
                None => {
                    let d = make_dir().map_err(|e| failed(format!("make its directory: {e}")))?;
                    g.dir = Some(d.clone());
                    d
                }
            };
            let path = dir.join(slot.to_string());
            let log = dir.join(format!("{slot}.log"));
            let mut cmd = Command::new("ssh");
            cmd.arg("-M")
                .arg("-N")
                .arg("-o")
                .arg(control_option(&path))
                .args(["-o", "ControlPersist=no"])
                .args(ssh_args)
                // Its own process group: a Ctrl-C at the terminal reaches the coordinator
                // (a run then heals over this very connection), not the master.
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(&log)
                        .map_err(|e| failed(format!("{}: {e}", log.display())))?,
                );
            let parent = std::process::id();
            // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork
            // and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The coordinator died before the line above: nobody would signal.
                    if libc::getppid() as u32 != parent {
                        return Err(io::Error::other("the coordinator is gone"));
                    }
                    Ok(())
                });
            }
            let child = self
                .spawn_kept(&mut g, cmd)
                .map_err(|e| failed(format!("run ssh: {e}")))?;
            g.masters.insert(slot, child);
            (path, log)
        };
        let end = Instant::now() + limit;
        loop {
            // The control socket appears (by rename) once the master accepts sessions.
            if std::fs::symlink_metadata(&path).is_ok() {
                return Ok(path);
            }
            {
                let mut g = lock(&self.inner);
                let Some(c) = g.masters.get_mut(&slot) else {
                    return Err(NoMaster::Closed);
                };
                if let Ok(Some(st)) = c.try_wait() {
                    g.masters.remove(&slot);
                    return Err(failed(format!("ssh -M {st}: {}", log_tail(&log))));
                }
                if Instant::now() >= end {
                    if let Some(mut c) = g.masters.remove(&slot) {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    return Err(failed(format!("not ready within {limit:?}")));
                }
            }
            thread::sleep(POLL);
        }
    }

    /// Spawns `cmd` from the keeper thread, so that a `PR_SET_PDEATHSIG` it sets follows the
    /// coordinator, not the short-lived thread that asked (a node's persistent session). Fails
    /// once [`close`](Self::close) has run.
    pub fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let mut g = lock(&self.inner);
        if g.closed {
            return Err(io::Error::other("the coordinator is ending"));
        }
        self.spawn_kept(&mut g, cmd)
    }

    /// Spawns `cmd` from the keeper thread (started on first use), which lives until
    /// [`close`](Self::close): the child's PDEATHSIG follows that thread.
    fn spawn_kept(&self, g: &mut Inner, mut cmd: Command) -> io::Result<Child> {
        if g.keeper.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            let h = thread::Builder::new()
                .name("ssh-masters".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })?;
            g.keeper = Some((tx, h));
        }
        let Some((tx, _)) = &g.keeper else {
            unreachable!("set above")
        };
        let (back, child) = mpsc::channel();
        tx.send(Box::new(move || {
            let _ = back.send(cmd.spawn());
        }))
        .map_err(|_| io::Error::other("the keeper thread is gone"))?;
        child
            .recv()
            .map_err(|_| io::Error::other("the keeper thread is gone"))?
    }

    /// Stops every master (SIGTERM: it removes its socket and says goodbye to the server; then
    /// SIGKILL after a grace), ends the keeper and removes the directory. Nothing is started
    /// after this; a later operation connects on its own.
    pub fn close(&self) {
        let (masters, keeper, dir) = {
            let mut g = lock(&self.inner);
            g.closed = true;
            (
                std::mem::take(&mut g.masters),
                g.keeper.take(),
                g.dir.take(),
            )
        };
        let mut masters: Vec<Child> = masters.into_values().collect();
        for c in &masters {
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: our own child, not yet reaped: the pid is still its.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let end = Instant::now() + STOP_GRACE;
        while Instant::now() < end && masters.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
            thread::sleep(POLL);
        }
        for c in &mut masters {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((tx, h)) = keeper {
            drop(tx);
            let _ = h.join();
        }
        if let Some(d) = dir {
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.close();
    }
}

/// The path as ssh's `-o ControlPath=` value.
pub fn control_option(path: &Path) -> OsString {
    let mut o = OsString::from("ControlPath=");
    o.push(path.as_os_str());
    o
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt as _;

    use super::*;

    #[test]
    fn the_users_own_sharing_options_win() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!sets_sharing(&v(&[
            "-i", "/k", "-p", "22", "-o", "Port=22"
        ])));
        assert!(sets_sharing(&v(&["-o", "ControlMaster=auto"])));
        assert!(sets_sharing(&v(&["-oControlPath=/x/%C"])));
        assert!(sets_sharing(&v(&["-o", "controlpersist=yes"])));
        assert!(sets_sharing(&v(&["-S", "/x/s"])));
        assert!(sets_sharing(&v(&["-M"])));
    }

    #[test]
    fn a_control_directory_is_private_short_and_swept_once_its_owner_is_gone() {
        let d = make_dir().unwrap();
        let m = std::fs::metadata(&d).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        // Socket path + the 17 bytes OpenSSH adds while it binds, within sun_path (108).
        assert!(
            d.join("31").as_os_str().as_bytes().len() + 17 < 108,
            "{d:?}"
        );
        // A directory of a pid that cannot exist (above pid_max) is a dead coordinator's.
        let dead = base().join(format!("{DIR_PREFIX}4294967295-test{}", std::process::id()));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("0.log"), "x").unwrap();
        // One whose socket still answers is someone's we cannot see: kept.
        let live = base().join(format!("{DIR_PREFIX}4294967295-live{}", std::process::id()));
        std::fs::create_dir(&live).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(live.join("0")).unwrap();
        sweep(&base());
        assert!(!dead.exists());
        assert!(live.exists());
        std::fs::remove_dir_all(&live).unwrap();
        // Ours (this process is alive) stays.
        assert!(d.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn closed_means_nothing_new_starts() {
        let m = Mux::new();
        m.close();
        assert!(matches!(
            m.open(
                0,
                &["--".into(), "root@192.0.2.1".into()],
                Duration::from_secs(1)
            ),
            Err(NoMaster::Closed)
        ));
        assert!(m.dir().is_none());
    }
}
