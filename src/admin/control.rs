//! PAUSE, RESUME, RELOAD, KILL and SHUTDOWN: the console's verbs. The work is done by
//! the pools (`pool::gate`), the registry and the clients' entries; this names what
//! to act on and says what happened.

use std::time::{Duration, Instant};

use crate::app::App;
use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate::{self, SqlState};
use crate::registry::TenantName;

/// A command that failed: what the console client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub code: SqlState,
    pub message: String,
}

fn failed(code: SqlState, message: impl Into<String>) -> Failed {
    Failed {
        code,
        message: message.into(),
    }
}

/// The tenant named, if the registry knows it.
fn known(app: &App, name: &str) -> Result<TenantName, Failed> {
    app.registry
        .snapshot()
        .tenant(name)
        .map(|t| t.name.clone())
        .ok_or_else(|| {
            failed(
                sqlstate::INVALID_CATALOG_NAME,
                format!("tenant \"{name}\" does not exist"),
            )
        })
}

/// Every tenant the registry lists or the pools serve.
fn all_tenants(app: &App) -> Vec<TenantName> {
    let mut all: Vec<TenantName> = app
        .registry
        .snapshot()
        .tenants()
        .map(|t| t.name.clone())
        .collect();
    all.extend(app.pools.report().into_iter().map(|p| p.tenant));
    all.sort();
    all.dedup();
    all
}

/// The clients of `tenant` holding a server now, for a person to read.
pub fn holders(app: &App, tenant: &TenantName) -> Vec<String> {
    let Some(stats) = app.metrics.find_tenant(tenant.as_str()) else {
        return Vec::new();
    };
    stats
        .clients()
        .iter()
        .filter(|c| c.server_pid().is_some())
        .map(|c| format!("c{} ({}@{}, {} mode)", c.id, c.user, c.peer, c.mode))
        .collect()
}

/// Pauses one tenant (or all) and waits until they hold no server, up to
/// `admin.pause_timeout`. On timeout the tenants stay paused.
pub async fn pause(app: &App, tenant: Option<&str>) -> Result<String, Failed> {
    let tenants = match tenant {
        Some(name) => vec![known(app, name)?],
        None => all_tenants(app),
    };
    for t in &tenants {
        app.pools.pause(t);
    }
    let deadline = Instant::now() + app.settings.admin.pause_timeout;
    let mut undrained = Vec::new();
    for t in &tenants {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = app
            .pools
            .wait_drained(t, left.max(Duration::from_millis(1)))
            .await
        {
            undrained.push((t.clone(), e.held));
        }
    }
    if undrained.is_empty() {
        return Ok(format!("paused {} tenant(s)", tenants.len()));
    }
    let detail: Vec<String> = undrained
        .iter()
        .map(|(t, held)| {
            let who = holders(app, t);
            format!(
                "tenant \"{t}\": {held} server connection(s) in use by {}",
                if who.is_empty() {
                    "clients finishing their transaction".to_string()
                } else {
                    who.join(", ")
                }
            )
        })
        .collect();
    Err(failed(
        sqlstate::OBJECT_IN_USE,
        format!(
            "paused, but not drained within {} (admin.pause_timeout); still paused, RESUME undoes it: {}",
            humantime::format_duration(app.settings.admin.pause_timeout),
            detail.join("; ")
        ),
    ))
}

pub fn resume(app: &App, tenant: Option<&str>) -> Result<String, Failed> {
    let tenants = match tenant {
        Some(name) => vec![known(app, name)?],
        None => app.pools.paused(),
    };
    let released: usize = tenants.iter().map(|t| app.pools.resume(t)).sum();
    Ok(format!(
        "resumed {} tenant(s); {released} waiting checkout(s) released",
        tenants.len()
    ))
}

pub fn reload(app: &App) -> Result<String, Failed> {
    let Some(path) = app.settings.registry.file.as_ref() else {
        return Err(failed(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "no registry file to reload",
        ));
    };
    let secrets = crate::secret::Secrets::from_settings(&app.settings.secrets)
        .map_err(|e| failed(sqlstate::CONFIG_FILE_ERROR, format!("secrets: {e}")))?;
    match crate::registry::file::load(path, &secrets) {
        Ok(snapshot) => {
            let tenants = snapshot.tenant_count();
            app.registry.accept(snapshot).map_err(|why| {
                failed(
                    sqlstate::CONFIG_FILE_ERROR,
                    format!("registry update refused, previous registry keeps serving: {why}"),
                )
            })?;
            tracing::info!(file = %path.display(), tenants, "registry reloaded (RELOAD)");
            Ok(format!("registry reloaded: {tenants} tenant(s)"))
        }
        Err(e) => Err(failed(
            sqlstate::CONFIG_FILE_ERROR,
            format!("registry update refused, previous registry keeps serving: {e}"),
        )),
    }
}

/// Closes every client of `tenant`: each is told 57P01, its server is rolled back
/// and given back (or closed when busy).
pub fn kill(app: &App, tenant: &str) -> Result<String, Failed> {
    let name = known(app, tenant)?;
    let fatal = messages::build(|b| {
        messages::error_response(
            b,
            Severity::Fatal,
            sqlstate::ADMIN_SHUTDOWN,
            &format!("terminating connection due to administrator command (KILL {name})"),
        )
    });
    let clients = app
        .metrics
        .find_tenant(name.as_str())
        .map(|s| s.clients())
        .unwrap_or_default();
    let killed = clients.iter().filter(|c| c.terminate(&fatal)).count();
    tracing::info!(tenant = %name, clients = killed, "tenant's clients killed (KILL)");
    Ok(format!("closed {killed} client(s) of tenant \"{name}\""))
}

pub fn shutdown(app: &App) -> Result<String, Failed> {
    tracing::info!("shutdown asked from the admin console");
    app.stop_requested.send_replace(true);
    Ok("pgtenant is shutting down".into())
}
