//! netfault leaves the BPF filesystem as it found it: a bpffs it mounted goes again when
//! nothing is pinned in it any more, at the end of the command that leaves it so (read-only
//! commands such as `status` never mount it); anybody else's pin, or a bpffs somebody else
//! mounted, stays. Runs in a private mount namespace (unshare), where /sys/fs/bpf starts unmounted
//! whatever the host has, so the test neither sees nor touches the host's bpffs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// Prints, after each step, whether bpffs is mounted and whether netfault's note of its own
/// mount exists. The note is removed on any exit (a failed step must not leave it in /run).
const SCRIPT: &str = r#"
set -eu
id=$(readlink /proc/self/ns/mnt | tr -dc 0-9)
note=/run/netfault-bpffs-mnt-$id
trap 'rmdir /sys/fs/bpf/someone-else 2>/dev/null || true; rm -f "$note"' EXIT
umount /sys/fs/bpf 2>/dev/null || true
step() {
  if findmnt -n -t bpf /sys/fs/bpf >/dev/null; then m=mounted; else m=unmounted; fi
  if [ -e "$note" ]; then n=noted; else n=unnoted; fi
  echo "$1 $m $n"
}
nf() { "$NF" --netns "$NS" "$@" >/dev/null; }
step before
nf attach "$IF"
step attached
nf detach
step detached
nf status
step status
nf attach "$IF"
mkdir /sys/fs/bpf/someone-else
nf detach
step foreign-pin
rmdir /sys/fs/bpf/someone-else
nf attach "$IF"
nf detach
step foreign-gone
mount -t bpf bpf /sys/fs/bpf
nf attach "$IF"
nf detach
step theirs
umount /sys/fs/bpf
step end
"#;

#[test]
fn a_bpffs_netfault_mounted_goes_when_nothing_is_pinned_and_no_other_is_touched() {
    let (_lab, _nf, [a, _b]) = pair();
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", SCRIPT])
        .env("NF", env!("CARGO_BIN_EXE_netfault"))
        .env("NS", &a.ns)
        .env("IF", &a.iface)
        .env_remove("SSH_CONNECTION")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the script ran for over 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {out}{err}");
    let want = [
        "before unmounted unnoted",
        "attached mounted noted",
        "detached unmounted unnoted",
        "status unmounted unnoted",
        "foreign-pin mounted noted",
        "foreign-gone unmounted unnoted",
        "theirs mounted unnoted",
        "end unmounted unnoted",
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{err}");
}
