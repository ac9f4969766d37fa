//! The SSH transport: the OpenSSH client binary runs netfault's hidden plumbing subcommand on
//! the node,
//!
//! ```text
//! ssh -T -o BatchMode=yes [ssh_options] -o ConnectTimeout=5 ... -- TARGET 'NETFAULT' node OP
//! ```
//!
//! the request as JSON on its stdin, the answer as JSON on its stdout ([`wire`]). The remote
//! `netfault node OP` ([`serve`]) runs [`local`] on the node's pinned-mode controller, so a
//! request does the same thing whichever transport brought it.
//!
//! - One connection per node for the coordinator's life: each operation is a session on the
//!   node's OpenSSH master (`-o ControlPath=... -o ControlMaster=no`), opened by its first
//!   operation ([`mux`]); without one (it failed, or the node's options choose sharing
//!   themselves) the operation connects on its own.
//! - No TTY and no prompt (`BatchMode`): a refused key or an unknown host key fails at once.
//!   The connection is bounded by `ConnectTimeout` (5 s) and a stuck session by `ServerAlive`
//!   probes (both overridable in `ssh_options`, which come first and so win); a call by
//!   [`CALL_LIMIT`], after which ssh is killed. ssh dies with the thread that waits for it
//!   (`PR_SET_PDEATHSIG`), so a coordinator that exits leaves no client behind.
//! - Errors keep their origin ([`SshError`]): ssh's own (exit 255: unreachable, refused key)
//!   with ssh's message; the remote netfault's with its exit status (2: bad input, nothing
//!   changed) and message, read from the JSON it writes on stdout; any other exit (127: the
//!   remote binary is not there) with the remote shell's message.
//! - Heal: the coordinator's selection is a closure, which cannot cross the wire. In one
//!   session (`"pick"`), under the node's lock, the node lists its partitions, the coordinator
//!   picks among them, and the node deletes the picked names (`{"partitions": [...]}`).
//! - State: the remote finds the state `netfault --netns NS` uses when its sshd runs inside a
//!   named namespace ([`netns::own_name`]), the host's otherwise.
use std::{
    io::{self, BufRead as _, Read as _},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};

use super::{
    LiveFault, NodeError, NodePlan, NodeState, NodeTransport,
    mux::{self, Mux},
    session::{self, Broke, Live, Sessions},
};
use crate::{
    cluster::local,
    control::{self, Ctl, netns},
    pause::node as pause,
    spec::{SpecError, Ttl},
};

/// How long one call may take, connection included; then ssh is killed. Longer than the
/// coordinator's deadline: a late answer still reaches the worker, which undoes it.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);
/// ssh's `ConnectTimeout`, unless the node's options set one.
pub const CONNECT_TIMEOUT_S: u32 = 5;
/// The most either side reads of the other's output.
pub(super) const MAX_ANSWER: u64 = 16 << 20;
pub(super) const MAX_STDERR: u64 = 64 << 10;

/// The operations of `netfault node`, one per [`NodeTransport`] method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Apply,
    Delete,
    Heal,
    Renew,
    State,
    /// Probe peers from the node (`cluster measure`): no state opened, no lock taken.
    Measure,
    /// Start a pause on the node's host (`cluster pause`): no state opened, no lock taken.
    Pause,
    /// The live pauses on the node's host.
    Pauses,
    /// End pauses by name.
    Resume,
}

impl Op {
    const ALL: [Op; 9] = [
        Op::Apply,
        Op::Delete,
        Op::Heal,
        Op::Renew,
        Op::State,
        Op::Measure,
        Op::Pause,
        Op::Pauses,
        Op::Resume,
    ];

    /// The operation named `name` (as [`as_str`](Self::as_str) gives it).
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Apply => "apply",
            Op::Delete => "delete",
            Op::Heal => "heal",
            Op::Renew => "renew",
            Op::State => "state",
            Op::Measure => "measure",
            Op::Pause => "pause",
            Op::Pauses => "pauses",
            Op::Resume => "resume",
        }
    }
}

/// What crosses the wire: requests on the remote's stdin, answers on its stdout.
pub mod wire {
    use serde::{Deserialize, Serialize};

    use super::{LiveFault, NodePlan, Ttl};

