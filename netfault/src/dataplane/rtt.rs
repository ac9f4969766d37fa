//! The passive round-trip-time programs (`netfault-rtt`, netfault-ebpf/src/rtt.rs): loaded
//! privately (no pin: the maps and programs live as long as this process's fds), attached to
//! tc ingress and egress of the interfaces `measure` watches while it runs, and their
//! histograms read back.
//!
//! Under tcx (6.6+) the links are held, not pinned: they vanish with the process, whatever
//! ends it. Where the kernel has no tcx (6.1), they are cls_bpf filters on clsact, which
//! outlive a killed process: [`RttSession::drop`] removes them, and a later session removes
//! any a killed one left (they are known by their program names).
use std::{
    ffi::{CStr, CString},
    io,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuHashMap,
    programs::{LinkOrder, SchedClassifier, TcAttach, TcAttachType, links::FdLink, tc},
};
use netfault_common::{RttHistKey, rtt_names};

use super::{HookKind, KernelError, Result, ebpf_err, io_err};

/// The passive RTT object built by build.rs from netfault-ebpf's `netfault-rtt` binary.
pub static RTT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netfault-rtt"));

/// The programs attached for one `measure`; dropping it detaches them.
pub struct RttSession {
    ebpf: Ebpf,
    links: Vec<FdLink>,
    /// (interface, hook) attached as cls_bpf filters, removed on drop.
    filters: Vec<(String, TcAttachType, &'static str)>,
    /// How each interface's hooks are attached (`tcx` or `clsact`).
    pub hooks: Vec<(String, HookKind)>,
}

/// The object with both programs loaded (verified), attached nowhere.
pub fn rtt_load() -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .load(RTT_OBJECT)
        .map_err(ebpf_err("load the passive RTT object"))?;
    for name in [rtt_names::EGRESS, rtt_names::INGRESS] {
        let p: &mut SchedClassifier = program(&mut ebpf, name)?;
        p.load()
            .map_err(ebpf_err(format!("load {name} (verifier)")))?;
    }
    Ok(ebpf)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| KernelError::Io {
            what: format!("program {name}"),
            source: io::ErrorKind::NotFound.into(),
        })?
        .try_into()
        .map_err(ebpf_err(format!("{name}: tc program")))
}

/// Loads the object and attaches its programs to tc egress and ingress of each of `ifaces`.
/// Egress runs last in its tcx chain (what netfault's own program drops was never sent);
/// ingress first (what arrives is seen before anything redirects or drops it).
pub fn rtt_start(ifaces: &[String]) -> Result<RttSession> {
    let mut s = RttSession {
        ebpf: rtt_load()?,
        links: Vec::new(),
        filters: Vec::new(),
        hooks: Vec::new(),
    };
    for iface in ifaces {
        let cname = CString::new(iface.as_str())
            .map_err(|_| io_err("interface name")(io::ErrorKind::InvalidInput.into()))?;
        let mut kind = HookKind::Tcx;
        for (name, ty, order) in [
            (rtt_names::EGRESS, TcAttachType::Egress, LinkOrder::last()),
            (
                rtt_names::INGRESS,
                TcAttachType::Ingress,
                LinkOrder::first(),
            ),
        ] {
            let p = program(&mut s.ebpf, name)?;
            let attached = p.attach(
                cname.as_c_str(),
                TcAttach::Tcx {
                    attach_type: ty,
                    order,
                },
            );
            match attached {
                Ok(id) => {
                    let link = p.take_link(id).map_err(ebpf_err("tc link"))?;
                    s.links.push(link.try_into().map_err(ebpf_err("tcx link"))?);
                }
                Err(e) if super::attach::tcx_unsupported(&e).is_some() => {
                    kind = HookKind::Clsact;
                    // A filter a killed `measure` left here.
                    let _ = tc::qdisc_detach_program(cname.as_c_str(), ty.into(), name);
                    match tc::qdisc_add_clsact(cname.as_c_str()) {
                        Ok(()) => {}
                        Err(tc::TcError::NetlinkError(e))
                            if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => {
                            return Err(ebpf_err(format!("add clsact qdisc to {iface}"))(e));
                        }
                    }
                    let id = p
                        .attach(
                            cname.as_c_str(),
                            TcAttach::Netlink {
                                parent: ty.into(),
                                options: tc::NlOptions::default(),
                            },
                        )
                        .map_err(ebpf_err(format!("attach tc {name} to {iface}")))?;
                    // Removed by name on drop (the filter does not go with its handle).
                    let link = p.take_link(id).map_err(ebpf_err("tc link"))?;
                    std::mem::forget(link);
                    s.filters.push((iface.clone(), ty, name));
                }
                Err(e) => return Err(ebpf_err(format!("attach tcx {name} to {iface}"))(e)),
            }
        }
        s.hooks.push((iface.clone(), kind));
    }
    Ok(s)
}

