//! Moves recorded in the registry database (`pgtenant.moves`, migration 4): one row
//! per tenant, its latest move, written by the instance running it at every phase
//! change (with the tenant's `state` in the same transaction) and as the copy
//! progresses. Any instance reads it: `SHOW MOVES`, `GET /api/moves`, and the abort
//! or resume of a move whose instance is gone.

use std::time::Duration;

use tokio_postgres::Client;

use super::phase::Replication;
use super::{MoveRecord, Phase};

/// A recorded move, and whether the instance that runs it is alive.
#[derive(Debug, Clone)]
pub struct Found {
    pub record: MoveRecord,
    /// The instance named in the record still heartbeats (and the move has not
    /// ended): it is that instance's to abort or finish.
    pub owner_alive: bool,
}

fn to_i64(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// Writes `record`; with `phase_changed`, the tenant's `state` too, in one
/// transaction.
pub async fn save(
    client: &mut Client,
    record: &MoveRecord,
    phase_changed: bool,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let r = record.replication.as_ref();
    let (name, database) = (r.map(|r| &r.name), r.map(|r| &r.database));
    let target_made = r.is_some_and(|r| r.target_made);
    let numbers = [
        to_i64(record.rows_done),
        to_i64(record.rows_total),
        to_i64(record.bytes_done),
        to_i64(record.bytes_total),
    ];
    let paused = record.paused_ms.map(to_i64);
    let started = record.started_at as f64;
    tx.execute(
        "INSERT INTO pgtenant.moves (tenant, id, from_host, to_host, copy, drop_source, phase, \
         finished, instance, replication_name, replication_database, target_made, message, \
         rows_done, rows_total, bytes_done, bytes_total, paused_ms, started_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         to_timestamp($19::float8), now()) \
         ON CONFLICT (tenant) DO UPDATE SET id = excluded.id, from_host = excluded.from_host, \
         to_host = excluded.to_host, copy = excluded.copy, drop_source = excluded.drop_source, \
         phase = excluded.phase, finished = excluded.finished, instance = excluded.instance, \
         replication_name = excluded.replication_name, \
         replication_database = excluded.replication_database, \
         target_made = excluded.target_made, message = excluded.message, \
         rows_done = excluded.rows_done, rows_total = excluded.rows_total, \
         bytes_done = excluded.bytes_done, bytes_total = excluded.bytes_total, \
         paused_ms = excluded.paused_ms, started_at = excluded.started_at, updated_at = now()",
        &[
            &record.tenant,
            &record.id,
            &record.from,
            &record.to,
            &record.copy,
            &record.drop_source,
            &record.phase.as_str(),
            &record.finished,
            &record.instance,
            &name,
            &database,
            &target_made,
            &record.message,
            &numbers[0],
            &numbers[1],
            &numbers[2],
            &numbers[3],
            &paused,
            &started,
        ],
    )
    .await?;
    if phase_changed {
        tx.execute(
            "UPDATE pgtenant.tenants SET state = $2 WHERE name = $1",
            &[&record.tenant, &record.phase.tenant_state().as_str()],
        )
        .await?;
    }
    tx.commit().await
}

const SELECT: &str = "SELECT m.tenant, m.id, m.from_host, m.to_host, m.copy, m.drop_source, \
     m.phase, m.finished, m.instance, m.replication_name, m.replication_database, \
     m.target_made, m.message, m.rows_done, m.rows_total, m.bytes_done, m.bytes_total, \
     m.paused_ms, extract(epoch FROM m.started_at)::int8, extract(epoch FROM m.updated_at)::int8, \
     NOT m.finished AND EXISTS (SELECT 1 FROM pgtenant.instances i WHERE i.id = m.instance \
       AND i.heartbeat > now() - make_interval(secs => $1)) \
     FROM pgtenant.moves m";

/// Every recorded move; an instance whose heartbeat is older than `stale` is gone.
pub async fn all(client: &Client, stale: Duration) -> Result<Vec<Found>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!("{SELECT} ORDER BY m.tenant"),
            &[&stale.as_secs_f64()],
        )
        .await?;
    Ok(rows.iter().map(found).collect())
}

/// The recorded move of `tenant`, if any.
pub async fn one(
    client: &Client,
    tenant: &str,
    stale: Duration,
) -> Result<Option<Found>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!("{SELECT} WHERE m.tenant = $2"),
            &[&stale.as_secs_f64(), &tenant],
        )
        .await?;
    Ok(row.as_ref().map(found))
}

fn found(row: &tokio_postgres::Row) -> Found {
    let number = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    let replication = row.get::<_, Option<String>>(9).map(|name| Replication {
        name,
        database: row.get::<_, Option<String>>(10).unwrap_or_default(),
        target_made: row.get(11),
    });
    let phase: String = row.get(6);
    Found {
        record: MoveRecord {
            tenant: row.get(0),
            id: row.get(1),
            from: row.get(2),
            to: row.get(3),
            copy: row.get(4),
            drop_source: row.get(5),
            // The table's CHECK allows only known phases.
            phase: Phase::parse(&phase).unwrap_or(Phase::Failed),
            finished: row.get(7),
            instance: row.get(8),
            message: row.get(12),
            rows_done: number(13),
            rows_total: number(14),
            bytes_done: number(15),
            bytes_total: number(16),
            paused_ms: row.get::<_, Option<i64>>(17).map(|n| n.max(0) as u64),
            started_at: number(18),
            updated_at: number(19),
            replication,
        },
        owner_alive: row.get(20),
    }
}
