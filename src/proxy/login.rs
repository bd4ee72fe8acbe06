//! Client authentication, the phase between resolving the tenant and serving it:
//! `proxy.auth` picks the method, `[users.NAME]` (or the tenant's server, with
//! passthrough) holds the verifier, and the user's `tenants` say where it may go.
//!
//! A wrong password and an unknown user get the same 28P01 after the same work (an
//! unknown user runs a fake SCRAM exchange), so the answer does not tell which.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pending::Unauthenticated;
use super::refusal::Refusal;
use super::resolve::Resolved;
use crate::app::App;
use crate::auth::scram::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use crate::auth::verifier::{hmac, salted_password};
use crate::auth::{md5, ScramKeys, ScramServer, Verifier};
use crate::config::AuthMethod;
use crate::protocol::frame::{read_cstr, split_frame, HEADER_LEN};
use crate::protocol::messages;
use crate::protocol::sqlstate;
use crate::registry::User;
use crate::tls::ClientStream;

/// Authentication messages are small; anything larger is not one.
const MAX_AUTH_MESSAGE: usize = 10_000;

/// Authenticates the client as `proxy.auth` says, within `proxy.auth_timeout`. `out`
/// holds what the client must be sent first and, on success, gets AuthenticationOk.
/// The client's place among unauthenticated connections is given back at the end.
pub async fn authenticate(
    app: &App,
    stream: &mut ClientStream,
    resolved: &Resolved,
    pending: Unauthenticated,
    out: &mut BytesMut,
) -> Result<(), Refusal> {
    let mut login = Login {
        app,
        stream,
        out,
        buf: BytesMut::new(),
    };
    let result = within_timeout(app, login.run(resolved)).await;
    finish(login.out, pending, result)
}

/// Authenticates a client of the admin console: a registry user (`[users.NAME]`)
/// whatever its tenants, under any `proxy.auth` but `trust`.
pub async fn authenticate_console(
    app: &App,
    stream: &mut ClientStream,
    user: &str,
    pending: Unauthenticated,
    out: &mut BytesMut,
) -> Result<(), Refusal> {
    let mut login = Login {
        app,
        stream,
        out,
        buf: BytesMut::new(),
    };
    let result = match app.settings.proxy.auth {
        AuthMethod::Trust => Ok(()),
        _ => within_timeout(app, login.registered(user))
            .await
            .map(|_| ()),
    };
    finish(login.out, pending, result)
}

async fn within_timeout<T>(
    app: &App,
    exchange: impl std::future::Future<Output = Result<T, Refusal>>,
) -> Result<T, Refusal> {
    let timeout = app.settings.proxy.auth_timeout;
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!("authentication not completed within {timeout:?}"),
            ))
        })
}

/// Gives the client's place among unauthenticated connections back and, on
/// success, queues AuthenticationOk.
fn finish(
    out: &mut BytesMut,
    pending: Unauthenticated,
    result: Result<(), Refusal>,
) -> Result<(), Refusal> {
    drop(pending);
    result?;
    messages::authentication_ok(out);
    Ok(())
}

struct Login<'a> {
    app: &'a App,
    stream: &'a mut ClientStream,
    out: &'a mut BytesMut,
    buf: BytesMut,
}

