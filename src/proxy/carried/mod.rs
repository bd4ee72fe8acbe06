//! What a client's session carries from one server connection to the next, and what
//! becomes of a server when the client lets it go. In one place so that "why did this
//! server (not) go back to the pool, and in what state" has one answer:
//!
//! - `settings`: startup parameters, reported parameters and followed SET/RESET;
//! - `follow`: which SET/RESET held once their transaction committed;
//! - `queue`: requests in flight and the client's statement names (the statements
//!   themselves are the pool's: `pool::statements`);
//! - pins: a statement the proxy cannot carry over (`sql::Pin`) keeps the client on
//!   its server for the rest of its session;
//! - `Disposition`: a server's fate when the client lets it go.
//!
//! Nothing a client does that the proxy cannot represent exactly may reach another
//! client: the answer to doubt is to pin, and a pinned server is reset before reuse
//! (or closed when no reset is configured).

mod follow;
pub mod queue;
pub mod settings;

use std::sync::Arc;

use super::cancel::CancelHandle;
use super::resolve::Resolved;
use crate::app::ClientId;
use crate::config::PoolMode;
use crate::pool::PoolHandle;
use crate::registry::Snapshot;
use crate::sql::Pin;
use queue::Txn;

/// What a transaction-mode client carries from one server to the next.
pub struct Carried {
    pub id: ClientId,
    pub resolved: Resolved,
    /// The pool the client draws from and the registry snapshot it was chosen under.
    pub pool: Option<(Arc<Snapshot>, PoolHandle)>,
    /// Settings that follow the client from server to server.
    pub settings: Vec<(String, String)>,
    /// Statement names (transaction mode) and settings changed in flight.
    pub txn: Txn,
    pub cancel: CancelHandle,
    /// The client's entry in the tenant's figures (console, metrics, limits).
    pub seen: crate::metrics::ClientSeen,
}

/// What becomes of a server connection its client lets go of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition<'a> {
    /// Back to the pool as it is: transaction mode, nothing in flight, no pin. The
    /// next client's settings are brought in line when it attaches.
    Reuse,
    /// Back to the pool after this reset query (session mode, or a pinned client).
    Reset(&'a str),
    /// Closed: something may still be in flight, or its state cannot be cleared.
    Close(&'static str),
}

/// The fate of the server of a client that leaves (or, in transaction mode, ends a
/// transaction). `quiet`: nothing in flight either way; `out_of_step`: the server's
/// statements are not what the proxy recorded.
pub fn disposition<'a>(
    mode: PoolMode,
    pinned: Option<Pin>,
    quiet: bool,
    out_of_step: bool,
    reset_query: &'a str,
) -> Disposition<'a> {
    if !quiet {
        return Disposition::Close("the client left in the middle of a request");
    }
    if out_of_step {
        return Disposition::Close("its prepared statements differ from the proxy's record");
    }
    match (mode, pinned) {
        (PoolMode::Transaction, None) => Disposition::Reuse,
        (_, Some(_)) if reset_query.trim().is_empty() => {
            Disposition::Close("it was pinned and no reset_query would clear its session")
        }
        _ => Disposition::Reset(reset_query),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_reused_only_when_nothing_can_leak() {
        use Disposition::*;
        let txn = PoolMode::Transaction;
        assert_eq!(disposition(txn, None, true, false, ""), Reuse);
        assert_eq!(
            disposition(txn, Some(Pin::Role), true, false, "DISCARD ALL"),
            Reset("DISCARD ALL")
        );
        assert!(matches!(
            disposition(txn, Some(Pin::Role), true, false, " "),
            Close(_)
        ));
        assert!(matches!(disposition(txn, None, false, false, ""), Close(_)));
        assert!(matches!(disposition(txn, None, true, true, ""), Close(_)));
        assert_eq!(
            disposition(PoolMode::Session, None, true, false, "DISCARD ALL"),
            Reset("DISCARD ALL")
        );
    }
}
