//! `GET /metrics`: the node's counters in the Prometheus (OpenMetrics) text format, read from
//! the maps at each scrape, so they equal `netfault stats` at that moment:
//!
//! - `netfault_rule_packets_total{rule, kind, action}`: `action` one of matched, dropped,
//!   duplicated, delayed, queue_dropped, passed (`matched = dropped + queue_dropped + passed`);
//! - `netfault_rule_bytes_total{rule, kind}`: bytes of the matched packets;
//! - `netfault_rule_expires_in_seconds{rule, kind}`: lifetime left (`+Inf`: no expiry);
//! - `netfault_lease_seconds`, `netfault_lease_entries`: the lease of the last rule set put
//!   with one (0 without);
//! - `netfault_generation`, `netfault_attached_interfaces`;
//! - `netfault_agent_requests_total{method, route, code}`: every answer since the agent
//!   started, refused ones included.
use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::Core;
use crate::{
    control::{
        monotonic_ns,
        state::{Paths, State},
    },
    observe,
};

type Labels = Vec<(String, String)>;

/// The requests counter, shared by the middleware that counts and the scrapes.
#[derive(Clone, Default)]
pub struct Requests(Family<Labels, Counter>);

impl Requests {
    pub fn count(&self, method: &str, route: &str, code: u16) {
        self.0
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("route".into(), route.into()),
                ("code".into(), code.to_string()),
            ])
            .inc();
    }
}

fn gauge(v: f64) -> Gauge<f64, AtomicU64> {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(v);
    g
}

/// One scrape.
pub fn render(
    paths: &Paths,
    state: &State,
    core: &Core,
    requests: &Requests,
) -> Result<String, String> {
    let mut reg = Registry::default();
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let left = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let now = monotonic_ns();
    let rows = if state.attached.is_empty() {
        Vec::new()
    } else {
        observe::stats(paths, state).map_err(|e| e.to_string())?
    };
    for r in &rows {
        let kind = serde_json::to_value(r.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let base = vec![("rule".to_string(), r.name.clone()), ("kind".into(), kind)];
        let c = &r.counters;
        for (action, v) in [
            ("matched", c.matched),
            ("dropped", c.dropped),
            ("duplicated", c.duplicated),
            ("delayed", c.delayed),
            ("queue_dropped", c.queue_dropped),
            ("passed", c.passed),
        ] {
            let mut l = base.clone();
            l.push(("action".into(), action.into()));
            packets.get_or_create(&l).inc_by(v);
        }
        bytes.get_or_create(&base).inc_by(c.bytes);
        let secs = match state.find(&r.name).map(|e| e.expires_mono_ns) {
            Some(0) | None => f64::INFINITY,
            Some(e) => e.saturating_sub(now) as f64 / 1e9,
        };
        left.get_or_create(&base).set(secs);
    }
    reg.register(
        "netfault_rule_packets",
        "Packets a rule matched, and what it did with them",
        packets,
    );
    reg.register(
        "netfault_rule_bytes",
        "Bytes of the packets a rule matched",
        bytes,
    );
    reg.register(
        "netfault_rule_expires_in_seconds",
        "Lifetime left of a rule, partition or protection (+Inf: no expiry)",
        left,
    );
    let lease = core.lease.as_ref();
    reg.register(
        "netfault_lease_seconds",
        "Lease of the rule set last put with one (0: none)",
        gauge(lease.map_or(0.0, |l| l.ttl.as_secs_f64())),
    );
    reg.register(
        "netfault_lease_entries",
        "Entries under the lease",
        gauge(lease.map_or(0.0, |l| l.names.len() as f64)),
    );
    reg.register(
        "netfault_generation",
        "Generation of the node's rule set",
        gauge(core.generation as f64),
    );
    reg.register(
        "netfault_attached_interfaces",
        "Interfaces netfault is attached to",
        gauge(state.attached.len() as f64),
    );
    reg.register(
        "netfault_agent_requests",
        "Requests the agent answered, by method, route and status code",
        requests.0.clone(),
    );
    let mut out = String::new();
    encode(&mut out, &reg).map_err(|e| e.to_string())?;
    Ok(out)
}
