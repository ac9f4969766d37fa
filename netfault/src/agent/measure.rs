//! `POST /v1/measure`: the agent probes peers from its namespace (`measure --probe`), or
//! watches their TCP round trips there (`"passive": true`, `measure` without `--probe`), and
//! answers each peer's report, which `/metrics` then shows as `netfault_rtt_seconds`. It runs
//! on a blocking thread; no change of the node waits for it.
use std::sync::Arc;

use axum::{Json, body::Bytes, extract::State, http::StatusCode};

use super::{
    Shared,
    routes::{ApiError, ApiResult, parse_json},
};
use crate::cluster::transport::agent::{MeasureAnswer, MeasureBody};

pub async fn measure(State(sh): State<Arc<Shared>>, body: Bytes) -> ApiResult<Json<MeasureAnswer>> {
    let b: MeasureBody = parse_json(&body)?;
    let c = b.checked().map_err(|m| {
        let field = m.split(':').next().unwrap_or("body").to_owned();
        ApiError::field(StatusCode::BAD_REQUEST, field, m)
    })?;
    let reports = tokio::task::spawn_blocking(move || c.run_here())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    sh.measured.set(reports.clone());
    Ok(Json(MeasureAnswer { peers: reports }))
}
