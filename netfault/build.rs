//! Builds the eBPF object (netfault-ebpf) with the pinned nightly, so `cargo build` of the
//! controller always embeds a data path built from the same tree.
mod build_ebpf;

fn main() -> anyhow::Result<()> {
    // The shared types change the object too.
    println!("cargo::rerun-if-changed=../netfault-common/src");
    println!("cargo::rerun-if-changed=build_ebpf.rs");
    build_ebpf::build("netfault-ebpf")
}
