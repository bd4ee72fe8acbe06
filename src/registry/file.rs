//! The TOML registry source: `[hosts.NAME]` and `[tenants.NAME]`, reloaded when the
//! file changes or on SIGHUP. An invalid file is refused whole; the old snapshot stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use super::validate::{validate, RawFile};
use super::{Registry, Snapshot};
use crate::config::Problem;
use crate::secret::Secrets;

#[derive(Debug, thiserror::Error)]
pub enum RegistryFileError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

/// Parses registry TOML; `file` names the source in messages.
pub fn parse_with(
    text: &str,
    file: &str,
    secrets: &Secrets,
) -> Result<Snapshot, RegistryFileError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| RegistryFileError::Parse {
        file: file.to_string(),
        message: parse_message(&e, text),
    })?;
    validate(raw, file, secrets)
}

/// Where and what, without the quoted line the TOML error would show: that line may
/// hold a password, and this message goes to the log and to `check`.
fn parse_message(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

/// Reads and validates the registry file; `enc:` values are decrypted with `secrets`.
pub fn load(path: &Path, secrets: &Secrets) -> Result<Snapshot, RegistryFileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RegistryFileError::Read {
        file: file.clone(),
        source,
    })?;
    if text.trim().is_empty() {
        // An editor that truncates before writing leaves this for a moment.
        return Err(RegistryFileError::Parse {
            file,
            message: "the file is empty".into(),
        });
    }
    parse_with(&text, &file, secrets)
}

/// Parses registry TOML without a secret key; `file` names the source in messages.
pub fn parse(text: &str, file: &str) -> Result<Snapshot, RegistryFileError> {
    parse_with(text, file, &Secrets::default())
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads `path` into `registry` when it changes (polled every `interval`) or on
/// SIGHUP. Runs until the runtime shuts down.
pub fn watch(registry: Arc<Registry>, path: PathBuf, interval: Duration, secrets: Secrets) {
    tokio::spawn(async move {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; relying on file changes");
                None
            }
        };
        let mut seen = fingerprint(&path);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = ticker.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            let now = fingerprint(&path);
            if !forced && now == seen {
                continue;
            }
            seen = now;
            // Parsing 100,000 tenants takes a while: not on the event loop.
            let (path, secrets) = (path.clone(), secrets.clone());
            let started = std::time::Instant::now();
            let loaded = tokio::task::spawn_blocking(move || (load(&path, &secrets), path)).await;
            if let Ok((loaded, path)) = loaded {
                if apply(&registry, &path, loaded) {
                    let took_ms = started.elapsed().as_millis() as u64;
                    tracing::debug!(took_ms, "registry file read and checked");
                }
            }
        }
    });
}

/// One reload attempt: swap in the new snapshot, or log why not and keep the old one.
pub fn reload(registry: &Registry, path: &Path, secrets: &Secrets) -> bool {
    apply(registry, path, load(path, secrets))
}

fn apply(registry: &Registry, path: &Path, loaded: Result<Snapshot, RegistryFileError>) -> bool {
    match loaded {
        Ok(snapshot) => {
            let tenants = snapshot.tenant_count();
            if let Err(why) = registry.accept(snapshot) {
                tracing::error!(file = %path.display(), "registry update refused, previous registry keeps serving: {why}");
                return false;
            }
            tracing::info!(file = %path.display(), tenants, "registry reloaded");
            true
        }
        Err(e) => {
            tracing::error!("registry update refused, previous registry keeps serving: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolMode;
    use crate::registry::validate::valid_address;

    const GOOD: &str = r#"
        [hosts.pg-a]
        address = "127.0.0.1:5432"
        max_connections = 20

        [tenants.acme]
        host = "pg-a"
        database = "erp"
        search_path = ["tenant_acme"]
        backend_user = "erp_app"
        pool_mode = "transaction"

        [tenants."*"]
        host = "pg-a"
        database = "{tenant}"
        backend_user = "app"
    "#;

    #[test]
    fn parses_hosts_tenants_and_template() {
        let snapshot = parse(GOOD, "t.toml").unwrap();
        let acme = snapshot.tenant("acme").unwrap();
        assert_eq!(acme.search_path, vec!["tenant_acme".to_string()]);
        assert_eq!(acme.pool_mode, Some(PoolMode::Transaction));
        assert_eq!(snapshot.host(&acme.host).unwrap().max_connections, 20);
        assert_eq!(snapshot.tenant("shop").unwrap().database, "shop");
    }

    #[test]
    fn names_file_and_key_of_each_problem() {
        let text = r#"
            [hosts.pg-a]
            address = "nowhere"
            [tenants.acme]
            host = "pg-z"
            database = ""
        "#;
        let err = parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("t.toml: hosts.pg-a.address"), "{err}");
        assert!(
            err.contains("t.toml: tenants.\"acme\".host: unknown host \"pg-z\""),
            "{err}"
        );
        assert!(err.contains("tenants.\"acme\".database"), "{err}");
    }

    #[test]
    fn addresses_are_host_and_port() {
        for good in [
            "127.0.0.1:5432",
            "db-1.example.com:6432",
            "[::1]:5432",
            "pg_a:1",
        ] {
            assert!(valid_address(good), "{good}");
        }
        for bad in [
            "postgres://127.0.0.1:5432",
            "127.0.0.1",
            ":5432",
            "h:0",
            "::1:5432",
            "a b:1",
        ] {
            assert!(!valid_address(bad), "{bad}");
        }
    }

    #[test]
    fn placeholders_are_known_and_only_in_the_template() {
        let text = r#"
            [hosts.a]
            address = "127.0.0.1:5432"
            [tenants."*"]
            host = "a"
            database = "{tenat}"
            search_path = ["tenant_{tenant}", "x_{Tenant}"]
            backend_user = "{tenant}_app"
            [tenants.acme]
            host = "a"
            database = "{tenant}"
        "#;
        let err = parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "t.toml: tenants.\"*\".database: unknown placeholder \"{tenat}\" in \"{tenat}\"; the only placeholder is {tenant}\n\
             t.toml: tenants.\"*\".search_path: unknown placeholder \"{Tenant}\" in \"x_{Tenant}\"; the only placeholder is {tenant}\n\
             t.toml: tenants.\"acme\".database: {tenant} is filled in only in the template entry [tenants.\"*\"]"
        );
    }

    #[test]
    fn a_syntax_error_does_not_quote_the_line() {
        let text = "[tenants.acme]\nhost = \"a\"\nbackend_password = \"hunter2\n";
        let err = parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml: line 3, column "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn syntax_and_unknown_keys_are_refused() {
        assert!(parse("[hosts.a\n", "t.toml").is_err());
        let err = parse("[hosts.a]\naddress = \"h:1\"\nport = 5\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }
}
