//! Builds the eBPF object (netfault-ebpf) with the pinned nightly, so `cargo build` of the
//! controller always embeds a data path built from the same tree.
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
        .find(|p| p.name.as_str() == "netfault-ebpf")
        .ok_or_else(|| anyhow!("netfault-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("netfault-ebpf has no manifest dir"))?
        .as_str()
        .to_owned();
    // The shared types change the object too.
    println!("cargo::rerun-if-changed=../netfault-common/src");
    aya_build::build_ebpf(
        [Package {
            name: "netfault-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
