//! The controller: one namespace's state and lock, and the pipeline that turns a rule set into
//! a published generation, for pinned (CLI) and held (`run`) modes alike.
pub mod clock;
pub mod ctl;
pub mod error;
pub mod features;
pub mod held;
pub mod hooks;
pub mod netns;
pub mod operator;
pub mod others;
pub mod pipeline;
pub mod privileges;
pub mod queues;
pub mod segment;
pub mod shaping;
pub mod state;

pub use clock::monotonic_ns;
pub use ctl::Ctl;
pub use error::{Error, Result};
pub use privileges::{check_privileges, check_read_privileges};
