//! Link options for the data path's object.
fn main() {
    // bpf-linker passes LLVM `--bpf-expand-memcpy-in-order` by default, which also sets the BPF
    // backend's inline-store limit for memset to zero: every zeroing LLVM merges into a memset
    // (a flow key's tag bytes, on every packet) became a BPF-to-BPF call to a byte loop, and a
    // call and return are what costs most on hosts with return-thunk mitigations. Without it,
    // small memsets and memcpys are plain stores.
    println!("cargo::rustc-link-arg=--disable-expand-memcpy-in-order");
}
