//! Pauses of a real etcd cluster's leader (issue 17): three members, one per namespace on a
//! bridge (192.0.2.1-3), started by the test with data directories of its own. The leader is
//! stopped with `netfault pause --pid` and with `netfault cluster pause` (pause_target
//! pidfile); while it is stopped the other two elect a new leader; it is stopped (/proc state
//! `T`) until the deadline, resumes on time, follows the new leader, and a write through it is
//! read back from another member. Also: a `cluster run` whose pause step's coordinator is
//! killed with SIGKILL (the watchdog resumes the member on the deadline and nothing is left),
//! and strobe timing, every phase within 20 ms.
//!
//! Timing is measured from outside: a thread samples `/proc/PID/stat` every millisecond and
//! records when the state letter becomes and stops being `T`. Each test prints the figures it
//! measured (`pause accuracy: ...`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]

mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::{Host, Lab, TempFile, temp_file};
use netfault::pause::{Store, target};
use netfault_lab::lab::KillOnDrop;

const BIN: &str = env!("CARGO_BIN_EXE_netfault");
/// How long each test pauses the leader: four election timeouts.
const HOLD: Duration = Duration::from_secs(4);
/// The accuracy the issue asks of every stop and run phase.
const ACCURACY: Duration = Duration::from_millis(20);

/// A three-member etcd cluster, one member per host; members killed (SIGKILL, which also ends
/// a stopped process) and their data removed on drop.
struct Etcd {
    dir: PathBuf,
    hosts: Vec<Host>,
    members: Vec<KillOnDrop>,
}

impl Etcd {
    fn start(hosts: &[Host], tag: &str) -> Etcd {
        for (tool, arg) in [("etcd", "--version"), ("etcdctl", "version")] {
            assert!(
                Command::new(tool)
                    .arg(arg)
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "{tool} is missing: scripts/setup.sh installs Debian's etcd-server and etcd-client"
            );
        }
        let dir = std::env::temp_dir().join(format!("nf-etcd-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let initial: Vec<String> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("e{i}=http://{}:2380", h.v4))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let log = std::fs::File::create(dir.join(format!("e{i}.log"))).unwrap();
            let peer = format!("http://{}:2380", h.v4);
            let client = format!("http://{}:2379", h.v4);
            let child = Command::new("ip")
                .args(["netns", "exec", &h.ns, "etcd"])
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("e{i}.data")))
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", tag])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            // `ip netns exec` execs etcd in place: the child's PID is the member's.
            std::fs::write(dir.join(format!("e{i}.pid")), format!("{}\n", child.id())).unwrap();
            members.push(KillOnDrop(child));
        }
        let e = Etcd {
            dir,
            hosts: hosts.to_vec(),
            members,
        };
        // Bounded: a cluster of three elects its first leader within a few seconds.
        let t = Instant::now();
        while (0..3).any(|i| e.status(i).is_none()) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "etcd did not become healthy in 30 s; logs in {}",
                e.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    fn pid(&self, i: usize) -> i32 {
        self.members[i].id() as i32
    }

    fn pidfile(&self, i: usize) -> PathBuf {
        self.dir.join(format!("e{i}.pid"))
    }

