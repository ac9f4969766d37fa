//! `netfault cluster` over the SSH transport: five hosts on a bridge, each running an sshd of
//! its own (started by the test, keys made by ssh-keygen), and the coordinator, a child
//! `netfault` process, in a sixth namespace on the same bridge reaching them by ssh. The
//! remote `netfault` is the binary under test (`netfault = "..."` in the cluster file); run by
//! an sshd inside a node's namespace, it must find the state `netfault --netns NODE` uses, which
//! the test reads. Every cut is checked on the wire (the 5×5 UDP matrix, both families). Needs
//! root and OpenSSH (scripts/setup.sh).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    process::Output,
    time::Duration,
};

use common::*;
use netfault_lab::{
    cluster::{self, Grudge},
    lab::{host_v4, host_v6},
    sshd::SshServers,
};

/// Where the coordinator lives on the bridge: not a node's address, so no cut applies to it.
const CTL_HOST: u8 = 100;
/// A TCP port on n3 nobody protects: the control case for the SSH port.
const PLAIN_PORT: u16 = 7022;
/// Longer than any cluster command should take; only bounds a broken run.
const CLUSTER_LIMIT: Duration = Duration::from_secs(60);

/// Five nodes with an sshd each, and the coordinator's namespace. The servers stop before the
/// lab's teardown (detach every node) and its namespaces go.
struct SshLab {
    servers: SshServers,
    nodes: Vec<Host>,
    ctl: Host,
    nf: Netfault,
    _lab: Lab,
}

fn ssh_lab() -> SshLab {
    let mut lab = Lab::new(PREFIX).expect("lab");
    let mut names: Vec<String> = (0..5)
        .map(|i| lab.netns(&char::from(b'a' + i).to_string()).unwrap())
        .collect();
    names.push(lab.netns("ctl").unwrap());
    let num = |i: usize| if i < 5 { i as u8 + 1 } else { CTL_HOST };
    let addrs: Vec<[ipnet::IpNet; 2]> =
        (0..6).map(|i| [host_v4(num(i)), host_v6(num(i))]).collect();
    let members: Vec<(&str, &[ipnet::IpNet])> = names
        .iter()
        .zip(&addrs)
        .map(|(n, a)| (n.as_str(), &a[..]))
        .collect();
    let bridge = lab.bridge(&members).expect("bridge");
    let mut hosts: Vec<Host> = names
        .iter()
        .zip(&bridge.member_ifaces)
        .zip(&addrs)
        .map(|((ns, iface), a)| {
            let (ipnet::IpNet::V4(v4), ipnet::IpNet::V6(v6)) = (a[0], a[1]) else {
                unreachable!("v4 then v6")
            };
            Host {
                ns: ns.clone(),
                iface: iface.clone(),
                v4: v4.addr(),
                v6: v6.addr(),
            }
        })
        .collect();
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            warm(a, b);
        }
    }
    let ctl = hosts.pop().unwrap();
    let nf = nf();
    // Attached here, one at a time (and detached on teardown): loading the programs takes
    // seconds on a loaded machine, five at once can pass the coordinator's 10 s deadline, and
    // these tests are about the transport. Attaching over SSH is what each node's first
    // `apply` would do otherwise (the bench's cluster part times it).
    for h in &hosts {
        attach(&mut lab, &nf, h);
    }
    let mut servers = SshServers::new().expect("ssh keys");
    for h in &hosts {
        servers
            .start(&h.ns, &[ssh_addr(h)])
            .unwrap_or_else(|e| panic!("sshd in {}: {e:#}", h.ns));
    }
    SshLab {
        servers,
        nodes: hosts,
        ctl,
        nf,
        _lab: lab,
    }
}

fn ssh_addr(h: &Host) -> SocketAddr {
    SocketAddr::new(h.v4.into(), 22)
}

