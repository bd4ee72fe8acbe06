//! Why a session ended, and what the client is told about it.

use super::refusal::Refusal;
use super::resolve::ResolveError;
use crate::backend::BackendError;
use crate::pool::PoolError;
use crate::protocol::{sqlstate, FrameError};

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    /// The client said Terminate.
    ClientLeft,
    /// The client's socket closed or failed.
    ClientGone,
    ServerGone,
    ClientProtocol(FrameError),
    ServerProtocol(FrameError),
    Pool(Box<PoolError>),
    Backend(BackendError),
    /// The tenant left the registry (or its host did) during the session.
    Resolve(ResolveError),
    /// The proxy is stopping and the client was between transactions.
    Shutdown,
    /// The client named more statements than `pool.max_client_statements`.
    TooManyStatements(String),
    /// A shared server refused the search_path the proxy set for the client.
    PathNotSet(Box<crate::protocol::messages::ErrorFields>),
    /// Not an end: the client was quiet long enough to wait without a task
    /// (`park.rs`); the parking lot serves it again when it sends something.
    Parked,
}

impl End {
    /// What the client is told, when it is still there to hear it.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            End::ClientLeft | End::ClientGone | End::Parked => None,
            End::ServerGone => Some(Refusal::new(
                sqlstate::CONNECTION_FAILURE,
                "the server connection closed unexpectedly",
            )),
            // The client did nothing wrong: its server connection failed (08006), as
            // libpq reports a server's broken message.
            End::ServerProtocol(e) => Some(Refusal::new(
                sqlstate::CONNECTION_FAILURE,
                format!("invalid message from server: {e}"),
            )),
            End::ClientProtocol(e) => Some(e.into()),
            End::Pool(e) => Some(e.as_ref().into()),
            End::Backend(e) => Some(e.into()),
            End::Resolve(e) => Some(e.into()),
            End::TooManyStatements(limit) => Some(Refusal::new(
                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                format!("too many prepared statements: {limit}; close the ones no longer used"),
            )),
            End::PathNotSet(e) => Some(Refusal::new(
                sqlstate::CONNECTION_FAILURE,
                format!(
                    "the server connection refused the tenant's search_path ({}: {}) and was closed; a statement sent with it may have run under the server's previous search_path",
                    e.code, e.message
                ),
            )),
            End::Shutdown => Some(Refusal::new(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection: pgtenant is shutting down",
            )),
        }
    }
}