    /// `apply`: attach, protect, add (one publish).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Apply {
        pub plan: NodePlan,
        pub ttl: Ttl,
    }

    /// `delete`: entries of any kind, by name.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Delete {
        pub names: Vec<String>,
    }

    /// `heal`, one JSON document per line: every partition, those named, or `"pick"`: the
    /// node answers with its partitions ([`Partitions`]) and then reads the names to delete
    /// (`{"partitions": [...]}`), all under its lock.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase", deny_unknown_fields)]
    pub enum Heal {
        All,
        Partitions(Vec<String>),
        Pick,
    }

    /// Every partition entry a node holds, live or expired (what `"pick"` picks from).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Partitions {
        pub partitions: Vec<String>,
    }

    /// `renew`: a new lifetime, from now, for the entries named.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Renew {
        pub names: Vec<String>,
        pub ttl: Ttl,
    }

    /// The answer of `apply`, `delete`, `heal` and `renew`: the names acted on.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Names {
        pub names: Vec<String>,
    }

    /// The answer of `state`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct State {
        pub attached: Vec<String>,
        /// Live faults (not protections).
        pub faults: Vec<LiveFault>,
        /// Every partition entry, live or expired: what `heal` picks from.
        pub partitions: Vec<String>,
    }

    /// What the remote writes on stdout when it fails, before exiting with `exit`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Failure {
        pub error: String,
        /// 2: bad input, nothing changed; 1: anything else.
        pub exit: u8,
    }
}

