//! Attaching and detaching the programs (XDP, tcx, clsact) and their link pins.
use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttach, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc,
    },
    sys::SyscallError,
};
use aya_obj::programs::XdpAttachType;
use netfault_common::progs;
use serde::{Deserialize, Serialize};

use super::{KernelError, Result, ebpf_err, io_err};

/// How one hook of an interface is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// XDP through a bpf_link, native (driver) mode.
    XdpNative,
    /// XDP through a bpf_link, generic (skb) mode.
    XdpGeneric,
    /// tc through a tcx bpf_link (kernels that have tcx: 6.6+).
    Tcx,
    /// tc through a cls_bpf filter on a clsact qdisc (where the kernel refused tcx).
    Clsact,
    /// No XDP of ours: another program holds XDP here, tc ingress applies the ingress rules.
    TcFallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    XdpIngress,
    TcIngress,
    TcEgress,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::XdpIngress, Hook::TcIngress, Hook::TcEgress];

    fn prog(self) -> &'static str {
        match self {
            Hook::XdpIngress => progs::XDP_INGRESS,
            Hook::TcIngress => progs::TC_INGRESS,
            Hook::TcEgress => progs::TC_EGRESS,
        }
    }

    fn tc_type(self) -> TcAttachType {
        match self {
            Hook::TcEgress => TcAttachType::Egress,
            _ => TcAttachType::Ingress,
        }
    }

    pub fn pin_name(self, iface: &str) -> String {
        let h = match self {
            Hook::XdpIngress => "xdp",
            Hook::TcIngress => "tc_ingress",
            Hook::TcEgress => "tc_egress",
        };
        // bpffs refuses names with a dot, and interface names may have one (eth0.100).
        let enc = iface.replace('%', "%25").replace('.', "%2e");
        format!("{enc}_{h}")
    }
}

/// Words for people: `xdp native`, `tcx`, `clsact`; `tc` where tc ingress stands in for XDP.
impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HookKind::XdpNative => "xdp native",
            HookKind::XdpGeneric => "xdp generic",
            HookKind::Tcx => "tcx",
            HookKind::Clsact => "clsact",
            HookKind::TcFallback => "tc",
        })
    }
}

/// Where a hook sits in the packet's path: `ingress` (XDP), `tc ingress`, `egress`.
impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hook::XdpIngress => "ingress",
            Hook::TcIngress => "tc ingress",
            Hook::TcEgress => "egress",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookState {
    pub hook: Hook,
    pub kind: HookKind,
    pub prog_id: u32,
    /// We added the clsact qdisc, so we remove it on detach.
    #[serde(default)]
    pub created_clsact: bool,
    /// Why the hook is not what was asked for (a fallback), for status and warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `ingress: xdp native`, or for the fallback `ingress: tc (XDP held by program 42 (foo))`.
impl std::fmt::Display for HookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.hook, self.kind)?;
        if self.kind == HookKind::TcFallback {
            // The note reads "XDP on IFACE is held by HOLDER".
            match self
                .note
                .as_deref()
                .and_then(|n| n.split_once(" is held by "))
            {
                Some((_, holder)) => write!(f, " (XDP held by {holder})")?,
                None => f.write_str(" (XDP held by another program)")?,
            }
        }
        Ok(())
    }
}

pub fn ifindex(iface: &str) -> Option<u32> {
    let c = CString::new(iface).ok()?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// What to do about XDP when attaching an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpPlan {
    /// tc ingress and egress only (XDP may be added later with [`attach_xdp`]).
    Skip,
    /// Native, else generic, else (another program holds XDP) tc ingress stands in.
    Auto,
    /// This mode or an error.
    Forced(XdpMode),
}

impl XdpPlan {
    pub fn from_mode(xdp_mode: Option<XdpMode>) -> Self {
        xdp_mode.map_or(Self::Auto, Self::Forced)
    }

    fn mode(self) -> Option<XdpMode> {
        match self {
            Self::Forced(m) => Some(m),
            _ => None,
        }
    }
}

