//! Switching a tenant's host in the file registry: the `host` key of
//! `[tenants.NAME]` is rewritten (comments and layout kept, toml_edit), the file is
//! replaced atomically (temp file + rename) and the registry reloaded at once.

use std::io::Write;
use std::path::Path;

use crate::registry::{file, Registry};
use crate::secret::Secrets;

/// `text` with the host of tenant `tenant` set to `host`.
pub fn set_host(text: &str, tenant: &str, host: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| e.message().to_string())?;
    let entry = doc
        .get_mut("tenants")
        .and_then(|t| t.get_mut(tenant))
        .and_then(|t| t.as_table_like_mut())
        .ok_or_else(|| {
            format!("tenant \"{tenant}\" is not listed in the registry file (a tenant served by the template entry cannot be moved alone)")
        })?;
    let old = entry
        .get("host")
        .and_then(|h| h.as_str())
        .map(str::to_owned);
    match entry.get_mut("host") {
        // Keeps the comment that may follow the value.
        Some(item) if old.is_some() => {
            let decor = item.as_value().map(|v| v.decor().clone());
            *item = toml_edit::value(host);
            if let (Some(decor), Some(value)) = (decor, item.as_value_mut()) {
                *value.decor_mut() = decor;
            }
        }
        _ => {
            entry.insert("host", toml_edit::value(host));
        }
    }
    Ok(doc.to_string())
}

/// Writes `text` to `path` atomically.
pub fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(tmp.path(), meta.permissions());
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Points `tenant` at `host` in the registry file and reloads it. On any problem
/// the file is left (or put back) as it was and the registry unchanged.
pub fn switch_file(
    registry: &Registry,
    path: &Path,
    secrets: &Secrets,
    tenant: &str,
    host: &str,
) -> Result<(), String> {
    let before = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let after = set_host(&before, tenant, host)?;
    // Checked whole before it replaces anything.
    file::parse_with(&after, &path.display().to_string(), secrets)
        .map_err(|e| format!("the switched registry would be refused: {e}"))?;
    replace_file(path, &after).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if !file::reload(registry, path, secrets) {
        let _ = replace_file(path, &before);
        return Err(format!("{} was refused on reload", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_changes() {
        let text = "# hosts\n[hosts.a]\naddress = \"h:1\"\n\n[tenants.acme]\nhost = \"a\" # home\ndatabase = \"erp\"\n";
        let out = set_host(text, "acme", "b").unwrap();
        assert_eq!(
            out,
            "# hosts\n[hosts.a]\naddress = \"h:1\"\n\n[tenants.acme]\nhost = \"b\" # home\ndatabase = \"erp\"\n"
        );
    }

    #[test]
    fn an_unlisted_tenant_is_refused() {
        let err = set_host("[tenants.\"*\"]\nhost = \"a\"\n", "acme", "b").unwrap_err();
        assert!(err.contains("not listed"), "{err}");
    }
}
