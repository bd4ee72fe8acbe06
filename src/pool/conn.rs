//! A server connection lent to one client, and its way back to the pool.

use std::sync::Arc;
use std::task::{Context, Waker};

use tokio::sync::OwnedSemaphorePermit;

use super::budget::{BudgetPermit, HostBudget};

use super::TenantPool;
use crate::backend::ServerConn;
use crate::protocol::startup::CancelKey;

/// A checked-out server connection. Dropping it without `release` closes the server
/// connection: a connection in an unknown state is never reused.
pub struct PooledConn {
    /// Boxed once when opened: it moves between pool and clients as a pointer, and a
    /// client between transactions holds no room for it.
    conn: Option<Box<ServerConn>>,
    budget: Option<BudgetPermit>,
    _slot: OwnedSemaphorePermit,
    pool: Arc<TenantPool>,
}

impl PooledConn {
    pub(super) fn new(
        conn: Box<ServerConn>,
        budget: BudgetPermit,
        slot: OwnedSemaphorePermit,
        pool: Arc<TenantPool>,
    ) -> PooledConn {
        PooledConn {
            conn: Some(conn),
            budget: Some(budget),
            _slot: slot,
            pool,
        }
    }

    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("present until released")
    }

    /// Where to send a CancelRequest for what runs on this connection.
    pub fn cancel_target(&self) -> (Arc<str>, CancelKey) {
        (self.pool.address.clone(), self.get().key)
    }

    /// This server's session was ended by a shutdown (57P01/57P02): its host may be
    /// restarting (`restart`).
    pub fn host_going_down(&self) {
        self.pool.budget.restart.seen_down();
    }

    pub fn get(&self) -> &ServerConn {
        self.conn.as_ref().expect("present until released")
    }

    /// Returns an idle connection (ReadyForQuery 'I', nothing buffered) as it is:
    /// transaction mode hands it to the next client without a reset.
    pub fn give_back_idle(mut self) {
        if let (Some(mut conn), Some(budget)) = (self.conn.take(), self.budget.take()) {
            conn.last_used = std::time::Instant::now();
            self.pool.give_back(conn, budget);
        }
    }

    /// Closes a connection whose server is ending its session itself: there is
    /// nothing to cancel.
    pub fn discard(mut self) {
        if let (Some(conn), Some(budget)) = (self.conn.take(), self.budget.take()) {
            close_later(conn, budget, None);
        }
    }

    /// Resets the connection with `reset_query` and returns it to the pool; if the
    /// reset fails the connection is closed instead.
    pub async fn release(mut self, reset_query: &str) {
        let (Some(mut conn), Some(budget)) = (self.conn.take(), self.budget.take()) else {
            return;
        };
        if !conn.buf.is_empty() {
            tracing::warn!(tenant = %self.pool.tenant, "server sent data nobody asked for; closing it");
            close_later(conn, budget, Some(self.pool.target.address.clone()));
            return;
        }
        match conn.reset(reset_query).await {
            Ok(()) => {
                conn.last_used = std::time::Instant::now();
                self.pool.give_back(conn, budget);
            }
            Err(e) => {
                tracing::warn!(tenant = %self.pool.tenant, error = %e, "server reset failed; closing it");
                close_later(conn, budget, Some(self.pool.target.address.clone()));
            }
        }
    }
}

/// A connection dropped while lent may be in the middle of anything: it is cancelled
/// and closed, and its share of the host's budget comes back only when it is gone.
impl Drop for PooledConn {
    fn drop(&mut self) {
        if let (Some(conn), Some(budget)) = (self.conn.take(), self.budget.take()) {
            close_later(conn, budget, Some(self.pool.target.address.clone()));
        }
    }
}

/// Closes `conn` in the background and only then gives its budget back, so the host
/// never holds more sessions than its budget, even for a moment. `cancel_at` cancels
/// whatever it may still be running first.
pub(super) fn close_later(conn: Box<ServerConn>, budget: BudgetPermit, cancel_at: Option<String>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return; // shutting down: dropping closes the socket
    };
    runtime.spawn(async move {
        conn.close(cancel_at.as_deref()).await;
        drop(budget);
    });
}

/// Whether an idle server connection is still usable: its socket has not been closed
/// and it has not sent anything (an idle server only speaks to say it is going away).
/// The reactor's readiness is asked first, so the common case costs no system call.
/// A server that ended its session for a shutdown marks its host as going down.
pub(super) fn is_alive(conn: &ServerConn, host: &HostBudget) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    if conn.stream.poll_read_ready(&mut cx).is_pending() {
        return true;
    }
    let mut said = [0u8; 256];
    match conn.stream.try_read(&mut said) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        Ok(n) => {
            if ends_for_shutdown(&said[..n]) {
                host.restart.seen_down();
            }
            false
        }
    }
}

/// Whether what a server said unasked is an ErrorResponse for a shutdown (its first
/// 256 bytes are enough: the code comes before the message).
fn ends_for_shutdown(said: &[u8]) -> bool {
    match said {
        [b'E', _, _, _, _, body @ ..] => {
            super::restart::is_shutdown_code(crate::protocol::messages::error_code(body))
        }
        _ => false,
    }
}