/// What went wrong driving a node over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("run ssh (is the OpenSSH client installed?): {0}")]
    Spawn(#[source] io::Error),
    #[error("ssh: {0}")]
    Io(#[source] io::Error),
    /// ssh itself failed (exit 255): no connection, refused key, unknown host key.
    #[error("ssh {target}: {message}")]
    Ssh { target: String, message: String },
    /// The remote netfault ran and failed; its exit status says how (2: bad input).
    #[error("remote `netfault node {op}` failed (exit {exit}): {message}")]
    Remote {
        op: &'static str,
        exit: u8,
        message: String,
    },
    /// The remote command exited without netfault's answer (127: not found).
    #[error("remote command `{command}` {status}: {message}")]
    Exit {
        command: String,
        status: String,
        message: String,
    },
    #[error("remote `netfault node {op}`: unreadable answer ({why}): {text}")]
    Answer {
        op: &'static str,
        why: String,
        text: String,
    },
    #[error("ssh {target}: no answer within {limit:?}; ssh was killed")]
    Timeout { target: String, limit: Duration },
}

/// A node reached by `ssh [options] target`.
pub struct Ssh {
    /// `user@host` or `host`.
    pub target: String,
    /// Passed to ssh before the target, verbatim.
    pub options: Vec<String>,
    /// The remote binary; `None`: `netfault` on the remote PATH.
    pub netfault: Option<String>,
    /// The coordinator's shared connections, and this node's slot among them; `None`: every
    /// operation connects on its own.
    mux: Option<(Arc<Mux>, usize)>,
    master: Mutex<Master>,
    /// Whose keeper thread starts the node's persistent sessions; `None`: one remote command
    /// per operation.
    keeper: Option<Arc<Mux>>,
    sessions: Sessions,
}

/// Why a node has no persistent session.
enum NoSession {
    /// Its netfault has none (it exited before greeting), or the coordinator is ending: one
    /// remote command per operation.
    Fallback,
    /// ssh failed (no connection, a refused key) or the greeting did not come in time.
    Failed(SshError),
}

/// This node's shared connection.
enum Master {
    /// Not asked for yet: the first operation opens it.
    Unopened,
    /// Its control path.
    Open(PathBuf),
    /// None (it failed, or the coordinator is ending): each operation connects on its own.
    Direct,
}

/// How long a master may take to connect and authenticate before the node's operations
/// connect on their own: ssh's connect timeout and some.
pub const MASTER_LIMIT: Duration = Duration::from_secs(CONNECT_TIMEOUT_S as u64 + 5);

/// `s` as one word of a POSIX shell command (the remote shell reads ssh's command line).
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl Ssh {
    /// A node whose operations each connect on their own (see [`shared`](Self::shared)).
    pub fn new(target: String, options: Vec<String>, netfault: Option<String>) -> Self {
        Self {
            target,
            options,
            netfault,
            mux: None,
            master: Mutex::new(Master::Direct),
            keeper: None,
            sessions: Sessions::default(),
        }
    }

    /// The node's operations share one connection, the master `slot` of `mux`, unless its
    /// `ssh_options` choose sharing themselves (ControlMaster, ControlPath, ControlPersist,
    /// `-M`, `-S`): theirs are left alone.
    /// Either way, its operations go over one persistent session ([`session`]), started by
    /// `mux`'s keeper thread.
    pub fn shared(mut self, mux: Arc<Mux>, slot: usize) -> Self {
        self.keeper = Some(Arc::clone(&mux));
        if !mux::sets_sharing(&self.options) {
            self.mux = Some((mux, slot));
            self.master = Mutex::new(Master::Unopened);
        }
        self
    }

    /// The control path of the node's master, opened on the first call (under the node's
    /// lock: a second operation waits for it); `None`: connect on its own.
    fn control_path(&self) -> Option<PathBuf> {
        let (mux, slot) = self.mux.as_ref()?;
        let mut g = self.master.lock().unwrap_or_else(PoisonError::into_inner);
        match &*g {
            Master::Open(p) => return Some(p.clone()),
            Master::Direct => return None,
            Master::Unopened => {}
        }
        match mux.open(*slot, &self.base_args(), MASTER_LIMIT) {
            Ok(p) => {
                *g = Master::Open(p.clone());
                Some(p)
            }
            Err(why) => {
                if let mux::NoMaster::Failed(why) = why {
                    log::warn!(
                        "ssh {}: no shared connection ({why}); each operation connects on its own",
                        self.target
                    );
                }
                *g = Master::Direct;
                None
            }
        }
    }

    /// The command the remote shell runs.
    pub fn remote_command(&self, op: Op) -> String {
        self.node_command(op.as_str())
    }

    /// The command of a persistent session.
    pub fn session_command(&self) -> String {
        self.node_command("session")
    }

    /// `'NETFAULT' node SUB`.
    fn node_command(&self, sub: &str) -> String {
        format!(
            "{} node {sub}",
            shell_quote(self.netfault.as_deref().unwrap_or("netfault"))
        )
    }

    /// ssh's arguments: BatchMode first (so nothing can turn prompts back on), the node's
    /// options, then defaults they may override (ssh keeps an option's first value).
    pub fn args(&self, op: Op) -> Vec<String> {
        let mut a = vec!["-T".to_string()];
        a.extend(self.base_args());
        a.push(self.remote_command(op));
        a
    }

    /// [`args`](Self::args) without the command (and `-T`): what the master runs with too.
    fn base_args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-o", "BatchMode=yes"]
            .into_iter()
            .map(String::from)
            .collect();
        a.extend(self.options.iter().cloned());
        for o in [
            format!("ConnectTimeout={CONNECT_TIMEOUT_S}"),
            "ServerAliveInterval=2".into(),
            "ServerAliveCountMax=3".into(),
            "LogLevel=ERROR".into(),
        ] {
            a.push("-o".into());
            a.push(o);
        }
        a.push("--".into());
        a.push(self.target.clone());
        a
    }

    /// Runs `op` with `request` on the node; returns its answer.
    fn call<T: DeserializeOwned>(&self, op: Op, request: &impl Serialize) -> Result<T, SshError> {
        self.call_within(op, request, CALL_LIMIT)
    }

    fn call_within<T: DeserializeOwned>(
        &self,
        op: Op,
        request: &impl Serialize,
        limit: Duration,
    ) -> Result<T, SshError> {
        if let Some(r) = self.in_session(limit, |live, deadline| {
            live.request(op, request)?;
            live.answer(op, deadline)
        }) {
            return r;
        }
        let mut s = self.session_within(op, limit)?;
        s.send(request);
        s.finish(self)
    }

    /// Runs `exchange` (by a deadline `limit` from now) in one of the node's persistent
    /// sessions, idle or started for it; `None`: the node has none, the caller runs a remote
    /// command instead.
    fn in_session<T>(
        &self,
        limit: Duration,
        exchange: impl FnOnce(&mut Live, Instant) -> Result<T, Broke>,
    ) -> Option<Result<T, SshError>> {
        let keeper = self.keeper.as_ref()?;
        if self.sessions.unsupported() {
            return None;
        }
        let mut live = match self.sessions.take() {
            Some(l) => l,
            None => match self.start_session(keeper, limit) {
                Ok(l) => l,
                Err(NoSession::Fallback) => return None,
                Err(NoSession::Failed(e)) => return Some(Err(e)),
            },
        };
        Some(match exchange(&mut live, Instant::now() + limit) {
            Ok(v) => {
                self.sessions.put(live);
                Ok(v)
            }
            Err(Broke::Remote(e)) => {
                self.sessions.put(live);
                Err(e)
            }
            Err(Broke::Unreadable(e)) => {
                let _ = live.end(Duration::ZERO);
                Err(e)
            }
            Err(Broke::Timeout) => {
                let _ = live.end(Duration::ZERO);
                Err(SshError::Timeout {
                    target: self.target.clone(),
                    limit,
                })
            }
            Err(Broke::Closed) => {
                let (status, stderr) = live.end(session::SESSION_END);
                Err(self.ended(status, &stderr))
            }
        })
    }

    /// Starts a persistent session on the node (from `keeper`'s thread) and waits at most
    /// `limit` for its greeting; lines before it (a remote shell's start-up files) are skipped.
    fn start_session(&self, keeper: &Mux, limit: Duration) -> Result<Live, NoSession> {
        let cmd = self.command(&self.session_command());
        let Ok(child) = keeper.spawn(cmd) else {
            // The coordinator is ending (or ssh cannot run: the remote command says so).
            return Err(NoSession::Fallback);
        };
        let mut live = Live::new(child);
        let deadline = Instant::now() + limit;
        loop {
            match live.line(deadline) {
                Ok(l) => match serde_json::from_str::<session::Hello>(&l) {
                    Ok(h) if h.session == session::VERSION => return Ok(live),
                    // Another version's greeting: remote commands, which every version has.
                    Ok(_) => {
                        let _ = live.end(session::SESSION_END);
                        self.sessions.set_unsupported();
                        return Err(NoSession::Fallback);
                    }
                    Err(_) => {}
                },
                Err(Broke::Timeout) => {
                    let _ = live.end(Duration::ZERO);
                    return Err(NoSession::Failed(SshError::Timeout {
                        target: self.target.clone(),
                        limit,
                    }));
                }
                Err(_) => {
                    let (status, stderr) = live.end(session::SESSION_END);
                    if status.and_then(|s| s.code()) == Some(255) {
                        return Err(NoSession::Failed(self.ended(status, &stderr)));
                    }
                    // An older netfault (no `node session`), or none at all: the remote
                    // command of each operation says which.
                    log::debug!(
                        "ssh {}: no persistent session ({}); one remote command per operation",
                        self.target,
                        last_lines(&stderr)
                    );
                    self.sessions.set_unsupported();
                    return Err(NoSession::Fallback);
                }
            }
        }
    }

    /// The error of a session that ended: ssh's own (exit 255) or the remote command's.
    fn ended(&self, status: Option<ExitStatus>, stderr: &[u8]) -> SshError {
        match status.and_then(|s| s.code()) {
            Some(255) => SshError::Ssh {
                target: self.target.clone(),
                message: last_lines(stderr),
            },
            _ => SshError::Exit {
                command: self.session_command(),
                status: status.map_or_else(|| "did not end".into(), |s| s.to_string()),
                message: last_lines(stderr),
            },
        }
    }

    /// Starts ssh for `op`; the session is bounded by [`CALL_LIMIT`] from now.
    fn session(&self, op: Op) -> Result<Session, SshError> {
        self.session_within(op, CALL_LIMIT)
    }

    /// `ssh ... TARGET REMOTE`: on the node's master when it has one, no TTY, piped, in a
    /// process group of its own, dying with the thread that spawns it.
    fn command(&self, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        if let Some(p) = self.control_path() {
            // A session on the node's master; without it (it died), ssh connects on its own.
            cmd.arg("-o")
                .arg(mux::control_option(&p))
                .args(["-o", "ControlMaster=no"]);
        }
        cmd.arg("-T")
            .args(self.base_args())
            .arg(remote)
            // A Ctrl-C at the terminal is the coordinator's to handle (a run heals), not
            // ssh's: an operation in flight finishes.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                // ssh dies with the thread that spawned it: the coordinator's worker for one
                // operation, the mux's keeper for a persistent session.
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
        cmd
    }

    /// [`session`](Self::session), bounded by `limit`.
    fn session_within(&self, op: Op, limit: Duration) -> Result<Session, SshError> {
        let child = self
            .command(&self.remote_command(op))
            .spawn()
            .map_err(SshError::Spawn)?;
        Ok(Session {
            op,
            live: Live::new(child),
            seen: Vec::new(),
            deadline: Instant::now() + limit,
            limit,
            timed_out: false,
        })
    }
}

