//! The effects of hook choice: reading a device's kind, adding and removing XDP, and marking
//! the interfaces where tc ingress applies every rule (`NF_TC_ONLY`).
//!
//! Order keeps every packet counted once: XDP passes everything on an interface marked
//! tc-only, so XDP is attached before the mark goes, and the mark is set before XDP goes.
use std::path::Path;

use super::{Choice, DeviceKind};
use crate::{
    control::{
        Result,
        state::{Attachment, Paths, RuleEntry},
    },
    dataplane::{self as kernel, Hook, HookKind, HookState, Maps},
};

/// The kind of device `ifindex` is; `Unknown` (treated as physical) when it cannot be read.
pub fn device_kind(ifindex: u32) -> DeviceKind {
    match crate::netlink::link_kind(ifindex) {
        Ok(k) => DeviceKind::from_link(k.info_kind.as_deref(), k.loopback),
        Err(e) => DeviceKind::Unknown(e.to_string()),
    }
}

/// The state recorded where another program holds XDP on `iface` (tc ingress stands in).
pub fn held_elsewhere(iface: &str) -> Option<HookState> {
    kernel::xdp_holder(iface).map(|holder| HookState {
        hook: Hook::XdpIngress,
        kind: HookKind::TcFallback,
        prog_id: 0,
        created_clsact: false,
        note: Some(format!("XDP on {iface} is held by {holder}")),
    })
}

/// The warning for a device where tc ingress stands in for XDP that another program holds.
pub fn fallback_warning(note: &str, iface: &str) -> String {
    format!(
        "{note}; netfault applies ingress rules at tc ingress on {iface} instead (after the skb exists; `--xdp-mode native` refuses instead)"
    )
}

/// Pinned mode: brings each attached device's XDP in line with `rules` (in evaluation order:
/// the first that needs XDP is named) at `now`. Adds XDP where a live rule needs it, linking
/// the program `attach` pinned (nothing is loaded or verified), removes it where none does,
/// and records the choice. Failing to add XDP or to remove it is a warning, not an error: tc
/// ingress applies the rules meanwhile. A state attached before programs were pinned has its
/// object loaded once, and pinned, the first time XDP is added.
pub fn reconcile(
    attached: &mut [Attachment],
    rules: &[&RuleEntry],
    maps: &mut Maps,
    paths: &Paths,
    now: u64,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let (links_dir, progs) = (paths.links(), paths.progs());
    let prog_pin = progs.join(kernel::PINNED_XDP);
    for a in attached.iter_mut() {
        if kernel::ifindex(&a.iface) != Some(a.ifindex) {
            continue; // gone: `attach` sorts it out when it is back
        }
        let c = a.choose(rules.iter().copied(), now);
        let have = a.xdp_hook().cloned();
        match (&have, c.xdp) {
            (None, true) => {
                // Another program held XDP: look again, it may have gone since.
                if a.xdp_held_elsewhere() {
                    if kernel::xdp_holder(&a.iface).is_some() {
                        a.choice = Some(c);
                        continue;
                    }
                    a.hooks.retain(|h| h.kind != HookKind::TcFallback);
                }
                let forced = c.forced.map(|m| m.mode());
                let linked = ensure_pinned(&prog_pin, paths).and_then(|()| {
                    kernel::attach_xdp_pinned(&prog_pin, &a.iface, &links_dir, forced)
                });
                match linked {
                    Ok(h) if h.kind == HookKind::TcFallback => {
                        if let Some(n) = &h.note {
                            warnings.push(fallback_warning(n, &a.iface));
                        }
                        a.hooks.insert(0, h);
                    }
                    Ok(h) => {
                        a.hooks.insert(0, h);
                        maps.set_tc_only(a.ifindex, false)?;
                    }
                    Err(e) => warnings.push(format!(
                        "cannot add XDP to {}: {e}; its ingress drops apply at tc ingress",
                        a.iface
                    )),
                }
            }
            (Some(h), false) => {
                // tc ingress takes every rule first; then XDP (passing everything now) goes.
                maps.set_tc_only(a.ifindex, true)?;
                match kernel::detach_one(&a.iface, h, Some(&links_dir)) {
                    Ok(()) => a.hooks.retain(|x| x != h),
                    Err(e) => warnings.push(format!(
                        "cannot remove the idle XDP program from {}: {e}; it passes every packet",
                        a.iface
                    )),
                }
            }
            _ => {}
        }
        a.choice = Some(c);
    }
    Ok(warnings)
}

/// Loads the object (maps from `paths`) and pins its programs where `attach` did not (a state
/// attached by an older netfault): once, the first time one is linked.
pub(super) fn ensure_pinned(prog_pin: &Path, paths: &Paths) -> kernel::Result<()> {
    if prog_pin.exists() {
        return Ok(());
    }
    kernel::pin_programs(&mut kernel::load(&paths.maps())?, &paths.progs())
}

/// What `status` says about one device's hooks: the choice it would make now, and whether an
/// XDP program sits idle (the rule that wanted it expired in the data path; the next change
/// removes it).
pub fn describe(a: &Attachment, rules: &[&RuleEntry], now: u64) -> (Choice, bool) {
    let c = a.choose(rules.iter().copied(), now);
    let idle = !c.xdp && a.xdp_hook().is_some();
    (c, idle)
}
