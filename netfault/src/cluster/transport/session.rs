//! Persistent node sessions for the SSH transport: one `netfault node session` per node for
//! the coordinator's life, each operation a JSON line and its answer, not a remote command.
//!
//! ```text
//! node:  {"session": 1}                                   (its greeting, once)
//! coord: {"op": "apply", "request": {"plan": ..., "ttl": ...}}
//! node:  {"names": [...]}           or {"error": "...", "exit": 2}
//! coord: {"op": "heal", "request": "pick"}
//! node:  {"partitions": [...]}                            (under the node's lock)
//! coord: {"partitions": ["halves.from-n3.v4", ...]}
//! node:  {"names": [...]}
//! ```
//!
//! - The node runs each request as `netfault node OP` would ([`ssh::serve`]): same checks, same
//!   lock, opened per request and released after it, so nothing is held between requests. A
//!   failed request answers `{"error", "exit"}` (2: bad input, nothing changed) and the session
//!   goes on; the coordinator closing its end (stdin) ends it.
//! - The coordinator keeps idle sessions per node ([`Sessions`]) and starts another when all are
//!   busy (a `cluster run`'s lease renewal beside a measurement): each is a session on the
//!   node's shared connection ([`super::mux`]), so a command still makes one connection per
//!   node. A session is started by the mux's keeper thread (its `PR_SET_PDEATHSIG` follows the
//!   thread that forked, and the node workers are short-lived), and dies with the coordinator.
//! - A session that times out or breaks mid-answer is killed, never reused; a node whose
//!   netfault has no `node session` (an older build: it exits before greeting) is driven by
//!   one remote command per operation, as before.
use std::{
    io::{self, BufRead as _, Read as _, Write as _},
    process::{Child, ChildStdin, ExitStatus},
    sync::{Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{
    NodeError,
    ssh::{self, DeadlineStdin, MAX_ANSWER, MAX_REQUEST, MAX_STDERR, Op, SshError, wire},
};

/// The protocol's version, in the greeting.
pub const VERSION: u32 = 1;

/// The node's first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub session: u32,
}

/// One request in a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub op: String,
    pub request: serde_json::Value,
}

