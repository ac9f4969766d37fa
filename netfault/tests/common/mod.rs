//! Shared set-up for the integration tests: labs of namespaces, the real binary, traffic checks.
//! Every test crate builds its hosts with [`Lab`] (netfault-lab); this is only the glue.
//!
//! Cleanup is the [`Lab`]'s job: it is the guard. `attach` registers `netfault --netns NS detach`
//! on the lab's teardown, and the lab deletes its namespaces and pin directories after that,
//! whether the test passed or panicked.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test crate that includes this module uses a different part of it, so an \
              expectation would be unfulfilled in some"
)]

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Output,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

pub use netfault_lab::lab::{Host, Lab, Netfault, TcpEcho, TcpOutcome, UdpBurst, UdpReport};

pub mod passive;
pub mod testrun;
use netfault_lab::{
    cluster,
    lab::{self, Counters},
};

/// Namespaces of these tests are `nfe2e-<pid>-<n>-<role>`.
pub const PREFIX: &str = "nfe2e";
/// The port bursts go to; every test has namespaces of its own, so they can share it.
pub const UDP_PORT: u16 = 4000;
/// Expected failures wait this long: SYN retransmits come after 1 s, so a dropped SYN shows.
pub const TCP_BLOCKED: Duration = Duration::from_millis(700);
/// Expected successes finish in milliseconds; this only bounds a broken run.
pub const TCP_OK: Duration = Duration::from_secs(3);

pub fn nf() -> Netfault {
    Netfault::new(env!("CARGO_BIN_EXE_netfault"))
}

/// Two hosts on a veth pair, neighbours resolved in both families.
pub fn pair() -> (Lab, Netfault, [Host; 2]) {
    let mut lab = Lab::new(PREFIX).expect("lab");
    let hosts = lab.pair().expect("veth pair");
    warm(&hosts[0], &hosts[1]);
    (lab, nf(), hosts)
}

/// `n` hosts on a bridge, every pair's neighbours resolved.
pub fn star(n: u8) -> (Lab, Netfault, Vec<Host>) {
    let mut lab = Lab::new(PREFIX).expect("lab");
    let hosts = lab.star(n).expect("bridge");
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            warm(a, b);
        }
    }
    (lab, nf(), hosts)
}

/// Resolves neighbours both ways and both families before any rule exists, so that no test
/// measures address resolution instead of netfault (and no burst waits in a neighbour queue).
/// A fresh link may lose the first neighbour solicitation (CI under load: one ping with a 1 s
/// wait found no answer from a new IPv6 neighbour, whose next solicitation is 1 s later), so
/// each direction gets up to [`WARM_TRIES`] pings before the lab is called broken.
pub fn warm(a: &Host, b: &Host) {
    for v6 in [false, true] {
        for (from, to) in [(a, b), (b, a)] {
            let answered = (0..WARM_TRIES)
                .any(|_| lab::ping(&from.ns, to.ip(v6), 1).expect("ping").received == 1);
            assert!(
                answered,
                "{} cannot reach {} before any rule ({WARM_TRIES} pings)",
                from.ns,
                to.ip(v6)
            );
        }
    }
}

/// Pings [`warm`] sends each way before it gives up.
pub const WARM_TRIES: usize = 3;

pub fn attach(lab: &mut Lab, nf: &Netfault, h: &Host) {
    nf.attach(lab, &h.ns, &h.iface).expect("attach");
}

/// Attaches `h` and adds `rule add NAME --dir DIR ARGS..` there.
pub fn attach_and_add(
    lab: &mut Lab,
    nf: &Netfault,
    h: &Host,
    name: &str,
    dir: &str,
    args: &[&str],
) {
    attach(lab, nf, h);
    let mut all = vec!["rule", "add", name, "--dir", dir];
    all.extend_from_slice(args);
    run(nf, h, &all);
}

/// `netfault --netns <host> args...`, which must succeed.
pub fn run(nf: &Netfault, h: &Host, args: &[&str]) -> String {
    nf.run(&h.ns, args).expect("netfault command")
}

pub fn counters(nf: &Netfault, h: &Host, rule: &str) -> Counters {
    nf.counters(&h.ns, rule).expect("stats")
}

