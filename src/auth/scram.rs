//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, without I/O: the
//! server side that checks a client against a stored verifier (with
//! `tls-server-end-point` channel binding over TLS), and a client side that logs in
//! with the ClientKey recovered from a client's proof instead of a password.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::verifier::{hmac, sha256, ScramVerifier};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
const NONCE_LEN: usize = 18;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported on this connection")]
    BindingUnsupported,
    #[error("the client supports channel binding but did not use it over TLS")]
    BindingDowngrade,
    #[error("SCRAM channel binding check failed")]
    BindingMismatch,
    #[error("SCRAM nonce mismatch")]
    Nonce,
    /// Wrong password, or an unknown user's fake exchange.
    #[error("password authentication failed")]
    Failed,
    #[error("the server could not be authenticated")]
    ServerSignature,
    #[error("the server refused SCRAM authentication: {0}")]
    ServerError(String),
}

/// The keys a successful exchange proves the client holds, enough to log in to a
/// server that stores the same verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(***)")
    }
}

fn nonce() -> String {
    let mut bytes = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut bytes);
    BASE64.encode(bytes)
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// The server side of one exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    /// False for the fake exchange of an unknown user: it runs the same steps and fails.
    real: bool,
    /// `tls-server-end-point` data when the client is on TLS.
    end_point: Option<Vec<u8>>,
    state: State,
}

