//! Changes to the registry file: edited with toml_edit (comments, order and layout of
//! everything else kept), checked whole, then written to a temporary file beside it
//! and renamed over it, so a proxy watching the file never reads half of it.

use std::path::{Path, PathBuf};

use toml_edit::{value, Array, DocumentMut, Item, Table};

use super::{apply_raw, Change, StoreError};
use crate::registry::file::parse_with;
use crate::registry::validate::RawFile;
use crate::secret::Secrets;

pub struct FileStore {
    path: PathBuf,
    secrets: Secrets,
}

impl FileStore {
    pub fn new(path: PathBuf, secrets: Secrets) -> FileStore {
        FileStore { path, secrets }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn text(&self) -> Result<String, StoreError> {
        std::fs::read_to_string(&self.path).map_err(|e| {
            StoreError::Unavailable(format!("{}: cannot read: {e}", self.path.display()))
        })
    }

    pub(crate) fn raw(&self) -> Result<RawFile, StoreError> {
        toml::from_str(&self.text()?)
            .map_err(|e| StoreError::Invalid(format!("{}: {}", self.path.display(), e.message())))
    }

    pub fn apply(&self, change: &Change) -> Result<(), StoreError> {
        let text = self.text()?;
        let mut raw: RawFile = toml::from_str(&text).map_err(|e| {
            StoreError::Invalid(format!("{}: {}", self.path.display(), e.message()))
        })?;
        apply_raw(&mut raw, change)?;
        let mut doc: DocumentMut = text.parse().map_err(|e| {
            StoreError::Invalid(format!("{} is not valid TOML: {e}", self.path.display()))
        })?;
        edit(&mut doc, change)?;
        let updated = doc.to_string();
        // The whole registry must still load before it replaces the file.
        let name = self.path.display().to_string();
        parse_with(&updated, &name, &self.secrets)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let tmp = self.path.with_extension("toml.tmp");
        let written =
            std::fs::write(&tmp, updated).and_then(|()| std::fs::rename(&tmp, &self.path));
        written.map_err(|e| StoreError::Unavailable(format!("writing {name}: {e}")))
    }
}

/// The `[section]` table, made (implicit: no empty header) when missing.
fn section<'a>(doc: &'a mut DocumentMut, name: &str) -> Result<&'a mut Table, StoreError> {
    doc.entry(name)
        .or_insert_with(|| {
            let mut table = Table::new();
            table.set_implicit(true);
            Item::Table(table)
        })
        .as_table_mut()
        .ok_or_else(|| StoreError::Invalid(format!("`{name}` in the registry is not a table")))
}

fn list(items: &[String]) -> Item {
    let mut array = Array::new();
    for item in items {
        array.push(item.as_str());
    }
    value(array)
}

fn set_opt(table: &mut Table, key: &str, item: Option<Item>) {
    if let Some(item) = item {
        table[key] = item;
    }
}

