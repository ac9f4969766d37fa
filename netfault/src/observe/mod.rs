//! What the data path did: per-rule counters, lifetimes, state as stored.
use netfault_common::Counters;
use serde::{Deserialize, Serialize};

use crate::{
    control::{
        Error, Result, check_read_privileges, monotonic_ns, netns,
        state::{Paths, RuleEntry, State, StateError},
    },
    dataplane::Maps,
    spec::Kind,
};

/// One rule's counters, as `stats --json` prints them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterView {
    pub matched: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub passed: u64,
    pub bytes: u64,
    /// Given a departure time in the future.
    #[serde(default)]
    pub delayed: u64,
    /// Dropped because the rule's rate backlog was full (not by --drop).
    #[serde(default)]
    pub queue_dropped: u64,
    /// Runs of lost packets a burst-loss chain began (each run's packets are in `dropped`).
    #[serde(default)]
    pub bursts: u64,
    /// Dropped and answered (RST or ICMP unreachable); part of `dropped`.
    #[serde(default)]
    pub rejected: u64,
    /// Dropped unanswered because the rule's reply rate was spent; part of `dropped`.
    #[serde(default)]
    pub reject_limited: u64,
    /// Passed with one payload bit flipped; part of `passed`.
    #[serde(default)]
    pub corrupted: u64,
    /// Matched during a hold and sent at its end; part of `delayed`.
    #[serde(default)]
    pub held: u64,
    /// Duplicates sent `--duplicate-delay` after their original; part of `duplicated`.
    #[serde(default)]
    pub dup_delayed: u64,
}

impl From<Counters> for CounterView {
    fn from(c: Counters) -> Self {
        Self {
            matched: c.matched,
            dropped: c.dropped,
            duplicated: c.duplicated,
            passed: c.passed,
            bytes: c.bytes,
            delayed: c.delayed,
            queue_dropped: c.queue_dropped,
            bursts: c.bursts,
            rejected: c.rejected,
            reject_limited: c.reject_limited,
            corrupted: c.corrupted,
            held: c.held,
            dup_delayed: c.dup_delayed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatView {
    pub name: String,
    pub kind: Kind,
    pub counters: CounterView,
    /// Milliseconds until expiry; null: never expires.
    pub expires_in_ms: Option<u64>,
    pub expired: bool,
}

pub fn ttl_left(r: &RuleEntry, now: u64) -> (Option<u64>, bool) {
    if r.expires_mono_ns == 0 {
        (None, false)
    } else {
        let left = r.expires_mono_ns.saturating_sub(now) / 1_000_000;
        (Some(left), r.expires_mono_ns <= now)
    }
}

/// Reads the state without taking the lock (the file is replaced atomically).
pub fn read_state(netns_name: Option<&str>) -> Result<(Paths, State)> {
    check_read_privileges()?;
    let key = netns::state_key().map_err(Error::NetnsIdentity)?;
    let paths = Paths::new(&key);
    let mut state: State = match std::fs::read(paths.state_file()) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| StateError::Corrupt(paths.state_file().display().to_string(), e))?,
        Err(_) => State::default(),
    };
    // State of a namespace that was deleted and made anew under the same name describes
    // nothing that exists: show nothing (the next change resets it).
    let cookie = netns::cookie().map_err(Error::NetnsCookie)?;
    if state.netns_cookie != 0 && state.netns_cookie != cookie {
        log::warn!("state for '{key}' belongs to a namespace that no longer exists");
        state = State::default();
    }
    // As it is named now (`--netns NAME`, or from inside it), else as it was last named.
    state.netns_name = netns::display_name(netns_name).or(state.netns_name);
    Ok((paths, state))
}

pub fn stats(paths: &Paths, state: &State) -> Result<Vec<StatView>> {
    if state.attached.is_empty() {
        return Err(Error::NotAttached);
    }
    let maps = Maps::open(&paths.maps())?;
    let now = monotonic_ns();
    state
        .ordered()
        .into_iter()
        .map(|r| {
            let (left, expired) = ttl_left(r, now);
            Ok(StatView {
                name: r.spec.name.clone(),
                kind: r.spec.kind,
                counters: maps.counters(r.slot)?.into(),
                expires_in_ms: left,
                expired,
            })
        })
        .collect()
}
