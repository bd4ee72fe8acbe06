//! The registry as any source reads it (`Raw*`, shaped like the TOML file) and its
//! validation into a `Snapshot`: the file and the PostgreSQL source share both, so a
//! registry means the same whichever source holds it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::file::RegistryFileError;
use super::{
    Host, HostName, Snapshot, Tenant, TenantName, User, RESERVED_DATABASES, TEMPLATE_KEY,
    TENANT_PLACEHOLDER,
};
use crate::auth::Verifier;
use crate::config::{PoolMode, Problem};
use crate::secret::{Secret, Secrets};
use crate::tls::client::{BackendTls, BackendTlsMode};

const DEFAULT_MAX_CONNECTIONS: usize = 100;

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    #[serde(default)]
    pub(crate) hosts: BTreeMap<String, RawHost>,
    #[serde(default)]
    pub(crate) tenants: BTreeMap<String, RawTenant>,
    #[serde(default)]
    pub(crate) users: BTreeMap<String, RawUser>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHost {
    pub(crate) address: String,
    pub(crate) max_connections: Option<usize>,
    #[serde(default)]
    pub(crate) tls: BackendTlsMode,
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// The name to send as SNI and to check with verify-full, when the address is
    /// not that name.
    pub(crate) tls_server_name: Option<String>,
    pub(crate) auth_user: Option<String>,
    pub(crate) auth_password: Option<String>,
    /// The role for tenant moves (replication); default postgres.
    pub(crate) admin_user: Option<String>,
    pub(crate) admin_password: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUser {
    pub(crate) password: String,
    pub(crate) tenants: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenant {
    pub(crate) host: String,
    pub(crate) database: String,
    #[serde(default)]
    pub(crate) search_path: Vec<String>,
    pub(crate) backend_user: Option<String>,
    pub(crate) backend_password: Option<String>,
    pub(crate) pool_size: Option<usize>,
    pub(crate) min_idle: Option<usize>,
    pub(crate) pool_mode: Option<PoolMode>,
    pub(crate) share: Option<bool>,
}

/// Validates a registry read from any source; `file` names the source in messages.
pub(crate) fn validate(
    raw: RawFile,
    file: &str,
    secrets: &Secrets,
) -> Result<Snapshot, RegistryFileError> {
    let mut problems = Vec::new();
    let mut problem = |key: String, message: String| {
        problems.push(Problem {
            file: file.to_string(),
            key,
            message,
        })
    };

    let mut hosts = Vec::new();
    for (name, raw_host) in &raw.hosts {
        let key = format!("hosts.{name}");
        if !valid_address(&raw_host.address) {
            problem(
                format!("{key}.address"),
                format!(
                    "\"{}\" is not host:port (such as \"127.0.0.1:5432\" or \"db.example.com:5432\")",
                    raw_host.address
                ),
            );
        }
        let max_connections = raw_host.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            problem(
                format!("{key}.max_connections"),
                "must be at least 1".into(),
            );
        }
        let needs_ca = matches!(
            raw_host.tls,
            BackendTlsMode::VerifyCa | BackendTlsMode::VerifyFull
        );
        if needs_ca && raw_host.tls_ca_file.is_none() {
            problem(
                format!("{key}.tls_ca_file"),
                "verify-ca and verify-full need the CA certificate file".into(),
            );
        }
        let auth_password = raw_host.auth_password.as_deref().map(|value| {
            secrets.reveal(value).unwrap_or_else(|e| {
                problem(format!("{key}.auth_password"), e.to_string());
                Secret::new("")
            })
        });
        let admin_password = raw_host.admin_password.as_deref().map(|value| {
            secrets.reveal(value).unwrap_or_else(|e| {
                problem(format!("{key}.admin_password"), e.to_string());
                Secret::new("")
            })
        });
        let host_part = raw_host.address.rsplit_once(':').map_or("", |(h, _)| h);
        let server_name = raw_host.tls_server_name.clone().unwrap_or_else(|| {
            host_part
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
        hosts.push(Host {
            name: HostName::new(name),
            address: raw_host.address.clone(),
            max_connections,
            tls: BackendTls {
                mode: raw_host.tls,
                ca_file: raw_host.tls_ca_file.clone(),
                server_name,
            },
            auth_user: raw_host.auth_user.clone(),
            auth_password,
            admin_user: raw_host.admin_user.clone(),
            admin_password,
        });
    }

    let mut tenants = Vec::new();
    let mut template = None;
    let tenant_names: Vec<String> = raw.tenants.keys().cloned().collect();
    for (name, raw_tenant) in raw.tenants {
        let key = format!("tenants.\"{name}\"");
        if !raw.hosts.contains_key(&raw_tenant.host) {
            problem(
                format!("{key}.host"),
                format!("unknown host \"{}\"", raw_tenant.host),
            );
        }
        if raw_tenant.database.is_empty() {
            problem(format!("{key}.database"), "must not be empty".into());
        }
        if raw_tenant.search_path.iter().any(|s| s.is_empty()) {
            problem(
                format!("{key}.search_path"),
                "holds an empty schema name".into(),
            );
        }
        if raw_tenant.pool_size == Some(0) {
            problem(format!("{key}.pool_size"), "must be at least 1".into());
        }
        if let (Some(min_idle), Some(size)) = (raw_tenant.min_idle, raw_tenant.pool_size) {
            if min_idle > size {
                problem(
                    format!("{key}.min_idle"),
                    format!("{min_idle} exceeds pool_size {size}"),
                );
            }
        }
        if raw_tenant.backend_user.as_deref() == Some("") {
            problem(format!("{key}.backend_user"), "must not be empty".into());
        }
        let filled = [("database", Some(&raw_tenant.database))]
            .into_iter()
            .chain(
                raw_tenant
                    .search_path
                    .iter()
                    .map(|s| ("search_path", Some(s))),
            )
            .chain([("backend_user", raw_tenant.backend_user.as_ref())]);
        for (field, value) in filled {
            if let Some(message) = value.and_then(|v| placeholder_problem(v, name == TEMPLATE_KEY))
            {
                problem(format!("{key}.{field}"), message);
            }
        }
        if name == TEMPLATE_KEY {
            // A template serves names it has never seen: it must not let a client pick
            // the role, nor lead to a maintenance database.
            if raw_tenant.backend_user.is_none() {
                problem(
                    format!("{key}.backend_user"),
                    "the template entry must name the role it logs in as".into(),
                );
            }
            if RESERVED_DATABASES.contains(&raw_tenant.database.as_str()) {
                problem(
                    format!("{key}.database"),
                    format!(
                        "the template entry may not serve database \"{}\"",
                        raw_tenant.database
                    ),
                );
            }
        }
        let backend_password = raw_tenant.backend_password.as_deref().map(|value| {
            secrets.reveal(value).unwrap_or_else(|e| {
                problem(format!("{key}.backend_password"), e.to_string());
                Secret::new("")
            })
        });
        let tenant = Tenant {
            name: TenantName::new(&name),
            host: HostName::new(&raw_tenant.host),
            database: raw_tenant.database,
            search_path: raw_tenant.search_path,
            backend_user: raw_tenant.backend_user,
            backend_password,
            pool_size: raw_tenant.pool_size,
            min_idle: raw_tenant.min_idle,
            pool_mode: raw_tenant.pool_mode,
            share: raw_tenant.share,
        };
        if name == TEMPLATE_KEY {
            template = Some(tenant);
        } else {
            tenants.push(tenant);
        }
    }

    let mut users = Vec::new();
    for (name, raw_user) in raw.users {
        let key = format!("users.\"{name}\"");
        let password = match secrets.reveal(&raw_user.password) {
            Ok(text) => text.expose().parse::<Verifier>().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let password = match password {
            Ok(verifier) => verifier,
            Err(message) => {
                problem(format!("{key}.password"), message);
                continue;
            }
        };
        for tenant in &raw_user.tenants {
            if tenant != TEMPLATE_KEY && !tenant_names.contains(tenant) && template.is_none() {
                problem(
                    format!("{key}.tenants"),
                    format!("unknown tenant \"{tenant}\""),
                );
            }
        }
        users.push(User {
            name,
            password,
            tenants: raw_user.tenants,
        });
    }

    if problems.is_empty() {
        Ok(Snapshot::new(hosts, tenants, template).with_users(users))
    } else {
        Err(RegistryFileError::Invalid { problems })
    }
}

/// `host:port`: a host name, an IPv4 address or a bracketed IPv6 address, and a port.
/// A URL (`postgres://…`) is not an address.
pub(crate) fn valid_address(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// `{tenant}` is the one placeholder, and only the template entry fills it in.
fn placeholder_problem(value: &str, template: bool) -> Option<String> {
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        let end = after.find('}').map_or(after.len(), |i| i + 1);
        let placeholder = &after[..end];
        if placeholder != TENANT_PLACEHOLDER {
            return Some(format!(
                "unknown placeholder \"{placeholder}\" in \"{value}\"; the only placeholder is {TENANT_PLACEHOLDER}"
            ));
        }
        if !template {
            return Some(format!(
                "{TENANT_PLACEHOLDER} is filled in only in the template entry [tenants.\"*\"]"
            ));
        }
        rest = &after[end..];
    }
    None
}
