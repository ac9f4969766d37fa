//! `netfault agent`: the node side of the agent transport. An HTTP/1.1 server (axum on hyper,
//! optionally TLS with rustls) that drives this namespace's pinned controller for a coordinator
//! or any script, under `/v1`, every request authenticated by a bearer token.
//!
//! - [`routes`]: the API (status, rule sets with a lease, the coordinator's additive plans,
//!   delete, renew, stats, events) and its limits (authentication before anything else, body
//!   size, time, connections per peer, request-head deadline);
//! - [`auth`]: the token file and the constant-time check;
//! - [`metrics`]: `/metrics` in the Prometheus text format;
//! - [`pause`](mod@pause): pauses of processes on the agent's host (`/v1/pauses`);
//! - [`tls`]: the rustls server configuration.
//!
//! The agent holds no fault itself: every entry lives in the pinned maps with an expiry the
//! data path checks, so `kill -9` leaves faults that end with their lifetime (or lease). A clean
//! stop (SIGTERM, SIGINT) deletes what the agent added. Changes are serialised: one at a time,
//! in arrival order, each under the controller's lock.
pub mod auth;
pub mod measure;
pub mod metrics;
pub mod pause;
pub mod routes;
pub mod tls;

use std::{
    collections::{BTreeSet, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    control::{self, Ctl, state::State},
    spec::{SpecError, protection},
};

/// Request bodies larger than this are refused (413).
pub const MAX_BODY: usize = 1 << 20;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections one address may hold open at once (before authentication, a stranger's are
/// indistinguishable from the coordinator's): more are closed at once, so one peer cannot take
/// every slot.
pub const MAX_PER_PEER: usize = 8;
/// The TLS handshake and each request head must arrive within this (or `--request-timeout`,
/// when shorter): a connection that sends nothing, or half a head, is closed by then.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Refusals are logged as at most one `refused` event per this long.
pub const REFUSED_EVERY: Duration = Duration::from_secs(10);
/// Events kept for `GET /v1/events`.
pub const EVENTS_KEPT: usize = 1024;

/// What `netfault agent` was asked for.
#[derive(Debug, Clone)]
pub struct Config {
    /// The namespace the process has entered (its state key), as `--netns` named it.
    pub netns: Option<String>,
    pub listen: SocketAddr,
    pub token_file: PathBuf,
    /// The interfaces the agent attaches to and serves: a plan may name only these.
    pub ifaces: Vec<String>,
    /// `(certificate, key)` PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bounds reading a request (headers, body, TLS handshake) and waiting for the change
    /// before it.
    pub request_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input (token file, TLS files, interfaces): exit 2.
    #[error(transparent)]
    Spec(SpecError),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("start the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Self {
        Error::Spec(e)
    }
}

/// How the agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Interrupted,
    Terminated,
}

/// The lease of the set the last `PUT /v1/ruleset` put: its entries live `ttl` past the last
/// renewal.
#[derive(Debug, Clone)]
pub struct Lease {
    pub ttl: Duration,
    pub names: Vec<String>,
}

/// What changes share, behind one lock: changes are serialised.
#[derive(Debug, Default)]
pub struct Core {
    /// Grows by one with every change of the node's rules (the agent's or anyone's).
    pub generation: u64,
    /// Of the rules the generation describes.
    fingerprint: u64,
    pub lease: Option<Lease>,
    /// Entries this agent added and that a clean stop deletes.
    pub owned: BTreeSet<String>,
}

/// A digest of the rule entries (specs, expiries): changes whenever the rule set does.
pub fn fingerprint(state: &State) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    serde_json::to_string(&state.rules)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

impl Core {
    /// Counts a change made behind the agent's back (the CLI, or the coordinator's netns
    /// transport) as a generation of its own.
    pub fn sync(&mut self, state: &State) {
        let f = fingerprint(state);
        if f != self.fingerprint {
            self.generation += 1;
            self.fingerprint = f;
        }
    }
}

/// One entry of `GET /v1/events`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// `start`, `ruleset`, `plan`, `delete`, `renew`, `expired`, `refused` (at most one per
    /// [`REFUSED_EVERY`], counting what was refused), `stop`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The last [`EVENTS_KEPT`] events, and a watch on the newest sequence number for long polls.
pub struct Events {
    log: Mutex<VecDeque<Event>>,
    newest: tokio::sync::watch::Sender<u64>,
}

impl Events {
    fn new() -> Self {
        Self {
            log: Mutex::new(VecDeque::new()),
            newest: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn push(
        &self,
        kind: &'static str,
        generation: Option<u64>,
        names: Vec<String>,
        detail: Option<String>,
    ) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = *self.newest.borrow() + 1;
        log.push_back(Event {
            seq,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind,
            generation,
            names,
            detail,
        });
        while log.len() > EVENTS_KEPT {
            log.pop_front();
        }
        self.newest.send_replace(seq);
    }

    /// Events after `since`, and the sequence number to ask after next.
    pub fn since(&self, since: u64) -> (Vec<Event>, u64) {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let v: Vec<Event> = log.iter().filter(|e| e.seq > since).cloned().collect();
        (v, *self.newest.borrow())
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

/// Everything the request handlers share.
pub struct Shared {
    pub netns: Option<String>,
    pub ifaces: Vec<String>,
    pub token: auth::Token,
    pub timeout: Duration,
    pub core: Arc<tokio::sync::Mutex<Core>>,
    pub events: Events,
    pub requests: metrics::Requests,
    pub refused: metrics::Refused,
    /// The last measurement's reports, for `/metrics`.
    pub measured: metrics::Measured,
}

/// The protections for the agent's own port, whatever a coordinator's plan says: TCP and UDP
/// to and from it (on every address when it listens on all).
fn own_protections(listen: SocketAddr) -> Vec<(IpNet, Option<u16>)> {
    let ip = listen.ip();
    let nets: Vec<IpNet> = if ip.is_unspecified() {
        let mut v = vec![IpNet::from(ip)];
        if ip.is_ipv6() {
            v.push(IpNet::V4(ipnet::Ipv4Net::default()));
        }
        v.into_iter()
            .map(|n| IpNet::new(n.addr(), 0).unwrap_or(n))
            .collect()
    } else {
        vec![IpNet::from(ip)]
    };
    nets.into_iter().map(|n| (n, Some(listen.port()))).collect()
}

/// Checks the token and TLS files, attaches to the interfaces, protects the agent's port, then
/// serves until SIGTERM or SIGINT. `ready` is told the URL once the socket listens.
pub fn run(cfg: Config, ready: impl FnOnce(&str)) -> Result<Stopped, Error> {
    // Bad input first: nothing changes on the node before these pass.
    let token = auth::Token::load(&cfg.token_file)?;
    let tls = cfg
        .tls
        .as_ref()
        .map(|(c, k)| tls::server_config(c, k))
        .transpose()?;
    let std_listener = std::net::TcpListener::bind(cfg.listen).map_err(|source| Error::Listen {
        addr: cfg.listen,
        source,
    })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| Error::Listen {
            addr: cfg.listen,
            source,
        })?;

    let mut core = Core::default();
    {
        let mut ctl = Ctl::open(cfg.netns.as_deref())?;
        ctl.attach(&cfg.ifaces, None)?;
        let own = own_protections(cfg.listen);
        ctl.protect(&own)?;
        for (net, port) in &own {
            let label = protection::label(net, *port);
            for r in protection::endpoint(&label, *net, *port) {
                if ctl.state.find(&r.name).is_some() {
                    core.owned.insert(r.name);
                }
            }
        }
        // Generations go on growing across restarts (milliseconds since the epoch at start, +1
        // per change), so a precondition from an earlier run never matches by chance.
        core.generation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        core.fingerprint = fingerprint(&ctl.state);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let sig = |kind, name| {
            signal(kind).map_err(|source| Error::Signal {
                signal: name,
                source,
            })
        };
        let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
        let mut int = sig(SignalKind::interrupt(), "SIGINT")?;
        let listener =
            tokio::net::TcpListener::from_std(std_listener).map_err(|source| Error::Listen {
                addr: cfg.listen,
                source,
            })?;
        let generation = core.generation;
        let shared = Arc::new(Shared {
            netns: cfg.netns.clone(),
            ifaces: cfg.ifaces.clone(),
            token,
            timeout: cfg.request_timeout,
            core: Arc::new(tokio::sync::Mutex::new(core)),
            events: Events::new(),
            requests: metrics::Requests::default(),
            refused: metrics::Refused::default(),
            measured: metrics::Measured::default(),
        });
        shared.events.push(
            "start",
            Some(generation),
            cfg.ifaces.clone(),
            Some(format!("listening on {}", cfg.listen)),
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        ready(&format!("{scheme}://{}", cfg.listen));
        let router = routes::router(Arc::clone(&shared));
        tokio::spawn(routes::watch_expiry(Arc::clone(&shared)));
        tokio::spawn(routes::report_refusals(Arc::clone(&shared)));
        let head_timeout = HEAD_TIMEOUT.min(cfg.request_timeout);
        let refused = shared.refused.clone();
        let stopped = routes::serve(
            listener,
            router,
            tls,
            cfg.request_timeout,
            head_timeout,
            refused,
            async {
                tokio::select! {
                    _ = term.recv() => Stopped::Terminated,
                    _ = int.recv() => Stopped::Interrupted,
                }
            },
        )
        .await;
        routes::clean_stop(&shared).await;
        Ok(stopped)
    })
}
