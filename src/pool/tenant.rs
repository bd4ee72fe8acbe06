//! One tenant's pool: its connection slots and its idle connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::budget::{BudgetPermit, HostBudget};
use super::conn::close_later;
use super::line::{Line, Waiter};
use crate::backend::{BackendTarget, Greeting, ServerConn};
use crate::registry::{HostName, TenantName};

/// The greeting of one (host, database, role): the same for each tenant there.
pub(super) type GreetingSlot = Mutex<Option<Arc<Greeting>>>;

/// Idle server connections, most recently used last: a tenant's own, or those of one
/// (host, database, role) that its schema tenants share.
#[derive(Default)]
pub(super) struct IdleSet {
    idle: Mutex<Vec<Idle>>,
    /// Fired when a connection comes back idle, for clients waiting on a full host.
    pub(super) returned: tokio::sync::Notify,
    /// Clients of the set's pools waiting for a connection on a full host: one that
    /// comes back stays for them rather than being closed for another pool.
    pub(super) waiting: std::sync::atomic::AtomicUsize,
    /// Shared sets: clients waiting for a server, first come first served; a server
    /// that comes back goes to the first of them rather than waking them all (or,
    /// for a bounded streak, to the first of its own search_path: `hand_over`).
    line: Mutex<Line<Idle>>,
    /// Shared sets: one permit per server the set may hold open at once
    /// (`pool.shared_pool_size`); `None`: only the host's budget bounds it.
    pub(super) room: Option<Arc<Semaphore>>,
}

impl IdleSet {
    /// A shared set that holds at most `servers` open at once (0: as many as the
    /// host's budget allows).
    pub(super) fn shared(servers: usize) -> IdleSet {
        IdleSet {
            room: (servers > 0).then(|| Arc::new(Semaphore::new(servers))),
            ..IdleSet::default()
        }
    }

    /// A place for one more server in this set, if it has room now (always, for a
    /// set without its own bound).
    pub(super) fn try_room(&self) -> Result<Option<OwnedSemaphorePermit>, ()> {
        match &self.room {
            None => Ok(None),
            Some(room) => room.clone().try_acquire_owned().map(Some).map_err(|_| ()),
        }
    }

