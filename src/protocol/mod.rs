//! The PostgreSQL wire protocol, without I/O: bytes in, frames out; frames in, bytes out.
//!
//! Nothing here knows about sockets or tokio. Every length is checked before memory is
//! reserved for it.

pub mod frame;
#[cfg(test)]
mod fuzz_tests;
pub mod messages;
pub mod sqlstate;
pub mod startup;

pub use frame::{Frame, FrameError};
pub use sqlstate::SqlState;
