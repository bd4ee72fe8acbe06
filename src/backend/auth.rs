//! Authenticating to the server as a client: trust, cleartext, md5 and SCRAM-SHA-256.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connect::{BackendError, BackendTarget};
use crate::auth::KeyedScramClient;
use crate::protocol::frame::{split_frame, Frame};
use crate::protocol::messages::{self, parse_error_fields};

const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;
const SCRAM: &str = "SCRAM-SHA-256";

/// A SCRAM login with the registry's password, or with a passthrough client's keys.
enum Scram {
    Password(ScramSha256),
    Keys(KeyedScramClient),
}

pub(super) async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, BackendError> {
    loop {
        if let Some(frame) =
            split_frame(buf, max).map_err(|e| BackendError::Protocol(e.to_string()))?
        {
            return Ok(frame);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Runs the authentication exchange up to AuthenticationOk.
pub(super) async fn authenticate(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    target: &BackendTarget,
    max: usize,
) -> Result<(), BackendError> {
    let mut scram: Option<Scram> = None;
    let password = || {
        target
            .password
            .as_ref()
            .map(|p| p.expose())
            .ok_or(BackendError::MissingPassword)
    };
    let auth_error = |e: &dyn std::fmt::Display| BackendError::Auth(e.to_string());
    loop {
        let frame = read_frame(stream, buf, max).await?;
        match frame.tag() {
            b'E' => return Err(BackendError::Refused(parse_error_fields(frame.body()))),
            b'R' => {}
            other => {
                return Err(BackendError::Protocol(format!(
                    "unexpected message '{}' during authentication",
                    other as char
                )))
            }
        }
        let body = frame.body();
        if body.len() < 4 {
            return Err(BackendError::Protocol(
                "short authentication request".into(),
            ));
        }
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let data = &body[4..];
        let mut out = BytesMut::new();
        match code {
            AUTH_OK => return Ok(()),
            AUTH_CLEARTEXT => messages::password_message(&mut out, password()?.as_bytes()),
            AUTH_MD5 => {
                let salt: [u8; 4] = data
                    .try_into()
                    .map_err(|_| BackendError::Protocol("md5 salt is not 4 bytes".into()))?;
                let hash = md5_hash(target.user.as_bytes(), password()?.as_bytes(), salt);
                messages::password_message(&mut out, hash.as_bytes());
            }
            AUTH_SASL => {
                let offers_scram = data
                    .split(|&b| b == 0)
                    .any(|mechanism| mechanism == SCRAM.as_bytes());
                if !offers_scram {
                    return Err(BackendError::UnsupportedAuth(
                        String::from_utf8_lossy(data)
                            .replace('\0', " ")
                            .trim()
                            .to_string(),
                    ));
                }
                // No password but keys a passthrough client proved: log in with those.
                let keys = target.keys.as_ref().and_then(|slot| slot.get());
                let client = match (&target.password, keys) {
                    (None, Some(keys)) => Scram::Keys(KeyedScramClient::new(keys)),
                    _ => Scram::Password(ScramSha256::new(
                        password()?.as_bytes(),
                        ChannelBinding::unsupported(),
                    )),
                };
                let first = match &client {
                    Scram::Password(c) => c.message().to_vec(),
                    Scram::Keys(c) => c.client_first().into_bytes(),
                };
                messages::sasl_initial_response(&mut out, SCRAM, &first);
                scram = Some(client);
            }
            AUTH_SASL_CONTINUE => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| BackendError::Protocol("SASL continue before start".into()))?;
                let reply = match client {
                    Scram::Password(c) => {
                        c.update(data).map_err(|e| auth_error(&e))?;
                        c.message().to_vec()
                    }
                    Scram::Keys(c) => c
                        .server_first(data)
                        .map_err(|e| auth_error(&e))?
                        .into_bytes(),
                };
                messages::sasl_response(&mut out, &reply);
            }
            AUTH_SASL_FINAL => {
                let client = scram
                    .take()
                    .ok_or_else(|| BackendError::Protocol("SASL final before start".into()))?;
                match client {
                    Scram::Password(mut c) => c.finish(data).map_err(|e| auth_error(&e))?,
                    Scram::Keys(c) => c.server_final(data).map_err(|e| auth_error(&e))?,
                }
                continue;
            }
            other => {
                return Err(BackendError::UnsupportedAuth(format!(
                    "authentication method {other}"
                )))
            }
        }
        stream.write_all(&out).await?;
    }
}
