//! SHOW …: what the registry, the pools and the tenants' figures say now.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use super::command::Show;
use super::wire::Value;
use crate::app::App;
use crate::metrics::ClientState;

pub type Rows = Vec<Vec<Value>>;

pub fn rows(app: &App, show: Show) -> Rows {
    match show {
        Show::Tenants => tenants(app),
        Show::Pools => pools(app),
        Show::Clients => clients(app),
        Show::Servers => servers(app),
        Show::Hosts => hosts(app),
        Show::Stats => stats(app),
        Show::Config => config(app),
        Show::Version => vec![vec![version().into()]],
        // Answered by `moving::rows`, which reads the registry database.
        Show::Moves => Rows::new(),
    }
}

pub fn version() -> String {
    format!("pgtenant {}", env!("CARGO_PKG_VERSION"))
}

fn secs(d: std::time::Duration) -> Value {
    Value::Float(d.as_secs_f64())
}

fn millis(d: std::time::Duration) -> Value {
    Value::Float(d.as_secs_f64() * 1000.0)
}

/// Listed tenants, and those made from the template entry that have been seen.
fn tenants(app: &App) -> Rows {
    let snapshot = app.registry.snapshot();
    let default_mode = app.settings.proxy.pool_mode;
    let mut tenants: BTreeMap<String, _> = snapshot
        .tenants()
        .map(|t| (t.name.to_string(), t.clone()))
        .collect();
    for stats in app.metrics.tenants() {
        if !tenants.contains_key(stats.name.as_str()) {
            if let Some(t) = snapshot.tenant(stats.name.as_str()) {
                tenants.insert(t.name.to_string(), t);
            }
        }
    }
    tenants
        .values()
        .map(|t| {
            let clients = app
                .metrics
                .find_tenant(t.name.as_str())
                .map_or(0, |s| s.client_count());
            vec![
                t.name.as_str().into(),
                t.host.as_str().into(),
                t.database.as_str().into(),
                t.search_path.join(", ").into(),
                mode_name(t.pool_mode.unwrap_or(default_mode)).into(),
                t.pool_size.unwrap_or(app.settings.pool.pool_size).into(),
                clients.into(),
                app.pools.is_paused(&t.name).into(),
            ]
        })
        .collect()
}

pub fn mode_name(mode: crate::config::PoolMode) -> &'static str {
    match mode {
        crate::config::PoolMode::Session => "session",
        crate::config::PoolMode::Transaction => "transaction",
    }
}

fn pools(app: &App) -> Rows {
    app.pools
        .report()
        .into_iter()
        .map(|p| {
            let stats = app.metrics.tenant(&p.tenant);
            let state = |s| Value::from(stats.in_state(s));
            vec![
                p.tenant.as_str().into(),
                p.user.into(),
                p.host.as_str().into(),
                p.database.into(),
                p.size.into(),
                p.active.into(),
                p.idle.into(),
                state(ClientState::Active),
                state(ClientState::Idle),
                state(ClientState::Waiting),
                state(ClientState::Parked),
                p.paused.into(),
            ]
        })
        .collect()
}

fn clients(app: &App) -> Rows {
    let mut rows = Vec::new();
    for tenant in app.metrics.tenants() {
        for c in tenant.clients() {
            let connected = c.connected_at.elapsed().unwrap_or_default();
            rows.push(vec![
                format!("c{}", c.id).into(),
                tenant.name.as_str().into(),
                c.user.as_str().into(),
                c.peer.to_string().into(),
                c.mode.into(),
                c.state().name().into(),
                c.in_transaction().into(),
                c.server_pid().map(i64::from).into(),
                secs(connected),
                secs(c.idle_for()),
            ]);
        }
    }
    rows
}

/// Servers lent to clients (known by the clients holding them), then idle ones.
fn servers(app: &App) -> Rows {
    let pools: HashMap<_, _> = app
        .pools
        .report()
        .into_iter()
        .map(|p| (p.tenant.clone(), p))
        .collect();
    let mut rows = Vec::new();
    for tenant in app.metrics.tenants() {
        let pool = pools.get(&tenant.name);
        for c in tenant.clients() {
            let Some(pid) = c.server_pid() else { continue };
            rows.push(vec![
                tenant.name.as_str().into(),
                pool.map(|p| p.user.clone()).into(),
                pool.map(|p| p.address.clone()).into(),
                pool.map(|p| p.database.clone()).into(),
                "active".into(),
                i64::from(pid).into(),
                format!("c{}", c.id).into(),
                Value::Null,
                Value::Null,
            ]);
        }
    }
    for s in app.pools.idle_servers() {
        rows.push(vec![
            s.tenant.as_str().into(),
            s.user.into(),
            s.address.into(),
            s.database.into(),
            "idle".into(),
            i64::from(s.pid).into(),
            Value::Null,
            secs(s.age),
            secs(s.idle),
        ]);
    }
    rows
}

