//! The agent transport: a `netfault agent` on the node, over HTTP/1.1 (TLS with `https://`),
//! authenticated by a bearer token. Blocking (ureq): every transport call runs on a thread of
//! its own.
//!
//! How the coordinator's operations map onto the agent's API (the server is
//! [`crate::agent`]):
//!
//! | operation           | request                                                    |
//! |---------------------|------------------------------------------------------------|
//! | `apply(plan, ttl)`  | `POST /v1/plan` `{"plan": NodePlan, "ttl": "10m"}`: additive |
//! | `delete(names)`     | `POST /v1/delete` `{"names": [...]}`                       |
//! | `heal(select)`      | `GET /v1/status`, then `POST /v1/delete` `{"names", "kind": "partition"}` |
//! | `renew(names, ttl)` | `POST /v1/renew` `{"names": [...], "ttl": "5m"}`           |
//! | `state()`           | `GET /v1/status`                                           |
//! | `measure(request)`  | `POST /v1/measure` `{"peers", "interval", "duration", ...}` |
//!
//! Additive changes (`/v1/plan`, `/v1/delete`) need no precondition: entries are named, a name
//! taken is refused (409), so two coordinators never overwrite each other's entries. The
//! desired-state call, `PUT /v1/ruleset`, replaces every rule and partition and takes
//! `If-Match: GENERATION` for scripts that read, change and write back.
//!
//! The wire types live here (the cluster layer) so the server, a layer above, shares them.
use std::{path::Path, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    LiveFault, NodeError, NodePlan, NodeState, NodeTransport,
    secret::{SecretError, read_private},
};
use crate::{
    cluster::file::AgentUrl,
    spec::{Kind, Ttl},
};

/// `GET /v1/pauses`: the live pauses on the agent's host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PausesView {
    pub pauses: Vec<crate::pause::node::View>,
}

/// `POST /v1/measure`: probe `peers` from the agent's namespace (`measure --probe`), or watch
/// their TCP round trips there (`passive`, `measure` without `--probe`), with the advice of
/// `advise` for each. Durations as text (`100ms`), the rate as `N/UNIT`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeasureBody {
    pub peers: Vec<std::net::IpAddr>,
    /// `icmp` (absent: icmp) or `udp:PORT`.
    #[serde(default, skip_serializing_if = "crate::measure::probe::Kind::is_icmp")]
    pub probe: crate::measure::probe::Kind,
    pub interval: String,
    pub duration: String,
    pub heartbeat: String,
    pub false_suspicions_per_s: f64,
    pub misses: u32,
    pub min_stddev: String,
    pub acceptable_pause: String,
    /// Listen for requests carrying this nonce (`cluster verify`); absent: do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<u64>,
    /// Watch live TCP traffic instead of probing (`probe`, `interval` and `listen` then do
    /// not apply); absent: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passive: bool,
}

impl MeasureBody {
    pub fn of(r: &super::MeasureRequest) -> MeasureBody {
        MeasureBody {
            peers: r.peers.clone(),
            probe: r.probe,
            interval: text(r.interval),
            duration: text(r.duration),
            heartbeat: text(r.params.heartbeat),
            false_suspicions_per_s: r.params.target_per_s,
            misses: r.params.misses,
            min_stddev: text(r.params.min_stddev),
            acceptable_pause: text(r.params.acceptable_pause),
            listen: r.listen,
            passive: r.passive,
        }
    }

