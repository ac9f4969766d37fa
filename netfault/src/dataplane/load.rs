//! Loading the eBPF object: pinned (CLI) or private (`run`).
use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{Program, ProgramError, ProgramFd, SchedClassifier},
};
use netfault_common::{DistTable, maps as names};

use super::{KernelError, Result, ebpf_err, io_err};

/// The eBPF object built by build.rs from netfault-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netfault"));

/// Loads the object with its maps pinned in (or reused from) `maps_dir`.
pub fn load(maps_dir: &Path) -> Result<Ebpf> {
    std::fs::create_dir_all(maps_dir).map_err(io_err(format!("create {}", maps_dir.display())))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(maps_dir)
        .load(EBPF_OBJECT)
        .map_err(ebpf_err("load the eBPF object"))?;
    write_dist_tables(&mut ebpf)?;
    Ok(ebpf)
}

/// The jitter distributions' tables (constant; rewriting a pinned copy changes nothing).
fn write_dist_tables(ebpf: &mut Ebpf) -> Result<()> {
    let map = ebpf.map_mut(names::DIST).ok_or_else(|| KernelError::Io {
        what: format!("map {}", names::DIST),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    let mut tables: Array<&mut MapData, DistTable> =
        Array::try_from(map).map_err(ebpf_err(format!("map {}", names::DIST)))?;
    for d in crate::spec::dist::Distribution::ALL {
        if let Some(t) = crate::spec::dist::table(d) {
            tables
                .set(u32::from(d.code()) - 1, &DistTable { t: *t }, 0)
                .map_err(ebpf_err("write distribution table"))?;
        }
    }
    Ok(())
}

/// Loads a private copy: maps are pinned only for the instant aya needs a path, then unpinned,
/// so they live exactly as long as this process's fds.
pub fn load_private() -> Result<Ebpf> {
    let dir = PathBuf::from(format!("/sys/fs/bpf/netfault-run-{}", std::process::id()));
    let res = load(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

/// The segmenting filter's classifier (`progs::TC_SEGMENT`) from `ebpf`, loaded, as an fd of
/// its own: a tc filter made with it holds the program after `ebpf` is gone.
pub fn segment_program(ebpf: &mut Ebpf) -> Result<ProgramFd> {
    let name = netfault_common::progs::TC_SEGMENT;
    let prog = program_mut(ebpf, name)?;
    let p: &mut SchedClassifier = prog.try_into().map_err(ebpf_err("tc program"))?;
    if p.fd().is_err() {
        p.load()
            .map_err(ebpf_err(format!("load {name} (verifier)")))?;
    }
    p.fd()
        .map_err(ebpf_err(format!("{name} fd")))?
        .try_clone()
        .map_err(io_err(format!("duplicate the fd of {name}")))
}

/// The program `name` of `ebpf`.
fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    ebpf.program_mut(name).ok_or_else(|| KernelError::Io {
        what: format!("program {name}"),
        source: io::ErrorKind::NotFound.into(),
    })
}

/// The program `name` of `ebpf`, loaded (the kernel verifies it) unless it was already.
pub fn loaded<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    let prog = program_mut(ebpf, name)?;
    ensure_loaded(prog).map_err(ebpf_err(format!("load {name} (verifier)")))?;
    Ok(prog)
}

/// Loads (the kernel verifies) `prog` unless it is loaded already. netfault's programs are XDP,
/// tc classifiers and one cgroup_skb program; a program of any other kind is left as it is.
pub fn ensure_loaded(prog: &mut Program) -> std::result::Result<(), ProgramError> {
    if prog.fd().is_ok() {
        return Ok(());
    }
    match prog {
        Program::Xdp(p) => p.load(),
        Program::SchedClassifier(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        _ => Ok(()),
    }
}

/// Loads every program `attach` uses or pins (XDP, tc ingress and egress, the segmenting
/// classifier, the cgroup socket-delivery hook) at once, one thread each: the kernel verifies each in the loading thread, so on
/// a machine with more than one CPU `attach` waits for the longest verification, not their sum.
pub fn verify_programs(ebpf: &mut Ebpf) -> Result<()> {
    use netfault_common::progs;
    let wanted = [
        progs::XDP_INGRESS,
        progs::TC_INGRESS,
        progs::TC_EGRESS,
        progs::TC_SEGMENT,
        progs::CG_INGRESS,
    ];
    let todo: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(n, p)| wanted.contains(n) && p.fd().is_err())
        .collect();
    std::thread::scope(|scope| {
        let running: Vec<_> = todo
            .into_iter()
            .map(|(name, prog)| {
                let job = scope.spawn(move || ensure_loaded(prog));
                (name, job)
            })
            .collect();
        for (name, job) in running {
            match job.join() {
                Ok(r) => r.map_err(ebpf_err(format!("load {name} (verifier)")))?,
                Err(_) => {
                    return Err(KernelError::Io {
                        what: format!("load {name}: the loading thread panicked"),
                        source: io::ErrorKind::Other.into(),
                    });
                }
            }
        }
        Ok(())
    })
}

/// Pins the XDP program, the segmenting classifier and the cgroup socket-delivery hook of
/// `ebpf` (loading them where needed) under `dir` as `xdp`, `segment` and `cgroup-ingress`:
/// the changes that follow link them from there instead of loading and verifying the object
/// again (`attach_xdp_pinned`, [`segment_program_pinned`], `attach_cgroup_pinned`).
pub fn pin_programs(ebpf: &mut Ebpf, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    for (name, file) in [
        (netfault_common::progs::XDP_INGRESS, PINNED_XDP),
        (netfault_common::progs::TC_SEGMENT, PINNED_SEGMENT),
        (netfault_common::progs::CG_INGRESS, PINNED_CG_INGRESS),
    ] {
        let prog = loaded(ebpf, name)?;
        let path = dir.join(file);
        // A pin left by an earlier attach of this state holds the same object's program.
        let _ = std::fs::remove_file(&path);
        prog.pin(&path)
            .map_err(ebpf_err(format!("pin {name} at {}", path.display())))?;
    }
    Ok(())
}

/// The file names [`pin_programs`] gives the XDP program, the segmenting classifier and the
/// cgroup socket-delivery hook.
pub const PINNED_XDP: &str = "xdp";
pub const PINNED_SEGMENT: &str = "segment";
pub const PINNED_CG_INGRESS: &str = "cgroup-ingress";

/// The segmenting classifier pinned at `pin`, as an fd of its own; where there is no pin (a
/// state attached by an older netfault), it is loaded from the object with the maps of
/// `maps_dir`, as before.
pub fn segment_program_pinned(pin: &Path, maps_dir: &Path) -> Result<ProgramFd> {
    if pin.exists() {
        let p = SchedClassifier::from_pin(pin).map_err(ebpf_err(format!(
            "open the pinned program {}",
            pin.display()
        )))?;
        return p
            .fd()
            .map_err(ebpf_err("segmenting program fd"))?
            .try_clone()
            .map_err(io_err("duplicate the fd of the segmenting program"));
    }
    segment_program(&mut load(maps_dir)?)
}
