//! The agent's API, under `/v1`, JSON over HTTP/1.1, every request with
//! `Authorization: Bearer TOKEN`:
//!
//! | request                        | does                                                        |
//! |--------------------------------|-------------------------------------------------------------|
//! | `GET /v1/status`               | generation, interfaces, live faults, protections, lease     |
//! | `PUT /v1/ruleset`              | replaces every rule and partition (the rule-set file schema as JSON, plus `"lease"`), one generation flip; `If-Match: GEN` |
//! | `DELETE /v1/ruleset`           | deletes every rule and partition                            |
//! | `POST /v1/renew`               | renews the lease (or `{"names", "ttl"}`)                    |
//! | `POST /v1/plan`                | the coordinator's additive apply of a `NodePlan`            |
//! | `POST /v1/delete`              | deletes entries by name (`{"names", "kind"}`)               |
//! | `POST /v1/heal`                | `cluster heal` in one request (`{"names", "peers"}`)          |
//! | `DELETE /v1/rules/{name}`      | deletes one entry (404 when there is none)                  |
//! | `GET /v1/stats`                | as `netfault stats --json`                                  |
//! | `GET /v1/events?since=SEQ&wait=5s` | what happened after SEQ (long poll up to `wait`, at most 30 s) |
//! | `GET /metrics`                 | Prometheus text format                                      |
//!
//! Status codes: 200; 400 bad JSON or a bad rule (`{"error", "field"}`, nothing changed); 401
//! no or wrong token (nothing read, changed or logged; counted only in
//! `netfault_agent_refused_total`; the connection is closed after it); 404; 405; 408 the body
//! was not read in time; 409 a name that exists already, or not attached; 412 `If-Match` is not the current
//! generation; 413 a body over 1 MiB; 503 busy (another change held the node too long); 500.
use std::{
    collections::BTreeSet,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{Arc, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{MatchedPath, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter, on},
};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Core, Lease, Shared, Stopped,
    metrics::{Reason, Refused},
};
use crate::{
    cluster::{
        NodePlan, local,
        transport::{
            NodeError,
            agent::{
                Changed, DeleteRequest, ErrorBody, FaultView, HealRequest, LeaseView, PlanRequest,
                RenewRequest, StatusView,
            },
        },
    },
    control::{
        self, Ctl, monotonic_ns,
        state::{Paths, State as NodeState},
    },
    observe,
    spec::{Kind, RuleSpec, SpecError, Ttl, ruleset},
};

/// An error answer: a status and `{"error", "field"}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// The current generation, for 412.
    pub generation: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: msg.into(),
                field: None,
            },
            generation: None,
        }
    }

    pub(super) fn field(
        status: StatusCode,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        let mut e = Self::new(status, msg);
        e.body.field = Some(field.into());
        e
    }

    fn bad(e: SpecError) -> Self {
        Self::field(StatusCode::BAD_REQUEST, e.field, e.msg)
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        Self::bad(e)
    }
}

impl From<control::Error> for ApiError {
    fn from(e: control::Error) -> Self {
        use control::{Error as E, state::StateError};
        match e {
            E::Usage(s) => Self::bad(s),
            E::NotAttached => Self::new(StatusCode::CONFLICT, e.to_string()),
            E::State(StateError::Busy { .. }) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            e if e.exit_code() == 2 => Self::new(StatusCode::BAD_REQUEST, e.to_string()),
            e => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Control(c) => c.into(),
            e => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::to_value(&self.body).unwrap_or(Value::Null);
        if let Some(g) = self.generation {
            body["generation"] = json!(g);
        }
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"netfault\""),
            );
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Put,
    Post,
    Delete,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Put => "PUT",
            Verb::Post => "POST",
            Verb::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Put => MethodFilter::PUT,
            Verb::Post => MethodFilter::POST,
            Verb::Delete => MethodFilter::DELETE,
        }
    }
}

type MakeRoute = fn(MethodFilter) -> MethodRouter<Arc<Shared>>;

