//! `cargo xtask vm -- CMD...`: boots a stock Debian kernel under QEMU with netfault, iproute2 and
//! the test tools in an initramfs, runs CMD as root inside, streams the serial console and exits
//! with CMD's exit code. `cargo xtask vm-test`: on every pinned kernel, a smoke test of netfault
//! and the shaping tests (netfault/tests/shaping.rs: delay, jitter, rate, which need sch_fq).
//! `cargo xtask bench --vm`: `netfault-bench delay` in the 6.12 guest.
//!
//! Environment: NETFAULT_VM_TIMEOUT (seconds for the whole boot, default 300),
//! NETFAULT_VM_INCLUDE (colon-separated host paths to add at the same path in the guest),
//! NETFAULT_VM_MODULES (comma-separated kernel modules to load besides MODULES),
//! NETFAULT_VM_ACCEL (`tcg` or `kvm`, default: detected), NETFAULT_VM_SCHED (`normal`, `nice`
//! or `rr`: how the host schedules QEMU), NETFAULT_VM_NO_BUILD=1 (use the
//! netfault binaries and the newest shaping test binary already in target/release). See
//! docs/VM.md.
use std::{
    fs,
    io::{self, BufWriter, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    vm_cpio::Tree,
    vm_kernel::{self, KERNELS, Kernel, KernelPin},
};

/// Loaded in this order by the guest's init, after their dependencies. sch_ingress provides
/// clsact, which netfault uses on kernels without tcx (6.1); the guest has no modprobe set up, so
/// nothing autoloads. bridge is for the tests' star topology (lab.rs); sch_htb for the shaping
/// test that netfault leaves a root qdisc it did not install alone.
const MODULES: &[&str] = &[
    "sch_fq",
    "sch_netem",
    "sch_htb",
    "veth",
    "ifb",
    "cls_bpf",
    "sch_ingress",
    "bridge",
    // Ingress shaping on kernels before 6.4 (bpf_redirect to IFB drops there): a basic filter
    // matching the program's tc_index mark redirects with mirred.
    "cls_basic",
    "em_meta",
    "act_mirred",
];

/// Host programs copied in with their libraries. `sh` (dash on Debian) runs init and scripts;
/// `timeout` and `env` are coreutils', since busybox's exec their command as a busybox applet
/// when one has that name (its `ip`, `tc`, `ping` are cut down).
const REQUIRED_TOOLS: &[&str] = &["sh", "ip", "tc", "ping", "timeout", "env"];
/// Copied when the host has them: what the tests, benchmarks and demo call.
const OPTIONAL_TOOLS: &[&str] = &["bash", "bpftool", "setpriv", "nft", "ss", "sleep"];
const TOOL_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Lines the guest's init prints on the console (scripts/vm-init.sh).
const EXIT_MARKER: &str = "NETFAULT-VM-EXIT=";
const SETUP_MARKER: &str = "NETFAULT-VM-SETUP-FAILED=";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// After the exit marker, init powers off at once; past this QEMU is killed instead.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);

const STEP_MARKER: &str = "NETFAULT-VM-STEP=";

/// The guest's test script, relative to the repository (which the guest has at the same path).
const SMOKE_SCRIPT: &str = "scripts/vm-smoke.sh";
/// The integration test file of issue #3 (delay, jitter, rate), run by `vm-test` after the smoke.
const SHAPING_TEST: &str = "shaping";
/// Issue #9's loss tests: netfault's egress loss next to netem's (`vm_` tests, `--ignored`).
const LOSS_TEST: &str = "loss";
/// netfault::netlink against tc and ip, where fq, IFB and mirred exist (the dev kernel has no
/// sch_fq): run with NETFAULT_FULL_KERNEL set, so a missing feature fails.
const NETLINK_TEST: &str = "netlink";

/// What `vm-test` runs in each guest (`sh <this> <smoke script> <shaping binary> <loss binary>
/// <netlink binary>`). Each step
/// prints a NETFAULT-VM-STEP marker (name, exit code, guest uptime before and after) for the
/// summary; the exit code is the first failure's, or 0.
/// The steps VM_TEST_SCRIPT runs: a guest passed when all of them finished with 0.
const VM_TEST_STEPS: usize = 4;
const VM_TEST_SCRIPT: &str = r#"# Written by xtask (vm.rs, VM_TEST_SCRIPT) for `cargo xtask vm-test`.
rc=0
step() {
    name=$1
    shift
    read -r t0 _ </proc/uptime
    "$@"
    s=$?
    read -r t1 _ </proc/uptime
    echo "NETFAULT-VM-STEP=$name $s $t0 $t1"
    [ "$rc" = 0 ] && rc=$s
}
step smoke "$1"
step shaping "$2" --ignored --test-threads=1
step loss "$3" --ignored --test-threads=1 --nocapture vm_
step netlink env NETFAULT_FULL_KERNEL=1 "$4" --test-threads=1
exit $rc
"#;

pub fn vm(kernel: &str, cmd: &[String]) -> anyhow::Result<()> {
    ensure!(
        !cmd.is_empty(),
        "nothing to run: cargo xtask vm [--kernel 6.1|6.12] -- CMD [ARGS...]"
    );
    let pin = vm_kernel::pin(kernel)?;
    let opts = Options::from_env(Sched::Normal)?;
    let netfault = netfault_binary()?;
    let outcome = boot(pin, &netfault, &opts, cmd)?;
    match outcome.exit_code()? {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

/// On every pinned kernel, in one boot: the smoke script, then the shaping tests
/// (`<shaping> --ignored --test-threads=1`), then the loss tests that need netem (`<loss>
/// --ignored vm_`), then the netlink tests with every kernel feature required. Fails if any
/// step failed on any kernel.
pub fn vm_test() -> anyhow::Result<()> {
    let mut opts = Options::from_env(Sched::RoundRobin)?;
    let netfault = netfault_binary()?;
    let shaping = test_binary(SHAPING_TEST)?;
    opts.include.push(shaping.clone());
    let loss = test_binary(LOSS_TEST)?;
    opts.include.push(loss.clone());
    let netlink = test_binary(NETLINK_TEST)?;
    opts.include.push(netlink.clone());
    // A file rather than `sh -c`, so the guest's "running ..." line stays one line.
    let script = target_dir().join("vm-test-steps.sh");
    fs::write(&script, VM_TEST_SCRIPT).with_context(|| format!("write {}", script.display()))?;
    opts.include.push(script.clone());
    let cmd = [
        "sh".to_owned(),
        script.to_string_lossy().into_owned(),
        SMOKE_SCRIPT.to_owned(),
        shaping.to_string_lossy().into_owned(),
        loss.to_string_lossy().into_owned(),
        netlink.to_string_lossy().into_owned(),
    ];
    let mut report = Vec::new();
    for pin in KERNELS {
        let result = boot(pin, &netfault, &opts, &cmd).and_then(|o| {
            let code = o.exit_code()?;
            Ok((code, o.marker_after.unwrap_or(o.elapsed), o.steps))
        });
        report.push((pin, result));
    }
    eprintln!("\nxtask vm-test:");
    let mut failed = 0;
    for (pin, result) in &report {
        match result {
            Ok((code, t, steps)) => {
                let verdict = if *code == 0 && steps.len() == VM_TEST_STEPS {
                    "ok".to_owned()
                } else {
                    failed += 1;
                    format!("FAILED, exit {code}")
                };
                let steps: Vec<String> = steps.iter().map(Step::to_string).collect();
                eprintln!(
                    "  {} ({}): {verdict}, {:.1} s from QEMU start ({})",
                    pin.series,
                    pin.version,
                    secs(*t),
                    if steps.is_empty() {
                        "no step finished".to_owned()
                    } else {
                        steps.join(", ")
                    }
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("  {} ({}): FAILED: {e:#}", pin.series, pin.version);
            }
        }
    }
    ensure!(failed == 0, "vm-test: {failed} kernel(s) failed");
    Ok(())
}

/// `cargo xtask bench --vm [ARGS...]`: `netfault-bench delay ARGS...` in the 6.12 guest (the
/// host kernel has no sch_fq or sch_netem).
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    let mut opts = Options::from_env(Sched::RoundRobin)?;
    let netfault = netfault_binary()?;
    let bench = netfault.with_file_name("netfault-bench");
    ensure!(
        bench.exists(),
        "{} is missing: build it with `cargo build --release -p netfault --bins`",
        bench.display()
    );
    opts.include.push(bench.clone());
    let mut cmd = vec![bench.to_string_lossy().into_owned(), "delay".to_owned()];
    cmd.extend(args.iter().cloned());
    let outcome = boot(vm_kernel::pin("6.12")?, &netfault, &opts, &cmd)?;
    match outcome.exit_code()? {
        0 => Ok(()),
        code => bail!("netfault-bench delay failed in the guest: exit {code}"),
    }
}

/// One step of `vm-test`'s guest script, from its marker.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    name: String,
    code: i32,
    secs: f64,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.code == 0 {
            "ok".to_owned()
        } else {
            format!("FAILED exit {}", self.code)
        };
        write!(f, "{} {what} {:.1} s", self.name, self.secs)
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// How the host schedules QEMU. Under TCG every host-side preemption of the emulator, when a
/// guest timer is due, delays that timer by the preemption: with a build running on the host
/// (2 cores, load 1-2), a 50 ms delay's p99 in the guest came out 51-54 ms at normal priority
/// and at `nice -n -10`, 50.4-51.6 ms under SCHED_RR (6 runs each). So the timing-sensitive
/// commands (`vm-test`, `bench --vm`) run QEMU under SCHED_RR by default; plain `vm` does not.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Sched {
    Normal,
    /// `nice -n -10`.
    Nice,
    /// `chrt -r 1`: real-time round robin, the lowest RT priority. The kernel's RT throttling
    /// (or fair server) still leaves other tasks 5 % of the CPU QEMU runs on, and the guest
    /// has one vCPU, so at most one host CPU is taken; every boot is bounded in time.
    RoundRobin,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Accel {
    Kvm,
    Tcg,
}

struct Options {
    /// For the whole boot; the command inside gets a bit less, so that it, not QEMU, times out.
    timeout: Duration,
    include: Vec<PathBuf>,
    /// Extra kernel modules, beyond MODULES.
    modules: Vec<String>,
    accel: Accel,
    sched: Sched,
}

impl Options {
    /// `sched` is the command's default, which NETFAULT_VM_SCHED overrides.
    fn from_env(sched: Sched) -> anyhow::Result<Self> {
        let timeout = match std::env::var("NETFAULT_VM_TIMEOUT") {
            Ok(s) => Duration::from_secs(
                s.parse()
                    .with_context(|| format!("NETFAULT_VM_TIMEOUT={s}: want seconds"))?,
            ),
            Err(_) => DEFAULT_TIMEOUT,
        };
        let include = std::env::var("NETFAULT_VM_INCLUDE")
            .unwrap_or_default()
            .split(':')
            .filter(|s| !s.is_empty())
            .map(|s| crate::root().join(s)) // absolute paths stay as they are
            .collect();
        let modules = std::env::var("NETFAULT_VM_MODULES")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let accel = match std::env::var("NETFAULT_VM_ACCEL").as_deref() {
            Ok("tcg") => Accel::Tcg,
            Ok("kvm") => Accel::Kvm,
            Ok(other) => bail!("NETFAULT_VM_ACCEL={other}: want tcg or kvm"),
            Err(_) if real_kvm() => Accel::Kvm,
            Err(_) => Accel::Tcg,
        };
        let sched = match std::env::var("NETFAULT_VM_SCHED").as_deref() {
            Ok("normal") => Sched::Normal,
            Ok("nice") => Sched::Nice,
            Ok("rr") => Sched::RoundRobin,
            Ok(other) => bail!("NETFAULT_VM_SCHED={other}: want normal, nice or rr"),
            Err(_) => sched,
        };
        // Only root may raise either; chrt would refuse to start QEMU at all.
        let sched = if sched != Sched::Normal && crate::unsafe_geteuid() != 0 {
            eprintln!("xtask vm: not root, so QEMU runs at normal priority ({sched:?} asked)");
            Sched::Normal
        } else {
            sched
        };
        Ok(Self {
            timeout,
            include,
            modules,
            accel,
            sched,
        })
    }

    fn guest_timeout(&self) -> u64 {
        self.timeout.as_secs().saturating_sub(20).max(5)
    }
}

/// KVM only with a real kvm_intel or kvm_amd module: on this kind of machine /dev/kvm exists but
/// is a different hypervisor (kvm_pvm) on which stock guests fail, and TCG is what works.
fn real_kvm() -> bool {
    let module = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists());
    module
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => crate::root().join(d),
        None => crate::root().join("target"),
    }
}

/// Kernels are the same whatever the cargo target dir, so they are cached once per checkout.
fn cache_dir() -> PathBuf {
    crate::root().join("target/vm-cache")
}

/// Builds netfault (a no-op when up to date) unless told not to, and returns its path.
fn netfault_binary() -> anyhow::Result<PathBuf> {
    if std::env::var("NETFAULT_VM_NO_BUILD").as_deref() != Ok("1") {
        // The lab's binaries too: `bench --vm` runs netfault-bench in the guest.
        crate::build_bins()?;
    }
    let bin = target_dir().join("release/netfault");
    ensure!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p netfault --bins`",
        bin.display()
    );
    Ok(bin)
}

/// Builds the integration test `name` of netfault in release (unless NETFAULT_VM_NO_BUILD=1) and
/// returns its executable; with NETFAULT_VM_NO_BUILD=1, the newest one already built.
fn test_binary(name: &str) -> anyhow::Result<PathBuf> {
    if std::env::var("NETFAULT_VM_NO_BUILD").as_deref() == Ok("1") {
        return newest_test_binary(name);
    }
    let mut cmd = crate::cargo();
    cmd.args(["test", "--release", "-p", "netfault", "--test", name]);
    cmd.args(["--no-run", "--message-format=json"]);
    eprintln!("xtask: {cmd:?}");
    let out = cmd
        .current_dir(crate::root())
        .stderr(Stdio::inherit())
        .output()
        .context("run cargo test --no-run")?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| test_executable(l, name))
        .with_context(|| format!("cargo printed no executable for the {name} test"))
}

/// The executable of a `compiler-artifact` message for test target `name` (cargo's JSON is
/// compact, one object per line; xtask has no JSON parser, and these few fields need none).
fn test_executable(line: &str, name: &str) -> Option<PathBuf> {
    let target = format!(r#""target":{{"kind":["test"],"crate_types":["bin"],"name":"{name}","#);
    if !line.contains(r#""reason":"compiler-artifact""#) || !line.contains(&target) {
        return None;
    }
    let key = r#""executable":""#;
    let rest = &line[line.find(key)? + key.len()..];
    Some(PathBuf::from(&rest[..rest.find('"')?]))
}

/// The most recently built `<target>/release/deps/<name>-<hash>`.
fn newest_test_binary(name: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let deps = target_dir().join("release/deps");
    let prefix = format!("{name}-");
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in fs::read_dir(&deps).with_context(|| format!("read {}", deps.display()))? {
        let e = e?;
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(hash) = file.strip_prefix(&prefix) else {
            continue;
        };
        let meta = e.metadata()?;
        let is_exe = meta.is_file() && meta.permissions().mode() & 0o111 != 0;
        if !is_exe || hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let t = meta.modified()?;
        if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
            best = Some((t, e.path()));
        }
    }
    best.map(|(_, p)| p).with_context(|| {
        format!(
            "no {name} test binary in {}: build it with `cargo test --release -p netfault \
             --test {name} --no-run`, or unset NETFAULT_VM_NO_BUILD",
            deps.display()
        )
    })
}

fn find_tool(name: &str) -> Option<PathBuf> {
    TOOL_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn boot(
    pin: &'static KernelPin,
    netfault: &Path,
    opts: &Options,
    cmd: &[String],
) -> anyhow::Result<Outcome> {
    let qemu = find_tool("qemu-system-x86_64")
        .context("qemu-system-x86_64 is missing: run scripts/setup.sh (Debian: qemu-system-x86)")?;
    let cache = cache_dir();
    let kernel = vm_kernel::fetch(pin, &cache)?;
    let t = Instant::now();
    let initrd = TempFile(cache.join(format!("initrd-{}.cpio", std::process::id())));
    let tree = initramfs(&kernel, netfault, opts, cmd)?;
    let mut out = BufWriter::new(fs::File::create(&initrd.0)?);
    tree.write_newc(&mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    eprintln!(
        "xtask vm: initramfs built in {:.2} s ({} MB); booting {} ({}) under {:?}, QEMU \
         scheduled {:?}",
        secs(t.elapsed()),
        fs::metadata(&initrd.0)?.len() >> 20,
        pin.release,
        pin.version,
        opts.accel,
        opts.sched
    );
    let mut qemu = qemu_command(&qemu, &kernel, &initrd.0, opts);
    let outcome = watch(&mut qemu, opts.timeout)?;
    eprintln!("xtask vm: {}", outcome.summary(pin));
    Ok(outcome)
}

/// Deleted when dropped, however the boot ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Rebuilt for every boot (about 0.1 to 0.3 s): it also carries the command, and a rebuild is
/// cheaper than deciding whether any of the host binaries in it changed.
fn initramfs(
    kernel: &Kernel,
    netfault: &Path,
    opts: &Options,
    cmd: &[String],
) -> anyhow::Result<Tree> {
    let root = crate::root();
    let mut t = Tree::default();
    // The host's top-level symlinks first (merged /usr), so that everything after lands where
    // the host has it: library paths that ldd prints resolve the same way in the guest.
    for top in ["/bin", "/sbin", "/lib", "/lib64"] {
        if Path::new(top).exists() {
            t.mirror(Path::new(top))?;
        }
    }
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "usr/local/bin",
        "etc",
    ] {
        t.dir(d)?;
    }
    t.char_dev("dev/console", 5, 1)?; // init's stdio, before devtmpfs is mounted
    t.host_file("init", &root.join("scripts/vm-init.sh"), 0o755)?;
    busybox(&mut t)?;
    for name in REQUIRED_TOOLS {
        let p = find_tool(name)
            .with_context(|| format!("{name} is missing on the host: run scripts/setup.sh"))?;
        t.binary(&p)?;
    }
    for p in OPTIONAL_TOOLS.iter().filter_map(|n| find_tool(n)) {
        t.binary(&p)?;
    }
    // netem's delay distributions, where the host's tc looks for them.
    if let Some(dir) = find_tool("tc").and_then(|tc| tc_lib_dir(&tc)) {
        t.mirror_tree(&dir)?;
    }
    // At the host's path too: test binaries have CARGO_BIN_EXE_netfault compiled in.
    t.binary(netfault)?;
    t.symlink("usr/local/bin/netfault", &netfault.to_string_lossy())?;
    t.mirror_tree(&root.join("scripts"))?;
    for p in &opts.include {
        if p.is_dir() {
            t.mirror_tree(p)?;
        } else {
            t.binary(p)?;
        }
    }
    modules(&mut t, kernel, &opts.modules)?;
    etc(&mut t)?;
    t.bytes("etc/netfault-vm/cmd", cmd_file(opts, &root, cmd), 0o644)?;
    Ok(t)
}

/// Where a tc binary reads netem's distribution tables (`normal.dist`, ...): the directory
/// compiled into it (iproute2's LIBDIR/tc: `/usr/lib/x86_64-linux-gnu/tc` on Debian's
/// multiarch build, `/usr/lib/tc` on others), found among the binary's strings. The guest's tc
/// is the host's, so it looks in the same place.
fn tc_lib_dir(tc: &Path) -> Option<PathBuf> {
    let bytes = fs::read(tc).ok()?;
    let compiled_in = bytes
        .split(|&b| b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter(|s| s.starts_with('/') && s.trim_end_matches('/').ends_with("/tc"))
        .map(|s| PathBuf::from(s.trim_end_matches('/')));
    let fallbacks = [
        "/usr/lib/x86_64-linux-gnu/tc",
        "/usr/lib/tc",
        "/usr/lib64/tc",
    ]
    .into_iter()
    .map(PathBuf::from);
    compiled_in
        .chain(fallbacks)
        .find(|d| d.join("normal.dist").is_file())
}

/// Static busybox for init's basics (mount, insmod, poweroff); its applets go in a directory
/// that comes last in the guest's PATH, behind every real tool.
fn busybox(t: &mut Tree) -> anyhow::Result<()> {
    let bb = find_tool("busybox")
        .context("busybox is missing: run scripts/setup.sh (Debian: busybox-static)")?;
    t.binary(&bb)?;
    let list = Command::new(&bb).arg("--list").output()?;
    ensure!(list.status.success(), "busybox --list failed");
    let target = bb.to_string_lossy();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        t.symlink(&format!("opt/busybox/{applet}"), &target)?;
    }
    Ok(())
}

/// The modules, decompressed, and their load order for init.
fn modules(t: &mut Tree, kernel: &Kernel, extra: &[String]) -> anyhow::Result<()> {
    let dir = format!("lib/modules/{}/netfault-vm", kernel.pin.release);
    let wanted: Vec<&str> = MODULES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .collect();
    let mut order = String::new();
    for (name, ko) in vm_kernel::modules_with_deps(&kernel.modules, &wanted)? {
        t.bytes(&format!("{dir}/{name}.ko"), ko, 0o644)?;
        order.push_str(&name);
        order.push('\n');
    }
    t.bytes("etc/netfault-vm/modules", order, 0o644)
}

/// The few files glibc and the tools look for.
fn etc(t: &mut Tree) -> anyhow::Result<()> {
    t.bytes("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    t.bytes("etc/group", "root:x:0:\n", 0o644)?;
    t.bytes("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644)?;
    // tc reads its ematch names (netfault's mirred filter on kernels before 6.4) from here.
    if Path::new("/etc/iproute2").is_dir() {
        t.mirror_tree(Path::new("/etc/iproute2"))?;
    }
    Ok(())
}

/// Sourced by init: the time limit, the working directory (the repository, at the host's path,
/// so relative paths like scripts/vm-smoke.sh work) and the command as "$@".
fn cmd_file(opts: &Options, root: &Path, cmd: &[String]) -> String {
    let args: Vec<String> = cmd.iter().map(|a| shell_quote(a)).collect();
    format!(
        "VM_TIMEOUT={}\nVM_CWD={}\nset -- {}\n",
        opts.guest_timeout(),
        shell_quote(&root.to_string_lossy()),
        args.join(" ")
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// 2 GiB: netfault sizes fq's packet limit against a quarter of RAM, and the shaping tests keep
/// thousands of delayed packets queued. One vCPU under single-threaded TCG: in trials 2 vCPUs
/// under multi-threaded TCG crashed about 3 boots in 100. q35 with the uncompressed vmlinux
/// (PVH entry) boots in about 2 s; microvm hangs calibrating the TSC under TCG. No network
/// device: the guest talks only to itself. The scheduling wrappers (`nice`, `chrt`) exec QEMU,
/// so the child is QEMU itself.
fn qemu_command(qemu: &Path, kernel: &Kernel, initrd: &Path, opts: &Options) -> Command {
    let mut c = match opts.sched {
        Sched::Normal => Command::new(qemu),
        Sched::Nice => {
            let mut c = Command::new("nice");
            c.args(["-n", "-10"]).arg(qemu);
            c
        }
        Sched::RoundRobin => {
            let mut c = Command::new("chrt");
            c.args(["-r", "1"]).arg(qemu);
            c
        }
    };
    c.args(["-M", "q35", "-m", "2G", "-nodefaults", "-display", "none"]);
    c.args(["-no-reboot", "-serial", "stdio"]);
    match opts.accel {
        Accel::Tcg => c.args(["-accel", "tcg,thread=single", "-cpu", "max", "-smp", "1"]),
        Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host", "-smp", "2"]),
    };
    c.arg("-kernel").arg(&kernel.image);
    c.arg("-initrd").arg(initrd);
    // panic=-1 and reboot=t: a panicking or rebooting guest ends QEMU (-no-reboot) at once.
    c.args(["-append", "console=ttyS0 quiet panic=-1 reboot=t"]);
    c.stdin(Stdio::null()).stdout(Stdio::piped());
    c
}

enum Event {
    Exit(i32, Instant),
    SetupFailed(String),
    Step(Step),
}

struct Outcome {
    code: Option<i32>,
    setup_error: Option<String>,
    /// From QEMU's start to the exit marker: boot plus the command.
    marker_after: Option<Duration>,
    elapsed: Duration,
    timed_out: bool,
    qemu: Option<ExitStatus>,
    /// Steps the command reported (NETFAULT-VM-STEP markers), in order.
    steps: Vec<Step>,
}

impl Outcome {
    fn exit_code(&self) -> anyhow::Result<i32> {
        if let Some(msg) = &self.setup_error {
            bail!("the guest's init failed before running the command: {msg}");
        }
        match (self.code, self.timed_out) {
            (Some(c), _) => Ok(c),
            (None, true) => bail!(
                "the VM did not finish in {:.0} s and was killed (NETFAULT_VM_TIMEOUT raises the limit)",
                secs(self.elapsed)
            ),
            (None, false) => bail!(
                "QEMU ended ({}) without the guest reporting an exit code: a kernel panic, a \
                 crash of init, or QEMU was interrupted; see the console output above",
                self.qemu
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "killed".into())
            ),
        }
    }

    fn summary(&self, pin: &KernelPin) -> String {
        let what = match (self.code, &self.setup_error) {
            (_, Some(e)) => format!("setup failed ({e})"),
            (Some(c), _) => format!("exit {c}"),
            (None, _) if self.timed_out => "timed out".into(),
            (None, _) => "no exit code".into(),
        };
        let marker = self
            .marker_after
            .map(|d| format!(", marker after {:.1} s", secs(d)))
            .unwrap_or_default();
        format!(
            "kernel {} ({}): {what}{marker}, QEMU ran {:.1} s",
            pin.series,
            pin.version,
            secs(self.elapsed)
        )
    }
}

/// Runs QEMU to the end, streaming its console; kills it past the time limit, or when it has
/// not powered off soon after the guest reported.
fn watch(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let mut child = cmd.spawn().context("start qemu-system-x86_64")?;
    let console = child.stdout.take().context("qemu's stdout is not piped")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || stream_console(console, tx));
    let mut out = Outcome {
        code: None,
        setup_error: None,
        marker_after: None,
        elapsed: Duration::ZERO,
        timed_out: false,
        qemu: None,
        steps: Vec::new(),
    };
    let mut deadline = start + timeout;
    loop {
        if let Ok(ev) = rx.recv_timeout(Duration::from_millis(50)) {
            if !matches!(ev, Event::Step(_)) {
                deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
            }
            record(&mut out, ev, start);
            continue;
        }
        if let Some(status) = child.try_wait()? {
            out.qemu = Some(status);
            break;
        }
        if Instant::now() >= deadline {
            out.timed_out = out.code.is_none() && out.setup_error.is_none();
            kill(&mut child);
            break;
        }
    }
    let _ = reader.join();
    for ev in rx.try_iter() {
        record(&mut out, ev, start);
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

fn record(out: &mut Outcome, ev: Event, start: Instant) {
    match ev {
        Event::Step(step) => out.steps.push(step),
        Event::Exit(code, at) => {
            out.code = Some(code);
            out.marker_after = Some(at - start);
        }
        Event::SetupFailed(msg) => out.setup_error = Some(msg),
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Copies the console to stdout as it comes (without the serial line's CRs) and reports the
/// markers. Runs until QEMU closes its end.
fn stream_console(mut console: ChildStdout, tx: mpsc::Sender<Event>) {
    let mut buf = [0u8; 8192];
    let mut line = Vec::new();
    let stdout = io::stdout();
    loop {
        let n = match console.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk: Vec<u8> = buf[..n].iter().copied().filter(|&b| b != b'\r').collect();
        let mut lock = stdout.lock();
        let _ = lock.write_all(&chunk);
        let _ = lock.flush();
        drop(lock);
        for b in chunk {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            if let Some(ev) = parse_marker(&String::from_utf8_lossy(&line)) {
                let _ = tx.send(ev);
            }
            line.clear();
        }
    }
}

fn parse_marker(line: &str) -> Option<Event> {
    if let Some(i) = line.find(STEP_MARKER) {
        // NAME CODE UPTIME-BEFORE UPTIME-AFTER
        let f: Vec<&str> = line[i + STEP_MARKER.len()..].split_whitespace().collect();
        let [name, code, t0, t1] = f[..] else {
            return None;
        };
        let (t0, t1): (f64, f64) = (t0.parse().ok()?, t1.parse().ok()?);
        return Some(Event::Step(Step {
            name: name.to_owned(),
            code: code.parse().ok()?,
            secs: t1 - t0,
        }));
    }
    if let Some(i) = line.find(SETUP_MARKER) {
        return Some(Event::SetupFailed(
            line[i + SETUP_MARKER.len()..].trim().to_owned(),
        ));
    }
    let i = line.find(EXIT_MARKER)?;
    let code = line[i + EXIT_MARKER.len()..].trim().parse().ok()?;
    Some(Event::Exit(code, Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse_anywhere_in_a_line() {
        assert!(matches!(
            parse_marker("NETFAULT-VM-EXIT=3"),
            Some(Event::Exit(3, _))
        ));
        assert!(matches!(
            parse_marker("[ 1.2] NETFAULT-VM-EXIT=0 "),
            Some(Event::Exit(0, _))
        ));
        assert!(parse_marker("NETFAULT-VM-EXIT=").is_none());
        assert!(matches!(
            parse_marker("NETFAULT-VM-SETUP-FAILED=insmod veth"),
            Some(Event::SetupFailed(m)) if m == "insmod veth"
        ));
        let Some(Event::Step(s)) = parse_marker("NETFAULT-VM-STEP=shaping 101 2.50 40.75") else {
            panic!("a step marker");
        };
        assert_eq!((s.name.as_str(), s.code), ("shaping", 101));
        assert!((s.secs - 38.25).abs() < 1e-9);
        assert!(parse_marker("NETFAULT-VM-STEP=smoke 0 2.5").is_none());
    }

    #[test]
    fn test_executables_from_cargo_json() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///r/netfault#0.1.0","manifest_path":"/r/netfault/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"shaping","src_path":"/r/netfault/tests/shaping.rs","edition":"2024","doc":false,"doctest":false,"test":true},"profile":{},"features":[],"filenames":["/r/target/release/deps/shaping-0123456789abcdef"],"executable":"/r/target/release/deps/shaping-0123456789abcdef","fresh":true}"#;
        assert_eq!(
            test_executable(line, "shaping"),
            Some(PathBuf::from(
                "/r/target/release/deps/shaping-0123456789abcdef"
            ))
        );
        assert_eq!(test_executable(line, "e2e"), None);
        let lib = line.replace(r#""kind":["test"]"#, r#""kind":["lib"]"#);
        assert_eq!(test_executable(&lib, "shaping"), None);
    }

    #[test]
    fn tc_finds_its_distributions() {
        // Wherever this machine's tc has them (skipped without tc or tables).
        if let Some(tc) = find_tool("tc")
            && let Some(dir) = tc_lib_dir(&tc)
        {
            assert!(dir.join("normal.dist").is_file());
        }
    }

    #[test]
    fn commands_are_quoted_for_sh() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let opts = Options {
            timeout: Duration::from_secs(300),
            include: Vec::new(),
            modules: Vec::new(),
            accel: Accel::Tcg,
            sched: Sched::Normal,
        };
        let f = cmd_file(&opts, Path::new("/repo"), &["echo".into(), "a b".into()]);
        assert_eq!(f, "VM_TIMEOUT=280\nVM_CWD='/repo'\nset -- 'echo' 'a b'\n");
    }
}
