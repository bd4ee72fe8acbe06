//! Proxy settings: a TOML file plus `PGTENANT__SECTION__KEY` environment overrides,
//! read into typed structs and validated whole. Every problem is reported at once,
//! placed as `file:line:column` or by the environment variable that set it.

mod de;
mod load;
mod tree;

pub use tree::ENV_PREFIX;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the tenant name is taken from, tried in the configured order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantSource {
    /// The startup packet's database is the tenant.
    Database,
    /// `app.acme` or `app@acme`: the part after the last separator is the tenant.
    UserSuffix,
    /// The user name is the tenant.
    User,
    /// The TLS server name, less `tls.sni_suffix`.
    Sni,
    /// `options=--tenant=acme` or `options=-c pgtenant.tenant=acme`.
    Options,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    Session,
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "passthrough")]
    Passthrough,
    /// Cleartext password, checked against the stored verifier; over TLS only.
    #[serde(rename = "password")]
    Password,
}

/// `tls.mode`: whether clients may, or must, use TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// SSLRequest is answered 'N'.
    #[default]
    Disable,
    /// TLS for clients that ask; plain connections are served too.
    Allow,
    /// A plain startup message is refused with 28000.
    Require,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub proxy: ProxySettings,
    pub pool: PoolSettings,
    pub registry: RegistrySettings,
    pub admin: AdminSettings,
    pub tls: TlsSettings,
    pub passthrough: PassthroughSettings,
    pub secrets: SecretSettings,
}

/// The admin console, the HTTP listener (metrics, health, status page) and PAUSE.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the HTTP listener; none: no HTTP.
    pub http_listen: Option<String>,
    /// When set, every HTTP request but /healthz needs `Authorization: Bearer <token>`.
    pub http_token: Option<String>,
    /// The database name that reaches the admin console instead of a tenant.
    pub console_database: String,
    /// Client user names allowed into the console.
    pub users: Vec<String>,
    /// With `trust`, the console is reachable only from loopback unless this is set.
    pub console_trust_remote: bool,
    /// How long PAUSE waits for the tenant's servers to come back.
    #[serde(with = "humantime_serde")]
    pub pause_timeout: Duration,
    /// A tenant move waits this long for session-mode clients to leave; those still
    /// there are then told 57P01 (the tenant moved) and closed.
    #[serde(with = "humantime_serde")]
    pub move_timeout: Duration,
    /// Tenants labelled one by one in /metrics; the least active beyond this are
    /// summed under `tenant="_other"`.
    pub metrics_max_tenants: usize,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            http_listen: None,
            http_token: None,
            console_database: "pgtenant".into(),
            users: vec!["pgtenant".into()],
            console_trust_remote: false,
            pause_timeout: Duration::from_secs(10),
            move_timeout: Duration::from_secs(30),
            metrics_max_tenants: 1000,
        }
    }
}

/// `[tls]`: TLS towards clients.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub mode: TlsMode,
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// With the `sni` tenant source: `acme.db.example.com` is tenant `acme` when this
    /// is `.db.example.com`.
    pub sni_suffix: Option<String>,
}

/// `[passthrough]`: `proxy.auth = "passthrough"` checks clients against the role
/// verifiers of the tenant's server, fetched through the host's `auth_user`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PassthroughSettings {
    /// Returns the role's name and verifier for `$1`; the last column is the verifier.
    pub auth_query: String,
    /// How long a fetched verifier is trusted before it is fetched again.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

