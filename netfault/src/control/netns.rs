//! Network namespace entry and identity.
//!
//! setns(2) applies to the calling thread only, so `enter` runs before any other thread exists.
use std::{fs::File, io, os::fd::AsRawFd};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid --netns: no namespace named '{0}' under /run/netns")]
    Unknown(String),
    #[error("enter network namespace '{0}': {1}")]
    Enter(String, io::Error),
}

pub fn enter(name: &str) -> Result<(), NetnsError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(NetnsError::Unknown(name.into()));
    }
    let f =
        File::open(format!("/run/netns/{name}")).map_err(|_| NetnsError::Unknown(name.into()))?;
    // SAFETY: valid fd of a namespace file.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Enter(name.into(), io::Error::last_os_error()));
    }
    Ok(())
}

/// The current namespace's cookie: unique for the boot, never reused (unlike inode numbers).
pub fn cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket syscalls on a fd we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut v: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(v)
    }
}

/// A namespace file's identity: its device and inode.
fn ns_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// This process is in the host's (pid 1's) network namespace.
fn in_host_netns() -> bool {
    ns_id("/proc/self/ns/net".as_ref()) == ns_id("/proc/1/ns/net".as_ref())
}

/// Directory name that keeps one namespace's state apart from the others'.
pub fn state_key(name: Option<&str>) -> io::Result<String> {
    Ok(match name {
        Some(n) => format!("netns-{n}"),
        None if in_host_netns() => "host".into(),
        None => format!("cookie-{}", cookie()?),
    })
}

/// The name under /run/netns of the namespace this process is in, when it is not the host's
/// (pid 1's) and has one: a process started inside a named namespace (an sshd there) then
/// finds the state `netfault --netns NAME` uses. The first name in sorted order if several
/// name it; `None` in the host's namespace or an unnamed one.
pub fn own_name() -> Option<String> {
    let me = ns_id("/proc/self/ns/net".as_ref())?;
    if in_host_netns() {
        return None;
    }
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| ns_id(&e.path()) == Some(me))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}
