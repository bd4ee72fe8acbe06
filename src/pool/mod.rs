//! Per-tenant pools of server connections under per-host budgets.
//!
//! A tenant's pool bounds how many server connections it holds (`pool_size`, a FIFO
//! semaphore); a host's budget bounds all tenants on that host together. When a host is
//! at its budget, the least recently used idle connection of another tenant there is
//! closed before anyone waits. Pools are made on first use and dropped when empty.
//!
//! In transaction mode, schema tenants of one (host, database, role) share their idle
//! server connections (`pool.share_schema_tenants`): each keeps its own slots (its
//! `pool_size` caps the servers it holds at once), the set holds the idle servers,
//! and the search_path follows the client (`PoolHandle::path`).

mod budget;
mod conn;
pub mod gate;
mod line;
mod maintain;
pub mod report;
mod restart;
pub mod statements;
mod tenant;

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use dashmap::DashMap;

pub use conn::PooledConn;
pub use maintain::run_maintenance;
pub use restart::is_shutdown_code;

use budget::HostBudget;
use tenant::{IdleSet, TenantPool};

use crate::backend::{self, BackendError, BackendTarget, Greeting, KeySlot};
use crate::config::{PoolMode, PoolSettings};
use crate::metrics::Metrics;
use crate::registry::{Host, Tenant, TenantName};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "tenant \"{tenant}\": no server connection free within {waited:?} (pool_size {pool_size})"
    )]
    Timeout {
        tenant: TenantName,
        pool_size: usize,
        waited: Duration,
    },
    /// Transaction mode, `pool.query_wait_timeout`: the query waited too long.
    #[error("query_wait_timeout: tenant \"{tenant}\": no server connection free for the query within {waited:?} (pool_size {pool_size})")]
    QueryWait {
        tenant: TenantName,
        pool_size: usize,
        waited: Duration,
    },
    #[error("tenant \"{tenant}\" is paused (waited {waited:?})")]
    Paused {
        tenant: TenantName,
        waited: Duration,
    },
    #[error("tenant \"{tenant}\": host {host} ({address}): {source}")]
    Backend {
        tenant: TenantName,
        host: String,
        address: String,
        source: BackendError,
    },
}

/// A client's reference to its tenant's pool.
#[derive(Clone)]
pub struct PoolHandle(Arc<TenantPool>);

impl PoolHandle {
    /// What a server connection of this pool says at startup, once one has opened.
    pub fn greeting(&self) -> Option<Arc<Greeting>> {
        self.0.greeting()
    }

    /// The pool's named statements as its servers know them. Kept per tenant even
    /// when servers are shared: each tenant's statements get their own names, so
    /// their own plans under their own search_path.
    pub fn statements(&self) -> &statements::Statements {
        &self.0.statements
    }

    /// Shared servers: the statement that sets this tenant's search_path, which the
    /// relay sends on a server before the client's first message there. `None`: the
    /// tenant's servers carry its search_path from their startup.
    pub fn path(&self) -> Option<&Arc<str>> {
        self.0.path.as_ref()
    }
}

/// One pool per tenant and server role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    tenant: TenantName,
    user: String,
}

pub struct Pools {
    settings: PoolSettings,
    /// The proxy's pool mode, for tenants that do not set their own.
    default_mode: PoolMode,
    max_message: usize,
    pools: DashMap<PoolKey, Arc<TenantPool>>,
    hosts: DashMap<String, Arc<HostBudget>>,
    /// Idle servers shared by schema tenants, by what they connect to (no search_path).
    shared: DashMap<BackendTarget, Arc<IdleSet>>,
    /// By (address, database, role): what a fresh server session there reports.
    greetings: DashMap<(String, String, String), Arc<tenant::GreetingSlot>>,
    /// Wakes the upkeep task when a tenant starts waiting for room on a host: turns
    /// are then kept at `host_turn` granularity, otherwise upkeep runs once a second.
    upkeep: tokio::sync::Notify,
    /// By (address, role): the SCRAM keys passthrough clients proved for that role.
    keys: DashMap<(String, String), KeySlot>,
    /// Per tenant: the pause gate, checked on every checkout.
    pub gates: gate::Gates,
    /// Per tenant figures, counted on checkout.
    pub metrics: Arc<Metrics>,
}

