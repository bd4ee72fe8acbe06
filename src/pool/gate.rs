//! Pausing a tenant: while its gate is closed, checkouts of its pools wait (in order)
//! instead of taking a server; those already holding one finish. What PAUSE/RESUME
//! and tenant moves are built on.
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

    /// Waits while the gate is closed, until `deadline`; `false` when still closed then.
    pub(super) async fn pass(&self, deadline: Instant) -> bool {
        let rx = {
            let mut waiters = self.waiters.lock().unwrap();
            if !self.paused.load(Ordering::Acquire) {
                return true;
            }
            let (tx, rx) = oneshot::channel();
            waiters.push_back(tx);
            rx
        };
        matches!(
            tokio::time::timeout_at(deadline.into(), rx).await,
            Ok(Ok(()))
        )
    }

    fn pause(&self) {
        let _waiters = self.waiters.lock().unwrap();
        self.paused.store(true, Ordering::Release);
    }

    /// Opens the gate and lets the waiters through in the order they came.
    fn resume(&self) -> usize {
        let mut waiters = self.waiters.lock().unwrap();
        self.paused.store(false, Ordering::Release);
        let mut released = 0;
        for waiter in waiters.drain(..) {
            released += usize::from(waiter.send(()).is_ok());
        }
        released
    }

    /// Checkouts waiting at this gate now.
    pub fn waiting(&self) -> usize {
        let mut waiters = self.waiters.lock().unwrap();
        waiters.retain(|w| !w.is_closed());
        waiters.len()
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
pub(super) async fn pass(
    gate: &Gate,
    tenant: &TenantName,
    started: Instant,
    deadline: Instant,
) -> Result<(), PoolError> {
    if gate.pass(deadline).await {
        Ok(())
    } else {
        Err(PoolError::Paused {
            tenant: tenant.clone(),
            waited: started.elapsed(),
        })
    }
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
                let ok = waiter.pass(Instant::now() + Duration::from_secs(30)).await;
                order.lock().unwrap().push((i, ok));
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
        assert!(!gate.pass(Instant::now() + Duration::from_millis(20)).await);
        gate.resume();
        assert!(gate.pass(Instant::now()).await);
    }
}
