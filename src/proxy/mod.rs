//! The client side: accepting connections and serving each one (handshake, tenant
//! resolution, relay).

pub mod cancel;
mod client;
mod end;
mod follow;
mod handshake;
mod listener;
mod outbox;
mod params;
pub mod park;
mod refusal;
mod relay;
mod resolve;
pub mod txn;
mod wait;

pub use listener::accept_loop;
pub use resolve::{resolve, ResolveError, Resolved};