/// Every route: the router is built from this table, so the routes the metrics label by and
/// the ones tests enumerate are the ones served.
const ROUTES: &[(Verb, &str, MakeRoute)] = &[
    (Verb::Get, "/v1/status", |m| on(m, status)),
    (Verb::Put, "/v1/ruleset", |m| on(m, put_ruleset)),
    (Verb::Delete, "/v1/ruleset", |m| on(m, delete_ruleset)),
    (Verb::Post, "/v1/renew", |m| on(m, renew)),
    (Verb::Post, "/v1/plan", |m| on(m, plan)),
    (Verb::Post, "/v1/delete", |m| on(m, delete_names)),
    (Verb::Post, "/v1/heal", |m| on(m, heal_cluster)),
    (Verb::Delete, "/v1/rules/{name}", |m| on(m, delete_one)),
    (Verb::Get, "/v1/stats", |m| on(m, stats)),
    (Verb::Post, "/v1/measure", |m| {
        on(m, super::measure::measure)
    }),
    (Verb::Post, "/v1/pauses", |m| on(m, super::pause::start)),
    (Verb::Get, "/v1/pauses", |m| on(m, super::pause::list)),
    (Verb::Delete, "/v1/pauses/{name}", |m| {
        on(m, super::pause::resume)
    }),
    (Verb::Get, "/v1/events", |m| on(m, events)),
    (Verb::Get, "/metrics", |m| on(m, metrics)),
];

/// Every route the router serves: (method, path template).
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    ROUTES.iter().map(|(v, p, _)| (v.name(), *p))
}

/// The router with its layers: authenticated first (outermost: a stranger's request is
/// refused before it is counted, logged or read), then counted, then the body read whole
/// within the size and time limits, then handled.
pub fn router(shared: Arc<Shared>) -> Router {
    let mut r = Router::new();
    for (verb, path, make) in ROUTES {
        // Routes of one path with different methods merge into one method router.
        r = r.route(path, make(verb.filter()));
    }
    r.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            read_body,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), count))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), auth))
        .with_state(shared)
}

/// Counts every authenticated answer by method, route template and status (`/metrics`).
async fn count(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let r = next.run(req).await;
    sh.requests.count(
        method.as_str(),
        route.as_ref().map(MatchedPath::as_str),
        r.status().as_u16(),
    );
    r
}

/// The peer of a connection, for the count of refusals.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// 401 unless the request carries the token; nothing is read, changed or logged before this
/// passes. A refusal is counted (`netfault_agent_refused_total`) and ends the connection, so
/// a stranger holds no slot past its request.
async fn auth(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let h = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if sh.token.matches(h) {
        return next.run(req).await;
    }
    let reason = if h.is_none() {
        Reason::NoToken
    } else {
        Reason::WrongToken
    };
    let peer = req.extensions().get::<Peer>().map(|p| p.0.ip());
    sh.refused.count(reason, peer);
    let mut r = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer TOKEN)",
    )
    .into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Logs what was refused as at most one `refused` event per
/// [`REFUSED_EVERY`](super::REFUSED_EVERY): the counts by reason and the last peer, so no
/// stranger can flush the event log.
pub async fn report_refusals(sh: Arc<Shared>) {
    let mut last = sh.refused.totals();
    let mut tick = tokio::time::interval(super::REFUSED_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = sh.refused.totals();
        let grew: Vec<String> = Reason::ALL
            .iter()
            .zip(now.iter().zip(last.iter()))
            .filter(|(_, (n, l))| n > l)
            .map(|(r, (n, l))| format!("{} {}", r.name(), n - l))
            .collect();
        if !grew.is_empty() {
            let total: u64 = now.iter().sum::<u64>() - last.iter().sum::<u64>();
            let peer = sh
                .refused
                .last_peer()
                .map_or_else(|| "?".to_string(), |p| p.to_string());
            sh.events.push(
                "refused",
                None,
                Vec::new(),
                Some(format!(
                    "{total} refused in the last {:?} ({}), the last from {peer}",
                    super::REFUSED_EVERY,
                    grew.join(", ")
                )),
            );
        }
        last = now;
    }
}

/// Reads the whole body before the handler runs: 413 past [`MAX_BODY`](super::MAX_BODY) (at
/// once when Content-Length says so), 408 when it does not arrive in time.
async fn read_body(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {} bytes", super::MAX_BODY),
        )
        .into_response()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > super::MAX_BODY as u64) {
        return too_big();
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, super::MAX_BODY);
    let bytes = match tokio::time::timeout(sh.timeout, limited.collect()).await {
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            )
            .into_response();
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_big(),
        Ok(Err(e)) => {
            return ApiError::new(StatusCode::BAD_REQUEST, format!("read the body: {e}"))
                .into_response();
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The agent's core, waiting at most the request timeout for the change that holds it.
async fn hold_core(sh: &Arc<Shared>) -> ApiResult<tokio::sync::OwnedMutexGuard<Core>> {
    tokio::time::timeout(sh.timeout, Arc::clone(&sh.core).lock_owned())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: another change holds the node",
            )
        })
}

