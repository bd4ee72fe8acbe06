//! The TOML registry source: `[hosts.NAME]` and `[tenants.NAME]`, reloaded when the
//! file changes or on SIGHUP. An invalid file is refused whole; the old snapshot stays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::signal::unix::{signal, SignalKind};

use super::{
    Host, HostName, Registry, Snapshot, Tenant, TenantName, User, RESERVED_DATABASES, TEMPLATE_KEY,
    TENANT_PLACEHOLDER,
};
use crate::auth::Verifier;
use crate::config::{PoolMode, Problem};
use crate::secret::{Secret, Secrets};
use crate::tls::client::{BackendTls, BackendTlsMode};

#[derive(Debug, thiserror::Error)]
pub enum RegistryFileError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

const DEFAULT_MAX_CONNECTIONS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    hosts: BTreeMap<String, RawHost>,
    #[serde(default)]
    tenants: BTreeMap<String, RawTenant>,
    #[serde(default)]
    users: BTreeMap<String, RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    address: String,
    max_connections: Option<usize>,
    #[serde(default)]
    tls: BackendTlsMode,
    tls_ca_file: Option<PathBuf>,
    /// The name to send as SNI and to check with verify-full, when the address is
    /// not that name.
    tls_server_name: Option<String>,
    auth_user: Option<String>,
    auth_password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    password: String,
    tenants: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    host: String,
    database: String,
    #[serde(default)]
    search_path: Vec<String>,
    backend_user: Option<String>,
    backend_password: Option<String>,
    pool_size: Option<usize>,
    min_idle: Option<usize>,
    pool_mode: Option<PoolMode>,
    share: Option<bool>,
}

/// Reads and validates the registry file; `enc:` values are decrypted with `secrets`.
pub fn load(path: &Path, secrets: &Secrets) -> Result<Snapshot, RegistryFileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RegistryFileError::Read {
        file: file.clone(),
        source,
    })?;
    parse_with(&text, &file, secrets)
}

/// Parses registry TOML without a secret key; `file` names the source in messages.
pub fn parse(text: &str, file: &str) -> Result<Snapshot, RegistryFileError> {
    parse_with(text, file, &Secrets::default())
}

