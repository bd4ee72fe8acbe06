//! Pausing a tenant: while its gate is closed, checkouts of its pools wait (in order)
//! instead of taking a server; those already holding one finish. What PAUSE/RESUME
//! and tenant moves are built on.
//!
//! RESUME lets the waiters go one after the other, not all at once: each wakes the
//! next only once it has queued for a slot of its pool (`Passed`), so they get
//! servers in the order they came rather than the order the scheduler runs them.
//!
//! A gate lives per tenant name, outside the pools: a pool replaced by a registry
//! change (or dropped when idle and made again) finds the same gate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::oneshot;

use super::{PoolError, Pools};
use crate::registry::TenantName;

#[derive(Default)]
pub struct Gate {
    /// Read on every checkout: the open gate costs one relaxed load.
    paused: AtomicBool,
    /// Checkouts waiting for RESUME, in arrival order.
    waiters: Mutex<VecDeque<oneshot::Sender<()>>>,
}

impl Gate {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Waits while the gate is closed, until `deadline`; `None` when still closed
    /// then. The caller holds the returned turn until it has queued for what comes
    /// next (a pool slot): dropping it lets the next waiter go.
    pub(super) async fn pass(&self, deadline: Instant) -> Option<Passed<'_>> {
        let rx = {
            let mut waiters = self.waiters.lock().unwrap();
            if !self.paused.load(Ordering::Acquire) {
                return Some(Passed(None));
            }
            let (tx, rx) = oneshot::channel();
            waiters.push_back(tx);
            rx
        };
        let mut waiting = Waiting {
            gate: self,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().expect("set above");
        let woken = matches!(
            tokio::time::timeout_at(deadline.into(), rx).await,
            Ok(Ok(()))
        );
        if !woken {
            // Dropping `waiting` hands a turn that came as the deadline passed on.
            return None;
        }
        waiting.rx = None;
        Some(Passed(Some(self)))
    }

    fn pause(&self) {
        let _waiters = self.waiters.lock().unwrap();
        self.paused.store(true, Ordering::Release);
    }

    /// Opens the gate and lets the first waiter through; each lets the next one go
    /// (`Passed`). How many were waiting.
    fn resume(&self) -> usize {
        let released = {
            let mut waiters = self.waiters.lock().unwrap();
            self.paused.store(false, Ordering::Release);
            waiters.retain(|w| !w.is_closed());
            waiters.len()
        };
        self.next();
        released
    }

    /// Wakes the first waiter still there, unless the gate was closed again.
    fn next(&self) {
        let mut waiters = self.waiters.lock().unwrap();
        if self.paused.load(Ordering::Acquire) {
            return;
        }
        while let Some(waiter) = waiters.pop_front() {
            if waiter.send(()).is_ok() {
                return;
            }
        }
    }

    /// Checkouts waiting at this gate now.
    pub fn waiting(&self) -> usize {
        let mut waiters = self.waiters.lock().unwrap();
        waiters.retain(|w| !w.is_closed());
        waiters.len()
    }
}

/// A checkout's turn through a gate: the next waiter goes when it is dropped.
pub(super) struct Passed<'a>(Option<&'a Gate>);

impl Drop for Passed<'_> {
    fn drop(&mut self) {
        if let Some(gate) = self.0 {
            gate.next();
        }
    }
}

/// A place in the gate's queue; a turn given to a waiter that is gone (its deadline
/// passed as it came, or its client left) goes on to the next one.
struct Waiting<'a> {
    gate: &'a Gate,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            if rx.try_recv().is_ok() {
                self.gate.next();
            }
        }
    }
}

/// The gates of all tenants ever paused or pooled.
#[derive(Default)]
pub struct Gates(DashMap<TenantName, Arc<Gate>>);

impl Gates {
    pub fn get(&self, tenant: &TenantName) -> Arc<Gate> {
        if let Some(gate) = self.0.get(tenant) {
            return gate.clone();
        }
        self.0.entry(tenant.clone()).or_default().clone()
    }

    /// Forgets the open gates no pool uses and nobody waits at: one is made again
    /// when needed, so tenants that came and went cost nothing here.
    pub(super) fn prune(&self) {
        self.0.retain(|_, gate| {
            Arc::strong_count(gate) > 1 || gate.is_paused() || gate.waiting() > 0
        });
    }
}

