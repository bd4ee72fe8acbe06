//! The client side: accepting connections and serving each one (handshake, tenant
//! resolution, relay).

pub mod cancel;
mod client;
mod end;
mod features;
mod follow;
mod handshake;
mod listener;
mod login;
mod outbox;
mod params;
pub mod park;
pub mod passthrough;
pub mod pending;
mod refusal;
mod relay;
mod resolve;
pub mod txn;
mod wait;

pub use listener::accept_loop;
pub use resolve::{resolve, ResolveError, Resolved};
