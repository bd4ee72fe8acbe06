//! Client-side TLS: the certificate and key from `[tls]`, reloaded on SIGHUP.
//!
//! Handshakes take the identity current when they start, so a reload never touches a
//! connection already open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::Digest;
use tokio_rustls::TlsAcceptor;
use x509_cert::der::Decode;

/// The ALPN protocol of PostgreSQL's direct TLS (`sslnegotiation=direct`).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum TlsLoadError {
    #[error("{path}: cannot read certificate: {message}")]
    Cert { path: String, message: String },
    #[error("{path}: cannot read private key: {message}")]
    Key { path: String, message: String },
    #[error("{path}: holds no certificate")]
    NoCert { path: String },
    #[error("certificate and key do not make a TLS identity: {0}")]
    Config(#[from] rustls::Error),
}

/// One loaded certificate and key.
pub struct Identity {
    pub acceptor: TlsAcceptor,
    /// The `tls-server-end-point` channel binding data: the certificate's hash
    /// (RFC 5929), as clients compute it for SCRAM-SHA-256-PLUS.
    pub end_point: Vec<u8>,
}

/// The current identity, swapped whole on reload.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<Identity>,
}

impl ServerTls {
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsLoadError> {
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(load_identity(cert, key)?),
        })
    }

    pub fn identity(&self) -> Arc<Identity> {
        self.current.load_full()
    }

    /// Reads the files again; on failure the previous identity keeps serving.
    pub fn reload(&self) -> Result<(), TlsLoadError> {
        let identity = load_identity(&self.cert, &self.key)?;
        self.current.store(Arc::new(identity));
        Ok(())
    }

    /// Reloads on every SIGHUP, logging the outcome. Runs until the runtime stops.
    pub fn reload_on_hangup(self: &Arc<Self>) {
        let tls = Arc::downgrade(self);
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; TLS certificates are not reloaded");
            return;
        };
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let Some(tls) = tls.upgrade() else { return };
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %tls.cert.display(), "TLS certificate reloaded")
                    }
                    Err(e) => tracing::error!(
                        "TLS reload refused, previous certificate keeps serving: {e}"
                    ),
                }
            }
        });
    }
}

fn load_identity(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsLoadError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| TlsLoadError::Cert {
            path: cert_path.display().to_string(),
            message: e.to_string(),
        })?;
    let Some(leaf) = certs.first() else {
        return Err(TlsLoadError::NoCert {
            path: cert_path.display().to_string(),
        });
    };
    let end_point = end_point_hash(leaf);
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsLoadError::Key {
        path: key_path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Identity {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        end_point,
    })
}

/// RFC 5929: the certificate hashed with its signature's hash function, SHA-256 when
/// that is MD5 or SHA-1 (or cannot be told).
pub fn end_point_hash(cert: &[u8]) -> Vec<u8> {
    const SHA384: &[&str] = &["1.2.840.113549.1.1.12", "1.2.840.10045.4.3.3"];
    const SHA512: &[&str] = &["1.2.840.113549.1.1.13", "1.2.840.10045.4.3.4"];
    let oid = x509_cert::Certificate::from_der(cert)
        .map(|c| c.signature_algorithm.oid.to_string())
        .unwrap_or_default();
    if SHA384.contains(&oid.as_str()) {
        sha2::Sha384::digest(cert).to_vec()
    } else if SHA512.contains(&oid.as_str()) {
        sha2::Sha512::digest(cert).to_vec()
    } else {
        sha2::Sha256::digest(cert).to_vec()
    }
}