/// Parses registry TOML; `file` names the source in messages.
pub fn parse_with(
    text: &str,
    file: &str,
    secrets: &Secrets,
) -> Result<Snapshot, RegistryFileError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| RegistryFileError::Parse {
        file: file.to_string(),
        message: parse_message(&e, text),
    })?;
    let mut problems = Vec::new();
    let mut problem = |key: String, message: String| {
        problems.push(Problem {
            file: file.to_string(),
            key,
            message,
        })
    };

    let mut hosts = Vec::new();
    for (name, raw_host) in &raw.hosts {
        let key = format!("hosts.{name}");
        if !valid_address(&raw_host.address) {
            problem(
                format!("{key}.address"),
                format!(
                    "\"{}\" is not host:port (such as \"127.0.0.1:5432\" or \"db.example.com:5432\")",
                    raw_host.address
                ),
            );
        }
        let max_connections = raw_host.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            problem(
                format!("{key}.max_connections"),
                "must be at least 1".into(),
            );
        }
        let needs_ca = matches!(
            raw_host.tls,
            BackendTlsMode::VerifyCa | BackendTlsMode::VerifyFull
        );
        if needs_ca && raw_host.tls_ca_file.is_none() {
            problem(
                format!("{key}.tls_ca_file"),
                "verify-ca and verify-full need the CA certificate file".into(),
            );
        }
        let auth_password = raw_host.auth_password.as_deref().map(|value| {
            secrets.reveal(value).unwrap_or_else(|e| {
                problem(format!("{key}.auth_password"), e.to_string());
                Secret::new("")
            })
        });
        let host_part = raw_host.address.rsplit_once(':').map_or("", |(h, _)| h);
        let server_name = raw_host.tls_server_name.clone().unwrap_or_else(|| {
            host_part
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
        hosts.push(Host {
            name: HostName::new(name),
            address: raw_host.address.clone(),
            max_connections,
            tls: BackendTls {
                mode: raw_host.tls,
                ca_file: raw_host.tls_ca_file.clone(),
                server_name,
            },
            auth_user: raw_host.auth_user.clone(),
            auth_password,
        });
    }

    let mut tenants = Vec::new();
    let mut template = None;
    let tenant_names: Vec<String> = raw.tenants.keys().cloned().collect();
    for (name, raw_tenant) in raw.tenants {
        let key = format!("tenants.\"{name}\"");
        if !raw.hosts.contains_key(&raw_tenant.host) {
            problem(
                format!("{key}.host"),
                format!("unknown host \"{}\"", raw_tenant.host),
            );
        }
        if raw_tenant.database.is_empty() {
            problem(format!("{key}.database"), "must not be empty".into());
        }
        if raw_tenant.search_path.iter().any(|s| s.is_empty()) {
            problem(
                format!("{key}.search_path"),
                "holds an empty schema name".into(),
            );
        }
        if raw_tenant.pool_size == Some(0) {
            problem(format!("{key}.pool_size"), "must be at least 1".into());
        }
        if let (Some(min_idle), Some(size)) = (raw_tenant.min_idle, raw_tenant.pool_size) {
            if min_idle > size {
                problem(
                    format!("{key}.min_idle"),
                    format!("{min_idle} exceeds pool_size {size}"),
                );
            }
        }
        if raw_tenant.backend_user.as_deref() == Some("") {
            problem(format!("{key}.backend_user"), "must not be empty".into());
        }
        let filled = [("database", Some(&raw_tenant.database))]
            .into_iter()
            .chain(
                raw_tenant
                    .search_path
                    .iter()
                    .map(|s| ("search_path", Some(s))),
            )
            .chain([("backend_user", raw_tenant.backend_user.as_ref())]);
        for (field, value) in filled {
            if let Some(message) = value.and_then(|v| placeholder_problem(v, name == TEMPLATE_KEY))
            {
                problem(format!("{key}.{field}"), message);
            }
        }
        if name == TEMPLATE_KEY {
            // A template serves names it has never seen: it must not let a client pick
            // the role, nor lead to a maintenance database.
            if raw_tenant.backend_user.is_none() {
                problem(
                    format!("{key}.backend_user"),
                    "the template entry must name the role it logs in as".into(),
                );
            }
            if RESERVED_DATABASES.contains(&raw_tenant.database.as_str()) {
                problem(
                    format!("{key}.database"),
                    format!(
                        "the template entry may not serve database \"{}\"",
                        raw_tenant.database
                    ),
                );
            }
        }
        let backend_password = raw_tenant.backend_password.as_deref().map(|value| {
            secrets.reveal(value).unwrap_or_else(|e| {
                problem(format!("{key}.backend_password"), e.to_string());
                Secret::new("")
            })
        });
        let tenant = Tenant {
            name: TenantName::new(&name),
            host: HostName::new(&raw_tenant.host),
            database: raw_tenant.database,
            search_path: raw_tenant.search_path,
            backend_user: raw_tenant.backend_user,
            backend_password,
            pool_size: raw_tenant.pool_size,
            min_idle: raw_tenant.min_idle,
            pool_mode: raw_tenant.pool_mode,
            share: raw_tenant.share,
        };
        if name == TEMPLATE_KEY {
            template = Some(tenant);
        } else {
            tenants.push(tenant);
        }
    }

    let mut users = Vec::new();
    for (name, raw_user) in raw.users {
        let key = format!("users.\"{name}\"");
        let password = match secrets.reveal(&raw_user.password) {
            Ok(text) => text.expose().parse::<Verifier>().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let password = match password {
            Ok(verifier) => verifier,
            Err(message) => {
                problem(format!("{key}.password"), message);
                continue;
            }
        };
        for tenant in &raw_user.tenants {
            if tenant != TEMPLATE_KEY && !tenant_names.contains(tenant) && template.is_none() {
                problem(
                    format!("{key}.tenants"),
                    format!("unknown tenant \"{tenant}\""),
                );
            }
        }
        users.push(User {
            name,
            password,
            tenants: raw_user.tenants,
        });
    }

    if problems.is_empty() {
        Ok(Snapshot::new(hosts, tenants, template).with_users(users))
    } else {
        Err(RegistryFileError::Invalid { problems })
    }
}

/// `host:port`: a host name, an IPv4 address or a bracketed IPv6 address, and a port.
/// A URL (`postgres://…`) is not an address.
/// Where and what, without the quoted line the TOML error would show: that line may
/// hold a password, and this message goes to the log and to `check`.
fn parse_message(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

fn valid_address(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// `{tenant}` is the one placeholder, and only the template entry fills it in.
fn placeholder_problem(value: &str, template: bool) -> Option<String> {
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        let end = after.find('}').map_or(after.len(), |i| i + 1);
        let placeholder = &after[..end];
        if placeholder != TENANT_PLACEHOLDER {
            return Some(format!(
                "unknown placeholder \"{placeholder}\" in \"{value}\"; the only placeholder is {TENANT_PLACEHOLDER}"
            ));
        }
        if !template {
            return Some(format!(
                "{TENANT_PLACEHOLDER} is filled in only in the template entry [tenants.\"*\"]"
            ));
        }
        rest = &after[end..];
    }
    None
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads `path` into `registry` when it changes (polled every `interval`) or on
/// SIGHUP. Runs until the runtime shuts down.
pub fn watch(registry: Arc<Registry>, path: PathBuf, interval: Duration, secrets: Secrets) {
    tokio::spawn(async move {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; relying on file changes");
                None
            }
        };
        let mut seen = fingerprint(&path);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = ticker.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            let now = fingerprint(&path);
            if !forced && now == seen {
                continue;
            }
            seen = now;
            reload(&registry, &path, &secrets);
        }
    });
}

