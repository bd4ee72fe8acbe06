//! The phases of a move and the record kept of one.
//!
//! `active → copying → catching_up → paused → switched → active`; a move that fails
//! or is aborted before `switched` ends `failed` or `aborted`, with the tenant
//! serving from the source.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Checked and about to start (or done: serving from the new host).
    Active,
    /// Schema applied on the target; the initial copy of the tables runs.
    Copying,
    /// Every table copied; the target follows the source's changes.
    CatchingUp,
    /// The tenant is paused: in-flight transactions finish, the last changes arrive.
    Paused,
    /// The registry names the new host; the tenant resumes there.
    Switched,
    Failed,
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Active => "active",
            Phase::Copying => "copying",
            Phase::CatchingUp => "catching_up",
            Phase::Paused => "paused",
            Phase::Switched => "switched",
            Phase::Failed => "failed",
            Phase::Aborted => "aborted",
        }
    }

    /// Before the registry was switched: abort leaves the tenant on the source.
    pub fn before_switch(self) -> bool {
        matches!(
            self,
            Phase::Copying | Phase::CatchingUp | Phase::Paused | Phase::Active
        )
    }

    /// The phase as written by the registry (`pgtenant.moves.phase`).
    pub fn parse(text: &str) -> Option<Phase> {
        serde_json::from_value(serde_json::Value::String(text.into())).ok()
    }

    /// What `pgtenant.tenants.state` says: the tenant's state machine, `active` again
    /// once a move has ended, whichever way.
    pub fn tenant_state(self) -> Phase {
        match self {
            Phase::Failed | Phase::Aborted => Phase::Active,
            phase => phase,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replication objects a copying move made, so they can be dropped later even by
/// another process (`--abort` after a restart).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// Publication and slot on the source, subscription on the target: one name.
    pub name: String,
    pub database: String,
    /// The move made the tenant's schemas (or database) on the target: a failed
    /// move drops them again.
    #[serde(default)]
    pub target_made: bool,
}

/// One move as `SHOW MOVES` and the state file know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub tenant: String,
    /// This run's id (the fleet's acknowledgements carry it).
    #[serde(default)]
    pub id: String,
    pub from: String,
    pub to: String,
    pub copy: bool,
    #[serde(default)]
    pub drop_source: bool,
    pub phase: Phase,
    /// Whether the move is still running (`false`: ended, or cut short by a restart).
    #[serde(default)]
    pub finished: bool,
    /// Unix seconds.
    pub started_at: u64,
    pub updated_at: u64,
    /// Why it failed, or what it did.
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub rows_done: u64,
    #[serde(default)]
    pub rows_total: u64,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// How long the tenant was paused, in milliseconds, once it resumed.
    #[serde(default)]
    pub paused_ms: Option<u64>,
    #[serde(default)]
    pub replication: Option<Replication>,
    /// The proxy instance running the move (with a registry database).
    #[serde(default)]
    pub instance: Option<String>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MoveRecord {
    pub fn new(tenant: &str, from: &str, to: &str, copy: bool) -> MoveRecord {
        MoveRecord {
            tenant: tenant.into(),
            id: format!("{:016x}", rand::random::<u64>()),
            from: from.into(),
            to: to.into(),
            copy,
            drop_source: false,
            phase: Phase::Active,
            finished: false,
            started_at: now(),
            updated_at: now(),
            message: String::new(),
            rows_done: 0,
            rows_total: 0,
            bytes_done: 0,
            bytes_total: 0,
            paused_ms: None,
            replication: None,
            instance: None,
        }
    }

    /// A move that may still leave something behind: not finished, or failed with
    /// replication objects not yet dropped.
    pub fn is_open(&self) -> bool {
        !self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_read_as_the_registry_writes_them() {
        let json = serde_json::to_string(&Phase::CatchingUp).unwrap();
        assert_eq!(json, "\"catching_up\"");
        assert_eq!(Phase::CatchingUp.as_str(), "catching_up");
        assert!(Phase::Paused.before_switch());
        assert!(!Phase::Switched.before_switch());
        assert_eq!(Phase::parse("catching_up"), Some(Phase::CatchingUp));
        assert_eq!(Phase::parse("nonsense"), None);
        assert_eq!(Phase::Aborted.tenant_state(), Phase::Active);
    }
}
