//! `netfault agent` processes in lab namespaces, for the agent transport: one per host, all
//! sharing a token file of their own (in a private directory), stopped on drop (SIGTERM, which
//! makes each delete what it added, then SIGKILL after a grace) with the directory removed.
use std::{
    fs,
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    cluster,
    lab::{Host, run_in},
};

/// The agents' bearer token (a lab's: it guards nothing outside the lab's namespaces).
const TOKEN: &str = "6a0c2f9e1b7d4c3e8f5a2b1c0d9e8f7a";
/// How long stopping may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

struct Proc {
    child: Option<Child>,
    log: PathBuf,
    addr: SocketAddr,
}

/// The agents of one lab; see the module's comment.
pub struct Agents {
    dir: PathBuf,
    token: PathBuf,
    procs: Vec<Proc>,
}

impl Agents {
    /// Starts `bin --netns NS agent --listen V4:PORT --token-file F --iface IFACE` on each of
    /// `hosts` at once, and waits (at most `limit`: each attaches at start, loading the
    /// programs) until each has said it listens and accepts a TCP connection from `client_ns`.
    pub fn start(
        bin: &Path,
        hosts: &[Host],
        port: u16,
        client_ns: &str,
        limit: Duration,
    ) -> Result<Self> {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nfagents-{}-{n}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).ok();
        }
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut a = Self {
            token: dir.join("token"),
            dir,
            procs: Vec::new(),
        };
        // From here on, a failure stops what started and removes the directory (Drop).
        fs::set_permissions(&a.dir, fs::Permissions::from_mode(0o700))?;
        fs::write(&a.token, format!("{TOKEN}\n"))?;
        fs::set_permissions(&a.token, fs::Permissions::from_mode(0o600))?;
        for (i, h) in hosts.iter().enumerate() {
            let addr = h.sock(false, port);
            let log = a.dir.join(format!("agent-{i}.log"));
            let child = Command::new(bin)
                .env_remove("SSH_CONNECTION")
                .args(["--netns", &h.ns, "agent", "--listen"])
                .arg(addr.to_string())
                .arg("--token-file")
                .arg(&a.token)
                .args(["--iface", &h.iface])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("start {}", bin.display()))?;
            a.procs.push(Proc {
                child: Some(child),
                log,
                addr,
            });
        }
        let end = Instant::now() + limit;
        for i in 0..a.procs.len() {
            loop {
                let addr = a.procs[i].addr;
                if let Some(c) = a.procs[i].child.as_mut()
                    && let Some(st) = c.try_wait()?
                {
                    bail!("agent {addr} exited ({st}): {}", a.log(i));
                }
                if a.log(i).contains("agent listening on")
                    && run_in(client_ns, || {
                        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    })?
                {
                    break;
                }
                ensure!(
                    Instant::now() < end,
                    "agent {addr} not ready after {limit:?}: {}",
                    a.log(i)
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(a)
    }

    /// The token file the agents read (and the coordinator's `token_file`).
    pub fn token_file(&self) -> &Path {
        &self.token
    }

    /// What agent `i` logged.
    pub fn log(&self, i: usize) -> String {
        self.procs
            .get(i)
            .and_then(|p| fs::read_to_string(&p.log).ok())
            .unwrap_or_default()
    }

    /// The cluster file's `[[node]]` tables for `hosts` (the ones the agents run on, in the
    /// same order), reached over plain HTTP.
    pub fn cluster_text(&self, hosts: &[Host]) -> String {
        cluster::cluster_text(hosts, |i, _, lines| {
            lines.push(format!("agent = \"http://{}\"", self.procs[i].addr));
            lines.push(format!("token_file = \"{}\"", self.token.display()));
        })
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for p in &self.procs {
            if let Some(c) = &p.child {
                // SAFETY: a signal to our own child, not reaped yet, so its pid is not reused.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        let end = Instant::now() + STOP_GRACE;
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                while c.try_wait().ok().flatten().is_none() && Instant::now() < end {
                    thread::sleep(Duration::from_millis(10));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("agents: remove {}: {e}", self.dir.display());
        }
    }
}
