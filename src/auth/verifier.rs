//! Stored passwords as PostgreSQL stores them in `pg_authid.rolpassword`, so they
//! can be copied from a server: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
//! (base64 parts) or `md5<hex of md5(password || user)>`.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

#[derive(Clone, PartialEq, Eq)]
pub enum Verifier {
    Scram(ScramVerifier),
    /// The 32 hex digits after `md5`.
    Md5(String),
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verifier::Scram(_) => f.write_str("Verifier(SCRAM-SHA-256, ***)"),
            Verifier::Md5(_) => f.write_str("Verifier(md5, ***)"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a password verifier: expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> or md5 and 32 hex digits (a verifier, not a password: make one with `pgtenant user add`)")]
pub struct VerifierError;

impl std::str::FromStr for Verifier {
    type Err = VerifierError;

    fn from_str(text: &str) -> Result<Verifier, VerifierError> {
        if let Some(hex) = text.strip_prefix("md5") {
            let valid = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            return valid
                .then(|| Verifier::Md5(hex.to_ascii_lowercase()))
                .ok_or(VerifierError);
        }
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or(VerifierError)?;
        let (params, keys) = rest.split_once('$').ok_or(VerifierError)?;
        let (iterations, salt) = params.split_once(':').ok_or(VerifierError)?;
        let (stored, server) = keys.split_once(':').ok_or(VerifierError)?;
        let key = |b64: &str| -> Result<[u8; 32], VerifierError> {
            let bytes = BASE64.decode(b64).map_err(|_| VerifierError)?;
            bytes.try_into().map_err(|_| VerifierError)
        };
        let iterations: u32 = iterations.parse().map_err(|_| VerifierError)?;
        let salt = BASE64.decode(salt).map_err(|_| VerifierError)?;
        if iterations == 0 || salt.is_empty() {
            return Err(VerifierError);
        }
        Ok(Verifier::Scram(ScramVerifier {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        }))
    }
}

impl Verifier {
    /// A SCRAM-SHA-256 verifier for `password` with a random salt, as PostgreSQL makes
    /// them (4096 iterations, SASLprep).
    pub fn scram_text(password: &str) -> String {
        postgres_protocol::password::scram_sha_256(password.as_bytes())
    }

    /// Whether a cleartext password matches.
    pub fn matches_password(&self, user: &str, password: &str) -> bool {
        match self {
            Verifier::Scram(v) => {
                let salted = salted_password(password, &v.salt, v.iterations);
                let client_key = hmac(&salted, b"Client Key");
                bool::from(sha256(&client_key).ct_eq(&v.stored_key))
            }
            Verifier::Md5(hex) => {
                let made = postgres_protocol::password::md5(password.as_bytes(), user);
                bool::from(made.as_bytes()[3..].ct_eq(hex.as_bytes()))
            }
        }
    }
}

/// SaltedPassword of RFC 5802: PBKDF2-HMAC-SHA-256 of the SASLprep'd password (the
/// raw bytes when SASLprep refuses it, as PostgreSQL does).
pub fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let prepared = stringprep::saslprep(password)
        .map(|p| p.into_owned())
        .unwrap_or_else(|_| password.to_string());
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(prepared.as_bytes(), salt, iterations, &mut out);
    out
}

pub fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_postgres_stores_and_checks_passwords() {
        let text = Verifier::scram_text("correct horse");
        let verifier: Verifier = text.parse().unwrap();
        assert!(verifier.matches_password("alice", "correct horse"));
        assert!(!verifier.matches_password("alice", "wrong"));
        let md5: Verifier = postgres_protocol::password::md5(b"pw", "bob")
            .parse()
            .unwrap();
        assert!(md5.matches_password("bob", "pw"));
        assert!(!md5.matches_password("eve", "pw"));
        assert!(!format!("{verifier:?}").contains(&text[20..]));
    }

    #[test]
    fn refuses_plain_passwords_and_broken_verifiers() {
        for text in [
            "hunter2",
            "md5abc",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:BBBB",
        ] {
            assert_eq!(text.parse::<Verifier>(), Err(VerifierError), "{text}");
        }
    }
}
