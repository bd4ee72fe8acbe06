//! Which tenant a client means, from its startup message and `proxy.tenant_from`.

use std::sync::Arc;

use crate::config::TenantSource;
use crate::protocol::startup::StartupMessage;
use crate::registry::{Host, Snapshot, Tenant};

/// A resolved client: the tenant, its host, and the client's user name without any
/// tenant suffix.
#[derive(Debug)]
pub struct Resolved {
    pub tenant: Arc<Tenant>,
    pub host: Arc<Host>,
    pub user: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("tenant \"{0}\" does not exist")]
    UnknownTenant(String),
    #[error("no tenant given: connect with the tenant as database name or as user.tenant")]
    NoTenant,
    #[error("tenant \"{tenant}\" names host \"{host}\", which is not in the registry")]
    UnknownHost { tenant: String, host: String },
}

/// The separators of `user_suffix`: `app.acme` and `app@acme`.
fn split_user_suffix(user: &str) -> Option<(&str, &str)> {
    let at = user.rfind(['.', '@'])?;
    let (name, tenant) = (&user[..at], &user[at + 1..]);
    (!name.is_empty() && !tenant.is_empty()).then_some((name, tenant))
}

/// Tries each source in order; the first candidate the registry knows wins. When
/// none is known, the error names the first candidate, the one the client most
/// likely meant.
pub fn resolve(
    snapshot: &Snapshot,
    sources: &[TenantSource],
    startup: &StartupMessage,
) -> Result<Resolved, ResolveError> {
    let user = startup
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or(ResolveError::NoUser)?;
    let mut first_candidate = None;
    for source in sources {
        let (candidate, client_user) = match source {
            TenantSource::Database => match startup.get("database").filter(|d| !d.is_empty()) {
                Some(db) => (db, user),
                None => continue,
            },
            TenantSource::UserSuffix => match split_user_suffix(user) {
                Some((name, tenant)) => (tenant, name),
                None => continue,
            },
            TenantSource::User => (user, user),
            // TLS is not served yet; configuration validation refuses this source.
            TenantSource::Sni => continue,
        };
        first_candidate.get_or_insert(candidate);
        if let Some(tenant) = snapshot.tenant(candidate) {
            let host = snapshot
                .host(&tenant.host)
                .ok_or_else(|| ResolveError::UnknownHost {
                    tenant: candidate.to_string(),
                    host: tenant.host.to_string(),
                })?;
            return Ok(Resolved {
                tenant,
                host,
                user: client_user.to_string(),
            });
        }
    }
    Err(match first_candidate {
        Some(name) => ResolveError::UnknownTenant(name.to_string()),
        None => ResolveError::NoTenant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::file::parse;

    fn snapshot() -> Snapshot {
        parse(
            r#"
            [hosts.a]
            address = "127.0.0.1:5432"
            [tenants.acme]
            host = "a"
            database = "erp"
            [tenants.globex]
            host = "a"
            database = "erp"
            "#,
            "t.toml",
        )
        .unwrap()
    }

    fn startup(pairs: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            minor: 0,
            params: pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            protocol_options: vec![],
        }
    }

    const BOTH: &[TenantSource] = &[TenantSource::Database, TenantSource::UserSuffix];

    #[test]
    fn database_then_user_suffix() {
        let r = resolve(
            &snapshot(),
            BOTH,
            &startup(&[("user", "app"), ("database", "acme")]),
        )
        .unwrap();
        assert_eq!(r.tenant.name.as_str(), "acme");
        assert_eq!(r.user, "app");
        let r = resolve(
            &snapshot(),
            BOTH,
            &startup(&[("user", "app.globex"), ("database", "app.globex")]),
        )
        .unwrap();
        assert_eq!(r.tenant.name.as_str(), "globex");
        assert_eq!(r.user, "app");
        let r = resolve(&snapshot(), BOTH, &startup(&[("user", "app@acme")])).unwrap();
        assert_eq!(r.tenant.name.as_str(), "acme");
    }

    #[test]
    fn user_source() {
        let r = resolve(
            &snapshot(),
            &[TenantSource::User],
            &startup(&[("user", "acme")]),
        )
        .unwrap();
        assert_eq!(r.tenant.name.as_str(), "acme");
    }

    #[test]
    fn unknown_names_first_candidate() {
        let err = resolve(
            &snapshot(),
            BOTH,
            &startup(&[("user", "app.nope"), ("database", "zzz")]),
        )
        .unwrap_err();
        assert_eq!(err, ResolveError::UnknownTenant("zzz".into()));
        let err = resolve(
            &snapshot(),
            &[TenantSource::UserSuffix],
            &startup(&[("user", "app")]),
        )
        .unwrap_err();
        assert_eq!(err, ResolveError::NoTenant);
        let err = resolve(&snapshot(), BOTH, &startup(&[("database", "acme")])).unwrap_err();
        assert_eq!(err, ResolveError::NoUser);
    }
}
