//! One namespace, one netfault (issue 14, point 10): however a namespace is reached (`--netns
//! NAME`, `--pid PID` of a process in it, or a CLI started inside it, as a shell on a lab node runs it), it has one state and
//! one set of programs; programs another state holds are refused, naming where they are; the
//! state of a namespace that is gone is removed by the next command. Needs root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use common::*;
use netfault_lab::lab::run_in;

/// `netfault args...` started inside `ns` (no `--netns`): the child inherits the namespace of
/// the thread that spawns it, as under `nsenter --net=/run/netns/NS`.
fn inside(ns: &str, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    run_in(ns, move || {
        Command::new(env!("CARGO_BIN_EXE_netfault"))
            .env_remove("SSH_CONNECTION")
            .args(&args)
            .stdin(Stdio::null())
            .output()
    })
    .unwrap()
    .unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `netfault --pid P args...`, P a process the test starts inside `ns` (as a container's
/// process would be), killed when the command is done.
fn by_pid(ns: &str, args: &[&str]) -> Output {
    let mut sleeper = run_in(ns, || Command::new("sleep").arg("60").spawn())
        .unwrap()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netfault"))
        .env_remove("SSH_CONNECTION")
        .arg("--pid")
        .arg(sleeper.id().to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    out
}

/// How a command reaches the namespace.
#[derive(Clone, Copy, Debug)]
enum Via {
    Name,
    Inside,
    Pid,
}

fn nf_via(nf: &Netfault, h: &Host, via: Via, args: &[&str]) -> String {
    match via {
        Via::Name => ok(
            nf.output(&h.ns, args).unwrap(),
            &format!("--netns {args:?}"),
        ),
        Via::Inside => ok(inside(&h.ns, args), &format!("inside {args:?}")),
        Via::Pid => ok(by_pid(&h.ns, args), &format!("--pid {args:?}")),
    }
}

/// netfault's programs on `h`'s interface, as the kernel lists them.
fn programs(h: &Host) -> Vec<(netfault::dataplane::Hook, u32)> {
    let iface = h.iface.clone();
    run_in(&h.ns, move || {
        let idx = netfault::dataplane::ifindex(&iface).expect("the interface");
        netfault::dataplane::netfault_programs(idx)
    })
    .unwrap()
}

fn rule_names(nf: &Netfault, h: &Host, via: Via) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&nf_via(nf, h, via, &["rule", "list", "--json"])).unwrap();
    let mut names: Vec<String> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Attach one way, then the other way sees the same state: status, an attach that is a no-op
/// (no second program in the chain), rules added from either side in one rule set; detach from
/// the second side leaves nothing.
fn first_then_second(first: Via, second: Via) {
    let (mut lab, nf, [_a, b]) = pair();
    // The lab's teardown detaches if the test fails half way.
    let (nf2, ns) = (nf.clone(), b.ns.clone());
    lab.on_teardown(move || {
        let _ = nf2.run(&ns, &["detach"]);
    });
    let [pins, run_dir] = netfault_dirs(&b.ns);
    let attach = ["attach", b.iface.as_str()];
    let out = nf_via(&nf, &b, first, &attach);
    assert!(out.contains("attached"), "{out}");
    let progs = programs(&b);
    assert!(!progs.is_empty(), "{first:?}: no program on {}", b.iface);

    let st: serde_json::Value =
        serde_json::from_str(&nf_via(&nf, &b, second, &["status", "--json"])).unwrap();
    assert_eq!(
        st["interfaces"][0]["iface"], b.iface,
        "{second:?} does not see the attach made {first:?}: {st}"
    );
    assert_eq!(st["namespace"], b.ns.as_str(), "{st}");
    assert_eq!(st["state"], run_dir.file_name().unwrap().to_str().unwrap());

    let out = nf_via(&nf, &b, second, &attach);
    assert!(out.contains("already attached"), "{second:?}: {out}");
    assert_eq!(programs(&b), progs, "a second attach changed the chain");

    let rule = |name: &str| {
        vec![
            "rule".to_string(),
            "add".into(),
            name.into(),
            "--proto".into(),
            "udp".into(),
            "--dport".into(),
            "9".into(),
            "--drop".into(),
            "1".into(),
        ]
    };
    let r1 = rule("from-first");
    let r2 = rule("from-second");
    nf_via(
        &nf,
        &b,
        first,
        &r1.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    nf_via(
        &nf,
        &b,
        second,
        &r2.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let want = vec!["from-first".to_string(), "from-second".to_string()];
    for via in [first, second] {
        assert_eq!(rule_names(&nf, &b, via), want, "{via:?}");
    }
    // One state directory for the namespace, whichever way it was named.
    let keys: Vec<String> = std::fs::read_dir(netfault::control::state::RUN_ROOT)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|k| k.contains(&b.ns))
        .collect();
    assert!(keys.is_empty(), "state kept by name: {keys:?}");

    let out = nf_via(&nf, &b, second, &["detach"]);
    assert!(out.contains("detached"), "{out}");
    assert!(programs(&b).is_empty(), "programs left on {}", b.iface);
    assert!(!pins.exists() && !run_dir.exists(), "state left behind");
    let st: serde_json::Value =
        serde_json::from_str(&nf_via(&nf, &b, first, &["status", "--json"])).unwrap();
    assert_eq!(st["interfaces"].as_array().unwrap().len(), 0, "{st}");
}

#[test]
fn attach_by_name_then_from_inside_is_one_state() {
    first_then_second(Via::Name, Via::Inside);
}

#[test]
fn attach_from_inside_then_by_name_is_one_state() {
    first_then_second(Via::Inside, Via::Name);
}

#[test]
fn attach_by_a_process_then_by_name_is_one_state() {
    first_then_second(Via::Pid, Via::Name);
}

#[test]
fn attach_by_name_then_by_a_process_is_one_state() {
    first_then_second(Via::Name, Via::Pid);
}

#[test]
fn a_pid_that_does_not_exist_is_refused_with_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_netfault"))
        .args(["--pid", "2147483646", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pid"));
    let out = Command::new(env!("CARGO_BIN_EXE_netfault"))
        .args(["--pid", "1", "--netns", "x", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--pid with --netns");
}

/// Removes a directory tree on drop (pins moved aside by the test: unpinning their links is
/// what detaches the programs).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Programs that another state holds (here: pins moved to another key, as an older layout
/// left them) are refused by an attach, which names their ids and the pin path and changes
/// nothing.
#[test]
fn an_attach_refuses_netfaults_programs_another_state_holds() {
    let (mut lab, nf, [_a, b]) = pair();
    let (nf2, ns) = (nf.clone(), b.ns.clone());
    lab.on_teardown(move || {
        let _ = nf2.run(&ns, &["detach"]);
    });
    let [pins, run_dir] = netfault_dirs(&b.ns);
    ok(
        nf.output(&b.ns, &["attach", &b.iface]).unwrap(),
        "first attach",
    );
    let progs = programs(&b);
    assert!(!progs.is_empty());
    let aside = Path::new(netfault::control::state::PIN_ROOT)
        .join(format!("nftest-aside-{}", std::process::id()));
    let _aside = RemoveOnDrop(aside.clone());
    std::fs::rename(&pins, &aside).unwrap();
    std::fs::remove_dir_all(&run_dir).unwrap();

    let out = nf.output(&b.ns, &["attach", &b.iface]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    for (_, id) in &progs {
        assert!(err.contains(&format!("program {id}")), "{err}");
    }
    assert!(err.contains(&aside.display().to_string()), "{err}");
    assert_eq!(programs(&b), progs, "the refused attach changed the chain");
    assert!(!pins.exists(), "the refused attach left pins");
}

/// State of a namespace deleted without a detach is removed by the next command that opens a
/// state (in another namespace).
#[test]
fn the_state_of_a_namespace_that_is_gone_is_removed_by_the_next_command() {
    let (mut lab, nf, [a, _b]) = pair();
    let [c, _d] = lab.pair().unwrap();
    let gone = c.ns.clone();
    ok(
        nf.output(&gone, &["attach", &c.iface]).unwrap(),
        "attach in the namespace to delete",
    );
    let dirs = netfault_dirs(&gone);
    let _guard: Vec<RemoveOnDrop> = dirs.iter().cloned().map(RemoveOnDrop).collect();
    assert!(dirs.iter().all(|d| d.exists()));
    ok(
        Command::new("ip")
            .args(["netns", "del", &gone])
            .output()
            .unwrap(),
        "netns del",
    );
    // Any command that opens a state: attach in another namespace.
    let (nf2, ns) = (nf.clone(), a.ns.clone());
    lab.on_teardown(move || {
        let _ = nf2.run(&ns, &["detach"]);
    });
    ok(nf.output(&a.ns, &["attach", &a.iface]).unwrap(), "attach");
    for d in &dirs {
        assert!(
            !d.exists(),
            "{} of a deleted namespace is left",
            d.display()
        );
    }
}