/// Attaches all three programs to `iface`, pinning links under `links_dir`. On failure, detaches
/// what it attached so far.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    links_dir: &Path,
    xdp_mode: Option<XdpMode>,
) -> Result<Vec<HookState>> {
    attach_with(ebpf, iface, links_dir, XdpPlan::from_mode(xdp_mode))
}

/// [`attach`], with XDP as `xdp` says.
pub fn attach_with(
    ebpf: &mut Ebpf,
    iface: &str,
    links_dir: &Path,
    xdp: XdpPlan,
) -> Result<Vec<HookState>> {
    std::fs::create_dir_all(links_dir)
        .map_err(io_err(format!("create {}", links_dir.display())))?;
    attach_all(ebpf, iface, Some(links_dir), xdp).map(|(h, _)| h)
}

/// Attaches without pinning: the links live as long as the returned handles (and this process).
pub fn attach_held(
    ebpf: &mut Ebpf,
    iface: &str,
    xdp: XdpPlan,
) -> Result<(Vec<HookState>, Vec<FdLink>)> {
    attach_all(ebpf, iface, None, xdp)
}

/// Attaches XDP alone to `iface` (pinned under `links_dir`, or held by the returned handle),
/// as [`attach`] would: native, else generic, else a `TcFallback` state naming the program
/// that holds XDP; with `forced`, that mode or an error.
pub fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &str,
    links_dir: Option<&Path>,
    forced: Option<XdpMode>,
) -> Result<(HookState, Option<FdLink>)> {
    let cname = CString::new(iface)
        .map_err(|_| io_err("interface name")(io::ErrorKind::InvalidInput.into()))?;
    let pin = links_dir.map(|d| d.join(Hook::XdpIngress.pin_name(iface)));
    attach_one(
        ebpf,
        Hook::XdpIngress,
        &cname,
        iface,
        pin.as_deref(),
        forced,
    )
}

/// [`attach_xdp`] with the XDP program pinned at `prog_pin` (by [`pin_programs`] at attach):
/// links it without loading or verifying anything, so a rule set that needs XDP on a virtual
/// device costs a link, not a load.
pub fn attach_xdp_pinned(
    prog_pin: &Path,
    iface: &str,
    links_dir: &Path,
    forced: Option<XdpMode>,
) -> Result<HookState> {
    let cname = CString::new(iface)
        .map_err(|_| io_err("interface name")(io::ErrorKind::InvalidInput.into()))?;
    let mut p = Xdp::from_pin(prog_pin, XdpAttachType::Interface).map_err(ebpf_err(format!(
        "open the pinned XDP program {}",
        prog_pin.display()
    )))?;
    let pin = links_dir.join(Hook::XdpIngress.pin_name(iface));
    attach_xdp_prog(&mut p, &cname, iface, Some(&pin), forced).map(|(h, _)| h)
}

/// Detaches one hook (unpinning its link from `links_dir`); a missing one is not an error.
pub fn detach_one(iface: &str, h: &HookState, links_dir: Option<&Path>) -> Result<()> {
    detach_hook(iface, h, links_dir)
}

fn attach_all(
    ebpf: &mut Ebpf,
    iface: &str,
    links_dir: Option<&Path>,
    xdp: XdpPlan,
) -> Result<(Vec<HookState>, Vec<FdLink>)> {
    let cname = CString::new(iface)
        .map_err(|_| io_err("interface name")(io::ErrorKind::InvalidInput.into()))?;
    let mut done: Vec<HookState> = Vec::new();
    let mut held = Vec::new();
    let res = (|| -> Result<()> {
        for hook in Hook::ALL {
            if hook == Hook::XdpIngress && xdp == XdpPlan::Skip {
                continue;
            }
            let pin = links_dir.map(|d| d.join(hook.pin_name(iface)));
            let (h, l) = attach_one(ebpf, hook, &cname, iface, pin.as_deref(), xdp.mode())?;
            done.push(h);
            held.extend(l);
        }
        Ok(())
    })();
    if let Err(e) = res {
        drop(held);
        let _ = detach_all(iface, &done, links_dir);
        return Err(e);
    }
    Ok((done, held))
}

