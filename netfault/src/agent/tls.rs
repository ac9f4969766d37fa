//! TLS for the agent (`--tls-cert`, `--tls-key`): rustls with the ring provider, HTTP/1.1 only.
use std::{path::Path, sync::Arc};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use crate::spec::SpecError;

/// The server's TLS configuration from a PEM certificate chain and its private key (which only
/// its owner may read). Every problem is bad input naming the option.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, SpecError> {
    let bad = |field: &str, path: &Path, msg: String| {
        SpecError::new(field, format!("{}: {msg}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("--tls-cert", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("--tls-cert", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("--tls-cert", cert, "no certificate in it".into()));
    }
    let key_pem = super::auth::read_private_file("--tls-key", key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| bad("--tls-key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SpecError::new("--tls-cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            bad(
                "--tls-key",
                key,
                format!("does not go with the certificate: {e}"),
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
