//! `App`: everything one proxy instance shares between its client tasks. Built once in
//! `Server::start` and passed down as `Arc<App>`; no globals.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::proxy::cancel::Cancels;
use crate::proxy::park::Lot;
use crate::registry::Registry;

/// A client connection's id, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

pub struct App {
    pub settings: Settings,
    pub registry: Arc<Registry>,
    pub pools: Arc<Pools>,
    /// Client cancel keys and the servers their queries run on.
    pub cancels: Arc<Cancels>,
    next_client: AtomicU64,
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Idle transaction-mode clients waiting without a task.
    pub parking: Arc<Lot>,
    /// Turns true when the proxy is stopping: sessions end at their next idle moment.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Per tenant figures and connected clients (the pools count into the same).
    pub metrics: Arc<Metrics>,
    /// Turns true when the admin console asked the proxy to stop (SHUTDOWN).
    pub stop_requested: tokio::sync::watch::Sender<bool>,
}

impl App {
    pub fn new(settings: Settings, registry: Arc<Registry>) -> Arc<App> {
        let pools = Arc::new(Pools::new(
            settings.pool.clone(),
            settings.proxy.max_message_size,
            settings.proxy.pool_mode,
        ));
        let metrics = pools.metrics.clone();
        Arc::new(App {
            settings,
            metrics,
            stop_requested: tokio::sync::watch::Sender::new(false),
            registry,
            pools,
            cancels: Arc::default(),
            next_client: AtomicU64::new(1),
            clients: AtomicUsize::new(0),
            parking: Arc::new(Lot::new()),
            shutdown: tokio::sync::watch::Sender::new(false),
        })
    }

    pub fn next_client_id(&self) -> ClientId {
        ClientId(self.next_client.fetch_add(1, Ordering::Relaxed))
    }
}
