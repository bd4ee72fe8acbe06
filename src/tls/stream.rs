//! A client connection before the relay: plain TCP or TLS.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum ClientStream {
    Plain(TcpStream),
    Tls {
        stream: Box<TlsStream<TcpStream>>,
        /// The identity the handshake used, for channel binding.
        identity: Arc<super::Identity>,
    },
}

impl ClientStream {
    /// The client's socket (under TLS, the one TLS runs on).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(stream) => stream,
            ClientStream::Tls { stream, .. } => stream.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls { .. })
    }

    /// The server name the client asked for in its TLS hello (SNI).
    pub fn server_name(&self) -> Option<&str> {
        match self {
            ClientStream::Plain(_) => None,
            ClientStream::Tls { stream, .. } => stream.get_ref().1.server_name(),
        }
    }

    /// `tls-server-end-point` channel binding data, over TLS.
    pub fn end_point(&self) -> Option<&[u8]> {
        match self {
            ClientStream::Plain(_) => None,
            ClientStream::Tls { identity, .. } => Some(&identity.end_point),
        }
    }

    /// The stream the relay works on: the socket itself, or for TLS the near end of a
    /// pipe to the TLS stream (see `tls::pipe`).
    pub fn into_relay(self) -> io::Result<TcpStream> {
        match self {
            ClientStream::Plain(stream) => Ok(stream),
            ClientStream::Tls { stream, .. } => super::pipe(stream),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
