//! The startup phase: encryption requests, cancel requests and the startup message.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::startup::{
    parse_startup, CancelKey, StartupError, StartupMessage, StartupPacket,
};

pub enum Handshake {
    Startup(StartupMessage),
    Cancel(CancelKey),
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Packet(#[from] StartupError),
    #[error("no startup message within {0:?}")]
    Timeout(Duration),
    #[error("client closed the connection during startup")]
    Closed,
    #[error("too many encryption requests")]
    TooManyRequests,
    /// The startup asks for something a pooled session cannot give (replication).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads until a startup message or a cancel request, answering SSLRequest and
/// GSSENCRequest with 'N' (no encryption offered). Bounded by `timeout` as a whole.
pub async fn read_startup(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Handshake, HandshakeError> {
    tokio::time::timeout(timeout, read_packets(stream))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

async fn read_packets(stream: &mut TcpStream) -> Result<Handshake, HandshakeError> {
    let mut buf = BytesMut::with_capacity(512);
    let mut requests = 0;
    loop {
        match parse_startup(&mut buf)? {
            Some(StartupPacket::Startup(msg)) => {
                return match msg.unsupported() {
                    Some(why) => Err(HandshakeError::Unsupported(why)),
                    None => Ok(Handshake::Startup(msg)),
                }
            }
            Some(StartupPacket::Cancel(key)) => return Ok(Handshake::Cancel(key)),
            Some(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                // A client may ask for SSL and then GSS; more than that is a loop.
                requests += 1;
                if requests > 2 {
                    return Err(HandshakeError::TooManyRequests);
                }
                stream.write_all(b"N").await?;
                continue;
            }
            None => {}
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}