/// PAUSE did not drain in time: the tenant stays paused.
#[derive(Debug, thiserror::Error)]
#[error("tenant \"{tenant}\" is paused but {held} server connection(s) are still in use after {waited:?}")]
pub struct NotDrained {
    pub tenant: TenantName,
    pub held: usize,
    pub waited: Duration,
}

impl Pools {
    /// Closes the tenant's gate: its new transactions (and new session-mode clients)
    /// wait; those holding a server keep it until they let it go.
    pub fn pause(&self, tenant: &TenantName) {
        self.gates.get(tenant).pause();
        tracing::info!(%tenant, "tenant paused");
    }

    /// Opens the tenant's gate; the checkouts that waited go on in order. How many.
    pub fn resume(&self, tenant: &TenantName) -> usize {
        let released = self.gates.get(tenant).resume();
        tracing::info!(%tenant, released, "tenant resumed");
        released
    }

    pub fn is_paused(&self, tenant: &TenantName) -> bool {
        self.gates.0.get(tenant).is_some_and(|g| g.is_paused())
    }

    /// Tenants paused now, by name.
    pub fn paused(&self) -> Vec<TenantName> {
        let mut paused: Vec<_> = self
            .gates
            .0
            .iter()
            .filter(|g| g.is_paused())
            .map(|g| g.key().clone())
            .collect();
        paused.sort();
        paused
    }

    /// Server connections lent to clients of `tenant` now, over all its pools.
    pub fn servers_in_use(&self, tenant: &TenantName) -> usize {
        self.pools
            .iter()
            .filter(|p| &p.tenant == tenant)
            .map(|p| p.busy())
            .sum()
    }

    /// Waits until no client of `tenant` holds a server, up to `timeout`.
    pub async fn wait_drained(
        &self,
        tenant: &TenantName,
        timeout: Duration,
    ) -> Result<(), NotDrained> {
        let started = Instant::now();
        loop {
            let held = self.servers_in_use(tenant);
            if held == 0 {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(NotDrained {
                    tenant: tenant.clone(),
                    held,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Pauses `tenant` and waits until it holds no server (it stays paused either way).
    pub async fn pause_and_drain(
        &self,
        tenant: &TenantName,
        timeout: Duration,
    ) -> Result<(), NotDrained> {
        self.pause(tenant);
        self.wait_drained(tenant, timeout).await
    }
}

/// The checkout side: waits at a closed gate until RESUME or the checkout deadline.
pub(super) async fn pass<'a>(
    gate: &'a Gate,
    tenant: &TenantName,
    started: Instant,
    deadline: Instant,
) -> Result<Passed<'a>, PoolError> {
    gate.pass(deadline).await.ok_or_else(|| PoolError::Paused {
        tenant: tenant.clone(),
        waited: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_pass_in_order_on_resume() {
        let gate = Arc::new(Gate::default());
        gate.pause();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (waiter, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let passed = waiter.pass(Instant::now() + Duration::from_secs(30)).await;
                // The next one goes only when this one is done with its turn.
                order.lock().unwrap().push((i, passed.is_some()));
            }));
            // Each waiter queues before the next one comes.
            while gate.waiting() <= i {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(gate.resume(), 5);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order, (0..5).map(|i| (i, true)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_waiter_past_its_deadline_is_refused() {
        let gate = Gate::default();
        gate.pause();
        assert!(gate
            .pass(Instant::now() + Duration::from_millis(20))
            .await
            .is_none());
        gate.resume();
        assert!(gate.pass(Instant::now()).await.is_some());
    }

    #[tokio::test]
    async fn a_waiter_that_left_does_not_stop_the_others() {
        let gate = Arc::new(Gate::default());
        gate.pause();
        let gone = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _ = gate.pass(Instant::now() + Duration::from_secs(30)).await;
            })
        };
        while gate.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let stays = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.pass(Instant::now() + Duration::from_secs(30))
                    .await
                    .is_some()
            })
        };
        while gate.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        gate.resume();
        assert!(stays.await.unwrap());
    }
}
