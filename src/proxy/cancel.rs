//! Query cancellation. A client holds the proxy's own cancel key; while it has a
//! server, the key maps to that server's address and key, and a CancelRequest is
//! forwarded there. A request that matches nothing is dropped, as PostgreSQL does.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use crate::protocol::startup::CancelKey;
use crate::registry::instances::{Instances, SLOT_SHIFT};

/// Where a client's query runs now, if anywhere: the server's address and key.
pub type Target = Option<(Arc<str>, CancelKey)>;

struct Entry {
    secret: i32,
    target: Target,
}

#[derive(Default)]
pub struct Cancels {
    by_pid: DashMap<i32, Entry>,
    /// With a registry database: this instance's slot rides in every key, and keys
    /// of other slots are sent on to their instance.
    instances: OnceLock<Arc<Instances>>,
}

/// A client's registration; dropping it unregisters the key. The target lives in the
/// map itself: a client holds no allocation of its own for it.
pub struct CancelHandle {
    key: CancelKey,
    cancels: Arc<Cancels>,
}

impl Cancels {
    /// Makes keys carry this instance's slot (set once, before clients come).
    pub fn set_instances(&self, instances: Arc<Instances>) {
        let _ = self.instances.set(instances);
    }

    /// The instances this one shares a registry database with, if any.
    pub fn instances(&self) -> Option<&Arc<Instances>> {
        self.instances.get()
    }

    /// A fresh key for a client, unique among the clients of this proxy.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let slot = self.instances.get().map(|i| i32::from(i.slot));
        loop {
            let random = rand::random::<i32>() & i32::MAX;
            let pid = match slot {
                Some(slot) => (slot << SLOT_SHIFT) | (random & ((1 << SLOT_SHIFT) - 1)),
                None => random,
            };
            let key = CancelKey {
                pid,
                secret: rand::random(),
            };
            if let dashmap::Entry::Vacant(slot) = self.by_pid.entry(key.pid) {
                slot.insert(Entry {
                    secret: key.secret,
                    target: None,
                });
                return CancelHandle {
                    key,
                    cancels: self.clone(),
                };
            }
        }
    }

    /// Forwards a client's CancelRequest to the server running its query.
    pub async fn cancel(&self, key: CancelKey) {
        if let Some(instances) = self.instances.get() {
            let slot = Instances::slot_of(key.pid);
            if slot != instances.slot {
                match instances.address_of(slot) {
                    Some(address) => {
                        tracing::debug!(slot, %address, "cancel request sent on to its instance");
                        if let Err(e) = crate::backend::send_cancel(&address, key).await {
                            tracing::warn!(%address, error = %e, "cannot forward cancel request to another instance");
                        }
                    }
                    None => tracing::debug!(slot, "cancel request for no live instance"),
                }
                return;
            }
        }
        let target = match self.by_pid.get(&key.pid) {
            Some(entry) if entry.secret == key.secret => entry.target.clone(),
            _ => {
                tracing::debug!(pid = key.pid, "cancel request matches no client");
                return;
            }
        };
        let Some((address, server_key)) = target else {
            tracing::debug!("cancel request for a client with no query running");
            return;
        };
        if let Err(e) = crate::backend::send_cancel(&address, server_key).await {
            tracing::warn!(%address, error = %e, "cannot forward cancel request");
        }
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

impl CancelHandle {
    pub fn key(&self) -> CancelKey {
        self.key
    }

    /// Records the server the client's queries now go to (`None` when detached).
    pub fn set_server(&self, server: Target) {
        if let Some(mut entry) = self.cancels.by_pid.get_mut(&self.key.pid) {
            entry.target = server;
        }
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.cancels.by_pid.remove(&self.key.pid);
    }
}
