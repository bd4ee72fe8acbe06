//! Moving a tenant to another host: optionally copy its data there (logical
//! replication), pause it, switch the registry, resume.
//!
//! A move runs as a task of the proxy instance that serves the tenant (the pause
//! lives in its pools). Its record (`MoveRecord`: phase, hosts, replication objects,
//! the instance running it) is kept in `Moves` and written where the registry lives:
//! a state file beside the registry file (`state`), or `pgtenant.moves` in the
//! registry database (`recorded`). So a move cut short by a crash is visible from
//! any instance, and can be aborted or resumed there (`engine`).

pub mod abort;
pub mod cli;
pub mod copy;
pub mod drain;
pub mod engine;
pub mod fleet;
pub mod phase;
pub mod recorded;
pub mod state;
pub mod switch;
pub mod teardown;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

pub use phase::{MoveRecord, Phase};

use crate::config::RegistrySettings;
use crate::protocol::sqlstate::{self, SqlState};

/// What to move where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveRequest {
    pub tenant: String,
    pub to: String,
    /// Copy the data with logical replication first; otherwise it is already there.
    pub copy: bool,
    /// After a successful copy, drop the tenant's tables (schemas or database) on the
    /// source.
    pub drop_source: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{0}")]
    Refused(String),
    #[error("tenant \"{0}\" is already moving")]
    Busy(String),
    #[error("tenant \"{tenant}\" is moving on proxy instance {instance}; ask that instance (its console or HTTP API)")]
    Elsewhere { tenant: String, instance: String },
    #[error("move of tenant \"{0}\" aborted")]
    Aborted(String),
    #[error("{0}")]
    Failed(String),
}

impl MoveError {
    pub fn code(&self) -> SqlState {
        match self {
            MoveError::Refused(_) => sqlstate::FEATURE_NOT_SUPPORTED,
            MoveError::Busy(_) | MoveError::Elsewhere { .. } => sqlstate::OBJECT_IN_USE,
            MoveError::Aborted(_) => sqlstate::QUERY_CANCELED,
            MoveError::Failed(_) => sqlstate::OBJECT_IN_USE,
        }
    }
}

/// A move under way in this instance.
pub struct Running {
    pub abort: watch::Sender<bool>,
    /// `None` until the move ends; then how it ended.
    pub done: watch::Sender<Option<Result<String, String>>>,
}

/// Where moves are recorded.
enum Backend {
    /// No registry file or database (tests that build an App by hand).
    Memory,
    /// The state file beside the registry file.
    File(PathBuf),
    /// `pgtenant.moves` in the registry database.
    Database(Box<Db>),
}

struct Db {
    url: String,
    /// An instance whose heartbeat is this old is gone.
    stale: Duration,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

/// The moves this instance runs or knows of (from the state file or the registry
/// database).
pub struct Moves {
    records: Mutex<BTreeMap<String, MoveRecord>>,
    running: Mutex<BTreeMap<String, Arc<Running>>>,
    backend: Backend,
}

impl Moves {
    /// The moves recorded where the registry lives: beside the registry file, or in
    /// the registry database.
    pub fn load(registry: &RegistrySettings) -> Moves {
        let backend = match (&registry.file, &registry.url) {
            (Some(file), _) => Backend::File(state::path_beside(file)),
            (None, Some(url)) => Backend::Database(Box::new(Db {
                url: url.clone(),
                stale: registry.heartbeat_interval * crate::registry::instances::STALE_AFTER,
                client: tokio::sync::Mutex::new(None),
            })),
            (None, None) => Backend::Memory,
        };
        let records = match &backend {
            Backend::File(path) => state::read(path).unwrap_or_else(|e| {
                tracing::error!(file = %path.display(), "cannot read the moves state file: {e}");
                BTreeMap::new()
            }),
            _ => BTreeMap::new(),
        };
        Moves {
            records: Mutex::new(records),
            running: Mutex::new(BTreeMap::new()),
            backend,
        }
    }

    /// This instance's own records (its moves, or the state file's).
    fn local(&self) -> Vec<MoveRecord> {
        self.records.lock().unwrap().values().cloned().collect()
    }

