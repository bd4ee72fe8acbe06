//! What the pools hold now, for the admin console, the metrics and the status page:
//! copies taken under each pool's own lock, never held across anything.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Pools;
use crate::registry::{HostName, TenantName};

/// One pool (tenant and server role) as it is now.
#[derive(Debug, Clone)]
pub struct PoolReport {
    pub tenant: TenantName,
    pub user: String,
    pub host: HostName,
    pub address: String,
    pub database: String,
    pub size: usize,
    /// Server connections lent to clients.
    pub active: usize,
    pub idle: usize,
    pub paused: bool,
}

/// One host's budget as it is now.
#[derive(Debug, Clone)]
pub struct HostReport {
    pub address: String,
    pub max_connections: usize,
    pub open: usize,
    /// Tenants queued for room on the host.
    pub waiting: usize,
    pub opens: u64,
}

/// An idle server connection.
#[derive(Debug, Clone)]
pub struct IdleServer {
    pub tenant: TenantName,
    pub user: String,
    pub address: String,
    pub database: String,
    pub pid: i32,
    pub age: Duration,
    pub idle: Duration,
}

impl Pools {
    pub fn report(&self) -> Vec<PoolReport> {
        let mut pools: Vec<PoolReport> = self
            .pools
            .iter()
            .map(|p| PoolReport {
                tenant: p.tenant.clone(),
                user: p.target.user.clone(),
                host: p.host.clone(),
                address: p.target.address.clone(),
                database: p.target.database.clone(),
                size: p.size,
                active: p.busy(),
                idle: p.idle_count(),
                paused: p.gate.is_paused(),
            })
            .collect();
        pools.sort_by(|a, b| (&a.tenant, &a.user).cmp(&(&b.tenant, &b.user)));
        pools
    }

    pub fn hosts_report(&self) -> Vec<HostReport> {
        let mut hosts: Vec<HostReport> = self
            .hosts
            .iter()
            .map(|h| HostReport {
                address: h.address.clone(),
                max_connections: h.max,
                open: h.in_use(),
                waiting: h.waiting(),
                opens: h.opens.load(Ordering::Relaxed),
            })
            .collect();
        hosts.sort_by(|a, b| a.address.cmp(&b.address));
        hosts
    }

    pub fn idle_servers(&self) -> Vec<IdleServer> {
        let mut servers = Vec::new();
        for p in self.pools.iter() {
            p.each_idle(|conn, since| {
                servers.push(IdleServer {
                    tenant: p.tenant.clone(),
                    user: p.target.user.clone(),
                    address: p.target.address.clone(),
                    database: p.target.database.clone(),
                    pid: conn.key.pid,
                    age: conn.created.elapsed(),
                    idle: since.elapsed(),
                })
            });
        }
        servers
    }
}