/// Runs a change of the node: one at a time (waiting at most the request timeout for the one
/// before), under the controller's lock, on a blocking thread. A change made behind the
/// agent's back since the last request counts as a generation; `if_match` must be the current
/// one. Returns the result and the generation after the change.
async fn change<T: Send + 'static>(
    sh: &Arc<Shared>,
    if_match: Option<u64>,
    op: impl FnOnce(&mut Ctl, &mut Core) -> ApiResult<T> + Send + 'static,
) -> ApiResult<(T, u64)> {
    // Without `if_attached` every change attaches first: there is always an answer.
    change_in(sh, if_match, false, op).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the change was not made (not attached)",
        )
    })
}

/// [`change`]; with `if_attached`, only where the agent's interfaces are all attached (None,
/// and nothing done, where one is not: attaching loads and verifies the programs, which the
/// coordinator then does for every node before any changes).
async fn change_in<T: Send + 'static>(
    sh: &Arc<Shared>,
    if_match: Option<u64>,
    if_attached: bool,
    op: impl FnOnce(&mut Ctl, &mut Core) -> ApiResult<T> + Send + 'static,
) -> ApiResult<Option<(T, u64)>> {
    let guard = hold_core(sh).await?;
    let ns = sh.netns.clone();
    let ifaces = sh.ifaces.clone();
    tokio::task::spawn_blocking(move || {
        let mut core = guard;
        // A long-lived server: gone namespaces' states are swept at most once a second, not
        // by every change (each sweep reads every other namespace's state).
        let mut ctl = Ctl::open_in_fanout(ns.as_deref())?;
        core.sync(&ctl.state);
        if let Some(g) = if_match
            && g != core.generation
        {
            let mut e = ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "the rule set is at generation {}, not {g}: read it again",
                    core.generation
                ),
            );
            e.generation = Some(core.generation);
            return Err(e);
        }
        if if_attached && !ifaces.iter().all(|i| ctl.is_attached(i)) {
            return Ok(None);
        }
        // Someone may have detached: attaching again is a no-op when attached.
        ctl.attach(&ifaces, None)?;
        let out = op(&mut ctl, &mut core)?;
        core.sync(&ctl.state);
        Ok(Some((out, core.generation)))
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the change panicked"))?
}

/// Reads the state without the controller's lock (it is replaced atomically), and the
/// generation.
async fn read<T: Send + 'static>(
    sh: &Arc<Shared>,
    f: impl FnOnce(&Paths, &NodeState, &Core) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let guard = hold_core(sh).await?;
    let ns = sh.netns.clone();
    tokio::task::spawn_blocking(move || {
        let mut core = guard;
        let (paths, state) = observe::read_state(ns.as_deref())?;
        core.sync(&state);
        f(&paths, &state, &core)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the read panicked"))?
}

/// Parses a JSON body into `T`, naming the field of a mismatch (`plan.rules[0].drop`).
/// The answer to a change that left no warnings, logged first as a `kind` event.
fn logged(
    sh: &Shared,
    kind: &'static str,
    generation: u64,
    names: Vec<String>,
    detail: Option<String>,
) -> Json<Changed> {
    sh.events
        .push(kind, Some(generation), names.clone(), detail);
    Json(Changed {
        generation,
        names,
        ..Changed::default()
    })
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // Malformed JSON has no field to name: the body is at fault.
        let syntax = !matches!(e.inner().classify(), serde_json::error::Category::Data);
        let field = if syntax || path == "." || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        ApiError::field(StatusCode::BAD_REQUEST, field, e.inner().to_string())
    })
}

fn parse_ttl(field: &str, s: &str) -> ApiResult<Ttl> {
    s.parse()
        .map_err(|m: String| ApiError::field(StatusCode::BAD_REQUEST, field, m))
}

fn now_ms_left(expires: u64, now: u64) -> Option<u64> {
    (expires != 0).then(|| expires.saturating_sub(now) / 1_000_000)
}

fn status_view(state: &NodeState, core: &Core, ifaces: &[String]) -> StatusView {
    let now = monotonic_ns();
    let mut protected: Vec<String> = state
        .rules
        .iter()
        .filter(|r| r.spec.kind == Kind::Protect)
        .map(|r| {
            r.spec
                .name
                .split('/')
                .next()
                .unwrap_or(&r.spec.name)
                .to_string()
        })
        .collect();
    protected.dedup();
    StatusView {
        generation: core.generation,
        attached: state.attached.iter().map(|a| a.iface.clone()).collect(),
        ifaces: ifaces.to_vec(),
        faults: state
            .ordered()
            .into_iter()
            .filter(|r| r.spec.kind != Kind::Protect && r.live(now))
            .map(|r| FaultView {
                name: r.spec.name.clone(),
                kind: r.spec.kind,
                expires_in_ms: now_ms_left(r.expires_mono_ns, now),
                spec: Some(r.spec.clone()),
            })
            .collect(),
        protected,
        lease: core.lease.as_ref().map(|l| LeaseView {
            lease_ms: l.ttl.as_millis() as u64,
            names: l.names.clone(),
        }),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pauses: crate::pause::node::list(&crate::pause::Store::default()),
    }
}

