//! The operator is protected however netfault is started: a user logged in over SSH (a real
//! sshd in the server's namespace, a throwaway user, a key made here) runs `sudo netfault`,
//! whose env_reset removes `SSH_CONNECTION`, to drop every packet on the server's interface.
//! Their session goes on over the same connection, and the rule drops everything else. Needs
//! root, OpenSSH and sudo (scripts/setup.sh).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{TcpEcho, attach, counters, pair, ping_received};
use netfault_lab::{
    lab::tcp_connect_from,
    sshd::{LoginUser, SshServers, SudoRule},
};

/// A port on the server nobody protects: the control for what the rule drops.
const OTHER_PORT: u16 = 7022;
/// Bounds the session (it takes about 2 s when it works).
const SESSION_LIMIT: Duration = Duration::from_secs(15);
/// A connect that gets no answer gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The session's last lines, sent after the rule is in place, spaced over this.
const TICKS: u32 = 3;

#[test]
fn sudo_netfault_over_ssh_keeps_the_session_and_drops_the_rest() {
    let started = Instant::now();
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    // Declared in this order so that they drop in the reverse one: the servers (and the
    // user's sessions) first, then the sudoers file, then the user.
    let user = LoginUser::new("nfsp").expect("throwaway user");
    let _sudo = SudoRule::new(&user, &nf.bin).expect("sudoers entry");
    let mut servers = SshServers::new().expect("ssh keys");
    servers.allow(&user).expect("authorize the user's key");
    let sshd = SocketAddr::new(b.v4.into(), 22);
    servers.start(&b.ns, &[sshd]).expect("sshd");
    let other = b.sock(false, OTHER_PORT);
    let _echo = TcpEcho::start(&b.ns, other).expect("echo server");
    assert_eq!(
        ping_received(&a, &b, false, 1),
        1,
        "control: ICMP works before the rule"
    );
    let control =
        tcp_connect_from(&a.ns, a.sock(false, 41000), other, CONNECT_TIMEOUT).expect("connect");
    assert!(control.is_ok(), "control: TCP works before the rule");
    drop(control);

    // One session: the rule, then more output over the same connection. SSH_CONNECTION is
    // set in the session and gone under sudo (the output shows both).
    let script = format!(
        "echo \"session ssh_connection=$SSH_CONNECTION\"; \
         sudo -n {bin} --netns {ns} rule add all --all-traffic --drop 100% --ttl 60s; \
         echo rc=$?; echo alive; \
         for i in $(seq {TICKS}); do sleep 0.5; echo tick $i; done",
        bin = nf.bin.display(),
        ns = b.ns,
    );
    let target = format!("{}@{}", user.name, b.v4);
    let t0 = Instant::now();
    let out = servers
        .ssh(&a.ns, &[], &target, &script, SESSION_LIMIT)
        .expect("ssh");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = format!(
        "ssh {} after {took:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nsshd log:\n{}",
        out.status,
        servers.log(0)
    );
    assert!(
        stdout.contains(&format!("session ssh_connection={} ", a.v4)),
        "the session did not start: {said}"
    );
    assert!(
        stdout.contains("rule all added") && stdout.contains("rc=0"),
        "sudo netfault did not add the rule: {said}"
    );
    let last = format!("tick {TICKS}");
    assert!(
        stdout.contains("alive") && stdout.contains(&last) && out.status.success(),
        "the SSH session was cut by the rule its own user added: {said}"
    );
    // Which connection netfault took for the operator's, found without SSH_CONNECTION.
    let note = stderr
        .lines()
        .find(|l| l.contains("protected the SSH connection"))
        .unwrap_or_else(|| panic!("no line says which connection was protected: {said}"));
    assert!(
        note.contains(&format!("{}:", a.v4))
            && note.contains(&format!("-> {sshd}"))
            && note.contains("SSH_CONNECTION is not set"),
        "{note}"
    );
    eprintln!("{note}");

    // The rule is there and drops the rest: ICMP, a new TCP connection to the other port and
    // one to sshd's own port (only that session's 4-tuple is protected).
    let names = nf.rule_names(&b.ns).expect("rule list");
    assert!(names.iter().any(|n| n == "all"), "rules: {names:?}");
    let dropped_before = counters(&nf, &b, "all").dropped;
    assert_eq!(ping_received(&a, &b, false, 1), 0, "ICMP got through");
    for (port, to) in [(41001, other), (41002, sshd)] {
        match tcp_connect_from(&a.ns, a.sock(false, port), to, CONNECT_TIMEOUT).expect("connect") {
            Ok(_) => panic!("a new connection to {to} got through the rule"),
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::EINPROGRESS | libc::ETIMEDOUT)),
                "the connection to {to} failed, but not by a timeout: {e}"
            ),
        }
    }
    assert!(
        counters(&nf, &b, "all").dropped > dropped_before,
        "the rule counted no drops"
    );
    // The protection passed the session's packets (it counts those it saved from the rule).
    let v = nf.json(&b.ns, &["protect", "list", "--json"]).unwrap();
    let label = format!("ssh:{}:", a.v4);
    let ssh = v["protected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["label"].as_str().unwrap_or("").starts_with(&label))
        .unwrap_or_else(|| panic!("no {label}* protection: {v}"));
    assert!(
        ssh["packets"].as_u64().unwrap() >= 2,
        "protection counters: {ssh}"
    );
    eprintln!("took {:?}", started.elapsed());
}

