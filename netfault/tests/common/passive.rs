//! Passive `measure` driven from tests: started in the background, known to be attached when
//! it says so on stderr (whatever the kernel: tcx or clsact), and a request-response TCP flow
//! for it to measure.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use netfault_lab::lab::{Host, Netfault, run_in};

/// What `measure` says on stderr once its programs are attached.
pub const WATCHING: &str = "measure: watching TCP round trips on";

/// A passive `measure --json` under way.
pub struct Measuring {
    child: Child,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
}

impl Measuring {
    /// Starts `netfault --netns NS measure --json ARGS` and returns once it is attached
    /// (bounded: the verifier under TCG takes seconds).
    pub fn start(nf: &Netfault, ns: &str, args: &[&str]) -> Measuring {
        let mut child = Command::new(&nf.bin)
            .env_remove("SSH_CONNECTION")
            .args(["--netns", ns, "measure", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run netfault measure");
        let mut out = child.stdout.take().expect("stdout");
        let stdout = thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        let err = BufReader::new(child.stderr.take().expect("stderr"));
        let stderr = thread::spawn(move || {
            let mut all = String::new();
            for line in err.lines().map_while(Result::ok) {
                if line.starts_with(WATCHING) {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let mut m = Measuring {
            child,
            stdout,
            stderr,
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = m.child.kill();
            let _ = m.child.wait();
            panic!(
                "measure did not attach: {}",
                m.stderr.join().unwrap_or_default()
            );
        }
        m
    }

    /// Waits (bounded) for the end; the `peers` array of its document.
    pub fn finish(mut self) -> Vec<serde_json::Value> {
        let end = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("measure did not end");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let out = self.stdout.join().expect("stdout");
        let err = self.stderr.join().expect("stderr");
        assert!(status.success(), "measure: {status}: {err}");
        let doc: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        doc["peers"].as_array().expect("peers").clone()
    }
}

pub fn connect(from: &Host, to: SocketAddr) -> TcpStream {
    run_in(&from.ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })
    .expect("namespace")
    .expect("connect")
}

/// A request-response TCP flow from `a` to `to` (64 bytes each way, then 2 ms of quiet, so
/// each request carries a TSval of its own) for `d`; the client socket, still open, and the
/// exchanges made.
pub fn ping_pong(a: &Host, to: SocketAddr, d: Duration) -> (TcpStream, u32) {
    let mut s = connect(a, to);
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let end = Instant::now() + d;
    let (mut buf, mut n) = ([7u8; 64], 0);
    while Instant::now() < end {
        s.write_all(&buf).expect("request");
        s.read_exact(&mut buf).expect("response");
        n += 1;
        thread::sleep(Duration::from_millis(2));
    }
    (s, n)
}

/// The report of `peer` from `source` in a `peers` array.
pub fn entry<'a>(
    peers: &'a [serde_json::Value],
    peer: IpAddr,
    source: &str,
) -> &'a serde_json::Value {
    peers
        .iter()
        .find(|p| p["peer"] == peer.to_string() && p["source"] == source)
        .unwrap_or_else(|| panic!("no {source} report for {peer}: {peers:?}"))
}

pub fn p50(r: &serde_json::Value) -> f64 {
    r["rtt_us"]["p50"].as_f64().expect("p50")
}
