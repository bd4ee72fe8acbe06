//! Authenticating to the server as a client: trust, cleartext, md5 and SCRAM-SHA-256.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connect::{BackendError, BackendTarget};
use crate::protocol::frame::{split_frame, Frame};
use crate::protocol::messages::{self, parse_error_fields};

const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;
const SCRAM: &str = "SCRAM-SHA-256";

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
    let mut scram: Option<ScramSha256> = None;
    let password = || {
        target
            .password
            .as_deref()
            .ok_or(BackendError::MissingPassword)
    };
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
                let client =
                    ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                messages::sasl_initial_response(&mut out, SCRAM, client.message());
                scram = Some(client);
            }
            AUTH_SASL_CONTINUE => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| BackendError::Protocol("SASL continue before start".into()))?;
                client
                    .update(data)
                    .map_err(|e| BackendError::Auth(e.to_string()))?;
                messages::sasl_response(&mut out, client.message());
            }
            AUTH_SASL_FINAL => {
                let mut client = scram
                    .take()
                    .ok_or_else(|| BackendError::Protocol("SASL final before start".into()))?;
                client
                    .finish(data)
                    .map_err(|e| BackendError::Auth(e.to_string()))?;
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
