//! `netfault agent --listen ADDR:PORT --token-file FILE --iface IFACE[,IFACE] [--tls-cert F --tls-key F]`
use std::{io::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

use netfault::agent::{self, Config, Stopped};

use super::Done;

/// Serve this namespace to a coordinator (or any script) over HTTP: JSON under /v1, every
/// request with `Authorization: Bearer TOKEN`. Attaches to the interfaces at start and keeps its
/// own port protected. Faults live in the kernel with their lifetimes: `kill -9` leaves them to
/// expire; SIGTERM or Ctrl-C deletes what the agent added.
#[derive(clap::Args)]
pub struct Args {
    /// Address and port to listen on (`192.0.2.1:7070`, `[2001:db8::1]:7070`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// File holding the bearer token (at least 16 characters); only its owner may read it.
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Interfaces to attach to and serve; a coordinator's plan may name only these.
    #[arg(long, value_name = "IFACE", value_delimiter = ',', required = true)]
    pub iface: Vec<String>,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate (only its owner may read it).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Time a client has to send a request (headers, body, TLS handshake), and a request to
    /// wait for the change before it.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::args::parse_interval)]
    pub request_timeout: Duration,
}

pub fn run(a: Args, ns: Option<&str>) -> anyhow::Result<Done> {
    let tls = a.tls_cert.zip(a.tls_key);
    if tls.is_none() && !a.listen.ip().is_loopback() {
        super::warn(format!(
            "serving plain HTTP on {}: the token crosses the network in the clear (--tls-cert, --tls-key)",
            a.listen
        ));
    }
    let cfg = Config {
        netns: ns.map(str::to_owned),
        listen: a.listen,
        token_file: a.token_file,
        ifaces: a.iface,
        tls,
        request_timeout: a.request_timeout,
    };
    let ifaces = cfg.ifaces.join(", ");
    let stopped = agent::run(cfg, |url| {
        let _ = writeln!(
            std::io::stderr(),
            "netfault: agent listening on {url} (interfaces {ifaces})"
        );
    })
    .map_err(|e| match e {
        // Bad input exits 2: the error itself, not wrapped, so its kind is seen.
        agent::Error::Spec(s) => anyhow::Error::from(s),
        agent::Error::Control(c) => anyhow::Error::from(c),
        e => anyhow::Error::from(e),
    })?;
    Ok(match stopped {
        Stopped::Interrupted => Done::Interrupted,
        Stopped::Terminated => Done::Terminated,
    })
}
