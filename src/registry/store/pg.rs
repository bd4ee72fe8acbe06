//! Changes to the registry database: the registry is read and checked as it would be
//! after the change, then the change is written in one transaction. The triggers
//! notify every instance, which reads the registry again.

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::{apply_raw, Change, StoreError};
use crate::registry::migrate;
use crate::registry::rows::{self, ReadError};
use crate::registry::validate::{validate, RawFile};
use crate::secret::Secrets;

pub struct PgStore {
    url: String,
    tenants_query: Option<String>,
    secrets: Secrets,
}

impl From<ReadError> for StoreError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Db(e) => e.into(),
            ReadError::Values(_) => StoreError::Invalid(e.to_string()),
        }
    }
}

impl PgStore {
    pub fn new(url: String, tenants_query: Option<String>, secrets: Secrets) -> PgStore {
        PgStore {
            url,
            tenants_query,
            secrets,
        }
    }

    async fn client(&self) -> Result<Client, StoreError> {
        Ok(migrate::connect(&self.url).await?)
    }

    pub(crate) async fn raw(&self) -> Result<RawFile, StoreError> {
        let client = self.client().await?;
        Ok(rows::read(&client, self.tenants_query.as_deref()).await?)
    }

    pub async fn apply(&self, change: &Change) -> Result<(), StoreError> {
        let tenant_change = matches!(
            change,
            Change::AddTenant(_) | Change::UpdateTenant(..) | Change::RemoveTenant(_)
        );
        if tenant_change && self.tenants_query.is_some() {
            return Err(StoreError::Invalid(
                "tenants come from registry.tenants_query: change them in the application's table"
                    .into(),
            ));
        }
        let mut client = self.client().await?;
        let mut raw = rows::read(&client, self.tenants_query.as_deref()).await?;
        apply_raw(&mut raw, change)?;
        let secrets = self.secrets.clone();
        tokio::task::spawn_blocking(move || validate(raw, rows::SOURCE, &secrets))
            .await
            .map_err(|e| StoreError::Unavailable(format!("validation failed: {e}")))?
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let tx = client.transaction().await?;
        let changed = write(&tx, change).await.map_err(|e| match e.code() {
            Some(code) if code.code().starts_with("23") => StoreError::Invalid(
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_string()),
            ),
            _ => e.into(),
        })?;
        if changed == 0 {
            // Someone else removed it between the read and the write.
            return Err(StoreError::Invalid(
                "the registry changed meanwhile; try again".into(),
            ));
        }
        tx.commit().await?;
        Ok(())
    }
}

fn opt_i32(n: Option<usize>) -> Option<i32> {
    n.map(|n| n.min(i32::MAX as usize) as i32)
}

fn pool_mode(m: Option<crate::config::PoolMode>) -> Option<&'static str> {
    m.map(|m| match m {
        crate::config::PoolMode::Session => "session",
        crate::config::PoolMode::Transaction => "transaction",
    })
}

async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    change: &Change,
) -> Result<u64, tokio_postgres::Error> {
    let (size, mode, max): (Option<i32>, Option<&str>, Option<i32>);
    let (sql, params): (&str, Vec<&(dyn ToSql + Sync)>) = match change {
        Change::AddTenant(t) => {
            (size, mode) = (opt_i32(t.pool_size), pool_mode(t.pool_mode));
            (
                "INSERT INTO pgtenant.tenants (name, host, database, search_path, backend_user, \
                 backend_password, pool_size, pool_mode) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                vec![
                    &t.name,
                    &t.host,
                    &t.database,
                    &t.search_path,
                    &t.backend_user,
                    &t.backend_password,
                    &size,
                    &mode,
                ],
            )
        }
        Change::UpdateTenant(name, u) => {
            (size, mode) = (opt_i32(u.pool_size), pool_mode(u.pool_mode));
            (
                "UPDATE pgtenant.tenants SET host = coalesce($2, host), \
                 database = coalesce($3, database), search_path = coalesce($4, search_path), \
                 backend_user = coalesce($5, backend_user), \
                 backend_password = coalesce($6, backend_password), \
                 pool_size = coalesce($7, pool_size), pool_mode = coalesce($8, pool_mode), \
                 updated_at = now() WHERE name = $1",
                vec![
                    name,
                    &u.host,
                    &u.database,
                    &u.search_path,
                    &u.backend_user,
                    &u.backend_password,
                    &size,
                    &mode,
                ],
            )
        }
        Change::RemoveTenant(name) => ("DELETE FROM pgtenant.tenants WHERE name = $1", vec![name]),
        Change::AddHost(h) => {
            max = opt_i32(Some(h.max_connections));
            (
                "INSERT INTO pgtenant.hosts (name, address, max_connections, admin_user, \
                 admin_password) VALUES ($1, $2, $3, $4, $5)",
                vec![&h.name, &h.address, &max, &h.admin_user, &h.admin_password],
            )
        }
        Change::RemoveHost(name) => ("DELETE FROM pgtenant.hosts WHERE name = $1", vec![name]),
        Change::PutUser(u) => (
            "INSERT INTO pgtenant.users (name, password, tenants) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET password = excluded.password, \
                 tenants = excluded.tenants",
            vec![&u.name, &u.password, &u.tenants],
        ),
        Change::RemoveUser(name) => ("DELETE FROM pgtenant.users WHERE name = $1", vec![name]),
    };
    tx.execute(sql, &params).await
}