/// `[secrets]`: the key that decrypts `enc:` values in the registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretSettings {
    /// Environment variable holding the key (base64 of 32 bytes).
    pub key_env: String,
    /// File holding the key, used when the variable is not set.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySettings {
    pub listen: String,
    pub tenant_from: Vec<TenantSource>,
    pub pool_mode: PoolMode,
    pub auth: AuthMethod,
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    pub max_client_conn: usize,
    /// Largest message accepted from either side, in bytes.
    pub max_message_size: usize,
    /// Bytes queued towards one peer before the proxy stops reading from the other.
    pub relay_buffer: usize,
    /// Threads serving clients: 1 is a single event loop.
    pub workers: usize,
    /// How long a stopping proxy waits for clients to finish their transactions.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// A transaction-mode client quiet this long between transactions is parked: it
    /// keeps its socket and settings but no task or buffers. Zero: never.
    #[serde(with = "humantime_serde")]
    pub park_after: Duration,
    /// Time a client has, once its startup message is in, to authenticate.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Connections from one address that may be in startup or authentication at once.
    pub max_unauthenticated_per_address: usize,
    /// Clients one tenant may have connected at once; 0: only `max_client_conn`.
    pub max_client_conn_per_tenant: usize,
    /// A client idle (no transaction open) this long is closed; zero: never.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// A client idle inside a transaction this long is closed, its transaction rolled
    /// back and its server released; zero: never.
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// Default server connections per tenant; a tenant may set its own.
    pub pool_size: usize,
    /// Idle server connections kept open per active tenant; a tenant may set its own.
    pub min_idle: usize,
    /// Proxy-named prepared statements one server connection keeps (transaction mode).
    pub max_prepared_statements: usize,
    /// Named prepared statements one transaction-mode client may hold at once: the
    /// proxy keeps each client's names, so this bounds its memory per client.
    pub max_client_statements: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// Transaction mode: how long a query of a connected client may wait for a server
    /// before it is refused (57014) and the client closed; zero: `checkout_timeout`,
    /// refused as a checkout (53300).
    #[serde(with = "humantime_serde")]
    pub query_wait_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Run on a session-mode server before another client gets it.
    pub reset_query: String,
    /// At a full host, how long a tenant keeps a server connection before it goes to
    /// a tenant waiting for room (its turn): long enough to amortise opening one.
    #[serde(with = "humantime_serde")]
    pub host_turn: Duration,
    /// In transaction mode, schema tenants of one host, database and role share
    /// server connections; search_path follows each client. A tenant may opt out
    /// with `share = false` in the registry.
    pub share_schema_tenants: bool,
    /// Shared servers: how many clients of the search_path a server already has it
    /// may serve in a row ahead of the first in line (each saves a SET); 0: strictly
    /// first come, first served.
    pub share_streak: u32,
    /// Shared servers: how many one (host, database, role) holds open at once for all
    /// its schema tenants together; 0: as many as the host's budget allows.
    pub shared_pool_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    pub file: Option<PathBuf>,
    pub url: Option<String>,
    /// How often the registry file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// PostgreSQL registry: a query that yields the tenants (columns name, host,
    /// database, search_path, …) from a table the application already keeps.
    pub tenants_query: Option<String>,
    /// PostgreSQL registry: how often the whole registry is read again, besides the
    /// notifications (a fallback, and the way changes arrive when a table has no trigger).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// PostgreSQL registry: the last registry read is kept in this file, so a restart
    /// while the registry database is unreachable still serves.
    pub cache_file: Option<PathBuf>,
    /// PostgreSQL registry: the address other instances reach this one's listener at,
    /// to send on a CancelRequest (default: the address `proxy.listen` bound).
    pub instance_address: Option<String>,
    /// PostgreSQL registry: how often the instance refreshes its row in
    /// pgtenant.instances; a row 5 intervals old is removed.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            listen: "127.0.0.1:6432".into(),
            tenant_from: vec![TenantSource::Database, TenantSource::UserSuffix],
            pool_mode: PoolMode::Session,
            auth: AuthMethod::Trust,
            startup_timeout: Duration::from_secs(10),
            max_client_conn: 10_000,
            max_message_size: 1 << 30,
            relay_buffer: 256 * 1024,
            workers: 1,
            shutdown_timeout: Duration::from_secs(30),
            park_after: Duration::from_secs(1),
            auth_timeout: Duration::from_secs(10),
            max_unauthenticated_per_address: 1000,
            max_client_conn_per_tenant: 0,
            client_idle_timeout: Duration::ZERO,
            idle_in_transaction_timeout: Duration::ZERO,
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            pool_size: 10,
            min_idle: 0,
            max_prepared_statements: 200,
            max_client_statements: 5000,
            connect_timeout: Duration::from_secs(5),
            checkout_timeout: Duration::from_secs(30),
            query_wait_timeout: Duration::ZERO,
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            reset_query: "DISCARD ALL".into(),
            host_turn: Duration::from_millis(100),
            share_schema_tenants: true,
            share_streak: 4,
            shared_pool_size: 0,
        }
    }
}

impl Default for PassthroughSettings {
    fn default() -> Self {
        PassthroughSettings {
            auth_query: "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1"
                .into(),
            cache_ttl: Duration::from_secs(60),
        }
    }
}

