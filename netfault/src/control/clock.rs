//! The clock lifetimes are kept on: the kernel's coarse monotonic clock, which the data path
//! reads too (`bpf_ktime_get_coarse_ns`).
//!
//! Why coarse: it is the time of the last tick, read from memory, where the precise clock reads
//! the clock source (rdtsc and a fence, or a VM exit) on every matched packet; measured on a
//! 2-vCPU AMD VM, 40 ns of the 200 a matching packet cost. A lifetime then ends within one
//! tick (`CONFIG_HZ`: 1 to 10 ms) of its precise instant, and never before it is reached on
//! this clock, and the controller's view (status, the reaper) reads the very same clock, so it
//! agrees with the data path exactly.

/// Now, on the lifetime clock (CLOCK_MONOTONIC_COARSE), in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
