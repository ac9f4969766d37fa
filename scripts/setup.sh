#!/usr/bin/env bash
# Installs everything a fresh Debian 12 machine needs to build and test netfault.
# Idempotent: every step checks first, so a second run changes nothing and takes seconds.
set -euo pipefail

USER_TOOLCHAIN=1.98.0
EBPF_TOOLCHAIN=nightly-2026-06-20   # LLVM 22; later nightlies use LLVM 23, which bpf-linker 0.13 cannot read
BPF_LINKER_VERSION=0.13.0
CARGO_FUZZ_VERSION=0.13.1
LLVM_MAJOR=22

log() { printf 'setup: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: LLVM for bpf-linker, and the tools the tests and demo drive (sudo and
# passwd's useradd: tests/sshprot.rs logs a throwaway user in over SSH to run `sudo netfault`).
APT_PKGS=(llvm-${LLVM_MAJOR}-dev libpolly-${LLVM_MAJOR}-dev zlib1g-dev libzstd-dev
          iproute2 bpftool nftables iptables ethtool iperf3 python3 iputils-ping procps qemu-system-x86 busybox-static xz-utils zstd
          sudo passwd)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# rustup itself (present on this kind of machine; installed from the distribution otherwise).
if ! command -v rustup >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/rustup" ] || { log "rustup is missing: install it first (Debian: apt-get install rustup)"; exit 1; }
  export PATH="$HOME/.cargo/bin:$PATH"
fi

have_toolchain() { rustup toolchain list | grep -q "^$1"; }
if ! have_toolchain "$USER_TOOLCHAIN"; then
  log "installing Rust $USER_TOOLCHAIN"
  rustup toolchain install "$USER_TOOLCHAIN" --profile minimal -c rustfmt -c clippy
fi
if ! have_toolchain "$EBPF_TOOLCHAIN"; then
  log "installing Rust $EBPF_TOOLCHAIN with rust-src"
  rustup toolchain install "$EBPF_TOOLCHAIN" --profile minimal -c rust-src -c clippy -c rustfmt
elif ! rustup component list --toolchain "$EBPF_TOOLCHAIN" --installed | grep -q '^rust-src'; then
  rustup component add rust-src --toolchain "$EBPF_TOOLCHAIN"
fi
for c in rustfmt clippy; do
  rustup component list --toolchain "$USER_TOOLCHAIN" --installed | grep -q "^$c" \
    || rustup component add "$c" --toolchain "$USER_TOOLCHAIN"
done

# bpf-linker, built against Debian's LLVM 22 (no prebuilt binaries can be fetched here).
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "building bpf-linker $BPF_LINKER_VERSION against LLVM $LLVM_MAJOR (takes a few minutes)"
  LLVM_PREFIX=/usr/lib/llvm-${LLVM_MAJOR} \
    cargo +"$USER_TOOLCHAIN" install --locked bpf-linker --version "$BPF_LINKER_VERSION" \
      --no-default-features --features llvm-${LLVM_MAJOR}
fi

# cargo-fuzz for the parser fuzz targets (run with the eBPF nightly).
if ! cargo-fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo +"$USER_TOOLCHAIN" install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# No bpffs mount here: netfault mounts it when it needs one and unmounts it again when it
# leaves nothing pinned (netfault/src/dataplane/bpffs.rs); a mount made here would stay.
# OpenSSH, for the SSH transport's tests: they run their own sshd (`sshd -D -e -f CONFIG`, in
# lab namespaces, keys made with ssh-keygen). No system sshd may start: when this script
# installs the server, /etc/ssh/sshd_not_to_be_run (honoured by Debian's service unit and init
# script, now and at every boot) and a policy-rc.d that refuses every start (for the install
# itself) keep it down. A server that was already installed (the one an operator logs in by)
# is left alone.
if ! dpkg-query -W -f='${Status}' openssh-server 2>/dev/null | grep -q 'install ok installed' \
   || ! dpkg-query -W -f='${Status}' openssh-client 2>/dev/null | grep -q 'install ok installed'; then
  if ! dpkg-query -W -f='${Status}' openssh-server 2>/dev/null | grep -q 'install ok installed'; then
    as_root mkdir -p /etc/ssh
    as_root touch /etc/ssh/sshd_not_to_be_run
  fi
  policy_ours=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# netfault setup.sh: no service starts while it installs packages\nexit 101\n' \
      | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    policy_ours=1
  fi
  log "installing Debian packages: openssh-server openssh-client (the system sshd stays off)"
  ssh_rc=0
  { as_root apt-get update -qq \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           openssh-server openssh-client >/dev/null; } || ssh_rc=$?
  [ "$policy_ours" = 1 ] && as_root rm -f /usr/sbin/policy-rc.d
  [ "$ssh_rc" = 0 ] || { log "installing openssh failed"; exit "$ssh_rc"; }
  # Had a service manager started it anyway: stop what this install started.
  if [ -e /etc/ssh/sshd_not_to_be_run ] && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
fi
if [ -e /etc/ssh/sshd_not_to_be_run ] && command -v ss >/dev/null 2>&1 \
   && ss -Hltnp 2>/dev/null | grep -q '"sshd"'; then
  log "an sshd is listening although /etc/ssh/sshd_not_to_be_run exists: stop it"
  exit 1
fi

# Daemons the tests start on their own, never as system services: etcd (tests/etcd_pause.rs:
# members in lab namespaces, data directories of their own) and dockerd with its containerd
# (tests/container.rs: private data root, socket and pid file under a temp dir, no bridge, no
# iptables). Debian's packages enable and start a system daemon on install: as for sshd, a
# policy-rc.d that refuses every start keeps it down during the install, and afterwards the
# services are disabled (systemd) or taken out of the boot (sysv).
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
install_without_services() {   # "SERVICE..." PACKAGE...
  local services=$1; shift
  local want=() p
  for p in "$@"; do installed "$p" || want+=("$p"); done
  [ "${#want[@]}" -gt 0 ] || return 0
  local policy_ours=0 rc=0 s
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# netfault setup.sh: no service starts while it installs packages\nexit 101\n' \
      | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    policy_ours=1
  fi
  log "installing Debian packages: ${want[*]} (no system $services starts)"
  { as_root apt-get update -qq \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           "${want[@]}" >/dev/null; } || rc=$?
  [ "$policy_ours" = 1 ] && as_root rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || { log "installing ${want[*]} failed"; exit "$rc"; }
  for s in $services; do
    if [ -d /run/systemd/system ]; then
      as_root systemctl disable --now "$s" >/dev/null 2>&1 || true
    elif [ -e "/etc/init.d/${s%.service}" ]; then
      as_root update-rc.d "${s%.service}" disable >/dev/null 2>&1 || true
    fi
  done
}
install_without_services "etcd.service" etcd-server etcd-client
install_without_services "docker.service docker.socket containerd.service" docker.io
# A system etcd would not disturb the tests (they listen on lab addresses in namespaces of
# their own), so one found running (an operator's) is only reported.
if command -v ss >/dev/null 2>&1 && ss -Hltnp 2>/dev/null | grep -q '"etcd"'; then
  log "note: an etcd is listening on this host (not started by this script)"
fi

log "ok"
