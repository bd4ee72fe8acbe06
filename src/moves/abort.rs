//! Aborting a move: one running here is asked to stop (it resumes the tenant on the
//! source and cleans up), one running on another live instance is asked to stop
//! over the registry database; one cut short (its instance crashed or was
//! restarted) is cleaned up from its record, read where moves are recorded, by
//! whichever instance is asked.

use std::sync::Arc;

use super::copy::{Endpoint, Scope};
use super::phase::Replication;
use super::teardown;
use super::{fleet, MoveError, MoveRecord, Phase};
use crate::app::App;
use crate::registry::HostName;

pub async fn abort(app: &Arc<App>, tenant: &str) -> Result<String, MoveError> {
    if let Some(running) = app.moves.running(tenant) {
        running.abort.send_replace(true);
        let mut done = running.done.subscribe();
        let _ = done.wait_for(|d| d.is_some()).await;
        let outcome = done.borrow().clone().expect("ended");
        return match outcome {
            Ok(message) => Err(MoveError::Failed(format!(
                "the move had already switched and finished: {message}"
            ))),
            Err(message) => Ok(message),
        };
    }
    let found = app
        .moves
        .find(tenant)
        .await
        .map_err(|e| MoveError::Failed(format!("cannot read the recorded moves: {e}")))?
        .filter(|f| f.record.is_open())
        .ok_or_else(|| MoveError::Refused(format!("no move of tenant \"{tenant}\" to abort")))?;
    let record = found.record;
    if found.owner_alive {
        // Another live instance runs it: asked over the registry database.
        let ended = fleet::ask_abort(app, &record).await.map_err(|why| {
            MoveError::Failed(format!(
                "asked instance {} to abort the move of tenant \"{tenant}\": {why}",
                record.instance.as_deref().unwrap_or("?")
            ))
        })?;
        return match ended.phase {
            Phase::Active => Err(MoveError::Failed(format!(
                "the move had already switched and finished: {}",
                ended.message
            ))),
            _ => Ok(ended.message),
        };
    }
    // Cut short between the registry's switch and its record: switched all the same.
    let switched = app
        .registry
        .snapshot()
        .tenant(tenant)
        .is_some_and(|t| t.host.as_str() == record.to);
    if !record.phase.before_switch() || switched {
        let done = finish_interrupted(app, &record).await;
        return Err(MoveError::Failed(format!(
            "the move of tenant \"{tenant}\" had switched to {} before it was cut short; it cannot be undone, only finished: {done}",
            record.to
        )));
    }
    // Instances paused by the move's instance resume on the source now (they would
    // after move_timeout anyway).
    if record.phase == Phase::Paused {
        fleet::tell_resume(app, &record).await;
    }
    let search_path = app
        .registry
        .snapshot()
        .tenant(tenant)
        .map(|t| t.search_path.clone());
    let cleanup = match (&record.replication, search_path) {
        (Some(r), Some(path)) => cleanup(app, &record, &path, r).await,
        _ => String::new(),
    };
    let message = format!(
        "move of tenant \"{tenant}\" to {} (cut short in phase {}) aborted; it serves from {}{cleanup}",
        record.to, record.phase, record.from
    );
    let mut ended = record;
    ended.phase = Phase::Aborted;
    ended.finished = true;
    ended.message = message.clone();
    ended.updated_at = super::phase::now();
    let _ = app.moves.save(&ended, true).await;
    tracing::warn!(%tenant, "{message}");
    Ok(message)
}

/// Drops the replication objects and the partial copy on the target; says what was
/// dropped and what could not be.
pub async fn cleanup(
    app: &App,
    record: &MoveRecord,
    search_path: &[String],
    r: &Replication,
) -> String {
    let snapshot = app.registry.snapshot();
    let (Some(from), Some(to)) = (
        snapshot.host(&HostName::new(&record.from)),
        snapshot.host(&HostName::new(&record.to)),
    ) else {
        return "; its hosts are no longer in the registry: drop the replication objects by hand"
            .into();
    };
    let (Ok(source), Ok(target)) = (
        Endpoint::new(&from, &r.database),
        Endpoint::new(&to, &r.database),
    ) else {
        return String::new();
    };
    let mut left = Vec::new();
    if let Err(e) = teardown::drop_replication(&source, &target, &r.name).await {
        left.push(format!("replication objects {}: {e}", r.name));
    } else if r.target_made {
        // Only what this move made: a schema or database that was there before the
        // move is never dropped.
        if let Err(e) = teardown::drop_copy(&target, &Scope::of(search_path)).await {
            left.push(format!("the partial copy on {}: {e}", record.to));
        }
    }
    match (left.is_empty(), r.target_made) {
        (true, true) => format!(
            "; replication objects {} dropped; the partial copy on {} was dropped",
            r.name, record.to
        ),
        (true, false) => format!("; replication objects {} dropped", r.name),
        (false, _) => format!("; could not drop {}", left.join("; ")),
    }
}

/// A move that had switched when it was cut short: the tenant serves from the
/// target; what is left is dropping the replication objects.
async fn finish_interrupted(app: &App, record: &MoveRecord) -> String {
    let message = match &record.replication {
        None => "nothing left to drop".to_string(),
        Some(r) => {
            let snapshot = app.registry.snapshot();
            let hosts = (
                snapshot.host(&HostName::new(&record.from)),
                snapshot.host(&HostName::new(&record.to)),
            );
            match hosts {
                (Some(from), Some(to)) => match (
                    Endpoint::new(&from, &r.database),
                    Endpoint::new(&to, &r.database),
                ) {
                    (Ok(s), Ok(t)) => match teardown::drop_replication(&s, &t, &r.name).await {
                        Ok(()) => "replication objects dropped".to_string(),
                        Err(e) => format!("could not drop the replication objects: {e}"),
                    },
                    _ => "bad host address".into(),
                },
                _ => "its hosts are no longer in the registry".into(),
            }
        }
    };
    let mut ended = record.clone();
    ended.phase = Phase::Active;
    ended.finished = true;
    ended.message = message.clone();
    ended.updated_at = super::phase::now();
    let _ = app.moves.save(&ended, true).await;
    message
}
