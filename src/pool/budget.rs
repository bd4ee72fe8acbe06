//! A host's connection budget: one permit per open server connection on that host,
//! and a FIFO of tenants waiting for one. When the host is full and someone waits, a
//! connection coming back idle is closed and its permit handed to the first waiter,
//! so tenants take turns instead of the busiest one keeping the host.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub(super) struct HostBudget {
    pub(super) address: String,
    /// How long a connection serves its tenant before a waiting tenant may have it.
    pub(super) turn: Duration,
    pub(super) max: usize,
    /// Server connections opened on this host, ever.
    pub(super) opens: std::sync::atomic::AtomicU64,
    permits: Arc<Semaphore>,
    waiters: Mutex<VecDeque<oneshot::Sender<BudgetPermit>>>,
}

/// One open server connection's share of its host's budget. Dropped (the connection
/// closed), it goes to the first waiter, else back to the host.
pub(super) struct BudgetPermit {
    permit: Option<OwnedSemaphorePermit>,
    budget: Arc<HostBudget>,
    /// A shared set's server: its place within `pool.shared_pool_size`, given back
    /// to the set when the connection has closed.
    set: Option<OwnedSemaphorePermit>,
}

impl BudgetPermit {
    /// The same share of the host, counted in `set` (a shared set's room) instead of
    /// the set it was counted in before, if any.
    pub(super) fn in_set(mut self, set: Option<OwnedSemaphorePermit>) -> BudgetPermit {
        self.set = set;
        self
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.budget.hand_over(permit);
        }
    }
}

impl HostBudget {
    pub(super) fn new(address: String, max: usize, turn: Duration) -> Arc<HostBudget> {
        Arc::new(HostBudget {
            address,
            turn,
            max,
            opens: Default::default(),
            permits: Arc::new(Semaphore::new(max)),
            waiters: Mutex::new(VecDeque::new()),
        })
    }

    pub(super) fn try_acquire(self: &Arc<Self>) -> Option<BudgetPermit> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(BudgetPermit {
            permit: Some(permit),
            budget: self.clone(),
            set: None,
        })
    }

    /// Queues for a permit. The receiver gets one when a connection on this host
    /// closes or is closed for this waiter.
    pub(super) fn wait(self: &Arc<Self>) -> oneshot::Receiver<BudgetPermit> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().push_back(tx);
        rx
    }

    /// Whether a tenant is waiting for a permit on this host. Waiters that gave up
    /// are dropped from the front; those behind are dropped when their turn comes.
    pub(super) fn has_waiters(&self) -> bool {
        let mut waiters = self.waiters.lock().unwrap();
        while waiters.front().is_some_and(|w| w.is_closed()) {
            waiters.pop_front();
        }
        !waiters.is_empty()
    }

    /// Tenants waiting for a permit on this host (some may have given up).
    pub(super) fn waiting(&self) -> usize {
        self.waiters.lock().unwrap().len()
    }

    fn hand_over(self: &Arc<Self>, permit: OwnedSemaphorePermit) {
        let mut permit = Some(permit);
        let mut waiters = self.waiters.lock().unwrap();
        while let Some(waiter) = waiters.pop_front() {
            let offer = BudgetPermit {
                permit: permit.take(),
                budget: self.clone(),
                set: None,
            };
            match waiter.send(offer) {
                Ok(()) => return,
                // That waiter gave up; its refusal hands the permit back to us.
                Err(mut refused) => permit = refused.permit.take(),
            }
        }
        drop(waiters);
        drop(permit);
    }

    /// Server connections open on this host now.
    pub(super) fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}
