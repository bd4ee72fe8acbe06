//! Pausing a tenant for its switch: new transactions wait at the gate, those in
//! flight finish. Clients that still hold a server after `admin.move_timeout`
//! cannot follow the move: session-mode clients, transaction-mode clients pinned to
//! their server, and transaction-mode clients whose transaction is still open (it
//! is rolled back). They are told FATAL 57P01 and closed, and the move goes on.

use std::time::Duration;

use crate::app::App;
use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate;
use crate::registry::TenantName;

/// After the session clients are closed, how long their servers may take to come back.
const AFTER_CLOSING: Duration = Duration::from_secs(5);

/// Pauses `tenant` and waits until it holds no server. Err says who still does; the
/// tenant stays paused either way (the caller resumes it).
pub async fn pause_and_drain(
    app: &App,
    tenant: &TenantName,
    to: &str,
    mut abort: tokio::sync::watch::Receiver<bool>,
) -> Result<usize, String> {
    app.pools.pause(tenant);
    let timeout = app.settings.admin.move_timeout;
    let drained = tokio::select! {
        r = app.pools.wait_drained(tenant, timeout) => r,
        _ = abort.wait_for(|a| *a) => return Err("aborted while draining".into()),
    };
    if drained.is_ok() {
        return Ok(0);
    }
    let closed = close_session_clients(app, tenant, to);
    tracing::info!(%tenant, closed, "move: closed the clients that held a server past move_timeout");
    match app.pools.wait_drained(tenant, AFTER_CLOSING).await {
        Ok(()) => Ok(closed),
        Err(e) => {
            let who = crate::admin::control::holders(app, tenant);
            Err(format!(
                "{} server connection(s) still in use after admin.move_timeout ({}): {}",
                e.held,
                humantime::format_duration(timeout),
                if who.is_empty() {
                    "transactions still running".to_string()
                } else {
                    who.join(", ")
                }
            ))
        }
    }
}

/// Closes the tenant's clients that still hold a server.
fn close_session_clients(app: &App, tenant: &TenantName, to: &str) -> usize {
    let fatal = messages::build(|b| {
        messages::error_response(
            b,
            Severity::Fatal,
            sqlstate::ADMIN_SHUTDOWN,
            &format!("tenant \"{tenant}\" moved to host {to}; reconnect"),
        )
    });
    let clients = app
        .metrics
        .find_tenant(tenant.as_str())
        .map(|s| s.clients())
        .unwrap_or_default();
    clients
        .iter()
        .filter(|c| c.server_pid().is_some())
        .filter(|c| c.terminate(&fatal))
        .count()
}
