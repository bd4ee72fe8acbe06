//! Where a move's phase is kept. With the file registry, moves are recorded in
//! `<registry file stem>.moves.json` beside it (for `config/tenants.toml`:
//! `config/tenants.moves.json`), written atomically (temp file + rename). With the
//! PostgreSQL registry, the phase is the tenant's `state` column in
//! `pgtenant.tenants` (`active` again once the move ends, however it ends).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::MoveRecord;

pub fn path_beside(registry_file: &Path) -> PathBuf {
    let stem = registry_file
        .file_stem()
        .map_or_else(|| "tenants".into(), |s| s.to_string_lossy().into_owned());
    registry_file.with_file_name(format!("{stem}.moves.json"))
}

/// The records in `path`; none when the file does not exist.
pub fn read(path: &Path) -> Result<BTreeMap<String, MoveRecord>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.to_string()),
    };
    let records: Vec<MoveRecord> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(records.into_iter().map(|r| (r.tenant.clone(), r)).collect())
}

pub fn write(path: &Path, records: &BTreeMap<String, MoveRecord>) -> std::io::Result<()> {
    let list: Vec<&MoveRecord> = records.values().collect();
    let text = serde_json::to_string_pretty(&list).map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Sets the tenant's `state` in the PostgreSQL registry.
pub async fn set_registry_state(url: &str, tenant: &str, state: &str) -> Result<(), String> {
    let client = crate::registry::migrate::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    client
        .execute(
            "UPDATE pgtenant.tenants SET state = $2 WHERE name = $1",
            &[&tenant, &state],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moves::Phase;

    #[test]
    fn records_survive_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("tenants.toml");
        let path = path_beside(&registry);
        assert_eq!(path, dir.path().join("tenants.moves.json"));
        assert!(read(&path).unwrap().is_empty());
        let mut record = MoveRecord::new("acme", "pg-a", "pg-b", true);
        record.phase = Phase::CatchingUp;
        let records = BTreeMap::from([("acme".to_string(), record.clone())]);
        write(&path, &records).unwrap();
        assert_eq!(read(&path).unwrap()["acme"], record);
    }
}