/// Attaches one tc hook of `iface` without pinning (tcx or clsact, as [`attach`] would), for
/// probes: the link lives as long as the returned handle.
pub fn attach_tc_held(
    ebpf: &mut Ebpf,
    iface: &str,
    hook: Hook,
) -> Result<(HookState, Option<FdLink>)> {
    let cname = CString::new(iface)
        .map_err(|_| io_err("interface name")(io::ErrorKind::InvalidInput.into()))?;
    attach_one(ebpf, hook, &cname, iface, None, None)
}

/// Pins `link` at `pin`, or hands it back to be held when there is no pin path.
fn keep(link: FdLink, pin: Option<&Path>) -> Result<Option<FdLink>> {
    match pin {
        Some(p) => pin_link(link, p).map(|()| None),
        None => Ok(Some(link)),
    }
}

/// Pins `link` at `path`, replacing a stale pin there.
pub(super) fn pin_link(link: FdLink, path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    link.pin(path)
        .map_err(ebpf_err(format!("pin link {}", path.display())))?;
    Ok(())
}

fn attach_one(
    ebpf: &mut Ebpf,
    hook: Hook,
    cname: &CString,
    iface: &str,
    pin: Option<&Path>,
    xdp_mode: Option<XdpMode>,
) -> Result<(HookState, Option<FdLink>)> {
    let prog = ebpf
        .program_mut(hook.prog())
        .ok_or_else(|| KernelError::Io {
            what: format!("program {}", hook.prog()),
            source: io::ErrorKind::NotFound.into(),
        })?;
    match hook {
        Hook::XdpIngress => {
            let p: &mut Xdp = prog.try_into().map_err(ebpf_err("xdp program"))?;
            if p.info().is_err() {
                p.load().map_err(ebpf_err("load XDP program (verifier)"))?;
            }
            attach_xdp_prog(p, cname, iface, pin, xdp_mode)
        }
        Hook::TcIngress | Hook::TcEgress => {
            let p: &mut SchedClassifier = prog.try_into().map_err(ebpf_err("tc program"))?;
            if p.info().is_err() {
                p.load().map_err(ebpf_err("load tc program (verifier)"))?;
            }
            let prog_id = p.info().map_err(ebpf_err("tc info"))?.id();
            // tcx first, and first in its chain, so another tool's TC_ACT_OK cannot hide
            // packets from us. A kernel without tcx (before 6.6) refuses the link type.
            let tcx = p.attach(
                cname.as_c_str(),
                TcAttach::Tcx {
                    attach_type: hook.tc_type(),
                    order: LinkOrder::first(),
                },
            );
            match tcx {
                Ok(id) => {
                    let link = p.take_link(id).map_err(ebpf_err("tc link"))?;
                    let fd: FdLink = link.try_into().map_err(ebpf_err("tcx link"))?;
                    let held = keep(fd, pin)?;
                    return Ok((
                        HookState {
                            hook,
                            kind: HookKind::Tcx,
                            prog_id,
                            created_clsact: false,
                            note: None,
                        },
                        held,
                    ));
                }
                Err(e) => match tcx_unsupported(&e) {
                    Some(errno) => log::debug!(
                        "{iface}: no tcx (bpf_link_create: {}); attaching through clsact",
                        io::Error::from_raw_os_error(errno)
                    ),
                    None => {
                        return Err(ebpf_err(format!("attach tcx {} to {iface}", hook.prog()))(
                            e,
                        ));
                    }
                },
            }
            let created = match tc::qdisc_add_clsact(cname.as_c_str()) {
                Ok(()) => true,
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                    false
                }
                Err(e) => return Err(ebpf_err(format!("add clsact qdisc to {iface}"))(e)),
            };
            // Netlink explicitly: aya's automatic choice would go by the kernel version.
            let id = p
                .attach(
                    cname.as_c_str(),
                    TcAttach::Netlink {
                        parent: hook.tc_type().into(),
                        options: tc::NlOptions::default(),
                    },
                )
                .map_err(ebpf_err(format!("attach tc {} to {iface}", hook.prog())))?;
            // A netlink filter outlives the process by itself; detach finds it by name.
            let link = p.take_link(id).map_err(ebpf_err("tc link"))?;
            std::mem::forget(link);
            Ok((
                HookState {
                    hook,
                    kind: HookKind::Clsact,
                    prog_id,
                    created_clsact: created,
                    note: None,
                },
                None,
            ))
        }
    }
}

