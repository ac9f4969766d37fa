//! Everything that touches BPF: loading the object, attaching and detaching programs, and
//! reading and writing the maps (with the generation flip and its grace period).
mod attach;
mod bpffs;
mod cgroup_link;
mod error;
pub mod flow_index;
mod grace;
mod load;
mod maps;
mod rtt;

pub use attach::*;
pub use bpffs::{Bpffs, ensure_bpffs};
pub use cgroup_link::*;
pub use error::{KernelError, Result};
pub(crate) use error::{ebpf_err, io_err};
pub use load::*;
pub use maps::*;
pub use rtt::*;
