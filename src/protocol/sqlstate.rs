//! SQLSTATE codes the proxy answers with. Constants, never string literals at the call site.

/// A five-character SQLSTATE error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// A code reported by a server, if it has the SQLSTATE shape.
    pub fn parse(code: &str) -> Option<SqlState> {
        let bytes: [u8; 5] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            .then_some(SqlState(bytes))
    }

    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.0).expect("SQLSTATE is ASCII")
    }
}

pub const SUCCESSFUL_COMPLETION: SqlState = SqlState(*b"00000");
pub const CONNECTION_EXCEPTION: SqlState = SqlState(*b"08000");
pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: SqlState = SqlState(*b"08001");
pub const CONNECTION_FAILURE: SqlState = SqlState(*b"08006");
pub const PROTOCOL_VIOLATION: SqlState = SqlState(*b"08P01");
pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState(*b"0A000");
pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState(*b"28000");
pub const INVALID_PASSWORD: SqlState = SqlState(*b"28P01");
pub const INVALID_CATALOG_NAME: SqlState = SqlState(*b"3D000");
pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState(*b"26000");
pub const DUPLICATE_PREPARED_STATEMENT: SqlState = SqlState(*b"42P05");
pub const TOO_MANY_CONNECTIONS: SqlState = SqlState(*b"53300");
pub const QUERY_CANCELED: SqlState = SqlState(*b"57014");
pub const ADMIN_SHUTDOWN: SqlState = SqlState(*b"57P01");
pub const CANNOT_CONNECT_NOW: SqlState = SqlState(*b"57P03");
pub const INTERNAL_ERROR: SqlState = SqlState(*b"XX000");
pub const INVALID_CURSOR_NAME: SqlState = SqlState(*b"34000");
pub const SYNTAX_ERROR: SqlState = SqlState(*b"42601");
pub const OBJECT_IN_USE: SqlState = SqlState(*b"55006");
pub const CONFIG_FILE_ERROR: SqlState = SqlState(*b"F0000");
pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState(*b"57P05");
pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: SqlState = SqlState(*b"25P03");
pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState(*b"53400");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_sqlstate_shapes() {
        assert_eq!(SqlState::parse("3D000"), Some(INVALID_CATALOG_NAME));
        assert_eq!(SqlState::parse("3d000"), None);
        assert_eq!(SqlState::parse("3D00"), None);
        assert_eq!(INVALID_CATALOG_NAME.code(), "3D000");
    }
}