async fn status(State(sh): State<Arc<Shared>>) -> ApiResult<Json<StatusView>> {
    let ifaces = sh.ifaces.clone();
    let v = read(&sh, move |_, state, core| {
        Ok(status_view(state, core, &ifaces))
    })
    .await?;
    Ok(Json(v))
}

/// `If-Match: 17` or `If-Match: "17"`.
fn if_match(h: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(v) = h.get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_matches('"'))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::field(
                StatusCode::BAD_REQUEST,
                "If-Match",
                "expected a generation number",
            )
        })
}

/// JSON to TOML, so a rule set in JSON goes through the very parser (and error paths) of
/// rule-set files.
fn to_toml(path: &str, v: &Value) -> Result<toml::Value, SpecError> {
    Ok(match v {
        Value::Null => {
            return Err(SpecError::new(
                path,
                "null is not a value here (leave the key out)",
            ));
        }
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) => toml::Value::Float(f),
            _ => return Err(SpecError::new(path, format!("{n} is out of range"))),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(a) => toml::Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, e)| to_toml(&format!("{path}[{i}]"), e))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => {
            let mut t = toml::Table::new();
            for (k, e) in o {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                t.insert(k.clone(), to_toml(&p, e)?);
            }
            toml::Value::Table(t)
        }
    })
}

/// A `PUT /v1/ruleset` body: `{"rule": [...], "partition": [...], "lease": "5s"}`. With a
/// lease every entry lives as long as the lease is renewed, so an entry's own `ttl` is
/// refused.
/// A rule set's entries with their lifetimes, and its lease.
type RuleSet = (Vec<(RuleSpec, Ttl)>, Option<Duration>);

fn parse_ruleset(body: &Bytes) -> ApiResult<RuleSet> {
    let doc: Value = parse_json(body)?;
    let Value::Object(mut o) = doc else {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "body",
            "expected an object: {\"rule\": [...], \"partition\": [...], \"lease\": \"5s\"}",
        ));
    };
    let lease = match o.remove("lease") {
        None => None,
        Some(Value::String(s)) => Some(
            crate::spec::parse_duration(&s)
                .map_err(|m| ApiError::field(StatusCode::BAD_REQUEST, "lease", m))?,
        ),
        Some(_) => {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "lease",
                "expected a duration such as \"5s\"",
            ));
        }
    };
    if lease.is_some() {
        for kind in ["rule", "partition"] {
            if let Some(Value::Array(a)) = o.get(kind) {
                for (i, e) in a.iter().enumerate() {
                    if e.get("ttl").is_some() {
                        return Err(ApiError::field(
                            StatusCode::BAD_REQUEST,
                            format!("{kind}[{i}].ttl"),
                            "the set has a lease: its entries live while the lease is renewed (leave ttl out)",
                        ));
                    }
                }
            }
        }
    }
    let table = match to_toml("", &Value::Object(o))? {
        toml::Value::Table(t) => t,
        _ => toml::Table::new(),
    };
    let text = toml::to_string(&table)
        .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "body", e.to_string()))?;
    let mut specs = ruleset::parse(&text)?;
    if let Some(l) = lease {
        for (_, ttl) in &mut specs {
            *ttl = Ttl::For(l);
        }
    }
    Ok((specs, lease))
}

