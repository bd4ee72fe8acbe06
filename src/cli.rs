//! `pgtenant secret encrypt` and what the configuration commands share. Passwords
//! given to them are turned into verifiers or ciphertext and never written or
//! printed as they are (`pgtenant user …` lives in `manage`).

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};

use crate::config::Settings;
use crate::secret::SecretKey;

/// `value`, or standard input without its final line break.
pub fn given_or_stdin(value: Option<String>, what: &str) -> anyhow::Result<String> {
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
