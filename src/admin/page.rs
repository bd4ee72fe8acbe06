//! The status page: one HTML file with a little JS that reads /status.json every few
//! seconds. No build step; the data is what SHOW POOLS and SHOW HOSTS say.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::app::App;
use crate::metrics::ClientState;

pub const HTML: &str = include_str!("page.html");

#[derive(Serialize)]
struct Status {
    version: String,
    uptime_s: u64,
    clients: usize,
    tenants: Vec<TenantRow>,
    hosts: Vec<HostRow>,
}

#[derive(Serialize)]
struct TenantRow {
    tenant: String,
    clients_active: u64,
    clients_idle: u64,
    clients_waiting: u64,
    clients_parked: u64,
    servers_active: usize,
    servers_idle: usize,
    pool_size: usize,
    paused: bool,
    transactions: u64,
    queries: u64,
}

#[derive(Serialize)]
struct HostRow {
    host: String,
    address: String,
    open: usize,
    max_connections: usize,
    tenants_waiting: usize,
}

/// Tenants sorted by activity (busiest first), hosts by name.
pub fn status_json(app: &App) -> String {
    let mut pools: HashMap<String, (usize, usize, usize)> = HashMap::new();
    for p in app.pools.report() {
        let e = pools.entry(p.tenant.to_string()).or_default();
        e.0 += p.active;
        e.1 += p.idle;
        e.2 += p.size;
    }
    let mut tenants = app.metrics.tenants();
    tenants.sort_by_key(|t| std::cmp::Reverse(t.activity()));
    let snapshot = app.registry.snapshot();
    let tenants = tenants
        .iter()
        .map(|t| {
            let (active, idle, size) = pools.get(t.name.as_str()).copied().unwrap_or_default();
            let size = match size {
                0 => snapshot
                    .tenant(t.name.as_str())
                    .and_then(|t| t.pool_size)
                    .unwrap_or(app.settings.pool.pool_size),
                n => n,
            };
            TenantRow {
                tenant: t.name.to_string(),
                clients_active: t.in_state(ClientState::Active),
                clients_idle: t.in_state(ClientState::Idle),
                clients_waiting: t.in_state(ClientState::Waiting),
                clients_parked: t.in_state(ClientState::Parked),
                servers_active: active,
                servers_idle: idle,
                pool_size: size,
                paused: app.pools.is_paused(&t.name),
                transactions: t.transactions.load(Ordering::Relaxed),
                queries: t.queries.load(Ordering::Relaxed),
            }
        })
        .collect();
    let reports: HashMap<String, _> = app
        .pools
        .hosts_report()
        .into_iter()
        .map(|h| (h.address.clone(), h))
        .collect();
    let mut hosts: Vec<_> = snapshot.hosts().cloned().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let hosts = hosts
        .iter()
        .map(|h| {
            let r = reports.get(&h.address);
            HostRow {
                host: h.name.to_string(),
                address: h.address.clone(),
                open: r.map_or(0, |r| r.open),
                max_connections: h.max_connections,
                tenants_waiting: r.map_or(0, |r| r.waiting),
            }
        })
        .collect();
    let status = Status {
        version: super::show::version(),
        uptime_s: app.metrics.uptime().as_secs(),
        clients: app.clients.load(Ordering::Relaxed),
        tenants,
        hosts,
    };
    serde_json::to_string(&status).expect("plain data serializes")
}