    /// Runs `f` on the registry database connection, opening it when needed.
    async fn with_db<T>(
        &self,
        f: impl AsyncFnOnce(&mut tokio_postgres::Client, Duration) -> Result<T, tokio_postgres::Error>,
    ) -> Option<Result<T, String>> {
        let Backend::Database(db) = &self.backend else {
            return None;
        };
        let Db { url, stale, client } = &**db;
        let mut client = client.lock().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match crate::registry::migrate::connect(url).await {
                Ok(c) => *client = Some(c),
                Err(e) => return Some(Err(crate::registry::rows::error_text(&e))),
            }
        }
        let c = client.as_mut().expect("connected");
        let result = f(c, *stale).await;
        if result.is_err() {
            // A broken connection is opened again next time.
            *client = None;
        }
        Some(result.map_err(|e| crate::registry::rows::error_text(&e)))
    }

    /// Every recorded move, with whether it runs now (here, or in another live
    /// instance).
    pub async fn list(&self) -> Result<Vec<recorded::Found>, String> {
        let local = || {
            self.local()
                .into_iter()
                .map(|record| recorded::Found {
                    record,
                    owner_alive: false,
                })
                .collect()
        };
        let listed = match self
            .with_db(async |c, stale| recorded::all(c, stale).await)
            .await
        {
            Some(Ok(rows)) => rows,
            // The registry database away: this instance's own moves still show.
            Some(Err(e)) => {
                tracing::warn!("cannot read the moves recorded in the registry database: {e}");
                local()
            }
            None => local(),
        };
        Ok(listed
            .into_iter()
            .map(|mut f| {
                // This instance's own moves: fresher here than in the database.
                if let Some(mine) = self
                    .running(&f.record.tenant)
                    .and(self.local_record(&f.record.tenant))
                {
                    f.record = mine;
                    f.owner_alive = true;
                }
                f
            })
            .collect())
    }

    fn local_record(&self, tenant: &str) -> Option<MoveRecord> {
        self.records.lock().unwrap().get(tenant).cloned()
    }

    /// The recorded move of `tenant`.
    pub async fn find(&self, tenant: &str) -> Result<Option<recorded::Found>, String> {
        if let (Some(_), Some(record)) = (self.running(tenant), self.local_record(tenant)) {
            return Ok(Some(recorded::Found {
                record,
                owner_alive: true,
            }));
        }
        self.recorded(tenant).await
    }

    /// The move of `tenant` as recorded, whether or not it runs here.
    pub async fn recorded(&self, tenant: &str) -> Result<Option<recorded::Found>, String> {
        match self
            .with_db(async |c, stale| recorded::one(c, tenant, stale).await)
            .await
        {
            Some(found) => found,
            None => Ok(self.local_record(tenant).map(|record| recorded::Found {
                record,
                owner_alive: false,
            })),
        }
    }

    /// Saves `record` here and where moves are recorded; with `phase_changed`, the
    /// tenant's `state` in the registry database too.
    pub async fn save(&self, record: &MoveRecord, phase_changed: bool) -> Result<(), String> {
        let file = {
            let mut records = self.records.lock().unwrap();
            records.insert(record.tenant.clone(), record.clone());
            match &self.backend {
                Backend::File(path) => Some(
                    state::write(path, &records)
                        .map_err(|e| format!("cannot write {}: {e}", path.display())),
                ),
                _ => None,
            }
        };
        let result = match file {
            Some(written) => written,
            None => self
                .with_db(async |c, _| recorded::save(c, record, phase_changed).await)
                .await
                .unwrap_or(Ok(())),
        };
        if let Err(e) = &result {
            tracing::error!(tenant = %record.tenant, "cannot record the move: {e}");
        }
        result
    }

    pub fn running(&self, tenant: &str) -> Option<Arc<Running>> {
        self.running.lock().unwrap().get(tenant).cloned()
    }
    fn begin(&self, tenant: &str) -> Result<Arc<Running>, MoveError> {
        let mut running = self.running.lock().unwrap();
        if running.contains_key(tenant) {
            return Err(MoveError::Busy(tenant.into()));
        }
        let entry = Arc::new(Running {
            abort: watch::Sender::new(false),
            done: watch::Sender::new(None),
        });
        running.insert(tenant.into(), entry.clone());
        Ok(entry)
    }

    fn end(&self, tenant: &str) {
        self.running.lock().unwrap().remove(tenant);
    }
}
