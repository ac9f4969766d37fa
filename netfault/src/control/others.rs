//! The states of other namespaces, as one namespace's command meets them: those whose
//! namespace is gone (removed), and netfault programs on an interface that this namespace's
//! state does not hold (an attach refuses them).
//!
//! State is keyed by the namespace's cookie ([`netns::state_key`]) and outlives its namespace
//! (nothing tells netfault when one is deleted): each command that opens a state removes the
//! state and pins of every other namespace it finds gone.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    netns,
    state::{Locked, PIN_ROOT, Paths, RUN_ROOT, State},
};
use crate::dataplane::{self as kernel, Hook};

/// Whether the namespace a state describes may still exist: some namespace file this process
/// can see has its device and inode. A match may be a newer namespace that reuses the inode
/// number: that errs on the safe side (the state stays until that one is gone too). State that
/// records no namespace file (written before it was recorded) counts as alive: it is left
/// alone.
fn alive(state: &State, seen: &std::collections::HashMap<(u64, u64), PathBuf>) -> bool {
    state.netns_file.is_none_or(|id| seen.contains_key(&id))
}

/// Removes the state and pins of every other namespace (`cookie-N`, N not this one's) that no
/// longer exists. Returns what it removed, for the log. A state another command holds is left
/// for a later one.
pub fn sweep_gone(current: &str) -> Vec<String> {
    let keys: Vec<String> = fs::read_dir(RUN_ROOT)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|k| k.starts_with("cookie-") && k != current)
                .collect()
        })
        .unwrap_or_default();
    let mut states = Vec::new();
    for key in keys {
        let paths = Paths::new(&key);
        let Ok(text) = fs::read(paths.state_file()) else {
            continue;
        };
        let Ok(state) = serde_json::from_slice::<State>(&text) else {
            continue;
        };
        if state.netns_file.is_some() {
            states.push((paths, state));
        }
    }
    if states.is_empty() {
        return Vec::new();
    }
    // Most namespaces have a name (or another mount): look there first, and walk /proc only
    // for the states not found that way.
    let mounted = netns::visible(true);
    states.retain(|(_, s)| !alive(s, &mounted));
    if states.is_empty() {
        return Vec::new();
    }
    let seen = netns::visible(false);
    let mut removed = Vec::new();
    for (paths, state) in states {
        if alive(&state, &seen) {
            continue;
        }
        let Ok(lock) = Locked::acquire(paths.clone(), Duration::ZERO) else {
            continue;
        };
        // Read again under the lock: a command may have written it since.
        if lock.load().ok().as_ref() != Some(&state) {
            continue;
        }
        // Its interfaces went with the namespace (a physical one back to the host's, without
        // netfault's programs): only the pins and the state are left.
        if let Err(e) = kernel::remove_pins(&paths.pins) {
            log::warn!("{e}");
            continue;
        }
        let _ = lock.remove();
        removed.push(format!(
            "removed the state of namespace {} ({}): that namespace no longer exists",
            state.netns_name.as_deref().unwrap_or("(unnamed)"),
            paths.key
        ));
    }
    removed
}

/// netfault's programs on `iface` (`ifindex`) that the state `current` does not hold: where
/// they came from, as a message naming the program ids and any pin of them under another key
/// (a state of an older layout, or of another key); `None` when there are none.
pub fn foreign_programs(iface: &str, ifindex: u32, current: &Paths) -> Option<String> {
    let progs = kernel::netfault_programs(ifindex);
    if progs.is_empty() {
        return None;
    }
    let ids: Vec<String> = progs
        .iter()
        .map(|(h, id)| format!("program {id} at {h}"))
        .collect();
    let pins: Vec<PathBuf> = fs::read_dir(PIN_ROOT)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| *p != current.pins)
                .flat_map(|dir| {
                    Hook::ALL
                        .iter()
                        .map(move |h| dir.join("links").join(h.pin_name(iface)))
                })
                .filter(|p| Path::exists(p))
                .collect()
        })
        .unwrap_or_default();
    let whence = if pins.is_empty() {
        format!(
            "not pinned under {PIN_ROOT}: a process holds them (`netfault run`, or an agent of another netfault)"
        )
    } else {
        format!(
            "pinned at {} (another state: an older netfault's layout, or another key); detach them with the netfault that attached them, or remove that directory",
            pins.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Some(format!(
        "{iface} already has netfault's programs that this namespace's state ({}) does not hold ({}), {whence}",
        current.key,
        ids.join(", ")
    ))
}
