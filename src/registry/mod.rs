//! The tenant registry: which host, database, schemas and credentials serve a tenant.
//!
//! Readers take the current `Snapshot` without a lock (arc-swap); a source builds a new
//! snapshot, validates it whole and swaps it in, so a reader never sees half an update.

pub mod file;
pub mod instances;
pub mod migrate;
pub mod pg;
pub mod rows;
pub mod store;
pub(crate) mod validate;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Verifier;
use crate::config::PoolMode;
use crate::secret::Secret;
use crate::tls::client::BackendTls;

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(name: &str) -> Self {
                $name(Arc::from(name))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A tenant's name, as clients give it.
    TenantName
);
name_type!(
    /// A host's name in the registry (not its address).
    HostName
);

/// A PostgreSQL server that holds tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: HostName,
    /// `host:port`.
    pub address: String,
    /// Server connections all tenants on this host may hold together.
    pub max_connections: usize,
    /// How the proxy reaches it: plain or TLS, and what it checks.
    pub tls: BackendTls,
    /// The role that runs `passthrough.auth_query` on this host.
    pub auth_user: Option<String>,
    pub auth_password: Option<Secret>,
    /// The role for tenant moves (replication); `None` means `postgres`.
    pub admin_user: Option<String>,
    pub admin_password: Option<Secret>,
}

/// A client user of the proxy (`[users.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: Verifier,
    /// Tenants this user may reach; `["*"]` is every tenant, `[]` none.
    pub tenants: Vec<String>,
}

impl User {
    pub fn may_reach(&self, tenant: &TenantName) -> bool {
        self.tenants
            .iter()
            .any(|t| t == TEMPLATE_KEY || t == tenant.as_str())
    }
}

/// Where and as whom one tenant is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: TenantName,
    pub host: HostName,
    pub database: String,
    /// Schemas, in order; empty means the server's default.
    pub search_path: Vec<String>,
    /// Role on the server; `None` means the client's own user name.
    pub backend_user: Option<String>,
    pub backend_password: Option<Secret>,
    pub pool_size: Option<usize>,
    /// Idle server connections kept open while the tenant is active.
    pub min_idle: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    /// `Some(false)`: keep dedicated server connections even where schema tenants
    /// share them (`pool.share_schema_tenants`).
    pub share: Option<bool>,
}

/// The part of the template entry `[tenants."*"]` that is filled in per tenant.
pub const TEMPLATE_KEY: &str = "*";
pub const TENANT_PLACEHOLDER: &str = "{tenant}";

/// Databases no template entry serves: the maintenance databases and the admin
/// console's name. A client must not reach them by naming a tenant after them.
pub const RESERVED_DATABASES: &[&str] = &["postgres", "template0", "template1", "pgtenant"];

/// Template tenants are made from untrusted names, so only plain names qualify, and
/// never a reserved name (which `{tenant}` would turn into a database or a role).
fn is_template_name(name: &str) -> bool {
    !name.is_empty()
        && !RESERVED_DATABASES.contains(&name)
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An immutable, validated view of the registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    hosts: HashMap<HostName, Arc<Host>>,
    tenants: HashMap<TenantName, Arc<Tenant>>,
    template: Option<Tenant>,
    users: HashMap<String, Arc<User>>,
}

impl Snapshot {
    /// Assembles a snapshot; callers validate first (see `file::parse`).
    pub fn new(hosts: Vec<Host>, tenants: Vec<Tenant>, template: Option<Tenant>) -> Snapshot {
        Snapshot {
            hosts: hosts
                .into_iter()
                .map(|h| (h.name.clone(), Arc::new(h)))
                .collect(),
            tenants: tenants
                .into_iter()
                .map(|t| (t.name.clone(), Arc::new(t)))
                .collect(),
            template,
            users: HashMap::new(),
        }
    }

    /// Adds the client users (`[users.NAME]`).
    pub fn with_users(mut self, users: Vec<User>) -> Snapshot {
        self.users = users
            .into_iter()
            .map(|u| (u.name.clone(), Arc::new(u)))
            .collect();
        self
    }

    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.get(name).cloned()
    }

    /// The tenant by name: a listed tenant, else one made from the template entry.
    pub fn tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        if let Some(tenant) = self.tenants.get(name) {
            return Some(tenant.clone());
        }
        let template = self.template.as_ref()?;
        if !is_template_name(name) {
            return None;
        }
        let fill = |s: &str| s.replace(TENANT_PLACEHOLDER, name);
        if RESERVED_DATABASES.contains(&fill(&template.database).as_str()) {
            return None;
        }
        Some(Arc::new(Tenant {
            name: TenantName::new(name),
            host: template.host.clone(),
            database: fill(&template.database),
            search_path: template.search_path.iter().map(|s| fill(s)).collect(),
            backend_user: template.backend_user.as_deref().map(fill),
            backend_password: template.backend_password.clone(),
            pool_size: template.pool_size,
            min_idle: template.min_idle,
            pool_mode: template.pool_mode,
            share: template.share,
        }))
    }

    /// Whether the tenant is listed by name (not made from the template entry).
    pub fn lists(&self, name: &str) -> bool {
        self.tenants.contains_key(name)
    }

    /// The tenant for a client that connected under `before`: a listed tenant that
    /// is no longer listed is gone, even where the template entry would make one of
    /// that name (its clients get 3D000, never another database).
    pub fn tenant_after(&self, before: &Snapshot, name: &str) -> Option<Arc<Tenant>> {
        if before.lists(name) && !self.lists(name) {
            return None;
        }
        self.tenant(name)
    }

    pub fn host(&self, name: &HostName) -> Option<Arc<Host>> {
        self.hosts.get(name).cloned()
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.hosts.values()
    }

    /// The listed tenants (not the template entry), in no particular order.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    pub fn template(&self) -> Option<&Tenant> {
        self.template.as_ref()
    }
}

