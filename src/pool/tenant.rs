//! One tenant's pool: its connection slots and its idle connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::budget::{BudgetPermit, HostBudget};
use super::conn::close_later;
use crate::backend::{BackendTarget, Greeting, ServerConn};
use crate::registry::{HostName, TenantName};

/// The greeting of one (host, database, role): the same for each tenant there.
pub(super) type GreetingSlot = Mutex<Option<Arc<Greeting>>>;

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
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    pub(super) budget: Arc<HostBudget>,
    /// Fired when a connection comes back idle, for clients of this tenant waiting on
    /// a full host.
    pub(super) returned: tokio::sync::Notify,
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
        size: usize,
        min_idle: usize,
        budget: Arc<HostBudget>,
        greeting: Arc<GreetingSlot>,
        gate: Arc<super::gate::Gate>,
        stats: Arc<crate::metrics::TenantStats>,
    ) -> Arc<TenantPool> {
        Arc::new(TenantPool {
            tenant,
            host,
            address: target.address.as_str().into(),
            target,
            size,
            min_idle: min_idle.min(size),
            slots: Arc::new(Semaphore::new(size)),
            idle: Mutex::new(Vec::new()),
            budget,
            returned: tokio::sync::Notify::new(),
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

    pub(super) fn take_idle(&self) -> Option<Idle> {
        *self.last_active.lock().unwrap() = Instant::now();
        self.idle.lock().unwrap().pop()
    }

    /// An idle connection may go to another tenant once it has served this one for
    /// a turn, or has sat unused for one.
    fn turn_over(&self, idle: &Idle) -> bool {
        let turn = self.budget.turn;
        idle.since.elapsed() >= turn || idle.conn.ready_at.elapsed() >= turn
    }

    pub(super) fn oldest_evictable_idle(&self) -> Option<Instant> {
        let idle = self.idle.lock().unwrap();
        idle.iter().find(|i| self.turn_over(i)).map(|i| i.since)
    }

    pub(super) fn take_oldest_evictable_idle(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap();
        let at = idle.iter().position(|i| self.turn_over(i))?;
        Some(idle.remove(at))
    }

    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        for idle in self.idle.lock().unwrap().drain(..) {
            close_later(idle.conn, idle.budget, None);
        }
    }

    pub(super) fn give_back(&self, conn: Box<ServerConn>, budget: BudgetPermit) {
        let turn_over = conn.ready_at.elapsed() >= self.budget.turn;
        if self.retired.load(Ordering::Relaxed) || (turn_over && self.budget.has_waiters()) {
            // Retired, or its turn is over and another tenant waits for room on this
            // host: close this connection and let its permit go back (to them).
            close_later(conn, budget, None);
            return;
        }
        self.idle.lock().unwrap().push(Idle {
            conn,
            budget,
            since: Instant::now(),
        });
        self.returned.notify_waiters();
    }

    pub(super) fn busy(&self) -> usize {
        self.size - self.slots.available_permits()
    }

    /// Each idle connection and since when it idles (for reports).
    pub(super) fn each_idle(&self, mut f: impl FnMut(&ServerConn, Instant)) {
        for idle in self.idle.lock().unwrap().iter() {
            f(&idle.conn, idle.since);
        }
    }

    pub(super) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// Closes idle connections that have lived past `max_lifetime`, and those idle
    /// past `idle_timeout` beyond the `min_idle` kept for an active tenant. A tenant
    /// with no client for `idle_timeout` keeps nothing.
    pub(super) fn reap(&self, idle_timeout: Duration, max_lifetime: Duration) {
        let now = Instant::now();
        let active = now.duration_since(*self.last_active.lock().unwrap()) < idle_timeout;
        let keep = if active { self.min_idle } else { 0 };
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

    pub(super) fn is_empty(&self) -> bool {
        self.busy() == 0 && self.idle_count() == 0
    }
}