    /// The request checked: peers, interval, duration and the advice's parameters, or the
    /// field at fault and why.
    pub fn checked(self) -> Result<super::MeasureRequest, String> {
        use crate::measure::probe::MAX_PEERS;
        let dur = |field: &str, v: &str, zero_ok: bool| -> Result<Duration, String> {
            let d =
                humantime::parse_duration(v.trim()).map_err(|e| format!("{field}: '{v}': {e}"))?;
            if d.is_zero() && !zero_ok {
                return Err(format!("{field}: must be above 0"));
            }
            Ok(d)
        };
        if self.peers.is_empty() || self.peers.len() > MAX_PEERS {
            return Err(format!("peers: 1 to {MAX_PEERS} addresses"));
        }
        let interval = dur("interval", &self.interval, false)?;
        let duration = dur("duration", &self.duration, false)?;
        if duration > MAX_MEASURE {
            return Err(format!("duration: at most {MAX_MEASURE:?}"));
        }
        if self.passive {
            if self.listen.is_some() {
                return Err("listen: a passive measurement sends no probes to be heard".into());
            }
            if !self.probe.is_icmp() {
                return Err("probe: a passive measurement sends no probes".into());
            }
        } else {
            crate::measure::probe::rounds(interval, duration)
                .map_err(|m| format!("duration: {m}"))?;
        }
        if !(self.false_suspicions_per_s.is_finite() && self.false_suspicions_per_s > 0.0) {
            return Err("false_suspicions_per_s: must be above 0".into());
        }
        if !(1..=100).contains(&self.misses) {
            return Err("misses: 1 to 100".into());
        }
        let params = crate::measure::Params {
            heartbeat: dur("heartbeat", &self.heartbeat, false)?,
            target_per_s: self.false_suspicions_per_s,
            misses: self.misses,
            loss: 0.0,
            min_stddev: dur("min_stddev", &self.min_stddev, false)?,
            acceptable_pause: dur("acceptable_pause", &self.acceptable_pause, true)?,
        };
        if self.listen == Some(0) {
            return Err("listen: a nonce above 0".into());
        }
        Ok(super::MeasureRequest {
            peers: self.peers,
            probe: self.probe,
            interval,
            duration,
            params,
            listen: self.listen,
            passive: self.passive,
        })
    }
}

/// Longest measurement one request may ask for.
pub const MAX_MEASURE: Duration = Duration::from_secs(600);

/// Its answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeasureAnswer {
    pub peers: Vec<crate::measure::Report>,
}

/// What every response that changed something says.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Changed {
    /// The node's rule-set generation after the change.
    pub generation: u64,
    /// The entries the change added, deleted or renewed (by name).
    #[serde(default)]
    pub names: Vec<String>,
    /// Rules that cover protected traffic (protection wins there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// A plan sent `if_attached` found an interface not attached: nothing was done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_attached: bool,
}

/// `POST /v1/plan`: the coordinator's additive apply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    pub plan: NodePlan,
    /// `"10m"`, `"none"`; default 10m.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Only if every interface is attached already; else nothing is done and the answer
    /// says `not_attached` (the coordinator attaches every node first, then applies).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_attached: bool,
}

/// `POST /v1/heal`: `cluster heal` in one request (the agent picks the coordinator's
/// partitions and impairment rules itself).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealRequest {
    /// Only entries of these names (any when empty).
    #[serde(default)]
    pub names: Vec<String>,
    /// The cluster's nodes: entries `NAME.from-PEER.v4` name one of them.
    pub peers: Vec<String>,
}

/// `POST /v1/delete`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    pub names: Vec<String>,
    /// Only entries of this kind; default any.
    #[serde(default)]
    pub kind: Option<Kind>,
}

/// `POST /v1/renew`: every field optional (default: the lease of the last `PUT /v1/ruleset`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// Default: the entries of the lease, or every rule and partition.
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// `"5s"`, `"none"`; default: the lease.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// The lease of the set the last `PUT /v1/ruleset` put, while it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseView {
    pub lease_ms: u64,
    pub names: Vec<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    pub generation: u64,
    /// Interfaces netfault is attached to on the node.
    pub attached: Vec<String>,
    /// The interfaces the agent serves (`--iface`): a plan may attach only these.
    pub ifaces: Vec<String>,
    /// Live rules and partitions.
    pub faults: Vec<FaultView>,
    /// Labels of the protections.
    pub protected: Vec<String>,
    pub lease: Option<LeaseView>,
    pub version: String,
    /// Live pauses on the agent's host (`POST /v1/pauses`, `netfault pause`).
    #[serde(default)]
    pub pauses: Vec<crate::pause::node::View>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FaultView {
    pub name: String,
    pub kind: Kind,
    /// Milliseconds left; `None`: no expiry.
    pub expires_in_ms: Option<u64>,
    /// The entry as the rule-set schema writes it (`cluster verify` reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<crate::spec::RuleSpec>,
}

