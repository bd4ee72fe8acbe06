//! Which proxy-named prepared statements one server connection holds, bounded, with
//! the least recently used one evicted first.

use std::collections::HashMap;
use std::sync::Arc;

pub struct PreparedCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<Arc<str>, u64>,
}

impl PreparedCache {
    pub fn new(capacity: usize) -> PreparedCache {
        PreparedCache {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// Whether the server holds `name`; marks it as just used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.entries.get_mut(name) {
            Some(used) => {
                *used = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `name`; returns the statements to close first to stay within capacity.
    pub fn insert(&mut self, name: &Arc<str>) -> Vec<Arc<str>> {
        self.tick += 1;
        let mut evicted = Vec::new();
        if !self.entries.contains_key(name) {
            while self.entries.len() >= self.capacity {
                let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, used)| **used)
                    .map(|(n, _)| n.clone())
                else {
                    break;
                };
                self.entries.remove(&oldest);
                evicted.push(oldest);
            }
        }
        self.entries.insert(name.clone(), self.tick);
        evicted
    }

    /// Records that the server still holds `name` after all (its Close was skipped).
    /// The cache may exceed its capacity until the next insert.
    pub fn restore(&mut self, name: &Arc<str>) {
        self.tick += 1;
        self.entries.insert(name.clone(), self.tick);
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut cache = PreparedCache::new(2);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert!(cache.insert(&a).is_empty());
        assert!(cache.insert(&b).is_empty());
        assert!(cache.touch("a"));
        assert_eq!(cache.insert(&c), vec![b.clone()]);
        assert!(!cache.touch("b"));
        assert!(cache.touch("a") && cache.touch("c"));
        assert_eq!(cache.len(), 2);
    }
}