async fn put_ruleset(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Changed>> {
    let pre = if_match(&headers)?;
    let (specs, lease) = parse_ruleset(&body)?;
    let names: Vec<String> = specs.iter().map(|(s, _)| s.name.clone()).collect();
    let n = names.clone();
    let ((warnings, replaced), generation) = change(&sh, pre, move |ctl, core| {
        let before: Vec<String> = entries(&ctl.state, &[Kind::Rule, Kind::Partition]);
        let warnings = ctl.apply(specs, false)?;
        for b in &before {
            core.owned.remove(b);
        }
        core.owned.extend(n.iter().cloned());
        core.lease = lease.map(|ttl| Lease {
            ttl,
            names: n.clone(),
        });
        Ok((warnings, before))
    })
    .await?;
    sh.events.push(
        "ruleset",
        Some(generation),
        names.clone(),
        Some(format!(
            "replaced {} entries{}",
            replaced.len(),
            lease.map_or(String::new(), |l| format!(
                "; lease {}",
                humantime::format_duration(l)
            ))
        )),
    );
    Ok(Json(Changed {
        generation,
        names,
        warnings,
        ..Changed::default()
    }))
}

/// The names of the entries of `kinds`.
fn entries(state: &NodeState, kinds: &[Kind]) -> Vec<String> {
    state
        .rules
        .iter()
        .filter(|r| kinds.contains(&r.spec.kind))
        .map(|r| r.spec.name.clone())
        .collect()
}

async fn delete_ruleset(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
) -> ApiResult<Json<Changed>> {
    let pre = if_match(&headers)?;
    let (names, generation) = change(&sh, pre, |ctl, core| {
        let kinds = [Kind::Rule, Kind::Partition];
        let names = if entries(&ctl.state, &kinds).is_empty() {
            Vec::new()
        } else {
            ctl.delete(&[], &kinds)?
        };
        for n in &names {
            core.owned.remove(n);
        }
        core.lease = None;
        Ok(names)
    })
    .await?;
    Ok(logged(
        &sh,
        "delete",
        generation,
        names,
        Some("ruleset".into()),
    ))
}

async fn renew(State(sh): State<Arc<Shared>>, body: Bytes) -> ApiResult<Json<Changed>> {
    let req: RenewRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RenewRequest::default()
    } else {
        parse_json(&body)?
    };
    let ttl = req
        .ttl
        .as_deref()
        .map(|t| parse_ttl("ttl", t))
        .transpose()?;
    let (names, generation) = change(&sh, None, move |ctl, core| {
        let ttl = match (ttl, &core.lease) {
            (Some(t), _) => t,
            (None, Some(l)) => Ttl::For(l.ttl),
            (None, None) => {
                return Err(ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "ttl",
                    "no lease to renew (the rule set was put without one): give a ttl",
                ));
            }
        };
        let names = match (req.names, &core.lease) {
            (Some(n), _) => n,
            (None, Some(l)) => l.names.clone(),
            (None, None) => entries(&ctl.state, &[Kind::Rule, Kind::Partition]),
        };
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| {
                ctl.state
                    .find(n)
                    .is_some_and(|r| r.spec.kind != Kind::Protect)
            })
            .collect();
        Ok(local::renew(ctl, &names, ttl)?)
    })
    .await?;
    Ok(logged(&sh, "renew", generation, names, None))
}

