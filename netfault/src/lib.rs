//! netfault: network faults injected at line rate by an eBPF data path.
//!
//! The flow, lower layers first (none imports a higher one):
//! - [`spec`]: what the user asked for, validated (rules, rule-set files, distributions,
//!   protections). Pure.
//! - [`compile`]: a rule set turned into the data path's tuple space. Pure.
//! - [`netlink`]: the kernel's networking configuration (qdiscs, IFB devices, filters, links,
//!   ethtool), over netlink.
//! - [`dataplane`]: BPF objects: load, maps, attach, generation flip.
//! - [`control`]: the controller: state, locking, namespaces, the publish pipeline shared by
//!   pinned (CLI) and held (`run`) modes, queue planning.
//! - [`observe`]: counters and lifetimes as users read them.
//! - [`measure`]: round-trip-time samples, their summary and histogram, and the timeouts and
//!   phi accrual thresholds they advise. Pure.
//! - [`pause`]: processes and cgroups stopped for a while, resumed by a watchdog on their
//!   deadline (beside the network: no namespace, no BPF).
//! - [`targets`]: how a namespace is named (`--netns`, `--pid`, `--container` through a
//!   container engine's API socket) turned into the namespace entered, and a container into
//!   the cgroup a pause freezes.
//! - [`cluster`]: lab clusters: cluster files, topologies, plans, the coordinator and its
//!   transports.
//! - [`agent`]: `netfault agent`, the HTTP server a coordinator's agent transport talks to.
//!
//! Beside the flow, used by any layer: [`ending`], the signals that end a long wait early.
pub mod agent;
pub mod cluster;
pub mod compile;
pub mod control;
pub mod dataplane;
pub mod ending;
pub mod measure;
pub mod netlink;
pub mod observe;
pub mod pause;
pub mod spec;
pub mod targets;