impl Default for SecretSettings {
    fn default() -> Self {
        SecretSettings {
            key_env: "PGTENANT_SECRET_KEY".into(),
            key_file: None,
        }
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            file: Some(PathBuf::from("config/tenants.toml")),
            url: None,
            watch_interval: Duration::from_secs(1),
            tenants_query: None,
            poll_interval: Duration::from_secs(30),
            cache_file: None,
            instance_address: None,
            heartbeat_interval: Duration::from_secs(1),
        }
    }
}

/// One thing wrong with the configuration, located by where it was set and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a file, `file:line:column`, or an environment variable's name.
    pub file: String,
    /// The key, dotted (`pool.pool_size`); empty when the whole file is at fault.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key.is_empty() {
            true => write!(f, "{}: {}", self.file, self.message),
            false => write!(f, "{}: {}: {}", self.file, self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

impl Settings {
    /// Loads `path` (TOML) with environment overrides and validates the result.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: file.clone(),
            error,
        })?;
        load::settings(&file, &text, environment())
    }

    /// Parses settings from TOML text (no environment), for tests and the demo.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        load::settings("<inline>", text, std::iter::empty())
    }

    /// Everything wrong with these settings; empty when they can be served.
    pub fn problems(&self, file: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                file: file.to_string(),
                key: key.to_string(),
                message,
            })
        };
        if self.proxy.listen.parse::<SocketAddr>().is_err() {
            problem(
                "proxy.listen",
                format!("\"{}\" is not an IP address and port", self.proxy.listen),
            );
        }
        if self.proxy.tenant_from.is_empty() {
            problem("proxy.tenant_from", "must name at least one source".into());
        }
        if self.proxy.tenant_from.contains(&TenantSource::Sni) {
            if self.tls.mode == TlsMode::Disable {
                problem(
                    "proxy.tenant_from",
                    "\"sni\" needs client TLS: set tls.mode, tls.cert and tls.key".into(),
                );
            }
            if self.tls.sni_suffix.as_deref().is_none_or(str::is_empty) {
                problem(
                    "tls.sni_suffix",
                    "the \"sni\" tenant source needs a suffix such as \".db.example.com\"".into(),
                );
            }
        }
        if self.tls.mode != TlsMode::Disable {
            for (key, value) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
                if value.is_none() {
                    problem(
                        key,
                        format!("must be set when tls.mode is {:?}", self.tls.mode).to_lowercase(),
                    );
                }
            }
        }
        if self.proxy.auth == AuthMethod::Password && self.tls.mode == TlsMode::Disable {
            problem(
                "proxy.auth",
                "\"password\" sends passwords in clear text: it needs client TLS (tls.mode)".into(),
            );
        }
        if self.proxy.max_unauthenticated_per_address == 0 {
            problem(
                "proxy.max_unauthenticated_per_address",
                "must be at least 1".into(),
            );
        }
        if self.proxy.workers == 0 || self.proxy.workers > 256 {
            problem("proxy.workers", "must be between 1 and 256".into());
        }
        if self.proxy.max_client_conn == 0 {
            problem("proxy.max_client_conn", "must be at least 1".into());
        }
        if self.proxy.max_message_size < 1024 {
            problem(
                "proxy.max_message_size",
                "must be at least 1024 bytes".into(),
            );
        }
        if self.pool.pool_size == 0 {
            problem("pool.pool_size", "must be at least 1".into());
        }
        if self.pool.min_idle > self.pool.pool_size {
            problem("pool.min_idle", "must not exceed pool.pool_size".into());
        }
        if self.pool.max_prepared_statements == 0 {
            problem("pool.max_prepared_statements", "must be at least 1".into());
        }
        if self.pool.max_client_statements == 0 {
            problem("pool.max_client_statements", "must be at least 1".into());
        }
        if self.proxy.relay_buffer == 0 {
            problem(
                "proxy.relay_buffer",
                "must be at least 1 byte: it bounds what the proxy queues towards a peer".into(),
            );
        }
        if self.proxy.pool_mode == PoolMode::Transaction && self.pool.reset_query.trim().is_empty()
        {
            problem(
                "pool.reset_query",
                "must not be empty in transaction mode: a client pinned to its server (SET ROLE, LISTEN, temporary tables…) leaves session state that only the reset clears (the default is \"DISCARD ALL\")".into(),
            );
        }
        if let Some(listen) = &self.admin.http_listen {
            if listen.parse::<SocketAddr>().is_err() {
                problem(
                    "admin.http_listen",
                    format!("\"{listen}\" is not an IP address and port"),
                );
            }
        }
        if self.admin.http_token.as_deref() == Some("") {
            problem(
                "admin.http_token",
                "must not be empty (leave it out for no token)".into(),
            );
        }
        if self.admin.console_database.is_empty() {
            problem("admin.console_database", "must not be empty".into());
        }
        if self.admin.metrics_max_tenants == 0 {
            problem("admin.metrics_max_tenants", "must be at least 1".into());
        }
        if self.admin.pause_timeout.is_zero() {
            problem("admin.pause_timeout", "must be longer than zero".into());
        }
        if self.admin.move_timeout.is_zero() {
            problem("admin.move_timeout", "must be longer than zero".into());
        }
        match (&self.registry.file, &self.registry.url) {
            (None, None) => problem("registry", "set either file or url".into()),
            (Some(_), Some(_)) => problem("registry", "set file or url, not both".into()),
            (None, Some(url)) => {
                if let Err(e) = url.parse::<tokio_postgres::Config>() {
                    problem(
                        "registry.url",
                        format!("not a PostgreSQL connection string: {e}"),
                    );
                }
            }
            (Some(_), None) => {}
        }
        if self.registry.heartbeat_interval.is_zero() {
            problem(
                "registry.heartbeat_interval",
                "must be longer than zero".into(),
            );
        }
        if let Some(address) = &self.registry.instance_address {
            if address.parse::<SocketAddr>().is_err() {
                problem(
                    "registry.instance_address",
                    format!("\"{address}\" is not an IP address and port"),
                );
            }
        }
        if self.registry.poll_interval.is_zero() {
            problem("registry.poll_interval", "must be longer than zero".into());
        }
        if self.registry.tenants_query.is_some() && self.registry.url.is_none() {
            problem(
                "registry.tenants_query",
                "needs registry.url (a query runs on the PostgreSQL registry)".into(),
            );
        }
        problems
    }
}

