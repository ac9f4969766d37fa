//! Builds one eBPF package of the workspace with the pinned nightly through aya-build; shared by
//! netfault's build script (the data path) and netfault-lab's (the reference programs).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// LLVM 22; later nightlies use LLVM 23, which bpf-linker 0.13 cannot read.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

pub fn build(package: &str) -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == package)
        .ok_or_else(|| anyhow!("{package} package not found"))?;
    let root_dir = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{package} has no manifest dir"))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [Package {
            name: package,
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
