//! The BPF filesystem at /sys/fs/bpf: mounted when missing, and unmounted again by the last
//! netfault process that leaves it with nothing pinned, so a host is left as netfault found it.
//!
//! Every user holds a [`Bpffs`] guard: a shared `flock` on the mount's root directory. Dropping
//! the last guard tries an exclusive lock without waiting; it gets it only when no netfault
//! process is between mounting and pinning, and it unmounts only
//! - a mount netfault made itself, in this mount namespace (a marker under /run names the mount
//!   namespace and the filesystem's device), and
//! - that holds nothing but what the kernel puts into every new bpffs (bpf_preload's
//!   `maps.debug` and `progs.debug`): anybody's pins keep it mounted.
//!
//! A process that was waiting for its shared lock while the mount went away finds the path no
//! longer on the filesystem its lock is on, and mounts afresh.
use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
};

use super::{KernelError, Result, io_err};

const MOUNT_POINT: &str = "/sys/fs/bpf";
/// The same, for the libc calls.
const MOUNT_POINT_C: &std::ffi::CStr = c"/sys/fs/bpf";
/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// What the kernel creates in every new bpffs; not anybody's pins.
const KERNEL_ENTRIES: [&str; 2] = ["maps.debug", "progs.debug"];
/// Tries to find the mount in place before giving up (each try is one mount or one wait for a
/// lock held only across an unmount).
const TRIES: usize = 5;

/// Keeps bpffs mounted while it lives; see the module docs.
#[derive(Debug)]
#[must_use = "bpffs may be unmounted as soon as the guard drops"]
pub struct Bpffs {
    root: Option<File>,
}

/// Mounts bpffs at /sys/fs/bpf when it is missing, and holds it mounted until the guard drops.
pub fn ensure_bpffs() -> Result<Bpffs> {
    for _ in 0..TRIES {
        if !mounted()? {
            // One mounter at a time (the lock is on the directory under the mount point), so
            // two processes never stack two mounts there.
            let under = File::open(MOUNT_POINT).map_err(io_err(format!("open {MOUNT_POINT}")))?;
            flock(&under, libc::LOCK_EX).map_err(io_err(format!("lock {MOUNT_POINT}")))?;
            if !mounted()? {
                mount()?;
            }
        }
        let root = File::open(MOUNT_POINT).map_err(io_err(format!("open {MOUNT_POINT}")))?;
        flock(&root, libc::LOCK_SH).map_err(io_err(format!("lock {MOUNT_POINT}")))?;
        // Still the mount at the path (a last user may have unmounted it while we waited)?
        let here = std::fs::metadata(MOUNT_POINT).map_err(io_err(format!("stat {MOUNT_POINT}")))?;
        let locked = root
            .metadata()
            .map_err(io_err(format!("stat {MOUNT_POINT}")))?;
        if here.dev() == locked.dev() && mounted()? {
            return Ok(Bpffs { root: Some(root) });
        }
    }
    Err(io_err(format!("keep bpffs mounted at {MOUNT_POINT}"))(
        io::Error::other("it was unmounted again each time (another process unmounting it?)"),
    ))
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        drop(self.root.take()); // our shared lock: the exclusive one below must not meet it
        if let Err(e) = release() {
            log::warn!("unmount the bpffs netfault mounted: {e}");
        }
    }
}

/// Whether a bpffs is mounted at the mount point.
fn mounted() -> Result<bool> {
    // SAFETY: statfs is plain old data, filled by the kernel.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::statfs(MOUNT_POINT_C.as_ptr(), &mut st) } != 0 {
        return Err(io_err(format!("statfs {MOUNT_POINT}"))(
            io::Error::last_os_error(),
        ));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid fd of ours.
    if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This process's mount namespace, as `/proc/self/ns/mnt` names it (`mnt:[4026531841]`).
fn mount_ns() -> io::Result<String> {
    Ok(std::fs::read_link("/proc/self/ns/mnt")?
        .to_string_lossy()
        .into_owned())
}

/// Where a mount netfault made in this mount namespace is noted: the mount namespace and the
/// filesystem's device. /run is a tmpfs: the note goes with the mount at reboot.
fn marker() -> io::Result<PathBuf> {
    let ns = mount_ns()?;
    let id: String = ns.chars().filter(char::is_ascii_digit).collect();
    Ok(PathBuf::from(format!("/run/netfault-bpffs-mnt-{id}")))
}

fn marker_text(dev: u64) -> io::Result<String> {
    Ok(format!("{} dev {dev}\n", mount_ns()?))
}

fn mount() -> Result<()> {
    let (src, dst, ty) = (c"bpf", MOUNT_POINT_C, c"bpf");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io_err(format!("mount bpffs at {MOUNT_POINT}"))(
            io::Error::last_os_error(),
        ));
    }
    let note = || -> io::Result<()> {
        let dev = std::fs::metadata(MOUNT_POINT)?.dev();
        std::fs::write(marker()?, marker_text(dev)?)
    };
    note().map_err(|e| {
        // Unnoted, it would stay mounted for good: take it down again.
        // SAFETY: valid C string.
        unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
        io_err("note the bpffs mount under /run")(e)
    })
}

/// Unmounts bpffs if this namespace's netfault mounted it, nobody uses it now and nothing but
/// the kernel's own entries is in it.
fn release() -> Result<()> {
    let mark = marker().map_err(io_err("name this mount namespace"))?;
    let Ok(noted) = std::fs::read_to_string(&mark) else {
        return Ok(()); // not ours (or already gone)
    };
    if !mounted()? {
        let _ = std::fs::remove_file(&mark); // unmounted by someone else
        return Ok(());
    }
    let root = File::open(MOUNT_POINT).map_err(io_err(format!("open {MOUNT_POINT}")))?;
    if flock(&root, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        return Ok(()); // in use by another netfault process: the last one unmounts
    }
    let dev = root
        .metadata()
        .map_err(io_err(format!("stat {MOUNT_POINT}")))?
        .dev();
    if noted != marker_text(dev).map_err(io_err("name this mount namespace"))? {
        // Mounted anew by somebody else since: theirs, and the note is stale.
        let _ = std::fs::remove_file(&mark);
        return Ok(());
    }
    let only_kernel = std::fs::read_dir(MOUNT_POINT)
        .map_err(io_err(format!("list {MOUNT_POINT}")))?
        .all(|e| {
            e.is_ok_and(|e| {
                KERNEL_ENTRIES
                    .iter()
                    .any(|k| e.file_name().to_str() == Some(k))
            })
        });
    if !only_kernel {
        return Ok(());
    }
    // Detached now, freed once our lock's fd closes below; a waiter sees the path change.
    // SAFETY: valid C string.
    if unsafe { libc::umount2(MOUNT_POINT_C.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(KernelError::Io {
            what: format!("unmount {MOUNT_POINT}"),
            source: io::Error::last_os_error(),
        });
    }
    let _ = std::fs::remove_file(&mark);
    Ok(())
}
