//! One move from start to end: check, copy and catch up (with `copy`), pause and
//! drain, wait for the last changes, set the sequences, switch the registry, resume,
//! clean up. A failure or an abort before the switch resumes the tenant on the
//! source and drops what the move made; the record says why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::copy::{self, Copy, Endpoint, Scope};
use super::fleet::{self, Coordinator};
use super::phase::Replication;
use super::teardown;
use super::{MoveError, MoveRecord, MoveRequest, Phase, Running};
use crate::app::App;
use crate::registry::{HostName, TenantName};

/// How often the copy's progress and the catch-up are looked at.
const POLL: Duration = Duration::from_millis(50);
/// Under the pause, how long the last changes may take to reach the target.
const FINAL_CATCH_UP: Duration = Duration::from_secs(10);
/// How long the pause may wait for server connections opening on the new host.
const WARM_WITHIN: Duration = Duration::from_millis(500);

/// Starts a move in the background; the returned entry says when it ends.
///
/// A move of the same tenant cut short earlier (its instance crashed or was
/// restarted: the record says so) is resumed when this one goes to the same host
/// the same way; otherwise it must be aborted first.
pub async fn start(app: &Arc<App>, request: MoveRequest) -> Result<Arc<Running>, MoveError> {
    let (mut record, plan) = plan(app, &request)?;
    let running = app.moves.begin(&request.tenant)?;
    let earlier = match earlier(app, &request).await {
        Ok(earlier) => earlier,
        Err(e) => {
            app.moves.end(&request.tenant);
            return Err(e);
        }
    };
    record.drop_source = request.drop_source;
    record.instance = fleet::instance_id(app);
    let (app, entry) = (app.clone(), running.clone());
    tokio::spawn(async move {
        let tenant = request.tenant.clone();
        let abort = entry.abort.subscribe();
        let outcome = run(&app, &request, plan, record, earlier, abort).await;
        app.moves.end(&tenant);
        entry
            .done
            .send_replace(Some(outcome.map_err(|e| e.to_string())));
    });
    Ok(running)
}

/// The earlier move of the tenant this one resumes, if any; refuses when there is
/// one this move cannot resume.
async fn earlier(app: &App, request: &MoveRequest) -> Result<Option<MoveRecord>, MoveError> {
    // This move is already `running` here: the record is read as it is stored.
    let found = app
        .moves
        .recorded(&request.tenant)
        .await
        .map_err(|e| MoveError::Failed(format!("cannot read the recorded moves: {e}")))?;
    let Some(found) = found.filter(|f| f.record.is_open()) else {
        return Ok(None);
    };
    let earlier = found.record;
    if found.owner_alive {
        return Err(MoveError::Elsewhere {
            tenant: request.tenant.clone(),
            instance: earlier.instance.unwrap_or_default(),
        });
    }
    let same = earlier.to == request.to && earlier.copy == request.copy;
    if !earlier.phase.before_switch() || !same {
        return Err(MoveError::Refused(format!(
            "an earlier move of tenant \"{}\" to {} was cut short in phase {}; abort it first (pgtenant tenant move --abort {} or ABORT MOVE {}){}",
            request.tenant,
            earlier.to,
            earlier.phase,
            request.tenant,
            request.tenant,
            match earlier.phase.before_switch() {
                true => format!(", or resume it: move to {} the same way", earlier.to),
                false => String::new(),
            }
        )));
    }
    tracing::info!(tenant = %request.tenant, phase = %earlier.phase, "move: resuming a move cut short");
    Ok(Some(earlier))
}

pub use super::abort::abort;

struct Plan {
    tenant: TenantName,
    to: HostName,
    source: Option<Endpoint>,
    target: Option<Endpoint>,
    scope: Scope,
}