/// The checks of a plan from the wire (serde checked only its shape): interfaces the agent
/// serves, each entry of the kind its list says and valid, no rule that hits every packet.
fn check_plan(plan: &NodePlan, ifaces: &[String]) -> ApiResult<()> {
    let bad = |f: String, m: String| ApiError::field(StatusCode::BAD_REQUEST, f, m);
    for (i, f) in plan.ifaces.iter().enumerate() {
        if !ifaces.contains(f) {
            return Err(bad(
                format!("plan.ifaces[{i}]"),
                format!(
                    "'{f}' is not an interface this agent serves ({})",
                    ifaces.join(", ")
                ),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (list, specs) in [("protect", &plan.protect), ("rules", &plan.rules)] {
        for (i, s) in specs.iter().enumerate() {
            let at = |k: &str| format!("plan.{list}[{i}].{k}");
            let kind_ok = match list {
                "protect" => s.kind == Kind::Protect,
                _ => s.kind != Kind::Protect,
            };
            if !kind_ok {
                return Err(bad(
                    at("kind"),
                    format!("{:?} does not belong in {list}", s.kind),
                ));
            }
            if s.kind == Kind::Protect {
                // Protections are named by label (`control:192.0.2.1:7070/0`), not as rules.
                if s.name.is_empty()
                    || s.name.len() > 128
                    || s.name.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(bad(
                        at("name"),
                        "1 to 128 characters, no white space".into(),
                    ));
                }
            } else {
                s.validate().map_err(|e| {
                    let k = e.field.trim_start_matches("--").to_lowercase();
                    bad(at(&k), e.msg)
                })?;
            }
            if s.kind != Kind::Protect && s.matches_everything() {
                return Err(bad(
                    format!("plan.{list}[{i}]"),
                    "matches every packet; a plan's entries name their peers".into(),
                ));
            }
            if !seen.insert(s.name.as_str()) {
                return Err(bad(
                    at("name"),
                    format!("'{}' is in the plan twice", s.name),
                ));
            }
        }
    }
    Ok(())
}

async fn plan(State(sh): State<Arc<Shared>>, body: Bytes) -> ApiResult<Json<Changed>> {
    let req: PlanRequest = parse_json(&body)?;
    let ttl = match req.ttl.as_deref() {
        Some(t) => parse_ttl("ttl", t)?,
        None => Ttl::default(),
    };
    check_plan(&req.plan, &sh.ifaces)?;
    let plan = req.plan;
    let changed = change_in(&sh, None, req.if_attached, move |ctl, core| {
        // An entry whose lifetime is over (a killed run's, say) holds its name no longer:
        // the add replaces it.
        let now = monotonic_ns();
        for (i, r) in plan.rules.iter().enumerate() {
            if ctl.state.find(&r.name).is_some_and(|e| e.live(now)) {
                return Err(ApiError::field(
                    StatusCode::CONFLICT,
                    format!("plan.rules[{i}].name"),
                    format!("an entry named '{}' exists already", r.name),
                ));
            }
        }
        let names = local::apply(ctl, &plan, ttl)?;
        core.owned.extend(names.iter().cloned());
        Ok(names)
    })
    .await?;
    let Some((names, generation)) = changed else {
        return Ok(Json(Changed {
            not_attached: true,
            ..Changed::default()
        }));
    };
    Ok(logged(&sh, "plan", generation, names, None))
}

/// Deletes the entries named `names` (of `kind`, when given) that exist.
async fn delete_by_names(
    sh: &Arc<Shared>,
    names: Vec<String>,
    kind: Option<Kind>,
) -> ApiResult<(Vec<String>, u64)> {
    delete_picked(sh, move |ctl| {
        names
            .into_iter()
            .filter(|n| {
                ctl.state
                    .find(n)
                    .is_some_and(|r| kind.is_none_or(|k| r.spec.kind == k))
            })
            .collect()
    })
    .await
}

/// `POST /v1/heal`: the coordinator's partitions and impairment rules (of `names`, any when
/// empty) deleted in one request, picked here (`local::cluster_entries`).
async fn heal_cluster(State(sh): State<Arc<Shared>>, body: Bytes) -> ApiResult<Json<Changed>> {
    let req: HealRequest = parse_json(&body)?;
    let (names, generation) = delete_picked(&sh, move |ctl| {
        local::cluster_entries(ctl, &req.names, &req.peers)
    })
    .await?;
    Ok(logged(&sh, "heal", generation, names, None))
}

/// Deletes the entries `pick` chooses, under the agent's lock.
async fn delete_picked(
    sh: &Arc<Shared>,
    pick: impl FnOnce(&Ctl) -> Vec<String> + Send + 'static,
) -> ApiResult<(Vec<String>, u64)> {
    change(sh, None, move |ctl, core| {
        let picked = pick(ctl);
        let deleted = local::delete(ctl, &picked)?;
        for n in &deleted {
            core.owned.remove(n);
            if let Some(l) = &mut core.lease {
                l.names.retain(|m| m != n);
            }
        }
        Ok(deleted)
    })
    .await
}

async fn delete_names(State(sh): State<Arc<Shared>>, body: Bytes) -> ApiResult<Json<Changed>> {
    let req: DeleteRequest = parse_json(&body)?;
    let (names, generation) = delete_by_names(&sh, req.names, req.kind).await?;
    Ok(logged(&sh, "delete", generation, names, None))
}

async fn delete_one(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Changed>> {
    let (names, generation) = delete_by_names(&sh, vec![name.clone()], None).await?;
    if names.is_empty() {
        return Err(ApiError::field(
            StatusCode::NOT_FOUND,
            "name",
            format!("no entry named '{name}'"),
        ));
    }
    Ok(logged(&sh, "delete", generation, names, None))
}

/// The document of `netfault stats --json`: rules and partitions with their counters, lost
/// interfaces, the queues' own drops.
pub fn stats_doc(paths: &Paths, state: &NodeState) -> ApiResult<Value> {
    let rows: Vec<_> = observe::stats(paths, state)?
        .into_iter()
        .filter(|r| r.kind != Kind::Protect)
        .collect();
    let lost: Vec<String> = state
        .attached
        .iter()
        .filter(|a| crate::dataplane::ifindex(&a.iface) != Some(a.ifindex))
        .map(|a| a.iface.clone())
        .collect();
    let queues = control::shaping::queue_stats(&state.shaped);
    Ok(json!({ "rules": rows, "lost_interfaces": lost, "queues": queues }))
}

async fn stats(State(sh): State<Arc<Shared>>) -> ApiResult<Json<Value>> {
    Ok(Json(
        read(&sh, |paths, state, _| stats_doc(paths, state)).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    since: u64,
    /// Long poll: wait up to this long for an event after `since`.
    #[serde(default)]
    wait: Option<String>,
}

/// Longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(30);

async fn events(
    State(sh): State<Arc<Shared>>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) =
        q.map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "query", e.body_text()))?;
    let wait = match q.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => crate::spec::parse_duration(w)
            .map_err(|m| ApiError::field(StatusCode::BAD_REQUEST, "wait", m))?
            .min(MAX_WAIT),
    };
    let mut rx = sh.events.subscribe();
    if !wait.is_zero() {
        let since = q.since;
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| *s > since)).await;
    }
    let (events, next) = sh.events.since(q.since);
    Ok(Json(json!({ "events": events, "next": next })))
}

