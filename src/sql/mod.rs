//! SQL as the server reads it: one lexer for every place the proxy looks into SQL,
//! and the classification of what a query does to its session. I/O-free, like
//! `protocol`; nothing here knows about sockets or pools.

mod classify;
#[cfg(test)]
mod fuzz_tests;
pub mod lexer;
mod set;
#[cfg(test)]
mod tests;

pub use classify::{classify, identifier, Classified, Effect, PathReset, Pin, SettingChange};
