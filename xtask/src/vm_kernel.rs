//! Stock Debian kernels for the test VM: pinned packages, fetched once with apt and cached
//! under `target/vm-cache/<release>/`.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

/// One pinned kernel package. Pinned to the exact version so that a test result names the kernel
/// it ran on; bookworm-security drops old builds, and then `fetch` says how to move the pin.
pub struct KernelPin {
    /// What `--kernel` accepts.
    pub series: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// `uname -r` of the kernel, also its /lib/modules directory.
    pub release: &'static str,
}

/// 6.1 is bookworm's own kernel (no tcx: netfault attaches through clsact there); 6.12 is the
/// backport in bookworm-security (tcx, .ko.xz modules).
pub const KERNELS: &[KernelPin] = &[
    KernelPin {
        series: "6.1",
        package: "linux-image-6.1.0-56-amd64",
        version: "6.1.192-2",
        release: "6.1.0-56-amd64",
    },
    KernelPin {
        series: "6.12",
        package: "linux-image-6.12.117+deb12-amd64",
        version: "6.12.117-1~deb12u1",
        release: "6.12.117+deb12-amd64",
    },
];

pub fn pin(name: &str) -> anyhow::Result<&'static KernelPin> {
    KERNELS
        .iter()
        .find(|k| k.series == name || k.release == name)
        .with_context(|| {
            let known: Vec<_> = KERNELS.iter().map(|k| k.series).collect();
            format!("unknown kernel '{name}': pick one of {}", known.join(", "))
        })
}

/// A kernel ready to boot: the image for QEMU's -kernel and its extracted module tree.
pub struct Kernel {
    pub pin: &'static KernelPin,
    pub image: PathBuf,
    pub modules: PathBuf,
}

/// Returns the cached kernel, downloading and extracting it the first time.
pub fn fetch(pin: &'static KernelPin, cache: &Path) -> anyhow::Result<Kernel> {
    let dir = cache.join(pin.release);
    let root = dir.join("root");
    let stamp = dir.join("stamp");
    // The stamp is written last, so a half-done extraction is never taken for a cache hit.
    if fs::read_to_string(&stamp).ok().as_deref() != Some(pin.version) {
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        fs::remove_file(dir.join("vmlinux")).ok(); // derived from the old build, if any
        let deb = download(pin, &dir)?;
        extract(&deb, &root)?;
        fs::remove_file(&deb).ok(); // 70-110 MB that the extracted tree makes redundant
        fs::write(&stamp, pin.version)?;
    }
    let vmlinuz = root.join(format!("boot/vmlinuz-{}", pin.release));
    let image = match uncompressed_image(pin, &root, &vmlinuz, &dir) {
        Ok(p) => p,
        Err(e) => {
            // Only slower: the bzImage decompresses itself, which costs seconds under TCG.
            eprintln!("xtask vm: booting the compressed kernel ({e:#})");
            vmlinuz
        }
    };
    Ok(Kernel {
        pin,
        image,
        modules: root.join("lib/modules").join(pin.release),
    })
}

fn download(pin: &KernelPin, dir: &Path) -> anyhow::Result<PathBuf> {
    let spec = format!("{}={}", pin.package, pin.version);
    let try_download = || {
        eprintln!("xtask vm: apt-get download {spec}");
        Command::new("apt-get")
            // apt drops to the _apt user for downloads, which cannot write under target/.
            .args(["-q", "-o", "APT::Sandbox::User=root", "download", &spec])
            .current_dir(dir)
            .status()
            .context("run apt-get (Debian's apt is needed to fetch the VM kernels)")
    };
    let mut ok = try_download()?.success();
    if !ok && crate::unsafe_geteuid() == 0 {
        // Stale or missing package lists are the usual cause on a fresh machine.
        eprintln!("xtask vm: refreshing apt's package lists and trying again");
        let _ = Command::new("apt-get").args(["-qq", "update"]).status();
        ok = try_download()?.success();
    }
    if !ok {
        bail!(
            "cannot download the pinned kernel {spec}: it is no longer served by the apt sources \
             (bookworm-security keeps only recent builds), or apt has no lists (run \
             `apt-get update`). To move the pin, find the current build with \
             `apt-cache search linux-image-{}` and `apt-cache policy <package>`, then update \
             KERNELS in xtask/src/vm_kernel.rs (package, version and release) and docs/VM.md",
            pin.series
        );
    }
    let name = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|x| x == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(pin.package))
        })
        .context("apt-get download succeeded but left no .deb")?;
    Ok(name)
}

