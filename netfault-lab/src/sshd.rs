//! OpenSSH servers for tests of netfault's SSH transport: one client key, one host key, and
//! `sshd -D -e -f CONFIG` processes inside lab namespaces, all made in a private directory
//! under /tmp and removed with the [`SshServers`].
//!
//! Each server enters the lab namespace's network namespace only (setns before exec): it keeps
//! the host's mounts, so a command run over SSH sees the host's bpffs and /run/netfault, as
//! `netfault --netns NS` does (`ip netns exec` would remount /sys and hide the pins). It logs in
//! root by the client key alone (no PAM, no password, no TTY, no forwarding) and listens on
//! the addresses given, nowhere else.
//!
//! A server dies with the thread that started it (`PR_SET_PDEATHSIG`): start them from the
//! test's own thread. Dropping the set stops every server and what it forked (sessions, the
//! commands they ran), then removes the directory; [`SshServers::processes`] lists them for a
//! test to check afterwards that none is left ([`Proc::alive`]). sshd needs its privilege
//! separation directory, /run/sshd: it is created (empty, root's, 0755, as Debian's service
//! makes it) when missing and left in place.
use std::{
    fs,
    net::{SocketAddr, TcpStream},
    os::{
        fd::AsRawFd as _,
        unix::{fs::PermissionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::lab::{is_documentation, run_in, wait_bounded};

/// Debian's sshd; it must be run by its absolute path (it re-executes itself).
pub const SSHD: &str = "/usr/sbin/sshd";
/// sshd's privilege separation directory on Debian.
const PRIVSEP_DIR: &str = "/run/sshd";
/// How long a server may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(5);
/// How long stopping may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A process seen running: its pid and start time (so a reused pid is not mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    start: u64,
}

impl Proc {
    /// Whether the process still runs (a zombie does not count).
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start == self.start && s.state != 'Z')
    }
}

struct Stat {
    ppid: u32,
    state: char,
    start: u64,
}

