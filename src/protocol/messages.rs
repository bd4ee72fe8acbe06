//! Builders for the messages the proxy writes itself, and readers for the few it looks
//! into. Builders append to a `BytesMut` so several can be batched into one write.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::read_cstr;
use super::sqlstate::SqlState;

/// Severity of an error the proxy reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Writes a tagged message: the body is produced by `body` and the length patched in.
pub fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let len_at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = (buf.len() - len_at) as u32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; it cannot come from our own text.
    buf.put_slice(s.replace('\0', "").as_bytes());
    buf.put_u8(0);
}

pub fn error_response(buf: &mut BytesMut, severity: Severity, code: SqlState, text: &str) {
    error_response_with_detail(buf, severity, code, text, None);
}

pub fn error_response_with_detail(
    buf: &mut BytesMut,
    severity: Severity,
    code: SqlState,
    text: &str,
    detail: Option<&str>,
) {
    message(buf, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, severity.as_str());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str());
        b.put_u8(b'C');
        put_cstr(b, code.code());
        b.put_u8(b'M');
        put_cstr(b, text);
        if let Some(detail) = detail {
            b.put_u8(b'D');
            put_cstr(b, detail);
        }
        b.put_u8(0);
    });
}

pub fn authentication_ok(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(0));
}

/// AuthenticationSASL with the mechanisms offered, most preferred first.
pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    message(buf, b'R', |b| {
        b.put_i32(10);
        for mechanism in mechanisms {
            put_cstr(b, mechanism);
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue (11) or AuthenticationSASLFinal (12).
pub fn authentication_sasl_data(buf: &mut BytesMut, code: i32, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(code);
        b.put_slice(data);
    });
}

pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    message(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn authentication_cleartext(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(3));
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    message(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    message(buf, b'Z', |b| b.put_u8(status));
}

pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: u16, unrecognized: &[String]) {
    message(buf, b'v', |b| {
        b.put_i32(minor as i32);
        b.put_i32(unrecognized.len() as i32);
        for option in unrecognized {
            put_cstr(b, option);
        }
    });
}

pub fn query(buf: &mut BytesMut, sql: &str) {
    message(buf, b'Q', |b| put_cstr(b, sql));
}

pub fn terminate(buf: &mut BytesMut) {
    message(buf, b'X', |_| {});
}

pub fn password_message(buf: &mut BytesMut, password: &[u8]) {
    message(buf, b'p', |b| {
        b.put_slice(password);
        b.put_u8(0);
    });
}

pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    message(buf, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'p', |b| b.put_slice(data));
}

/// An untagged startup message with the given parameters, protocol 3.0.
pub fn startup_message<'a>(
    buf: &mut BytesMut,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let len_at = buf.len();
    buf.put_u32(0);
    buf.put_u32(3 << 16);
    for (key, value) in params {
        put_cstr(buf, key);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    let len = (buf.len() - len_at) as u32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The fields of an ErrorResponse or NoticeResponse body that the proxy cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn parse_error_fields(mut body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields::default();
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        let Some((value, rest)) = read_cstr(rest) else {
            break;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'S' => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
        body = rest;
    }
    fields
}

/// The SQLSTATE field of an ErrorResponse body (empty when there is none), without
/// decoding the rest.
pub fn error_code(mut body: &[u8]) -> &[u8] {
    while let Some((&kind, rest)) = body.split_first() {
        let Some((value, rest)) = read_cstr(rest).filter(|_| kind != 0) else {
            break;
        };
        if kind == b'C' {
            return value;
        }
        body = rest;
    }
    &[]
}

/// Name and value of a ParameterStatus body.
pub fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = read_cstr(body)?;
    let (value, _) = read_cstr(rest)?;
    Some((
        std::str::from_utf8(name).ok()?,
        std::str::from_utf8(value).ok()?,
    ))
}

/// A whole message as `Bytes`, for tests and one-off writes.
pub fn build(f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::new();
    f(&mut buf);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::split_frame;
    use crate::protocol::sqlstate;

    #[test]
    fn error_response_round_trip() {
        let mut buf = BytesMut::from(
            &build(|b| {
                error_response(
                    b,
                    Severity::Fatal,
                    sqlstate::INVALID_CATALOG_NAME,
                    "no tenant",
                )
            })[..],
        );
        let frame = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.tag(), b'E');
        let fields = parse_error_fields(frame.body());
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.code, "3D000");
        assert_eq!(fields.message, "no tenant");
    }

    #[test]
    fn parameter_status_round_trip() {
        let bytes = build(|b| parameter_status(b, "TimeZone", "UTC"));
        assert_eq!(&bytes[..], b"S\0\0\0\x11TimeZone\0UTC\0");
        assert_eq!(
            parse_parameter_status(&bytes[5..]),
            Some(("TimeZone", "UTC"))
        );
    }

    #[test]
    fn fixed_messages() {
        assert_eq!(&build(authentication_ok)[..], b"R\0\0\0\x08\0\0\0\0");
        assert_eq!(&build(|b| ready_for_query(b, b'I'))[..], b"Z\0\0\0\x05I");
        assert_eq!(&build(terminate)[..], b"X\0\0\0\x04");
        assert_eq!(
            &build(|b| negotiate_protocol_version(b, 0, &["_pq_.a".into()]))[..],
            b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.a\0"
        );
    }

    #[test]
    fn startup_message_layout() {
        let bytes = build(|b| startup_message(b, [("user", "u")]));
        assert_eq!(&bytes[..], b"\0\0\0\x10\0\x03\0\0user\0u\0\0");
    }
}
