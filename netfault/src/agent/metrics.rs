//! `GET /metrics`: the node's counters in the Prometheus (OpenMetrics) text format, read from
//! the maps at each scrape, so they equal `netfault stats` at that moment:
//!
//! - `netfault_rule_packets_total{rule, kind, action}`: `action` one of matched, dropped,
//!   duplicated, delayed, queue_dropped, rejected, reject_limited, corrupted, held, dup_delayed,
//!   passed (`matched = dropped + queue_dropped + passed`; rejected and reject_limited are parts
//!   of dropped, corrupted of passed, held of delayed, dup_delayed of duplicated);
//! - `netfault_rule_bytes_total{rule, kind}`: bytes of the matched packets;
//! - `netfault_rule_bursts_total{rule, kind}`: runs of lost packets a burst-loss chain began;
//! - `netfault_rule_expires_in_seconds{rule, kind}`: lifetime left (`+Inf`: no expiry);
//! - `netfault_lease_seconds`, `netfault_lease_entries`: the lease of the last rule set put
//!   with one (0 without);
//! - `netfault_generation`, `netfault_attached_interfaces`;
//! - `netfault_agent_requests_total{method, route, code}`: the authenticated requests since the
//!   agent started; `method` one of GET, PUT, POST, DELETE or `other`, `route` a route template
//!   of the router (`/v1/rules/{name}`) or `other`: a fixed set, whatever a client sends;
//! - `netfault_rtt_seconds{peer, source}`: a histogram of the round-trip times of the last
//!   measurement the agent made (`POST /v1/measure`), one per peer: `le` bounds 2^k µs for k
//!   from 4 to 26 (16 µs to 67.1 s) and `+Inf`, each counting the samples below it, summed from
//!   the report's log-linear buckets (exact: powers of two are bucket bounds; values past 60 s
//!   are clamped into the last, under 67.1 s); `_count` is the
//!   report's `samples` and `_sum` their total (mean x samples). Absent before the first
//!   measurement; a measurement that fails leaves the last one;
//! - `netfault_agent_refused_total{reason}`: what was refused before authentication, `reason`
//!   one of [`Reason`]'s names. A stranger sees 401 and nothing else, and leaves no trace but
//!   these counters (and one `refused` event per [`REFUSED_EVERY`](super::REFUSED_EVERY)).
use std::{
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet, text::encode},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::Core;
use crate::{
    control::{
        monotonic_ns,
        state::{Paths, State},
    },
    measure::Report,
    observe,
};

type Labels = Vec<(String, String)>;

/// Methods counted by name; any other is `other`.
const METHODS: [&str; 4] = ["GET", "PUT", "POST", "DELETE"];

/// The requests counter, shared by the middleware that counts and the scrapes.
#[derive(Clone, Default)]
pub struct Requests(Family<Labels, Counter>);

impl Requests {
    /// Counts an authenticated request: `route` is the template the router matched (`None`:
    /// none matched). Labels come from fixed sets, so no client grows the scrape.
    pub fn count(&self, method: &str, route: Option<&str>, code: u16) {
        let method = METHODS
            .into_iter()
            .find(|m| *m == method)
            .unwrap_or("other");
        let route = route
            .and_then(|r| super::routes::routes().map(|(_, p)| p).find(|p| *p == r))
            .unwrap_or("other");
        self.0
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("route".into(), route.into()),
                ("code".into(), code.to_string()),
            ])
            .inc();
    }
}

