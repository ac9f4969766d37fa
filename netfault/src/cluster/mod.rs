//! Lab clusters (issue #10): Jepsen-style partitions and impairments over many hosts. This is
//! the pure layer, apart from anything that touches a host (as cilium/ebpf keeps a spec apart
//! from loading it): text in, validated plans out, so the coordinator can check a whole run
//! before the first node changes.
//!
//! - [`file`](mod@file): the cluster file (`[[node]]`: names, addresses, interfaces, one transport each).
//! - [`topology`]: `TOPOLOGY` strings (`halves`, `majorities-ring`, `n1,n2|n3`, ...) and the
//!   grudge each one gives: for every node, the nodes whose packets it drops.
//! - [`plan`]: a grudge or an impairment turned into each node's rules
//!   ([`RuleSpec`](crate::spec::RuleSpec)), and the protections that keep the coordinator's and
//!   transports' traffic flowing.
//! - [`coordinator`] and [`transport`]: the one part that touches hosts: plans applied on
//!   every node at once, all or nothing (netns transport only, so far).
//! - [`local`]: what a node does with a request, whichever transport brought it.
//! - [`pause`](mod@pause): nodes' processes paused at once (`pause_target`), all or nothing.
//! - [`scenario`]: the scenario file (`[[step]]`s at times, repeated) and its timeline.
//! - [`run`] and [`events`]: a scenario played under a lease, and its JSON-lines event log.
//! - [`record`] and [`verify`]: the coordinator's record of the faults it made live, and the
//!   faults checked on the wire against it.
//!
//! Errors are [`SpecError`](crate::spec::SpecError)s naming the key path (`node[2].agent`,
//! `step[1].every`), as rule-set files do: exit 2, nothing changed.
pub mod coordinator;
pub mod events;
pub mod file;
pub mod local;
pub mod pause;
pub mod plan;
pub mod record;
pub mod run;
pub mod scenario;
pub mod topology;
pub mod transport;
pub mod verify;

pub use file::{Cluster, Node, Transport};
pub use plan::{Impair, NodePlan, Traffic};
pub use scenario::{Action, Event, Scenario, Step, StepAction};
pub use topology::{Grudge, Topology};