async fn metrics(State(sh): State<Arc<Shared>>) -> ApiResult<Response> {
    let (requests, refused, measured) =
        (sh.requests.clone(), sh.refused.clone(), sh.measured.clone());
    let text = read(&sh, move |paths, state, core| {
        super::metrics::render(paths, state, core, &requests, &refused, &measured)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
    })
    .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Reports entries whose lifetime ran out (`expired` events), every half second.
pub async fn watch_expiry(sh: Arc<Shared>) {
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let ns = sh.netns.clone();
        let Ok(Ok((_, state))) =
            tokio::task::spawn_blocking(move || observe::read_state(ns.as_deref())).await
        else {
            continue;
        };
        let now = monotonic_ns();
        let expired: BTreeSet<String> = state
            .rules
            .iter()
            .filter(|r| r.spec.kind != Kind::Protect && !r.live(now))
            .map(|r| r.spec.name.clone())
            .collect();
        let new: Vec<String> = expired.difference(&reported).cloned().collect();
        if !new.is_empty() {
            sh.events.push("expired", None, new, None);
        }
        reported = expired;
    }
}

/// A clean stop: deletes what this agent added (and still exists), so a stopped agent leaves
/// nothing behind; `kill -9` leaves it to the lifetimes.
pub async fn clean_stop(sh: &Arc<Shared>) {
    let owned: Vec<String> = sh.core.lock().await.owned.iter().cloned().collect();
    let r = change(sh, None, move |ctl, core| {
        // Those that still exist (local::delete skips the others).
        let deleted = local::delete(ctl, &owned)?;
        core.owned.clear();
        core.lease = None;
        Ok(deleted)
    })
    .await;
    match r {
        Ok((names, g)) => sh.events.push("stop", Some(g), names, None),
        Err(e) => log::warn!("on stop, delete what the agent added: {}", e.body.error),
    }
}

