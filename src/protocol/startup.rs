//! Startup-phase packets. They have no tag byte: a four-byte length, a four-byte code
//! (protocol version or request code), then the body.

use bytes::{Buf, BytesMut};

use super::frame::read_cstr;

/// A startup packet longer than this is refused, as PostgreSQL itself does.
pub const MAX_STARTUP_LEN: usize = 10_000;
/// The smallest packet: length and code.
pub const MIN_STARTUP_LEN: usize = 8;

pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// The protocol minor version the proxy speaks.
pub const SUPPORTED_MINOR: u16 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Minor protocol version the client asked for (major is always 3).
    pub minor: u16,
    /// Parameters in the order the client sent them, `_pq_.` options excluded.
    pub params: Vec<(String, String)>,
    /// `_pq_.` protocol options, which this proxy does not recognise.
    pub protocol_options: Vec<String>,
}

impl StartupMessage {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client must be told which protocol we speak.
    pub fn needs_negotiation(&self) -> bool {
        self.minor > SUPPORTED_MINOR || !self.protocol_options.is_empty()
    }

    /// Why the proxy cannot serve what this startup asks for, if it cannot: a
    /// replication connection, or `options` other than the settings it carries to
    /// server connections (`-c name=value`, `--name=value`). Served as an ordinary
    /// session instead, such a client would silently get something else.
    pub fn unsupported(&self) -> Option<String> {
        for (name, value) in &self.params {
            if name == "replication" && !is_false(value) {
                return Some(format!(
                    "replication connections (replication={value}) are not supported by \
                     pgtenant; connect to the PostgreSQL server directly"
                ));
            }
            if name == "options" {
                if let Some(word) = unsupported_option(value) {
                    return Some(format!(
                        "startup option \"{word}\" is not supported by pgtenant; options may \
                         only set parameters (-c name=value or --name=value)"
                    ));
                }
            }
        }
        None
    }
}

/// The server's boolean spellings of false (`replication=false` is a normal session).
fn is_false(value: &str) -> bool {
    let value = value.trim().to_ascii_lowercase();
    matches!(value.as_str(), "0" | "n" | "no" | "of" | "off")
        || (!value.is_empty() && "false".starts_with(&value))
}

/// Splits a libpq `options` value as the server does: whitespace separates words, a
/// backslash escapes the next character.
pub fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                words.extend((!word.is_empty()).then(|| std::mem::take(&mut word)))
            }
            c => word.push(c),
        }
    }
    words.extend((!word.is_empty()).then_some(word));
    words
}

