//! TLS connections reach the relay through an in-process socket pair.
//!
//! The relay (and the parking lot) work on `TcpStream` readiness directly
//! (`try_read`, `try_write_vectored`, `poll_read_ready`, epoll registration), which
//! keeps the plain-TCP path free of any indirection. A TLS stream has no such
//! readiness: its bytes must be decrypted first. So a TLS connection is handed to the
//! relay as one end of a Unix socket pair, and a small task moves bytes between the
//! other end and the TLS stream. Plain connections pay nothing for TLS; a TLS
//! connection pays two extra copies through the kernel per message, small beside the
//! encryption itself, and can still park (its pipe end parks; the task waits on the
//! TLS socket).

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest chunk moved at once; a TLS record holds at most 16 KiB.
const CHUNK: usize = 32 * 1024;

/// Returns a stream that reads and writes `stream`'s plaintext through a socket pair
/// moved by a task of its own. The task ends when either side closes.
pub fn pipe<S>(stream: S) -> io::Result<TcpStream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, relay_end) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    relay_end.set_nonblocking(true)?;
    let ours = tokio::net::UnixStream::from_std(ours)?;
    // SAFETY: the descriptor is a freshly made, open socket that we own and hand over
    // whole. A stream socket of the Unix family answers every call the relay makes on
    // a `TcpStream` (read, write, writev, shutdown, readiness); the TCP-only ones
    // (`set_nodelay`, `peer_addr`) fail harmlessly and are not relied on.
    let relay_end = unsafe { std::net::TcpStream::from_raw_fd(relay_end.into_raw_fd()) };
    let relay_end = TcpStream::from_std(relay_end)?;
    tokio::spawn(pump(stream, ours));
    Ok(relay_end)
}

/// Moves bytes both ways until one side ends, then closes the other side's write half
/// so its reader sees the end too.
async fn pump<S>(stream: S, pipe: tokio::net::UnixStream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // What was written before the hand-over may still sit in the TLS layer.
    let mut stream = stream;
    if stream.flush().await.is_err() {
        return;
    }
    let (mut stream_read, mut stream_write) = tokio::io::split(stream);
    let (mut pipe_read, mut pipe_write) = pipe.into_split();
    let inbound = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stream_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if pipe_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = pipe_write.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match pipe_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    // Nothing more queued right now: send what the TLS layer holds.
                    if stream_write.flush().await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = stream_write.shutdown().await;
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_cross_both_ways_and_an_end_is_seen() {
        let (near, mut far) = tokio::io::duplex(1024);
        let relay = pipe(near).unwrap();
        relay.writable().await.unwrap();
        let mut relay = relay;
        relay.write_all(b"to the client").await.unwrap();
        let mut got = [0u8; 13];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"to the client");
        far.write_all(b"from it").await.unwrap();
        let mut got = [0u8; 7];
        relay.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from it");
        drop(far);
        let mut rest = Vec::new();
        assert_eq!(relay.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
