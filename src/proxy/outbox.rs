//! Bytes queued towards one peer: whole frames as shared `Bytes`, written with one
//! write (vectored when there are several chunks) per batch, never copied.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;

/// Slices handed to one vectored write; more than enough for a batch.
const MAX_SLICES: usize = 64;

#[derive(Default)]
pub struct Outbox {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Outbox {
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.chunks.push_back(bytes);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives the queue's memory back while nothing is queued (an idle client).
    pub fn release(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            self.chunks = VecDeque::new();
        }
    }

    /// Writes what the socket takes now, without waiting. Partial writes leave the
    /// rest queued for the next writable event.
    pub fn flush_now(&mut self, stream: &TcpStream) -> io::Result<()> {
        while !self.is_empty() {
            let result = if self.chunks.len() == 1 {
                // One chunk (the usual batch): a plain send.
                stream.try_write(&self.chunks[0])
            } else {
                // On the stack: a flush allocates nothing.
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
                    *slot = IoSlice::new(chunk);
                    n += 1;
                }
                stream.try_write_vectored(&slices[..n])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front_mut().expect("consumed more than queued");
            if front.len() <= n {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_spans_chunks() {
        let mut outbox = Outbox::default();
        outbox.push(Bytes::from_static(b"abc"));
        outbox.push(Bytes::new());
        outbox.push(Bytes::from_static(b"defg"));
        assert_eq!(outbox.len(), 7);
        outbox.consume(4);
        assert_eq!(outbox.len(), 3);
        assert_eq!(&outbox.chunks[0][..], b"efg");
        outbox.consume(3);
        assert!(outbox.is_empty());
    }

    #[test]
    fn an_empty_outbox_gives_its_memory_back() {
        let mut outbox = Outbox::default();
        outbox.push(Bytes::from_static(b"abc"));
        outbox.release();
        assert!(
            outbox.chunks.capacity() > 0,
            "kept while something is queued"
        );
        outbox.consume(3);
        outbox.release();
        assert_eq!(outbox.chunks.capacity(), 0);
    }
}