/// Links the loaded XDP program `p` to `iface`: native, else generic, else (another program
/// holds XDP and no mode was demanded) a `TcFallback` state naming that program.
fn attach_xdp_prog(
    p: &mut Xdp,
    cname: &CString,
    iface: &str,
    pin: Option<&Path>,
    xdp_mode: Option<XdpMode>,
) -> Result<(HookState, Option<FdLink>)> {
    let hook = Hook::XdpIngress;
    let prog_id = p.info().map_err(ebpf_err("xdp info"))?.id();
    // Native first: it runs before the skb exists. Generic where the driver has no XDP.
    let modes: &[(XdpMode, HookKind)] = match xdp_mode {
        Some(XdpMode::Skb) => &[(XdpMode::Skb, HookKind::XdpGeneric)],
        Some(_) => &[(XdpMode::Driver, HookKind::XdpNative)],
        None => &[
            (XdpMode::Driver, HookKind::XdpNative),
            (XdpMode::Skb, HookKind::XdpGeneric),
        ],
    };
    let mut last = None;
    for &(mode, kind) in modes {
        match p.attach(cname.as_c_str(), mode) {
            Ok(id) => {
                let link = p.take_link(id).map_err(ebpf_err("xdp link"))?;
                let fd: FdLink = link.try_into().map_err(|_| KernelError::Io {
                    what: format!("XDP on {iface}: the kernel gave no bpf_link (needs 5.9+)"),
                    source: io::ErrorKind::Unsupported.into(),
                })?;
                let held = keep(fd, pin)?;
                return Ok((
                    HookState {
                        hook,
                        kind,
                        prog_id,
                        created_clsact: false,
                        note: None,
                    },
                    held,
                ));
            }
            Err(e) => last = Some(e),
        }
    }
    match xdp_holder(iface) {
        // Someone else's program: never replace it. Unless a mode was demanded, drop
        // at tc ingress instead (after the skb exists, but dropped all the same).
        Some(holder) if xdp_mode.is_none() => Ok((
            HookState {
                hook,
                kind: HookKind::TcFallback,
                prog_id: 0,
                created_clsact: false,
                note: Some(format!("XDP on {iface} is held by {holder}")),
            },
            None,
        )),
        Some(holder) => Err(KernelError::Io {
            what: format!("attach XDP to {iface}: it is held by {holder}"),
            source: io::ErrorKind::AlreadyExists.into(),
        }),
        None => Err(match last {
            Some(e) => ebpf_err(format!("attach XDP to {iface}"))(e),
            None => KernelError::Io {
                what: format!("attach XDP to {iface}: no mode to try"),
                source: io::ErrorKind::InvalidInput.into(),
            },
        }),
    }
}

/// ENOTSUPP, the kernel-internal errno some paths leak to user space.
const ENOTSUPP: i32 = 524;

/// The errno of a tcx attach the kernel refused for want of tcx; None for any other failure.
/// Before 6.6, BPF_LINK_CREATE knows no BPF_TCX_* attach type: bpf_prog_attach_check_attach_type
/// and link_create answer EINVAL (seen on 6.1); EOPNOTSUPP and ENOTSUPP cover kernels and
/// configurations that refuse the link kind rather than the type.
pub(crate) fn tcx_unsupported(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error
            .raw_os_error()
            .filter(|&n| n == libc::EINVAL || n == libc::EOPNOTSUPP || n == ENOTSUPP),
        _ => None,
    }
}

