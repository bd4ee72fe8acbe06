//! `pgtenant registry init`: the `pgtenant` schema, by numbered migrations recorded in
//! `pgtenant.schema_version`. Running it again applies only what is new, so it is safe
//! to run at every deploy; concurrent runs wait for each other (an advisory lock).

use tokio_postgres::{Client, NoTls};

/// The migrations, in order: (version, name, SQL). Append; never edit a released one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "registry", include_str!("migrations/001_registry.sql")),
    (
        2,
        "instance slots",
        include_str!("migrations/002_instance_slots.sql"),
    ),
    (
        3,
        "tenant client limit",
        include_str!("migrations/003_tenant_client_limit.sql"),
    ),
    (4, "moves", include_str!("migrations/004_moves.sql")),
];

/// Connects to `url` with the registry's client settings (no TLS).
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Applies the migrations not yet applied; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Taken for the transaction: a second `init` waits, then finds nothing to do.
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('pgtenant.migrate'));
         CREATE SCHEMA IF NOT EXISTS pgtenant;
         CREATE TABLE IF NOT EXISTS pgtenant.schema_version (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pgtenant.schema_version",
            &[],
        )
        .await?;
    let current: i32 = row.get(0);
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO pgtenant.schema_version (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// The newest version this build knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _, _)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_from_one() {
        for (i, (version, _, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1);
            assert!(!sql.trim().is_empty());
        }
    }
}
