//! A container engine's API (Docker's, which Podman serves too) over its Unix socket:
//! HTTP/1.1 with hyper, one `GET /containers/{name}/json` per lookup, no CLI forked.
//!
//! The socket: `$DOCKER_HOST` when it is `unix:///PATH`, else the first of /run/docker.sock
//! and /run/podman/podman.sock that exists. `sudo` drops `DOCKER_HOST` unless told to keep it.
use std::{io, path::PathBuf, time::Duration};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use serde::Deserialize;

use crate::control::netns::NetnsError;

/// Where an engine listens when `DOCKER_HOST` does not say: Docker's, then Podman's (root).
pub const SOCKETS: &[&str] = &["/run/docker.sock", "/run/podman/podman.sock"];

/// Connect, request and answer together: an engine that accepts and then hangs is a failure,
/// not a wait.
const TIMEOUT: Duration = Duration::from_secs(5);
/// An inspect document is a few kilobytes.
const MAX_BODY: usize = 4 << 20;

/// A container engine's API socket.
#[derive(Debug, Clone)]
pub struct Engine {
    pub socket: PathBuf,
}

/// What netfault needs of a container.
#[derive(Debug, Clone)]
pub struct Container {
    /// The engine's name for it, without Docker's leading '/'.
    pub name: String,
    /// The full ID (64 hex digits).
    pub id: String,
    pub pid: i32,
    /// Frozen by the engine (`docker pause`): its process still has its namespace.
    pub paused: bool,
}

impl Container {
    /// How `status` names its namespace.
    pub fn label(&self) -> String {
        format!(
            "container {}, id {}",
            self.name,
            &self.id[..self.id.len().min(12)]
        )
    }
}

#[derive(Deserialize)]
struct Inspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "State")]
    state: State,
}

#[derive(Deserialize)]
struct State {
    #[serde(rename = "Running", default)]
    running: bool,
    #[serde(rename = "Paused", default)]
    paused: bool,
    #[serde(rename = "Pid", default)]
    pid: i32,
    #[serde(rename = "Status", default)]
    status: String,
}

/// Docker's and Podman's names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`) and IDs (hex, or a prefix): what
/// may go into the request path unescaped.
pub fn valid_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        && name.len() <= 255
}

/// The socket `DOCKER_HOST` names (its value given), or why not.
pub fn socket_from(docker_host: Option<&str>) -> Result<Option<PathBuf>, String> {
    match docker_host.map(str::trim).filter(|h| !h.is_empty()) {
        None => Ok(None),
        Some(h) => match h.strip_prefix("unix://") {
            Some(p) if p.starts_with('/') => Ok(Some(PathBuf::from(p))),
            _ => Err(format!(
                "DOCKER_HOST={h}: netfault reaches an engine on this host through its Unix socket only (unix:///PATH)"
            )),
        },
    }
}

impl Engine {
    /// The engine's socket: `$DOCKER_HOST`'s, else the first of [`SOCKETS`] that exists.
    /// Refused (bad input) when there is none, naming the container `name` asked for.
    pub fn locate(name: &str) -> Result<Engine, NetnsError> {
        let env = std::env::var("DOCKER_HOST").ok();
        let found = socket_from(env.as_deref())
            .map_err(|m| NetnsError::Container(format!("{name}: {m}")))?;
        if let Some(socket) = found {
            return Ok(Engine { socket });
        }
        SOCKETS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .map(|socket| Engine { socket })
            .ok_or_else(|| {
                NetnsError::Container(format!(
                    "{name}: no container engine is running (neither {} exists; set DOCKER_HOST=unix:///PATH for another socket)",
                    SOCKETS.join(" nor ")
                ))
            })
    }

    /// The container named `name` (a name or an ID), which must be running.
    pub fn running(&self, name: &str) -> Result<Container, NetnsError> {
        let refuse = |why: String| NetnsError::Container(format!("{name}: {why}"));
        if !valid_name(name) {
            return Err(refuse(
                "is not a container name or ID (letters, digits, '_', '.', '-')".into(),
            ));
        }
        let sock = self.socket.display();
        let (status, body) = self
            .get(&format!("/containers/{name}/json"))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    refuse(format!("the container engine is not running ({sock}: {e})"))
                }
                _ => NetnsError::Engine(format!("{sock}: {e}")),
            })?;
        match status {
            200 => {}
            404 => return Err(refuse(format!("no such container (engine at {sock})"))),
            s => {
                return Err(NetnsError::Engine(format!(
                    "{sock}: GET /containers/{name}/json answered {s}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
                )));
            }
        }
        let doc: Inspect = serde_json::from_slice(&body).map_err(|e| {
            NetnsError::Engine(format!(
                "{sock}: an inspect document netfault cannot read: {e}"
            ))
        })?;
        let shown = doc.name.trim_start_matches('/').to_string();
        if !doc.state.running || doc.state.pid <= 0 {
            let st = if doc.state.status.is_empty() {
                "stopped"
            } else {
                doc.state.status.as_str()
            };
            return Err(refuse(format!("is not running (status: {st})")));
        }
        Ok(Container {
            name: if shown.is_empty() {
                name.to_string()
            } else {
                shown
            },
            id: doc.id,
            pid: doc.state.pid,
            paused: doc.state.paused,
        })
    }

    /// One GET: its status and body. Runs on a thread of its own with its own single-threaded
    /// runtime: callers may be inside a runtime (the cluster's transports) or about to setns.
    fn get(&self, path: &str) -> io::Result<(u16, Vec<u8>)> {
        let socket = self.socket.clone();
        let path = path.to_string();
        std::thread::scope(|s| {
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    tokio::time::timeout(TIMEOUT, request(&socket, &path))
                        .await
                        .unwrap_or_else(|_| {
                            Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("no answer within {} s", TIMEOUT.as_secs()),
                            ))
                        })
                })
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("engine request thread panicked")))
        })
    }
}

async fn request(socket: &std::path::Path, path: &str) -> io::Result<(u16, Vec<u8>)> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(io::Error::other)?;
    let res = sender.send_request(req).await.map_err(io::Error::other)?;
    let status = res.status().as_u16();
    let body = Limited::new(res.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes()
        .to_vec();
    drop(sender);
    conn.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web", "n1", "a.b-c_d", "4bdf46f5ac8c"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", "a/b", "../x", "a?b", "a b", "web%2f"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn docker_host() {
        assert_eq!(socket_from(None), Ok(None));
        assert_eq!(socket_from(Some("")), Ok(None));
        assert_eq!(
            socket_from(Some("unix:///tmp/d.sock")),
            Ok(Some(PathBuf::from("/tmp/d.sock")))
        );
        assert!(socket_from(Some("tcp://1.2.3.4:2375")).is_err());
        assert!(socket_from(Some("unix://rel.sock")).is_err());
    }

    #[test]
    fn inspect_document() {
        let doc: Inspect = serde_json::from_str(
            r#"{"Id":"4bdf46f5ac8c3f7b","Name":"/web","State":{"Status":"running","Running":true,"Paused":false,"Pid":9128,"ExitCode":0},"Config":{}}"#,
        )
        .unwrap();
        assert_eq!((doc.state.running, doc.state.pid), (true, 9128));
        assert_eq!(doc.name, "/web");
        assert_eq!(doc.id, "4bdf46f5ac8c3f7b");
    }
}
