//! A running proxy instance: registry loaded and watched, pools reaped, listener bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::{Settings, TlsMode};
use crate::registry::file::RegistryFileError;
use crate::registry::instances::Instances;
use crate::registry::pg::{PgRegistryError, PgSource};
use crate::registry::{file, Registry};
use crate::secret::Secrets;
use crate::tls::ServerTls;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Registry(#[from] RegistryFileError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("registry: {0}")]
    NoRegistry(String),
    #[error(transparent)]
    PgRegistry(#[from] PgRegistryError),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsLoadError),
    #[error("secrets: {0}")]
    Secrets(#[from] crate::secret::SecretError),
}

/// How long the first read of a PostgreSQL registry may take before the cache serves.
const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Server {
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    app: Arc<App>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Loads the registry, binds `proxy.listen` and starts accepting clients.
    pub async fn start(settings: Settings) -> Result<Server, StartError> {
        let secrets = Secrets::from_settings(&settings.secrets)?;
        let registry = match (&settings.registry.file, &settings.registry.url) {
            (Some(path), _) => {
                let registry = Arc::new(Registry::new(file::load(path, &secrets)?));
                file::watch(
                    registry.clone(),
                    path.clone(),
                    settings.registry.watch_interval,
                    secrets,
                );
                registry
            }
            (None, Some(url)) => {
                let source = PgSource::from_settings(url, &settings.registry, secrets);
                let (snapshot, reachable) = source.initial(REGISTRY_START_TIMEOUT).await?;
                let registry = Arc::new(Registry::new(snapshot));
                source.follow(registry.clone(), reachable);
                registry
            }
            (None, None) => {
                return Err(StartError::NoRegistry("no registry configured".into()));
            }
        };
        let tls = match (&settings.tls.cert, &settings.tls.key) {
            (Some(cert), Some(key)) if settings.tls.mode != TlsMode::Disable => {
                let tls = Arc::new(ServerTls::load(cert, key)?);
                tls.reload_on_hangup();
                Some(tls)
            }
            _ => None,
        };

        let listener = TcpListener::bind(&settings.proxy.listen)
            .await
            .map_err(|source| StartError::Bind {
                address: settings.proxy.listen.clone(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            address: settings.proxy.listen.clone(),
            source,
        })?;
        // With a registry database: join the other instances (cancel forwarding).
        let instances = match &settings.registry.url {
            Some(url) => {
                let address = settings
                    .registry
                    .instance_address
                    .clone()
                    .unwrap_or_else(|| local_addr.to_string());
                let heartbeat = settings.registry.heartbeat_interval;
                let joined = Instances::register(url, &address, heartbeat).await;
                match joined {
                    Ok(instances) => {
                        instances.clone().keep_alive(url.clone(), heartbeat);
                        Some(instances)
                    }
                    Err(e) => {
                        // Serving matters more: cancels then reach only this instance.
                        tracing::warn!("cannot register the instance in the registry database, cancel requests will not be sent on between instances: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let app = App::with_tls(settings, registry, tls);
        if let Some(instances) = instances {
            app.cancels.set_instances(instances);
        }
        // Tenant moves run by the other instances pause this one too.
        if let (Some(me), Some(url)) = (
            crate::moves::fleet::instance_id(&app),
            app.settings.registry.url.clone(),
        ) {
            crate::moves::fleet::follow(Arc::downgrade(&app), url, me);
        }
        crate::pool::run_maintenance(
            app.pools.clone(),
            Duration::from_secs(1).min(app.settings.pool.host_turn.max(Duration::from_millis(10))),
        );
        tokio::spawn(crate::proxy::park::run(
            app.parking.clone(),
            Arc::downgrade(&app),
            app.shutdown.subscribe(),
        ));
        crate::admin::limits::run_sweeper(Arc::downgrade(&app));
        let http_addr = match &app.settings.admin.http_listen {
            Some(address) => Some(crate::admin::http::start(&app, address).await.map_err(
                |source| StartError::Bind {
                    address: address.clone(),
                    source,
                },
            )?),
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(crate::proxy::accept_loop(
            app.clone(),
            listener,
            shutdown_rx,
        ));
        tracing::info!(%local_addr, "pgtenant listening");
        Ok(Server {
            local_addr,
            http_addr,
            app,
            shutdown,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the HTTP listener (`admin.http_listen`) is bound, if configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Resolves when the admin console asked the proxy to stop (SHUTDOWN).
    pub async fn stop_requested(&self) {
        let mut asked = self.app.stop_requested.subscribe();
        let _ = asked.wait_for(|asked| *asked).await;
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stops accepting, lets each client finish the transaction it is in and tells it
    /// (FATAL 57P01) before closing; waits up to `proxy.shutdown_timeout` for that.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        self.app.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + self.app.settings.proxy.shutdown_timeout;
        while self.app.clients.load(std::sync::atomic::Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    clients = self.app.clients.load(std::sync::atomic::Ordering::Acquire),
                    "shutdown timeout: closing the remaining clients"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(instances) = self.app.cancels.instances() {
            instances.leave().await;
        }
    }
}

/// Ctrl-C or SIGTERM (what `docker stop` and systemd send).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