/// A UDP burst of `count` datagrams from `from` to `to`'s address of one family.
pub fn udp(from: &Host, to: &Host, v6: bool, count: u32) -> UdpReport {
    UdpBurst::new(count)
        .run(&from.ns, &to.ns, to.sock(v6, UDP_PORT))
        .expect("udp burst")
}

/// Every datagram arrives exactly once.
pub fn assert_udp_flows(from: &Host, to: &Host, v6: bool) {
    let r = udp(from, to, v6, 200);
    assert!(
        r.every_seq_exactly(1),
        "{} -> {}: expected all once; {r}",
        from.ns,
        to.ip(v6)
    );
}

/// Nothing arrives.
pub fn assert_udp_cut(from: &Host, to: &Host, v6: bool) {
    let r = udp(from, to, v6, 200);
    assert_eq!(
        r.received(),
        0,
        "{} -> {}: expected a cut; {r}",
        from.ns,
        to.ip(v6)
    );
}

pub fn ping_received(from: &Host, to: &Host, v6: bool, count: u32) -> u32 {
    lab::ping(&from.ns, to.ip(v6), count)
        .expect("ping")
        .received
}

pub fn tcp(from: &Host, dst: SocketAddr, timeout: Duration) -> TcpOutcome {
    lab::tcp_transfer(&from.ns, dst, 64 << 10, timeout).expect("tcp check")
}

/// netfault's pin and state directories for a namespace (which must exist: the key is its
/// identity).
pub fn netfault_dirs(ns: &str) -> [std::path::PathBuf; 2] {
    let key = netfault::control::netns::key_of(ns).expect("the namespace's state key");
    [
        std::path::Path::new(netfault::control::state::PIN_ROOT).join(&key),
        std::path::Path::new(netfault::control::state::RUN_ROOT).join(&key),
    ]
}

/// Detaches each of `hosts` on the lab's teardown, if it was attached (by a coordinator, say:
/// a node never attached, in a failed test or one kept out, has nothing to detach).
pub fn detach_on_teardown(lab: &mut Lab, nf: &Netfault, hosts: &[Host]) {
    for h in hosts {
        let (nf, ns) = (nf.clone(), h.ns.clone());
        lab.on_teardown(move || {
            if netfault_dirs(&ns)[1].exists() {
                let _ = nf.run(&ns, &["detach"]);
            }
        });
    }
}

/// The 5×5 (n×n) UDP matrix on the wire, both families agreeing, is `want`.
pub fn assert_matrix(hosts: &[Host], want: &cluster::Matrix, when: &str) {
    let got = cluster::matrix(hosts).unwrap_or_else(|e| panic!("{when}: {e:#}"));
    let wrong = cluster::diff(&got, want);
    assert!(wrong.is_empty(), "{when}: {wrong:?}");
}

/// After a heal: the matrix on the wire becomes `want` within 2.5 s, and stays measured whole.
/// The heal itself is on the wire at once, but an IPv6 neighbour entry whose solicitations the
/// cut dropped resolves only at its kernel's next retransmit (1 s), as after a real cut link;
/// ARP is not IP and is never cut, so IPv4 carries at once. Past the bound, the last matrix's
/// difference is the failure.
pub fn assert_matrix_heals(hosts: &[Host], want: &cluster::Matrix, when: &str) {
    let start = std::time::Instant::now();
    let bound = Duration::from_millis(2500);
    loop {
        let wrong = match cluster::matrix(hosts) {
            Ok(got) => cluster::diff(&got, want),
            Err(e) => vec![format!("{e:#}")],
        };
        if wrong.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < bound,
            "{when}: not healed on the wire {:?} after the heal: {wrong:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// TCP transfers (64 KiB each way) from one host to an echo server, one after another 50 ms
/// apart, on a thread of their own until stopped (or `limit`): traffic for a passive
/// measurement to see while it runs.
pub struct Transfers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u32>,
}

impl Transfers {
    pub fn start(from: &Host, dst: SocketAddr, limit: Duration) -> Transfers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (from, stop) = (from.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                let end = std::time::Instant::now() + limit;
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < end
                {
                    if matches!(
                        tcp(&from, dst, Duration::from_secs(2)),
                        TcpOutcome::Transferred(_)
                    ) {
                        n += 1;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                n
            })
        };
        Transfers { stop, thread }
    }

    /// Stops them: how many went through whole.
    pub fn stop(self) -> u32 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the transfer thread")
    }
}