impl SshLab {
    /// Stops everything and checks that no sshd, session or remote command is left running.
    fn finish(self) {
        let seen = self.servers.processes();
        assert!(!seen.is_empty(), "the servers were running");
        let dir = self.servers.dir().to_owned();
        drop(self);
        let left: Vec<u32> = seen.iter().filter(|p| p.alive()).map(|p| p.pid).collect();
        assert!(left.is_empty(), "left running: {left:?}");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    /// `[[node]]` n1..n5 over ssh; `edit(i, lines)` may change a node's lines.
    fn cluster_text(&self, edit: impl Fn(usize, &mut Vec<String>)) -> String {
        let opts: Vec<String> = self
            .servers
            .client_options()
            .iter()
            .map(|o| format!("{o:?}"))
            .collect();
        cluster::cluster_text(&self.nodes, |i, h, lines| {
            lines.extend([
                format!("ssh = \"root@{}\"", h.v4),
                format!("ssh_options = [{}]", opts.join(", ")),
                format!("netfault = {:?}", self.nf.bin.display().to_string()),
            ]);
            edit(i, lines);
        })
    }

    /// `netfault cluster --cluster FILE args...` run from namespace `ns`, bounded.
    fn cluster_from(&self, ns: &str, file: &TempFile, args: &[&str]) -> Output {
        cluster::run_cluster(Some(ns), &self.nf.bin, &file.0, args, CLUSTER_LIMIT).unwrap()
    }

    fn cluster(&self, file: &TempFile, args: &[&str]) -> Output {
        self.cluster_from(&self.ctl.ns, file, args)
    }

    fn cluster_ok(&self, file: &TempFile, args: &[&str]) -> String {
        ok_stdout(
            self.cluster(file, args),
            &format!("netfault cluster {args:?}"),
        )
    }

    /// The partition entries a node holds, as `netfault --netns NODE` sees them.
    fn partitions(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = self
            .nf
            .rule_names(&self.nodes[i].ns)
            .unwrap()
            .into_iter()
            .filter(|r| r.contains(".from-"))
            .collect();
        v.sort();
        v
    }

    /// `protect list --json` on node i: label → packets.
    fn protections(&self, i: usize) -> BTreeMap<String, u64> {
        let v = self
            .nf
            .json(&self.nodes[i].ns, &["protect", "list", "--json"])
            .unwrap();
        v["protected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["label"].as_str().unwrap().to_string(),
                    p["packets"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

impl SshLab {
    /// Logins (one per TCP connection: `Accepted publickey`) and sessions (one per remote
    /// command: `Starting session`) node i's sshd logged so far (LogLevel VERBOSE).
    fn logins(&self, i: usize) -> (usize, usize) {
        let log = self.servers.log(i);
        (
            log.matches("Accepted publickey for root").count(),
            log.matches("Starting session: command").count(),
        )
    }

    /// Each node's logins and sessions since `before` (from [`logins`](Self::logins)) are
    /// `want`.
    fn assert_logins_since(&self, before: &[(usize, usize)], want: (usize, usize), what: &str) {
        for (i, b) in before.iter().enumerate() {
            let now = self.logins(i);
            assert_eq!(
                (now.0 - b.0, now.1 - b.1),
                want,
                "n{}: logins and sessions of {what}",
                i + 1
            );
        }
    }

    /// `netfault cluster ARGS` from the coordinator's namespace, to its end: its pid (which
    /// names its control directory) and output.
    fn cluster_pid(&self, file: &TempFile, args: &[&str]) -> (u32, Output) {
        let mut c = cluster::cluster_command(&self.nf.bin, &file.0, args);
        let mut child = cluster::spawn_in(Some(&self.ctl.ns), &mut c).unwrap();
        let pid = child.id();
        let out = netfault_lab::lab::output_within(&mut child, CLUSTER_LIMIT).unwrap();
        (pid, out)
    }
}

/// The control directories of coordinator `pid` (`nfmux-PID-XXXXXX` in the temp directory).
fn mux_dirs(pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("nfmux-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Running processes (zombies have no command line) whose command line holds `needle`.
fn running_with(needle: &str) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            (pid != std::process::id() && cmd.contains(needle)).then_some((pid, cmd))
        })
        .collect()
}

/// Issue 18 point 3: each command reaches each node over ONE ssh connection (OpenSSH
/// connection sharing) and ONE remote command, a persistent `netfault node session`, however
/// many operations it does there (partition: attach step, then the plan; heal: pick, then
/// state); nothing of it is left after it (control directory, master, session); after
/// `kill -9` of a run, its masters and sessions die with it.
#[test]
fn each_command_opens_one_ssh_connection_per_node_and_leaves_nothing_even_after_kill_9() {
    let l = ssh_lab();
    let file = temp_file("toml", &l.cluster_text(|_, _| {}));
    for args in [
        &["partition", "halves", "--ttl", "2m"][..],
        &["heal"][..],
        &["status", "--json"][..],
    ] {
        let before: Vec<(usize, usize)> = (0..5).map(|i| l.logins(i)).collect();
        let (pid, out) = l.cluster_pid(&file, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {}: {err}", out.status);
        assert!(!err.contains("no shared connection"), "{args:?}: {err}");
        for (i, b) in before.iter().enumerate() {
            let now = l.logins(i);
            assert_eq!(
                now.0 - b.0,
                1,
                "{args:?}: ssh connections to n{}; sshd log:\n{}",
                i + 1,
                l.servers.log(i)
            );
            assert_eq!(
                now.1 - b.1,
                1,
                "{args:?}: n{}: remote commands; sshd log:\n{}",
                i + 1,
                l.servers.log(i)
            );
        }
        assert_eq!(mux_dirs(pid), Vec::<std::path::PathBuf>::new(), "{args:?}");
        let left = running_with(&format!("nfmux-{pid}-"));
        assert!(left.is_empty(), "{args:?}: left running: {left:?}");
    }
    for i in 0..5 {
        assert!(l.partitions(i).is_empty(), "n{} after heal", i + 1);
    }

    // Options that choose sharing themselves are the user's: no master of ours, and here
    // (`ControlMaster=no`, no path) the node's session logs in on its own, once.
    let own = temp_file(
        "toml",
        &l.cluster_text(|_, lines| {
            let opts = lines
                .iter_mut()
                .find(|x| x.starts_with("ssh_options"))
                .unwrap();
            *opts = opts.replace("]", ", \"-o\", \"ControlMaster=no\"]");
        }),
    );
    let before: Vec<(usize, usize)> = (0..5).map(|i| l.logins(i)).collect();
    let (pid, out) = l.cluster_pid(&own, &["heal"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mux_dirs(pid).is_empty());
    l.assert_logins_since(&before, (1, 1), "a heal with the user's ControlMaster=no");

    // No master can be opened (its directory cannot be made): each node says so once, and
    // its session connects on its own and serves every operation.
    let before: Vec<(usize, usize)> = (0..5).map(|i| l.logins(i)).collect();
    let mut c = cluster::cluster_command(&l.nf.bin, &file.0, &["heal"]);
    c.env("TMPDIR", "/nonexistent/netfault-test");
    let mut child = cluster::spawn_in(Some(&l.ctl.ns), &mut c).unwrap();
    let out = netfault_lab::lab::output_within(&mut child, CLUSTER_LIMIT).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("no shared connection").count(), 5, "{err}");
    l.assert_logins_since(&before, (1, 1), "a heal without a master");

    // A node whose netfault has no `node session` (an older build: it exits 2 before any
    // greeting): the coordinator runs each operation as a remote command of its own, on the
    // same connection, and the command succeeds (heal: the refused session, pick, state).
    let older = temp_file_mode(
        "sh",
        &format!(
            "#!/bin/sh\nif [ \"$2\" = session ]; then echo \"error: unrecognized subcommand 'session'\" >&2; exit 2; fi\nexec {} \"$@\"\n",
            l.nf.bin.display()
        ),
        0o755,
    );
    let old_file = temp_file(
        "toml",
        &l.cluster_text(|_, lines| {
            let nf = lines
                .iter_mut()
                .find(|x| x.starts_with("netfault ="))
                .unwrap();
            *nf = format!("netfault = {:?}", older.arg());
        }),
    );
    let before: Vec<(usize, usize)> = (0..5).map(|i| l.logins(i)).collect();
    let out = l.cluster(&old_file, &["heal"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    l.assert_logins_since(&before, (1, 3), "a heal on a netfault without sessions");

    // Ctrl-C at a terminal (SIGINT to the run's process group): the run heals over the same
    // connections, one per node for its whole life, and leaves nothing.
    let sc = temp_file(
        "toml",
        "lease = \"8s\"\n[[step]]\nat = \"0s\"\npartition = \"halves\"\nfor = \"2m\"\n",
    );
    let ev = temp_path("jsonl");
    let before: Vec<(usize, usize)> = (0..5).map(|i| l.logins(i)).collect();
    let mut c =
        cluster::cluster_command(&l.nf.bin, &file.0, &["run", sc.arg(), "--events", ev.arg()]);
    c.stdout(std::process::Stdio::null()).process_group(0);
    let mut child = cluster::spawn_in(Some(&l.ctl.ns), &mut c).unwrap();
    let pid = child.id();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !event_log(&ev.0)
        .iter()
        .any(|l| l["node"].is_null() && l["phase"] == "start")
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{:#?}",
            event_log(&ev.0)
        );
        assert!(
            std::time::Instant::now() < end,
            "no step started within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a signal to the process group of our own child, which still runs.
    assert_eq!(unsafe { libc::kill(-(pid as i32), libc::SIGINT) }, 0);
    let out = netfault_lab::lab::output_within(&mut child, CLUSTER_LIMIT).unwrap();
    let log = event_log(&ev.0);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}\n{log:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(log.last().unwrap()["outcome"], "interrupted", "{log:#?}");
    for (i, b) in before.iter().enumerate() {
        assert!(
            l.partitions(i).is_empty(),
            "n{} after the interrupted run",
            i + 1
        );
        assert_eq!(
            l.logins(i).0 - b.0,
            1,
            "n{}: ssh connections of the run, its heal included",
            i + 1
        );
    }
    assert!(mux_dirs(pid).is_empty());
    let left = running_with(&format!("nfmux-{pid}-"));
    assert!(left.is_empty(), "left running: {left:?}");

    // A run killed with -9 while its masters are up: they die with it, sessions too.
    let sc = temp_file(
        "toml",
        "lease = \"8s\"\n[[step]]\nat = \"0s\"\npartition = \"halves\"\nfor = \"2m\"\n",
    );
    let ev = temp_path("jsonl");
    let mut c =
        cluster::cluster_command(&l.nf.bin, &file.0, &["run", sc.arg(), "--events", ev.arg()]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cluster::spawn_in(Some(&l.ctl.ns), &mut c).unwrap();
    let pid = child.id();
    let needle = format!("nfmux-{pid}-");
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let masters = loop {
        let m: Vec<(u32, String)> = running_with(&needle)
            .into_iter()
            .filter(|(_, c)| c.contains(" -M -N "))
            .collect();
        let started = event_log(&ev.0)
            .iter()
            .any(|l| l["node"].is_null() && l["phase"] == "start");
        if m.len() == 5 && started {
            break m;
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("the run exited ({s}): {:#?}", event_log(&ev.0));
        }
        assert!(
            std::time::Instant::now() < end,
            "no 5 masters and a started step within 30 s: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let dirs = mux_dirs(pid);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !running_with(&needle).is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = running_with(&needle);
    assert!(
        left.is_empty(),
        "5 s after kill -9, still running: {left:?} (masters were {masters:?})"
    );
    // The next command heals what the run left, and removes the dead run's directory.
    let healed = l.cluster_ok(&file, &["heal"]);
    assert!(healed.starts_with("healed "), "{healed}");
    assert!(!dirs[0].exists(), "{} left behind", dirs[0].display());
    for i in 0..5 {
        assert!(l.partitions(i).is_empty(), "n{} after the last heal", i + 1);
    }
    l.finish();
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The label of the protection of node `h`'s SSH endpoint.
fn ssh_label(h: &Host) -> String {
    format!("control:{}:22", h.v4)
}

#[test]
fn isolate_over_ssh_cuts_the_wire_as_its_grudge_says_keeps_ssh_open_and_heals() {
    let l = ssh_lab();
    let file = temp_file("toml", &l.cluster_text(|_, _| {}));
    let n3 = &l.nodes[2];
    let plain = SocketAddr::new(n3.v4.into(), PLAIN_PORT);
    let _echo = TcpEcho::start(&n3.ns, plain).unwrap();
    assert_matrix(&l.nodes, &cluster::full(5), "before any partition");
    assert!(
        tcp(&l.nodes[0], plain, TCP_OK).ok(),
        "n1 -> n3:{PLAIN_PORT} before any partition"
    );

    let doc: serde_json::Value = serde_json::from_str(
        &l.cluster_ok(&file, &["partition", "isolate:n3", "--json", "--ttl", "2m"]),
    )
    .unwrap();
    let grudge: Grudge = serde_json::from_value(doc["grudge"].clone()).unwrap();
    let name = doc["name"].as_str().unwrap();
    assert_eq!(grudge["n3"], set(&["n1", "n2", "n4", "n5"]));
    for n in ["n1", "n2", "n4", "n5"] {
        assert_eq!(grudge[n], set(&["n3"]), "{grudge:?}");
    }
    // The remote netfault wrote where `netfault --netns NODE` reads: each node holds its share.
    for i in 0..5 {
        let want = cluster::share(&grudge, i, name);
        assert_eq!(l.partitions(i), want, "entries on n{}", i + 1);
        // Every node protects every node's SSH endpoint (a coordinator may run on any).
        let prot = l.protections(i);
        for h in &l.nodes {
            assert!(prot.contains_key(&ssh_label(h)), "n{}: {prot:?}", i + 1);
        }
    }
    assert_matrix(
        &l.nodes,
        &cluster::expected(&grudge, 5).unwrap(),
        "isolate:n3",
    );
    // Verified on the wire, each node probing and listening in `netfault node measure` over
    // its SSH session: exactly the grudge, one way per ordered pair and family.
    let v: serde_json::Value =
        serde_json::from_str(&l.cluster_ok(&file, &["verify", "--json"])).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["faults"][0]["checked"], 40, "{v:#}");

    // n1 drops n3's packets and n3 drops n1's, but n3's SSH port stays open to n1, through
    // the protection (its counter moves), while another TCP port on n3 is cut.
    let before = l.protections(2)[&ssh_label(n3)];
    let out = l.servers.ssh(
        &l.nodes[0].ns,
        &[],
        &format!("root@{}", n3.v4),
        "echo reached",
        Duration::from_secs(20),
    );
    let out = out.unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "reached",
        "ssh n1 -> n3 during the partition: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let after = l.protections(2)[&ssh_label(n3)];
    assert!(
        after > before,
        "the SSH session passed by the protection: {before} -> {after}"
    );
    assert!(
        !tcp(&l.nodes[0], plain, TCP_BLOCKED).ok(),
        "n1 -> n3:{PLAIN_PORT} is cut"
    );
    // A coordinator on a partitioned node (n1) still reaches every node, n3 included.
    let out = l.cluster_from(&l.nodes[0].ns, &file, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 5, "{st}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["reachable"], true, "{n}");
        assert_eq!(n["transport"], "ssh", "{n}");
        assert_eq!(n["attached"][0], l.nodes[i].iface.as_str(), "{n}");
        let faults = n["faults"].as_array().unwrap();
        assert_eq!(faults.len(), if i == 2 { 8 } else { 2 }, "{n}");
    }

    let healed = l.cluster_ok(&file, &["heal"]);
    assert!(healed.starts_with("healed 16 entries"), "{healed}");
    for i in 0..5 {
        assert!(l.partitions(i).is_empty(), "n{} after heal", i + 1);
    }
    assert_matrix_heals(&l.nodes, &cluster::full(5), "healed");
    assert!(tcp(&l.nodes[0], plain, TCP_OK).ok(), "n1 -> n3 healed");
    // Each node probes the others in `netfault node measure` over its SSH session: 50 probes
    // a family, all answered.
    let m: serde_json::Value = serde_json::from_str(&l.cluster_ok(
        &file,
        &[
            "measure",
            "--duration",
            "1s",
            "--interval",
            "20ms",
            "--json",
        ],
    ))
    .unwrap();
    assert_measured(&m, "ssh", 50, &l.nodes);
    drop(_echo);
    l.finish();
}

/// A failed node fails the run (exit 1, naming it and why) and the others give back what they
/// took: n5's sshd down; n2's remote binary missing; n4's interface unknown to the remote.
#[test]
fn a_node_that_fails_over_ssh_fails_the_run_naming_it_and_the_others_are_rolled_back() {
    let mut l = ssh_lab();
    let cases: [(usize, &str, Vec<&str>); 3] = [
        (
            1,
            "netfault = \"/nonexistent/netfault\"",
            vec!["/nonexistent/netfault", "127"],
        ),
        (
            3,
            "iface = [\"nosuch0\"]",
            vec!["no interface named 'nosuch0'", "exit 2"],
        ),
        (4, "", vec!["Connection refused", "ssh root@192.0.2.5"]),
    ];
    for (bad, line, want) in cases {
        if line.is_empty() {
            // n5's SSH is down.
            l.servers.stop(bad).unwrap();
        }
        let text = l.cluster_text(|i, lines| {
            if i == bad && !line.is_empty() {
                let key = line.split(' ').next().unwrap();
                lines.retain(|x| !x.starts_with(&format!("{key} ")));
                lines.push(line.to_string());
            }
        });
        let file = temp_file("toml", &text);
        let out = l.cluster(&file, &["partition", "complete", "--name", "doomed"]);
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("n{} failing: {}", bad + 1, err.trim());
        assert_eq!(out.status.code(), Some(1), "n{}: {err}", bad + 1);
        assert!(err.contains(&format!("node n{}", bad + 1)), "{err}");
        for w in &want {
            assert!(err.contains(w), "n{}: want {w:?}: {err}", bad + 1);
        }
        // Either the failure came at the apply and the others were undone, or already at the
        // attach step that comes first, before any fault: both leave nothing behind.
        assert!(
            err.contains("undone on") || err.contains("no fault was applied"),
            "{err}"
        );
        // Only n5's master fails (its server is down), and says so; the others share theirs.
        assert_eq!(
            err.contains("no shared connection"),
            line.is_empty(),
            "n{}: {err}",
            bad + 1
        );
        for i in (0..5).filter(|&i| i != bad) {
            // Attached by the apply, then given back: no entry and no protection of it left.
            let names = l.nf.rule_names(&l.nodes[i].ns).unwrap();
            assert!(
                !names.iter().any(|n| n.starts_with("doomed.")),
                "n{}: {names:?}; {err}",
                i + 1
            );
            // The attach step that comes first may leave the nodes attached with the SSH
            // protections (`control:IP:22`): no fault, and what keeps the transport reachable.
            let prot: Vec<String> = l
                .protections(i)
                .into_keys()
                .filter(|k| k.starts_with("control:") && !k.ends_with(":22"))
                .collect();
            assert!(prot.is_empty(), "n{}: {prot:?}", i + 1);
        }
        if line.is_empty() {
            // Status reports the unreachable node and still the others.
            let st: serde_json::Value =
                serde_json::from_str(&l.cluster_ok(&file, &["status", "--json"])).unwrap();
            let nodes = st["nodes"].as_array().unwrap();
            assert_eq!(nodes[4]["reachable"], false, "{st}");
            assert!(
                nodes[4]["error"]
                    .as_str()
                    .unwrap()
                    .contains("Connection refused"),
                "{st}"
            );
            assert!(nodes[..4].iter().all(|n| n["reachable"] == true), "{st}");
        }
    }
    l.finish();
}

/// Issue 14 point 11 over SSH: entries a `kill -9`ed run left, live or expired, never block a
/// new run of the same step names; each node's `cleared` line names what was deleted.
#[test]
fn a_run_after_a_killed_one_clears_its_entries_over_ssh_at_once_and_after_the_lease() {
    let l = ssh_lab();
    // XDP for good: a partition's first drop rule on a veth would load it within the run's
    // deadline of lease / 2, seconds on a busy machine.
    for h in &l.nodes {
        run(&l.nf, h, &["detach"]);
        run(&l.nf, h, &["attach", &h.iface, "--xdp-mode", "native"]);
    }
    let file = temp_file("toml", &l.cluster_text(|_, _| {}));
    // Each change and renewal is an ssh session per node, each with a deadline of lease / 2:
    // a lease with room for a loaded machine.
    killed_runs_never_block_a_new_one(
        Duration::from_secs(8),
        |sc, ev| {
            let mut c = cluster::cluster_command(&l.nf.bin, &file.0, &["run", sc, "--events", ev]);
            c.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            cluster::spawn_in(Some(&l.ctl.ns), &mut c).unwrap()
        },
        |sc, ev| l.cluster(&file, &["run", sc, "--events", ev]),
    );
    assert_matrix_heals(&l.nodes, &cluster::full(5), "after the last run");
    l.finish();
}

/// `cluster pause` and `cluster resume` over SSH (`netfault node pause|pauses|resume`): the
/// watchdog is started on the node's host and outlives the SSH session, resuming on its
/// deadline; `cluster resume` ends a pause at once.
#[test]
fn cluster_pause_over_ssh_is_held_on_the_node_and_resumed() {
    use netfault::pause::{Store, target};
    let lab = ssh_lab();
    let victim = netfault_lab::lab::KillOnDrop(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap(),
    );
    let pid = victim.id() as i32;
    let file = temp_file(
        "toml",
        &lab.cluster_text(|i, lines| {
            if i == 0 {
                lines.push(format!("pause_target = \"pid:{pid}\""));
            }
        }),
    );
    struct Resume;
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = std::process::Command::new(env!("CARGO_BIN_EXE_netfault"))
                .args(["resume", "sshp.n1"])
                .output();
        }
    }
    let _resume = Resume;
    let out = lab.cluster_ok(
        &file,
        &["pause", "n1", "--for", "none", "--name", "sshp", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["nodes"][0]["pause"], "sshp.n1", "{out}");
    assert_eq!(target::state(pid), Some('T'));
    // A node without pause_target is refused before anything changes.
    let o = lab.cluster(&file, &["pause", "n2", "--for", "1s"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = lab.cluster_ok(&file, &["resume", "n1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["nodes"][0]["resumed"][0], "sshp.n1", "{out}");
    assert_ne!(target::state(pid), Some('T'));
    // On its own deadline, the SSH session long gone.
    let t = std::time::Instant::now();
    lab.cluster_ok(&file, &["pause", "n1", "--for", "1500ms", "--name", "sshp"]);
    assert_eq!(target::state(pid), Some('T'));
    let end = t + Duration::from_secs(5);
    while target::state(pid) == Some('T') {
        assert!(std::time::Instant::now() < end, "not resumed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(t.elapsed() >= Duration::from_millis(1500), "resumed early");
    assert!(Store::default().get("sshp.n1").is_none());
    lab.finish();
}