/// One ssh process: requests written line by line, answers read line by line, all within a
/// deadline (then ssh is killed).
struct Session {
    op: Op,
    live: Live,
    /// Every line read so far.
    seen: Vec<String>,
    deadline: Instant,
    /// The bound the deadline came from, for the timeout's message.
    limit: Duration,
    timed_out: bool,
}

impl Session {
    /// Writes one JSON line. A remote that exited early closed the pipe: its exit status says
    /// why, so a write error is not reported here. (Requests are small: the remote reads them
    /// whole before it writes, and ssh keeps reading its stdin meanwhile.)
    fn send(&mut self, v: &impl Serialize) {
        self.live.send(v);
    }

    /// The next line of the answer; `None` at its end or at the deadline.
    fn next_line(&mut self) -> Option<String> {
        match self.live.line(self.deadline) {
            Ok(l) => {
                self.seen.push(l.clone());
                Some(l)
            }
            Err(Broke::Timeout) => {
                self.timed_out = true;
                None
            }
            Err(_) => None,
        }
    }

    /// Closes stdin, reads the rest, waits for ssh: the answer of the session's operation.
    fn finish<T: DeserializeOwned>(mut self, node: &Ssh) -> Result<T, SshError> {
        self.live.stdin = None;
        while !self.timed_out && self.next_line().is_some() {}
        if self.timed_out {
            let _ = self.live.child.kill();
        }
        let status = self.live.child.wait().map_err(SshError::Io);
        let stderr = self.live.join_pipes();
        if self.timed_out {
            return Err(SshError::Timeout {
                target: node.target.clone(),
                limit: self.limit,
            });
        }
        let stdout = self.seen.join("\n");
        answer(
            self.op,
            &node.target,
            &node.remote_command(self.op),
            status?,
            stdout.as_bytes(),
            &stderr,
        )
    }
}

