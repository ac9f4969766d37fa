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
    #[error("invalid --pid: no process {0}")]
    NoProcess(i32),
    /// A pidfile that names no live process (the text says which and why).
    #[error("pidfile {0}")]
    PidFile(String),
    /// `--container`: no engine, no such container, a stopped one, a bad name (bad input:
    /// nothing changed). The text names the container and says why.
    #[error("invalid --container {0}")]
    Container(String),
    /// `--container`: the engine answered, but not as expected (a failure, not bad input).
    #[error("container engine: {0}")]
    Engine(String),
}

/// How `status` names the namespace entered through something other than /run/netns (`--pid`,
/// `--container`): set once, before the namespace's state is opened.
static LABEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the label [`display_name`] gives the namespace this process entered (first call wins).
pub fn set_label(label: String) {
    let _ = LABEL.set(label);
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

/// Enters the network namespace of process `pid` (through its `/proc/PID/ns/net`, opened
/// once: the namespace entered is the one the process had at that instant).
pub fn enter_pid(pid: i32) -> Result<(), NetnsError> {
    if pid <= 0 {
        return Err(NetnsError::NoProcess(pid));
    }
    let f = File::open(format!("/proc/{pid}/ns/net")).map_err(|_| NetnsError::NoProcess(pid))?;
    // SAFETY: valid fd of a namespace file.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Enter(
            format!("of pid {pid}"),
            io::Error::last_os_error(),
        ));
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

/// The calling thread's namespace file: setns moves one thread (the netns transport's workers),
/// and /proc/self is the main thread's.
pub const THIS: &str = "/proc/thread-self/ns/net";

/// A namespace file's identity: its device and inode.
pub fn ns_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// This process is in the host's (pid 1's) network namespace.
fn in_host_netns() -> bool {
    ns_id(THIS.as_ref()) == ns_id("/proc/1/ns/net".as_ref())
}

/// The directory name that holds the state and pins of the namespace this thread is in: one
/// namespace, one key, however it was reached (`--netns NAME`, or a shell inside it). `host`
/// for the host's (pid 1's); `cookie-N` for any other, N its netns cookie.
///
/// The cookie rather than the nsfs inode: state outlives its namespace (until a command finds
/// it gone), and the kernel hands a freed inode number to the next namespace made, which would
/// inherit a dead one's state; a cookie is never reused while the system is up (neither are
/// the state and pin roots, which go with a reboot).
pub fn state_key() -> io::Result<String> {
    Ok(if in_host_netns() {
        "host".into()
    } else {
        format!("cookie-{}", cookie()?)
    })
}

/// The key of the namespace a namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`) names,
/// and its cookie, read on a thread of its own that enters it (setns applies to one thread).
pub fn identify(path: &std::path::Path) -> io::Result<(String, u64)> {
    let f = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: valid fd of a namespace file; only this short-lived thread moves.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok((state_key()?, cookie()?))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace probe thread panicked")))
    })
}

/// The state key of the namespace named `name` under /run/netns.
pub fn key_of(name: &str) -> Result<String, NetnsError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(NetnsError::Unknown(name.into()));
    }
    let path = std::path::PathBuf::from(format!("/run/netns/{name}"));
    if !path.exists() {
        return Err(NetnsError::Unknown(name.into()));
    }
    identify(&path)
        .map(|(k, _)| k)
        .map_err(|e| NetnsError::Enter(name.into(), e))
}

/// How people name the namespace this process is in: `given` (`--netns NAME`), else the label
/// set by the command line (`container web`), else its name
/// under /run/netns, else `host` for the host's; `None` for an unnamed one. For display only:
/// state is keyed by [`state_key`].
pub fn display_name(given: Option<&str>) -> Option<String> {
    match given {
        Some(n) => Some(n.to_string()),
        None if LABEL.get().is_some() => LABEL.get().cloned(),
        None if in_host_netns() => Some("host".into()),
        None => own_name(),
    }
}

/// The name under /run/netns of the namespace this process is in, when it is not the host's
/// (pid 1's) and has one. The first name in sorted order if several name it; `None` in the
/// host's namespace or an unnamed one.
pub fn own_name() -> Option<String> {
    let me = ns_id(THIS.as_ref())?;
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

/// Network namespace files this process can see, by identity (device, inode) with one path
/// to each. `mounted`: /run/netns and nsfs mounts anywhere (cheap); else also each task's
/// namespace and each open namespace fd (a walk of /proc). What holds a namespace alive that a
/// process here could reach; the inode alone does not prove it is the same namespace (inodes
/// are reused): see [`identify`].
pub fn visible(mounted: bool) -> std::collections::HashMap<(u64, u64), std::path::PathBuf> {
    use std::path::PathBuf;
    let mut paths: Vec<PathBuf> = Vec::new();
    let list = |dir: &std::path::Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    paths.extend(list("/run/netns".as_ref()));
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPER`
        for l in mi.lines() {
            let (head, tail) = l.split_once(" - ").unwrap_or((l, ""));
            if tail.starts_with("nsfs ")
                && let Some(mp) = head.split(' ').nth(4)
            {
                paths.push(PathBuf::from(mp.replace("\\040", " ")));
            }
        }
    }
    for p in list("/proc".as_ref()).into_iter().filter(|_| !mounted) {
        let pid = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid.is_empty() {
            continue;
        }
        for t in list(&p.join("task")) {
            paths.push(t.join("ns/net"));
        }
        for fd in list(&p.join("fd")) {
            if std::fs::read_link(&fd).is_ok_and(|l| l.to_string_lossy().starts_with("net:[")) {
                paths.push(fd);
            }
        }
    }
    let mut out = std::collections::HashMap::new();
    for p in paths {
        if let Some(id) = ns_id(&p) {
            out.entry(id).or_insert(p);
        }
    }
    out
}
