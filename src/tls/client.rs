//! Server-side TLS: how the proxy reaches a host (`hosts.NAME.tls`), as libpq's
//! `sslmode` does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::protocol::startup::SSL_REQUEST_CODE;

/// `hosts.NAME.tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS if the server offers it, without checking its certificate.
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS with a certificate signed by the CA file; any name.
    VerifyCa,
    /// TLS with a certificate signed by the CA file, for the host's name.
    VerifyFull,
}

/// How to reach one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BackendTls {
    pub mode: BackendTlsMode,
    pub ca_file: Option<PathBuf>,
    /// The name sent as SNI and checked by `verify-full`: the address's host part.
    pub server_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    #[error("the server does not accept TLS connections (hosts.*.tls is {0:?})")]
    NotOffered(BackendTlsMode),
    #[error("{path}: cannot read CA certificates: {message}")]
    Ca { path: String, message: String },
    #[error("\"{0}\" is not a valid TLS server name")]
    Name(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error(transparent)]
    Config(#[from] rustls::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Asks for TLS as `tls.mode` says and returns the stream to speak the protocol on:
/// the socket, or for TLS the near end of a pipe to the TLS stream (`tls::pipe`).
pub async fn negotiate(
    mut stream: TcpStream,
    tls: &BackendTls,
) -> Result<TcpStream, BackendTlsError> {
    if tls.mode == BackendTlsMode::Disable {
        return Ok(stream);
    }
    let config = client_config(tls)?;
    let name = ServerName::try_from(tls.server_name.clone())
        .map_err(|_| BackendTlsError::Name(tls.server_name.clone()))?;
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    stream.write_all(&request).await?;
    match stream.read_u8().await? {
        b'S' => {}
        _ if tls.mode == BackendTlsMode::Prefer => return Ok(stream),
        _ => return Err(BackendTlsError::NotOffered(tls.mode)),
    }
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(BackendTlsError::Handshake)?;
    Ok(super::pipe(stream)?)
}

fn client_config(tls: &BackendTls) -> Result<ClientConfig, BackendTlsError> {
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = match tls.mode {
        BackendTlsMode::Disable | BackendTlsMode::Prefer | BackendTlsMode::Require => {
            Arc::new(AnyCertificate(super::provider()))
        }
        BackendTlsMode::VerifyCa | BackendTlsMode::VerifyFull => {
            let roots = Arc::new(roots(tls.ca_file.as_deref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, super::provider())
                .build()
                .map_err(|e| BackendTlsError::Ca {
                    path: display(tls.ca_file.as_deref()),
                    message: e.to_string(),
                })?;
            match tls.mode {
                BackendTlsMode::VerifyCa => Arc::new(AnyName(webpki)),
                _ => webpki,
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn display(path: Option<&Path>) -> String {
    path.map_or_else(|| "(no tls_ca_file)".into(), |p| p.display().to_string())
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, BackendTlsError> {
    let path = ca_file.ok_or_else(|| BackendTlsError::Ca {
        path: display(None),
        message: "verify-ca and verify-full need hosts.*.tls_ca_file".into(),
    })?;
    let ca_error = |message: String| BackendTlsError::Ca {
        path: path.display().to_string(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))? {
        roots
            .add(cert.map_err(|e| ca_error(e.to_string()))?)
            .map_err(|e| ca_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_error("holds no certificate".into()));
    }
    Ok(roots)
}

/// `require` / `prefer`: encryption without authentication of the server, as libpq's
/// modes of those names. The handshake signature is still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA file; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
