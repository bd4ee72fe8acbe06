//! Dropping what a copy made: the replication objects (after a move, or when a
//! move fails or is aborted) and a tenant's copy on one side (the partial copy on
//! the target, or the source's with `--drop-source`).

use std::time::Duration;

use super::copy::{ident, sql, Endpoint, Scope};

/// Drops the subscription (target), its slot and the publication (source); each step
/// tolerates what is already gone, so it can be run again after a failure.
pub async fn drop_replication(
    source: &Endpoint,
    target: &Endpoint,
    name: &str,
) -> Result<(), String> {
    let mut problems = Vec::new();
    // Table sync slots are named after the subscription's oid on the target.
    let mut sync_slots = String::from("-");
    match target.connect().await {
        Ok(dst) => {
            let oid = dst
                .query_opt(
                    "SELECT oid::int8 FROM pg_subscription WHERE subname = $1",
                    &[&name],
                )
                .await
                .map_err(sql)?;
            if let Some(oid) = oid {
                sync_slots = format!("pg\\_{}\\_sync\\_%", oid.get::<_, i64>(0));
                // Dropped with its slots on the source; when the source cannot be
                // reached, detached from them first (they are dropped below).
                let drop = format!("DROP SUBSCRIPTION IF EXISTS {}", ident(name));
                if let Err(first) = dst.batch_execute(&drop).await {
                    let detach = format!(
                        "ALTER SUBSCRIPTION {0} DISABLE; ALTER SUBSCRIPTION {0} SET (slot_name = NONE)",
                        ident(name)
                    );
                    let detached = dst.batch_execute(&detach).await;
                    if let Err(e) = detached.and(dst.batch_execute(&drop).await) {
                        problems.push(format!(
                            "dropping the subscription: {} (first try: {})",
                            sql(e),
                            sql(first)
                        ));
                    }
                }
            }
        }
        Err(e) => problems.push(e),
    }
    match source.connect().await {
        Ok(src) => {
            // The slot is busy until its walsender notices the subscription is gone.
            let mut tries = 0;
            loop {
                let dropped = src
                    .query(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE slot_name = $1 OR slot_name LIKE $2",
                        &[&name, &sync_slots],
                    )
                    .await;
                match dropped {
                    Ok(_) => break,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        tracing::debug!(slot = name, "slot still in use: {}", sql(e));
                        let _ = src
                            .query(
                                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                                 WHERE slot_name = $1 AND active_pid IS NOT NULL",
                                &[&name],
                            )
                            .await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        problems.push(format!("dropping replication slot {name}: {}", sql(e)));
                        break;
                    }
                }
            }
            if let Err(e) = src
                .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(name)))
                .await
            {
                problems.push(format!("dropping the publication: {}", sql(e)));
            }
        }
        Err(e) => problems.push(e),
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}

/// Removes the tenant's copy from one side: its schemas, or its whole database.
pub async fn drop_copy(side: &Endpoint, scope: &Scope) -> Result<(), String> {
    match scope {
        Scope::Schemas(schemas) => {
            let client = side.connect().await?;
            let list: Vec<String> = schemas.iter().map(|s| ident(s)).collect();
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    list.join(", ")
                ))
                .await
                .map_err(sql)
        }
        Scope::Database => {
            let client = side.with_database("postgres").connect().await?;
            client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&side.database)
                ))
                .await
                .map_err(sql)
        }
    }
}