/// Lets `h`'s kernel answer every probe of a closed port: by default it sends at most one ICMP
/// error a second to a destination after a burst of 6 (`icmp_ratelimit`, both families), and
/// 1000 a second in all, both families together, from a bucket of 50 refilled at most every
/// 20 ms, taking 0 to 2 of it an error at random (Linux 5.10 on, against CVE-2020-25705) (`icmp_msgs_per_sec`,
/// `icmp_msgs_burst`): five nodes probing each other every 20 ms lost one probe in 50 to it.
/// These are the namespace's own settings (the host's stay as they were).
pub fn unlimit_icmp_errors(h: &Host) {
    for kv in [
        "net.ipv4.icmp_ratelimit=0",
        "net.ipv6.icmp.ratelimit=0",
        "net.ipv4.icmp_msgs_per_sec=100000",
        "net.ipv4.icmp_msgs_burst=100000",
    ] {
        netfault_lab::lab::exec_in(&h.ns, "sysctl", &["-qw", kv]).expect(kv);
    }
}

/// A `cluster measure --json` document of 5 nodes over `transport`: no node failed, each
/// reported its 4 peers in both families, each with `samples` probes sent, and its loss as
/// what did not come back. No netfault rule is live, but the lab's wire is the kernel's: under
/// CI's load a datagram or an ICMP error can be dropped on the way (CI lost 1 of 2,000 twice,
/// a different pair each time). So at most [`ENV_LOSS`] probes in all may go unanswered; a
/// probe lost by the prober itself (the first of each pair, say) would show in every pair.
/// Any loss names the node and prints the kernel counters that say where it happened.
pub fn assert_measured(doc: &serde_json::Value, transport: &str, samples: u64, hosts: &[Host]) {
    let nodes = doc["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 5, "{doc}");
    let (mut lost, mut missing) = (Vec::new(), 0);
    for n in nodes {
        assert!(n["error"].is_null(), "{n}");
        assert_eq!(n["transport"], transport, "{n}");
        let pairs = n["pairs"].as_array().expect("pairs");
        assert_eq!(pairs.len(), 8, "4 peers, 2 families: {n}");
        for p in pairs {
            let r = &p["report"];
            assert_eq!(r["sent"], samples, "{p}");
            let got = r["samples"].as_u64().expect("samples");
            let loss = r["loss"].as_f64().expect("loss");
            assert!(
                (loss - (samples - got) as f64 / samples as f64).abs() < 1e-9,
                "the loss reported is what did not come back: {p}"
            );
            if got != samples {
                missing += samples - got;
                lost.push(format!(
                    "{} to {}: {got} of {samples} answered",
                    n["node"], p["to"]
                ));
            }
        }
    }
    if !lost.is_empty() {
        let why = format!("{}\n{}", lost.join("; "), loss_counters(hosts));
        assert!(missing <= ENV_LOSS, "{missing} unanswered: {why}");
        eprintln!("measured with a probe lost on the lab's wire: {why}");
    }
}

/// How many probes of a lossless 5-node measurement may go unanswered (see [`assert_measured`]).
pub const ENV_LOSS: u64 = 2;

/// Each host's nonzero kernel counters that count a datagram or an ICMP error dropped or not
/// sent (ICMP rate limits, UDP and IP discards, neighbour failures), and the CPUs' backlog
/// drops (shared by every namespace): for the message of a test that lost one.
pub fn loss_counters(hosts: &[Host]) -> String {
    const WATCH: &[&str] = &[
        "OutRateLimit",
        "OutErrors",
        "InErrors",
        "Discards",
        "NoRoutes",
        "RcvbufErrors",
        "SndbufErrors",
        "MemErrors",
        "InCsumErrors",
        "NoPorts",
        "OutDestUnreachs",
        "InDestUnreachs",
    ];
    let mut out = Vec::new();
    for h in hosts {
        let mut seen = Vec::new();
        for file in ["/proc/net/snmp", "/proc/net/snmp6"] {
            let Ok(text) = netfault_lab::lab::exec_in(&h.ns, "cat", &[file]) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            // snmp: a line of names, then a line of values, per protocol; snmp6: name value.
            let pairs: Vec<(String, String)> = if file.ends_with('6') {
                lines
                    .iter()
                    .filter_map(|l| l.split_once(char::is_whitespace))
                    .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                    .collect()
            } else {
                lines
                    .chunks(2)
                    .filter(|c| c.len() == 2)
                    .flat_map(|c| {
                        let proto = c[0].split(':').next().unwrap_or("");
                        c[0].split_whitespace()
                            .skip(1)
                            .zip(c[1].split_whitespace().skip(1))
                            .map(move |(k, v)| (format!("{proto}{k}"), v.to_string()))
                    })
                    .collect()
            };
            seen.extend(
                pairs
                    .into_iter()
                    .filter(|(k, v)| v != "0" && WATCH.iter().any(|w| k.contains(w))),
            );
        }
        let neigh = netfault_lab::lab::exec_in(&h.ns, "ip", &["-s", "neigh"]).unwrap_or_default();
        let failed = neigh.lines().filter(|l| l.contains("FAILED")).count();
        out.push(format!(
            "{}: {} neighbour entries FAILED; {}",
            h.ns,
            failed,
            seen.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    let drops: Vec<String> = softnet
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|d| u32::from_str_radix(d, 16).unwrap_or(0).to_string())
        .collect();
    out.push(format!("backlog drops per CPU: {}", drops.join(" ")));
    out.join("\n")
}

/// A file under the temp directory, `nftest-<pid>-<n>.<ext>`, removed on drop.
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl TempFile {
    /// The path as a command argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

static NEXT_FILE: AtomicU32 = AtomicU32::new(0);

/// A fresh temp path, nothing written yet (removed on drop if something writes it).
pub fn temp_path(ext: &str) -> TempFile {
    let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
    TempFile(std::env::temp_dir().join(format!("nftest-{}-{n}.{ext}", std::process::id())))
}

/// A temp file holding `text`, with the umask's mode.
pub fn temp_file(ext: &str, text: &str) -> TempFile {
    let f = temp_path(ext);
    std::fs::write(&f.0, text).unwrap();
    f
}

/// A temp file holding `text`, with mode `mode`.
pub fn temp_file_mode(ext: &str, text: &str, mode: u32) -> TempFile {
    let f = temp_file(ext, text);
    std::fs::set_permissions(&f.0, std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

/// The stdout of a command that had to succeed; otherwise a panic with `what`, its exit status
/// and its stderr.
pub fn ok_stdout(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The partition entries (names with `.from-`) in namespace `ns`, sorted.
pub fn partition_entries(nf: &Netfault, ns: &str) -> Vec<String> {
    let mut got: Vec<String> = nf
        .rule_names(ns)
        .unwrap()
        .into_iter()
        .filter(|r| r.contains(".from-"))
        .collect();
    got.sort();
    got
}

/// `netfault cluster --cluster FILE args...` with this package's binary, from namespace `ns`
/// (None: the host's), bounded by `limit`.
pub fn run_cluster(ns: Option<&str>, file: &Path, args: &[&str], limit: Duration) -> Output {
    cluster::run_cluster(
        ns,
        Path::new(env!("CARGO_BIN_EXE_netfault")),
        file,
        args,
        limit,
    )
    .unwrap()
}

/// [`run_cluster`], which must succeed: its stdout.
pub fn run_cluster_ok(ns: Option<&str>, file: &Path, args: &[&str], limit: Duration) -> String {
    ok_stdout(
        run_cluster(ns, file, args, limit),
        &format!("netfault cluster {args:?}"),
    )
}

/// A `cluster run` scenario whose one cut (complete, 2 minutes) only the lease (2 s) ends once
/// the coordinator is gone.
pub const LONG_CUT: &str = r#"
lease = "2s"

[[step]]
name = "cut"
at = "0s"
partition = "complete"
for = "2m"
"#;

/// `cluster status --json` (`st`) during a `halves` partition of the 5 `hosts`: every node
/// reachable over `transport` with its interface attached; n1 and n2 hold 6 faults (3 peers,
/// 2 families), the others 4, none with more than 120 s left.
pub fn assert_halves_status(st: &serde_json::Value, hosts: &[Host], transport: &str) {
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 5);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["reachable"], true, "{n}");
        assert_eq!(n["transport"], transport);
        assert_eq!(n["attached"][0], hosts[i].iface.as_str());
        let faults = n["faults"].as_array().unwrap();
        assert_eq!(faults.len(), if i < 2 { 6 } else { 4 }, "{n}");
        assert!(
            faults
                .iter()
                .all(|f| f["ttl_left_s"].as_u64().unwrap() <= 120)
        );
    }
}

/// One line per JSON object of an event log (none when it is not there yet).
pub fn event_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Node -> entry names of the log's node lines of `phase`.
pub fn entries_by_node(
    log: &[serde_json::Value],
    phase: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut m = std::collections::BTreeMap::<_, std::collections::BTreeSet<String>>::new();
    for l in log
        .iter()
        .filter(|l| l["phase"] == phase && !l["node"].is_null())
    {
        let set = m
            .entry(l["node"].as_str().unwrap().to_string())
            .or_default();
        for e in l["entries"].as_array().unwrap() {
            set.insert(e.as_str().unwrap().to_string());
        }
    }
    m
}

/// Issue 14 point 11, for any transport: a run of `halves` (step `step-0`) killed with
/// `kill -9`, then a run of `isolate:n1` (also `step-0`, so entry names collide on every node)
/// at once (the killed run's entries live) and, the second time, after the lease (expired).
/// The new run must finish, and its `cleared` lines must name exactly what the killed run had
/// started on each node. `spawn(scenario, events)` starts a run, `run(scenario, events)` runs
/// one to its end.
pub fn killed_runs_never_block_a_new_one(
    lease: Duration,
    spawn: impl Fn(&str, &str) -> std::process::Child,
    run: impl Fn(&str, &str) -> Output,
) {
    let lease_text = humantime::format_duration(lease).to_string();
    let killed = format!(
        "lease = \"{lease_text}\"\n[[step]]\nat = \"0s\"\npartition = \"halves\"\nfor = \"2m\"\n"
    );
    let next = format!(
        "lease = \"{lease_text}\"\n[[step]]\nat = \"0s\"\npartition = \"isolate:n1\"\nfor = \"1s\"\n"
    );
    let t0 = std::time::Instant::now();
    for after_lease in [false, true] {
        let when = if after_lease {
            "after the lease"
        } else {
            "at once"
        };
        let (sc, ev) = (temp_file("toml", &killed), temp_path("jsonl"));
        let mut child = spawn(sc.arg(), ev.arg());
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while !event_log(&ev.0)
            .iter()
            .any(|l| l["node"].is_null() && l["phase"] == "start")
        {
            if let Some(s) = child.try_wait().unwrap() {
                panic!(
                    "{when}: the first run exited ({s}) before its step started: {:#?}",
                    event_log(&ev.0)
                );
            }
            assert!(
                std::time::Instant::now() < end,
                "{when}: the first run's step did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL: nothing heals, nobody renews
        child.wait().unwrap();
        let left = entries_by_node(&event_log(&ev.0), "start");
        assert_eq!(left.len(), 5, "{when}: halves gives every node entries");
        if after_lease {
            std::thread::sleep(lease + Duration::from_millis(1500));
        }
        let (sc2, ev2) = (temp_file("toml", &next), temp_path("jsonl"));
        let out = run(sc2.arg(), ev2.arg());
        let log = event_log(&ev2.0);
        assert!(
            out.status.success(),
            "{when}: the next run failed ({}): {}\n{log:#?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            log.last().unwrap()["outcome"],
            "finished",
            "{when}: {log:#?}"
        );
        let cleared = entries_by_node(&log, "cleared");
        assert_eq!(
            cleared, left,
            "{when}: the cleared lines do not name what the killed run left: {log:#?}"
        );
        assert!(
            log.iter()
                .filter(|l| l["phase"] == "cleared")
                .all(|l| l["reason"] == "left by an earlier run"),
            "{when}: {log:#?}"
        );
        // The new run's own entries went on (and off) on every node.
        assert_eq!(entries_by_node(&log, "start").len(), 5, "{when}: {log:#?}");
        assert_eq!(entries_by_node(&log, "end").len(), 5, "{when}: {log:#?}");
        eprintln!(
            "{when}: done {:?} after the first run's start",
            t0.elapsed()
        );
    }
}
