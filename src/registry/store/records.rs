//! Hosts, tenants and users as the CLI prints them and the HTTP API sends and takes
//! them (JSON). Passwords go in, never out: output says only whether one is set.

use serde::{Deserialize, Serialize};

use crate::config::PoolMode;
use crate::registry::validate::{RawHost, RawTenant, RawUser};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    pub name: String,
    pub host: String,
    pub database: String,
    #[serde(default)]
    pub search_path: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_user: Option<String>,
    /// Taken on input; output shows `backend_password_set` instead.
    #[serde(default, skip_serializing)]
    pub backend_password: Option<String>,
    #[serde(default, skip_deserializing)]
    pub backend_password_set: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<PoolMode>,
}

impl TenantRecord {
    pub(crate) fn from_raw(name: &str, t: &RawTenant) -> TenantRecord {
        TenantRecord {
            name: name.into(),
            host: t.host.clone(),
            database: t.database.clone(),
            search_path: t.search_path.clone(),
            backend_user: t.backend_user.clone(),
            backend_password: None,
            backend_password_set: t.backend_password.is_some(),
            pool_size: t.pool_size,
            pool_mode: t.pool_mode,
        }
    }

    pub(crate) fn to_raw(&self) -> RawTenant {
        RawTenant {
            host: self.host.clone(),
            database: self.database.clone(),
            search_path: self.search_path.clone(),
            backend_user: self.backend_user.clone(),
            backend_password: self.backend_password.clone(),
            pool_size: self.pool_size,
            min_idle: None,
            pool_mode: self.pool_mode,
            share: None,
        }
    }
}

/// The fields `tenant update` changes; those left out stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantUpdate {
    pub host: Option<String>,
    pub database: Option<String>,
    pub search_path: Option<Vec<String>>,
    pub backend_user: Option<String>,
    pub backend_password: Option<String>,
    pub pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
}

impl TenantUpdate {
    pub fn is_empty(&self) -> bool {
        *self == TenantUpdate::default()
    }

    pub(crate) fn apply_raw(&self, t: &mut RawTenant) {
        if let Some(host) = &self.host {
            t.host = host.clone();
        }
        if let Some(database) = &self.database {
            t.database = database.clone();
        }
        if let Some(path) = &self.search_path {
            t.search_path = path.clone();
        }
        if let Some(user) = &self.backend_user {
            t.backend_user = Some(user.clone());
        }
        if let Some(password) = &self.backend_password {
            t.backend_password = Some(password.clone());
        }
        if let Some(size) = self.pool_size {
            t.pool_size = Some(size);
        }
        if let Some(mode) = self.pool_mode {
            t.pool_mode = Some(mode);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    pub name: String,
    pub address: String,
    pub max_connections: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_user: Option<String>,
    #[serde(default, skip_serializing)]
    pub admin_password: Option<String>,
    #[serde(default, skip_deserializing)]
    pub admin_password_set: bool,
}

impl HostRecord {
    pub(crate) fn from_raw(name: &str, h: &RawHost) -> HostRecord {
        HostRecord {
            name: name.into(),
            address: h.address.clone(),
            max_connections: h.max_connections.unwrap_or(100),
            admin_user: h.admin_user.clone(),
            admin_password: None,
            admin_password_set: h.admin_password.is_some(),
        }
    }

    pub(crate) fn to_raw(&self) -> RawHost {
        RawHost {
            address: self.address.clone(),
            max_connections: Some(self.max_connections),
            admin_user: self.admin_user.clone(),
            admin_password: self.admin_password.clone(),
            ..RawHost::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    pub name: String,
    #[serde(default)]
    pub tenants: Vec<String>,
    /// On input: the password (the API turns it into a verifier); never output.
    #[serde(default, skip_serializing)]
    pub password: String,
}

impl UserRecord {
    pub(crate) fn from_raw(name: &str, u: &RawUser) -> UserRecord {
        UserRecord {
            name: name.into(),
            tenants: u.tenants.clone(),
            password: String::new(),
        }
    }

    pub(crate) fn to_raw(&self) -> RawUser {
        RawUser {
            password: self.password.clone(),
            tenants: self.tenants.clone(),
        }
    }
}
