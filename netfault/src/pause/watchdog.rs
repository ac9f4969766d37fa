//! The watchdog's loop: stop the target, hold, resume, as the schedule says; resume at once
//! when told to end. It alone stops the target, so a target is never stopped without a
//! process that will resume it.
use std::{
    io::Write,
    time::{Duration, Instant},
};

use super::{
    Error, Result, Store,
    store::Watchdog,
    target::{Pidfd, Target},
};

/// Runs pause `name` from its record: `ready` gets `stopped` once the target first stops, or
/// `error: ...` when it could not be stopped. The record goes when the pause ends.
pub fn run(store: &Store, name: &str, ready: &mut dyn Write) -> Result<()> {
    let ending = crate::ending::Ending::block();
    let mut rec = store
        .get(name)
        .ok_or_else(|| Error::NotFound(name.to_string()))?;
    rec.watchdog = Watchdog::me();
    let fd: Option<Pidfd> = rec.target.pidfd();
    let fail = |e: Error, ready: &mut dyn Write| {
        let _ = writeln!(ready, "error: {e}");
        store.remove(name);
        Err(e)
    };
    if matches!(rec.target, Target::Pid { .. }) && fd.is_none() {
        return fail(
            Error::Watchdog(format!("{} is gone", rec.target.describe())),
            ready,
        );
    }
    if let Err(e) = store.put(&rec) {
        return fail(e, ready);
    }
    let s = rec.schedule;
    let t0 = Instant::now();
    for i in 0..s.count {
        // The hold counts from the signal (or freeze), not from seeing it take effect: a
        // process of many threads takes milliseconds to stop them all, and a loaded host
        // oversleeps the polls that see it; counted from the confirmation, each stop came out
        // that much longer than asked (17.6 ms over 4 s for etcd on a loaded machine).
        let began = Instant::now();
        if let Err(e) = rec.target.stop(fd.as_ref()) {
            let _ = rec.target.resume_with(fd.as_ref());
            if i == 0 {
                return fail(e, ready);
            }
            store.remove(name);
            return Err(e);
        }
        if i == 0 {
            let _ = writeln!(ready, "stopped");
            let _ = ready.flush();
        }
        let ended = match s.hold {
            Some(h) => ending.wait(h.saturating_sub(began.elapsed())),
            // Until resumed, or the target is gone.
            None => loop {
                if ending.wait(Duration::from_secs(1)) {
                    break true;
                }
                if !rec.target.exists() {
                    break true;
                }
            },
        };
        let resumed = rec.target.resume_with(fd.as_ref());
        if let Err(e) = resumed {
            store.remove(name);
            return Err(e);
        }
        if ended || !rec.target.exists() || i + 1 == s.count {
            break;
        }
        // The next stop starts `every` after this one did: no drift over many strobes.
        let next = t0 + s.every.unwrap_or_default() * (i + 1);
        if ending.wait(next.saturating_duration_since(Instant::now())) {
            break;
        }
    }
    store.remove(name);
    Ok(())
}
