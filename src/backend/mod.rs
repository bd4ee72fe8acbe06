//! Server connections: opening one (TCP, startup with the tenant's search_path, auth as
//! a client) and the few exchanges the proxy itself runs on it (reset, parameter sync).

mod auth;
mod authquery;
mod conn;
mod connect;
mod prepared;

pub use authquery::fetch_verifier;
pub use conn::{replayed, setting_statement, Greeting, ServerConn, CLIENT_PARAMETERS};
pub use connect::{
    connect, search_path_option, search_path_statement, send_cancel, BackendError, BackendTarget,
    KeySlot,
};
pub use prepared::PreparedCache;
