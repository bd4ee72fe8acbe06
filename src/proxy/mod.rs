//! The client side: accepting connections and serving each one (handshake, tenant
//! resolution, relay).

pub mod cancel;
pub mod carried;
mod client;
mod end;
mod handshake;
mod listener;
mod login;
mod outbox;
pub mod park;
pub mod passthrough;
pub mod pending;
pub mod refusal;
mod relay;
mod resolve;
mod wait;

pub use listener::accept_loop;
pub use resolve::{resolve, ResolveError, Resolved};
