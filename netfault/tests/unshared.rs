//! A process in a network namespace of its own that no name reaches (made with `unshare`, as a
//! container runtime or a test harness makes one, not under /run/netns), targeted with `--pid`:
//! a partition cuts it, a loss rule drops what its counters say, and once the process exits its
//! namespace's state and pins are removed by the next command.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use netfault_lab::lab::{self, Lab, RuleStats, Z_ALPHA_1E4, wilson_interval};

const NEAR: &str = "192.0.2.1";
const FAR: &str = "192.0.2.2";

fn nf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netfault"))
        .env_remove("SSH_CONNECTION")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn nf_ok(args: &[&str]) -> String {
    let o = nf(args);
    assert!(
        o.status.success(),
        "netfault {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ip(args: &[&str]) {
    lab::ip(args).unwrap();
}

fn ip_in_pid(pid: impl std::fmt::Display, args: &[&str]) {
    lab::ip_in_pid(pid, args).unwrap();
}

/// A `sleep` in a network namespace of its own (unshare(CLONE_NEWNET) before exec): no name
/// under /run/netns reaches it. Killed on drop, which takes the namespace with it.
struct Unshared(Child);

impl Unshared {
    fn start() -> Self {
        let mut c = Command::new("sleep");
        c.arg("120");
        // SAFETY: unshare is a plain syscall, async-signal-safe, run in the child before exec.
        unsafe {
            c.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self(c.spawn().expect("sleep in a namespace of its own"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn end(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Unshared {
    fn drop(&mut self) {
        self.end();
    }
}

/// Echo requests from the lab's namespace to the unshared one: (sent, answered).
fn ping(ns: &str, count: u32) -> (u32, u32) {
    let o = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-i", "0.005", "-W", "1",
        ])
        .args(["-c", &count.to_string(), FAR])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let n = |word: &str| -> u32 {
        let before = line.split(word).next().unwrap();
        before
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (n(" packets transmitted"), n(" received"))
}

fn stats(pid: &str, rule: &str) -> RuleStats {
    #[derive(serde::Deserialize)]
    struct Doc {
        rules: Vec<RuleStats>,
    }
    let doc: Doc = serde_json::from_str(&nf_ok(&["--pid", pid, "stats", "--json"])).unwrap();
    doc.rules
        .into_iter()
        .find(|r| r.name == rule)
        .unwrap_or_else(|| panic!("no rule {rule} in stats"))
}

#[test]
fn an_unnamed_namespace_is_cut_impaired_and_cleaned_up_after_its_process() {
    let mut lab = Lab::new("nfunsh").unwrap();
    let near = lab.netns("near").unwrap();
    let mut proc = Unshared::start();
    let pid = proc.pid().to_string();
    let ns_file = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let (key, _) = netfault::control::netns::identify(&ns_file).unwrap();
    assert!(key.starts_with("cookie-"), "its own namespace: {key}");
    let dirs = [
        Path::new(netfault::control::state::PIN_ROOT).join(&key),
        Path::new(netfault::control::state::RUN_ROOT).join(&key),
    ];
    // Whatever happens below, no state of this namespace stays (the process is killed first
    // by `proc`'s drop; then the lab's teardown, which runs a netfault command, sweeps it).
    let (sweep_dirs, near_ns) = (dirs.clone(), near.clone());
    lab.on_teardown(move || {
        let _ = nf(&["--netns", &near_ns, "detach"]);
        for d in &sweep_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    });

    ip(&[
        "-n", &near, "link", "add", "n0", "type", "veth", "peer", "name", "u0", "netns", &pid,
    ]);
    ip(&[
        "-n",
        &near,
        "addr",
        "add",
        &format!("{NEAR}/24"),
        "dev",
        "n0",
    ]);
    ip(&["-n", &near, "link", "set", "n0", "up"]);
    // A device of the near side's own, for the command that finds the namespace gone.
    ip(&[
        "-n", &near, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ]);
    ip(&["-n", &near, "link", "set", "d0", "up"]);
    ip_in_pid(
        proc.pid(),
        &["addr", "add", &format!("{FAR}/24"), "dev", "u0"],
    );
    ip_in_pid(proc.pid(), &["link", "set", "u0", "up"]);
    ip_in_pid(proc.pid(), &["link", "set", "lo", "up"]);
    let t = Instant::now();
    while ping(&near, 1).1 != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the unshared side never answered"
        );
    }

    nf_ok(&["--pid", &pid, "attach", "u0"]);
    let st = nf_ok(&["--pid", &pid, "status"]);
    assert!(
        st.contains(&key),
        "status names the namespace's state {key}: {st}"
    );

    // A partition cuts it both ways; the heal lets it through again.
    nf_ok(&["--pid", &pid, "partition", FAR, NEAR, "--name", "cut"]);
    assert_eq!(
        ping(&near, 20),
        (20, 0),
        "the partition let an echo through"
    );
    nf_ok(&["--pid", &pid, "heal"]);
    assert_eq!(ping(&near, 20), (20, 20), "echoes lost after the heal");

    // 30 % loss of what arrives from the near side: every request is matched, every drop is a
    // request never answered, and the rate is within its Wilson interval (alpha 1e-4).
    nf_ok(&[
        "--pid", &pid, "rule", "add", "lossy", "--src", NEAR, "--proto", "icmp", "--dir",
        "ingress", "--drop", "30%",
    ]);
    let (sent, answered) = ping(&near, 400);
    let s = stats(&pid, "lossy");
    assert_eq!(
        s.counters.matched,
        u64::from(sent),
        "every request matched once"
    );
    assert_eq!(
        s.counters.dropped,
        u64::from(sent - answered),
        "each unanswered request is one the rule dropped"
    );
    let (lo, hi) = wilson_interval(s.counters.dropped, s.counters.matched, Z_ALPHA_1E4);
    assert!(
        lo <= 0.3 && 0.3 <= hi,
        "{} of {} dropped: [{lo:.3}, {hi:.3}] misses 0.3",
        s.counters.dropped,
        s.counters.matched
    );

    // The process exits with its rules live: its namespace goes, and the next command that
    // opens a state (any namespace's) removes this one's state and pins.
    assert!(
        dirs.iter().all(|d| d.exists()),
        "state and pins while attached"
    );
    proc.end();
    let t = Instant::now();
    while ns_file.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the process did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    nf_ok(&["--netns", &near, "attach", "d0"]);
    for d in &dirs {
        assert!(
            !d.exists(),
            "{} of an exited process's namespace is left",
            d.display()
        );
    }
    nf_ok(&["--netns", &near, "detach"]);
}