fn hosts(app: &App) -> Rows {
    let snapshot = app.registry.snapshot();
    let names: HashMap<String, String> = snapshot
        .hosts()
        .map(|h| (h.address.clone(), h.name.to_string()))
        .collect();
    let mut reported: HashMap<String, _> = app
        .pools
        .hosts_report()
        .into_iter()
        .map(|h| (h.address.clone(), h))
        .collect();
    let mut hosts: Vec<_> = snapshot.hosts().cloned().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows: Rows = hosts
        .iter()
        .map(|h| {
            let r = reported.remove(&h.address);
            vec![
                h.name.as_str().into(),
                h.address.as_str().into(),
                r.as_ref()
                    .map_or(h.max_connections, |r| r.max_connections)
                    .into(),
                r.as_ref().map_or(0, |r| r.open).into(),
                r.as_ref().map_or(0, |r| r.waiting).into(),
                r.as_ref().map_or(0, |r| r.opens).into(),
            ]
        })
        .collect();
    // Hosts no longer in the registry that still hold connections.
    for (address, r) in reported {
        rows.push(vec![
            names.get(&address).cloned().into(),
            address.into(),
            r.max_connections.into(),
            r.open.into(),
            r.waiting.into(),
            r.opens.into(),
        ]);
    }
    rows
}

fn stats(app: &App) -> Rows {
    app.metrics
        .tenants()
        .iter()
        .map(|t| {
            let errors: u64 = t.errors().iter().map(|(_, n)| n).sum();
            vec![
                t.name.as_str().into(),
                t.transactions.load(Ordering::Relaxed).into(),
                t.queries.load(Ordering::Relaxed).into(),
                t.bytes_in.load(Ordering::Relaxed).into(),
                t.bytes_out.load(Ordering::Relaxed).into(),
                millis(t.transaction_time.average()),
                millis(t.transaction_time.p99()),
                millis(t.checkout_wait.average()),
                millis(t.checkout_wait.p99()),
                errors.into(),
            ]
        })
        .collect()
}

fn config(app: &App) -> Rows {
    let s = &app.settings;
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let pairs: Vec<(&str, String)> = vec![
        ("proxy.listen", s.proxy.listen.clone()),
        ("proxy.tenant_from", format!("{:?}", s.proxy.tenant_from)),
        ("proxy.pool_mode", mode_name(s.proxy.pool_mode).into()),
        ("proxy.auth", format!("{:?}", s.proxy.auth)),
        ("proxy.max_client_conn", s.proxy.max_client_conn.to_string()),
        (
            "proxy.max_client_conn_per_tenant",
            s.proxy.max_client_conn_per_tenant.to_string(),
        ),
        ("proxy.client_idle_timeout", d(s.proxy.client_idle_timeout)),
        (
            "proxy.idle_in_transaction_timeout",
            d(s.proxy.idle_in_transaction_timeout),
        ),
        ("proxy.shutdown_timeout", d(s.proxy.shutdown_timeout)),
        ("proxy.park_after", d(s.proxy.park_after)),
        ("proxy.workers", s.proxy.workers.to_string()),
        ("pool.pool_size", s.pool.pool_size.to_string()),
        ("pool.min_idle", s.pool.min_idle.to_string()),
        ("pool.checkout_timeout", d(s.pool.checkout_timeout)),
        ("pool.query_wait_timeout", d(s.pool.query_wait_timeout)),
        ("pool.connect_timeout", d(s.pool.connect_timeout)),
        ("pool.idle_timeout", d(s.pool.idle_timeout)),
        ("pool.max_lifetime", d(s.pool.max_lifetime)),
        ("pool.reset_query", s.pool.reset_query.clone()),
        (
            "registry.file",
            s.registry
                .file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
        ),
        (
            "admin.http_listen",
            s.admin.http_listen.clone().unwrap_or_default(),
        ),
        (
            "admin.http_token",
            match s.admin.http_token {
                Some(_) => "(set)".into(),
                None => String::new(),
            },
        ),
        ("admin.console_database", s.admin.console_database.clone()),
        ("admin.users", s.admin.users.join(",")),
        ("admin.pause_timeout", d(s.admin.pause_timeout)),
        ("admin.move_timeout", d(s.admin.move_timeout)),
        (
            "admin.metrics_max_tenants",
            s.admin.metrics_max_tenants.to_string(),
        ),
    ];
    pairs
        .into_iter()
        .map(|(k, v)| vec![k.into(), v.into()])
        .collect()
}
