//! The md5 password exchange: the client sends md5(md5(password || user) || salt).

use md5::{Digest, Md5};
use rand::RngCore;
use subtle::ConstantTimeEq;

/// A random salt for one challenge.
pub fn salt() -> [u8; 4] {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    salt
}

/// What a client that knows the password answers to `salt`, given the stored hex of
/// md5(password || user).
fn expected(stored_hex: &str, salt: [u8; 4]) -> String {
    let mut hasher = Md5::new();
    hasher.update(stored_hex.as_bytes());
    hasher.update(salt);
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("md5{hex}")
}

/// Whether `response` (the PasswordMessage, without its NUL) answers the challenge.
pub fn check(stored_hex: &str, salt: [u8; 4], response: &[u8]) -> bool {
    bool::from(expected(stored_hex, salt).as_bytes().ct_eq(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_libpq_computes_them() {
        let stored = postgres_protocol::password::md5(b"pw", "bob");
        let salt = [1, 2, 3, 4];
        let answer = postgres_protocol::authentication::md5_hash(b"bob", b"pw", salt);
        assert!(check(&stored[3..], salt, answer.as_bytes()));
        assert!(!check(&stored[3..], [4, 3, 2, 1], answer.as_bytes()));
    }
}
