//! `--container` on a real Docker engine from the distribution (issue 17, points 1, 3 and 4).
//!
//! The test starts its own dockerd (data root, exec root, socket and pid file under a temp
//! directory; no bridge, no iptables; vfs storage; the containerd dockerd starts), imports a
//! root filesystem it builds from Debian's busybox-static (nothing is pulled), and runs a
//! container with `--network none` serving HTTP. One end of a veth goes into the container's
//! namespace by its process; the other stays in a lab namespace (the "host" side). Then:
//! attach and a drop-all rule through `--container` cut the host side's requests, removing it
//! lets them through again, `status` names the container, `pause --container` freezes the
//! container's own cgroup v2 (no answer during, answers after), and a stopped container, a
//! missing one, and an engine that is not running are refused with exit 2, naming the
//! container, changing nothing. Needs root and Debian's docker.io (scripts/setup.sh).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use netfault_lab::lab::{self, Lab, run_in};

const BIN: &str = env!("CARGO_BIN_EXE_netfault");
const HOST_IP: &str = "192.0.2.1";
const CTR_IP: &str = "192.0.2.2";
const PORT: u16 = 8080;

/// A dockerd of the test's own, everything it made removed on drop (also when a step fails).
struct Engine {
    dir: PathBuf,
    dockerd: Option<Child>,
}