/// One reload attempt: swap in the new snapshot, or log why not and keep the old one.
pub fn reload(registry: &Registry, path: &Path, secrets: &Secrets) -> bool {
    // A file that reads empty while serving is one being written (truncated, then
    // filled), not a registry of no tenants: that takes at least a comment.
    if std::fs::read(path).is_ok_and(|bytes| bytes.trim_ascii().is_empty()) {
        tracing::error!(file = %path.display(), "registry update refused, previous registry keeps serving: the file is empty (a registry with no tenants says so with a comment)");
        return false;
    }
    match load(path, secrets) {
        Ok(snapshot) => {
            tracing::info!(
                file = %path.display(),
                tenants = snapshot.tenant_count(),
                "registry reloaded"
            );
            registry.replace(snapshot);
            true
        }
        Err(e) => {
            tracing::error!("registry update refused, previous registry keeps serving: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [hosts.pg-a]
        address = "127.0.0.1:5432"
        max_connections = 20

        [tenants.acme]
        host = "pg-a"
        database = "erp"
        search_path = ["tenant_acme"]
        backend_user = "erp_app"
        pool_mode = "transaction"

        [tenants."*"]
        host = "pg-a"
        database = "{tenant}"
        backend_user = "app"
    "#;

    #[test]
    fn parses_hosts_tenants_and_template() {
        let snapshot = parse(GOOD, "t.toml").unwrap();
        let acme = snapshot.tenant("acme").unwrap();
        assert_eq!(acme.search_path, vec!["tenant_acme".to_string()]);
        assert_eq!(acme.pool_mode, Some(PoolMode::Transaction));
        assert_eq!(snapshot.host(&acme.host).unwrap().max_connections, 20);
        assert_eq!(snapshot.tenant("shop").unwrap().database, "shop");
    }

    #[test]
    fn names_file_and_key_of_each_problem() {
        let text = r#"
            [hosts.pg-a]
            address = "nowhere"
            [tenants.acme]
            host = "pg-z"
            database = ""
        "#;
        let err = parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("t.toml: hosts.pg-a.address"), "{err}");
        assert!(
            err.contains("t.toml: tenants.\"acme\".host: unknown host \"pg-z\""),
            "{err}"
        );
        assert!(err.contains("tenants.\"acme\".database"), "{err}");
    }

    #[test]
    fn addresses_are_host_and_port() {
        for good in [
            "127.0.0.1:5432",
            "db-1.example.com:6432",
            "[::1]:5432",
            "pg_a:1",
        ] {
            assert!(valid_address(good), "{good}");
        }
        for bad in [
            "postgres://127.0.0.1:5432",
            "127.0.0.1",
            ":5432",
            "h:0",
            "::1:5432",
            "a b:1",
        ] {
            assert!(!valid_address(bad), "{bad}");
        }
    }

    #[test]
    fn placeholders_are_known_and_only_in_the_template() {
        let text = r#"
            [hosts.a]
            address = "127.0.0.1:5432"
            [tenants."*"]
            host = "a"
            database = "{tenat}"
            search_path = ["tenant_{tenant}", "x_{Tenant}"]
            backend_user = "{tenant}_app"
            [tenants.acme]
            host = "a"
            database = "{tenant}"
        "#;
        let err = parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "t.toml: tenants.\"*\".database: unknown placeholder \"{tenat}\" in \"{tenat}\"; the only placeholder is {tenant}\n\
             t.toml: tenants.\"*\".search_path: unknown placeholder \"{Tenant}\" in \"x_{Tenant}\"; the only placeholder is {tenant}\n\
             t.toml: tenants.\"acme\".database: {tenant} is filled in only in the template entry [tenants.\"*\"]"
        );
    }

    #[test]
    fn a_syntax_error_does_not_quote_the_line() {
        let text = "[tenants.acme]\nhost = \"a\"\nbackend_password = \"hunter2\n";
        let err = parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml: line 3, column "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn syntax_and_unknown_keys_are_refused() {
        assert!(parse("[hosts.a\n", "t.toml").is_err());
        let err = parse("[hosts.a]\naddress = \"h:1\"\nport = 5\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }
}