impl Pools {
    pub fn new(settings: PoolSettings, max_message: usize, default_mode: PoolMode) -> Pools {
        Pools {
            settings,
            default_mode,
            max_message,
            pools: DashMap::new(),
            hosts: DashMap::new(),
            shared: DashMap::new(),
            greetings: DashMap::new(),
            upkeep: tokio::sync::Notify::new(),
            keys: DashMap::new(),
            gates: gate::Gates::default(),
            metrics: Arc::default(),
        }
    }

    /// An idle connection that is still alive, if one can be had without waiting:
    /// the common case of a transaction-mode client, served without a future.
    pub fn try_checkout(&self, handle: &PoolHandle) -> Option<PooledConn> {
        let pool = &handle.0;
        if pool.gate.is_paused() || pool.is_retired() {
            return None;
        }
        let slot = pool.slots.clone().try_acquire_owned().ok()?;
        while let Some(idle) = pool.take_idle() {
            if conn::is_alive(&idle.conn, &pool.budget) {
                pool.stats.checkout_wait.observe(Duration::ZERO);
                return Some(PooledConn::new(idle.conn, idle.budget, slot, pool.clone()));
            }
            tracing::debug!(tenant = %pool.tenant, "dropping a server connection that died while idle");
        }
        None
    }

    /// A server connection for `tenant` as `user`: an idle one that is still alive, or
    /// a new one within the tenant's pool size and the host's budget.
    pub async fn checkout(&self, handle: &PoolHandle) -> Result<PooledConn, PoolError> {
        self.checkout_within(handle, self.settings.checkout_timeout)
            .await
    }

    /// A server for the next query of a connected transaction-mode client: waits up
    /// to `pool.query_wait_timeout` when it is set, else as `checkout` does.
    pub async fn checkout_for_query(&self, handle: &PoolHandle) -> Result<PooledConn, PoolError> {
        let within = self.settings.query_wait_timeout;
        if within.is_zero() {
            return self.checkout(handle).await;
        }
        match self.checkout_within(handle, within).await {
            Err(PoolError::Timeout {
                tenant,
                pool_size,
                waited,
            }) => Err(PoolError::QueryWait {
                tenant,
                pool_size,
                waited,
            }),
            other => other,
        }
    }

    async fn checkout_within(
        &self,
        handle: &PoolHandle,
        within: Duration,
    ) -> Result<PooledConn, PoolError> {
        let started = Instant::now();
        let checked_out = self.checkout_inner(handle, started, within).await;
        if checked_out.is_ok() {
            handle.0.stats.checkout_wait.observe(started.elapsed());
        }
        checked_out
    }