fn plan(app: &App, request: &MoveRequest) -> Result<(MoveRecord, Plan), MoveError> {
    let refuse = |m: String| Err(MoveError::Refused(m));
    let snapshot = app.registry.snapshot();
    let Some(tenant) = snapshot
        .tenants()
        .find(|t| t.name.as_str() == request.tenant)
    else {
        return refuse(format!(
            "tenant \"{}\" is not listed in the registry (a tenant served by the template entry cannot be moved alone)",
            request.tenant
        ));
    };
    let to = HostName::new(&request.to);
    let Some(target) = snapshot.host(&to) else {
        return refuse(format!("host \"{}\" is not in the registry", request.to));
    };
    if tenant.host == to {
        return refuse(format!(
            "tenant \"{}\" is already on host {}",
            request.tenant, request.to
        ));
    }
    let source = snapshot
        .host(&tenant.host)
        .ok_or_else(|| MoveError::Refused(format!("host \"{}\" is unknown", tenant.host)))?;
    if request.copy && source.address == target.address {
        return refuse(format!(
            "hosts {} and {} are the same server ({}): nothing to copy",
            tenant.host, to, source.address
        ));
    }
    let endpoints = match request.copy {
        true => Some((
            Endpoint::new(&source, &tenant.database).map_err(MoveError::Refused)?,
            Endpoint::new(&target, &tenant.database).map_err(MoveError::Refused)?,
        )),
        false => None,
    };
    let record = MoveRecord::new(
        &request.tenant,
        tenant.host.as_str(),
        &request.to,
        request.copy,
    );
    let (source, target) = endpoints.unzip();
    Ok((
        record,
        Plan {
            tenant: tenant.name.clone(),
            to,
            source,
            target,
            scope: Scope::of(&tenant.search_path),
        },
    ))
}

/// Watches for an abort while a step runs.
async fn or_abort<T>(
    abort: &mut watch::Receiver<bool>,
    step: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::select! {
        r = step => r,
        _ = abort.wait_for(|a| *a) => Err(ABORTED.into()),
    }
}

const ABORTED: &str = "aborted";

async fn run(
    app: &Arc<App>,
    request: &MoveRequest,
    plan: Plan,
    mut record: MoveRecord,
    earlier: Option<MoveRecord>,
    mut abort: watch::Receiver<bool>,
) -> Result<String, MoveError> {
    let mut paused_at = None;
    let mut fleet = None;
    // Nothing is made before the move is recorded: a crash leaves nothing unknown.
    if let Err(e) = app.moves.save(&record, true).await {
        return Err(MoveError::Failed(format!(
            "cannot record the move where the registry lives ({e}); nothing was changed{}",
            match app.settings.registry.url {
                Some(_) => " (pgtenant registry init adds the moves table)",
                None => "",
            }
        )));
    }
    let result = steps(
        app,
        request,
        &plan,
        &mut record,
        earlier,
        (&mut paused_at, &mut fleet),
        &mut abort,
    )
    .await;
    match result {
        Ok(message) => Ok(message),
        Err(why) => {
            // Before the switch: the tenant goes on from the source, everywhere.
            if paused_at.is_some() {
                app.pools.resume(&plan.tenant);
            }
            if let Some(fleet) = fleet.as_mut() {
                fleet.resume_others(&record.from).await;
            }
            let cleanup = match &record.replication {
                Some(r) => {
                    let path = app_search_path(app, &plan.tenant);
                    super::abort::cleanup(app, &record, &path, r).await
                }
                None => String::new(),
            };
            let aborted = why == ABORTED;
            let message = match aborted {
                true => format!(
                    "move of tenant \"{}\" aborted; it serves from {}{cleanup}",
                    plan.tenant, record.from
                ),
                false => format!(
                    "move of tenant \"{}\" failed in phase {}: {why}; it serves from {}{cleanup}",
                    plan.tenant, record.phase, record.from
                ),
            };
            tracing::warn!(tenant = %plan.tenant, "{message}");
            record.phase = if aborted {
                Phase::Aborted
            } else {
                Phase::Failed
            };
            record.finished = true;
            record.message = message.clone();
            record.updated_at = super::phase::now();
            let _ = app.moves.save(&record, true).await;
            Err(match aborted {
                true => MoveError::Aborted(message),
                false => MoveError::Failed(message),
            })
        }
    }
}

fn app_search_path(app: &App, tenant: &TenantName) -> Vec<String> {
    app.registry
        .snapshot()
        .tenant(tenant.as_str())
        .map(|t| t.search_path.clone())
        .unwrap_or_default()
}

/// A phase change, recorded (with the tenant's `state` in a registry database)
/// before the move goes on.
async fn set_phase(app: &App, record: &mut MoveRecord, phase: Phase) {
    tracing::info!(tenant = %record.tenant, from = %record.from, to = %record.to, phase = %phase, "move");
    record.phase = phase;
    record.updated_at = super::phase::now();
    let _ = app.moves.save(record, true).await;
}

