//! netfault's test bench, kept out of the product: namespace labs joined by veth pairs or a
//! bridge (`lab`), traffic probes with kernel timestamps (`probe`), a reachability watch that
//! times cuts and heals on the wire (`watch`), agents and sshds in namespaces (`agents`,
//! `sshd`), burst-loss runs and their histogram (`burst`), statistics (Wilson intervals in
//! `lab`, Kolmogorov-Smirnov in `ks`, percentiles in `probe`) and the reference XDP programs
//! the benchmarks compare against. Tests, the demo and the bench depend on it; netfault
//! depends on none of it.
pub mod agents;
pub mod burst;
pub mod cluster;
pub mod ks;
pub mod lab;
pub mod loss;
pub mod probe;
pub mod sshd;
pub mod watch;

/// Reference programs (pass, drop, tx) for benchmarks and tests, and `lab_spin`, a program that
/// runs for milliseconds (its map `SPIN_RUNS` counts runs started and finished) for tests of
/// grace periods; never attached by netfault.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netfault-lab-bench"));