/// A copy of /bin/sh named `sshd`, in a directory of its own removed on drop: a parent that
/// looks like an sshd session process but holds no connection.
struct FakeSshd {
    dir: std::path::PathBuf,
}

impl FakeSshd {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("nfsp-fake-sshd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fake sshd directory");
        let f = Self { dir };
        std::fs::copy("/bin/sh", f.dir.join("sshd")).expect("copy /bin/sh");
        f
    }

    /// `netfault --netns NS args...` run by it (not exec'd: it stays the parent).
    fn netfault(&self, nf: &common::Netfault, ns: &str, args: &[&str]) -> std::process::Output {
        let cmd = format!(
            "\"$0\" --netns {ns} {}; exit $?",
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let child = std::process::Command::new(self.dir.join("sshd"))
            .args(["-c", &cmd])
            .arg(&nf.bin)
            .env_remove("SSH_CONNECTION")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the fake sshd");
        netfault_lab::lab::wait_bounded(child, SESSION_LIMIT).expect("netfault under it")
    }
}

impl Drop for FakeSshd {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("remove {}: {e}", self.dir.display());
        }
    }
}

#[test]
fn under_sshd_without_a_connection_rules_that_could_cut_it_are_refused() {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    let fake = FakeSshd::new();
    let drop_all = ["rule", "add", "all", "--all-traffic", "--drop", "100%"];
    let out = fake.netfault(&nf, &b.ns, &drop_all);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "not refused: {err}");
    assert!(
        err.contains("could cut the SSH connection")
            && err.contains("netfault protect add")
            && err.contains("--no-protect"),
        "{err}"
    );
    assert!(
        nf.rule_names(&b.ns).unwrap().is_empty(),
        "a refused rule changed the rule set"
    );
    // Nothing that could match TCP: nothing to refuse.
    let udp = [
        "rule", "add", "udp", "--proto", "udp", "--drop", "100%", "--dst",
    ];
    let dst = a.v4.to_string();
    let mut args = udp.to_vec();
    args.push(&dst);
    let out = fake.netfault(&nf, &b.ns, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the refusal says to do: protect explicitly, then --no-protect.
    nf.run(&b.ns, &["protect", "add", &a.v4.to_string()])
        .expect("protect add");
    let mut args = drop_all.to_vec();
    args.push("--no-protect");
    let out = fake.netfault(&nf, &b.ns, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(nf.rule_names(&b.ns).unwrap(), ["udp", "all"]);
    assert_eq!(
        ping_received(&a, &b, false, 1),
        1,
        "the explicit protection did not hold"
    );
}
