//! Secrets in the registry: values that never reach a log, and `enc:` values
//! encrypted with AES-256-GCM under a key from the environment or a file.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::config::SecretSettings;

/// What marks an encrypted value: `enc:` + base64(nonce ‖ ciphertext ‖ tag).
pub const PREFIX: &str = "enc:";
const NONCE_LEN: usize = 12;

/// A password or key: printed as `***` by `Debug` and `Display`, so a derived `Debug`
/// of anything holding one never shows it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: &str) -> Secret {
        Secret(Arc::from(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("an encrypted value (enc:…) needs a key: set {0} or secrets.key_file")]
    NoKey(String),
    #[error("the secret key must be base64 of 32 bytes")]
    BadKey,
    #[error("cannot read the secret key file {0}")]
    KeyFile(String),
    #[error("the encrypted value is not valid base64 of a nonce and ciphertext")]
    Malformed,
    #[error("the encrypted value does not decrypt with this key")]
    WrongKey,
}

/// The registry's AES-256-GCM key.
#[derive(Clone)]
pub struct SecretKey(Key<Aes256Gcm>);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> SecretKey {
        SecretKey(Aes256Gcm::generate_key(OsRng))
    }

    /// From base64 text (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<SecretKey, SecretError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| SecretError::BadKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadKey)?;
        Ok(SecretKey(bytes.into()))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// The key `[secrets]` names, if any: the variable first, then the file.
    pub fn from_settings(settings: &SecretSettings) -> Result<Option<SecretKey>, SecretError> {
        if let Ok(text) = std::env::var(&settings.key_env) {
            return SecretKey::parse(&text).map(Some);
        }
        match &settings.key_file {
            Some(path) => Self::from_file(path).map(Some),
            None => Ok(None),
        }
    }

    fn from_file(path: &Path) -> Result<SecretKey, SecretError> {
        let text = std::fs::read_to_string(path)
            .map_err(|_| SecretError::KeyFile(path.display().to_string()))?;
        SecretKey::parse(&text)
    }

    /// `enc:…` for `plain`, with a random nonce.
    pub fn encrypt(&self, plain: &str) -> String {
        let cipher = Aes256Gcm::new(&self.0);
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(&nonce, plain.as_bytes())
            .expect("AES-GCM encryption of an in-memory value");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", BASE64.encode(out))
    }

    fn decrypt(&self, encoded: &str) -> Result<String, SecretError> {
        let bytes = BASE64.decode(encoded).map_err(|_| SecretError::Malformed)?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(SecretError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let plain = Aes256Gcm::new(&self.0)
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| SecretError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| SecretError::Malformed)
    }
}

/// The key (if any) and where it was expected, for decrypting registry values.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub key: Option<SecretKey>,
    /// Named in the error when an `enc:` value meets no key.
    pub key_env: String,
}

impl Secrets {
    pub fn from_settings(settings: &SecretSettings) -> Result<Secrets, SecretError> {
        Ok(Secrets {
            key: SecretKey::from_settings(settings)?,
            key_env: settings.key_env.clone(),
        })
    }

    pub fn reveal(&self, value: &str) -> Result<Secret, SecretError> {
        reveal(value, self.key.as_ref(), &self.key_env)
    }
}

/// A registry value as it is used: `enc:` values decrypted with `key`, others as
/// written.
pub fn reveal(value: &str, key: Option<&SecretKey>, key_env: &str) -> Result<Secret, SecretError> {
    match value.strip_prefix(PREFIX) {
        None => Ok(Secret::new(value)),
        Some(encoded) => {
            let key = key.ok_or_else(|| SecretError::NoKey(key_env.to_string()))?;
            key.decrypt(encoded).map(|plain| Secret::new(&plain))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let key = SecretKey::generate();
        let sealed = key.encrypt("s3cret pass");
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("s3cret"));
        assert_eq!(
            reveal(&sealed, Some(&key), "K").unwrap().expose(),
            "s3cret pass"
        );
        assert_ne!(
            key.encrypt("s3cret pass"),
            sealed,
            "a fresh nonce each time"
        );
        let other = SecretKey::generate();
        assert_eq!(
            reveal(&sealed, Some(&other), "K"),
            Err(SecretError::WrongKey)
        );
        assert_eq!(
            reveal(&sealed, None, "K"),
            Err(SecretError::NoKey("K".into()))
        );
        assert_eq!(reveal("plain", None, "K").unwrap().expose(), "plain");
        let parsed = SecretKey::parse(&key.to_base64()).unwrap();
        assert_eq!(
            reveal(&sealed, Some(&parsed), "K").unwrap().expose(),
            "s3cret pass"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert!(!format!("{:?}", Some(secret)).contains("hunter2"));
    }
}
