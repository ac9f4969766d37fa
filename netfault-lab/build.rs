//! Builds the reference XDP programs (netfault-lab-ebpf) with the pinned nightly.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// LLVM 22; later nightlies use LLVM 23, which bpf-linker 0.13 cannot read.
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "netfault-lab-ebpf")
        .ok_or_else(|| anyhow!("netfault-lab-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("netfault-lab-ebpf has no manifest dir"))?
        .as_str()
        .to_owned();
    // The shared types change the object too.
    println!("cargo::rerun-if-changed=ebpf/src");
    aya_build::build_ebpf(
        [Package {
            name: "netfault-lab-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
