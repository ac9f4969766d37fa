//! Small OS helpers: threads inside namespaces, CPU pinning, signals, a watchdog, GRO.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Does nothing: its only job is to make a blocking syscall of the signalled thread return EINTR.
extern "C" fn on_wake(_: libc::c_int) {}

/// The signal the watchdog sends to a generator stuck in a long BPF_PROG_RUN.
const WAKE_SIGNAL: libc::c_int = libc::SIGUSR1;

fn handle(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) -> Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handlers only touch an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        // No SA_RESTART: BPF_PROG_RUN must come back with EINTR so the run can end early.
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error()).context("sigaction");
        }
    }
    Ok(())
}

/// Ctrl-C and SIGTERM set a flag instead of killing the process, so the cleanup guards run.
pub fn install_signal_handlers() -> Result<()> {
    handle(libc::SIGINT, on_stop)?;
    handle(libc::SIGTERM, on_stop)?;
    handle(WAKE_SIGNAL, on_wake)
}

/// Fails once the user asked to stop; called between steps.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs `f` on a thread that first enters network namespace `ns`: setns(2) changes only the
/// calling thread, so the rest of the process stays where it was.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            netfault::control::netns::enter(ns)?;
            f()
        });
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins a task (0: the calling thread) to one CPU.
pub fn pin_to_cpu(tid: libc::pid_t, cpu: usize) -> Result<()> {
    let set = cpu_set(cpu);
    // SAFETY: valid set of the right size.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("pin task {tid} to CPU {cpu}"));
    }
    Ok(())
}

/// Real-time priority for the generator and the receive thread: other work on the machine (a
/// build on the other vCPU) then cannot take their CPU mid-round. RT throttling still leaves 5%
/// of each CPU to everything else, and every round is bounded in time.
pub fn set_fifo(tid: libc::pid_t) -> Result<()> {
    let p = libc::sched_param { sched_priority: 50 };
    // SAFETY: valid sched_param.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &p) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("SCHED_FIFO for task {tid}"));
    }
    Ok(())
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Interrupts a thread's blocking syscall if it runs past a deadline: the generator is bounded in
/// frames, and this bounds it in time too, whatever the machine's load.
pub struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<bool>>,
}

impl Watchdog {
    /// Arms for the calling thread. Drop it on that same thread, before the thread ends.
    pub fn arm(after: Duration) -> Self {
        // SAFETY: no preconditions.
        let target = unsafe { libc::pthread_self() };
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let fired = matches!(rx.recv_timeout(after), Err(mpsc::RecvTimeoutError::Timeout));
            if fired {
                // SAFETY: the target joins us (in Drop) before it exits, so it is alive here.
                unsafe { libc::pthread_kill(target, WAKE_SIGNAL) };
            }
            fired
        });
        Self {
            cancel: Some(tx),
            thread: Some(thread),
        }
    }

    /// Disarms; true if it had fired.
    pub fn disarm(mut self) -> bool {
        self.stop()
    }

    fn stop(&mut self) -> bool {
        drop(self.cancel.take());
        self.thread
            .take()
            .is_some_and(|t| t.join().unwrap_or(false))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

const ETHTOOL_SGRO: u32 = 0x2c;
const ETHTOOL_STSO: u32 = 0x1f;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns GRO on for an interface of the calling thread's namespace (what `ethtool -K IF gro on`
/// does; ethtool is not installed here). On a veth, GRO makes the kernel run the receive side
/// through NAPI, the only way XDP frames sent to it are accepted when it has no XDP program.
pub fn enable_gro(ifname: &str) -> Result<()> {
    set_feature(ifname, ETHTOOL_SGRO, true).with_context(|| format!("enable GRO on {ifname}"))
}

/// Turns TSO off on an interface of the calling thread's namespace (`ethtool -K IF tso off`).
/// A veth hands an skb from a socket to its peer's NAPI (where the peer's threaded poll can
/// take it) only when the sending side has no TSO; otherwise the peer receives it through the
/// backlog, in softirq on the sender's CPU.
pub fn disable_tso(ifname: &str) -> Result<()> {
    set_feature(ifname, ETHTOOL_STSO, false).with_context(|| format!("disable TSO on {ifname}"))
}

/// One legacy ethtool feature switch (SIOCETHTOOL with an ethtool_value).
fn set_feature(ifname: &str, cmd: u32, on: bool) -> Result<()> {
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket for SIOCETHTOOL");
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut val = EthtoolValue {
        cmd,
        data: u32::from(on),
    };
    // SAFETY: zeroed ifreq is valid; the name fits (checked) and stays NUL-terminated.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= ifr.ifr_name.len() {
        bail!("interface name {ifname} too long");
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut val as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live ethtool_value.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) } != 0 {
        return Err(io::Error::last_os_error()).context("SIOCETHTOOL");
    }
    Ok(())
}

/// Is BPF_PROG_RUN's error an EINTR (the watchdog or Ctrl-C)?
pub fn is_eintr(e: &(dyn std::error::Error + 'static)) -> bool {
    is_errno(e, libc::EINTR)
}

/// Does `e`, or any error under it, carry OS error `code`?
pub fn is_errno(e: &(dyn std::error::Error + 'static), code: i32) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(code)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// CPU time task `pid` has run, in ns (the scheduler's sum_exec_runtime, first field of
/// /proc/PID/schedstat): for a kernel thread, everything it did, softirq work in it included.
pub fn task_runtime_ns(pid: libc::pid_t) -> Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad {path}: {s:?}"))
}
