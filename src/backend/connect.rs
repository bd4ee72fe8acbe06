//! Opening a server connection for one tenant.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::auth::authenticate;
use super::conn::ServerConn;
use crate::auth::ScramKeys;
use crate::protocol::messages::{self, ErrorFields};
use crate::protocol::startup::{CancelKey, CANCEL_REQUEST_CODE};
use crate::secret::Secret;
use crate::tls::client::{negotiate, BackendTls, BackendTlsError};

/// Everything needed to open a server connection for a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendTarget {
    pub address: String,
    pub database: String,
    pub user: String,
    pub password: Option<Secret>,
    pub search_path: Vec<String>,
    pub tls: BackendTls,
    /// For a role without a stored password: the SCRAM keys its clients proved
    /// (auth passthrough), shared by every pool logging in as that role on the host.
    pub keys: Option<KeySlot>,
}

/// The latest SCRAM keys proven for one role on one host. Compared by identity, so a
/// new key does not look like a changed target.
#[derive(Clone, Default)]
pub struct KeySlot(std::sync::Arc<std::sync::RwLock<Option<ScramKeys>>>);

impl KeySlot {
    pub fn set(&self, keys: ScramKeys) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(keys);
    }

    pub fn get(&self) -> Option<ScramKeys> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl PartialEq for KeySlot {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for KeySlot {}

impl std::hash::Hash for KeySlot {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::sync::Arc::as_ptr(&self.0).hash(state)
    }
}

impl std::fmt::Debug for KeySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySlot(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("no answer from {address} within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("server refused: {}", .0.message)]
    Refused(ErrorFields),
    #[error("server requested {0}, which the proxy cannot answer")]
    UnsupportedAuth(String),
    #[error("server asked for a password, but the registry holds none for this tenant")]
    MissingPassword,
    #[error("authentication with the server failed: {0}")]
    Auth(String),
    #[error(transparent)]
    Tls(#[from] BackendTlsError),
    #[error("server broke protocol: {0}")]
    Protocol(String),
    #[error("server connection lost: {0}")]
    Io(#[from] std::io::Error),
}

impl BackendError {
    /// Whether the host itself could not be reached (as opposed to refusing us).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            BackendError::Connect { .. } | BackendError::Timeout { .. } | BackendError::Io(_)
        )
    }
}

/// Quotes a schema name for search_path when it is not a plain lower-case identifier.
fn quote_ident(name: &str) -> String {
    let plain = name.bytes().enumerate().all(|(i, b)| {
        b.is_ascii_lowercase() || b == b'_' || (i > 0 && (b.is_ascii_digit() || b == b'$'))
    });
    if plain && !name.is_empty() {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The `options` startup value that sets search_path: `-c search_path=a,"b c"`.
/// Backslash and whitespace are escaped because the server splits options on spaces.
pub fn search_path_option(schemas: &[String]) -> String {
    let value = schemas
        .iter()
        .map(|s| quote_ident(s))
        .collect::<Vec<_>>()
        .join(",");
    let mut option = String::from("-c search_path=");
    for c in value.chars() {
        if c == '\\' || c.is_whitespace() {
            option.push('\\');
        }
        option.push(c);
    }
    option
}

/// `SET search_path TO "a", "b"`: every schema quoted (a schema may be named like a
/// keyword), for a server shared by schema tenants.
pub fn search_path_statement(schemas: &[String]) -> String {
    let quoted: Vec<String> = schemas
        .iter()
        .map(|s| format!("\"{}\"", s.replace('"', "\"\"")))
        .collect();
    format!("SET search_path TO {}", quoted.join(", "))
}

/// Opens and authenticates a server connection; the whole exchange is bounded by
/// `timeout`, so a host that accepts TCP but never answers does not hang a client.
pub async fn connect(
    target: &BackendTarget,
    timeout: Duration,
    max_message: usize,
) -> Result<ServerConn, BackendError> {
    match tokio::time::timeout(timeout, open(target, max_message)).await {
        Ok(result) => result,
        Err(_) => Err(BackendError::Timeout {
            address: target.address.clone(),
            timeout,
        }),
    }
}

async fn open(target: &BackendTarget, max_message: usize) -> Result<ServerConn, BackendError> {
    let stream = TcpStream::connect(&target.address)
        .await
        .map_err(|source| BackendError::Connect {
            address: target.address.clone(),
            source,
        })?;
    stream.set_nodelay(true)?;
    let mut stream = negotiate(stream, &target.tls).await?;

    let options = (!target.search_path.is_empty()).then(|| search_path_option(&target.search_path));
    let mut params = vec![
        ("user", target.user.as_str()),
        ("database", target.database.as_str()),
    ];
    if let Some(options) = &options {
        params.push(("options", options.as_str()));
    }
    let mut out = BytesMut::new();
    messages::startup_message(&mut out, params);
    stream.write_all(&out).await?;

    let mut buf = BytesMut::with_capacity(8 * 1024);
    authenticate(&mut stream, &mut buf, target, max_message).await?;

    // After AuthenticationOk: ParameterStatus and BackendKeyData until ReadyForQuery.
    let mut conn = ServerConn::new(stream, buf, max_message, CancelKey { pid: 0, secret: 0 });
    conn.read_until_ready(true).await?;
    conn.remember_initial_params();
    conn.ready_at = Instant::now();
    conn.last_used = Instant::now();
    Ok(conn)
}

/// Asks the server at `address` to cancel what the session with `key` is running.
pub async fn send_cancel(address: &str, key: CancelKey) -> std::io::Result<()> {
    let mut packet = BytesMut::with_capacity(16);
    packet.put_u32(16);
    packet.put_u32(CANCEL_REQUEST_CODE);
    packet.put_i32(key.pid);
    packet.put_i32(key.secret);
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.write_all(&packet).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_quoting() {
        assert_eq!(
            search_path_option(&["tenant_acme".into(), "public".into()]),
            "-c search_path=tenant_acme,public"
        );
        assert_eq!(
            search_path_option(&["Odd Name".into(), "a\"b".into(), "$user".into()]),
            "-c search_path=\"Odd\\ Name\",\"a\"\"b\",\"$user\""
        );
        assert_eq!(
            search_path_statement(&["tenant_acme".into(), "Odd \"x\"".into()]),
            "SET search_path TO \"tenant_acme\", \"Odd \"\"x\"\"\""
        );
        assert_eq!(
            search_path_option(&["x\\y".into()]),
            "-c search_path=\"x\\\\y\""
        );
    }
}
