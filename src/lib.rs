//! pgtenant: a PostgreSQL wire-protocol proxy that serves each tenant of a
//! multi-tenant application from its own pool, on its own host, with its own
//! search_path. See DESIGN in the README for the path of one connection.

pub mod admin;
pub mod alloc;
pub mod app;
pub mod auth;
pub mod backend;
pub mod check;
pub mod cli;
pub mod config;
#[cfg(test)]
mod fuzz;
pub mod manage;
pub mod metrics;
pub mod moves;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod registry;
pub mod secret;
pub mod server;
pub mod sql;
pub mod tls;

pub use app::App;
pub use config::Settings;
pub use server::Server;
pub mod cluster;
pub mod demo;
