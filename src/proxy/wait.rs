//! Waiting on the relay's two sockets and reading what they hold: the part of the
//! relay that talks to the reactor.

use std::io;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Room kept free in a read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// What woke the relay.
pub(super) enum Event {
    ClientReadable,
    ServerReadable,
    Writable,
    Shutdown,
    /// The client was quiet long enough to park.
    Park,
}

/// One non-blocking read into `buf`; `false` at end of stream. Keeps room for the
/// rest of a large frame, bounded so a claimed length does not allocate by itself.
/// `streaming`: bytes still to come of a frame passing through in pieces (its header
/// is gone from `buf`).
///
/// A read that did not fill the room drained the socket, so its readiness is cleared
/// here: otherwise the next wait would return at once and cost a read that finds
/// nothing (one system call per message). The clearing is tied to the readiness seen
/// before the read, so data arriving after it is never missed.
pub(super) fn read_some(
    stream: &TcpStream,
    buf: &mut BytesMut,
    max: usize,
    streaming: usize,
) -> io::Result<bool> {
    let missing = match streaming {
        0 => crate::protocol::frame::missing_bytes(buf, max),
        n => n.saturating_sub(buf.len()),
    };
    let want = missing.clamp(READ_CHUNK, 1 << 20);
    buf.reserve(want);
    let room = buf.capacity() - buf.len();
    let mut read = None;
    let result = stream.try_io(Interest::READABLE, || {
        let n = stream.try_read_buf(buf)?;
        read = Some(n);
        if n > 0 && n < room {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match (read, result) {
        (Some(n), _) => Ok(n > 0),
        (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => Ok(true),
    }
}

/// Which readiness the relay waits for.
#[derive(Clone, Copy)]
pub(super) struct Wanted {
    pub(super) read_client: bool,
    pub(super) read_server: bool,
    pub(super) write_client: bool,
    pub(super) write_server: bool,
}

impl Wanted {
    pub(super) fn any(&self, attached: bool) -> bool {
        self.read_client
            || self.write_client
            || (attached && (self.read_server || self.write_server))
    }

    /// The first readiness among those wanted; the sides take turns going first so a
    /// busy one cannot starve the other.
    pub(super) fn poll(
        &self,
        cx: &mut Context<'_>,
        client: &TcpStream,
        server: Option<&TcpStream>,
        server_first: bool,
    ) -> Poll<io::Result<Event>> {
        let poll_server = |cx: &mut Context<'_>| -> Poll<io::Result<Event>> {
            let Some(server) = server else {
                return Poll::Pending;
            };
            if self.read_server {
                if let Poll::Ready(r) = server.poll_read_ready(cx) {
                    return Poll::Ready(r.map(|_| Event::ServerReadable));
                }
            }
            if self.write_server {
                if let Poll::Ready(r) = server.poll_write_ready(cx) {
                    return Poll::Ready(r.map(|_| Event::Writable));
                }
            }
            Poll::Pending
        };
        if server_first {
            if let Poll::Ready(event) = poll_server(cx) {
                return Poll::Ready(event);
            }
        }
        if self.read_client {
            if let Poll::Ready(r) = client.poll_read_ready(cx) {
                return Poll::Ready(r.map(|_| Event::ClientReadable));
            }
        }
        if self.write_client {
            if let Poll::Ready(r) = client.poll_write_ready(cx) {
                return Poll::Ready(r.map(|_| Event::Writable));
            }
        }
        match server_first {
            true => Poll::Pending,
            false => poll_server(cx),
        }
    }
}
