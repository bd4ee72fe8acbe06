//! Reading and changing the registry where it lives: the file (`registry.file`) or
//! the registry database (`registry.url`). The CLI (`pgtenant tenant|host|user …`)
//! and the HTTP API both go through `Store`, as does anything else that changes a
//! tenant (`set_tenant_host` switches a tenant to another host).
//!
//! Every change is checked against the whole registry as it would be after it (the
//! validation `serve` applies), so a change the proxy would refuse is refused here.

mod file;
mod pg;
mod records;

use std::path::PathBuf;

pub use records::{HostRecord, TenantRecord, TenantUpdate, UserRecord};

use super::validate::RawFile;
use crate::config::Settings;
use crate::secret::Secrets;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no {kind} \"{name}\" in the registry")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} \"{name}\" is already in the registry")]
    Exists { kind: &'static str, name: String },
    /// The change would make the registry invalid, or names something that is not there.
    #[error("{0}")]
    Invalid(String),
    /// The registry cannot be read or written.
    #[error("{0}")]
    Unavailable(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Unavailable(format!(
            "registry database: {}",
            crate::registry::rows::error_text(&e)
        ))
    }
}

/// One change to the registry.
#[derive(Debug, Clone)]
pub enum Change {
    AddTenant(TenantRecord),
    UpdateTenant(String, TenantUpdate),
    RemoveTenant(String),
    AddHost(HostRecord),
    RemoveHost(String),
    /// Adds or replaces a user (its password already a verifier).
    PutUser(UserRecord),
    RemoveUser(String),
}

/// Where the registry lives.
pub enum Store {
    File(file::FileStore),
    Pg(pg::PgStore),
}

impl Store {
    /// The store the settings name.
    pub fn open(settings: &Settings) -> Result<Store, StoreError> {
        let secrets = Secrets::from_settings(&settings.secrets)
            .map_err(|e| StoreError::Unavailable(format!("secrets: {e}")))?;
        match (&settings.registry.file, &settings.registry.url) {
            (Some(path), _) => Ok(Store::File(file::FileStore::new(path.clone(), secrets))),
            (None, Some(url)) => Ok(Store::Pg(pg::PgStore::new(
                url.clone(),
                settings.registry.tenants_query.clone(),
                secrets,
            ))),
            (None, None) => Err(StoreError::Unavailable(
                "no registry configured (registry.file or registry.url)".into(),
            )),
        }
    }

    /// A store on a registry file.
    pub fn file(path: PathBuf, secrets: Secrets) -> Store {
        Store::File(file::FileStore::new(path, secrets))
    }

    /// Where changes go, for messages: the file's path or "the registry database".
    pub fn describe(&self) -> String {
        match self {
            Store::File(f) => f.path().display().to_string(),
            Store::Pg(_) => "the registry database".into(),
        }
    }

    async fn raw(&self) -> Result<RawFile, StoreError> {
        match self {
            Store::File(f) => f.raw(),
            Store::Pg(p) => p.raw().await,
        }
    }

    /// Applies a change, after checking the registry it leads to.
    pub async fn apply(&self, change: Change) -> Result<(), StoreError> {
        match self {
            Store::File(f) => f.apply(&change),
            Store::Pg(p) => p.apply(&change).await,
        }
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let raw = self.raw().await?;
        Ok(raw
            .tenants
            .iter()
            .map(|(name, t)| TenantRecord::from_raw(name, t))
            .collect())
    }

    pub async fn tenant(&self, name: &str) -> Result<TenantRecord, StoreError> {
        let raw = self.raw().await?;
        raw.tenants
            .get(name)
            .map(|t| TenantRecord::from_raw(name, t))
            .ok_or_else(|| not_found("tenant", name))
    }

    pub async fn add_tenant(&self, tenant: TenantRecord) -> Result<(), StoreError> {
        self.apply(Change::AddTenant(tenant)).await
    }

