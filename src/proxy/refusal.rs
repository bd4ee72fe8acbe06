//! What a client is told when the proxy refuses or ends its session: a SQLSTATE and a
//! message a person understands. Details only the operator needs stay in the log.

use bytes::BytesMut;

use super::handshake::HandshakeError;
use super::resolve::ResolveError;
use crate::backend::BackendError;
use crate::pool::PoolError;
use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate::{self, SqlState};
use crate::protocol::FrameError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: SqlState,
    pub message: String,
    /// What only the log is told (an address, the system's error).
    pub detail: Option<Box<str>>,
}

impl Refusal {
    pub fn new(code: SqlState, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// Adds what the operator needs and the client is not told.
    pub fn with_detail(mut self, detail: impl std::fmt::Display) -> Refusal {
        self.detail = Some(detail.to_string().into());
        self
    }

    /// The FATAL ErrorResponse for this refusal.
    pub fn fatal(&self) -> bytes::Bytes {
        let mut buf = BytesMut::new();
        messages::error_response(&mut buf, Severity::Fatal, self.code, &self.message);
        buf.freeze()
    }
}

impl From<&HandshakeError> for Refusal {
    fn from(e: &HandshakeError) -> Refusal {
        let code = match e {
            HandshakeError::TlsRequired => sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            HandshakeError::TooManyUnauthenticated(_) => sqlstate::TOO_MANY_CONNECTIONS,
            HandshakeError::Unsupported(_) => sqlstate::FEATURE_NOT_SUPPORTED,
            _ => sqlstate::PROTOCOL_VIOLATION,
        };
        Refusal::new(code, e.to_string())
    }
}

impl From<&ResolveError> for Refusal {
    fn from(e: &ResolveError) -> Refusal {
        let code = match e {
            ResolveError::NoUser => sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            ResolveError::UnknownTenant(_) | ResolveError::NoTenant => {
                sqlstate::INVALID_CATALOG_NAME
            }
            ResolveError::UnknownHost { .. } => {
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
            }
        };
        Refusal::new(code, e.to_string())
    }
}

impl From<&FrameError> for Refusal {
    fn from(e: &FrameError) -> Refusal {
        Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!("invalid message from client: {e}"),
        )
    }
}

impl From<&PoolError> for Refusal {
    fn from(e: &PoolError) -> Refusal {
        match e {
            PoolError::Timeout { .. } => {
                Refusal::new(sqlstate::TOO_MANY_CONNECTIONS, e.to_string())
            }
            // As PgBouncer's query_wait_timeout: the query is not run; 57014 is what
            // drivers report as a query timeout.
            PoolError::QueryWait { .. } => Refusal::new(sqlstate::QUERY_CANCELED, e.to_string()),
            PoolError::Paused { .. } => Refusal::new(sqlstate::CANNOT_CONNECT_NOW, e.to_string()),
            PoolError::Backend {
                tenant,
                host,
                source,
                ..
            } => match source {
                // The server's own refusal (no such database, bad password, too many
                // connections) keeps its SQLSTATE and names the tenant.
                BackendError::Refused(fields) => Refusal::new(
                    SqlState::parse(&fields.code)
                        .unwrap_or(sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
                    format!(
                        "tenant \"{tenant}\": server on host {host} refused: {}",
                        fields.message
                    ),
                ),
                // The log names the address and what the system said (connection
                // refused, timed out); the client is told less.
                _ if source.is_unreachable() => Refusal::new(
                    sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                    format!("tenant \"{tenant}\": host {host} is unreachable"),
                )
                .with_detail(source),
                _ => Refusal::new(
                    sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                    format!(
                        "tenant \"{tenant}\": cannot open a connection on host {host}: {source}"
                    ),
                ),
            },
        }
    }
}

/// A server error during the proxy's own exchanges (settings sync) keeps its code.
impl From<&BackendError> for Refusal {
    fn from(e: &BackendError) -> Refusal {
        match e {
            BackendError::Refused(fields) => Refusal::new(
                SqlState::parse(&fields.code).unwrap_or(sqlstate::CONNECTION_FAILURE),
                fields.message.clone(),
            ),
            _ => Refusal::new(
                sqlstate::CONNECTION_FAILURE,
                format!("server connection lost: {e}"),
            ),
        }
    }
}
