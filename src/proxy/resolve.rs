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

/// The tenant named by a TLS server name: `acme.db.example.com` with suffix
/// `.db.example.com` is `acme` (compared without regard to case, as DNS names are).
pub fn sni_tenant<'a>(server_name: Option<&'a str>, suffix: Option<&str>) -> Option<&'a str> {
    let (name, suffix) = (server_name?, suffix?);
    let cut = name.len().checked_sub(suffix.len())?;
    let (tenant, tail) = (name.get(..cut)?, name.get(cut..)?);
    (tail.eq_ignore_ascii_case(suffix) && !tenant.is_empty() && !tenant.contains('.'))
        .then_some(tenant)
}

/// Setting names that carry the tenant in the startup `options`.
const OPTION_NAMES: &[&str] = &["tenant", "pgtenant.tenant"];

/// Takes the tenant out of the startup `options` (`--tenant=acme`, `-c tenant=acme`,
/// `-c pgtenant.tenant=acme`) so the server never sees it; the rest of the options
/// are kept as the client wrote them.
pub fn take_options_tenant(startup: &mut StartupMessage) -> Option<String> {
    let (_, options) = startup.params.iter_mut().find(|(k, _)| k == "options")?;
    let words = crate::protocol::startup::split_options(options);
    let mut tenant = None;
    let mut kept: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let (item, used) = match words[i].as_str() {
            "-c" => (words.get(i + 1).map(String::as_str), 2),
            word => match word.strip_prefix("-c").or_else(|| word.strip_prefix("--")) {
                Some(item) => (Some(item), 1),
                None => (None, 1),
            },
        };
        let named = item
            .and_then(|item| item.split_once('='))
            .filter(|(name, _)| OPTION_NAMES.contains(&name.replace('-', "_").as_str()));
        match named {
            Some((_, value)) => tenant = Some(value.to_string()),
            None => kept.extend(
                words[i..(i + used).min(words.len())]
                    .iter()
                    .map(String::as_str),
            ),
        }
        i += used;
    }
    if tenant.is_some() {
        *options = kept
            .iter()
            .map(|w| w.replace('\\', "\\\\").replace(' ', "\\ "))
            .collect::<Vec<_>>()
            .join(" ");
    }
    tenant
}

/// `resolve_client` without TLS and without touching the startup message.
pub fn resolve(
    snapshot: &Snapshot,
    sources: &[TenantSource],
    startup: &StartupMessage,
) -> Result<Resolved, ResolveError> {
    resolve_client(snapshot, sources, &mut startup.clone(), None)
}

/// Tries each source in order; the first candidate the registry knows wins. When
/// none is known, the error names the first candidate, the one the client most
/// likely meant. `sni` is the tenant named by the TLS server name (`sni_tenant`).
/// With the `options` source, the tenant item is removed from the startup options.
pub fn resolve_client(
    snapshot: &Snapshot,
    sources: &[TenantSource],
    startup: &mut StartupMessage,
    sni: Option<&str>,
) -> Result<Resolved, ResolveError> {
    let from_options = match sources.contains(&TenantSource::Options) {
        true => take_options_tenant(startup),
        false => None,
    };
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
            TenantSource::Sni => match sni {
                Some(name) => (name, user),
                None => continue,
            },
            TenantSource::Options => match &from_options {
                Some(name) => (name.as_str(), user),
                None => continue,
            },
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
    fn sni_names_the_tenant_by_suffix() {
        let suffix = Some(".db.example.com");
        assert_eq!(
            sni_tenant(Some("acme.db.example.com"), suffix),
            Some("acme")
        );
        assert_eq!(
            sni_tenant(Some("ACME.DB.Example.com"), suffix),
            Some("ACME")
        );
        assert_eq!(sni_tenant(Some("a.b.db.example.com"), suffix), None);
        assert_eq!(sni_tenant(Some(".db.example.com"), suffix), None);
        assert_eq!(sni_tenant(Some("acme.other.com"), suffix), None);
        assert_eq!(sni_tenant(None, suffix), None);
        let mut msg = startup(&[("user", "app"), ("database", "postgres")]);
        let r =
            resolve_client(&snapshot(), &[TenantSource::Sni], &mut msg, Some("globex")).unwrap();
        assert_eq!(r.tenant.name.as_str(), "globex");
    }

    #[test]
    fn options_name_the_tenant_and_lose_it() {
        for (options, rest) in [
            ("--tenant=acme", ""),
            ("-c pgtenant.tenant=acme -c work_mem=8MB", "-c work_mem=8MB"),
            (
                "-cstatement_timeout=5s --pgtenant.tenant=acme",
                "-cstatement_timeout=5s",
            ),
            (
                "-c application_name=a\\ b -c tenant=acme",
                "-c application_name=a\\ b",
            ),
        ] {
            let mut msg = startup(&[("user", "app"), ("options", options)]);
            let r = resolve_client(&snapshot(), &[TenantSource::Options], &mut msg, None).unwrap();
            assert_eq!(r.tenant.name.as_str(), "acme", "{options}");
            assert_eq!(msg.get("options"), Some(rest), "{options}");
        }
        let mut msg = startup(&[("user", "app"), ("options", "-c work_mem=8MB")]);
        let err =
            resolve_client(&snapshot(), &[TenantSource::Options], &mut msg, None).unwrap_err();
        assert_eq!(err, ResolveError::NoTenant);
        assert_eq!(msg.get("options"), Some("-c work_mem=8MB"));
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