/// The last lines ssh or the remote shell wrote, for an error message.
fn last_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        "no message".into()
    } else {
        tail.join("; ")
    }
}

/// An ssh run's outcome as the answer of `op`, or the error it was.
pub fn answer<T: DeserializeOwned>(
    op: Op,
    target: &str,
    command: &str,
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<T, SshError> {
    let all = String::from_utf8_lossy(stdout);
    // netfault writes one line; a remote shell's start-up files might have written before it.
    let text = all
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("");
    if status.success() {
        return serde_json::from_str(text).map_err(|e| SshError::Answer {
            op: op.as_str(),
            why: e.to_string(),
            text: text.chars().take(200).collect(),
        });
    }
    // netfault's own failure, whatever its exit status.
    if let Ok(f) = serde_json::from_str::<wire::Failure>(text) {
        return Err(SshError::Remote {
            op: op.as_str(),
            exit: f.exit,
            message: f.error,
        });
    }
    match status.code() {
        Some(255) => Err(SshError::Ssh {
            target: target.to_string(),
            message: last_lines(stderr),
        }),
        _ => Err(SshError::Exit {
            command: command.to_string(),
            status: status.to_string(),
            message: last_lines(stderr),
        }),
    }
}

impl NodeTransport for Ssh {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn apply(&self, plan: &NodePlan, ttl: Ttl) -> Result<Vec<String>, NodeError> {
        let req = wire::Apply {
            plan: plan.clone(),
            ttl,
        };
        Ok(self.call::<wire::Names>(Op::Apply, &req)?.names)
    }

    fn delete(&self, names: &[String]) -> Result<Vec<String>, NodeError> {
        let req = wire::Delete {
            names: names.to_vec(),
        };
        Ok(self.call::<wire::Names>(Op::Delete, &req)?.names)
    }

    fn heal(&self, select: &(dyn Fn(&str) -> bool + Sync)) -> Result<Vec<String>, NodeError> {
        // One exchange under the node's lock: it lists its partitions, this side picks, it
        // deletes the picked ones.
        if let Some(r) = self.in_session(CALL_LIMIT, |live, deadline| {
            live.request(Op::Heal, &wire::Heal::Pick)?;
            let first = live.line(deadline)?;
            let Ok(wire::Partitions { partitions }) = serde_json::from_str(&first) else {
                // The node's failure (or not an answer at all).
                return session::parse_answer::<wire::Names>(Op::Heal, &first);
            };
            let picked: Vec<String> = partitions.into_iter().filter(|n| select(n)).collect();
            live.send(&wire::Heal::Partitions(picked));
            live.answer::<wire::Names>(Op::Heal, deadline)
        }) {
            return Ok(r?.names);
        }
        let mut s = self.session(Op::Heal)?;
        s.send(&wire::Heal::Pick);
        if let Some(line) = s.next_line()
            && let Ok(wire::Partitions { partitions }) = serde_json::from_str(&line)
        {
            let picked: Vec<String> = partitions.into_iter().filter(|n| select(n)).collect();
            s.send(&wire::Heal::Partitions(picked));
        }
        // Otherwise the node failed (its answer says why) or does not answer.
        Ok(s.finish::<wire::Names>(self)?.names)
    }

    fn renew(&self, names: &[String], ttl: Ttl) -> Result<Vec<String>, NodeError> {
        let req = wire::Renew {
            names: names.to_vec(),
            ttl,
        };
        Ok(self.call::<wire::Names>(Op::Renew, &req)?.names)
    }

    fn state(&self) -> Result<NodeState, NodeError> {
        let st: wire::State = self.call(Op::State, &serde_json::json!({}))?;
        Ok(NodeState {
            attached: st.attached,
            faults: st.faults,
        })
    }

    fn measure(
        &self,
        r: &super::MeasureRequest,
    ) -> Result<Option<Vec<crate::measure::Report>>, NodeError> {
        let body = super::agent::MeasureBody::of(r);
        let limit = CALL_LIMIT + r.length();
        let a: super::agent::MeasureAnswer = self.call_within(Op::Measure, &body, limit)?;
        Ok(Some(a.peers))
    }

    fn pause(&self, req: &pause::Request) -> Result<pause::Started, NodeError> {
        Ok(self.call(Op::Pause, req)?)
    }

    fn pauses(&self) -> Result<Vec<pause::View>, NodeError> {
        let v: super::agent::PausesView = self.call(Op::Pauses, &serde_json::json!({}))?;
        Ok(v.pauses)
    }

    fn resume(&self, names: &[String]) -> Result<Vec<String>, NodeError> {
        let req = wire::Delete {
            names: names.to_vec(),
        };
        Ok(self.call::<wire::Names>(Op::Resume, &req)?.names)
    }
}

// ---------------------------------------------------------------------------------------------
// The node's side: `netfault node OP`
// ---------------------------------------------------------------------------------------------

/// A request, checked before the node's state is opened (bad input changes nothing).
enum Request {
    Apply(wire::Apply),
    Delete(wire::Delete),
    Heal(wire::Heal),
    Renew(wire::Renew),
    State,
    Measure(super::agent::MeasureBody),
    Pause(pause::Request),
    Pauses,
    Resume(wire::Delete),
}

/// Bad input on stdin: exit 2, nothing changed.
fn bad_request(op: Op, why: impl std::fmt::Display) -> NodeError {
    NodeError::Control(control::Error::Usage(SpecError::new(
        "stdin",
        format!("not a `node {}` request: {why}", op.as_str()),
    )))
}

fn parse<T: DeserializeOwned>(op: Op, text: &str) -> Result<T, NodeError> {
    serde_json::from_str(text).map_err(|e| bad_request(op, e))
}

fn request(op: Op, text: &str) -> Result<Request, NodeError> {
    Ok(match op {
        Op::Apply => Request::Apply(parse(op, text)?),
        Op::Delete => Request::Delete(parse(op, text)?),
        Op::Heal => Request::Heal(parse(op, text)?),
        Op::Renew => Request::Renew(parse(op, text)?),
        Op::Measure => Request::Measure(parse(op, text)?),
        Op::Pause => Request::Pause(parse(op, text)?),
        Op::Resume => Request::Resume(parse(op, text)?),
        Op::Pauses if text.trim().is_empty() => Request::Pauses,
        Op::Pauses => {
            let _: serde_json::Map<String, serde_json::Value> = parse(op, text)?;
            Request::Pauses
        }
        // Nothing to say: an empty stdin or `{}`.
        Op::State if text.trim().is_empty() => Request::State,
        Op::State => {
            let _: serde_json::Map<String, serde_json::Value> = parse(op, text)?;
            Request::State
        }
    })
}

fn names(names: Vec<String>) -> Result<String, NodeError> {
    to_json(&wire::Names { names })
}

fn to_json(v: &impl Serialize) -> Result<String, NodeError> {
    serde_json::to_string(v).map_err(|e| {
        NodeError::Control(control::Error::Usage(SpecError::new(
            "stdout",
            e.to_string(),
        )))
    })
}

fn io_error(e: io::Error) -> NodeError {
    NodeError::Ssh(SshError::Io(e))
}

/// The most of stdin a request may take.
pub const MAX_REQUEST: u64 = 16 << 20;

/// `netfault node OP`: reads the request from `input` (the remote's stdin; for `heal`, one
/// line), checks it, opens the controller of the current namespace (state key `netns-NAME`
/// when `netns` names it), runs [`local`] and writes the answer on `output`. For `heal` with
/// `"pick"`, it writes the node's partitions first and reads the ones to delete, under the
/// lock.
pub fn serve(
    op: Op,
    input: &mut dyn io::BufRead,
    output: &mut dyn io::Write,
    netns: Option<&str>,
) -> Result<(), NodeError> {
    let mut text = String::new();
    let mut input = input.take(MAX_REQUEST);
    if op == Op::Heal {
        input.read_line(&mut text).map_err(io_error)?;
    } else {
        input.read_to_string(&mut text).map_err(io_error)?;
    }
    serve_request(op, &text, &mut input, output, netns)
}

/// [`serve`] of a request already read (`text`): `input` gives `heal`'s second line only.
pub(super) fn serve_request(
    op: Op,
    text: &str,
    input: &mut dyn io::BufRead,
    output: &mut dyn io::Write,
    netns: Option<&str>,
) -> Result<(), NodeError> {
    let req = request(op, text)?;
    if let Request::Measure(b) = req {
        // Probing needs the namespace only: no state, no lock.
        let peers = b.checked().map_err(|m| bad_request(op, m))?.run_here()?;
        let answer = to_json(&super::agent::MeasureAnswer { peers })?;
        return writeln!(output, "{answer}").map_err(io_error);
    }
    // Pauses are host-wide: no namespace state, no lock. The watchdog is a process of its
    // own on this host, in a session of its own: the SSH session's end does not end it.
    let store = crate::pause::Store::default();
    let answer = match &req {
        Request::Pause(r) => {
            crate::pause::sweep(&store);
            Some(to_json(&pause::start_request(
                &store,
                r,
                &crate::targets::container_cgroup_for_pause,
            )?)?)
        }
        Request::Pauses => Some(to_json(&super::agent::PausesView {
            pauses: pause::list(&store),
        })?),
        Request::Resume(d) => {
            let done = pause::resume(&store, Some(&d.names), true)?;
            Some(names(done.into_iter().map(|v| v.name).collect())?)
        }
        _ => None,
    };
    if let Some(answer) = answer {
        return writeln!(output, "{answer}").map_err(io_error);
    }
    let mut ctl = Ctl::open(netns)?;
    let answer = match req {
        Request::Apply(a) => names(local::apply(&mut ctl, &a.plan, a.ttl)?),
        Request::Delete(d) => names(local::delete(&mut ctl, &d.names)?),
        Request::Heal(h) => {
            let h = if h == wire::Heal::Pick {
                let list = to_json(&wire::Partitions {
                    partitions: local::partitions(&ctl),
                })?;
                writeln!(output, "{list}")
                    .and_then(|()| output.flush())
                    .map_err(io_error)?;
                let mut line = String::new();
                input.read_line(&mut line).map_err(io_error)?;
                match request(op, &line)? {
                    Request::Heal(h) if h != wire::Heal::Pick => h,
                    _ => {
                        return Err(bad_request(
                            op,
                            r#"after "pick", expected {"partitions": [...]}"#,
                        ));
                    }
                }
            } else {
                h
            };
            match h {
                wire::Heal::Partitions(p) => {
                    names(local::heal(&mut ctl, &|n: &str| p.iter().any(|x| x == n))?)
                }
                _ => names(local::heal(&mut ctl, &|_| true)?),
            }
        }
        Request::Renew(r) => names(local::renew(&mut ctl, &r.names, r.ttl)?),
        Request::Measure(_) | Request::Pause(_) | Request::Pauses | Request::Resume(_) => {
            unreachable!("answered above")
        }
        Request::State => {
            let st = local::state(&ctl);
            to_json(&wire::State {
                attached: st.attached,
                faults: st.faults,
                partitions: local::partitions(&ctl),
            })
        }
    }?;
    writeln!(output, "{answer}").map_err(io_error)
}

/// Stdin whose reads give up (TimedOut) at a deadline: a remote waiting for the
/// coordinator's next line, holding the node's lock, never waits for ever.
pub struct DeadlineStdin {
    /// `None`: reads wait as long as it takes (a session between requests).
    deadline: Option<Instant>,
}

impl DeadlineStdin {
    pub fn new(limit: Duration) -> Self {
        Self {
            deadline: Some(Instant::now() + limit),
        }
    }

    /// Reads give up `limit` from now; `None`: never.
    pub fn bound(&mut self, limit: Option<Duration>) {
        self.deadline = limit.map(|l| Instant::now() + l);
    }
}

impl io::Read for DeadlineStdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut p = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // poll(2) waits for ever with -1.
        let ms = self.deadline.map_or(-1, |d| {
            let left = d.saturating_duration_since(Instant::now());
            libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX)
        });
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request from the coordinator in time",
            ));
        }
        // SAFETY: a read into a buffer we own, of at most its length.
        let r = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// The exit status of a failed `netfault node`: 2 for bad input (nothing changed), 1 else.
