//! The signals that end a long wait early: SIGTERM (what `netfault resume` sends a pause's
//! watchdog), SIGINT and SIGHUP. Blocked for the waiting thread and taken synchronously, so
//! none can kill the process between the start of what it waits on and the cleanup after it
//! (a pause's resume, a measurement's detach).
use std::time::{Duration, Instant};

const SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The ending signals, blocked for the thread that made this.
pub struct Ending(libc::sigset_t);

impl Ending {
    /// Blocks the ending signals for this thread: they then wait for [`Ending::wait`].
    pub fn block() -> Self {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in SIGNALS {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Self(set)
        }
    }

    /// Waits `d`; true when an ending signal came first.
    pub fn wait(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ts = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: valid set and timeout; no siginfo wanted.
            if unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &ts) } > 0 {
                return true;
            }
            // EAGAIN: the time is up (seen on the next turn); EINTR: another signal.
        }
    }
}