/// The process environment's `PGTENANT__…` variables (text that is not UTF-8 is
/// read lossily, so it is reported rather than ignored).
fn environment() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let settings = Settings::from_toml("").unwrap();
        assert_eq!(settings.proxy.listen, "127.0.0.1:6432");
        assert_eq!(settings.proxy.startup_timeout, Duration::from_secs(10));
    }

    #[test]
    fn reads_keys() {
        let settings = Settings::from_toml(
            r#"
            [proxy]
            listen = "0.0.0.0:7000"
            tenant_from = ["user_suffix", "user"]
            startup_timeout = "250ms"
            [registry]
            file = "x.toml"
            "#,
        )
        .unwrap();
        assert_eq!(
            settings.proxy.tenant_from,
            vec![TenantSource::UserSuffix, TenantSource::User]
        );
        assert_eq!(settings.proxy.startup_timeout, Duration::from_millis(250));
    }

    #[test]
    fn names_each_problem() {
        let err = Settings::from_toml(
            r#"
            [proxy]
            listen = "nowhere"
            tenant_from = []
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("proxy.listen"), "{text}");
        assert!(text.contains("proxy.tenant_from"), "{text}");
    }

    #[test]
    fn admin_keys() {
        let settings = Settings::from_toml(
            r#"
            [admin]
            http_listen = "127.0.0.1:9930"
            users = ["ops"]
            pause_timeout = "2s"
            [proxy]
            max_client_conn_per_tenant = 5
            idle_in_transaction_timeout = "30s"
            "#,
        )
        .unwrap();
        assert_eq!(settings.admin.users, vec!["ops".to_string()]);
        assert_eq!(settings.admin.console_database, "pgtenant");
        assert_eq!(settings.admin.pause_timeout, Duration::from_secs(2));
        assert_eq!(settings.proxy.max_client_conn_per_tenant, 5);
        let err = Settings::from_toml("[admin]\nhttp_listen = \"x\"\nmetrics_max_tenants = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.http_listen"), "{err}");
        assert!(err.contains("admin.metrics_max_tenants"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = Settings::from_toml("[proxy]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }
}
