#!/bin/sh
# PID 1 of the test VM that `cargo xtask vm` boots (copied to /init in its initramfs).
# Mounts the kernel filesystems, loads the modules netfault and its tests use, runs the command
# from /etc/netfault-vm/cmd with a time limit, prints NETFAULT-VM-EXIT=<code> for the host to
# read from the serial console, and powers off.
#
# /bin/sh is the host's dash, not busybox: Debian's static busybox prefers its own applets to
# PATH, so under its shell `ip` and `tc` would be cut-down applets instead of iproute2's.
# Busybox's applets sit last in PATH, for what the host tools do not cover (mount, insmod, ...).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/busybox
export HOME=/root TERM=dumb

# Power off once the console has sent everything: stty sets the tty with TCSADRAIN, which
# waits for the output queue to empty, so the marker is not cut off by the power-off.
halt_vm() {
    stty onlcr </dev/console 2>/dev/null
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 10
}

setup_failed() {
    echo "NETFAULT-VM-SETUP-FAILED=$*"
    halt_vm
}

mount -t proc proc /proc || setup_failed "mount /proc"
mount -t sysfs sysfs /sys || setup_failed "mount /sys"
mount -t devtmpfs devtmpfs /dev || setup_failed "mount /dev"
mount -t tmpfs -o mode=0755 tmpfs /run || setup_failed "mount /run"
# /tmp stays on the initramfs (already RAM): a mount would hide files included from /tmp.
chmod 1777 /tmp
mount -t bpf -o mode=0700 bpf /sys/fs/bpf || setup_failed "mount bpffs"
# Not needed by netfault itself, but tests that inspect programs or cgroups expect them.
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ln -s /proc/self/fd /dev/fd 2>/dev/null

release=$(uname -r)
while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$release/netfault-vm/$m.ko" || setup_failed "insmod $m"
done </etc/netfault-vm/modules

ip link set lo up || setup_failed "ip link set lo up"

# Sets VM_TIMEOUT, VM_CWD and the command as "$@".
. /etc/netfault-vm/cmd
cd "$VM_CWD" || setup_failed "cd $VM_CWD"
read -r up _ </proc/uptime
echo "netfault-vm: kernel $release, ${up}s after boot: running $*"

# coreutils' timeout: 124 when the limit hits. stdin is the console; nothing types on it.
timeout -k 5 "$VM_TIMEOUT" "$@" </dev/null
rc=$?
[ "$rc" = 124 ] && echo "netfault-vm: command timed out after ${VM_TIMEOUT}s"
echo "NETFAULT-VM-EXIT=$rc"
halt_vm
