//! TLS on both sides: towards clients (`[tls]`) and towards servers (`hosts.*.tls`).

pub mod client;
mod pipe;
pub mod server;
mod stream;

use std::sync::Arc;

pub use pipe::pipe;
pub use server::{Identity, ServerTls, TlsLoadError};
pub use stream::ClientStream;

/// The one crypto provider used for every TLS connection.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
