//! Framing: a message is a one-byte tag, a four-byte big-endian length that counts
//! itself, and the body. The relay looks at the header only and forwards the rest.

use bytes::{Bytes, BytesMut};

/// Tag byte plus length field.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0} (minimum is 4)")]
    TooShort(u32),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
}

/// Whether `tag` is a message a client may send once its session has started (as
/// PostgreSQL's PostgresMain accepts them). Anything else is refused by the proxy,
/// not passed to a server connection that others will use after it.
pub fn is_frontend_message(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'H' | b'S' | b'F' | b'X' | b'd' | b'c' | b'f'
    )
}

/// One whole message: header and body in one shared buffer, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// The total length (header included) of the message at the start of `buf`, once its
/// header is there. The length is checked against `max` before anyone reserves for it.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::TooShort(len));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLong { len: total, max });
    }
    Ok(Some(total))
}

/// Splits the first whole message off `buf`; `None` until all of it has arrived.
/// Cancel-safe: nothing is consumed unless a whole frame is returned.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    match frame_len(buf, max)? {
        Some(n) if buf.len() >= n => Ok(Some(Frame {
            bytes: buf.split_to(n).freeze(),
        })),
        _ => Ok(None),
    }
}

/// How many more bytes the message at the start of `buf` needs (0 when whole or when
/// the header itself is incomplete).
pub fn missing_bytes(buf: &[u8], max: usize) -> usize {
    match frame_len(buf, max) {
        Ok(Some(n)) => n.saturating_sub(buf.len()),
        _ => 0,
    }
}

/// Reads a NUL-terminated string at the start of `buf`; returns it and the rest.
pub fn read_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(0, buf)?;
    Some((&buf[..end], &buf[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_header_and_body() {
        let mut buf = BytesMut::from(&b"Z\0\0\0"[..]);
        assert_eq!(split_frame(&mut buf, 100), Ok(None));
        buf.extend_from_slice(b"\x05");
        assert_eq!(split_frame(&mut buf, 100), Ok(None));
        assert_eq!(missing_bytes(&buf, 100), 1);
        buf.extend_from_slice(b"IQ");
        let frame = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(frame.tag(), b'Z');
        assert_eq!(frame.body(), b"I");
        assert_eq!(&buf[..], b"Q");
    }

    #[test]
    fn rejects_short_and_oversized_lengths() {
        assert_eq!(frame_len(b"Q\0\0\0\x03", 100), Err(FrameError::TooShort(3)));
        assert_eq!(
            frame_len(b"Q\x7f\xff\xff\xff", 1 << 20),
            Err(FrameError::TooLong {
                len: 0x8000_0000,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn empty_body_is_a_frame() {
        let mut buf = BytesMut::from(&b"S\0\0\0\x04X"[..]);
        let frame = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(frame.tag(), b'S');
        assert!(frame.body().is_empty());
    }

    #[test]
    fn cstr() {
        assert_eq!(read_cstr(b"abc\0rest"), Some((&b"abc"[..], &b"rest"[..])));
        assert_eq!(read_cstr(b"abc"), None);
    }
}
