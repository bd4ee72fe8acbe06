//! Background upkeep of the pools: close what is too old or idle too long, keep
//! `min_idle` connections warm for active tenants, drop pools that hold nothing.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{tenant, Pools};
use crate::backend;
use crate::registry::TenantName;

impl Pools {
    /// One round of upkeep; whether some tenant waits for room on a host.
    pub fn maintain(self: &Arc<Self>) -> bool {
        let (idle_timeout, max_lifetime) = (self.settings.idle_timeout, self.settings.max_lifetime);
        // Per host: how many more idle connections to close for tenants waiting there.
        let mut owed: HashMap<String, usize> = HashMap::new();
        let mut someone_waits = false;
        // Shared sets keep what their most demanding active tenant keeps.
        let mut keep: HashMap<*const tenant::IdleSet, usize> = HashMap::new();
        let mut swept = 0;
        for pool in self.pools.iter() {
            pool.reap(idle_timeout, max_lifetime);
            swept += pool.statements.sweep();
            if pool.is_shared() {
                let k = keep.entry(Arc::as_ptr(&pool.idle)).or_default();
                *k = (*k).max(pool.keep(idle_timeout));
            }
            // Tenants wait for room on this host: idle connections whose turn is over
            // are closed, and their places go to the waiters in order.
            let owed = owed
                .entry(pool.budget.address.clone())
                .or_insert_with(|| pool.budget.waiting());
            someone_waits |= *owed > 0;
            // A shared set's idle servers stay for its own waiting clients.
            let set_waits = pool.idle.waiting.load(Ordering::Relaxed) > 0;
            while *owed > 0 && !set_waits {
                let Some(idle) = pool.take_oldest_evictable_idle() else {
                    break;
                };
                super::conn::close_later(idle.conn, idle.budget, None);
                *owed -= 1;
            }
            for _ in 0..pool.warm_deficit(idle_timeout) {
                // Warming never waits for budget: it only uses what is free.
                let Ok(room) = pool.idle.try_room() else {
                    break;
                };
                let Some(budget) = pool.budget.try_acquire() else {
                    break;
                };
                let budget = budget.in_set(room);
                pool.warming.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(open_one(self.clone(), pool.clone(), budget));
            }
        }
        // A pool someone still holds (a client checking out, a lent connection, a warming
        // task) stays, so a connection never comes back to a pool nobody can reach.
        let pools = self.pools.len();
        self.pools.retain(|_, pool| {
            Arc::strong_count(pool) > 1 || !pool.is_empty() || pool.warm_deficit(idle_timeout) > 0
        });
        // Statement texts (up to max_message_size each) went: their pages go back to
        // the system now, not whenever the allocator is next busy.
        if swept > 0 || self.pools.len() < pools {
            crate::alloc::give_back_freed_memory();
        }
        for set in self.shared.iter() {
            let keep = keep.get(&Arc::as_ptr(set.value())).copied().unwrap_or(0);
            set.reap(keep, idle_timeout, max_lifetime);
        }
        // A set no pool uses and that holds nothing goes.
        self.shared
            .retain(|_, set| Arc::strong_count(set) > 1 || set.len() > 0);
        // Greetings no pool uses any more go with their last pool.
        self.greetings
            .retain(|_, greeting| Arc::strong_count(greeting) > 1);
        // Tenants whose last pool just went may have figures to retire.
        self.metrics.retire_beyond_bound();
        self.gates.prune();
        someone_waits
    }
}

impl Pools {
    /// Opens up to `n` server connections for each of `tenant`'s current pools (no
    /// more than a pool's size with those already open), all at once, and waits for
    /// them up to `within`: a tenant resuming after a move then finds its servers on
    /// the new host open rather than each client waiting for one to open. Uses only
    /// what the host's budget has free. How many were opened in time.
    pub async fn warm(self: &Arc<Self>, tenant: &TenantName, n: usize, within: Duration) -> usize {
        let pools: Vec<Arc<tenant::TenantPool>> = self
            .pools
            .iter()
            .filter(|p| &p.key().tenant == tenant && !p.is_retired())
            .map(|p| p.value().clone())
            .collect();
        let mut opening = tokio::task::JoinSet::new();
        for pool in pools {
            let open = pool.busy() + pool.idle_count() + pool.warming.load(Ordering::Relaxed);
            for _ in 0..n.min(pool.size.saturating_sub(open)) {
                // As upkeep's warming: only what the set and the host have free.
                let Ok(room) = pool.idle.try_room() else {
                    break;
                };
                let Some(budget) = pool.budget.try_acquire() else {
                    break;
                };
                let budget = budget.in_set(room);
                pool.warming.fetch_add(1, Ordering::Relaxed);
                opening.spawn(open_one(self.clone(), pool.clone(), budget));
            }
        }
        let mut opened = 0;
        let all = async {
            while let Some(done) = opening.join_next().await {
                opened += usize::from(done.unwrap_or(false));
            }
        };
        let _ = tokio::time::timeout(within, all).await;
        // Those still opening go on by themselves.
        opening.detach_all();
        opened
    }
}

/// Opens one server connection for `pool` and gives it to the pool as idle; the
/// caller counted it in `pool.warming` (so upkeep does not open it twice).
async fn open_one(
    pools: Arc<Pools>,
    pool: Arc<tenant::TenantPool>,
    budget: super::budget::BudgetPermit,
) -> bool {
    // Through the restart watch, never waiting (the deadline is now): a host that
    // says it is starting up is marked restarting, and one that opens is marked back.
    let opened = match super::restart::connect(
        &pool.target,
        &pool.budget.restart,
        pools.settings.checkout_timeout,
        pools.settings.connect_timeout,
        pools.max_message,
        std::time::Instant::now(),
    )
    .await
    {
        Ok(mut conn) => {
            conn.prepared = backend::PreparedCache::new(pools.settings.max_prepared_statements);
            conn.shared = pool.is_shared();
            pool.opened(&conn);
            pool.give_back(Box::new(conn), budget);
            true
        }
        Err(e) => {
            tracing::warn!(tenant = %pool.tenant, error = %e, "cannot warm a server connection");
            false
        }
    };
    pool.warming.fetch_sub(1, Ordering::Relaxed);
    opened
}

/// Upkeep when no tenant waits for room: reaping and warming need no finer grain, and
/// an idle proxy wakes once a second, not once a turn.
const QUIET_UPKEEP: Duration = Duration::from_secs(1);

/// Runs `Pools::maintain` until the runtime stops: every `every` (at most a host
/// turn) while tenants wait for room on a host, so turns end on time; else once a
/// second or as soon as a tenant starts waiting.
pub fn run_maintenance(pools: Arc<Pools>, every: Duration) {
    tokio::spawn(async move {
        loop {
            if pools.maintain() {
                tokio::time::sleep(every).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(QUIET_UPKEEP.max(every)) => {}
                    _ = pools.upkeep.notified() => {}
                }
            }
        }
    });
}
