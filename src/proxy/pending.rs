//! Connections that have not authenticated yet, counted per source address: a cap
//! on them (`proxy.max_unauthenticated_per_address`) keeps one address from tying up
//! the proxy's startup work without ever touching clients from other addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Pending {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl Pending {
    pub fn new(max: usize) -> Arc<Pending> {
        Arc::new(Pending {
            max,
            counts: Mutex::default(),
        })
    }

    /// Counts a new connection from `ip`, or `None` when its address is at the cap.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Unauthenticated> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Unauthenticated {
            pending: self.clone(),
            ip,
        })
    }

    /// Connections from `ip` that have not authenticated yet.
    pub fn count(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&ip).copied().unwrap_or(0)
    }
}

/// One connection's place in the count, given back when it authenticates or leaves.
pub struct Unauthenticated {
    pending: Arc<Pending>,
    ip: IpAddr,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut counts = self
            .pending
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_per_address_and_places_come_back() {
        let pending = Pending::new(2);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let first = pending.enter(a).unwrap();
        let _second = pending.enter(a).unwrap();
        assert!(pending.enter(a).is_none());
        assert!(
            pending.enter(b).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert!(pending.enter(a).is_some());
        assert_eq!(pending.count(b), 0);
    }
}