impl Engine {
    fn start() -> Engine {
        let dir = PathBuf::from(format!("/tmp/nfctr-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let log = fs::File::create(dir.join("dockerd.log")).unwrap();
        let d = |p: &str| dir.join(p).display().to_string();
        let mut e = Engine {
            dir: dir.clone(),
            dockerd: None,
        };
        let child = Command::new("dockerd")
            .args(["--data-root", &d("data"), "--exec-root", &d("exec")])
            .args(["-H", &format!("unix://{}", d("docker.sock"))])
            .args(["--pidfile", &d("dockerd.pid")])
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args(["--storage-driver=vfs"])
            // A containerd namespace of its own: nothing shared with any other engine's.
            .args([
                "--containerd-namespace",
                "nfctr",
                "--containerd-plugins-namespace",
                "nfctrp",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd (Debian's docker.io; scripts/setup.sh installs it)");
        e.dockerd = Some(child);
        let t = Instant::now();
        while !e.docker(&["version"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "dockerd did not answer on its socket within 30 s: {}",
                fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("docker CLI")
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// An image made here: a root filesystem of Debian's static busybox, imported.
    fn import_busybox(&self) -> &'static str {
        let root = self.dir.join("rootfs");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("www")).unwrap();
        fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("/bin/busybox (Debian's busybox-static)");
        for a in ["sh", "httpd", "sleep"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        fs::write(root.join("www/index.html"), "netfault\n").unwrap();
        let tar = self.dir.join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar the root filesystem");
        self.docker_ok(&["import", &tar.display().to_string(), "nfctr-busybox:1"]);
        "nfctr-busybox:1"
    }

    fn pid_of(&self, name: &str) -> i32 {
        self.docker_ok(&["inspect", "-f", "{{.State.Pid}}", name])
            .parse()
            .unwrap()
    }

    fn id_of(&self, name: &str) -> String {
        self.docker_ok(&["inspect", "-f", "{{.Id}}", name])
    }

    /// Processes that name this engine's directory on their command line: dockerd, its
    /// containerd, the shims.
    fn own_processes(&self) -> Vec<i32> {
        let needle = self.dir.display().to_string();
        let me = std::process::id() as i32;
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| *p != me)
            .filter(|p| {
                fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
            })
            .collect()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Containers first (their shims outlive dockerd), then dockerd, which stops its containerd.
        if self.socket().exists() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                // A frozen cgroup would keep `rm -f` waiting: thaw whatever is left first.
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        if let Some(mut d) = self.dockerd.take() {
            // SAFETY: plain kill of our own child.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(15) {
                if d.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        for p in self.own_processes() {
            eprintln!("container test: killing leftover engine process {p}");
            // SAFETY: a process whose command line names this test's private directory.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        // Mounts under the directory (dockerd's private data root, namespace files), deepest
        // (latest) first.
        let needle = self.dir.display().to_string();
        let mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&needle))
            .collect();
        for m in mounts.iter().rev() {
            let c = std::ffi::CString::new(m.as_str()).unwrap();
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `netfault args...` with this engine's socket in DOCKER_HOST.
fn nf(engine: &Engine, args: &[&str]) -> Output {
    nf_env(&engine.host(), args)
}

fn nf_env(docker_host: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("DOCKER_HOST", docker_host)
        .env_remove("SSH_CONNECTION")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn nf_ok(engine: &Engine, args: &[&str]) -> String {
    let o = nf(engine, args);
    assert!(
        o.status.success(),
        "netfault {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Refused as bad input (exit 2), the message naming the container and saying `why`.
fn refused(o: Output, name: &str, why: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--container") && err.contains(name) && err.contains(why),
        "want '--container', '{name}' and '{why}' in: {err}"
    );
}

/// An HTTP GET from the host side to the container's server: the body, or why none came
/// within `timeout` (connect and answer each bounded by it).
fn get(ns: &str, timeout: Duration) -> Result<String, String> {
    let to: SocketAddr = format!("{CTR_IP}:{PORT}").parse().unwrap();
    run_in(ns, move || -> Result<String, String> {
        let mut s =
            TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(timeout)).unwrap();
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("answer: {e}"))?;
        Ok(out)
    })
    .unwrap()
}

fn answers(ns: &str) -> bool {
    get(ns, Duration::from_secs(3)).is_ok_and(|b| b.contains("200") && b.contains("netfault"))
}

fn ip(args: &[&str]) {
    lab::ip(args).unwrap();
}

fn ip_in_pid(pid: impl std::fmt::Display, args: &[&str]) {
    lab::ip_in_pid(pid, args).unwrap();
}

fn frozen(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("cgroup.events"))
        .unwrap_or_default()
        .lines()
        .any(|l| l == "frozen 1")
}

#[test]
fn container_as_target() {
    let started = Instant::now();
    // The lab drops last: its namespaces (and the veth with them) outlive the engine's teardown.
    let mut lab = Lab::new("nfctr").unwrap();
    let host = lab.netns("h").unwrap();
    let engine = Engine::start();
    let image = engine.import_busybox();
    let name = format!("nfctr-web-{}", std::process::id());
    engine.docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        image,
        "/bin/httpd",
        "-f",
        "-p",
        &PORT.to_string(),
        "-h",
        "/www",
    ]);
    let pid = engine.pid_of(&name);
    // The veth: one end in the host-side namespace, the other moved into the container's
    // namespace by its process (`netns PID`).
    ip(&[
        "-n",
        &host,
        "link",
        "add",
        "h0",
        "type",
        "veth",
        "peer",
        "name",
        "c0",
        "netns",
        &pid.to_string(),
    ]);
    ip(&[
        "-n",
        &host,
        "addr",
        "add",
        &format!("{HOST_IP}/24"),
        "dev",
        "h0",
    ]);
    ip(&["-n", &host, "link", "set", "h0", "up"]);
    ip_in_pid(pid, &["addr", "add", &format!("{CTR_IP}/24"), "dev", "c0"]);
    ip_in_pid(pid, &["link", "set", "c0", "up"]);
    let t = Instant::now();
    while !answers(&host) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the container's server never answered: {:?}",
            get(&host, Duration::from_secs(1))
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Attach and cut, through --container.
    let c = ["--container", name.as_str()];
    let with =
        |args: &[&str]| -> Vec<String> { c.iter().chain(args).map(|s| s.to_string()).collect() };
    let run = |args: &[&str]| {
        let a = with(args);
        nf_ok(&engine, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    run(&["attach", "c0"]);
    let st: serde_json::Value = serde_json::from_str(&run(&["status", "--json"])).unwrap();
    let shown = st.to_string();
    let id = engine.id_of(&name);
    assert!(
        shown.contains(&format!("container {name}, id {}", &id[..12])),
        "status names the container's namespace: {shown}"
    );
    run(&[
        "rule", "add", "cut", "--src", HOST_IP, "--drop", "1", "--ttl", "2m",
    ]);
    let cut = get(&host, Duration::from_millis(700));
    assert!(
        cut.is_err(),
        "a drop-all rule let a request through: {cut:?}"
    );
    run(&["rule", "del", "cut"]);
    assert!(
        answers(&host),
        "the server does not answer after the rule went"
    );

    // A cluster file's `container` transport: node n1 is the container (looked up at each
    // operation), n2 the host side's namespace; the coordinator attaches both.
    let file = engine.dir.join("cluster.toml");
    fs::write(
        &file,
        format!(
            "[[node]]\nname = \"n1\"\naddrs = [\"{CTR_IP}\"]\niface = [\"c0\"]\ncontainer = \"{name}\"\n\n\
             [[node]]\nname = \"n2\"\naddrs = [\"{HOST_IP}\"]\niface = [\"h0\"]\nnetns = \"{host}\"\n"
        ),
    )
    .unwrap();
    let f = file.display().to_string();
    let h = host.clone();
    let host_bin = engine.host();
    lab.on_teardown(move || {
        let _ = nf_env(&host_bin, &["--netns", &h, "detach"]);
    });
    nf_ok(
        &engine,
        &["cluster", "--cluster", &f, "partition", "isolate:n1"],
    );
    let cut = get(&host, Duration::from_millis(700));
    assert!(cut.is_err(), "isolate:n1 let a request through: {cut:?}");
    let st: serde_json::Value = serde_json::from_str(&nf_ok(
        &engine,
        &["cluster", "--cluster", &f, "status", "--json"],
    ))
    .unwrap();
    assert!(st.to_string().contains("n1"), "cluster status: {st}");
    nf_ok(&engine, &["cluster", "--cluster", &f, "heal"]);
    assert!(
        answers(&host),
        "the server does not answer after the cluster heal"
    );
    refused(
        nf(
            &engine,
            &["--container", &name, "cluster", "--cluster", &f, "status"],
        ),
        &name,
        "does not apply to `cluster`",
    );

    // Refusals, exit 2, naming the container, nothing changed.
    let stopped = format!("nfctr-stopped-{}", std::process::id());
    engine.docker_ok(&[
        "create",
        "--name",
        &stopped,
        "--network",
        "none",
        image,
        "/bin/sleep",
        "60",
    ]);
    refused(
        nf(
            &engine,
            &[
                "--container",
                &stopped,
                "rule",
                "add",
                "x",
                "--src",
                HOST_IP,
                "--drop",
                "1",
            ],
        ),
        &stopped,
        "not running",
    );
    refused(
        nf(&engine, &["--container", &stopped, "pause", "--for", "1s"]),
        &stopped,
        "not running",
    );
    refused(
        nf(&engine, &["--container", "nfctr-no-such", "status"]),
        "nfctr-no-such",
        "no such container",
    );
    let missing = format!("unix://{}", engine.dir.join("missing.sock").display());
    refused(
        nf_env(
            &missing,
            &[
                "--container",
                &name,
                "rule",
                "add",
                "x",
                "--src",
                HOST_IP,
                "--drop",
                "1",
            ],
        ),
        &name,
        "engine is not running",
    );
    refused(
        nf_env(&missing, &["--container", &name, "pause", "--for", "1s"]),
        &name,
        "engine is not running",
    );
    let rules: serde_json::Value = serde_json::from_str(&run(&["rule", "list", "--json"])).unwrap();
    assert!(
        !rules.to_string().contains("\"x\""),
        "a refused command added a rule: {rules}"
    );
    assert!(answers(&host), "a refused command changed the path");

    // A container its engine paused is refused: a netfault pause would thaw it at its end.
    engine.docker_ok(&["pause", &name]);
    refused(
        nf(&engine, &["--container", &name, "pause", "--for", "1s"]),
        &name,
        "paused by its engine",
    );
    engine.docker_ok(&["unpause", &name]);
    assert!(
        answers(&host),
        "the server does not answer after docker unpause"
    );

    // Pause: the container's own cgroup v2 is frozen for 2 s, then thawed by the watchdog.
    let cg = PathBuf::from(
        fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("the container's process has a cgroup v2")
            .trim()
            .trim_start_matches('/'),
    );
    let root = netfault::pause::target::cgroup2_root().unwrap();
    let cg = root.join(cg);
    assert!(
        cg.file_name().unwrap().to_string_lossy().contains(&id),
        "runc gave the container a cgroup of its own: {}",
        cg.display()
    );
    let out = run(&["pause", "--for", "2s", "--name", "ctr"]);
    let paused_at = Instant::now();
    assert!(out.contains(&cg.display().to_string()), "{out}");
    assert!(frozen(&cg), "the container's cgroup is not frozen");
    // Its own process only: this test (and the host) run on.
    let during = get(&host, Duration::from_millis(800));
    assert!(during.is_err(), "the paused server answered: {during:?}");
    let t = Instant::now();
    while frozen(&cg) {
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "still frozen {:?} after a 2 s pause",
            paused_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let thawed = paused_at.elapsed();
    assert!(
        thawed >= Duration::from_millis(1800),
        "thawed after {thawed:?}, before the 2 s were up"
    );
    assert!(answers(&host), "the server does not answer after the pause");

    // `cluster pause` of a node whose pause_target is the container: the same cgroup frozen,
    // asked of the engine when the pause starts, thawed on the deadline.
    fs::write(
        &file,
        format!(
            "[[node]]\nname = \"n1\"\naddrs = [\"{CTR_IP}\"]\niface = [\"c0\"]\ncontainer = \"{name}\"\n\
             pause_target = \"container:{name}\"\n"
        ),
    )
    .unwrap();
    let out = nf_ok(
        &engine,
        &[
            "cluster",
            "--cluster",
            &f,
            "pause",
            "n1",
            "--for",
            "1s",
            "--json",
        ],
    );
    let paused_at = Instant::now();
    assert!(
        out.contains(&format!("container:{name}")) || out.contains(&cg.display().to_string()),
        "{out}"
    );
    assert!(
        frozen(&cg),
        "cluster pause left the container's cgroup running: {out}"
    );
    while frozen(&cg) {
        assert!(
            paused_at.elapsed() < Duration::from_secs(3),
            "still frozen {:?} after a 1 s cluster pause",
            paused_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        paused_at.elapsed() >= Duration::from_millis(800),
        "thawed after {:?}, before the 1 s was up",
        paused_at.elapsed()
    );
    assert!(
        answers(&host),
        "the server does not answer after the cluster pause"
    );

    run(&["detach"]);
    eprintln!("container test took {:?}", started.elapsed());
}
