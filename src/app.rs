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
use crate::proxy::passthrough::VerifierCache;
use crate::proxy::pending::Pending;
use crate::registry::Registry;
use crate::tls::ServerTls;

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
    /// Client TLS (`[tls]`), when configured.
    pub tls: Option<Arc<ServerTls>>,
    /// Connections not yet authenticated, per source address.
    pub unauthenticated: Arc<Pending>,
    /// Role verifiers fetched for auth passthrough.
    pub passthrough: VerifierCache,
    /// Salts the fake SCRAM exchange of unknown users: stable per name, unguessable.
    pub auth_secret: [u8; 32],
    /// Per tenant figures and connected clients (the pools count into the same).
    pub metrics: Arc<Metrics>,
    /// Turns true when the admin console asked the proxy to stop (SHUTDOWN).
    pub stop_requested: tokio::sync::watch::Sender<bool>,
    /// Tenant moves under way or recorded (`moves`).
    pub moves: Arc<crate::moves::Moves>,
    /// This `App` itself, for work that outlives the request that started it (a
    /// move started from the console goes on if its client leaves).
    me: std::sync::Weak<App>,
}

impl App {
    pub fn new(settings: Settings, registry: Arc<Registry>) -> Arc<App> {
        Self::with_tls(settings, registry, None)
    }

    pub fn with_tls(
        settings: Settings,
        registry: Arc<Registry>,
        tls: Option<Arc<ServerTls>>,
    ) -> Arc<App> {
        let pools = Arc::new(Pools::new(
            settings.pool.clone(),
            settings.proxy.max_message_size,
            settings.proxy.pool_mode,
        ));
        let metrics = pools.metrics.clone();
        metrics.set_max_tenants(settings.admin.metrics_max_tenants);
        Arc::new_cyclic(|me| App {
            me: me.clone(),
            metrics,
            stop_requested: tokio::sync::watch::Sender::new(false),
            registry,
            pools,
            cancels: Arc::default(),
            next_client: AtomicU64::new(1),
            clients: AtomicUsize::new(0),
            parking: Arc::new(Lot::new()),
            shutdown: tokio::sync::watch::Sender::new(false),
            tls,
            unauthenticated: Pending::new(settings.proxy.max_unauthenticated_per_address),
            passthrough: VerifierCache::default(),
            auth_secret: rand::random(),
            moves: Arc::new(crate::moves::Moves::load(&settings.registry)),
            settings,
        })
    }

    /// The shared handle of this `App`.
    pub fn handle(&self) -> Arc<App> {
        self.me.upgrade().expect("an App is always held by an Arc")
    }

    pub fn next_client_id(&self) -> ClientId {
        ClientId(self.next_client.fetch_add(1, Ordering::Relaxed))
    }
}