/// Why something was refused before a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A request without `Authorization: Bearer`.
    NoToken,
    /// A request with another token (or scheme).
    WrongToken,
    /// A connection past [`MAX_PER_PEER`](super::MAX_PER_PEER) from one address: closed at once.
    PeerLimit,
    /// A connection whose first request head (or TLS handshake) did not arrive within
    /// [`HEAD_TIMEOUT`](super::HEAD_TIMEOUT).
    HeadTimeout,
    /// A TLS handshake that failed.
    Tls,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::NoToken,
        Reason::WrongToken,
        Reason::PeerLimit,
        Reason::HeadTimeout,
        Reason::Tls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::NoToken => "no_token",
            Reason::WrongToken => "wrong_token",
            Reason::PeerLimit => "peer_limit",
            Reason::HeadTimeout => "head_timeout",
            Reason::Tls => "tls",
        }
    }
}

/// What was refused, by reason, and the address of the last peer refused (for the aggregated
/// `refused` event).
#[derive(Clone)]
pub struct Refused {
    family: Family<Labels, Counter>,
    last_peer: Arc<Mutex<Option<IpAddr>>>,
}

impl Default for Refused {
    fn default() -> Self {
        let family = Family::<Labels, Counter>::default();
        // Every reason from the start, at 0: a scrape shows the whole fixed set.
        for r in Reason::ALL {
            family.get_or_create(&Self::labels(r)).inc_by(0);
        }
        Self {
            family,
            last_peer: Arc::new(Mutex::new(None)),
        }
    }
}

impl Refused {
    fn labels(r: Reason) -> Labels {
        vec![("reason".into(), r.name().into())]
    }

    pub fn count(&self, reason: Reason, peer: Option<IpAddr>) {
        self.family.get_or_create(&Self::labels(reason)).inc();
        if peer.is_some() {
            *self
                .last_peer
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = peer;
        }
    }

    /// Each reason's count so far, in [`Reason::ALL`]'s order.
    pub fn totals(&self) -> [u64; Reason::ALL.len()] {
        Reason::ALL.map(|r| self.family.get_or_create(&Self::labels(r)).get())
    }