enum State {
    Initial,
    Sent {
        gs2_header: String,
        binding: bool,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

impl ScramServer {
    pub fn new(verifier: ScramVerifier, end_point: Option<Vec<u8>>) -> ScramServer {
        ScramServer {
            verifier,
            real: true,
            end_point,
            state: State::Initial,
        }
    }

    /// An exchange for a user that does not exist: a salt that is stable per name
    /// (`secret` is the process's own) so probes cannot tell, and a proof that never
    /// matches.
    pub fn fake(user: &str, secret: &[u8; 32], end_point: Option<Vec<u8>>) -> ScramServer {
        let salt = hmac(secret, user.as_bytes())[..16].to_vec();
        let mut keys = [0u8; 64];
        rand::thread_rng().fill_bytes(&mut keys);
        let verifier = ScramVerifier {
            iterations: 4096,
            salt,
            stored_key: keys[..32].try_into().expect("32 bytes"),
            server_key: keys[32..].try_into().expect("32 bytes"),
        };
        ScramServer {
            real: false,
            ..ScramServer::new(verifier, end_point)
        }
    }

    /// Mechanisms to offer: the -PLUS variant only over TLS.
    pub fn mechanisms(end_point: Option<&[u8]>) -> &'static [&'static str] {
        match end_point {
            Some(_) => &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
            None => &[SCRAM_SHA_256],
        }
    }

    /// Takes SASLInitialResponse's mechanism and data; returns server-first-message.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS => true,
            _ => return Err(ScramError::Malformed("unknown mechanism")),
        };
        let (flag, rest) = text.split_at(
            text.find(',')
                .ok_or(ScramError::Malformed("no GS2 header"))?,
        );
        let rest = &rest[1..];
        let binding = match flag {
            "n" if !plus => false,
            // The client could bind but thinks we cannot: over TLS we can, so someone
            // stripped -PLUS from our offer.
            "y" if !plus && self.end_point.is_some() => return Err(ScramError::BindingDowngrade),
            "y" if !plus => false,
            "p=tls-server-end-point" if plus => {
                if self.end_point.is_none() {
                    return Err(ScramError::BindingUnsupported);
                }
                true
            }
            _ => return Err(ScramError::Malformed("GS2 flag does not fit the mechanism")),
        };
        // authzid is not supported (PostgreSQL ignores it too); skip it.
        let (_authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no client-first-message-bare"))?;
        let gs2_header = format!("{flag},{_authzid},");
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or(ScramError::Malformed("no client nonce"))?;
        if bare.starts_with("m=") {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        let nonce = format!("{client_nonce}{}", nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = State::Sent {
            gs2_header,
            binding,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// Takes client-final-message; returns server-final-message and the client's keys
    /// when the proof holds.
    pub fn client_final(&mut self, data: &[u8]) -> Result<(String, ScramKeys), ScramError> {
        let State::Sent {
            gs2_header,
            binding,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Malformed("client-final-message out of order"));
        };
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let channel = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        let mut expected = gs2_header.into_bytes();
        if binding {
            expected.extend_from_slice(self.end_point.as_deref().unwrap_or_default());
        }
        let channel = BASE64
            .decode(channel)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if channel != expected {
            return Err(ScramError::BindingMismatch);
        }
        if client_nonce != nonce {
            return Err(ScramError::Nonce);
        }
        let proof: [u8; 32] = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        let matches = bool::from(sha256(&client_key).ct_eq(&self.verifier.stored_key));
        if !(matches && self.real) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok((
            format!("v={}", BASE64.encode(server_signature)),
            ScramKeys {
                client_key,
                server_key: self.verifier.server_key,
            },
        ))
    }
}

/// The client side of one exchange, proving the keys of a verifier without the
/// password it was made from.
pub struct KeyedScramClient {
    keys: ScramKeys,
    client_first_bare: String,
    auth_message: Option<String>,
}

impl KeyedScramClient {
    pub fn new(keys: ScramKeys) -> KeyedScramClient {
        KeyedScramClient {
            keys,
            client_first_bare: format!("n=,r={}", nonce()),
            auth_message: None,
        }
    }

    /// client-first-message (no channel binding).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Takes server-first-message; returns client-final-message.
    pub fn server_first(&mut self, data: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let nonce = text
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        let ours = &self.client_first_bare["n=,r=".len()..];
        if !nonce.starts_with(ours) || nonce.len() == ours.len() {
            return Err(ScramError::Nonce);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let stored_key = sha256(&self.keys.client_key);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof = xor(&self.keys.client_key, &signature);
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    /// Takes server-final-message: the server must prove it holds the verifier too.
    pub fn server_final(&self, data: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.to_string()));
        }
        let auth_message = self
            .auth_message
            .as_ref()
            .ok_or(ScramError::Malformed("server-final-message out of order"))?;
        let expected = hmac(&self.keys.server_key, auth_message.as_bytes());
        let got = text
            .strip_prefix("v=")
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or(ScramError::Malformed("no server signature"))?;
        match bool::from(got.ct_eq(&expected)) {
            true => Ok(()),
            false => Err(ScramError::ServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::verifier::Verifier;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn verifier(password: &str) -> ScramVerifier {
        match Verifier::scram_text(password).parse().unwrap() {
            Verifier::Scram(v) => v,
            Verifier::Md5(_) => unreachable!(),
        }
    }

    /// Runs postgres-protocol's client (what tokio-postgres uses) against our server.
    fn exchange(
        server: &mut ScramServer,
        password: &str,
        binding: ChannelBinding,
        mechanism: &str,
    ) -> Result<ScramKeys, ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), binding);
        let first = server.client_first(mechanism, client.message())?;
        client.update(first.as_bytes()).unwrap();
        let (last, keys) = server.client_final(client.message())?;
        client
            .finish(last.as_bytes())
            .expect("client accepts the server signature");
        Ok(keys)
    }

    #[test]
    fn a_real_client_logs_in_and_a_wrong_password_does_not() {
        let v = verifier("s3cret");
        let mut server = ScramServer::new(v.clone(), None);
        exchange(
            &mut server,
            "s3cret",
            ChannelBinding::unsupported(),
            SCRAM_SHA_256,
        )
        .unwrap();
        let mut server = ScramServer::new(v, None);
        let err = exchange(
            &mut server,
            "wrong",
            ChannelBinding::unsupported(),
            SCRAM_SHA_256,
        );
        assert_eq!(err.unwrap_err(), ScramError::Failed);
    }

    #[test]
    fn channel_binding_is_checked() {
        let v = verifier("s3cret");
        let cert_hash = vec![7u8; 32];
        let mut server = ScramServer::new(v.clone(), Some(cert_hash.clone()));
        let binding = ChannelBinding::tls_server_end_point(cert_hash);
        exchange(&mut server, "s3cret", binding, SCRAM_SHA_256_PLUS).unwrap();
        // A client bound to another certificate (a man in the middle) is refused.
        let mut server = ScramServer::new(v.clone(), Some(vec![7u8; 32]));
        let binding = ChannelBinding::tls_server_end_point(vec![8u8; 32]);
        let err = exchange(&mut server, "s3cret", binding, SCRAM_SHA_256_PLUS);
        assert_eq!(err.unwrap_err(), ScramError::BindingMismatch);
        // "y": the client could bind, we offered -PLUS over TLS: a downgrade.
        let mut server = ScramServer::new(v, Some(vec![7u8; 32]));
        let err = exchange(
            &mut server,
            "s3cret",
            ChannelBinding::unrequested(),
            SCRAM_SHA_256,
        );
        assert_eq!(err.unwrap_err(), ScramError::BindingDowngrade);
    }

    #[test]
    fn an_unknown_user_fails_the_same_way_with_a_stable_salt() {
        let secret = [3u8; 32];
        let mut a = ScramServer::fake("nobody", &secret, None);
        let mut b = ScramServer::fake("nobody", &secret, None);
        assert_eq!(a.verifier.salt, b.verifier.salt);
        let err = exchange(
            &mut a,
            "anything",
            ChannelBinding::unsupported(),
            SCRAM_SHA_256,
        );
        assert_eq!(err.unwrap_err(), ScramError::Failed);
        let _ = b.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap();
    }

    #[test]
    fn recovered_keys_log_in_without_the_password() {
        let v = verifier("s3cret");
        let mut server = ScramServer::new(v.clone(), None);
        let keys = exchange(
            &mut server,
            "s3cret",
            ChannelBinding::unsupported(),
            SCRAM_SHA_256,
        )
        .unwrap();
        // A second server holding the same verifier accepts a login made from the keys.
        let mut other = ScramServer::new(v, None);
        let mut client = KeyedScramClient::new(keys);
        let first = other
            .client_first(SCRAM_SHA_256, client.client_first().as_bytes())
            .unwrap();
        let last = client.server_first(first.as_bytes()).unwrap();
        let (final_msg, _) = other.client_final(last.as_bytes()).unwrap();
        client.server_final(final_msg.as_bytes()).unwrap();
        assert_eq!(
            client.server_final(b"v=AAAA"),
            Err(ScramError::ServerSignature)
        );
    }
}
