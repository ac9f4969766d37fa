//! netfault: packet impairment at line rate with eBPF.
//!
//! The library holds everything but the command line: rule parsing and validation (`spec`),
//! compilation to the data path's tuple space (`compile`), BPF loading, attachment and map I/O
//! (`kernel`), namespace handling (`netns`), persistent state (`state`) and the operations that
//! tie them together (`ops`).
pub mod cli;
pub mod compile;
pub mod dist;
pub mod grace;
pub mod kernel;
pub mod ks;
pub mod lab;
pub mod netlink;
pub mod netns;
pub mod ops;
pub mod output;
pub mod probe;
pub mod qdisc;
pub mod ruleset;
pub mod run;
pub mod spec;
pub mod state;