    /// Queues for the next server that comes back, for a client whose tenant's
    /// search_path statement is `path`.
    pub(super) fn queue(&self, path: Arc<str>) -> tokio::sync::oneshot::Receiver<Idle> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.line.lock().unwrap().push(Waiter { path, tx });
        rx
    }

    /// Hands `idle` to a client still waiting; gives it back if none is. The first
    /// in line gets it, unless a client further back wants the search_path the server
    /// already has and the server has not yet served `streak` such clients in a row:
    /// that client saves a SET, which costs the server about half as much as a
    /// primary-key SELECT. The streak bounds how long the first in line can be passed
    /// over; the line finds that client by its path wherever it waits.
    fn hand_over(&self, mut idle: Idle, streak: u32) -> Option<Idle> {
        let mut line = self.line.lock().unwrap();
        loop {
            let same_path = match (&idle.conn.path, idle.conn.streak < streak) {
                (Some(path), true) => line.take_of_path(path),
                _ => None,
            };
            let waiter = match same_path {
                Some(waiter) => {
                    idle.conn.streak += 1;
                    waiter
                }
                None => {
                    idle.conn.streak = 0;
                    match line.pop_first() {
                        Some(first) => first,
                        None => return Some(idle),
                    }
                }
            };
            match waiter.tx.send(idle) {
                Ok(()) => return None,
                Err(refused) => idle = refused,
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// Each idle connection and since when it idles (for reports).
    pub(super) fn each(&self, mut f: impl FnMut(&ServerConn, Instant)) {
        for idle in self.idle.lock().unwrap().iter() {
            f(&idle.conn, idle.since);
        }
    }

    /// Closes idle connections that have lived past `max_lifetime`, and those idle
    /// past `idle_timeout` beyond the `keep` most recently used.
    pub(super) fn reap(&self, keep: usize, idle_timeout: Duration, max_lifetime: Duration) {
        self.line.lock().unwrap().prune();
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap();
        let (expired, mut live): (Vec<Idle>, Vec<Idle>) = idle
            .drain(..)
            .partition(|i| now.duration_since(i.conn.created) >= max_lifetime);
        // Oldest first: close those past idle_timeout while more than `keep` remain.
        let mut closing = expired;
        while live.len() > keep && now.duration_since(live[0].since) >= idle_timeout {
            closing.push(live.remove(0));
        }
        *idle = live;
        drop(idle);
        for i in closing {
            close_later(i.conn, i.budget, None);
        }
    }
}

/// An idle connection and the host-budget permit it holds while open.
pub(super) struct Idle {
    pub(super) conn: Box<ServerConn>,
    pub(super) budget: BudgetPermit,
    pub(super) since: Instant,
}

pub(super) struct TenantPool {
    pub(super) tenant: TenantName,
    pub(super) host: HostName,
    pub(super) target: BackendTarget,
    /// `target.address`, shared with the cancel keys of the clients it serves.
    pub(super) address: Arc<str>,
    pub(super) size: usize,
    pub(super) min_idle: usize,
    /// One permit per connection a client may hold; FIFO, so waiters are served in order.
    pub(super) slots: Arc<Semaphore>,
    /// Its own idle connections, or the set it shares with the other schema tenants
    /// of its host, database and role.
    pub(super) idle: Arc<IdleSet>,
    /// Shared: the statement that sets the tenant's search_path on a server.
    pub(super) path: Option<Arc<str>>,
    /// Shared: how many clients of one search_path a server may serve in a row ahead
    /// of the first in line (`pool.share_streak`).
    pub(super) streak: u32,
    pub(super) budget: Arc<HostBudget>,
    /// When a client last checked a connection out (or the pool was made).
    last_active: Mutex<Instant>,
    /// Connections being opened in the background to reach `min_idle`.
    pub(super) warming: std::sync::atomic::AtomicUsize,
    /// Set when the registry changed this tenant's target: its connections close.
    retired: AtomicBool,
    /// What the newest server connection said when it opened; shared by the pools
    /// that connect to the same host, database and role (`Pools::pool`).
    greeting: Arc<GreetingSlot>,
    /// Named statements of this pool's transaction-mode clients.
    pub(super) statements: super::statements::Statements,
    /// The tenant's pause gate and figures (shared by all its pools).
    pub(super) gate: Arc<super::gate::Gate>,
    pub(super) stats: Arc<crate::metrics::TenantStats>,
}

impl TenantPool {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        tenant: TenantName,
        host: HostName,
        target: BackendTarget,
        (size, min_idle): (usize, usize),
        budget: Arc<HostBudget>,
        greeting: Arc<GreetingSlot>,
        shared: Option<(Arc<IdleSet>, Arc<str>, u32)>,
        gate: Arc<super::gate::Gate>,
        stats: Arc<crate::metrics::TenantStats>,
    ) -> Arc<TenantPool> {
        let (idle, path, streak) = match shared {
            Some((set, path, streak)) => (set, Some(path), streak),
            None => (Arc::default(), None, 0),
        };
        Arc::new(TenantPool {
            tenant,
            host,
            address: target.address.as_str().into(),
            target,
            size,
            min_idle: min_idle.min(size),
            slots: Arc::new(Semaphore::new(size)),
            idle,
            path,
            streak,
            budget,
            last_active: Mutex::new(Instant::now()),
            warming: std::sync::atomic::AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            greeting,
            statements: Default::default(),
            gate,
            stats,
        })
    }

    /// Records what a freshly opened connection reported, for greeting clients.
    pub(super) fn opened(&self, conn: &ServerConn) {
        self.budget.opens.fetch_add(1, Ordering::Relaxed);
        *self.greeting.lock().unwrap() = Some(Arc::new(conn.greeting()));
    }

    pub(super) fn greeting(&self) -> Option<Arc<Greeting>> {
        self.greeting.lock().unwrap().clone()
    }

    /// An idle connection, most recently used first; from a shared set, one that
    /// already has this tenant's search_path if there is one.
    pub(super) fn take_idle(&self) -> Option<Idle> {
        *self.last_active.lock().unwrap() = Instant::now();
        let mut idle = self.idle.idle.lock().unwrap();
        if let Some(path) = &self.path {
            if let Some(at) = idle
                .iter()
                .rposition(|i| i.conn.path.as_deref() == Some(&**path))
            {
                return Some(idle.remove(at));
            }
        }
        idle.pop()
    }

    pub(super) fn is_shared(&self) -> bool {
        self.path.is_some()
    }

    /// An idle connection may go to another tenant once it has served this one for
    /// a turn, or has sat unused for one.
    fn turn_over(&self, idle: &Idle) -> bool {
        let turn = self.budget.turn;
        idle.since.elapsed() >= turn || idle.conn.ready_at.elapsed() >= turn
    }

    pub(super) fn oldest_evictable_idle(&self) -> Option<Instant> {
        let idle = self.idle.idle.lock().unwrap();
        idle.iter().find(|i| self.turn_over(i)).map(|i| i.since)
    }

    pub(super) fn take_oldest_evictable_idle(&self) -> Option<Idle> {
        let mut idle = self.idle.idle.lock().unwrap();
        let at = idle.iter().position(|i| self.turn_over(i))?;
        Some(idle.remove(at))
    }

    /// The registry changed this tenant's target. A shared set keeps its idle
    /// connections: they still serve its other tenants.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        if self.is_shared() {
            return;
        }
        for idle in self.idle.idle.lock().unwrap().drain(..) {
            close_later(idle.conn, idle.budget, None);
        }
    }

    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub(super) fn give_back(&self, conn: Box<ServerConn>, budget: BudgetPermit) {
        let turn_over = conn.ready_at.elapsed() >= self.budget.turn;
        // A shared connection serves the set's next client before anyone elsewhere.
        let retired = self.retired.load(Ordering::Relaxed) && !self.is_shared();
        let set_waits = self.idle.waiting.load(Ordering::Relaxed) > 0;
        if retired || (turn_over && !set_waits && self.budget.has_waiters()) {
            // Retired, or its turn is over and another tenant waits for room on this
            // host: close this connection and let its permit go back (to them).
            close_later(conn, budget, None);
            return;
        }
        let mut idle = Idle {
            conn,
            budget,
            since: Instant::now(),
        };
        if self.is_shared() {
            match self.idle.hand_over(idle, self.streak) {
                Some(back) => idle = back,
                None => return,
            }
        }
        self.idle.idle.lock().unwrap().push(idle);
        self.idle.returned.notify_waiters();
    }

    pub(super) fn busy(&self) -> usize {
        self.size - self.slots.available_permits()
    }

    /// Each idle connection of its own and since when it idles (for reports); a
    /// shared set's are reported once, as the set's (`IdleSet::each`).
    pub(super) fn each_idle(&self, f: impl FnMut(&ServerConn, Instant)) {
        if !self.is_shared() {
            self.idle.each(f);
        }
    }

    pub(super) fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Closes idle connections that have lived past `max_lifetime`, and those idle
    /// past `idle_timeout` beyond the `min_idle` kept for an active tenant. A tenant
    /// with no client for `idle_timeout` keeps nothing.
    pub(super) fn reap(&self, idle_timeout: Duration, max_lifetime: Duration) {
        // A shared set is reaped once for all its tenants (`Pools::maintain`).
        if !self.is_shared() {
            self.idle
                .reap(self.keep(idle_timeout), idle_timeout, max_lifetime);
        }
    }

    /// Idle connections to keep for this tenant: `min_idle` while it is active.
    pub(super) fn keep(&self, idle_timeout: Duration) -> usize {
        let active = self.last_active.lock().unwrap().elapsed() < idle_timeout;
        if active {
            self.min_idle
        } else {
            0
        }
    }

    /// How many connections to open now to reach `min_idle` for an active tenant.
    pub(super) fn warm_deficit(&self, idle_timeout: Duration) -> usize {
        let active = self.last_active.lock().unwrap().elapsed() < idle_timeout;
        if !active || self.retired.load(Ordering::Relaxed) {
            return 0;
        }
        let warming = self.warming.load(Ordering::Relaxed);
        let idle = self.idle_count() + warming;
        let open = idle + self.busy();
        self.min_idle
            .saturating_sub(idle)
            .min(self.size.saturating_sub(open))
    }

    /// Holds nothing: no connection lent, none idle of its own (a shared set's idle
    /// connections are the set's).
    pub(super) fn is_empty(&self) -> bool {
        self.busy() == 0 && (self.is_shared() || self.idle_count() == 0)
    }
}
