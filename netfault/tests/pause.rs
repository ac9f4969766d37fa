//! `netfault pause` and `resume` on real processes and a real cgroup v2: the target stops, it
//! resumes on its deadline and when the watchdog is told to end, a killed watchdog's pause is
//! resumed by the next command, strobes stop exactly `count` times, and bad input changes
//! nothing (exit 2).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]

use std::{
    path::PathBuf,
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use netfault::pause::{Store, target};

const BIN: &str = env!("CARGO_BIN_EXE_netfault");

/// A process to pause, killed on drop (resumed first, so it dies even when stopped).
struct Victim(Child);

impl Victim {
    fn new() -> Victim {
        Victim(Command::new("sleep").arg("120").spawn().unwrap())
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    fn stopped(&self) -> bool {
        target::state(self.pid()) == Some('T')
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nf(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = nf(args);
    assert!(
        o.status.success(),
        "netfault {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits up to `limit` for `f`; returns how long it took.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn record_exists(name: &str) -> bool {
    Store::default().get(name).is_some()
}

/// Resumes a pause a failed test left.
struct Named(String);
impl Drop for Named {
    fn drop(&mut self) {
        if record_exists(&self.0) {
            let _ = nf(&["resume", &self.0]);
        }
    }
}

#[test]
fn a_pause_holds_for_its_duration_and_ends_on_its_deadline() {
    let v = Victim::new();
    let name = format!("t-deadline-{}", v.pid());
    let _g = Named(name.clone());
    let t = Instant::now();
    let out = ok(&[
        "pause",
        "--pid",
        &v.pid().to_string(),
        "--for",
        "1s",
        "--name",
        &name,
    ]);
    assert!(out.contains(&name), "{out}");
    // The command returns once the target is stopped.
    assert!(v.stopped(), "not stopped when pause returned");
    let st: serde_json::Value = serde_json::from_str(&ok(&["status", "--json"])).unwrap();
    let p = st["pauses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name.as_str())
        .expect("status lists the pause")
        .clone();
    assert_eq!(p["state"], "stopped");
    assert!(p["left_ms"].as_u64().unwrap() <= 1000, "{p}");
    // Still stopped well inside the duration.
    std::thread::sleep(Duration::from_millis(700).saturating_sub(t.elapsed()));
    assert!(v.stopped(), "resumed early, at {:?}", t.elapsed());
    let resumed = within(Duration::from_secs(3), || !v.stopped()).expect("never resumed");
    let at = t.elapsed();
    assert!(
        at >= Duration::from_millis(950) && at < Duration::from_millis(1900),
        "resumed at {at:?} ({resumed:?} after 700 ms)"
    );
    assert!(
        within(Duration::from_secs(2), || !record_exists(&name)).is_some(),
        "the record outlived the pause"
    );
}

#[test]
fn the_target_resumes_when_its_watchdog_ends_however_it_ends() {
    let v = Victim::new();
    let pid = v.pid().to_string();
    // Told to end (`resume` sends SIGTERM; a hangup or Ctrl-C does the same).
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        let name = format!("t-sig{sig}-{}", v.pid());
        let _g = Named(name.clone());
        ok(&["pause", "--pid", &pid, "--for", "5m", "--name", &name]);
        assert!(v.stopped());
        let w = Store::default().get(&name).unwrap().watchdog.unwrap();
        // The watchdog is in a session of its own: the caller's terminal and process group
        // reach it not.
        // SAFETY: plain getsid calls.
        assert_ne!(unsafe { libc::getsid(w.pid) }, unsafe { libc::getsid(0) });
        // SAFETY: the watchdog's identity is checked by the record just read.
        unsafe { libc::kill(w.pid, sig) };
        within(Duration::from_secs(2), || !v.stopped())
            .unwrap_or_else(|| panic!("signal {sig} to the watchdog left the target stopped"));
        assert!(within(Duration::from_secs(2), || !record_exists(&name)).is_some());
    }
    // Killed outright: nothing can resume at that instant; the next netfault command does.
    let name = format!("t-kill-{}", v.pid());
    let _g = Named(name.clone());
    ok(&["pause", "--pid", &pid, "--for", "5m", "--name", &name]);
    let w = Store::default().get(&name).unwrap().watchdog.unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(w.pid, libc::SIGKILL) };
    assert!(within(Duration::from_secs(2), || !w.alive()).is_some());
    assert!(v.stopped(), "resumed before any command looked");
    let o = nf(&["status"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&name) && err.contains("lost its watchdog"),
        "{err}"
    );
    assert!(!v.stopped(), "status left the orphaned pause in place");
    assert!(!record_exists(&name));
}

#[test]
fn resume_ends_a_pause_at_once_and_names_what_does_not_exist() {
    let v = Victim::new();
    let name = format!("t-resume-{}", v.pid());
    let _g = Named(name.clone());
    ok(&[
        "pause",
        "--pid",
        &v.pid().to_string(),
        "--for",
        "none",
        "--name",
        &name,
    ]);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(v.stopped(), "`--for none` ended by itself");
    let o = nf(&["resume", &name, "no-such-pause"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-pause"));
    assert!(v.stopped(), "a refused resume changed something");
    ok(&["resume", &name]);
    assert!(!v.stopped());
    assert!(!record_exists(&name));
}

#[test]
fn a_strobe_stops_the_target_count_times() {
    let v = Victim::new();
    let name = format!("t-strobe-{}", v.pid());
    let _g = Named(name.clone());
    let t = Instant::now();
    ok(&[
        "pause",
        "--pid",
        &v.pid().to_string(),
        "--for",
        "200ms",
        "--every",
        "600ms",
        "--count",
        "3",
        "--name",
        &name,
    ]);
    // Sampled every 5 ms until well after the last resume (at 1.4 s).
    let mut stops = 0;
    let mut stopped_for = Duration::ZERO;
    let mut was = true;
    let mut last = Instant::now();
    stops += 1;
    while t.elapsed() < Duration::from_millis(2400) {
        std::thread::sleep(Duration::from_millis(5));
        let now = v.stopped();
        if was {
            stopped_for += last.elapsed();
        }
        if now && !was {
            stops += 1;
        }
        was = now;
        last = Instant::now();
    }
    assert_eq!(stops, 3, "stopped {stops} times");
    assert!(!v.stopped());
    // 3 x 200 ms, give or take the sampling and the machine's scheduling.
    assert!(
        stopped_for > Duration::from_millis(500) && stopped_for < Duration::from_millis(900),
        "stopped {stopped_for:?} in all"
    );
}

/// A cgroup v2 directory for the test, removed on drop (its processes killed first).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(tag: &str) -> Cgroup {
        let root = target::cgroup2_root().expect("cgroup2 is mounted (hybrid hosts too)");
        let p = root.join(format!("netfault-test-{tag}-{}", std::process::id()));
        std::fs::create_dir(&p).unwrap();
        Cgroup(p)
    }
    fn frozen(&self) -> Option<bool> {
        target::frozen(&self.0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: processes this test put there.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = within(Duration::from_secs(2), || {
            std::fs::remove_dir(&self.0).is_ok()
        });
    }
}

#[test]
fn a_cgroup_is_frozen_for_its_duration_and_thawed() {
    let cg = Cgroup::new("freeze");
    let v = Victim::new();
    std::fs::write(cg.0.join("cgroup.procs"), v.pid().to_string()).unwrap();
    let name = format!("t-cgroup-{}", v.pid());
    let _g = Named(name.clone());
    let t = Instant::now();
    ok(&[
        "pause",
        "--cgroup",
        cg.0.to_str().unwrap(),
        "--for",
        "1s",
        "--name",
        &name,
    ]);
    assert_eq!(cg.frozen(), Some(true));
    // A frozen task can still be killed: the freezer does not block SIGKILL.
    let w = Victim::new();
    std::fs::write(cg.0.join("cgroup.procs"), w.pid().to_string()).unwrap();
    drop(w); // kills and reaps it: would hang if the freezer blocked SIGKILL
    assert!(within(Duration::from_secs(3), || cg.frozen() == Some(false)).is_some());
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "thawed at {:?}",
        t.elapsed()
    );
    // Relative to the cgroup2 mount works too.
    let rel = cg.0.file_name().unwrap().to_str().unwrap().to_string();
    ok(&["pause", "--cgroup", &rel, "--for", "none", "--name", &name]);
    assert_eq!(cg.frozen(), Some(true));
    ok(&["resume", &name]);
    assert_eq!(cg.frozen(), Some(false));
}

#[test]
fn bad_input_is_refused_with_exit_2_and_nothing_stopped() {
    let v = Victim::new();
    let pid = v.pid().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["pause", "--pid", "2147483646", "--for", "1s"], "--pid"),
        (&["pause", "--pid", &pid, "--for", "11m"], "--for"),
        (&["pause", "--pid", &pid, "--for", "soon"], "--for"),
        (
            &["pause", "--pid", &pid, "--for", "1s", "--every", "2s"],
            "--count",
        ),
        (
            &[
                "pause", "--pid", &pid, "--for", "1s", "--every", "1s", "--count", "2",
            ],
            "--every",
        ),
        (
            &["pause", "--pid", &pid, "--for", "1s", "--name", "a b"],
            "--name",
        ),
        (&["pause", "--cgroup", "/proc", "--for", "1s"], "--cgroup"),
        (
            &["pause", "--cgroup", "no-such-cgroup-here", "--for", "1s"],
            "--cgroup",
        ),
    ];
    for (args, field) in cases {
        let o = nf(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(field), "{args:?} does not name {field}: {err}");
        assert!(!v.stopped(), "{args:?} stopped the process");
    }
    // A name in use is refused too, and the first pause is untouched.
    let name = format!("t-bad-{}", v.pid());
    let _g = Named(name.clone());
    ok(&["pause", "--pid", &pid, "--for", "none", "--name", &name]);
    let o = nf(&["pause", "--pid", &pid, "--for", "1s", "--name", &name]);
    assert_eq!(o.status.code(), Some(2));
    assert!(v.stopped());
    ok(&["resume", &name]);
    // No refused command left a record (their default name is pid-PID).
    assert!(!record_exists(&format!("pid-{pid}")));
}

#[test]
fn a_record_never_signals_a_process_that_took_the_pid() {
    // A record whose start time is not the process's: as for a PID reused after the paused
    // process ended. No pidfd is handed out, so neither stop nor resume can reach it.
    let v = Victim::new();
    let t = netfault::pause::Target::Pid {
        pid: v.pid(),
        start: target::start_time(v.pid()).unwrap() + 1,
    };
    assert!(!t.exists());
    assert!(t.pidfd().is_none());
    assert!(t.stop(t.pidfd().as_ref()).is_err());
    assert!(!v.stopped());
}