/// /proc/PID/stat: state, parent and start time (fields 3, 4 and 22).
fn stat(pid: u32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// `root` and every process below it, now.
fn descendants(root: u32) -> Vec<Proc> {
    let all: Vec<(u32, Stat)> = fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| Some((pid, stat(pid)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut out: Vec<Proc> = all
        .iter()
        .filter(|(p, _)| *p == root)
        .map(|(p, s)| Proc {
            pid: *p,
            start: s.start,
        })
        .collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].pid;
        for (p, s) in &all {
            if s.ppid == parent && !out.iter().any(|o| o.pid == *p) {
                out.push(Proc {
                    pid: *p,
                    start: s.start,
                });
            }
        }
        i += 1;
    }
    out
}

fn kill(p: &Proc, sig: libc::c_int) {
    if p.alive() {
        // SAFETY: a signal to a pid just checked to be the process we saw.
        unsafe {
            libc::kill(p.pid as libc::pid_t, sig);
        }
    }
}

struct Server {
    ns: String,
    child: Option<Child>,
    log: PathBuf,
}

/// The keys and the servers of one test.
pub struct SshServers {
    dir: PathBuf,
    /// The client's private key (`ssh -i`).
    pub client_key: PathBuf,
    known_hosts: PathBuf,
    host_key: PathBuf,
    authorized_keys: PathBuf,
    /// Users other than root who may log in, each with its own authorized_keys file.
    users: Vec<(String, PathBuf)>,
    servers: Vec<Server>,
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "netfault-lab", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("run ssh-keygen (install openssh-client: scripts/setup.sh)")?;
    ensure!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl SshServers {
    /// A private directory with a client key (authorized for root), a host key, and a
    /// known_hosts file that trusts it for the documentation addresses only.
    pub fn new() -> Result<Self> {
        ensure!(
            Path::new(SSHD).exists(),
            "{SSHD} not found: install openssh-server (scripts/setup.sh)"
        );
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nfsshd-{}-{n}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).ok();
        }
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let s = Self {
            client_key: dir.join("client_ed25519"),
            known_hosts: dir.join("known_hosts"),
            host_key: dir.join("host_ed25519"),
            authorized_keys: dir.join("authorized_keys"),
            dir,
            users: Vec::new(),
            servers: Vec::new(),
        };
        // From here on, a failure removes the directory (Drop).
        keygen(&s.client_key)?;
        keygen(&s.host_key)?;
        let pub_of = |p: &Path| fs::read_to_string(p.with_extension("pub"));
        fs::write(&s.authorized_keys, pub_of(&s.client_key)?)?;
        let host_pub = pub_of(&s.host_key)?;
        let key = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        // Port 22 is written bare, others as [host]:port.
        let nets = ["192.0.2.*", "198.51.100.*", "203.0.113.*", "2001:db8:*"];
        let mut pats: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        pats.extend(nets.iter().map(|n| format!("[{n}]:*")));
        fs::write(&s.known_hosts, format!("{} {key}\n", pats.join(",")))?;
        Ok(s)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// ssh options that log in with the client key and trust only the servers' host key,
    /// reading no user or system configuration.
    pub fn client_options(&self) -> Vec<String> {
        let o = |k: &str, v: &Path| ["-o".to_string(), format!("{k}={}", v.display())];
        let mut v = vec!["-F".to_string(), "/dev/null".to_string(), "-i".to_string()];
        v.push(self.client_key.display().to_string());
        v.extend(o("UserKnownHostsFile", &self.known_hosts));
        for kv in [
            "GlobalKnownHostsFile=/dev/null",
            "StrictHostKeyChecking=yes",
            "IdentitiesOnly=yes",
            "IdentityAgent=none",
        ] {
            v.push("-o".into());
            v.push(kv.into());
        }
        v
    }

    fn config(&self, i: usize, listen: &[SocketAddr]) -> String {
        let mut c = String::new();
        for a in listen {
            c.push_str(&format!("ListenAddress {a}\n"));
        }
        c.push_str(&format!(
            "HostKey {}\nAuthorizedKeysFile {}\n",
            self.host_key.display(),
            self.authorized_keys.display()
        ));
        c.push_str(
            "PidFile none\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nAuthenticationMethods publickey\nUseDNS no\n\
             PrintMotd no\nPrintLastLog no\nPermitTTY no\nX11Forwarding no\n\
             AllowTcpForwarding no\nAllowAgentForwarding no\nPermitTunnel no\n\
             LoginGraceTime 20\nMaxStartups 64:30:128\nMaxSessions 16\nLogLevel VERBOSE\n",
        );
        c.push_str(&format!("# server {i}\n"));
        // Match blocks last: they run to the end of the file.
        for (user, keys) in &self.users {
            c.push_str(&format!(
                "Match User {user}\n  AuthorizedKeysFile {}\n",
                keys.display()
            ));
        }
        c
    }

    /// Lets `user` log in by the client key on servers started from now on. sshd reads
    /// authorized keys as that user: the file is written in their home and given to them.
    pub fn allow(&mut self, user: &LoginUser) -> Result<()> {
        let ssh_dir = user.home.join(".ssh");
        fs::create_dir_all(&ssh_dir)?;
        let keys = ssh_dir.join("authorized_keys");
        fs::write(
            &keys,
            fs::read_to_string(self.client_key.with_extension("pub"))?,
        )?;
        for p in [&ssh_dir, &keys] {
            std::os::unix::fs::chown(p, Some(user.uid), None)
                .with_context(|| format!("chown {}", p.display()))?;
        }
        self.users.push((user.name.clone(), keys));
        Ok(())
    }

    /// Starts an sshd in namespace `ns` listening on `listen` (port included), and waits until
    /// it accepts connections. Returns its index, for [`stop`](Self::stop) and
    /// [`log`](Self::log).
    pub fn start(&mut self, ns: &str, listen: &[SocketAddr]) -> Result<usize> {
        ensure!(!listen.is_empty(), "an sshd needs an address to listen on");
        for a in listen {
            ensure!(
                is_documentation(a.ip()),
                "{a} is not a documentation address"
            );
        }
        if !Path::new(PRIVSEP_DIR).exists() {
            fs::create_dir_all(PRIVSEP_DIR).with_context(|| format!("create {PRIVSEP_DIR}"))?;
            fs::set_permissions(PRIVSEP_DIR, fs::Permissions::from_mode(0o755))?;
        }
        let i = self.servers.len();
        let conf = self.dir.join(format!("sshd-{i}.conf"));
        fs::write(&conf, self.config(i, listen))?;
        let log = self.dir.join(format!("sshd-{i}.log"));
        let ns_file = fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("open namespace {ns}"))?;
        let ns_fd = ns_file.as_raw_fd();
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .process_group(0);
        // SAFETY: setns and prctl are plain syscalls on a descriptor that outlives spawn; this
        // runs in the child after fork, before exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("start {SSHD}"))?;
        drop(ns_file);
        self.servers.push(Server {
            ns: ns.into(),
            child: Some(child),
            log,
        });
        let end = Instant::now() + START_LIMIT;
        for a in listen {
            loop {
                if let Some(c) = self.servers[i].child.as_mut()
                    && let Some(st) = c.try_wait()?
                {
                    bail!("sshd in {ns} exited ({st}): {}", self.log(i));
                }
                let up = run_in(ns, || {
                    TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()
                })?;
                if up {
                    break;
                }
                ensure!(
                    Instant::now() < end,
                    "sshd in {ns} does not accept on {a} after {START_LIMIT:?}: {}",
                    self.log(i)
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(i)
    }

    /// What server `i` logged (sshd -e: to stderr, kept in a file).
    pub fn log(&self, i: usize) -> String {
        self.servers
            .get(i)
            .and_then(|s| fs::read_to_string(&s.log).ok())
            .unwrap_or_default()
    }

    /// Server `i` and everything it forked, now.
    fn tree(&self, i: usize) -> Vec<Proc> {
        self.servers[i]
            .child
            .as_ref()
            .map(|c| descendants(c.id()))
            .unwrap_or_default()
    }

    /// Every server and what each has forked (sessions, the commands they run), now.
    pub fn processes(&self) -> Vec<Proc> {
        (0..self.servers.len()).flat_map(|i| self.tree(i)).collect()
    }

    /// Stops server `i` (SIGTERM, then SIGKILL after a grace) and what it forked; waits for
    /// them. Its address stops accepting connections: a node whose SSH is down.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        ensure!(i < self.servers.len(), "no server {i}");
        let procs = self.tree(i);
        let Some(mut child) = self.servers[i].child.take() else {
            return Ok(());
        };
        for p in procs.iter().rev() {
            kill(p, libc::SIGTERM);
        }
        let end = Instant::now() + STOP_GRACE;
        while procs.iter().any(Proc::alive) && Instant::now() < end {
            // Our child's exit is reaped here; the others' by whoever adopted them.
            let _ = child.try_wait();
            thread::sleep(Duration::from_millis(10));
        }
        for p in &procs {
            kill(p, libc::SIGKILL);
        }
        child.wait()?;
        let end = Instant::now() + STOP_GRACE;
        while procs.iter().any(Proc::alive) && Instant::now() < end {
            thread::sleep(Duration::from_millis(10));
        }
        let left: Vec<u32> = procs.iter().filter(|p| p.alive()).map(|p| p.pid).collect();
        ensure!(
            left.is_empty(),
            "sshd in {}: processes {left:?} outlived SIGKILL",
            self.servers[i].ns
        );
        Ok(())
    }

    /// Runs `ssh [client options] [extra] -- target command` from namespace `ns`, bounded by
    /// `limit` (then killed), whatever its exit status.
    pub fn ssh(
        &self,
        ns: &str,
        extra: &[&str],
        target: &str,
        command: &str,
        limit: Duration,
    ) -> Result<Output> {
        let mut cmd = self.ssh_command(extra, target, command);
        cmd.stdin(Stdio::null());
        // A child forked from a thread inside `ns` starts there.
        let child = run_in(ns, || cmd.spawn())?.context("run ssh")?;
        wait_bounded(child, limit)
    }

    /// `ssh -T -o BatchMode=yes [client options] [extra] -- target command`, stdout and
    /// stderr piped, not started: the caller sets stdin and spawns it (in a namespace).
    pub fn ssh_command(&self, extra: &[&str], target: &str, command: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-T")
            .args(["-o", "BatchMode=yes"])
            .args(self.client_options())
            .args(extra)
            .arg("--")
            .arg(target)
            .arg(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

impl Drop for SshServers {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            if let Err(e) = self.stop(i) {
                eprintln!("sshd: {e:#}");
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("sshd: remove {}: {e}", self.dir.display());
        }
    }
}

static NEXT_USER: AtomicU32 = AtomicU32::new(0);

/// A throwaway local user (`useradd`) who can log in over SSH by key alone (its password field
/// is `*`: no password, yet not a locked account, which sshd without PAM would refuse), with a
/// home under /tmp. Dropping it removes the user, their group and home (`userdel --force
/// --remove`), also when the test failed; drop the [`SshServers`] first (declare them after
/// the user), which ends the user's sessions.
pub struct LoginUser {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
}

impl LoginUser {
    /// A new user named `PREFIX<pid>u<n>` (at most 32 characters: keep `prefix` short).
    pub fn new(prefix: &str) -> Result<Self> {
        let n = NEXT_USER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{}u{n}", std::process::id());
        ensure!(name.len() <= 32, "user name {name} is too long");
        let home = std::env::temp_dir().join(format!("{name}-home"));
        // The guard exists before useradd runs: a half-made user goes too.
        let mut user = Self {
            name,
            uid: u32::MAX,
            home,
        };
        let out = Command::new("useradd")
            .args(["--create-home", "--user-group", "--shell", "/bin/sh"])
            .args(["--password", "*", "--home-dir"])
            .arg(&user.home)
            .arg(&user.name)
            .stdin(Stdio::null())
            .output()
            .context("run useradd (install passwd)")?;
        ensure!(
            out.status.success(),
            "useradd {}: {}",
            user.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        user.uid = uid_of(&user.name)?;
        Ok(user)
    }

    fn exists(&self) -> bool {
        uid_of(&self.name).is_ok()
    }
}

/// A user's uid (`id -u NAME`).
fn uid_of(name: &str) -> Result<u32> {
    let out = Command::new("id")
        .args(["-u", name])
        .stdin(Stdio::null())
        .output()
        .context("run id")?;
    ensure!(out.status.success(), "no user {name}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

impl Drop for LoginUser {
    fn drop(&mut self) {
        if self.exists() {
            match Command::new("userdel")
                .args(["--force", "--remove", &self.name])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status()
            {
                Ok(st) if st.success() || !self.exists() => {}
                Ok(st) => eprintln!("userdel {}: {st}", self.name),
                Err(e) => eprintln!("userdel {}: {e}", self.name),
            }
        }
        if self.home.exists()
            && let Err(e) = fs::remove_dir_all(&self.home)
        {
            eprintln!("remove {}: {e}", self.home.display());
        }
    }
}

/// Where sudo reads drop-in rules (Debian's /etc/sudoers includes the directory).
const SUDOERS_DIR: &str = "/etc/sudoers.d";

/// A sudoers drop-in that lets `user` run one command as root without a password: the file is
/// checked with `visudo -cf` before it is put in place (a broken one would break sudo for
/// everyone), and removed on drop. Its name has no dot, which sudo would skip.
pub struct SudoRule {
    pub path: PathBuf,
}

impl SudoRule {
    pub fn new(user: &LoginUser, command: &Path) -> Result<Self> {
        ensure!(
            command.is_absolute(),
            "{}: sudoers needs an absolute path",
            command.display()
        );
        let cmd = command.to_str().context("command path is not UTF-8")?;
        ensure!(
            !cmd.contains(|c: char| c.is_whitespace() || ",:=\\".contains(c)),
            "{cmd}: a path sudoers would need escaped"
        );
        let n = NEXT_USER.fetch_add(1, Ordering::Relaxed);
        let name = format!("netfault-test-{}-{n}", std::process::id());
        let staged = std::env::temp_dir().join(&name);
        fs::write(
            &staged,
            format!("{} ALL=(root) NOPASSWD: {cmd}\n", user.name),
        )?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o440))?;
        let check = Command::new("visudo")
            .arg("-cf")
            .arg(&staged)
            .stdin(Stdio::null())
            .output();
        let check = match check {
            Ok(c) => c,
            Err(e) => {
                fs::remove_file(&staged).ok();
                bail!("run visudo (install sudo: scripts/setup.sh): {e}");
            }
        };
        if !check.status.success() {
            fs::remove_file(&staged).ok();
            bail!(
                "visudo -cf: {}",
                String::from_utf8_lossy(&check.stdout).trim()
            );
        }
        let path = Path::new(SUDOERS_DIR).join(&name);
        // Copied, not renamed: /tmp may be another filesystem.
        let rule = Self { path };
        let placed = fs::copy(&staged, &rule.path)
            .and_then(|_| fs::set_permissions(&rule.path, fs::Permissions::from_mode(0o440)));
        fs::remove_file(&staged).ok();
        placed.with_context(|| format!("write {}", rule.path.display()))?;
        Ok(rule)
    }
}

impl Drop for SudoRule {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("remove {}: {e}", self.path.display());
        }
    }
}