/// The first word of an `options` value that is not part of a parameter setting.
fn unsupported_option(options: &str) -> Option<String> {
    let mut words = split_options(options).into_iter();
    while let Some(word) = words.next() {
        let setting = match word.as_str() {
            "-c" => words.next(),
            _ => word
                .strip_prefix("-c")
                .or_else(|| word.strip_prefix("--"))
                .map(str::to_string),
        };
        // `name=value` with a name: anything else is not a setting.
        let is_setting = setting.is_some_and(|s| s.find('=').is_some_and(|at| at > 0));
        if !is_setting {
            return Some(word);
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup(StartupMessage),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet: {0} bytes (minimum is 8)")]
    TooShort(usize),
    #[error("startup packet of {0} bytes exceeds the limit of 10000 bytes")]
    TooLong(usize),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Parses one startup packet off `buf`; `None` until it has fully arrived.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len < MIN_STARTUP_LEN {
        return Err(StartupError::TooShort(len));
    }
    if len > MAX_STARTUP_LEN {
        return Err(StartupError::TooLong(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    let code = packet.get_u32();
    let body = &packet[..];
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if !body.is_empty() => {
            Err(StartupError::Malformed("encryption request with a body"))
        }
        SSL_REQUEST_CODE => Ok(Some(StartupPacket::SslRequest)),
        GSSENC_REQUEST_CODE => Ok(Some(StartupPacket::GssEncRequest)),
        CANCEL_REQUEST_CODE => {
            if body.len() != 8 {
                return Err(StartupError::Malformed("cancel request must carry 8 bytes"));
            }
            let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            Ok(Some(StartupPacket::Cancel(CancelKey { pid, secret })))
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            parse_params(body).map(|(params, protocol_options)| {
                Some(StartupPacket::Startup(StartupMessage {
                    minor,
                    params,
                    protocol_options,
                }))
            })
        }
    }
}

type Params = (Vec<(String, String)>, Vec<String>);

fn parse_params(mut body: &[u8]) -> Result<Params, StartupError> {
    let mut params = Vec::new();
    let mut options = Vec::new();
    loop {
        let (key, rest) = read_cstr(body).ok_or(StartupError::Malformed("missing terminator"))?;
        if key.is_empty() {
            if !rest.is_empty() {
                return Err(StartupError::Malformed("data after the terminator"));
            }
            return Ok((params, options));
        }
        let (value, rest) =
            read_cstr(rest).ok_or(StartupError::Malformed("parameter without a value"))?;
        let key = utf8(key)?;
        let value = utf8(value)?;
        if key.starts_with("_pq_.") {
            options.push(key);
        } else {
            params.push((key, value));
        }
        body = rest;
    }
}

fn utf8(bytes: &[u8]) -> Result<String, StartupError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StartupError::Malformed("parameter is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn packet(code: u32, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32((body.len() + 8) as u32);
        buf.put_u32(code);
        buf.put_slice(body);
        buf
    }

    #[test]
    fn startup_with_params() {
        let mut buf = packet(3 << 16, b"user\0app\0database\0acme\0_pq_.x\0y\0\0");
        let Some(StartupPacket::Startup(msg)) = parse_startup(&mut buf).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(msg.get("user"), Some("app"));
        assert_eq!(msg.get("database"), Some("acme"));
        assert_eq!(msg.protocol_options, vec!["_pq_.x".to_string()]);
        assert!(msg.needs_negotiation());
        assert!(buf.is_empty());
    }

    #[test]
    fn newer_minor_needs_negotiation() {
        let mut buf = packet((3 << 16) | 2, b"user\0app\0\0");
        let Some(StartupPacket::Startup(msg)) = parse_startup(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(msg.minor, 2);
        assert!(msg.needs_negotiation());
    }

    #[test]
    fn requests() {
        assert_eq!(
            parse_startup(&mut packet(SSL_REQUEST_CODE, b"")).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            parse_startup(&mut packet(GSSENC_REQUEST_CODE, b"")).unwrap(),
            Some(StartupPacket::GssEncRequest)
        );
        assert_eq!(
            parse_startup(&mut packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 0, 0, 0, 9])).unwrap(),
            Some(StartupPacket::Cancel(CancelKey { pid: 7, secret: 9 }))
        );
    }

    #[test]
    fn refuses_bad_packets() {
        let mut short = BytesMut::from(&[0u8, 0, 0, 4][..]);
        assert_eq!(parse_startup(&mut short), Err(StartupError::TooShort(4)));
        let mut long = BytesMut::from(&[0u8, 1, 0, 0][..]);
        assert_eq!(parse_startup(&mut long), Err(StartupError::TooLong(65536)));
        assert!(matches!(
            parse_startup(&mut packet(2 << 16, b"")),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        assert!(matches!(
            parse_startup(&mut packet(3 << 16, b"user\0app")),
            Err(StartupError::Malformed(_))
        ));
        assert!(matches!(
            parse_startup(&mut packet(3 << 16, b"user\0app\0\0junk")),
            Err(StartupError::Malformed(_))
        ));
    }

    fn startup(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            minor: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            protocol_options: vec![],
        }
    }

    #[test]
    fn replication_is_not_served() {
        for off in ["false", "0", "off", "no", "F", "fal"] {
            assert_eq!(
                startup(&[("replication", off)]).unsupported(),
                None,
                "{off}"
            );
        }
        for on in ["database", "true", "on", "1", "yes"] {
            let why = startup(&[("replication", on)]).unsupported().unwrap();
            assert!(why.contains(&format!("replication={on}")), "{why}");
        }
    }

    #[test]
    fn only_settings_in_options() {
        let ok = "-c statement_timeout=5s --work-mem=8MB -capplication_name=a\\ b";
        assert_eq!(startup(&[("options", ok)]).unsupported(), None);
        for (options, word) in [
            ("-d 5", "-d"),
            ("-c foo", "-c"),
            ("--x", "--x"),
            ("-c =1", "-c"),
        ] {
            let why = startup(&[("options", options)]).unsupported().unwrap();
            assert!(why.contains(&format!("\"{word}\"")), "{options}: {why}");
        }
    }

    #[test]
    fn partial_packet_waits() {
        let full = packet(3 << 16, b"user\0app\0\0");
        let mut buf = BytesMut::from(&full[..6]);
        assert_eq!(parse_startup(&mut buf), Ok(None));
        assert_eq!(buf.len(), 6);
    }
}
