//! TLS with rustls (the `ring` provider, so the build needs no cmake).
//!
//! The certificate chain and private key are PEM files named in the config;
//! ALPN offers `h2` first, then `http/1.1`, so browsers and CDNs negotiate
//! HTTP/2 where they can.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::serve::ServeError;

/// A TLS acceptor for the PEM chain at `cert_path` and key at `key_path`.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, ServeError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| ServeError::Tls(format!("reading {}: {e}", cert_path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("parsing {}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{} holds no certificate",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| ServeError::Tls(format!("reading key {}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