    async fn checkout_inner(
        &self,
        handle: &PoolHandle,
        started: Instant,
        within: Duration,
    ) -> Result<PooledConn, PoolError> {
        let deadline = started + within;
        let passed = match handle.0.gate.is_paused() {
            true => Some(gate::pass(&handle.0.gate, &handle.0.tenant, started, deadline).await?),
            false => None,
        };
        // A client that waited through a move holds the pool of the old host: its
        // server comes from the pool that replaced it, never from the old host.
        let replacement = self.replacement(&handle.0);
        let pool = replacement.as_ref().unwrap_or(&handle.0);
        let timeout = || PoolError::Timeout {
            tenant: pool.tenant.clone(),
            pool_size: pool.size,
            waited: started.elapsed(),
        };
        let acquire = pool.slots.clone().acquire_owned();
        tokio::pin!(acquire);
        // Queued for a slot (the semaphore is FIFO) before the next waiter at the
        // gate goes: after RESUME they get servers in the order they came.
        let first = std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx))).await;
        drop(passed);
        let slot = match first {
            Poll::Ready(slot) => slot,
            Poll::Pending => tokio::time::timeout_at(deadline.into(), acquire)
                .await
                .map_err(|_| timeout())?,
        }
        .expect("pool semaphores are never closed");

        // Our own idle connection, else a new one within the host's budget, else an
        // idle connection of another tenant closed to make room, else wait for a change.
        let mut waiting = None;
        let _counted = WaitCount::new(&pool.idle);
        // Shared sets hand a returning server to their first waiting client.
        let mut handed = Handoff {
            rx: None,
            pool: pool.clone(),
        };
        // A shared set with its own size: our place in it, before any on the host.
        let mut room = None;
        let budget = loop {
            let returned = pool.idle.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            while let Some(idle) = pool.take_idle() {
                if conn::is_alive(&idle.conn, &pool.budget) {
                    return Ok(PooledConn::new(idle.conn, idle.budget, slot, pool.clone()));
                }
                tracing::debug!(tenant = %pool.tenant, "dropping a server connection that died while idle");
            }
            if let (Some(set), Some(path), None) = (&pool.idle.room, &pool.path, &room) {
                match set.clone().try_acquire_owned() {
                    Ok(place) => room = Some(place),
                    // The set holds all the servers it may: wait in line for one of
                    // them to come back, or for one to close and leave room.
                    Err(_) if handed.rx.is_none() => {
                        handed.rx = Some(pool.idle.queue(path.clone()));
                        continue;
                    }
                    Err(_) => {
                        tokio::select! {
                            Some(idle) = handed.recv() => {
                                if conn::is_alive(&idle.conn, &pool.budget) {
                                    return Ok(PooledConn::new(idle.conn, idle.budget, slot, pool.clone()));
                                }
                            }
                            place = set.clone().acquire_owned() => {
                                room = Some(place.expect("set semaphores are never closed"));
                            }
                            _ = returned => {}
                            _ = tokio::time::sleep_until(deadline.into()) => return Err(timeout()),
                        }
                        continue;
                    }
                }
            }
            if let Some(permit) = pool.budget.try_acquire() {
                break permit;
            }
            // Others already queued for room come first; otherwise make room now.
            let victim = match pool.budget.has_waiters() {
                true => None,
                false => self.take_idle_of_another_tenant(pool),
            };
            if let Some(victim) = victim {
                // Its permit becomes ours once its session has really ended.
                Box::pin(victim.conn.close(None)).await;
                break victim.budget;
            }
            // Host full and nothing idle to close: queue (once, keeping our place) for
            // the next connection that closes on this host.
            if waiting.is_none() {
                waiting = Some(pool.budget.wait());
                self.upkeep.notify_one();
                if let Some(permit) = pool.budget.try_acquire() {
                    break permit;
                }
            }
            if let (Some(path), None) = (&pool.path, &handed.rx) {
                handed.rx = Some(pool.idle.queue(path.clone()));
                // One may have come back while we queued.
                continue;
            }
            let queued = waiting.as_mut().expect("queued above");
            // Connections whose turn is over come to the queue when they are given
            // back, or from the upkeep task when they sit idle (`Pools::hand_over_idle`).
            tokio::select! {
                handed = queued => match handed {
                    Ok(permit) => break permit,
                    Err(_) => waiting = None,
                },
                // One of our own connections came back.
                _ = returned => {}
                Some(idle) = handed.recv() => {
                    if conn::is_alive(&idle.conn, &pool.budget) {
                        return Ok(PooledConn::new(idle.conn, idle.budget, slot, pool.clone()));
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => return Err(timeout()),
            }
        };
        // Out of the set's line before opening, so no server handed over meanwhile
        // waits on us while we connect: one that already was is taken instead (the
        // room and the budget just got go back).
        if let Some(idle) = handed.leave() {
            if conn::is_alive(&idle.conn, &pool.budget) {
                return Ok(PooledConn::new(idle.conn, idle.budget, slot, pool.clone()));
            }
        }
        // Boxed: opening is rare, and inline it would enlarge every client's state.
        // A host that is restarting is tried again until `deadline` (`restart`).
        let mut conn = Box::pin(restart::connect(
            &pool.target,
            &pool.budget.restart,
            self.settings.checkout_timeout,
            self.settings.connect_timeout,
            self.max_message,
            deadline,
        ))
        .await
        .map_err(|source| {
            // The operator's view: which address, and what the system said (refused,
            // timed out); the client is told less (`proxy::refusal`).
            tracing::info!(tenant = %pool.tenant, host = %pool.host, address = %pool.target.address, error = %source, "cannot open a server connection");
            source
        })
        .map_err(|source| PoolError::Backend {
            tenant: pool.tenant.clone(),
            host: pool.host.to_string(),
            address: pool.target.address.clone(),
            source,
        })?;
        conn.prepared = backend::PreparedCache::new(self.settings.max_prepared_statements);
        conn.shared = pool.is_shared();
        pool.opened(&conn);
        tracing::debug!(tenant = %pool.tenant, address = %pool.target.address, "opened server connection");
        // Counted in this set's room, not a closed victim's.
        let budget = budget.in_set(room);
        Ok(PooledConn::new(Box::new(conn), budget, slot, pool.clone()))
    }

    /// The pool serving `tenant` on `host` for a client named `client_user`; made on
    /// first use, replaced when the registry changed what it connects to. Clients keep
    /// the handle while the registry snapshot they resolved against is current.
    pub fn pool(&self, tenant: &Tenant, host: &Host, client_user: &str) -> PoolHandle {
        PoolHandle(self.pool_for(tenant, host, client_user))
    }

    fn pool_for(&self, tenant: &Tenant, host: &Host, client_user: &str) -> Arc<TenantPool> {
        let mode = tenant.pool_mode.unwrap_or(self.default_mode);
        // Schema tenants in transaction mode share servers opened without a
        // search_path; the others keep theirs in the startup packet.
        let shares = self.settings.share_schema_tenants
            && mode == PoolMode::Transaction
            && tenant.share != Some(false)
            && !tenant.search_path.is_empty();
        let target = BackendTarget {
            address: host.address.clone(),
            database: tenant.database.clone(),
            user: tenant
                .backend_user
                .clone()
                .unwrap_or_else(|| client_user.to_string()),
            password: tenant.backend_password.clone(),
            search_path: match shares {
                true => Vec::new(),
                false => tenant.search_path.clone(),
            },
            tls: host.tls.clone(),
            keys: None,
        };
        // A role the registry holds no password for may log in with the keys its
        // clients proved (auth passthrough).
        let target = BackendTarget {
            keys: target
                .password
                .is_none()
                .then(|| self.key_slot(&target.address, &target.user)),
            ..target
        };
        let path: Option<Arc<str>> =
            shares.then(|| backend::search_path_statement(&tenant.search_path).into());
        let key = PoolKey {
            tenant: tenant.name.clone(),
            user: target.user.clone(),
        };
        let size = tenant.pool_size.unwrap_or(self.settings.pool_size);
        let min_idle = tenant.min_idle.unwrap_or(self.settings.min_idle).min(size);
        let same = |pool: &TenantPool| {
            pool.target == target
                && pool.size == size
                && pool.min_idle == min_idle
                && pool.path == path
        };
        if let Some(pool) = self.pools.get(&key) {
            if same(&pool) {
                return pool.clone();
            }
        }
        let budget = self.budget_for(host);
        // Tenants in one database as one role (schema per tenant) get the same
        // greeting: the first client of each new pool need not wait for a server.
        let greeting = self
            .greetings
            .entry((
                target.address.clone(),
                target.database.clone(),
                target.user.clone(),
            ))
            .or_default()
            .clone();
        let shared = path.as_ref().map(|path| {
            let set = self
                .shared
                .entry(target.clone())
                .or_insert_with(|| Arc::new(IdleSet::shared(self.settings.shared_pool_size)))
                .clone();
            (set, path.clone(), self.settings.share_streak)
        });
        let new_pool = || {
            TenantPool::new(
                tenant.name.clone(),
                host.name.clone(),
                target.clone(),
                (size, min_idle),
                budget.clone(),
                greeting.clone(),
                shared.clone(),
                self.gates.get(&tenant.name),
                self.metrics.tenant(&tenant.name),
            )
        };
        let mut entry = self.pools.entry(key).or_insert_with(new_pool);
        if !same(&entry) {
            // The registry moved or changed this tenant: new connections go to the new
            // target; the old pool's connections close as they come back.
            tracing::info!(tenant = %tenant.name, address = %target.address, "tenant target changed; new pool");
            entry.retire();
            *entry = new_pool();
        }
        entry.clone()
    }

    /// The pool now serving what `pool` served, when the registry replaced it.
    fn replacement(&self, pool: &Arc<TenantPool>) -> Option<Arc<TenantPool>> {
        if !pool.is_retired() {
            return None;
        }
        let key = PoolKey {
            tenant: pool.tenant.clone(),
            user: pool.target.user.clone(),
        };
        let current = self.pools.get(&key)?.clone();
        (!current.is_retired()).then_some(current)
    }

    /// A tenant moved: each of its pools is replaced by one for `tenant` on `host`
    /// now, before any waiting client goes on, so no new server connection is opened
    /// to the old target. The old pools' connections close as they come back.
    pub fn repoint(&self, tenant: &Tenant, host: &Host) -> usize {
        let users: Vec<String> = self
            .pools
            .iter()
            .filter(|p| p.key().tenant == tenant.name)
            .map(|p| p.key().user.clone())
            .collect();
        for user in &users {
            self.pool_for(tenant, host, user);
        }
        users.len()
    }

    /// Where the SCRAM keys proven for `role` on `address` are kept.
    pub fn key_slot(&self, address: &str, role: &str) -> KeySlot {
        self.keys
            .entry((address.to_string(), role.to_string()))
            .or_default()
            .clone()
    }

    fn budget_for(&self, host: &Host) -> Arc<HostBudget> {
        if let Some(budget) = self.hosts.get(&host.address) {
            return budget.clone();
        }
        self.hosts
            .entry(host.address.clone())
            .or_insert_with(|| {
                HostBudget::new(
                    host.address.clone(),
                    host.max_connections,
                    self.settings.host_turn,
                )
            })
            .clone()
    }

    /// Takes the least recently used idle connection of another pool on the same
    /// host whose turn is over, whose share of the budget the caller will use once it
    /// is closed.
    fn take_idle_of_another_tenant(&self, asking: &Arc<TenantPool>) -> Option<tenant::Idle> {
        let mut oldest: Option<(Instant, Arc<TenantPool>)> = None;
        for pool in self.pools.iter() {
            let pool = pool.value();
            if Arc::ptr_eq(&pool.idle, &asking.idle) || pool.budget.address != asking.budget.address
            {
                continue;
            }
            if let Some(since) = pool.oldest_evictable_idle() {
                if oldest.as_ref().is_none_or(|(t, _)| since < *t) {
                    oldest = Some((since, pool.clone()));
                }
            }
        }
        let (_, victim) = oldest?;
        let idle = victim.take_oldest_evictable_idle()?;
        tracing::debug!(victim = %victim.tenant, for_tenant = %asking.tenant, "host at budget; closing an idle connection of another tenant");
        Some(idle)
    }

    /// Server connections open towards `address`, idle and in use.
    pub fn open_connections(&self, address: &str) -> usize {
        self.hosts.get(address).map(|b| b.in_use()).unwrap_or(0)
    }

    pub fn pool_count(&self) -> usize {
        self.pools.len()
    }
}

/// A client's place in its shared set's queue. Dropped (served otherwise, timed out,
/// gone), a server handed to it meanwhile goes back to the set.
struct Handoff {
    rx: Option<tokio::sync::oneshot::Receiver<tenant::Idle>>,
    pool: Arc<TenantPool>,
}

impl Handoff {
    /// The server handed over, once it is; never while not queued.
    async fn recv(&mut self) -> Option<tenant::Idle> {
        match self.rx.as_mut() {
            Some(rx) => {
                let idle = rx.await.ok();
                self.rx = None;
                idle
            }
            None => std::future::pending().await,
        }
    }

    /// Leaves the line: the server handed over already, if one was.
    fn leave(&mut self) -> Option<tenant::Idle> {
        let mut rx = self.rx.take()?;
        rx.close();
        rx.try_recv().ok()
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if let Some(idle) = self.leave() {
            self.pool.give_back(idle.conn, idle.budget);
        }
    }
}

/// Counts a client waiting for a server of its pool's idle set, for as long as it waits.
struct WaitCount<'a>(&'a IdleSet);

impl<'a> WaitCount<'a> {
    fn new(set: &'a IdleSet) -> Self {
        set.waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WaitCount(set)
    }
}

impl Drop for WaitCount<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