pub fn exit_code(e: &NodeError) -> u8 {
    match e {
        NodeError::Control(c) if c.exit_code() == 2 => 2,
        NodeError::Netns(
            netns::NetnsError::Unknown(_)
            | netns::NetnsError::NoProcess(_)
            | netns::NetnsError::PidFile(_)
            | netns::NetnsError::Container(_),
        ) => 2,
        NodeError::Pause(p) if p.exit_code() == 2 => 2,
        _ => 1,
    }
}

/// The failure document `netfault node` writes on stdout.
pub fn failure(e: &NodeError) -> String {
    serde_json::json!({ "error": e.to_string(), "exit": exit_code(e) }).to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    fn node() -> Ssh {
        Ssh::new(
            "root@192.0.2.3".into(),
            vec![
                "-p".into(),
                "2222".into(),
                "-o".into(),
                "ConnectTimeout=9".into(),
            ],
            Some("/opt/net fault/netfault".into()),
        )
    }

    #[test]
    fn quoting_keeps_one_word() {
        assert_eq!(
            shell_quote("/usr/local/bin/netfault"),
            "/usr/local/bin/netfault"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_command_line_forbids_prompts_and_lets_options_override_defaults() {
        let a = node().args(Op::Apply);
        assert_eq!(&a[..3], ["-T", "-o", "BatchMode=yes"]);
        // The node's options before the defaults: ssh keeps the first value of an option.
        let mine = a.iter().position(|x| x == "ConnectTimeout=9").unwrap();
        let default = a.iter().position(|x| x == "ConnectTimeout=5").unwrap();
        assert!(mine < default, "{a:?}");
        let n = a.len();
        assert_eq!(a[n - 3], "--");
        assert_eq!(a[n - 2], "root@192.0.2.3");
        assert_eq!(a[n - 1], "'/opt/net fault/netfault' node apply");
        let mut plain = node();
        plain.netfault = None;
        assert_eq!(plain.remote_command(Op::State), "netfault node state");
    }

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn answers_and_errors_keep_their_origin() {
        let ok: wire::Names =
            answer(Op::Delete, "t", "c", exit(0), br#"{"names":["a"]}"#, b"").unwrap();
        assert_eq!(ok.names, ["a"]);
        let e = answer::<wire::Names>(
            Op::Apply,
            "root@192.0.2.3",
            "c",
            exit(255),
            b"",
            b"ssh: connect to host 192.0.2.3 port 22: Connection refused\n",
        )
        .unwrap_err();
        assert!(matches!(e, SshError::Ssh { .. }), "{e:?}");
        assert!(e.to_string().contains("Connection refused"), "{e}");
        let e = answer::<wire::Names>(
            Op::Apply,
            "t",
            "c",
            exit(2),
            br#"{"error":"invalid IFACE: no interface named 'eth9'","exit":2}"#,
            b"netfault: invalid IFACE\n",
        )
        .unwrap_err();
        match &e {
            SshError::Remote { exit, message, .. } => {
                assert_eq!(*exit, 2);
                assert!(message.contains("eth9"));
            }
            _ => panic!("{e:?}"),
        }
        let e = answer::<wire::Names>(
            Op::State,
            "t",
            "/nope node state",
            exit(127),
            b"",
            b"sh: 1: /nope: not found\n",
        )
        .unwrap_err();
        assert!(matches!(e, SshError::Exit { .. }), "{e:?}");
        assert!(
            e.to_string().contains("not found") && e.to_string().contains("127"),
            "{e}"
        );
        let e = answer::<wire::Names>(Op::State, "t", "c", exit(0), b"garbage", b"").unwrap_err();
        assert!(matches!(e, SshError::Answer { .. }), "{e:?}");
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_bad_input() {
        let h =
            serde_json::to_string(&wire::Heal::Partitions(vec!["x.from-n1.v4".into()])).unwrap();
        assert_eq!(h, r#"{"partitions":["x.from-n1.v4"]}"#);
        assert_eq!(serde_json::to_string(&wire::Heal::All).unwrap(), r#""all""#);
        assert_eq!(
            serde_json::to_string(&wire::Heal::Pick).unwrap(),
            r#""pick""#
        );
        // What the node lists is what it reads back.
        let p: wire::Partitions = serde_json::from_str(&h).unwrap();
        assert_eq!(p.partitions, ["x.from-n1.v4"]);
        assert!(matches!(request(Op::Heal, &h).unwrap(), Request::Heal(_)));
        assert!(matches!(request(Op::State, "").unwrap(), Request::State));
        assert!(matches!(request(Op::State, "{}").unwrap(), Request::State));
        for (op, bad) in [
            (Op::Apply, "{}"),
            (Op::Delete, r#"{"names":["a"],"extra":1}"#),
            (Op::Renew, r#"{"names":[]}"#),
            (Op::State, "[1]"),
        ] {
            let e = request(op, bad).err().unwrap();
            assert_eq!(exit_code(&e), 2, "{op:?} {bad}: {e}");
            assert!(e.to_string().contains("stdin"), "{e}");
        }
        let f: wire::Failure =
            serde_json::from_str(&failure(&request(Op::Apply, "nope").err().unwrap())).unwrap();
        assert_eq!(f.exit, 2);
    }
}