impl RttSession {
    /// Every (peer, source, bucket) counted so far, summed over the CPUs.
    pub fn samples(&self) -> Result<Vec<(RttHistKey, u64)>> {
        rtt_samples(&self.ebpf)
    }

    /// The loaded object (for BPF_PROG_TEST_RUN in tests).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }
}

/// The histograms of a loaded `netfault-rtt` object, summed over the CPUs.
pub fn rtt_samples(ebpf: &Ebpf) -> Result<Vec<(RttHistKey, u64)>> {
    let map = ebpf.map(rtt_names::HIST).ok_or_else(|| KernelError::Io {
        what: format!("map {}", rtt_names::HIST),
        source: io::ErrorKind::NotFound.into(),
    })?;
    let hist: PerCpuHashMap<_, RttHistKey, u64> =
        PerCpuHashMap::try_from(map).map_err(ebpf_err(format!("map {}", rtt_names::HIST)))?;
    let mut out = Vec::new();
    for kv in hist.iter() {
        let (k, v) = kv.map_err(ebpf_err(format!("read {}", rtt_names::HIST)))?;
        out.push((k, v.iter().sum()));
    }
    Ok(out)
}

impl Drop for RttSession {
    fn drop(&mut self) {
        self.links.clear();
        for (iface, ty, name) in &self.filters {
            if let Ok(c) = CString::new(iface.as_str()) {
                let _ = tc::qdisc_detach_program(c.as_c_str(), (*ty).into(), name);
            }
        }
    }
}

/// The interfaces measured by default: each one up with an IPv4 or IPv6 address, except
/// loopback ones.
pub fn rtt_default_ifaces() -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills head with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let a = unsafe { &*p };
        p = a.ifa_next;
        if a.ifa_addr.is_null() || a.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr.
        let family = i32::from(unsafe { (*a.ifa_addr).sa_family });
        let flags = a.ifa_flags as i32;
        if (family != libc::AF_INET && family != libc::AF_INET6)
            || flags & libc::IFF_LOOPBACK != 0
            || flags & libc::IFF_UP == 0
        {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string of the list.
        let name = unsafe { CStr::from_ptr(a.ifa_name) }
            .to_string_lossy()
            .into_owned();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// What one passive measurement saw.
pub struct RttMeasured {
    pub samples: Vec<(RttHistKey, u64)>,
    /// How each interface was attached (`tcx`, `clsact`).
    pub hooks: Vec<(String, HookKind)>,
    /// An ending signal cut the measurement short.
    pub interrupted: bool,
}

/// [`rtt_measure`] for exactly `duration`, signals left to the process: for a thread of a
/// server or a coordinator (the agent, `cluster measure --passive`), whose process handles
/// them itself.
pub fn rtt_measure_for(ifaces: &[String], duration: Duration) -> Result<RttMeasured> {
    let session = rtt_start(ifaces)?;
    std::thread::sleep(duration);
    session.end(false)
}

/// Attaches the passive programs to `ifaces` for `duration` (or until SIGINT, SIGTERM or
/// SIGHUP), reads their histograms and detaches them. `ready` is told how each interface was
/// attached, once all are.
pub fn rtt_measure(
    ifaces: &[String],
    duration: Duration,
    ready: impl FnOnce(&[(String, HookKind)]),
) -> Result<RttMeasured> {
    let ending = crate::ending::Ending::block();
    let session = rtt_start(ifaces)?;
    ready(&session.hooks);
    let interrupted = ending.wait(duration);
    session.end(interrupted)
}

impl RttSession {
    /// Reads the histograms, then detaches the programs (on drop).
    fn end(self, interrupted: bool) -> Result<RttMeasured> {
        Ok(RttMeasured {
            samples: self.samples()?,
            hooks: self.hooks.clone(),
            interrupted,
        })
    }
}