    /// `etcdctl` against member `i`, from its own namespace, with short timeouts.
    fn ctl(&self, i: usize, args: &[&str]) -> Option<String> {
        let h = &self.hosts[i];
        let ep = format!("http://{}:2379", h.v4);
        let child = Command::new("ip")
            .args(["netns", "exec", &h.ns, "etcdctl"])
            .args(["--endpoints", &ep])
            .args(["--dial-timeout", "500ms", "--command-timeout", "1s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let out = netfault_lab::lab::wait_bounded(child, Duration::from_secs(5)).ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Member `i`'s own id and the leader it follows (0: none), when it answers.
    fn status(&self, i: usize) -> Option<(u64, u64)> {
        let out = self.ctl(i, &["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let s = &v.get(0)?["Status"];
        let me = s["header"]["member_id"].as_u64()?;
        let leader = s["leader"].as_u64()?;
        (leader != 0).then_some((me, leader))
    }

    /// The index of the member that leads, and its id.
    fn leader(&self) -> (usize, u64) {
        let t = Instant::now();
        loop {
            let st: Vec<Option<(u64, u64)>> = (0..3).map(|i| self.status(i)).collect();
            if let Some(i) = st
                .iter()
                .position(|s| s.is_some_and(|(me, leader)| me == leader))
            {
                return (i, st[i].unwrap().0);
            }
            assert!(t.elapsed() < Duration::from_secs(15), "no leader: {st:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Each stop: (stopped at, resumed at), offsets from the sampler's start.
type Phases = Vec<(Duration, Option<Duration>)>;

/// When a process's state letter became and stopped being `T`, sampled every millisecond.
struct Sampler {
    stop: Arc<AtomicBool>,
    phases: Arc<Mutex<Phases>>,
    handle: Option<JoinHandle<()>>,
    t0: Instant,
}

impl Sampler {
    fn start(pid: i32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let phases = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let (s, p) = (Arc::clone(&stop), Arc::clone(&phases));
        let handle = std::thread::spawn(move || {
            let mut was = false;
            while !s.load(Ordering::Relaxed) {
                let Some(c) = target::state(pid) else { break };
                let now = t0.elapsed();
                let is = c == 'T';
                if is != was {
                    let mut v = p.lock().unwrap();
                    if is {
                        v.push((now, None));
                    } else if let Some(last) = v.last_mut() {
                        last.1 = Some(now);
                    }
                    was = is;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Sampler {
            stop,
            phases,
            handle: Some(handle),
            t0,
        }
    }

    fn phases(&self) -> Phases {
        self.phases.lock().unwrap().clone()
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn diff_ms(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1e3
}

/// Resumes what a failed test left paused.
struct Named(Vec<String>);
impl Drop for Named {
    fn drop(&mut self) {
        for n in &self.0 {
            if Store::default().get(n).is_some() {
                let _ = Command::new(BIN).args(["resume", n]).output();
            }
        }
    }
}

fn lab3() -> (Lab, Vec<Host>) {
    let (lab, _nf, hosts) = common::star(3);
    (lab, hosts)
}

/// The leader is paused by `pause` (a closure that starts it and returns once the target is
/// stopped). Checks the election meanwhile, the stop's length, the resume and the rejoin.
fn leader_pause(tag: &str, pause: impl FnOnce(&Etcd, usize)) {
    let (_lab, hosts) = lab3();
    let etcd = Etcd::start(&hosts, tag);
    let (old, old_id) = etcd.leader();
    let pid = etcd.pid(old);
    let sampler = Sampler::start(pid);
    pause(&etcd, old);
    assert_eq!(
        target::state(pid),
        Some('T'),
        "the leader is not stopped once the pause returned"
    );
    // The two others elect a new leader while the old one is stopped.
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let mut new_id = None;
    let t = Instant::now();
    while t.elapsed() < HOLD - Duration::from_millis(500) {
        let st: Vec<Option<(u64, u64)>> = others.iter().map(|&i| etcd.status(i)).collect();
        if let [Some((_, a)), Some((_, b))] = st[..]
            && a == b
            && a != old_id
        {
            new_id = Some(a);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elected_in = t.elapsed();
    let new_id = new_id.expect("the others elected no new leader while the old one was stopped");
    assert_eq!(
        target::state(pid),
        Some('T'),
        "the old leader ran again before its deadline"
    );
    // Until the deadline and a little beyond.
    let t = Instant::now();
    while sampler.phases().first().is_none_or(|p| p.1.is_none()) {
        assert!(t.elapsed() < HOLD + Duration::from_secs(2), "never resumed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let phases = sampler.phases();
    drop(sampler);
    assert_eq!(phases.len(), 1, "stopped more than once: {phases:?}");
    let (s, r) = (phases[0].0, phases[0].1.unwrap());
    let held = r - s;
    let err = diff_ms(held, HOLD);
    println!(
        "pause accuracy ({tag}): stopped {:.1} ms (asked {} ms): {err:+.1} ms; new leader elected {} ms after the pause returned",
        held.as_secs_f64() * 1e3,
        HOLD.as_millis(),
        elected_in.as_millis()
    );
    assert!(
        err.abs() <= ACCURACY.as_millis() as f64,
        "stopped for {held:?}, asked {HOLD:?}"
    );
    // It follows the new leader, and a write through it is read from another member.
    let t = Instant::now();
    while etcd.status(old).is_none_or(|(_, l)| l != new_id) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the old leader does not follow the new one: {:?}",
            etcd.status(old)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let value = format!("after-{tag}");
    assert!(
        etcd.ctl(old, &["put", "nf-key", &value]).is_some(),
        "a put through the resumed member failed"
    );
    let got = etcd
        .ctl(others[0], &["get", "nf-key", "--print-value-only"])
        .expect("get from another member");
    assert_eq!(got.trim(), value);
}

#[test]
fn a_paused_etcd_leader_is_replaced_and_rejoins_on_time() {
    let names = Named(vec!["etcd-leader".into()]);
    leader_pause("pid", |etcd, i| {
        let pid = etcd.pid(i).to_string();
        let o = Command::new(BIN)
            .args(["--pid", &pid, "pause", "--for", "4s", "--name", &names.0[0]])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "pause: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    });
    assert!(Store::default().get("etcd-leader").is_none(), "record left");
}

/// A cluster file of the three members: netns transport, each with its pidfile.
fn cluster_file(etcd: &Etcd) -> TempFile {
    let mut text = String::new();
    for (i, h) in etcd.hosts.iter().enumerate() {
        text.push_str(&format!(
            "[[node]]\nname = \"e{i}\"\naddrs = [\"{}\"]\niface = [\"{}\"]\nnetns = \"{}\"\npause_target = \"pidfile:{}\"\n\n",
            h.v4,
            h.iface,
            h.ns,
            etcd.pidfile(i).display()
        ));
    }
    temp_file("toml", &text)
}

#[test]
fn cluster_pause_stops_the_etcd_leader_by_its_pidfile() {
    let names = Named((0..3).map(|i| format!("gc.e{i}")).collect());
    leader_pause("cluster", |etcd, i| {
        let file = cluster_file(etcd);
        let node = format!("e{i}");
        let out = common::run_cluster_ok(
            None,
            &file.0,
            &["pause", &node, "--for", "4s", "--name", "gc", "--json"],
            Duration::from_secs(20),
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["nodes"][0]["node"], node.as_str(), "{out}");
        assert_eq!(v["nodes"][0]["pause"], format!("gc.{node}"), "{out}");
        assert_eq!(
            v["nodes"][0]["target"],
            format!("pid {}", etcd.pid(i)),
            "{out}"
        );
        // Listed on the node's host while it lasts.
        let rec = Store::default().get(&format!("gc.{node}")).expect("record");
        assert!(rec.left().is_some_and(|l| l <= HOLD));
    });
    for n in &names.0 {
        assert!(Store::default().get(n).is_none(), "record {n} left");
    }
}

/// Path of a file in the temporary directory that a drop removes.
fn temp(ext: &str) -> TempFile {
    common::temp_path(ext)
}

#[test]
fn cluster_pause_and_resume_by_hand_and_bad_input() {
    let (mut lab, nf, hosts) = common::star(3);
    // `cluster run` attaches every node first.
    common::detach_on_teardown(&mut lab, &nf, &hosts);
    let mut victims: Vec<KillOnDrop> = (0..2)
        .map(|_| KillOnDrop(Command::new("sleep").arg("60").spawn().unwrap()))
        .collect();
    let pidfile = temp("pid");
    std::fs::write(&pidfile.0, format!("{}\n", victims[1].id())).unwrap();
    let text = format!(
        "[[node]]\nname = \"a\"\naddrs = [\"{}\"]\niface = [\"{}\"]\nnetns = \"{}\"\npause_target = \"pid:{}\"\n\n\
         [[node]]\nname = \"b\"\naddrs = [\"{}\"]\niface = [\"{}\"]\nnetns = \"{}\"\npause_target = \"pidfile:{}\"\n\n\
         [[node]]\nname = \"c\"\naddrs = [\"{}\"]\niface = [\"{}\"]\nnetns = \"{}\"\n",
        hosts[0].v4,
        hosts[0].iface,
        hosts[0].ns,
        victims[0].id(),
        hosts[1].v4,
        hosts[1].iface,
        hosts[1].ns,
        pidfile.arg(),
        hosts[2].v4,
        hosts[2].iface,
        hosts[2].ns,
    );
    let file = temp_file("toml", &text);
    let _names = Named(vec!["hand.a".into(), "hand.b".into()]);
    let pids: Vec<i32> = victims.iter().map(|v| v.id() as i32).collect();
    let limit = Duration::from_secs(20);
    // Bad input: exit 2, nothing stopped, no record.
    for (args, field) in [
        (vec!["pause", "c", "--for", "1s"], "NODES[0]"),
        (vec!["pause", "a,zz", "--for", "1s"], "NODES[1]"),
        (vec!["pause", "a", "--for", "11m"], "--for"),
        (
            vec!["pause", "a", "--for", "1s", "--every", "2s"],
            "--count",
        ),
        (vec!["pause", "a", "--for", "1s", "--name", "a b"], "--name"),
    ] {
        let o = common::run_cluster(None, &file.0, &args, limit);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(field), "{args:?} should name {field}: {err}");
        assert!(pids.iter().all(|&p| target::state(p) != Some('T')));
        assert!(
            Store::default()
                .list()
                .iter()
                .all(|r| !r.name.starts_with("hand."))
        );
    }
    // Both nodes at once, until resumed; then `cluster resume` (all of them) ends both.
    common::run_cluster_ok(
        None,
        &file.0,
        &["pause", "a,b", "--for", "none", "--name", "hand"],
        limit,
    );
    assert!(pids.iter().all(|&p| target::state(p) == Some('T')));
    let out = common::run_cluster_ok(None, &file.0, &["resume", "--json"], limit);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["nodes"][0]["resumed"][0], "hand.a", "{out}");
    assert_eq!(v["nodes"][1]["resumed"][0], "hand.b", "{out}");
    assert!(pids.iter().all(|&p| target::state(p) != Some('T')));
    assert!(Store::default().get("hand.a").is_none() && Store::default().get("hand.b").is_none());
    // A scenario's pause step, twice: each occurrence stops the node for `for`, with a start
    // and an end line per node and occurrence.
    let scenario = temp_file(
        "toml",
        "lease = \"2s\"\n[[step]]\nname = \"hand\"\nat = \"0s\"\npause = [\"a\"]\nfor = \"300ms\"\nrepeat = 2\nevery = \"700ms\"\n",
    );
    let events = common::temp_path("jsonl");
    let sampler = Sampler::start(pids[0]);
    common::run_cluster_ok(
        None,
        &file.0,
        &["run", scenario.arg(), "--events", events.arg()],
        Duration::from_secs(90),
    );
    let phases = sampler.phases();
    drop(sampler);
    assert_eq!(phases.len(), 2, "{phases:?}");
    for (s, r) in &phases {
        let held = diff_ms(r.expect("resumed"), *s);
        assert!(
            (held - 300.0).abs() <= ACCURACY.as_millis() as f64,
            "{phases:?}"
        );
    }
    let lines = event_lines(&events.0);
    for phase in ["start", "end"] {
        let n = lines
            .iter()
            .filter(|l| l["phase"] == phase && l["node"] == "a" && l["fault"] == "pause")
            .count();
        assert_eq!(n, 2, "{phase}: {lines:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["node"].is_null() && l["phase"] == "start" && l["pause"][0] == "a"),
        "{lines:?}"
    );
    assert!(Store::default().get("hand.a").is_none());
    // A run that stops early (SIGTERM: exit 143) resumes its pauses at once, long before their
    // deadline.
    let long = temp_file(
        "toml",
        "[[step]]\nname = \"hand\"\nat = \"0s\"\npause = [\"a\"]\nfor = \"60s\"\n",
    );
    let mut run = KillOnDrop(
        Command::new(BIN)
            .args(["cluster", "--cluster", file.arg(), "run", long.arg()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while target::state(pids[0]) != Some('T') {
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended before the pause"
        );
        assert!(t.elapsed() < Duration::from_secs(60), "never paused");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: our own child.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(st) = run.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "SIGTERM did not end the run"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(143));
    assert_ne!(
        target::state(pids[0]),
        Some('T'),
        "left stopped by a run that ended"
    );
    assert!(Store::default().get("hand.a").is_none());
    // All or nothing: a node whose target is gone fails the command, and the other is resumed.
    victims[1].kill().unwrap();
    victims[1].wait().unwrap();
    let o = common::run_cluster(
        None,
        &file.0,
        &["pause", "a,b", "--for", "30s", "--name", "hand"],
        limit,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("node b"), "{err}");
    assert_ne!(
        target::state(pids[0]),
        Some('T'),
        "node a stayed paused: {err}"
    );
    assert!(Store::default().get("hand.a").is_none(), "{err}");
}

/// The event log's complete lines (one being written is left for the next read).
fn event_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Processes named `pause-watchdog NAME` still running.
fn watchdogs(name: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"pause-watchdog" && w[1] == name.as_bytes())
        {
            v.push(pid);
        }
    }
    v
}

#[test]
fn a_killed_cluster_run_leaves_the_member_to_its_watchdog() {
    let (mut lab, nf, hosts) = common::star(3);
    common::detach_on_teardown(&mut lab, &nf, &hosts);
    let etcd = Etcd::start(&hosts, "run");
    let (old, _) = etcd.leader();
    let pid = etcd.pid(old);
    let file = cluster_file(&etcd);
    let name = format!("gc.e{old}");
    let _names = Named(vec![name.clone()]);
    let scenario = temp_file(
        "toml",
        &format!("[[step]]\nname = \"gc\"\nat = \"0s\"\npause = [\"e{old}\"]\nfor = \"4s\"\n"),
    );
    let events = common::temp_path("jsonl");
    let sampler = Sampler::start(pid);
    let mut run = KillOnDrop(
        Command::new(BIN)
            .args(["cluster", "--cluster", file.arg(), "run", scenario.arg()])
            .args(["--events", events.arg()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Attaching every node comes first: bounded, generously (a loaded machine verifies slowly).
    let t = Instant::now();
    while target::state(pid) != Some('T') {
        if let Some(st) = run.try_wait().unwrap() {
            panic!("the run ended ({st}) before the pause");
        }
        assert!(t.elapsed() < Duration::from_secs(90), "never paused");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Once the coordinator has logged the node's start (it writes after the node answered):
    // then SIGKILL, so it runs no clean-up at all.
    let started = |l: &serde_json::Value| {
        l["phase"] == "start"
            && l["fault"] == "pause"
            && l["node"] == format!("e{old}").as_str()
            && l["entries"][0] == name.as_str()
    };
    let t = Instant::now();
    while !event_lines(&events.0).iter().any(started) {
        assert!(t.elapsed() < Duration::from_secs(3), "no start line");
        std::thread::sleep(Duration::from_millis(5));
    }
    run.kill().unwrap();
    run.wait().unwrap();
    let killed_at = sampler.now();
    assert_eq!(target::state(pid), Some('T'), "the kill resumed the member");
    assert!(
        Store::default().get(&name).is_some(),
        "no record of the pause"
    );
    assert_eq!(watchdogs(&name).len(), 1, "one watchdog holds the deadline");
    let t = Instant::now();
    while sampler.phases().first().is_none_or(|p| p.1.is_none()) {
        assert!(t.elapsed() < HOLD + Duration::from_secs(2), "never resumed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let phases = sampler.phases();
    drop(sampler);
    let (s, r) = (phases[0].0, phases[0].1.unwrap());
    let err = diff_ms(r - s, HOLD);
    println!(
        "pause accuracy (coordinator killed {:.0} ms into the pause): stopped {:.1} ms, asked {} ms: {err:+.1} ms",
        diff_ms(killed_at, s),
        (r - s).as_secs_f64() * 1e3,
        HOLD.as_millis()
    );
    assert!(
        phases.len() == 1 && err.abs() <= ACCURACY.as_millis() as f64,
        "{phases:?}"
    );
    // Nothing left: no record, no watchdog, no member stopped.
    let t = Instant::now();
    while !watchdogs(&name).is_empty() || Store::default().get(&name).is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the watchdog or its record stayed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!((0..3).all(|i| target::state(etcd.pid(i)) != Some('T')));
    // The coordinator died before the step's end: no end line.
    let lines = event_lines(&events.0);
    assert!(!lines.iter().any(|l| l["phase"] == "end"), "{lines:?}");
    // And the member is back in the cluster.
    let t = Instant::now();
    while etcd.status(old).is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the member did not come back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn strobe_phases_are_each_within_20_ms() {
    const HOLD_MS: u64 = 200;
    const EVERY_MS: u64 = 500;
    const COUNT: usize = 5;
    let victim = KillOnDrop(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = victim.id() as i32;
    let _names = Named(vec!["strobe-timing".into()]);
    let sampler = Sampler::start(pid);
    let o = Command::new(BIN)
        .args([
            "--pid",
            &pid.to_string(),
            "pause",
            "--name",
            "strobe-timing",
        ])
        .args([
            "--for",
            &format!("{HOLD_MS}ms"),
            "--every",
            &format!("{EVERY_MS}ms"),
        ])
        .args(["--count", &COUNT.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = Instant::now();
    while sampler.phases().len() < COUNT || sampler.phases()[COUNT - 1].1.is_none() {
        assert!(
            t.elapsed() < Duration::from_millis(EVERY_MS * COUNT as u64 + 2000),
            "{:?}",
            sampler.phases()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // No sixth stop after the last.
    std::thread::sleep(Duration::from_millis(EVERY_MS));
    let phases = sampler.phases();
    drop(sampler);
    assert_eq!(phases.len(), COUNT, "{phases:?}");
    let (mut worst_hold, mut worst_run) = (0f64, 0f64);
    for (k, (s, r)) in phases.iter().enumerate() {
        let r = r.unwrap();
        let hold = diff_ms(r, *s) - HOLD_MS as f64;
        worst_hold = worst_hold.max(hold.abs());
        assert!(
            hold.abs() <= ACCURACY.as_millis() as f64,
            "stop {k}: {hold:+.1} ms off"
        );
        if let Some((next, _)) = phases.get(k + 1) {
            let run = diff_ms(*next, r) - (EVERY_MS - HOLD_MS) as f64;
            worst_run = worst_run.max(run.abs());
            assert!(
                run.abs() <= ACCURACY.as_millis() as f64,
                "run {k}: {run:+.1} ms off"
            );
        }
    }
    // No drift: the last stop starts `every` * (count - 1) after the first.
    let drift = diff_ms(phases[COUNT - 1].0, phases[0].0) - (EVERY_MS * (COUNT as u64 - 1)) as f64;
    println!(
        "strobe accuracy ({COUNT} x {HOLD_MS} ms every {EVERY_MS} ms, /proc sampled at 1 ms): worst stop {worst_hold:.1} ms, worst run {worst_run:.1} ms, drift {drift:+.1} ms"
    );
    assert!(drift.abs() <= ACCURACY.as_millis() as f64);
    assert!(Store::default().get("strobe-timing").is_none());
}