    pub fn last_peer(&self) -> Option<IpAddr> {
        *self
            .last_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The reports of the last measurement (`POST /v1/measure`), for `netfault_rtt_seconds`.
#[derive(Clone, Default)]
pub struct Measured(Arc<Mutex<Vec<Report>>>);

impl Measured {
    pub fn set(&self, reports: Vec<Report>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = reports;
    }

    fn get(&self) -> Vec<Report> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The `le` bounds of `netfault_rtt_seconds`, in µs: 2^4 to 2^26 (16 µs to 67.1 s), bounds of
/// the log-linear buckets (`netfault_common::rtt_bucket`).
pub const RTT_LE_US: [u64; 23] = {
    let mut b = [0u64; 23];
    let mut i = 0;
    while i < b.len() {
        b[i] = 1 << (i + 4);
        i += 1;
    }
    b
};

/// The counts of a report's `[[upper_us, count], ...]` per bound of [`RTT_LE_US`] (seconds),
/// then `+Inf`: not cumulative (the encoder sums them). A log-linear bucket counts under the
/// first bound at or above its upper end: every value in it lies below that bound.
pub fn rtt_buckets(histogram: &[(u64, u64)]) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = RTT_LE_US
        .iter()
        .map(|us| (*us as f64 / 1e6, 0))
        .chain([(f64::INFINITY, 0)])
        .collect();
    for (upper, n) in histogram {
        let i = RTT_LE_US
            .iter()
            .position(|le| upper <= le)
            .unwrap_or(RTT_LE_US.len());
        out[i].1 += n;
    }
    out
}

/// One peer's histogram: its labels, the sum (s), the count and the buckets of
/// [`rtt_buckets`].
#[derive(Debug)]
struct RttHistogram {
    labels: Labels,
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

/// One histogram per peer of the last measurement.
#[derive(Debug)]
struct RttHistograms(Vec<RttHistogram>);

impl RttHistograms {
    fn of(reports: &[Report]) -> RttHistograms {
        RttHistograms(
            reports
                .iter()
                .map(|r| RttHistogram {
                    labels: vec![
                        ("peer".to_string(), r.peer.clone().unwrap_or_default()),
                        ("source".to_string(), r.source.clone()),
                    ],
                    sum: r
                        .rtt_us
                        .as_ref()
                        .map_or(0.0, |s| s.mean * r.samples as f64 / 1e6),
                    count: r.samples as u64,
                    buckets: rtt_buckets(&r.histogram),
                })
                .collect(),
        )
    }
}

impl EncodeMetric for RttHistograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for h in &self.0 {
            encoder
                .encode_family(&h.labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
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
    refused: &Refused,
    measured: &Measured,
) -> Result<String, String> {
    let mut reg = Registry::default();
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let bursts = Family::<Labels, Counter>::default();
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
            ("rejected", c.rejected),
            ("reject_limited", c.reject_limited),
            ("corrupted", c.corrupted),
            ("held", c.held),
            ("dup_delayed", c.dup_delayed),
            ("passed", c.passed),
        ] {
            let mut l = base.clone();
            l.push(("action".into(), action.into()));
            packets.get_or_create(&l).inc_by(v);
        }
        bytes.get_or_create(&base).inc_by(c.bytes);
        bursts.get_or_create(&base).inc_by(c.bursts);
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
        "netfault_rule_bursts",
        "Runs of lost packets a rule's burst-loss chain began (their packets are dropped ones)",
        bursts,
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
        "Authenticated requests the agent answered, by method, route and status code",
        requests.0.clone(),
    );
    reg.register(
        "netfault_agent_refused",
        "Requests and connections refused before authentication, by reason",
        refused.family.clone(),
    );
    reg.register_with_unit(
        "netfault_rtt",
        "Round-trip times of the last measurement (POST /v1/measure), per peer",
        Unit::Seconds,
        RttHistograms::of(&measured.get()),
    );
    let mut out = String::new();
    encode(&mut out, &reg).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_labels_come_from_fixed_sets() {
        let r = Requests::default();
        r.count("GET", Some("/v1/rules/{name}"), 200);
        r.count("ZZ0123", Some("/v1/status"), 404);
        r.count("PUT", Some("/zz/nothing"), 405);
        r.count("POST", None, 404);
        let mut reg = Registry::default();
        reg.register("r", "r", r.0.clone());
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        for line in [
            r#"r_total{method="GET",route="/v1/rules/{name}",code="200"} 1"#,
            r#"r_total{method="other",route="/v1/status",code="404"} 1"#,
            r#"r_total{method="PUT",route="other",code="405"} 1"#,
            r#"r_total{method="POST",route="other",code="404"} 1"#,
        ] {
            assert!(out.contains(line), "{line}: {out}");
        }
        assert!(!out.contains("ZZ") && !out.contains("/zz"), "{out}");
    }

    #[test]
    fn rtt_buckets_sum_the_log_linear_ones_under_each_bound() {
        // 15 and 16 µs: values 15 (bucket [15, 16)) and 16 ([16, 17)); 40 000 µs; 70 s,
        // clamped into the last log-linear bucket (which ends near 60 s): under 2^26 µs.
        let h = crate::measure::Histogram::of(&[15.0, 15.5, 16.0, 40_000.0, 70e6]).buckets();
        let b = rtt_buckets(&h);
        assert_eq!(b.len(), RTT_LE_US.len() + 1);
        assert_eq!(b[0], (16e-6, 2), "{b:?}");
        assert_eq!(b[1], (32e-6, 1), "{b:?}");
        // 40 ms lies in (32.768 ms, 65.536 ms]: the bound 2^16 µs.
        assert_eq!(b[12], (65_536e-6, 1), "{b:?}");
        assert_eq!(b[RTT_LE_US.len() - 1], (67.108_864, 1), "{b:?}");
        assert_eq!(b[RTT_LE_US.len()], (f64::INFINITY, 0), "{b:?}");
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 5);
        assert_eq!(RTT_LE_US[22], 1 << 26);
    }
}
