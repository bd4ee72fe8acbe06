//! Test certificates made in the test (rcgen), TLS clients (tokio-postgres over
//! rustls, psql), and a log capture to check that no password is ever logged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::{Client, Config};

/// A certificate authority that exists only for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses): (cert, key) PEM.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "pgtenant test server");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA as `<prefix>-ca.pem` and a server certificate for `names` as
    /// `<prefix>.crt` / `<prefix>.key` in `dir`; returns (ca, cert, key) paths.
    pub fn write(&self, dir: &Path, prefix: &str, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
        let (cert, key) = self.issue(names);
        let paths = (
            dir.join(format!("{prefix}-ca.pem")),
            dir.join(format!("{prefix}.crt")),
            dir.join(format!("{prefix}.key")),
        );
        std::fs::write(&paths.0, self.pem()).unwrap();
        std::fs::write(&paths.1, cert).unwrap();
        std::fs::write(&paths.2, key).unwrap();
        paths
    }
}

/// Connects over TLS, checking the proxy's certificate against `ca_pem` and the host
/// name in `config` (what sslmode=verify-full checks).
pub async fn connect_tls(config: &Config, ca_pem: &str) -> Result<Client, tokio_postgres::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = config.clone();
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs psql with a libpq connection string (`conninfo`) and SQL; returns stdout, or
/// stderr as the error.
pub async fn psql(conninfo: &str, sql: &str, password: Option<&str>) -> Result<String, String> {
    let mut command = tokio::process::Command::new("/usr/bin/psql");
    command
        .args(["-X", "-At", "-d", conninfo, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGDATABASE")
        .env_remove("PGUSER")
        .stdin(std::process::Stdio::null());
    match password {
        Some(password) => command.env("PGPASSWORD", password),
        None => command.env_remove("PGPASSWORD"),
    };
    let out = command.output().await.expect("running psql");
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

/// Everything the proxy logs in this test process, at debug level.
pub fn captured_logs() -> String {
    let buf = log_buffer();
    let text = buf.lock().unwrap();
    String::from_utf8_lossy(&text).into_owned()
}

/// Starts capturing the proxy's log (once per process; call before starting it).
pub fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("pgtenant=trace"))
            .with_writer(|| Capture)
            .with_ansi(false)
            .try_init();
    });
}

fn log_buffer() -> &'static Mutex<Vec<u8>> {
    static BUF: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    BUF.get_or_init(Mutex::default)
}

struct Capture;

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        log_buffer().lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fails if any of `secrets` appears in the proxy's log or in a host's server log.
pub fn assert_not_logged(env: &super::Env, secrets: &[&str]) {
    let mut logs = vec![("pgtenant".to_string(), captured_logs())];
    for host in &env.hosts {
        let text = std::fs::read_to_string(host.log_file()).unwrap_or_default();
        logs.push((host.name().to_string(), text));
    }
    assert!(
        logs[0].1.contains("pgtenant listening"),
        "the log was captured"
    );
    for (name, text) in &logs {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{name} log holds a password: {secret}"
            );
        }
    }
}