/// Detaches every hook of one interface, then removes the clsact qdisc if we added it. Links
/// are unpinned from `links_dir`; without one they are held by the caller, who drops them.
/// Missing links (interface gone, already detached) are not errors.
pub fn detach_all(iface: &str, hooks: &[HookState], links_dir: Option<&Path>) -> Result<()> {
    let mut first_err = None;
    for h in hooks {
        if let Err(e) = detach_hook(iface, h, links_dir) {
            first_err.get_or_insert(e);
        }
    }
    if hooks.iter().any(|h| h.created_clsact) && ifindex(iface).is_some() {
        remove_clsact(iface);
    }
    first_err.map_or(Ok(()), Err)
}

fn detach_hook(iface: &str, h: &HookState, links_dir: Option<&Path>) -> Result<()> {
    match h.kind {
        HookKind::TcFallback => Ok(()),
        HookKind::XdpNative | HookKind::XdpGeneric | HookKind::Tcx => match links_dir {
            Some(d) => unpin_link(&d.join(h.hook.pin_name(iface))),
            None => Ok(()),
        },
        HookKind::Clsact => {
            let Ok(cname) = CString::new(iface) else {
                return Ok(());
            };
            if ifindex(iface).is_none() {
                return Ok(());
            }
            match tc::qdisc_detach_program(cname.as_c_str(), h.hook.tc_type().into(), h.hook.prog())
            {
                Ok(()) => {}
                Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ebpf_err(format!("detach tc from {iface}"))(e)),
            }
            Ok(())
        }
    }
}

/// Removes the clsact qdisc we created (our filters are gone by then); one already gone is fine.
fn remove_clsact(iface: &str) {
    if let Ok(Some(i)) = crate::netlink::link_index(iface) {
        let _ = crate::netlink::clsact_del(i);
    }
}

pub fn unpin_link(path: &Path) -> Result<()> {
    match PinnedLink::from_pin(path) {
        Ok(l) => {
            let fd = l
                .unpin()
                .map_err(io_err(format!("unpin {}", path.display())))?;
            drop(fd); // last reference: the kernel detaches the program
            Ok(())
        }
        Err(_) if !path.exists() => Ok(()),
        Err(e) => Err(ebpf_err(format!("open pinned link {}", path.display()))(e)),
    }
}

/// The XDP program another tool attached to `iface`, as "program ID (NAME)", if any.
pub fn xdp_holder(iface: &str) -> Option<String> {
    crate::netlink::link_index(iface)
        .ok()
        .flatten()
        .and_then(crate::netlink::xdp_holder)
}

/// netfault's programs on the interface `ifindex` (tcx ingress and egress, XDP), known by
/// their names, whoever attached them: `(hook, program id)`. Programs on a cls_bpf filter
/// (kernels without tcx) are not looked for.
pub fn netfault_programs(ifindex: u32) -> Vec<(Hook, u32)> {
    let mut out = Vec::new();
    for hook in [Hook::TcIngress, Hook::TcEgress] {
        if let Ok((_, progs)) = SchedClassifier::query_tcx(ifindex, hook.tc_type()) {
            out.extend(
                progs
                    .iter()
                    .filter(|p| p.name_as_str() == Some(hook.prog()))
                    .map(|p| (hook, p.id())),
            );
        }
    }
    if let Ok(Some(x)) = crate::netlink::xdp_attached(ifindex) {
        let ours = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .any(|p| p.id() == x.prog_id && p.name_as_str() == Some(Hook::XdpIngress.prog()));
        if ours {
            out.push((Hook::XdpIngress, x.prog_id));
        }
    }
    out
}

/// Is the pinned link still attached to a live interface with this index?
pub fn link_alive(path: &Path) -> bool {
    PinnedLink::from_pin(path).is_ok()
}

/// Removes a pin directory tree (maps, links) entirely.
pub fn remove_pins(dir: &PathBuf) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(format!("remove {}", dir.display())))?;
    }
    Ok(())
}