/// Every error response: `{"error": "...", "field": "rule[0].drop"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A TTL as the API writes it: `"10m"`, `"none"`.
pub fn ttl_text(ttl: Ttl) -> String {
    match ttl {
        Ttl::Never => "none".into(),
        Ttl::For(d) => humantime::format_duration(d).to_string(),
    }
}

/// What went wrong talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The token file cannot be opened, or is not private to this user.
    #[error("token file {0}")]
    Secret(#[from] SecretError),
    #[error("read the token file {path}: {source}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {0} is empty")]
    EmptyToken(String),
    #[error("CA file {path}: {msg}")]
    Ca { path: String, msg: String },
    #[error("{url}: {msg}")]
    Transport { url: String, msg: String },
    #[error("{url}: the agent answered {status}: {}{}", body.error, body.field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Status {
        url: String,
        status: u16,
        body: ErrorBody,
    },
    #[error("{url}: unexpected answer: {msg}")]
    Protocol { url: String, msg: String },
}

/// Reads a bearer token file: its content, surrounding white space trimmed. The file is
/// opened once and must be private to this process's user ([`read_private`]).
pub fn read_token(path: &Path) -> Result<String, AgentError> {
    let shown = path.display().to_string();
    let raw = read_private(path)?;
    let t = String::from_utf8(raw).map_err(|_| AgentError::Token {
        path: shown.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(AgentError::EmptyToken(shown));
    }
    Ok(t)
}

/// Loads the certificates of a PEM bundle as roots.
fn roots(path: &Path) -> Result<ureq::tls::RootCerts, AgentError> {
    let ca = |msg: String| AgentError::Ca {
        path: path.display().to_string(),
        msg,
    };
    let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| ca(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(ca("no certificate in it".into()));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

/// How long an idle connection to an agent is reused: under the agent's head timeout
/// (`agent::HEAD_TIMEOUT`, 5 s), after which the agent closes it.
pub const IDLE_REUSE: Duration = Duration::from_secs(4);

/// One agent, as the coordinator talks to it.
pub struct Client {
    pub base: String,
    token: String,
    http: ureq::Agent,
}

impl Client {
    /// A client for the agent at `url`; `ca_file` verifies its certificate (https only;
    /// default: the web PKI's roots). Agents are reached directly, never through a proxy.
    pub fn new(
        url: &AgentUrl,
        token_file: &Path,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let token = read_token(token_file)?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = ca_file {
            tls = tls.root_certs(roots(ca)?);
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            // Keep-alive: one connection per agent for the coordinator's life, reused while
            // the agent keeps it (it closes one idle for its head timeout, 5 s: reuse stops
            // short of that, so no request goes out on a connection being closed).
            .max_idle_age(IDLE_REUSE)
            .max_idle_connections_per_host(4)
            .https_only(url.https)
            .tls_config(tls.build())
            .build();
        Ok(Self {
            base: url.to_string(),
            token,
            http: config.into(),
        })
    }

    /// Sends a request; a 2xx answer is parsed as `T`, anything else is an [`AgentError`]
    /// with the agent's `{"error", "field"}`.
    pub fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, AgentError> {
        self.call_within(method, path, body, None)
    }

    /// [`call`](Self::call) with a deadline of its own (`None`: the client's).
    pub fn call_within<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Option<Duration>,
    ) -> Result<T, AgentError> {
        let url = format!("{}{path}", self.base);
        let bearer = format!("Bearer {}", self.token);
        let transport = |e: ureq::Error| AgentError::Transport {
            url: url.clone(),
            msg: e.to_string(),
        };
        let resp = match (method, body) {
            ("GET", _) => self.http.get(&url).header("Authorization", &bearer).call(),
            ("DELETE", _) => self
                .http
                .delete(&url)
                .header("Authorization", &bearer)
                .call(),
            (m, b) => {
                let req = match m {
                    "PUT" => self.http.put(&url),
                    _ => self.http.post(&url),
                }
                .header("Authorization", &bearer);
                let req = match timeout {
                    Some(t) => req.config().timeout_global(Some(t)).build(),
                    None => req,
                };
                match b {
                    Some(b) => req.send_json(b),
                    None => req.send_empty(),
                }
            }
        }
        .map_err(transport)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let text = body
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(transport)?;
        if !(200..300).contains(&status) {
            let body = serde_json::from_str(&text).unwrap_or(ErrorBody {
                error: text.trim().chars().take(200).collect(),
                field: None,
            });
            return Err(AgentError::Status { url, status, body });
        }
        serde_json::from_str(&text).map_err(|e| AgentError::Protocol {
            url: url.clone(),
            msg: format!("{e}: {}", text.chars().take(200).collect::<String>()),
        })
    }

    pub fn status(&self) -> Result<StatusView, AgentError> {
        self.call("GET", "/v1/status", None::<&()>)
    }

    /// `POST /v1/measure`, waiting for the probes to end (`timeout` past the usual).
    pub fn measure(
        &self,
        body: &MeasureBody,
        timeout: Duration,
    ) -> Result<MeasureAnswer, AgentError> {
        self.call_within("POST", "/v1/measure", Some(body), Some(timeout))
    }
}

/// The transport: a client, or why there is none (a token file that cannot be opened fails
/// the node's operations, so the coordinator names the node and rolls the others back).
pub struct Agent {
    client: Arc<Result<Client, String>>,
}

impl Agent {
    /// A token file that is not private to this user (owner, mode, type) is bad input, an
    /// error here (the caller names the key) before any node is touched; one that cannot be
    /// opened at all fails this node's operations, as an agent that does not answer would.
    pub fn new(
        url: &AgentUrl,
        token_file: &Path,
        ca_file: Option<&Path>,
    ) -> Result<Self, SecretError> {
        // Under the coordinator's per-node deadline.
        let timeout = crate::cluster::coordinator::NODE_TIMEOUT;
        let client = match Client::new(url, token_file, ca_file, timeout) {
            Err(AgentError::Secret(e)) if e.is_unprotected() => return Err(e),
            r => r.map_err(|e| e.to_string()),
        };
        Ok(Self {
            client: Arc::new(client),
        })
    }

    fn client(&self) -> Result<&Client, NodeError> {
        self.client
            .as_ref()
            .as_ref()
            .map_err(|e| NodeError::Agent(e.clone()))
    }

    /// A change (`POST`): the names the agent says it acted on.
    fn post(&self, path: &str, req: &impl Serialize) -> Result<Vec<String>, NodeError> {
        let c: Changed = self
            .client()?
            .call("POST", path, Some(req))
            .map_err(node_err)?;
        Ok(c.names)
    }
}

fn text(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

fn node_err(e: AgentError) -> NodeError {
    NodeError::Agent(e.to_string())
}

impl NodeTransport for Agent {
    fn kind(&self) -> &'static str {
        "agent"
    }

    fn apply(&self, plan: &NodePlan, ttl: Ttl) -> Result<Vec<String>, NodeError> {
        let req = PlanRequest {
            plan: plan.clone(),
            ttl: Some(ttl_text(ttl)),
            if_attached: false,
        };
        self.post("/v1/plan", &req)
    }

    fn applies_if_attached(&self) -> bool {
        true
    }

    fn apply_if_attached(
        &self,
        plan: &NodePlan,
        ttl: Ttl,
    ) -> Result<Option<Vec<String>>, NodeError> {
        let req = PlanRequest {
            plan: plan.clone(),
            ttl: Some(ttl_text(ttl)),
            if_attached: true,
        };
        match self
            .client()?
            .call::<Changed>("POST", "/v1/plan", Some(&req))
        {
            Ok(c) if c.not_attached => Ok(None),
            Ok(c) => Ok(Some(c.names)),
            // An agent older than `if_attached` refuses the field: it is asked the old way.
            Err(AgentError::Status {
                status: 400, body, ..
            }) if body.error.contains("if_attached") => Ok(None),
            Err(e) => Err(node_err(e)),
        }
    }

    fn delete(&self, names: &[String]) -> Result<Vec<String>, NodeError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let req = DeleteRequest {
            names: names.to_vec(),
            kind: None,
        };
        self.post("/v1/delete", &req)
    }

    fn heal(&self, select: &(dyn Fn(&str) -> bool + Sync)) -> Result<Vec<String>, NodeError> {
        let client = self.client()?;
        let st = client.status().map_err(node_err)?;
        let names: Vec<String> = st
            .faults
            .into_iter()
            .filter(|f| f.kind == Kind::Partition && select(&f.name))
            .map(|f| f.name)
            .collect();
        if names.is_empty() {
            return Ok(names);
        }
        let req = DeleteRequest {
            names,
            kind: Some(Kind::Partition),
        };
        self.post("/v1/delete", &req)
    }

    fn heal_cluster(
        &self,
        names: &[String],
        peers: &[String],
    ) -> Result<Option<Vec<String>>, NodeError> {
        let req = HealRequest {
            names: names.to_vec(),
            peers: peers.to_vec(),
        };
        match self
            .client()?
            .call::<Changed>("POST", "/v1/heal", Some(&req))
        {
            Ok(c) => Ok(Some(c.names)),
            // An agent older than `/v1/heal`: the coordinator picks, as before.
            Err(AgentError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(node_err(e)),
        }
    }

    fn renew(&self, names: &[String], ttl: Ttl) -> Result<Vec<String>, NodeError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let req = RenewRequest {
            names: Some(names.to_vec()),
            ttl: Some(ttl_text(ttl)),
        };
        self.post("/v1/renew", &req)
    }

    fn measure(
        &self,
        r: &super::MeasureRequest,
    ) -> Result<Option<Vec<crate::measure::Report>>, NodeError> {
        let body = MeasureBody::of(r);
        let timeout = crate::cluster::coordinator::NODE_TIMEOUT + r.length();
        let a = self.client()?.measure(&body, timeout).map_err(node_err)?;
        Ok(Some(a.peers))
    }

    fn pause(
        &self,
        req: &crate::pause::node::Request,
    ) -> Result<crate::pause::node::Started, NodeError> {
        self.client()?
            .call("POST", "/v1/pauses", Some(req))
            .map_err(node_err)
    }

    fn pauses(&self) -> Result<Vec<crate::pause::node::View>, NodeError> {
        let v: PausesView = self
            .client()?
            .call("GET", "/v1/pauses", None::<&()>)
            .map_err(node_err)?;
        Ok(v.pauses)
    }

    fn resume(&self, names: &[String]) -> Result<Vec<String>, NodeError> {
        let c = self.client()?;
        let mut done = Vec::new();
        for n in names {
            // Names are checked (letters, digits, '-', '_', '.'): nothing to escape in a path.
            match c.call::<crate::pause::node::View>(
                "DELETE",
                &format!("/v1/pauses/{n}"),
                None::<&()>,
            ) {
                Ok(_) => done.push(n.clone()),
                // Ended by itself meanwhile.
                Err(AgentError::Status { status: 404, .. }) => {}
                Err(e) => return Err(node_err(e)),
            }
        }
        Ok(done)
    }

    fn state(&self) -> Result<NodeState, NodeError> {
        let st = self.client()?.status().map_err(node_err)?;
        Ok(NodeState {
            attached: st.attached,
            faults: st
                .faults
                .into_iter()
                .map(|f| LiveFault {
                    name: f.name,
                    kind: f.kind,
                    ttl_left_s: f.expires_in_ms.map(|ms| ms / 1000),
                    spec: f.spec,
                })
                .collect(),
        })
    }
}
