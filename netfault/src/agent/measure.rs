//! `POST /v1/measure`: the agent probes peers from its namespace (`measure --probe`) and
//! answers each peer's report. Probing runs on a blocking thread; no change of the node waits
//! for it.
use std::{sync::Arc, time::Duration};

use axum::{Json, body::Bytes, extract::State, http::StatusCode};

use super::{
    Shared,
    routes::{ApiError, ApiResult, parse_json},
};
use crate::{
    cluster::transport::agent::{MeasureAnswer, MeasureBody},
    measure::{
        self, Params,
        probe::{MAX_PEERS, MAX_PER_PEER},
    },
};

/// Longest measurement one request may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

fn duration(field: &str, v: &str, zero_ok: bool) -> ApiResult<Duration> {
    let d = humantime::parse_duration(v.trim())
        .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, field, format!("'{v}': {e}")))?;
    if d.is_zero() && !zero_ok {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            field,
            "must be above 0",
        ));
    }
    Ok(d)
}

pub async fn measure(
    State(_sh): State<Arc<Shared>>,
    body: Bytes,
) -> ApiResult<Json<MeasureAnswer>> {
    let b: MeasureBody = parse_json(&body)?;
    let bad = |field: &str, msg: String| ApiError::field(StatusCode::BAD_REQUEST, field, msg);
    if b.peers.is_empty() || b.peers.len() > MAX_PEERS {
        return Err(bad("peers", format!("1 to {MAX_PEERS} addresses")));
    }
    let interval = duration("interval", &b.interval, false)?;
    let length = duration("duration", &b.duration, false)?;
    if length > MAX_DURATION {
        return Err(bad("duration", format!("at most {MAX_DURATION:?}")));
    }
    if length.as_nanos() / interval.as_nanos() > u128::from(MAX_PER_PEER) {
        return Err(bad(
            "duration",
            format!("at most {MAX_PER_PEER} probes per peer"),
        ));
    }
    if !(b.false_suspicions_per_s.is_finite() && b.false_suspicions_per_s > 0.0) {
        return Err(bad("false_suspicions_per_s", "must be above 0".into()));
    }
    if !(1..=100).contains(&b.misses) {
        return Err(bad("misses", "1 to 100".into()));
    }
    let params = Params {
        heartbeat: duration("heartbeat", &b.heartbeat, false)?,
        target_per_s: b.false_suspicions_per_s,
        misses: b.misses,
        loss: 0.0,
        min_stddev: duration("min_stddev", &b.min_stddev, false)?,
        acceptable_pause: duration("acceptable_pause", &b.acceptable_pause, true)?,
    };
    let peers = b.peers;
    let reports = tokio::task::spawn_blocking(move || {
        measure::probe_reports(&peers, interval, length, &params)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(MeasureAnswer { peers: reports }))
}
