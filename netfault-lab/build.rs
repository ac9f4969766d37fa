//! Builds the reference XDP programs (netfault-lab-ebpf) with the pinned nightly.
#[path = "../netfault/build_ebpf.rs"]
mod build_ebpf;

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-changed=ebpf/src");
    println!("cargo::rerun-if-changed=../netfault/build_ebpf.rs");
    build_ebpf::build("netfault-lab-ebpf")
}
