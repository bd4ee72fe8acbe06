//! Idle transaction-mode clients parked without a task.
//!
//! Between transactions a client needs only its socket and what follows it from
//! server to server (`Carried`). After `proxy.park_after` of quiet its session folds
//! into a `Parked` record of a few hundred bytes: the socket leaves the runtime's
//! reactor for the parking lot's own epoll instance, and the task, its buffers and
//! its reactor entry are freed. The client's next message wakes the lot, which gives
//! the socket back to the runtime and spawns a task to serve it. One lot task serves
//! every parked client; clients that stay busy never park and pay nothing for it.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::carried::Carried;
use crate::app::App;

/// Clients parked since freed memory was last given back to the system that make it
/// worth doing again: each freed ~1.5 KiB.
const GIVE_BACK_AFTER: usize = 256;
/// How long parking must pause before that: a burst of clients parks over a moment.
const SETTLE: Duration = Duration::from_millis(200);

/// A client waiting without a task.
pub struct Parked {
    pub client: std::net::TcpStream,
    pub carried: Carried,
}

/// Parked clients and the epoll instance that watches their sockets.
pub struct Lot {
    /// `None` when no epoll instance could be made: clients then never park.
    registry: Option<Registry>,
    /// Taken by the lot's task when it starts.
    poll: Mutex<Option<Poll>>,
    slots: Mutex<Slots>,
    /// Wakes the lot's task for `Slots::pending`.
    wake: Notify,
    /// The lot's task runs and the proxy is not stopping: read on every idle wait, so
    /// kept outside the lock.
    open: AtomicBool,
}

#[derive(Default)]
struct Slots {
    parked: Vec<Option<Box<Parked>>>,
    free: Vec<usize>,
    /// Clients that could not be watched (or came after shutdown): served again at once.
    pending: Vec<Parked>,
    /// Clients parked since freed memory was last given back.
    parked_since_give_back: usize,
}

impl Lot {
    pub fn new() -> Lot {
        let (registry, poll) = match Poll::new().and_then(|p| Ok((p.registry().try_clone()?, p))) {
            Ok((registry, poll)) => (Some(registry), Some(poll)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the parking epoll instance; idle clients keep their tasks");
                (None, None)
            }
        };
        Lot {
            registry,
            poll: Mutex::new(poll),
            slots: Mutex::default(),
            wake: Notify::new(),
            open: AtomicBool::new(false),
        }
    }

