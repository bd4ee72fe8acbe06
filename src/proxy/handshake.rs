//! The startup phase: encryption requests (TLS after SSLRequest, or direct TLS),
//! cancel requests and the startup message.

use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::pending::Unauthenticated;
use crate::app::App;
use crate::config::TlsMode;
use crate::protocol::startup::{
    parse_startup, CancelKey, StartupError, StartupMessage, StartupPacket,
};
use crate::tls::server::ALPN_POSTGRESQL;
use crate::tls::ClientStream;

/// The first byte of a TLS handshake record: a client starting TLS directly.
const TLS_HANDSHAKE: u8 = 0x16;

pub enum Handshake {
    /// A startup message, and the client's place among the connections of its
    /// address that have not authenticated yet.
    Startup(StartupMessage, Unauthenticated),
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
    #[error("received unencrypted data after SSL request")]
    DataAfterSslRequest,
    #[error("received direct SSL connection request without ALPN protocol negotiation extension")]
    NoAlpn,
    #[error(
        "pgtenant accepts only TLS (SSL) connections: connect with sslmode=require or stronger"
    )]
    TlsRequired,
    #[error("too many connections from {0} that have not authenticated yet")]
    TooManyUnauthenticated(IpAddr),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The startup asks for something a pooled session cannot give (replication).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads until a startup message or a cancel request, bounded by
/// `proxy.startup_timeout` as a whole. SSLRequest is answered 'S' and TLS begins when
/// `[tls]` serves it, otherwise 'N'; GSSENCRequest is always answered 'N'. Errors come
/// with the stream to tell the client on, when there is one it can still read.
pub async fn read_startup(
    app: &App,
    mut stream: TcpStream,
) -> (Option<ClientStream>, Result<Handshake, HandshakeError>) {
    let timeout = app.settings.proxy.startup_timeout;
    let deadline = Instant::now() + timeout;
    let ip = stream
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let Some(pending) = app.unauthenticated.enter(ip) else {
        let error = HandshakeError::TooManyUnauthenticated(ip);
        return (Some(ClientStream::Plain(stream)), Err(error));
    };
    let tls = app
        .tls
        .as_ref()
        .filter(|_| app.settings.tls.mode != TlsMode::Disable);

    let mut buf = BytesMut::with_capacity(512);
    let mut direct = false;
    if tls.is_some() {
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Err(_) => {
                return (
                    Some(ClientStream::Plain(stream)),
                    Err(HandshakeError::Timeout(timeout)),
                )
            }
            Ok(Ok(0)) | Ok(Err(_)) => return (None, Err(HandshakeError::Closed)),
            Ok(Ok(_)) => direct = first[0] == TLS_HANDSHAKE,
        }
    }
    if !direct {
        let plain =
            tokio::time::timeout_at(deadline, read_packets(&mut stream, &mut buf, tls.is_some()));
        match plain.await {
            Err(_) => {
                return (
                    Some(ClientStream::Plain(stream)),
                    Err(HandshakeError::Timeout(timeout)),
                )
            }
            Ok(Err(e)) => return (Some(ClientStream::Plain(stream)), Err(e)),
            Ok(Ok(Packet::Cancel(key))) => {
                return (
                    Some(ClientStream::Plain(stream)),
                    Ok(Handshake::Cancel(key)),
                )
            }
            Ok(Ok(Packet::Startup(startup))) => {
                let result = match app.settings.tls.mode {
                    TlsMode::Require => Err(HandshakeError::TlsRequired),
                    _ => Ok(Handshake::Startup(startup, pending)),
                };
                return (Some(ClientStream::Plain(stream)), result);
            }
            Ok(Ok(Packet::StartTls)) => {}
        }
        if !buf.is_empty() {
            return (
                Some(ClientStream::Plain(stream)),
                Err(HandshakeError::DataAfterSslRequest),
            );
        }
    }

    // TLS, asked for by SSLRequest or started directly.
    let identity = tls.expect("TLS starts only when served").identity();
    let accepted = tokio::time::timeout_at(deadline, identity.acceptor.accept(stream)).await;
    let tls_stream = match accepted {
        Err(_) => return (None, Err(HandshakeError::Timeout(timeout))),
        Ok(Err(e)) => return (None, Err(HandshakeError::Tls(e))),
        Ok(Ok(tls_stream)) => tls_stream,
    };
    let alpn_ok = tls_stream.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL);
    let mut client = ClientStream::Tls {
        stream: Box::new(tls_stream),
        identity,
    };
    if direct && !alpn_ok {
        return (Some(client), Err(HandshakeError::NoAlpn));
    }
    let inner = tokio::time::timeout_at(deadline, read_packets(&mut client, &mut buf, false));
    let result = match inner.await {
        Err(_) => Err(HandshakeError::Timeout(timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Packet::Cancel(key))) => Ok(Handshake::Cancel(key)),
        Ok(Ok(Packet::Startup(startup))) => Ok(Handshake::Startup(startup, pending)),
        Ok(Ok(Packet::StartTls)) => Err(HandshakeError::TooManyRequests),
    };
    (Some(client), result)
}

enum Packet {
    Startup(StartupMessage),
    Cancel(CancelKey),
    /// SSLRequest answered 'S': TLS comes next.
    StartTls,
}

async fn read_packets<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    tls: bool,
) -> Result<Packet, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut requests = 0;
    loop {
        match parse_startup(buf)? {
            Some(StartupPacket::Startup(msg)) => {
                return match msg.unsupported() {
                    Some(why) => Err(HandshakeError::Unsupported(why)),
                    None => Ok(Packet::Startup(msg)),
                }
            }
            Some(StartupPacket::Cancel(key)) => return Ok(Packet::Cancel(key)),
            Some(request @ (StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                // A client may ask for SSL and then GSS; more than that is a loop.
                requests += 1;
                if requests > 2 {
                    return Err(HandshakeError::TooManyRequests);
                }
                if tls && request == StartupPacket::SslRequest {
                    stream.write_all(b"S").await?;
                    return Ok(Packet::StartTls);
                }
                stream.write_all(b"N").await?;
                continue;
            }
            None => {}
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}