    /// Changes the given fields of a tenant; the tenant as it is now.
    pub async fn update_tenant(
        &self,
        name: &str,
        update: TenantUpdate,
    ) -> Result<TenantRecord, StoreError> {
        self.apply(Change::UpdateTenant(name.into(), update))
            .await?;
        self.tenant(name).await
    }

    /// Serves a tenant from another host (same database and schemas there).
    pub async fn set_tenant_host(
        &self,
        name: &str,
        host: &str,
    ) -> Result<TenantRecord, StoreError> {
        let update = TenantUpdate {
            host: Some(host.into()),
            ..TenantUpdate::default()
        };
        self.update_tenant(name, update).await
    }

    pub async fn remove_tenant(&self, name: &str) -> Result<(), StoreError> {
        self.apply(Change::RemoveTenant(name.into())).await
    }

    pub async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let raw = self.raw().await?;
        Ok(raw
            .hosts
            .iter()
            .map(|(name, h)| HostRecord::from_raw(name, h))
            .collect())
    }

    pub async fn host(&self, name: &str) -> Result<HostRecord, StoreError> {
        let raw = self.raw().await?;
        raw.hosts
            .get(name)
            .map(|h| HostRecord::from_raw(name, h))
            .ok_or_else(|| not_found("host", name))
    }

    pub async fn add_host(&self, host: HostRecord) -> Result<(), StoreError> {
        self.apply(Change::AddHost(host)).await
    }

    pub async fn remove_host(&self, name: &str) -> Result<(), StoreError> {
        self.apply(Change::RemoveHost(name.into())).await
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let raw = self.raw().await?;
        Ok(raw
            .users
            .iter()
            .map(|(name, u)| UserRecord::from_raw(name, u))
            .collect())
    }

    /// Adds or replaces a user; `user.password` is a verifier.
    pub async fn put_user(&self, user: UserRecord) -> Result<(), StoreError> {
        self.apply(Change::PutUser(user)).await
    }

    pub async fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        self.apply(Change::RemoveUser(name.into())).await
    }
}

fn not_found(kind: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        name: name.into(),
    }
}

/// The change applied to the registry as read: what either store checks before it
/// writes. Names what is missing or already there.
fn apply_raw(raw: &mut RawFile, change: &Change) -> Result<(), StoreError> {
    let exists = |kind, name: &str| StoreError::Exists {
        kind,
        name: name.into(),
    };
    match change {
        Change::AddTenant(t) => {
            if raw.tenants.contains_key(&t.name) {
                return Err(exists("tenant", &t.name));
            }
            raw.tenants.insert(t.name.clone(), t.to_raw());
        }
        Change::UpdateTenant(name, update) => {
            let tenant = raw
                .tenants
                .get_mut(name)
                .ok_or_else(|| not_found("tenant", name))?;
            update.apply_raw(tenant);
        }
        Change::RemoveTenant(name) => {
            raw.tenants
                .remove(name)
                .ok_or_else(|| not_found("tenant", name))?;
        }
        Change::AddHost(h) => {
            if raw.hosts.contains_key(&h.name) {
                return Err(exists("host", &h.name));
            }
            raw.hosts.insert(h.name.clone(), h.to_raw());
        }
        Change::RemoveHost(name) => {
            raw.hosts
                .remove(name)
                .ok_or_else(|| not_found("host", name))?;
            let users: Vec<&str> = raw
                .tenants
                .iter()
                .filter(|(_, t)| &t.host == name)
                .map(|(n, _)| n.as_str())
                .collect();
            if !users.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "host \"{name}\" still serves tenant(s) {}; move or remove them first",
                    users.join(", ")
                )));
            }
        }
        Change::PutUser(u) => {
            raw.users.insert(u.name.clone(), u.to_raw());
        }
        Change::RemoveUser(name) => {
            raw.users
                .remove(name)
                .ok_or_else(|| not_found("user", name))?;
        }
    }
    Ok(())
}