/// `dpkg-deb -x` into a fresh directory that is renamed into place only when complete.
fn extract(deb: &Path, root: &Path) -> anyhow::Result<()> {
    let tmp = root.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    eprintln!("xtask vm: extracting {}", deb.display());
    crate::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    let _ = fs::remove_dir_all(root);
    fs::rename(&tmp, root).with_context(|| format!("rename to {}", root.display()))
}

/// The ELF vmlinux inside the bzImage, cached beside it. QEMU boots it directly through the PVH
/// entry point, which skips the in-guest decompression (about 2 s of TCG time per boot).
fn uncompressed_image(
    pin: &KernelPin,
    root: &Path,
    vmlinuz: &Path,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let out = dir.join("vmlinux");
    if out.exists() {
        return Ok(out);
    }
    let config = fs::read_to_string(root.join(format!("boot/config-{}", pin.release)))?;
    ensure!(
        config.lines().any(|l| l == "CONFIG_PVH=y"),
        "kernel has no PVH entry point"
    );
    let bz = fs::read(vmlinuz).with_context(|| format!("read {}", vmlinuz.display()))?;
    let payload = bzimage_payload(&bz)?;
    let tool: &[&str] = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => &["xz", "-dc", "--single-stream"],
        [0x28, 0xb5, 0x2f, 0xfd, ..] => &["zstd", "-dcq"],
        [0x1f, 0x8b, ..] => &["gzip", "-dc"],
        _ => bail!("unknown compression in the bzImage payload"),
    };
    let packed = dir.join("vmlinux.packed");
    let tmp = dir.join(format!("vmlinux.tmp{}", std::process::id()));
    fs::write(&packed, payload)?;
    let status = Command::new(tool[0])
        .args(&tool[1..])
        .arg(&packed)
        .stdout(fs::File::create(&tmp)?)
        .status()
        .with_context(|| format!("run {} (install it: scripts/setup.sh)", tool[0]));
    fs::remove_file(&packed).ok();
    ensure!(
        status?.success(),
        "{} failed on the kernel payload",
        tool[0]
    );
    let head = fs::read(&tmp).map(|b| b.get(..4) == Some(b"\x7fELF"))?;
    ensure!(head, "decompressed payload is not an ELF image");
    fs::rename(&tmp, &out)?;
    Ok(out)
}