impl Envelope {
    pub fn new(op: Op, request: &impl Serialize) -> Result<Self, serde_json::Error> {
        Ok(Self {
            op: op.as_str().to_string(),
            request: serde_json::to_value(request)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The node's side: `netfault node session`
// ---------------------------------------------------------------------------------------------

/// An input whose reads may be bounded: while a request is served (a `heal` waits for the
/// coordinator's pick under the node's lock), not while the session waits for the next one.
pub trait Bounded: io::BufRead {
    fn bound(&mut self, limit: Option<Duration>);
}

impl Bounded for io::BufReader<DeadlineStdin> {
    fn bound(&mut self, limit: Option<Duration>) {
        self.get_mut().bound(limit);
    }
}

impl<T: AsRef<[u8]>> Bounded for io::Cursor<T> {
    fn bound(&mut self, _: Option<Duration>) {}
}

/// `netfault node session`: greets, then serves requests line by line until the coordinator
/// closes its end. Errors of a request are its answer; only a broken output ends the session.
pub fn serve_session(
    input: &mut dyn Bounded,
    output: &mut dyn io::Write,
    netns: Option<&str>,
) -> io::Result<()> {
    let hello = serde_json::to_string(&Hello { session: VERSION }).map_err(io::Error::other)?;
    writeln!(output, "{hello}")?;
    output.flush()?;
    loop {
        input.bound(None);
        let mut line = String::new();
        if input.take(MAX_REQUEST).read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        input.bound(Some(ssh::CALL_LIMIT));
        let served = envelope(&line)
            .and_then(|(op, text)| ssh::serve_request(op, &text, &mut *input, output, netns));
        if let Err(e) = served {
            writeln!(output, "{}", ssh::failure(&e))?;
        }
        output.flush()?;
    }
}

/// The operation and request text of a session's line; bad input names the key.
fn envelope(line: &str) -> Result<(Op, String), NodeError> {
    let bad = |key: &str, why: String| {
        NodeError::Control(crate::control::Error::Usage(crate::spec::SpecError::new(
            key, why,
        )))
    };
    let e: Envelope = serde_json::from_str(line)
        .map_err(|e| bad("stdin", format!("not a `node session` request: {e}")))?;
    let op = Op::from_name(&e.op).ok_or_else(|| bad("op", format!("no operation {:?}", e.op)))?;
    Ok((op, e.request.to_string()))
}

// ---------------------------------------------------------------------------------------------
// The coordinator's side
// ---------------------------------------------------------------------------------------------

/// A running ssh: its stdin, its stdout's lines as they come (at most [`MAX_ANSWER`] bytes in
/// all, read by a thread of its own), and its stderr (at most [`MAX_STDERR`], collected by
/// another). A persistent `netfault node session`, or one operation's remote command
/// ([`ssh`]'s `Session`). Dropped before it ended, it is killed.
pub(super) struct Live {
    pub(super) child: Child,
    pub(super) stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    reader: Option<thread::JoinHandle<()>>,
    errors: Option<thread::JoinHandle<Vec<u8>>>,
}

/// Why an exchange did not give its answer.
pub(super) enum Broke {
    /// The node answered a failure: the session is fine.
    Remote(SshError),
    /// No line within the deadline: the session is killed.
    Timeout,
    /// The session ended (ssh or the remote exited): its exit says why.
    Closed,
    /// A line that is not the answer: the session is killed (its framing is unknown).
    Unreadable(SshError),
}

impl Live {
    /// Takes the pipes of a just spawned `child`.
    pub(super) fn new(mut child: Child) -> Self {
        let (tx, lines) = mpsc::channel::<String>();
        let stdout = child.stdout.take();
        let reader = thread::spawn(move || {
            if let Some(o) = stdout {
                for l in io::BufReader::new(o.take(MAX_ANSWER)).lines() {
                    let Ok(l) = l else { break };
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = child.stderr.take();
        let errors = thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(e) = stderr {
                let _ = e.take(MAX_STDERR).read_to_end(&mut b);
            }
            b
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            reader: Some(reader),
            errors: Some(errors),
        }
    }

    /// Writes one JSON line; a write that fails (ssh or the remote exited: its exit status
    /// says why) closes stdin, and shows as the end at the next read.
    pub(super) fn send(&mut self, v: &impl Serialize) {
        if let (Some(w), Ok(mut b)) = (self.stdin.as_mut(), serde_json::to_vec(v)) {
            b.push(b'\n');
            if w.write_all(&b).and_then(|()| w.flush()).is_err() {
                self.stdin = None;
            }
        }
    }

    /// Sends `request` as a session's `op`.
    pub(super) fn request(&mut self, op: Op, request: &impl Serialize) -> Result<(), Broke> {
        let e = Envelope::new(op, request)
            .map_err(|e| Broke::Remote(SshError::Io(io::Error::other(e))))?;
        self.send(&e);
        Ok(())
    }

    /// The next line, by `deadline`.
    pub(super) fn line(&mut self, deadline: Instant) -> Result<String, Broke> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => Ok(l),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Broke::Timeout),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Broke::Closed),
        }
    }

    /// Waits for the reading threads (ssh has exited or was killed): what it wrote on stderr.
    pub(super) fn join_pipes(&mut self) -> Vec<u8> {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.errors
            .take()
            .and_then(|e| e.join().ok())
            .unwrap_or_default()
    }

    /// The next line as `op`'s answer: `T`, or the node's failure.
    pub(super) fn answer<T: DeserializeOwned>(
        &mut self,
        op: Op,
        deadline: Instant,
    ) -> Result<T, Broke> {
        let text = self.line(deadline)?;
        parse_answer(op, &text)
    }

    /// Closes its stdin (the node ends the session), waits at most `grace`, then kills it:
    /// how it exited and what ssh wrote on stderr.
    pub(super) fn end(mut self, grace: Duration) -> (Option<ExitStatus>, Vec<u8>) {
        self.stdin = None;
        let end = Instant::now() + grace;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(2)),
                _ => {
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
            }
        };
        (status, self.join_pipes())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // Not ended (dropped with its pool, or an early return): no ssh left running.
        if self.reader.is_some() {
            self.stdin = None;
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A line as `op`'s answer.
pub(super) fn parse_answer<T: DeserializeOwned>(op: Op, text: &str) -> Result<T, Broke> {
    if let Ok(f) = serde_json::from_str::<wire::Failure>(text) {
        return Err(Broke::Remote(SshError::Remote {
            op: op.as_str(),
            exit: f.exit,
            message: f.error,
        }));
    }
    serde_json::from_str(text).map_err(|e| {
        Broke::Unreadable(SshError::Answer {
            op: op.as_str(),
            why: e.to_string(),
            text: text.chars().take(200).collect(),
        })
    })
}

/// A node's idle sessions.
#[derive(Default)]
pub(super) struct Sessions {
    idle: Mutex<Vec<Live>>,
    /// The node's netfault has no `node session`: one remote command per operation.
    unsupported: std::sync::atomic::AtomicBool,
}

impl Sessions {
    pub(super) fn take(&self) -> Option<Live> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    pub(super) fn put(&self, live: Live) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(live);
    }

    pub(super) fn unsupported(&self) -> bool {
        self.unsupported.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn set_unsupported(&self) {
        self.unsupported
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        // Every session's stdin closed at once, then each waited for: they end together.
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(PoisonError::into_inner));
        let mut idle: Vec<Live> = idle
            .into_iter()
            .map(|mut l| {
                l.stdin = None;
                l
            })
            .collect();
        for l in idle.drain(..) {
            let _ = l.end(SESSION_END);
        }
    }
}

/// How long a session may take to end once its stdin is closed.
pub(super) const SESSION_END: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn session(input: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        serve_session(&mut io::Cursor::new(input.as_bytes()), &mut out, None).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_session_greets_answers_each_line_and_ends_with_its_input() {
        // Requests refused before any state is opened: each answers a failure, exit 2,
        // naming what was wrong, and the session goes on to the next.
        let lines = session(concat!(
            "{\"op\": \"apply\", \"request\": {\"plan\": 1}}\n",
            "\n",
            "{\"op\": \"reboot\", \"request\": {}}\n",
            "not json\n",
            "{\"op\": \"delete\", \"request\": {\"names\": 3}}\n",
        ));
        assert_eq!(lines[0], serde_json::json!({"session": VERSION}));
        assert_eq!(lines.len(), 5, "{lines:?}");
        for l in &lines[1..] {
            assert_eq!(l["exit"], 2, "{l}");
        }
        assert!(lines[1]["error"].as_str().unwrap().contains("node apply"));
        assert!(lines[2]["error"].as_str().unwrap().contains("op"));
        assert!(lines[2]["error"].as_str().unwrap().contains("reboot"));
        assert!(lines[3]["error"].as_str().unwrap().contains("node session"));
        assert!(lines[4]["error"].as_str().unwrap().contains("node delete"));
        // Nothing but the greeting when the coordinator sends nothing.
        assert_eq!(session(""), vec![serde_json::json!({"session": VERSION})]);
    }

    #[test]
    fn answers_failures_and_garbage_are_told_apart() {
        let ok: Result<wire::Names, Broke> = parse_answer(Op::Delete, r#"{"names": ["a"]}"#);
        assert!(matches!(ok, Ok(n) if n.names == ["a"]));
        let failed: Result<wire::Names, Broke> =
            parse_answer(Op::Delete, r#"{"error": "no", "exit": 2}"#);
        assert!(matches!(
            failed,
            Err(Broke::Remote(SshError::Remote { exit: 2, .. }))
        ));
        let junk: Result<wire::Names, Broke> = parse_answer(Op::Delete, "Welcome!");
        assert!(matches!(junk, Err(Broke::Unreadable(_))));
    }

    #[test]
    fn envelopes_round_trip() {
        let e = Envelope::new(Op::Heal, &wire::Heal::Pick).unwrap();
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"op":"heal","request":"pick"}"#);
        let (op, req) = envelope(&text).unwrap();
        assert_eq!(op, Op::Heal);
        assert_eq!(req, "\"pick\"");
    }
}
