//! Moving a tenant to another host: optionally copy its data there (logical
//! replication), pause it, switch the registry, resume.
//!
//! A move runs as a task of the proxy instance that serves the tenant (the pause
//! lives in its pools). Its state (`Phase`) is kept in `Moves` for `SHOW MOVES` and
//! written to a state file beside the registry file (`state`), so a move cut short
//! by a restart is still visible and can be aborted.

pub mod cli;
pub mod copy;
pub mod drain;
pub mod engine;
pub mod fleet;
pub mod phase;
pub mod state;
pub mod switch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

pub use phase::{MoveRecord, Phase};

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
    #[error("move of tenant \"{0}\" aborted")]
    Aborted(String),
    #[error("{0}")]
    Failed(String),
}

impl MoveError {
    pub fn code(&self) -> SqlState {
        match self {
            MoveError::Refused(_) => sqlstate::FEATURE_NOT_SUPPORTED,
            MoveError::Busy(_) => sqlstate::OBJECT_IN_USE,
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

/// The moves this instance runs or knows of (from the state file).
pub struct Moves {
    records: Mutex<BTreeMap<String, MoveRecord>>,
    running: Mutex<BTreeMap<String, Arc<Running>>>,
    /// Where the records are kept; none without a registry file.
    file: Option<PathBuf>,
}

impl Moves {
    /// The moves recorded beside `registry_file`, if any.
    pub fn load(registry_file: Option<&std::path::Path>) -> Moves {
        let file = registry_file.map(state::path_beside);
        let records = match &file {
            Some(path) => state::read(path).unwrap_or_else(|e| {
                tracing::error!(file = %path.display(), "cannot read the moves state file: {e}");
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
        Moves {
            records: Mutex::new(records),
            running: Mutex::new(BTreeMap::new()),
            file,
        }
    }

    /// Every recorded move, by tenant.
    pub fn records(&self) -> Vec<MoveRecord> {
        self.records.lock().unwrap().values().cloned().collect()
    }

    pub fn record(&self, tenant: &str) -> Option<MoveRecord> {
        self.records.lock().unwrap().get(tenant).cloned()
    }

    /// Saves `record` (in memory and in the state file).
    pub fn update(&self, record: &MoveRecord) {
        let mut records = self.records.lock().unwrap();
        records.insert(record.tenant.clone(), record.clone());
        if let Some(path) = &self.file {
            if let Err(e) = state::write(path, &records) {
                tracing::error!(file = %path.display(), "cannot write the moves state file: {e}");
            }
        }
    }

    /// Changes the recorded move of `tenant` in place, if there is one.
    pub fn modify(&self, tenant: &str, f: impl FnOnce(&mut MoveRecord)) -> Option<MoveRecord> {
        let mut record = self.record(tenant)?;
        f(&mut record);
        self.update(&record);
        Some(record)
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
