//! The cgroup socket-delivery hook (`nf_cg_ingress`) on the cgroups that ingress entries name:
//! one link per cgroup, from the program `attach` pinned, pinned in the state's links
//! directory as `cgroup-ID` (ID: the cgroup id). The pins are the record of which cgroups have
//! it: no other state is kept, and removing the pin directory (detach) detaches them all.
use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, links::FdLink};

use super::{Result, ebpf_err, io_err};

const PREFIX: &str = "cgroup-";

/// Where the link of cgroup `id` is pinned.
pub fn cgroup_link_pin(links_dir: &Path, id: u64) -> PathBuf {
    links_dir.join(format!("{PREFIX}{id}"))
}

/// The cgroup ids whose links are pinned in `links_dir`, in ascending order.
pub fn cgroup_links(links_dir: &Path) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(links_dir) else {
        return Vec::new();
    };
    let mut ids: Vec<u64> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(PREFIX)?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// Links `prog` to the ingress of the cgroup v2 directory `cgroup`, alongside any other
/// program there. None when that is no longer the cgroup `id` (removed,
/// or removed and made again under its path: another cgroup): no socket of it is left to see.
pub fn attach_cgroup(prog: &mut CgroupSkb, cgroup: &Path, id: u64) -> Result<Option<FdLink>> {
    let Ok(dir) = File::open(cgroup) else {
        return Ok(None);
    };
    if dir.metadata().map(|m| m.ino()).ok() != Some(id) {
        return Ok(None);
    }
    // A BPF link on a cgroup is always one of many (the kernel attaches it with
    // BPF_F_ALLOW_MULTI, and refuses any flag from us: EINVAL); aya makes a link from 5.7 on.
    let link_id = prog
        .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
        .map_err(ebpf_err(format!(
            "attach cgroup_skb/ingress to {}",
            cgroup.display()
        )))?;
    let link = prog
        .take_link(link_id)
        .map_err(ebpf_err("take the cgroup link"))?
        .try_into()
        .map_err(ebpf_err(
            "the cgroup link as a BPF link (kernel 5.7 or later)",
        ))?;
    Ok(Some(link))
}

/// [`attach_cgroup`] with the program pinned at `prog_pin` (by `pin_programs` at attach),
/// the link pinned in `links_dir`. Returns whether the cgroup was still there.
pub fn attach_cgroup_pinned(
    prog_pin: &Path,
    cgroup: &Path,
    id: u64,
    links_dir: &Path,
) -> Result<bool> {
    let mut prog = CgroupSkb::from_pin(prog_pin, CgroupSkbAttachType::Ingress).map_err(
        ebpf_err(format!("open the pinned program {}", prog_pin.display())),
    )?;
    let Some(link) = attach_cgroup(&mut prog, cgroup, id)? else {
        return Ok(false);
    };
    std::fs::create_dir_all(links_dir)
        .map_err(io_err(format!("create {}", links_dir.display())))?;
    super::attach::pin_link(link, &cgroup_link_pin(links_dir, id))?;
    Ok(true)
}

/// The socket-delivery hook of `ebpf` (a private copy, `run`), loaded.
pub fn cgroup_program(ebpf: &mut aya::Ebpf) -> Result<&mut CgroupSkb> {
    super::loaded(ebpf, netfault_common::progs::CG_INGRESS)?
        .try_into()
        .map_err(ebpf_err("cgroup_skb program"))
}

/// Unlinks the hook from cgroup `id` (a link already gone is not an error).
pub fn detach_cgroup(links_dir: &Path, id: u64) -> Result<()> {
    super::unpin_link(&cgroup_link_pin(links_dir, id))
}
