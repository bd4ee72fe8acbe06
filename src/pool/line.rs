//! A shared set's line of clients waiting for a server: first come, first served,
//! with an index by search_path so that a returning server finds the first waiting
//! client of the path it already has without reading the line (`IdleSet::hand_over`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::oneshot;

/// A client waiting in the line, and the search_path its tenant wants.
pub(super) struct Waiter<T> {
    pub(super) path: Arc<str>,
    pub(super) tx: oneshot::Sender<T>,
}

pub(super) struct Line<T> {
    /// The next place in line to give out.
    next: u64,
    /// By place: the order in which they came.
    waiters: BTreeMap<u64, Waiter<T>>,
    /// By search_path: the places of its waiters, oldest first. May hold places
    /// already served or given up: those are skipped, and dropped, as they are met.
    by_path: HashMap<Arc<str>, VecDeque<u64>>,
}

impl<T> Default for Line<T> {
    fn default() -> Self {
        Line {
            next: 0,
            waiters: BTreeMap::new(),
            by_path: HashMap::new(),
        }
    }
}

impl<T> Line<T> {
    pub(super) fn push(&mut self, waiter: Waiter<T>) {
        let at = self.next;
        self.next += 1;
        self.by_path
            .entry(waiter.path.clone())
            .or_default()
            .push_back(at);
        self.waiters.insert(at, waiter);
    }

    /// The first in line still waiting.
    pub(super) fn pop_first(&mut self) -> Option<Waiter<T>> {
        while let Some((_, waiter)) = self.waiters.pop_first() {
            if !waiter.tx.is_closed() {
                return Some(waiter);
            }
        }
        None
    }

    /// The first waiter of `path` still waiting, unless that is the first in line
    /// anyway (`None`: no such waiter, or it is first).
    pub(super) fn take_of_path(&mut self, path: &str) -> Option<Waiter<T>> {
        let places = self.by_path.get_mut(path)?;
        let first = loop {
            let Some(&at) = places.front() else {
                self.by_path.remove(path);
                return None;
            };
            match self.waiters.get(&at) {
                Some(waiter) if !waiter.tx.is_closed() => break at,
                // Served in order already, or gave up.
                _ => {
                    places.pop_front();
                    self.waiters.remove(&at);
                }
            }
        };
        if self.first_live() == Some(first) {
            return None;
        }
        if let Some(places) = self.by_path.get_mut(path) {
            places.pop_front();
        }
        self.waiters.remove(&first)
    }

    /// The place of the first in line still waiting; those before it that gave up go.
    fn first_live(&mut self) -> Option<u64> {
        while let Some(entry) = self.waiters.first_entry() {
            if !entry.get().tx.is_closed() {
                return Some(*entry.key());
            }
            entry.remove();
        }
        None
    }

    /// Forgets waiters that gave up and index entries of places no longer in line, so
    /// the line holds no more than the clients waiting in it.
    pub(super) fn prune(&mut self) {
        self.waiters.retain(|_, w| !w.tx.is_closed());
        let waiters = &self.waiters;
        self.by_path.retain(|_, places| {
            places.retain(|at| waiters.contains_key(at));
            !places.is_empty()
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(line: &mut Line<u32>, path: &str) -> oneshot::Receiver<u32> {
        let (tx, rx) = oneshot::channel();
        line.push(Waiter {
            path: path.into(),
            tx,
        });
        rx
    }

    #[test]
    fn the_first_of_a_path_is_found_anywhere_in_line() {
        let mut line = Line::default();
        let _a1 = wait(&mut line, "a");
        let _b1 = wait(&mut line, "b");
        let mut rxs = Vec::new();
        for _ in 0..1000 {
            rxs.push(wait(&mut line, "c"));
        }
        let _b2 = wait(&mut line, "b");
        // b1 is not first: it is taken out of the middle.
        let b1 = line.take_of_path("b").expect("b1 waits");
        b1.tx.send(1).unwrap();
        // a1 is first in line: the caller serves it in order anyway.
        assert!(line.take_of_path("a").is_none());
        assert_eq!(&*line.pop_first().unwrap().path, "a");
        // The next b is b2, at the end of a line of 1,000.
        assert!(line.take_of_path("b").is_some());
        assert!(line.take_of_path("b").is_none());
        assert_eq!(line.len(), 1000);
    }

    #[test]
    fn waiters_that_gave_up_are_skipped_and_pruned() {
        let mut line = Line::default();
        let first = wait(&mut line, "a");
        let gone = wait(&mut line, "b");
        let _kept = wait(&mut line, "b");
        drop(gone);
        assert!(
            line.take_of_path("b").is_some(),
            "the live b behind the gone one"
        );
        drop(first);
        assert!(line.pop_first().is_none());
        for _ in 0..10 {
            drop(wait(&mut line, "c"));
        }
        line.prune();
        assert_eq!(line.len(), 0);
        assert!(line.by_path.is_empty());
    }
}