fn edit(doc: &mut DocumentMut, change: &Change) -> Result<(), StoreError> {
    match change {
        Change::AddTenant(t) => {
            let mut table = Table::new();
            table["host"] = value(&t.host);
            table["database"] = value(&t.database);
            if !t.search_path.is_empty() {
                table["search_path"] = list(&t.search_path);
            }
            set_opt(
                &mut table,
                "backend_user",
                t.backend_user.as_deref().map(value),
            );
            set_opt(
                &mut table,
                "backend_password",
                t.backend_password.as_deref().map(value),
            );
            set_opt(
                &mut table,
                "pool_size",
                t.pool_size.map(|n| value(n as i64)),
            );
            set_opt(&mut table, "pool_mode", t.pool_mode.map(|m| value(mode(m))));
            section(doc, "tenants")?.insert(&t.name, Item::Table(table));
        }
        Change::UpdateTenant(name, u) => {
            let table = section(doc, "tenants")?
                .get_mut(name)
                .and_then(Item::as_table_mut)
                .ok_or_else(|| StoreError::Invalid(format!("tenant \"{name}\" is not a table")))?;
            set_opt(table, "host", u.host.as_deref().map(value));
            set_opt(table, "database", u.database.as_deref().map(value));
            set_opt(table, "search_path", u.search_path.as_deref().map(list));
            set_opt(table, "backend_user", u.backend_user.as_deref().map(value));
            set_opt(
                table,
                "backend_password",
                u.backend_password.as_deref().map(value),
            );
            set_opt(table, "pool_size", u.pool_size.map(|n| value(n as i64)));
            set_opt(table, "pool_mode", u.pool_mode.map(|m| value(mode(m))));
        }
        Change::RemoveTenant(name) => {
            section(doc, "tenants")?.remove(name);
        }
        Change::AddHost(h) => {
            let mut table = Table::new();
            table["address"] = value(&h.address);
            table["max_connections"] = value(h.max_connections as i64);
            set_opt(&mut table, "admin_user", h.admin_user.as_deref().map(value));
            set_opt(
                &mut table,
                "admin_password",
                h.admin_password.as_deref().map(value),
            );
            section(doc, "hosts")?.insert(&h.name, Item::Table(table));
        }
        Change::RemoveHost(name) => {
            section(doc, "hosts")?.remove(name);
        }
        Change::PutUser(u) => {
            let mut table = Table::new();
            table["password"] = value(&u.password);
            let tenants: Vec<String> = u
                .tenants
                .iter()
                .filter(|t| !t.is_empty())
                .cloned()
                .collect();
            table["tenants"] = list(&tenants);
            section(doc, "users")?.insert(&u.name, Item::Table(table));
        }
        Change::RemoveUser(name) => {
            section(doc, "users")?.remove(name);
        }
    }
    Ok(())
}

fn mode(mode: crate::config::PoolMode) -> &'static str {
    match mode {
        crate::config::PoolMode::Session => "session",
        crate::config::PoolMode::Transaction => "transaction",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::{HostRecord, TenantRecord, TenantUpdate};

    const START: &str = "# hosts we own\n[hosts.pg-a]\naddress = \"127.0.0.1:5432\" # primary\n\n[tenants.acme]\nhost = \"pg-a\"\ndatabase = \"erp\"\n";

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, START).unwrap();
        (dir, FileStore::new(path, Secrets::default()))
    }

    #[test]
    fn changes_keep_comments_and_validate() {
        let (_dir, store) = store();
        let tenant = TenantRecord {
            name: "shop".into(),
            host: "pg-a".into(),
            database: "shop".into(),
            search_path: vec!["s1".into(), "s2".into()],
            pool_size: Some(4),
            ..TenantRecord::default()
        };
        store.apply(&Change::AddTenant(tenant.clone())).unwrap();
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(text.starts_with("# hosts we own\n"), "{text}");
        assert!(text.contains("# primary"), "{text}");
        assert!(text.contains("search_path = [\"s1\", \"s2\"]"), "{text}");
        assert!(matches!(
            store.apply(&Change::AddTenant(tenant)),
            Err(StoreError::Exists { .. })
        ));
        let bad = TenantUpdate {
            host: Some("pg-z".into()),
            ..TenantUpdate::default()
        };
        let err = store
            .apply(&Change::UpdateTenant("shop".into(), bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown host \"pg-z\""), "{err}");
        let host = HostRecord {
            name: "pg-b".into(),
            address: "nowhere".into(),
            max_connections: 5,
            ..HostRecord::default()
        };
        let err = store.apply(&Change::AddHost(host)).unwrap_err().to_string();
        assert!(err.contains("is not host:port"), "{err}");
        let err = store
            .apply(&Change::RemoveHost("pg-a".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("still serves tenant(s) acme, shop"), "{err}");
        store.apply(&Change::RemoveTenant("shop".into())).unwrap();
        assert_eq!(std::fs::read_to_string(store.path()).unwrap(), START);
    }
}