/// Connections open per peer address, and the slot one of them holds.
#[derive(Default)]
struct PerPeer(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

struct PeerSlot {
    peers: Arc<PerPeer>,
    ip: IpAddr,
}

impl PerPeer {
    /// A slot for a connection from `ip`, unless it has [`MAX_PER_PEER`](super::MAX_PER_PEER)
    /// open already.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(ip).or_default();
        if *n >= super::MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.peers.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until `stop` resolves: each served on a task of its own (at most
/// [`MAX_CONNECTIONS`](super::MAX_CONNECTIONS) at once, at most
/// [`MAX_PER_PEER`](super::MAX_PER_PEER) from one address: more are closed at once), over TLS
/// when configured. The TLS handshake and every request head (the first, and each next one on
/// a kept-alive connection) must arrive within `head_timeout` (hyper's header read timeout);
/// bodies and changes are bounded by the routes' own timeout.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    timeout: Duration,
    head_timeout: Duration,
    refused: Refused,
    stop: impl Future<Output = Stopped>,
) -> Stopped {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(super::MAX_CONNECTIONS));
    let peers = Arc::new(PerPeer::default());
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            s = &mut stop => return s,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => continue,
            },
        };
        let (tcp, peer) = tokio::select! {
            s = &mut stop => return s,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = peer.ip().to_canonical();
        let Some(peer_slot) = peers.take(ip) else {
            // Closed at once: one address cannot hold every slot.
            refused.count(Reason::PeerLimit, Some(ip));
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            let _slots = (permit, peer_slot);
            // Whether a request head arrived: a head timeout before any is a refusal, after one
            // it is an idle keep-alive connection closing.
            let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = Arc::clone(&served);
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    req.extensions_mut().insert(Peer(peer));
                    router.clone().oneshot(req.map(Body::new))
                },
            );
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .keep_alive(true);
            let started = Instant::now();
            // No connection holds a slot for ever: a long poll and a slow change both fit in
            // this.
            let life = MAX_WAIT + 4 * timeout;
            let cap = |r: Result<Result<(), hyper::Error>, _>| r.unwrap_or(Ok(()));
            let r = match acceptor {
                None => cap(tokio::time::timeout(
                    life,
                    http.serve_connection(TokioIo::new(tcp), svc),
                )
                .await),
                Some(acc) => match tokio::time::timeout(head_timeout, acc.accept(tcp)).await {
                    Ok(Ok(s)) => cap(tokio::time::timeout(
                        life,
                        http.serve_connection(TokioIo::new(s), svc),
                    )
                    .await),
                    Ok(Err(e)) => {
                        refused.count(Reason::Tls, Some(ip));
                        log::debug!("TLS handshake with {peer}: {e}");
                        return;
                    }
                    Err(_) => {
                        refused.count(Reason::HeadTimeout, Some(ip));
                        log::debug!("TLS handshake with {peer}: none within {head_timeout:?}");
                        return;
                    }
                },
            };
            if let Err(e) = r {
                if e.is_timeout() && !served.load(std::sync::atomic::Ordering::Relaxed) {
                    refused.count(Reason::HeadTimeout, Some(ip));
                }
                log::debug!("connection from {peer} ({:?}): {e}", started.elapsed());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_rule_set_goes_through_the_file_parser_and_names_the_field() {
        let ok = Bytes::from_static(
            br#"{"rule": [{"name": "r1", "src": ["192.0.2.1"], "drop": "30%", "ttl": "1m"}],
                 "partition": [{"name": "p1", "a": ["192.0.2.2"], "b": ["192.0.2.3"]}]}"#,
        );
        let (specs, lease) = parse_ruleset(&ok).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(lease, None);
        // Partitions and rules are bands of their own; within each, the order is the body's.
        let ttl = |n: &str| specs.iter().find(|(s, _)| s.name == n).unwrap().1;
        assert_eq!(ttl("r1"), Ttl::For(Duration::from_secs(60)));
        assert_eq!(ttl("p1"), Ttl::default());
        let cases: &[(&[u8], &str)] = &[
            (br#"{"rule": [{"name": "r", "src": ["192.0.2.1"], "drop": "150%"}]}"#, "rule[0].drop"),
            (br#"{"rule": [{"name": "r", "srcc": ["192.0.2.1"], "drop": 1}]}"#, "rule[0].srcc"),
            (br#"{"rule": [{"name": "r", "src": null, "drop": 1}]}"#, "rule[0].src"),
            (br#"{"rules": []}"#, "rules"),
            (br#"{"rule": [{"name": "r", "src": "192.0.2.1", "drop": 1, "ttl": "1m"}], "lease": "5s"}"#, "rule[0].ttl"),
            (br#"{"lease": "soon"}"#, "lease"),
            (br#"[1]"#, "body"),
            (br#"{"rule": [{"name": "r""#, "body"),
        ];
        for (body, field) in cases {
            let e = parse_ruleset(&Bytes::from_static(body)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(
                e.body.field.as_deref(),
                Some(*field),
                "{}: {:?}",
                String::from_utf8_lossy(body),
                e.body
            );
        }
        let leased = Bytes::from_static(
            br#"{"partition": [{"name": "p", "a": "192.0.2.2", "b": "192.0.2.3"}], "lease": "5s"}"#,
        );
        let (specs, lease) = parse_ruleset(&leased).unwrap();
        assert_eq!(lease, Some(Duration::from_secs(5)));
        assert_eq!(specs[0].1, Ttl::For(Duration::from_secs(5)));
    }

    #[test]
    fn plans_from_the_wire_are_checked_as_the_coordinator_would_build_them() {
        let ifaces = vec!["eth0".to_string()];
        let part = RuleSpec {
            src: vec!["192.0.2.1/32".parse().unwrap()],
            oneway: true,
            dir: crate::spec::Direction::Ingress,
            ..RuleSpec::new("p.from-n1.v4", Kind::Partition)
        };
        let plan = NodePlan {
            node: "n2".into(),
            ifaces: ifaces.clone(),
            protect: vec![],
            rules: vec![part.clone()],
        };
        check_plan(&plan, &ifaces).unwrap();
        let field = |p: &NodePlan| check_plan(p, &ifaces).unwrap_err().body.field.unwrap();
        let mut p = plan.clone();
        p.ifaces = vec!["eth9".into()];
        assert_eq!(field(&p), "plan.ifaces[0]");
        let mut p = plan.clone();
        p.rules[0].src.clear();
        assert_eq!(field(&p), "plan.rules[0]");
        let mut p = plan.clone();
        p.rules.push(part.clone());
        assert_eq!(field(&p), "plan.rules[1].name");
        let mut p = plan.clone();
        p.protect.push(part);
        assert_eq!(field(&p), "plan.protect[0].kind");
        let mut p = plan.clone();
        p.rules[0].kind = Kind::Rule;
        p.rules[0].act.drop = crate::spec::Prob(0.0);
        assert_eq!(field(&p), "plan.rules[0].action");
    }
}