impl Login<'_> {
    async fn run(&mut self, resolved: &Resolved) -> Result<(), Refusal> {
        let user = resolved.user.as_str();
        let method = self.app.settings.proxy.auth;
        if method == AuthMethod::Trust {
            return Ok(());
        }
        if method == AuthMethod::Passthrough {
            return self.passthrough(resolved).await;
        }
        let found = self.registered(user).await?;
        if !found.may_reach(&resolved.tenant.name) {
            return Err(Refusal::new(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!(
                    "user \"{user}\" may not connect to tenant \"{}\"",
                    resolved.tenant.name
                ),
            ));
        }
        Ok(())
    }

    /// Checks the password of a registry user by the configured method (SCRAM for
    /// passthrough, whose registry users are the console's).
    async fn registered(&mut self, user: &str) -> Result<Arc<User>, Refusal> {
        let method = self.app.settings.proxy.auth;
        let registered = self.app.registry.snapshot().user(user);
        let verified = match (method, registered.as_deref()) {
            (AuthMethod::Password, found) => self.cleartext(user, found).await?,
            (
                AuthMethod::Md5,
                Some(
                    found @ User {
                        password: Verifier::Md5(stored),
                        ..
                    },
                ),
            ) => self.md5(stored).await?.then_some(found),
            (
                _,
                Some(
                    found @ User {
                        password: Verifier::Scram(v),
                        ..
                    },
                ),
            ) => {
                self.scram(ScramServer::new(v.clone(), self.end_point()), user)
                    .await?;
                Some(found)
            }
            // Unknown, or an md5 verifier under scram-sha-256: the same exchange, failing.
            (_, _) => {
                let fake = self.fake(user);
                self.scram(fake, user).await?;
                None
            }
        };
        match (verified.is_some(), registered) {
            (true, Some(found)) => Ok(found),
            _ => Err(wrong_password(user)),
        }
    }

    /// Passthrough: the role's verifier comes from the tenant's server; the keys the
    /// client proves log the proxy in to that server as the same role.
    async fn passthrough(&mut self, resolved: &Resolved) -> Result<(), Refusal> {
        let role = resolved
            .tenant
            .backend_user
            .clone()
            .unwrap_or_else(|| resolved.user.clone());
        let verifier = self
            .app
            .passthrough
            .get(self.app, &resolved.tenant, &resolved.host, &role)
            .await?;
        let server = match verifier {
            Some(Verifier::Scram(v)) => ScramServer::new(v, self.end_point()),
            _ => self.fake(&resolved.user),
        };
        let keys = self.scram(server, &resolved.user).await?;
        self.app
            .pools
            .key_slot(&resolved.host.address, &role)
            .set(keys);
        Ok(())
    }

    fn end_point(&self) -> Option<Vec<u8>> {
        self.stream.end_point().map(<[u8]>::to_vec)
    }

    fn fake(&self, user: &str) -> ScramServer {
        ScramServer::fake(user, &self.app.auth_secret, self.end_point())
    }

    /// One SCRAM-SHA-256 exchange; the keys on success, 28P01 otherwise.
    async fn scram(&mut self, mut server: ScramServer, user: &str) -> Result<ScramKeys, Refusal> {
        let end_point = self.stream.end_point().map(<[u8]>::to_vec);
        messages::authentication_sasl(self.out, ScramServer::mechanisms(end_point.as_deref()));
        let initial = self.read_password_message().await?;
        let (mechanism, rest) =
            read_cstr(&initial).ok_or_else(|| malformed("SASLInitialResponse"))?;
        let mechanism = std::str::from_utf8(mechanism).unwrap_or_default();
        if ![SCRAM_SHA_256, SCRAM_SHA_256_PLUS].contains(&mechanism) {
            return Err(malformed("SASL mechanism"));
        }
        let data = rest
            .get(4..)
            .ok_or_else(|| malformed("SASLInitialResponse"))?;
        let first = server
            .client_first(mechanism, data)
            .map_err(|e| scram_refusal(e, user))?;
        messages::authentication_sasl_data(self.out, 11, first.as_bytes());
        let last = self.read_password_message().await?;
        let (final_message, keys) = server
            .client_final(&last)
            .map_err(|e| scram_refusal(e, user))?;
        messages::authentication_sasl_data(self.out, 12, final_message.as_bytes());
        Ok(keys)
    }

    /// The md5 exchange against a stored md5 verifier.
    async fn md5(&mut self, stored: &str) -> Result<bool, Refusal> {
        let salt = md5::salt();
        messages::authentication_md5(self.out, salt);
        let answer = self.read_password_message().await?;
        let answer = answer.strip_suffix(b"\0").unwrap_or(&answer);
        Ok(md5::check(stored, salt, answer))
    }

    /// A cleartext password, only over TLS, checked against the stored verifier.
    async fn cleartext<'u>(
        &mut self,
        user: &str,
        found: Option<&'u User>,
    ) -> Result<Option<&'u User>, Refusal> {
        if !self.stream.is_tls() {
            return Err(Refusal::new(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "password authentication sends the password in clear text: connect over TLS (sslmode=require)",
            ));
        }
        messages::authentication_cleartext(self.out);
        let answer = self.read_password_message().await?;
        let answer = answer.strip_suffix(b"\0").unwrap_or(&answer);
        let password = std::str::from_utf8(answer).unwrap_or_default();
        Ok(match found {
            Some(found) => found
                .password
                .matches_password(user, password)
                .then_some(found),
            None => {
                // An unknown user costs the same hashing as a known one.
                let salt = hmac(&self.app.auth_secret, user.as_bytes());
                let _ = salted_password(password, &salt[..16], 4096);
                None
            }
        })
    }

    /// Sends what is queued and reads the client's next PasswordMessage body.
    async fn read_password_message(&mut self) -> Result<Bytes, Refusal> {
        let queued = std::mem::take(self.out);
        let gone = || {
            Refusal::new(
                sqlstate::CONNECTION_FAILURE,
                "client left during authentication",
            )
        };
        self.stream.write_all(&queued).await.map_err(|_| gone())?;
        self.stream.flush().await.map_err(|_| gone())?;
        loop {
            match split_frame(&mut self.buf, MAX_AUTH_MESSAGE) {
                Ok(Some(frame)) if frame.tag() == b'p' => {
                    return Ok(frame.into_bytes().split_off(HEADER_LEN))
                }
                Ok(Some(frame)) if frame.tag() == b'X' => return Err(gone()),
                Ok(Some(_)) => return Err(malformed("expected a password message")),
                Ok(None) => {}
                Err(e) => return Err(Refusal::from(&e)),
            }
            if self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|_| gone())?
                == 0
            {
                return Err(gone());
            }
        }
    }
}

fn wrong_password(user: &str) -> Refusal {
    Refusal::new(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

fn malformed(what: &str) -> Refusal {
    Refusal::new(
        sqlstate::PROTOCOL_VIOLATION,
        format!("malformed authentication message: {what}"),
    )
}

fn scram_refusal(e: crate::auth::ScramError, user: &str) -> Refusal {
    use crate::auth::ScramError;
    match e {
        // A wrong password and an unknown user get the same answer.
        ScramError::Failed => wrong_password(user),
        e => Refusal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string()),
    }
}