/// The compressed kernel in a bzImage, per the x86 boot protocol (2.08+): `payload_offset` and
/// `payload_length` in the setup header, relative to the protected-mode code after the setup
/// sectors. The last 4 bytes are the uncompressed size the kernel's build appends, which the
/// decompressors would take for trailing garbage.
fn bzimage_payload(bz: &[u8]) -> anyhow::Result<&[u8]> {
    let u32_at = |o: usize| -> anyhow::Result<usize> {
        let b: [u8; 4] = bz
            .get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .context("bzImage too short")?;
        Ok(u32::from_le_bytes(b) as usize)
    };
    ensure!(bz.get(0x202..0x206) == Some(b"HdrS"), "not a bzImage");
    let setup_sects = match bz[0x1f1] {
        0 => 4, // the boot protocol's historical default
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let len = u32_at(0x24c)?;
    ensure!(len > 4, "bzImage has no payload");
    bz.get(start..start + len - 4)
        .context("bzImage payload out of bounds")
}

/// The modules to load, dependencies first, each as (name, decompressed .ko bytes).
pub fn modules_with_deps(
    modules_dir: &Path,
    wanted: &[&str],
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let paths = module_paths(modules_dir)?;
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for w in wanted {
        visit(&paths, &norm(w), &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

/// Module names use '-' and '_' interchangeably; the kernel compares them as '_'.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Depth-first: a module's dependencies go into `order` before it.
fn visit(
    paths: &BTreeMap<String, PathBuf>,
    name: &str,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, Vec<u8>)>,
    depth: usize,
) -> anyhow::Result<()> {
    ensure!(depth < 32, "module dependency loop at {name}");
    if !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let path = paths.get(name).with_context(|| {
        format!("module {name} is not in this kernel (built in, or not built at all?)")
    })?;
    let ko = read_module(path)?;
    for dep in modinfo(&ko, "depends") {
        for d in dep.split(',').filter(|d| !d.is_empty()) {
            visit(paths, &norm(d), seen, order, depth + 1)?;
        }
    }
    for soft in modinfo(&ko, "softdep") {
        for d in softdep_pre(&soft) {
            // Softdeps name what the module asks the kernel for at load time, often a crypto
            // algorithm ("crc32c") that a *_generic module provides. Without modules.alias here,
            // try those two names; anything else is built in or optional.
            let found = [norm(d), format!("{}_generic", norm(d))]
                .into_iter()
                .find(|n| paths.contains_key(n));
            if let Some(n) = found {
                visit(paths, &n, seen, order, depth + 1)?;
            }
        }
    }
    order.push((name.to_owned(), ko));
    Ok(())
}

/// The "pre:" part of a softdep value such as "pre: crc32c post: foo".
fn softdep_pre(value: &str) -> Vec<&str> {
    let mut pre = false;
    let mut out = Vec::new();
    for tok in value.split_whitespace() {
        match tok {
            "pre:" => pre = true,
            "post:" => pre = false,
            m if pre => out.push(m),
            _ => {}
        }
    }
    out
}

/// name -> file, from modules.order (the package ships no modules.dep: depmod makes it at install
/// time, and kmod may not be on the host). 6.12's files carry .xz on top of the listed name.
fn module_paths(modules_dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let order = fs::read_to_string(modules_dir.join("modules.order"))
        .with_context(|| format!("read modules.order in {}", modules_dir.display()))?;
    let mut map = BTreeMap::new();
    for rel in order.lines().filter(|l| !l.is_empty()) {
        let plain = modules_dir.join(rel);
        let file = [
            plain.clone(),
            PathBuf::from(format!("{}.xz", plain.display())),
        ]
        .into_iter()
        .find(|p| p.exists());
        let stem = Path::new(rel)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"));
        if let (Some(file), Some(stem)) = (file, stem) {
            map.insert(norm(stem), file);
        }
    }
    Ok(map)
}

/// Plain .ko bytes, decompressing .ko.xz on the host: then the guest needs no xz support in
/// insmod (busybox's may lack it) nor in the kernel.
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .stderr(Stdio::inherit())
            .output()
            .context("run xz (install xz-utils)")?;
        ensure!(out.status.success(), "xz -dc {} failed", path.display());
        Ok(out.stdout)
    } else {
        fs::read(path).with_context(|| format!("read {}", path.display()))
    }
}

/// Values of `key=` in the module's .modinfo strings. Scanning the NUL-separated strings of the
/// whole file is enough: `depends=` appears nowhere else in a module.
fn modinfo(ko: &[u8], key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    ko.split(|&b| b == 0)
        .filter_map(|s| s.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_reads_nul_separated_fields() {
        let ko = b"\x7fELF\0junk\0license=GPL\0depends=a,b-c\0vermagic=6.1\0";
        assert_eq!(modinfo(ko, "depends"), vec!["a,b-c".to_owned()]);
        assert!(modinfo(ko, "alias").is_empty());
    }

    #[test]
    fn softdep_pre_lists_only_pre_modules() {
        assert_eq!(softdep_pre("pre: crc32c"), vec!["crc32c"]);
        assert_eq!(softdep_pre("pre: a b post: c"), vec!["a", "b"]);
        assert!(softdep_pre("post: c").is_empty());
    }

    #[test]
    fn pins_resolve_by_series_and_release() {
        assert_eq!(pin("6.1").unwrap().release, "6.1.0-56-amd64");
        assert_eq!(pin("6.12.117+deb12-amd64").unwrap().series, "6.12");
        assert!(pin("5.10").is_err());
    }
}
