//! `pgtenant check`: the settings and the registry, validated as `serve` reads them,
//! and with `--connect` one connection per host and per listed tenant, as the proxy
//! would open it.

use std::path::Path;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::backend::{connect, BackendError, BackendTarget};
use crate::config::Settings;
use crate::registry::pg::PgSource;
use crate::registry::{file, Host, Snapshot, Tenant};
use crate::secret::Secrets;
use crate::tls::ServerTls;

/// Reads and validates the settings and the registry; the error is the text to print
/// (every problem found, one per line).
pub fn load(config: &Path) -> Result<(Settings, Snapshot), String> {
    let settings = Settings::load(config).map_err(|e| e.to_string())?;
    let secrets = Secrets::from_settings(&settings.secrets)
        .map_err(|e| format!("{}: secrets: {e}", config.display()))?;
    if let (Some(cert), Some(key)) = (&settings.tls.cert, &settings.tls.key) {
        ServerTls::load(cert, key).map_err(|e| format!("{}: tls: {e}", config.display()))?;
    }
    let snapshot = match (&settings.registry.file, &settings.registry.url) {
        (Some(path), _) => file::load(path, &secrets).map_err(|e| e.to_string())?,
        (None, Some(url)) => {
            let source = PgSource::from_settings(url, &settings.registry, secrets);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(source.read_once())
                .map_err(|e| e.to_string())?
        }
        (None, None) => {
            return Err(format!(
                "{}: registry: no registry configured",
                config.display()
            ))
        }
    };
    Ok((settings, snapshot))
}

/// `config/pgtenant.toml: ok; config/tenants.toml: ok (3 tenants, 2 hosts)`.
pub fn summary(config: &Path, settings: &Settings, snapshot: &Snapshot) -> String {
    let registry = match (&settings.registry.file, &settings.registry.url) {
        (Some(path), _) => path.display().to_string(),
        _ => "registry database".to_string(),
    };
    let template = match snapshot.template() {
        Some(_) => " and a template entry",
        None => "",
    };
    format!(
        "{}: ok; {}: ok ({}{template}, {})",
        config.display(),
        registry,
        count(snapshot.tenant_count(), "tenant", "tenants"),
        count(snapshot.hosts().count(), "host", "hosts"),
    )
}

/// `1 host`, `2 hosts`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The outcome of one connection check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `host pg-a (127.0.0.1:5432)` or `tenant acme`.
    pub subject: String,
    pub ok: bool,
    pub detail: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.ok { "ok" } else { "FAILED" };
        write!(f, "{}: {verdict}: {}", self.subject, self.detail)
    }
}

/// Opens one connection per host (TCP) and one per listed tenant (startup,
/// authentication, database, then each schema of its search_path), in name order.
/// A tenant without `backend_user` is checked as `client_user`, the role the proxy
/// would use for a client of that name.
pub async fn connections(
    settings: &Settings,
    snapshot: &Snapshot,
    client_user: &str,
) -> Vec<Outcome> {
    let timeout = settings.pool.connect_timeout;
    let mut hosts: Vec<_> = snapshot.hosts().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut tenants: Vec<_> = snapshot.tenants().collect();
    tenants.sort_by(|a, b| a.name.cmp(&b.name));

    let mut outcomes = Vec::new();
    for host in hosts {
        outcomes.push(check_host(host, timeout).await);
    }
    for tenant in tenants {
        let Some(host) = snapshot.host(&tenant.host) else {
            continue; // the registry was validated: every tenant's host is listed
        };
        let user = tenant.backend_user.as_deref().unwrap_or(client_user);
        outcomes.push(check_tenant(tenant, &host, user, settings).await);
    }
    outcomes
}

async fn check_host(host: &Host, timeout: Duration) -> Outcome {
    let subject = format!("host {} ({})", host.name, host.address);
    let result = tokio::time::timeout(timeout, TcpStream::connect(&host.address)).await;
    let (ok, detail) = match result {
        Ok(Ok(_)) => (true, "reachable".to_string()),
        Ok(Err(e)) => (false, format!("unreachable: {e}")),
        Err(_) => (false, format!("unreachable: no answer within {timeout:?}")),
    };
    Outcome {
        subject,
        ok,
        detail,
    }
}

async fn check_tenant(tenant: &Tenant, host: &Host, user: &str, settings: &Settings) -> Outcome {
    let target = BackendTarget {
        address: host.address.clone(),
        database: tenant.database.clone(),
        user: user.to_string(),
        password: tenant.backend_password.clone(),
        search_path: tenant.search_path.clone(),
        tls: host.tls.clone(),
        keys: None,
    };
    let mut place = format!(
        "database {} on host {} as {user}",
        tenant.database, host.name
    );
    if !tenant.search_path.is_empty() {
        place.push_str(&format!(", schemas {}", tenant.search_path.join(", ")));
    }
    let (ok, detail) = match open_and_look(&target, settings).await {
        Ok(()) => (true, place),
        Err(why) => (false, format!("{why} ({place})")),
    };
    Outcome {
        subject: format!("tenant {}", tenant.name),
        ok,
        detail,
    }
}

/// Connects as the proxy would and checks that each schema of the search_path exists
/// (a search_path naming a missing schema is accepted by the server, silently).
async fn open_and_look(target: &BackendTarget, settings: &Settings) -> Result<(), String> {
    let timeout = settings.pool.connect_timeout;
    let mut conn = connect(target, timeout, settings.proxy.max_message_size)
        .await
        .map_err(|e| match e {
            BackendError::Refused(fields) => format!("server refused: {}", fields.message),
            e if e.is_unreachable() => format!("host unreachable: {e}"),
            e => e.to_string(),
        })?;
    let mut missing = Vec::new();
    for schema in &target.search_path {
        let sql = format!(
            "SELECT {}::pg_catalog.regnamespace",
            literal(&quote_ident(schema))
        );
        match tokio::time::timeout(timeout, conn.simple_query(&sql)).await {
            Ok(Ok(())) => {}
            Ok(Err(BackendError::Refused(_))) => missing.push(format!("\"{schema}\"")),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {timeout:?}")),
        }
    }
    conn.close(None).await;
    match missing.len() {
        0 => Ok(()),
        1 => Err(format!("schema {} does not exist", missing[0])),
        _ => Err(format!("schemas {} do not exist", missing.join(", "))),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_right() {
        assert_eq!(count(1, "host", "hosts"), "1 host");
        assert_eq!(count(0, "host", "hosts"), "0 hosts");
        assert_eq!(count(2, "tenant", "tenants"), "2 tenants");
    }

    #[test]
    fn schema_names_are_quoted_as_data() {
        assert_eq!(
            literal(&quote_ident("it's \"odd\"")),
            "'\"it''s \"\"odd\"\"\"'"
        );
    }
}
