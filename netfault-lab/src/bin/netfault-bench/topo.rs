//! The test hosts: two network namespaces joined by a veth pair, and a bpffs directory for pins.
//! Both are guards: dropping them (also on error or panic) removes everything they made.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// Every namespace and interface name starts with this, followed by our pid and a dash.
const PREFIX: &str = "nfb-";
/// Pin directories are this followed by our pid.
const PIN_PREFIX: &str = "/sys/fs/bpf/netfault-bench-";

/// Fixed, locally administered MACs, so crafted frames can carry the receiver's real address.
pub const TX_MAC: [u8; 6] = [0x02, 0x6e, 0x66, 0x62, 0x00, 0x01];
pub const RX_MAC: [u8; 6] = [0x02, 0x6e, 0x66, 0x62, 0x00, 0x02];

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("run {prog}"))?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run("ip", args)
}

pub struct Topology {
    pub tx_ns: String,
    pub rx_ns: String,
    pub tx_if: String,
    pub rx_if: String,
}

impl Topology {
    /// Sender namespace with `tx_if`, receiver namespace with `rx_if`, the two ends of one veth.
    pub fn create() -> Result<Self> {
        let pid = std::process::id();
        // The guard exists before the first command, so a failure halfway still cleans up.
        let t = Topology {
            tx_ns: format!("{PREFIX}{pid}-tx"),
            rx_ns: format!("{PREFIX}{pid}-rx"),
            tx_if: format!("{PREFIX}{pid}-t"),
            rx_if: format!("{PREFIX}{pid}-r"),
        };
        ip(&["netns", "add", &t.tx_ns])?;
        ip(&["netns", "add", &t.rx_ns])?;
        // Created directly inside the namespaces: nothing ever appears in the host's.
        let (tx_mac, rx_mac) = (mac_str(&TX_MAC), mac_str(&RX_MAC));
        ip(&[
            "link", "add", &t.tx_if, "netns", &t.tx_ns, "address", &tx_mac, "type", "veth", "peer",
            "name", &t.rx_if, "netns", &t.rx_ns, "address", &rx_mac,
        ])?;
        // No IPv6 link-local address, hence no neighbour discovery: the only frames on the link
        // are ours, and the receiver's rx count is exactly what the generator delivered.
        for (ns, ifname) in [(&t.tx_ns, &t.tx_if), (&t.rx_ns, &t.rx_if)] {
            ip(&["-n", ns, "link", "set", ifname, "addrgenmode", "none"])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(t)
    }

    /// Interface index of `ifname` inside `ns`.
    pub fn ifindex(ns: &str, ifname: &str) -> Result<u32> {
        let v = link_json(ns, ifname)?;
        v["ifindex"]
            .as_u64()
            .map(|i| i as u32)
            .with_context(|| format!("no ifindex for {ifname} in {ns}"))
    }

    /// rx packet count of the receiving veth. The kernel counts every frame the veth's NAPI
    /// poll takes off its ring, whatever the verdict (XDP_DROP, nft drop): frames the sender
    /// could not fit into the ring are not in it.
    pub fn rx_packets(&self) -> Result<u64> {
        let v = link_json(&self.rx_ns, &self.rx_if)?;
        v["stats64"]["rx"]["packets"]
            .as_u64()
            .context("no rx packet count in `ip -s -j link` output")
    }
}

/// `Ip: InReceives` of the calling thread's namespace: packets that reached the IP layer.
pub fn ip_in_receives() -> Result<u64> {
    // thread-self: /proc/self/net would show the namespace of the main thread.
    let snmp =
        std::fs::read_to_string("/proc/thread-self/net/snmp").context("read /proc/net/snmp")?;
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next(), ip.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Ip lines in /proc/net/snmp");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == "InReceives")
        .context("no Ip InReceives in /proc/net/snmp")?;
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .context("bad Ip InReceives value")
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth end, the peer, nft tables and XDP links with it.
        for ns in [&self.rx_ns, &self.tx_ns] {
            // The CLI keys its state by the namespace's identity: read it while it exists.
            let key = netfault::control::netns::key_of(ns).ok();
            if Path::new("/run/netns").join(ns).exists()
                && let Err(e) = ip(&["netns", "del", ns])
            {
                eprintln!("netfault-bench: cleanup: {e:#}");
            }
            // What the CLI keeps for that namespace (a run cut short before its detach).
            if let Some(key) = key {
                remove_cli_state(&key);
            }
        }
    }
}

/// The `netfault` CLI's pins and state kept under `key` (a namespace's, or an older
/// netfault's `netns-NAME`), and their roots once empty.
fn remove_cli_state(key: &str) {
    use netfault::control::state::{PIN_ROOT, RUN_ROOT};
    if key == "host" {
        return;
    }
    for root in [PIN_ROOT, RUN_ROOT] {
        let d = Path::new(root).join(key);
        if d.exists()
            && let Err(e) = std::fs::remove_dir_all(&d)
        {
            eprintln!("netfault-bench: cleanup: remove {}: {e}", d.display());
        }
        let _ = std::fs::remove_dir(root);
    }
}

/// `ip -n NS -s -j link show dev IF`, read in the namespace itself (/sys/class/net would show
/// the namespace /sys was mounted in, not the one we ask about).
fn link_json(ns: &str, ifname: &str) -> Result<serde_json::Value> {
    let out = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parse `ip -j link` output")?;
    v.get(0)
        .cloned()
        .with_context(|| format!("{ifname} not found in {ns}"))
}

/// A bpffs directory for this run's pins (maps, links), removed on drop.
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn create() -> Result<Self> {
        let p = PathBuf::from(format!("{PIN_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(Self(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Unpinning the links detaches whatever is still attached; unpinning maps frees them.
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("netfault-bench: cleanup: remove {}: {e}", self.0.display());
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a leftover name `<prefix><pid>[-...]`, if it has that shape.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits = rest.split('-').next()?;
    digits.parse().ok()
}

/// Removes namespaces and pin directories left by earlier runs that died without cleaning up
/// (SIGKILL, power loss). Runs whose process still exists are left alone. Returns what it removed.
pub fn sweep_leftovers() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_pid(&name, PREFIX).is_some_and(|p| !pid_alive(p)) {
                ip(&["netns", "del", &name])?;
                removed.push(format!("netns {name}"));
            }
        }
    }
    // The CLI's state of namespaces that are gone (those just deleted among them).
    removed.extend(netfault::control::others::sweep_gone(""));
    // The CLI's pins and state of namespaces such a run made.
    for root in [
        netfault::control::state::PIN_ROOT,
        netfault::control::state::RUN_ROOT,
    ] {
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(ns) = name.strip_prefix("netns-") else {
                continue;
            };
            if owner_pid(ns, PREFIX).is_some_and(|p| !pid_alive(p)) {
                remove_cli_state(&name);
                removed.push(e.path().display().to_string());
            }
        }
    }
    let (dir, stem) = PIN_PREFIX
        .rsplit_once('/')
        .context("PIN_PREFIX is an absolute path")?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_pid(&name, stem).is_some_and(|p| !pid_alive(p)) {
                std::fs::remove_dir_all(e.path())
                    .with_context(|| format!("remove {}", e.path().display()))?;
                removed.push(e.path().display().to_string());
            }
        }
    }
    Ok(removed)
}
