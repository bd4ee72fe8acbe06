//! The PostgreSQL registry source (`registry.url`): one connection per instance that
//! LISTENs on `pgtenant_registry` (fired by triggers on the registry tables) and reads
//! the whole registry again on each notification, every `poll_interval`, and at each
//! reconnect. While the database is unreachable the last registry keeps serving; the
//! source retries with backoff and logs once when it goes away and once when it is back.
//! Each registry read is kept in `cache_file`, so a restart during an outage serves.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::file::{self, RegistryFileError};
use super::rows::{self, ReadError};
use super::validate::{validate, RawFile};
use super::{Registry, Snapshot};
use crate::config::RegistrySettings;
use crate::secret::Secrets;

/// The channel the triggers notify.
pub const CHANNEL: &str = "pgtenant_registry";

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PgRegistryError {
    #[error("registry database: {}", rows::error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Values(String),
    #[error("registry database: no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Invalid(#[from] RegistryFileError),
}

impl From<ReadError> for PgRegistryError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Db(e) => PgRegistryError::Db(e),
            ReadError::Values(_) => PgRegistryError::Values(e.to_string()),
        }
    }
}

/// What a source needs to follow the registry database.
#[derive(Clone)]
pub struct PgSource {
    pub url: String,
    pub tenants_query: Option<String>,
    pub poll_interval: Duration,
    pub cache_file: Option<PathBuf>,
    pub secrets: Secrets,
}

impl PgSource {
    pub fn from_settings(url: &str, settings: &RegistrySettings, secrets: Secrets) -> PgSource {
        PgSource {
            url: url.to_string(),
            tenants_query: settings.tenants_query.clone(),
            poll_interval: settings.poll_interval,
            cache_file: settings.cache_file.clone(),
            secrets,
        }
    }

    /// The registry at start: from the database, else (unreachable) from the cache
    /// file, else the database's error.
    /// The flag says whether it came from the database.
    pub async fn initial(&self, timeout: Duration) -> Result<(Snapshot, bool), PgRegistryError> {
        let attempt = async {
            let (client, _notifications) = self.connect().await?;
            self.read(&client).await
        };
        let error = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok((snapshot, raw))) => {
                self.write_cache(raw).await;
                return Ok((snapshot, true));
            }
            Ok(Err(e)) => e,
            Err(_) => PgRegistryError::Timeout(timeout),
        };
        // A registry the database holds but that does not validate is not replaced
        // by an older cached one: the operator must see it.
        if matches!(
            error,
            PgRegistryError::Invalid(_) | PgRegistryError::Values(_)
        ) {
            return Err(error);
        }
        let Some(cache) = &self.cache_file else {
            return Err(error);
        };
        match file::load(cache, &self.secrets) {
            Ok(snapshot) => {
                tracing::warn!(
                    cache = %cache.display(),
                    tenants = snapshot.tenant_count(),
                    "registry database unreachable ({error}); serving the cached registry"
                );
                Ok((snapshot, false))
            }
            Err(cache_error) => {
                tracing::error!("registry cache unusable: {cache_error}");
                Err(error)
            }
        }
    }

    /// One read of the registry database, validated (for `check`).
    pub async fn read_once(&self) -> Result<Snapshot, PgRegistryError> {
        let (client, _notifications) = self.connect().await?;
        Ok(self.read(&client).await?.0)
    }

    /// Follows the database into `registry` until the runtime stops.
    pub fn follow(self, registry: Arc<Registry>, reachable: bool) {
        tokio::spawn(async move {
            let mut retry = FIRST_RETRY;
            let mut reachable = reachable;
            loop {
                let error = self.session(&registry, &mut reachable, &mut retry).await;
                if reachable {
                    tracing::error!(
                        "registry database unreachable, the last registry keeps serving: {error}"
                    );
                    reachable = false;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LAST_RETRY);
            }
        });
    }

    /// One connection: LISTEN, read everything, then read again at each
    /// notification or tick. Returns when the connection fails.
    async fn session(
        &self,
        registry: &Registry,
        reachable: &mut bool,
        retry: &mut Duration,
    ) -> PgRegistryError {
        let (client, mut notified) = match self.connect().await {
            Ok(connected) => connected,
            Err(e) => return e,
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            return e.into();
        }
        if !*reachable {
            tracing::info!("registry database reachable again");
            *reachable = true;
        }
        *retry = FIRST_RETRY;
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The first tick is immediate: a full read at every (re)connect.
            tokio::select! {
                _ = ticker.tick() => {}
                note = notified.recv() => {
                    if note.is_none() {
                        return PgRegistryError::Values("connection closed".into());
                    }
                    // Several changes at once are one read.
                    while notified.try_recv().is_ok() {}
                }
            }
            let started = std::time::Instant::now();
            match self.read(&client).await {
                Ok((snapshot, raw)) => {
                    let tenants = snapshot.tenant_count();
                    match registry.accept(snapshot) {
                        Ok(()) => {
                            let took_ms = started.elapsed().as_millis() as u64;
                            tracing::debug!(tenants, took_ms, "registry read");
                            self.write_cache(raw).await;
                        }
                        Err(why) => tracing::error!(
                            "registry update refused, previous registry keeps serving: {why}"
                        ),
                    }
                }
                Err(PgRegistryError::Db(e)) => return PgRegistryError::Db(e),
                Err(e) => {
                    tracing::error!("registry update refused, previous registry keeps serving: {e}")
                }
            }
        }
    }

    /// A client and the notifications its connection receives (the channel closes
    /// when the connection does).
    async fn connect(&self) -> Result<(Client, mpsc::UnboundedReceiver<()>), PgRegistryError> {
        let mut config: tokio_postgres::Config = self.url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("pgtenant registry");
        }
        let (client, mut connection) = config.connect(NoTls).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        let _ = tx.send(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        });
        Ok((client, rx))
    }

    /// Reads and validates the whole registry; validation runs off the event loop.
    async fn read(&self, client: &Client) -> Result<(Snapshot, RawFile), PgRegistryError> {
        let raw = rows::read(client, self.tenants_query.as_deref()).await?;
        let secrets = self.secrets.clone();
        let checked = tokio::task::spawn_blocking(move || {
            validate(raw.clone(), rows::SOURCE, &secrets).map(|snapshot| (snapshot, raw))
        })
        .await
        .map_err(|e| PgRegistryError::Values(format!("validation failed: {e}")))?;
        Ok(checked?)
    }

    /// Keeps the registry read in `cache_file` (written whole, then renamed; readable
    /// by the owner only: it may hold passwords, encrypted or not, as the database does).
    async fn write_cache(&self, raw: RawFile) {
        let Some(path) = self.cache_file.clone() else {
            return;
        };
        let written = tokio::task::spawn_blocking(move || write_cache(&path, &raw)).await;
        if let Ok(Err(e)) = written {
            tracing::warn!("cannot write the registry cache: {e}");
        }
    }
}

fn write_cache(path: &Path, raw: &RawFile) -> std::io::Result<()> {
    use std::io::Write;
    let text = toml::to_string(raw).map_err(std::io::Error::other)?;
    let text = format!(
        "# The registry as last read from the registry database; pgtenant rewrites it.\n{text}"
    );
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&tmp, path)
}
