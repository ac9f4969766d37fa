//! Reference XDP and tc programs for benchmarks: the cost floor netfault is compared against, and a
//! traffic source for BPF_PROG_RUN live-frames mode; and a slow program for grace-period tests.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_loop,
    macros::{classifier, map, xdp},
    maps::Array,
    programs::{TcContext, XdpContext},
};

/// `lab_spin`'s runs: [0] how many started, [1] how many finished.
#[map]
static SPIN_RUNS: Array<u64> = Array::with_max_entries(2, 0);

/// bpf_loop's most iterations (BPF_MAX_LOOPS): one run of `lab_spin` takes milliseconds.
const SPIN_LOOPS: u32 = 1 << 23;

/// Passes everything: the floor for ns/packet.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Passes everything at tc (TC_ACT_OK): the floor for netfault's tc programs.
#[classifier]
fn bench_tc_pass(_ctx: TcContext) -> i32 {
    0
}

/// Drops everything: the trivial XDP drop netfault's drop-all is compared with.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Transmits every frame: in live-frames mode on a veth, this pushes test frames to the peer.
#[xdp]
pub fn bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Counts its start, spins for milliseconds, counts its end: a BPF program that is observably
/// running, for tests of grace periods (one runner at a time: the counts are plain stores).
#[xdp]
pub fn lab_spin(_ctx: XdpContext) -> u32 {
    bump(0);
    // SAFETY: a helper call with a static callback and no context.
    unsafe {
        bpf_loop(
            SPIN_LOOPS,
            spin_step as *mut aya_ebpf::cty::c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    bump(1);
    xdp_action::XDP_PASS
}

extern "C" fn spin_step(_index: u64, _ctx: *mut aya_ebpf::cty::c_void) -> i64 {
    0
}

fn bump(i: u32) {
    if let Some(p) = SPIN_RUNS.get_ptr_mut(i) {
        // SAFETY: a pointer into the map's value, valid for the program's run.
        unsafe { core::ptr::write_volatile(p, core::ptr::read_volatile(p) + 1) };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