/// Frees a replaced snapshot off the event loop once no client holds it: freeing
/// 100,000 tenants takes tens of milliseconds that no client should wait for.
fn bury(old: Arc<Snapshot>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        // Clients let go of it at their next transaction (or when they leave).
        while Arc::strong_count(&old) > 1 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
    });
}

impl std::borrow::Borrow<str> for TenantName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The current snapshot, swapped atomically by registry sources.
pub struct Registry {
    current: ArcSwap<Snapshot>,
}

impl Registry {
    pub fn new(snapshot: Snapshot) -> Registry {
        Registry {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// Lock-free read of the current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn replace(&self, snapshot: Snapshot) {
        let old = self.current.swap(Arc::new(snapshot));
        bury(old);
    }

    /// Swaps in a validated update unless it would remove every listed tenant while
    /// some are served: that is what a truncated file or an emptied table looks like,
    /// so the previous registry keeps serving. The error is the log line's text.
    pub fn accept(&self, snapshot: Snapshot) -> Result<(), String> {
        let current = self.current.load();
        if snapshot.tenant_count() == 0 && current.tenant_count() > 0 {
            return Err(format!(
                "the update lists no tenant while {} are served; an update that removes every tenant is refused",
                current.tenant_count()
            ));
        }
        drop(current);
        self.replace(snapshot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, database: &str) -> Tenant {
        Tenant {
            name: TenantName::new(name),
            host: HostName::new("a"),
            database: database.into(),
            search_path: vec![format!("tenant_{TENANT_PLACEHOLDER}")],
            backend_user: None,
            backend_password: None,
            pool_size: None,
            min_idle: None,
            pool_mode: None,
            share: None,
        }
    }

    #[test]
    fn listed_tenant_wins_over_template() {
        let snapshot = Snapshot::new(
            vec![],
            vec![tenant("acme", "erp")],
            Some(tenant(TEMPLATE_KEY, "{tenant}")),
        );
        assert_eq!(snapshot.tenant("acme").unwrap().database, "erp");
        let shop = snapshot.tenant("shop").unwrap();
        assert_eq!(shop.database, "shop");
        assert_eq!(shop.search_path, vec!["tenant_shop".to_string()]);
    }

    #[test]
    fn template_never_serves_reserved_databases() {
        let snapshot = Snapshot::new(vec![], vec![], Some(tenant(TEMPLATE_KEY, "{tenant}")));
        for name in RESERVED_DATABASES {
            assert!(snapshot.tenant(name).is_none(), "{name}");
        }
        let snapshot = Snapshot::new(vec![], vec![], Some(tenant(TEMPLATE_KEY, "{tenant}0")));
        assert!(
            snapshot.tenant("template").is_none(),
            "template0 by another name"
        );
        assert!(snapshot.tenant("shop").is_some());
    }

    #[test]
    fn template_refuses_odd_names() {
        let snapshot = Snapshot::new(vec![], vec![], Some(tenant(TEMPLATE_KEY, "{tenant}")));
        assert!(snapshot.tenant("a b").is_none());
        assert!(snapshot.tenant("").is_none());
        assert!(snapshot.tenant(&"x".repeat(64)).is_none());
    }

    #[test]
    fn a_removed_listed_tenant_does_not_fall_to_the_template() {
        let template = || Some(tenant(TEMPLATE_KEY, "{tenant}"));
        let before = Snapshot::new(vec![], vec![tenant("acme", "erp")], template());
        let after = Snapshot::new(vec![], vec![], template());
        assert!(after.tenant_after(&before, "acme").is_none());
        assert_eq!(
            after.tenant_after(&before, "shop").unwrap().database,
            "shop"
        );
        assert_eq!(before.tenant_after(&after, "acme").unwrap().database, "erp");
    }

    #[test]
    fn an_update_removing_every_tenant_is_refused() {
        let registry = Registry::new(Snapshot::new(vec![], vec![tenant("acme", "erp")], None));
        let err = registry.accept(Snapshot::default()).unwrap_err();
        assert!(err.contains("removes every tenant"), "{err}");
        assert!(registry.snapshot().lists("acme"));
        registry
            .accept(Snapshot::new(vec![], vec![tenant("shop", "s")], None))
            .unwrap();
        assert!(registry.snapshot().lists("shop"));
    }

    #[test]
    fn no_template_no_tenant() {
        let snapshot = Snapshot::new(vec![], vec![tenant("acme", "erp")], None);
        assert!(snapshot.tenant("other").is_none());
    }
}
