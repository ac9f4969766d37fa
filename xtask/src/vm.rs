//! `cargo xtask vm -- CMD...`: boots a stock Debian kernel under QEMU with netfault, iproute2 and
//! the test tools in an initramfs, runs CMD as root inside, streams the serial console and exits
//! with CMD's exit code. `cargo xtask vm-test`: a smoke test of netfault on every pinned kernel.
//!
//! Environment: NETFAULT_VM_TIMEOUT (seconds for the whole boot, default 300),
//! NETFAULT_VM_INCLUDE (colon-separated host paths to add at the same path in the guest),
//! NETFAULT_VM_MODULES (comma-separated kernel modules to load besides MODULES),
//! NETFAULT_VM_ACCEL (`tcg` or `kvm`, default: detected), NETFAULT_VM_NO_BUILD=1 (use the
//! netfault binary already in target/release). See docs/VM.md.
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
/// nothing autoloads. bridge is for the tests' star topology (lab.rs).
const MODULES: &[&str] = &[
    "sch_fq",
    "sch_netem",
    "veth",
    "ifb",
    "cls_bpf",
    "sch_ingress",
    "bridge",
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

/// The guest's test script, relative to the repository (which the guest has at the same path).
const SMOKE_SCRIPT: &str = "scripts/vm-smoke.sh";

pub fn vm(kernel: &str, cmd: &[String]) -> anyhow::Result<()> {
    ensure!(
        !cmd.is_empty(),
        "nothing to run: cargo xtask vm [--kernel 6.1|6.12] -- CMD [ARGS...]"
    );
    let pin = vm_kernel::pin(kernel)?;
    let opts = Options::from_env()?;
    let netfault = netfault_binary()?;
    let outcome = boot(pin, &netfault, &opts, cmd)?;
    match outcome.exit_code()? {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

pub fn vm_test() -> anyhow::Result<()> {
    let opts = Options::from_env()?;
    let netfault = netfault_binary()?;
    let cmd = [SMOKE_SCRIPT.to_owned()];
    let mut report = Vec::new();
    for pin in KERNELS {
        let result = boot(pin, &netfault, &opts, &cmd).and_then(|o| {
            let code = o.exit_code()?;
            Ok((code, o.marker_after.unwrap_or(o.elapsed)))
        });
        report.push((pin, result));
    }
    eprintln!("\nxtask vm-test:");
    let mut failed = 0;
    for (pin, result) in &report {
        match result {
            Ok((0, t)) => eprintln!("  {} ({}): ok, {:.1} s", pin.series, pin.version, secs(*t)),
            Ok((code, _)) => {
                failed += 1;
                eprintln!("  {} ({}): FAILED, exit {code}", pin.series, pin.version);
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

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
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
}

impl Options {
    fn from_env() -> anyhow::Result<Self> {
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
        Ok(Self {
            timeout,
            include,
            modules,
            accel,
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
        crate::run(crate::cargo().args(["build", "--release", "-p", "netfault", "--bins"]))?;
    }
    let bin = target_dir().join("release/netfault");
    ensure!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p netfault --bins`",
        bin.display()
    );
    Ok(bin)
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
        "xtask vm: initramfs built in {:.2} s ({} MB); booting {} ({}) under {:?}",
        secs(t.elapsed()),
        fs::metadata(&initrd.0)?.len() >> 20,
        pin.release,
        pin.version,
        opts.accel
    );
    let mut qemu = qemu_command(&qemu, &kernel, &initrd.0, opts.accel);
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
    if Path::new("/usr/lib/tc").is_dir() {
        t.mirror_tree(Path::new("/usr/lib/tc"))?; // netem's delay distributions
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
    t.bytes("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644)
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

/// One vCPU under single-threaded TCG: in trials 2 vCPUs under multi-threaded TCG crashed about
/// 3 boots in 100. q35 with the uncompressed vmlinux (PVH entry) boots in about 2 s; microvm
/// hangs calibrating the TSC under TCG. No network device: the guest talks only to itself.
fn qemu_command(qemu: &Path, kernel: &Kernel, initrd: &Path, accel: Accel) -> Command {
    let mut c = Command::new(qemu);
    c.args(["-M", "q35", "-m", "1G", "-nodefaults", "-display", "none"]);
    c.args(["-no-reboot", "-serial", "stdio"]);
    match accel {
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
}

struct Outcome {
    code: Option<i32>,
    setup_error: Option<String>,
    /// From QEMU's start to the exit marker: boot plus the command.
    marker_after: Option<Duration>,
    elapsed: Duration,
    timed_out: bool,
    qemu: Option<ExitStatus>,
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
    let console = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || stream_console(console, tx));
    let mut out = Outcome {
        code: None,
        setup_error: None,
        marker_after: None,
        elapsed: Duration::ZERO,
        timed_out: false,
        qemu: None,
    };
    let mut deadline = start + timeout;
    loop {
        if let Ok(ev) = rx.recv_timeout(Duration::from_millis(50)) {
            record(&mut out, ev, start);
            deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
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
    }

    #[test]
    fn commands_are_quoted_for_sh() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let opts = Options {
            timeout: Duration::from_secs(300),
            include: Vec::new(),
            modules: Vec::new(),
            accel: Accel::Tcg,
        };
        let f = cmd_file(&opts, Path::new("/repo"), &["echo".into(), "a b".into()]);
        assert_eq!(f, "VM_TIMEOUT=280\nVM_CWD='/repo'\nset -- 'echo' 'a b'\n");
    }
}