    /// Whether a client parked now would be watched.
    pub fn accepting(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Clients parked now.
    pub fn len(&self) -> usize {
        let slots = self.slots();
        // Every slot not on the free list holds a client.
        slots.parked.len() - slots.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parks a client. It is watched from here on; one that cannot be is served again
    /// by the lot's task at once, so a client is never lost here.
    pub fn park(&self, parked: Parked) {
        let mut slots = self.slots();
        // Read under the lock: the lot's task closes under it before draining the slots.
        let registry = match (&self.registry, self.open.load(Ordering::Relaxed)) {
            (Some(registry), true) => registry,
            _ => {
                slots.pending.push(parked);
                self.wake.notify_one();
                return;
            }
        };
        let fd = parked.client.as_raw_fd();
        let index = match slots.free.pop() {
            Some(index) => index,
            None => {
                slots.parked.push(None);
                slots.parked.len() - 1
            }
        };
        // In the slot before it is watched: data already waiting is reported at once.
        slots.parked[index] = Some(Box::new(parked));
        slots.parked_since_give_back += 1;
        if slots.parked_since_give_back == GIVE_BACK_AFTER {
            // Enough to be worth giving memory back once this burst settles.
            self.wake.notify_one();
        }
        if let Err(e) = registry.register(&mut SourceFd(&fd), Token(index), Interest::READABLE) {
            tracing::warn!(error = %e, "cannot watch a parked client; serving it again");
            if let Some(parked) = slots.take(index) {
                slots.pending.push(*parked);
                self.wake.notify_one();
            }
        }
    }

    /// The client parked under `token`, no longer watched.
    fn unpark(&self, token: Token) -> Option<Parked> {
        let parked = self.slots().take(token.0)?;
        if let Some(registry) = &self.registry {
            let _ = registry.deregister(&mut SourceFd(&parked.client.as_raw_fd()));
        }
        Some(*parked)
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // Nothing panics while holding the lock; a poisoned one still holds valid slots.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Lot {
    fn default() -> Self {
        Lot::new()
    }
}

impl Slots {
    fn take(&mut self, index: usize) -> Option<Box<Parked>> {
        let parked = self.parked.get_mut(index)?.take()?;
        self.free.push(index);
        Some(parked)
    }
}

/// The lot's task: serves again each parked client that sends something (or leaves),
/// and every parked client when the proxy stops, so each hears why it is closed.
/// Holds the app weakly: a dropped proxy is not kept alive by its lot.
pub async fn run(lot: Arc<Lot>, app: Weak<App>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let poll = lot.poll.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(poll) = poll else { return };
    // SAFETY: the `Poll` owns its epoll descriptor and is moved into the `AsyncFd`,
    // which owns it from here on: the descriptor is neither closed nor replaced
    // while registered. (Parking is what lets 10,000 idle clients cost a few
    // hundred bytes each; see bench/RESULTS.md.)
    let registered =
        unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) };
    let mut poll = match registered {
        Ok(poll) => poll,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the parking epoll instance; idle clients keep their tasks");
            return;
        }
    };
    lot.open.store(!*shutdown.borrow(), Ordering::Relaxed);
    let mut events = Events::with_capacity(256);
    let mut stopping = false;
    // Armed once enough clients parked; fires when none parked for a while.
    let mut settle: Option<(Pin<Box<Sleep>>, usize)> = None;
    loop {
        let mut woken = Vec::new();
        tokio::select! {
            ready = poll.readable_mut() => {
                let Ok(mut guard) = ready else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                match guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => tracing::warn!(error = %e, "waiting on parked clients failed"),
                }
                if events.iter().count() < events.capacity() {
                    // Drained: the next client to wake makes the instance readable again.
                    guard.clear_ready();
                }
                woken.extend(events.iter().filter_map(|event| lot.unpark(event.token())));
            }
            _ = lot.wake.notified() => {
                let mut slots = lot.slots();
                woken.append(&mut slots.pending);
                if settle.is_none() && slots.parked_since_give_back >= GIVE_BACK_AFTER {
                    let parked = slots.parked_since_give_back;
                    settle = Some((Box::pin(tokio::time::sleep(SETTLE)), parked));
                }
            }
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                let slots = lot.slots();
                lot.open.store(false, Ordering::Relaxed);
                let tokens: Vec<Token> = (0..slots.parked.len()).map(Token).collect();
                drop(slots);
                woken.extend(tokens.into_iter().filter_map(|token| lot.unpark(token)));
            }
            _ = async { settle.as_mut().expect("armed").0.as_mut().await }, if settle.is_some() => {
                let (mut timer, seen) = settle.take().expect("armed");
                let parked = lot.slots().parked_since_give_back;
                if parked == seen {
                    // Settled: what the parked clients' tasks held is all free now.
                    lot.slots().parked_since_give_back = 0;
                    crate::alloc::give_back_freed_memory();
                } else {
                    timer.as_mut().reset(tokio::time::Instant::now() + SETTLE);
                    settle = Some((timer, parked));
                }
            }
        }
        let Some(app) = app.upgrade() else { return };
        for parked in woken {
            super::client::spawn_resumed(app.clone(), parked);
        }
    }
}

impl super::relay::Session<'_> {
    /// Between transactions: whether this client may park when quiet, with the timer
    /// that says when (re)started.
    pub(super) fn arm_park_timer(&mut self) -> bool {
        let after = self.app.settings.proxy.park_after;
        let may_park = self.mode == crate::config::PoolMode::Transaction
            && self.pinned.is_none()
            && self.txn.is_idle()
            && !self.closing
            && !after.is_zero()
            && self.app.parking.accepting();
        if may_park {
            let deadline = tokio::time::Instant::now() + after;
            match self.park_timer.as_mut() {
                // A later deadline on a running timer is one atomic update.
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.park_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        may_park
    }

    /// Folds a quiet session into a `Parked` record and hands it to the lot. What is
    /// left behind (empty buffers, the timer) is freed with the session.
    pub(super) fn park(self: Box<Self>) -> io::Result<()> {
        let app = self.app;
        let super::relay::Session {
            id,
            client,
            resolved,
            settings,
            txn,
            cancel,
            seen,
            ..
        } = *self;
        seen.set_state(crate::metrics::ClientState::Parked);
        // Leaves the runtime's reactor: its entry is freed too.
        let client = client.into_std()?;
        let carried = Carried {
            id,
            resolved,
            // Looked up again when it next needs a server: a parked client does not
            // keep an old registry snapshot alive.
            pool: None,
            settings,
            txn,
            cancel,
            seen,
        };
        app.parking.park(Parked { client, carried });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// A parked client costs this record (plus its settings and cancel entry); keep it
    /// from growing unnoticed.
    #[test]
    fn a_parked_client_stays_small() {
        let size = std::mem::size_of::<super::Parked>();
        assert!(size <= 256, "a parked client holds {size} bytes");
    }
}
