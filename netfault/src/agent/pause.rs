//! `POST /v1/pauses`, `GET /v1/pauses`, `DELETE /v1/pauses/{name}`: pauses of processes or
//! cgroups on the agent's host (`cluster pause` over the agent transport). The watchdog is a
//! process of its own, as for `netfault pause`: it resumes the target on its deadline whatever
//! becomes of the agent or the coordinator.
use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
};

use super::{
    Shared,
    routes::{ApiError, ApiResult, parse_json},
};
use crate::{
    cluster::transport::agent::PausesView,
    pause::{self, Store, node},
};

fn api_error(e: pause::Error) -> ApiError {
    match e {
        pause::Error::Spec(s) => s.into(),
        pause::Error::Exists(n) => ApiError::field(
            StatusCode::CONFLICT,
            "name",
            format!("pause '{n}' exists already"),
        ),
        pause::Error::NotFound(n) => {
            ApiError::field(StatusCode::NOT_FOUND, "name", format!("no pause named {n}"))
        }
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Blocking work (the watchdog's start waits for the stop) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> pause::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(api_error)
}

pub async fn start(
    State(_sh): State<Arc<Shared>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<node::Started>)> {
    let req: node::Request = parse_json(&body)?;
    let s = blocking(move || {
        let store = Store::default();
        pause::sweep(&store);
        node::start_request(&store, &req, &crate::targets::container_cgroup_for_pause)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(s)))
}

pub async fn list(State(_sh): State<Arc<Shared>>) -> ApiResult<Json<PausesView>> {
    let pauses = blocking(|| Ok(node::list(&Store::default()))).await?;
    Ok(Json(PausesView { pauses }))
}

pub async fn resume(
    State(_sh): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Json<node::View>> {
    let mut done =
        blocking(move || node::resume(&Store::default(), Some(std::slice::from_ref(&name)), false))
            .await?;
    done.pop()
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such pause"))
}