async fn steps(
    app: &Arc<App>,
    request: &MoveRequest,
    plan: &Plan,
    record: &mut MoveRecord,
    earlier: Option<MoveRecord>,
    (paused_at, fleet): (&mut Option<Instant>, &mut Option<Coordinator>),
    abort: &mut watch::Receiver<bool>,
) -> Result<String, String> {
    // With other instances on the registry database, they pause and acknowledge too.
    if let (Some(me), Some(url)) = (fleet::instance_id(app), &app.settings.registry.url) {
        *fleet = Some(Coordinator::open(url, me, plan.tenant.as_str(), &record.id).await?);
    }
    let mut notes = Vec::new();
    let mut copy = None;
    if let (Some(source), Some(target)) = (&plan.source, &plan.target) {
        let name = copy::object_name(plan.tenant.as_str());
        let mut c = or_abort(
            abort,
            Copy::open(
                source.clone(),
                target.clone(),
                plan.scope.clone(),
                name.clone(),
            ),
        )
        .await?;
        or_abort(abort, c.check()).await?;
        let resumed = match earlier
            .as_ref()
            .and_then(|e| Some((e, e.replication.as_ref()?)))
        {
            Some((e, r)) => resume(app, &mut c, e, r, &mut notes).await?,
            None => false,
        };
        set_phase(app, record, Phase::Copying).await;
        // From here on, a failure drops what was made.
        record.replication = Some(Replication {
            name: name.clone(),
            database: source.database.clone(),
            target_made: resumed && (c.created_database || c.created_schemas),
        });
        let _ = app.moves.save(record, false).await;
        if !resumed {
            // Not cut short by an abort: what it made on the target must be known
            // to be dropped again.
            let prepared = c.prepare_target().await;
            if let Some(r) = record.replication.as_mut() {
                r.target_made = c.created_database || c.created_schemas;
            }
            let _ = app.moves.save(record, false).await;
            prepared?;
            c.start().await?;
        }
        loop {
            let progress = or_abort(abort, c.progress()).await?;
            record.rows_done = progress.rows_done;
            record.rows_total = progress.rows_total;
            record.bytes_done = progress.bytes_done;
            record.bytes_total = progress.bytes_total;
            let _ = app.moves.save(record, false).await;
            if or_abort(abort, c.synced()).await? {
                break;
            }
            or_abort(abort, async {
                tokio::time::sleep(POLL * 4).await;
                Ok(())
            })
            .await?;
        }
        record.rows_done = record.rows_total;
        record.bytes_done = record.bytes_total;
        set_phase(app, record, Phase::CatchingUp).await;
        // Close enough that the last stretch under the pause is short.
        loop {
            let lsn = or_abort(abort, c.source_lsn()).await?;
            if or_abort(abort, c.confirmed(&lsn)).await? {
                break;
            }
            or_abort(abort, async {
                tokio::time::sleep(POLL).await;
                Ok(())
            })
            .await?;
        }
        copy = Some(c);
    }

    set_phase(app, record, Phase::Paused).await;
    *paused_at = Some(Instant::now());
    let tenant = &plan.tenant;
    let others = async {
        match fleet.as_mut() {
            Some(f) => {
                let drain = app.settings.admin.move_timeout;
                f.pause_others(&record.from, plan.to.as_str(), drain).await
            }
            None => Ok(0),
        }
    };
    let (closed, others) =
        tokio::join!(drain_or_abort(app, tenant, plan.to.as_str(), abort), others);
    let (closed, others) = (closed?, others?);
    if others > 0 {
        tracing::info!(%tenant, instances = others, "move: the other instances paused the tenant");
    }
    if let Some(c) = &copy {
        // Nothing of the tenant's writes now; the last of them reach the target.
        let lsn = c.source_lsn().await?;
        let deadline = Instant::now() + FINAL_CATCH_UP;
        while !or_abort(abort, c.confirmed(&lsn)).await? {
            if Instant::now() >= deadline {
                return Err(format!(
                    "the target did not reach the source's position {lsn} within {FINAL_CATCH_UP:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        c.sync_sequences().await?;
    }
    if *abort.borrow() {
        return Err(ABORTED.into());
    }
    switch(app, tenant, &record.from.clone(), &plan.to).await?;
    let warmed = warm(app, tenant).await;
    app.pools.resume(tenant);
    if let Some(f) = fleet.as_mut() {
        f.resume_others(plan.to.as_str()).await;
    }
    // Recorded once the clients go on (the registry itself says the move switched:
    // an abort of a move cut short here looks at the tenant's host).
    set_phase(app, record, Phase::Switched).await;
    let paused = paused_at.map(|t| t.elapsed()).unwrap_or_default();
    record.paused_ms = Some(paused.as_millis() as u64);
    tracing::info!(%tenant, to = %plan.to, paused_ms = paused.as_millis() as u64, warmed, "move: switched and resumed");

    // After the resume: nothing here keeps clients waiting.
    if closed > 0 {
        notes.push(format!("{closed} session client(s) told to reconnect"));
    }
    if let (Some(c), Some(r)) = (&copy, &record.replication) {
        match teardown::drop_replication(&c.source, &c.target, &r.name).await {
            Ok(()) => notes.push("replication objects dropped".into()),
            Err(e) => notes.push(format!("could not drop the replication objects: {e}")),
        }
        if request.drop_source {
            match teardown::drop_copy(&c.source, &plan.scope).await {
                Ok(()) => notes.push(format!("source copy on {} dropped", record.from)),
                Err(e) => notes.push(format!("could not drop the source copy: {e}")),
            }
        } else {
            notes.push(format!("source copy left on {}", record.from));
        }
    }
    let message = format!(
        "tenant \"{tenant}\" moved from {} to {}; paused {} ms{}{}",
        record.from,
        record.to,
        paused.as_millis(),
        if notes.is_empty() { "" } else { "; " },
        notes.join("; ")
    );
    record.message = message.clone();
    record.finished = true;
    set_phase(app, record, Phase::Active).await;
    Ok(message)
}

/// Picks up the replication of a move cut short: true when its subscription, slot
/// and publication are all still there (the copy goes on from where it was);
/// otherwise what is left of them is dropped and the copy starts over.
async fn resume(
    app: &App,
    c: &mut Copy,
    earlier: &MoveRecord,
    r: &Replication,
    notes: &mut Vec<String>,
) -> Result<bool, String> {
    if r.name == c.name && c.reuse(r.target_made).await? {
        notes.push(format!(
            "resumed the move cut short in phase {} with its subscription {}",
            earlier.phase, r.name
        ));
        return Ok(true);
    }
    let path = app_search_path(app, &TenantName::new(&earlier.tenant));
    let cleaned = super::abort::cleanup(app, earlier, &path, r).await;
    if cleaned.contains("could not drop") {
        return Err(format!(
            "the move cut short in phase {} left replication objects that are not all usable{cleaned}",
            earlier.phase
        ));
    }
    notes.push(format!(
        "the move cut short in phase {} had lost its subscription; started the copy over{cleaned}",
        earlier.phase
    ));
    Ok(false)
}

/// Under the pause, before the clients go on: server connections opened on the new
/// host, as many as the tenant has clients (up to its pool size), so they do not
/// each wait for one. How many were opened.
pub async fn warm(app: &App, tenant: &TenantName) -> usize {
    let clients = app
        .metrics
        .find_tenant(tenant.as_str())
        .map_or(0, |s| s.client_count());
    app.pools.warm(tenant, clients.max(1), WARM_WITHIN).await
}

async fn drain_or_abort(
    app: &App,
    tenant: &TenantName,
    to: &str,
    abort: &mut watch::Receiver<bool>,
) -> Result<usize, String> {
    super::drain::pause_and_drain(app, tenant, to, abort.clone()).await
}

/// Points the tenant at `to` in the registry and its pools at the new host, before
/// any waiting client goes on.
async fn switch(app: &App, tenant: &TenantName, from: &str, to: &HostName) -> Result<(), String> {
    super::switch::switch(app, tenant, from, to).await?;
    let snapshot = app.registry.snapshot();
    let moved = snapshot
        .tenant(tenant.as_str())
        .ok_or("the tenant is gone from the registry")?;
    let host = snapshot
        .host(to)
        .ok_or("target host gone from the registry")?;
    app.pools.repoint(&moved, &host);
    Ok(())
}
