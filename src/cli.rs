//! The commands that edit configuration: `pgtenant user add` and `pgtenant secret
//! encrypt`. Passwords given to them are turned into verifiers or ciphertext and
//! never written or printed as they are.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};

use crate::auth::Verifier;
use crate::config::Settings;
use crate::registry::file;
use crate::secret::{SecretKey, Secrets};

/// `value`, or standard input without its final line break.
fn given_or_stdin(value: Option<String>, what: &str) -> anyhow::Result<String> {
    if let Some(value) = value {
        return Ok(value);
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .with_context(|| format!("reading the {what} from standard input"))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        bail!("no {what} given (--{what} or standard input)");
    }
    Ok(text.to_string())
}

/// Adds `[users.NAME]` to the registry file named by the settings at `config`, with a
/// verifier of `password`, keeping the rest of the file (comments included) as it is.
pub fn add_user(
    config: &Path,
    name: &str,
    password: Option<String>,
    tenants: &[String],
    md5: bool,
) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let path = settings
        .registry
        .file
        .clone()
        .context("no registry file configured (registry.file)")?;
    let password = given_or_stdin(password, "password")?;
    let verifier = match md5 {
        true => postgres_protocol::password::md5(password.as_bytes(), name),
        false => Verifier::scram_text(&password),
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let users = doc
        .entry("users")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            toml_edit::Item::Table(table)
        })
        .as_table_mut()
        .context("`users` in the registry is not a table")?;
    let mut user = toml_edit::Table::new();
    user["password"] = toml_edit::value(verifier);
    let mut list = toml_edit::Array::new();
    for tenant in tenants.iter().filter(|t| !t.is_empty()) {
        list.push(tenant.as_str());
    }
    user["tenants"] = toml_edit::value(list);
    users.insert(name, toml_edit::Item::Table(user));
    let updated = doc.to_string();
    // The whole registry must still load before it replaces the file.
    let secrets = Secrets::from_settings(&settings.secrets)?;
    file::parse_with(&updated, &path.display().to_string(), &secrets)?;
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, updated).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    println!(
        "user \"{name}\" stored in {} ({} verifier)",
        path.display(),
        if md5 { "md5" } else { "SCRAM-SHA-256" }
    );
    Ok(())
}

/// Prints `enc:…` for a value, under the key `[secrets]` names.
pub fn encrypt_secret(config: &Path, value: Option<String>) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let key = SecretKey::from_settings(&settings.secrets)?.with_context(|| {
        format!(
            "no secret key: set {} or secrets.key_file (`pgtenant secret key` makes one)",
            settings.secrets.key_env
        )
    })?;
    let value = given_or_stdin(value, "value")?;
    println!("{}", key.encrypt(&value));
    Ok(())
}
