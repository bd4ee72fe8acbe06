//! Limits on clients: how many one tenant may have connected, how long a client may
//! sit idle, and how long it may sit idle inside a transaction. The last two are
//! enforced by one sweeper task over the clients' entries, so the relay pays nothing.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::app::{App, ClientId};
use crate::metrics::{ClientSeen, ClientState};
use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate;
use crate::proxy::refusal::Refusal;
use crate::proxy::Resolved;

/// Enters a resolved client into its tenant's table, or refuses it (53300) when the
/// tenant is at its `max_client_conn` (registry) or `proxy.max_client_conn_per_tenant`.
pub fn admit(
    app: &App,
    id: ClientId,
    resolved: &Resolved,
    stream: &TcpStream,
) -> Result<ClientSeen, Refusal> {
    // The tenant's own limit in the registry, else the proxy's default for all.
    let (limit, key) = match (
        resolved.tenant.max_client_conn,
        app.settings.proxy.max_client_conn_per_tenant,
    ) {
        (Some(n), _) => (n, "the tenant's max_client_conn"),
        (None, 0) => (usize::MAX, ""),
        (None, n) => (n, "proxy.max_client_conn_per_tenant"),
    };
    let mode = resolved
        .tenant
        .pool_mode
        .unwrap_or(app.settings.proxy.pool_mode);
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    let tenant = &resolved.tenant.name;
    let seen = app.metrics.client_connected(
        id.0,
        tenant,
        &resolved.user,
        peer,
        super::show::mode_name(mode),
        stream.as_raw_fd(),
        limit,
    );
    match seen {
        Some(seen) => {
            tracing::info!(client = %id, %tenant, user = %resolved.user, %peer, "client connected");
            Ok(seen)
        }
        None => {
            app.metrics
                .tenant(tenant)
                .error(sqlstate::TOO_MANY_CONNECTIONS.code().as_bytes());
            Err(Refusal::new(
                sqlstate::TOO_MANY_CONNECTIONS,
                format!("tenant \"{tenant}\" has too many clients: at most {limit} ({key})"),
            ))
        }
    }
}

/// Closes clients idle past `proxy.client_idle_timeout` (57P05) and clients idle
/// inside a transaction past `proxy.idle_in_transaction_timeout` (25P03; the server
/// is rolled back and given back when the session ends). Runs while the app lives.
pub fn run_sweeper(app: Weak<App>) {
    let every = {
        let Some(app) = app.upgrade() else { return };
        let proxy = &app.settings.proxy;
        let shortest = [proxy.client_idle_timeout, proxy.idle_in_transaction_timeout]
            .into_iter()
            .filter(|d| !d.is_zero())
            .min();
        match shortest {
            None => return,
            Some(d) => (d / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(app) = app.upgrade() else { return };
            sweep(&app);
        }
    });
}

fn sweep(app: &Arc<App>) {
    let proxy = &app.settings.proxy;
    for tenant in app.metrics.tenants() {
        for client in tenant.clients() {
            if !client.at_rest() {
                // A query runs or a result is on its way: busy, however long.
                continue;
            }
            let idle = client.idle_for();
            let in_transaction = client.in_transaction();
            let (code, message) = if in_transaction
                && !proxy.idle_in_transaction_timeout.is_zero()
                && idle >= proxy.idle_in_transaction_timeout
            {
                (
                    sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                    "terminating connection due to idle-in-transaction timeout (proxy.idle_in_transaction_timeout)",
                )
            } else if !in_transaction
                && !proxy.client_idle_timeout.is_zero()
                && idle >= proxy.client_idle_timeout
                && client.state() != ClientState::Waiting
            {
                (
                    sqlstate::IDLE_SESSION_TIMEOUT,
                    "terminating connection due to idle-session timeout (proxy.client_idle_timeout)",
                )
            } else {
                continue;
            };
            let fatal =
                messages::build(|b| messages::error_response(b, Severity::Fatal, code, message));
            if client.terminate(&fatal) {
                tenant.error(code.code().as_bytes());
                tracing::info!(client = %ClientId(client.id), tenant = %tenant.name, user = %client.user, peer = %client.peer, code = code.code(), "{message}");
            }
        }
    }
}
