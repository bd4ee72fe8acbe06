//! Auth passthrough's lookup: a role's password verifier, fetched from the tenant's
//! own server through the host's `auth_user` and `passthrough.auth_query`.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

use super::auth::read_frame;
use super::connect::{connect, BackendError, BackendTarget};
use crate::protocol::messages::{self, parse_error_fields};

/// The last column of the query's first row for `role` (`$1`), or `None` when it
/// returns no row or a NULL (no such role, or one without a password).
pub async fn fetch_verifier(
    auth: &BackendTarget,
    query: &str,
    role: &str,
    timeout: Duration,
    max_message: usize,
) -> Result<Option<String>, BackendError> {
    let mut conn = connect(auth, timeout, max_message).await?;
    let mut out = BytesMut::new();
    // Extended protocol: the role name travels as a parameter, never as SQL text.
    messages::message(&mut out, b'P', |b| {
        b.put_u8(0);
        b.put_slice(query.as_bytes());
        b.put_u8(0);
        b.put_i16(0);
    });
    messages::message(&mut out, b'B', |b| {
        b.put_u8(0);
        b.put_u8(0);
        b.put_i16(0);
        b.put_i16(1);
        b.put_i32(role.len() as i32);
        b.put_slice(role.as_bytes());
        b.put_i16(0);
    });
    messages::message(&mut out, b'E', |b| {
        b.put_u8(0);
        b.put_i32(1);
    });
    messages::message(&mut out, b'S', |_| {});
    let exchange = async {
        conn.stream.write_all(&out).await?;
        let mut row = None;
        let mut error = None;
        loop {
            let frame = read_frame(&mut conn.stream, &mut conn.buf, max_message).await?;
            match frame.tag() {
                b'D' if row.is_none() => row = Some(last_column(frame.body())?),
                b'E' => error = Some(parse_error_fields(frame.body())),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(fields) => Err(BackendError::Refused(fields)),
            None => Ok(row.flatten()),
        }
    };
    let result = tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(BackendError::Timeout {
                address: auth.address.clone(),
                timeout,
            })
        });
    conn.close(None).await;
    result
}

/// The last column of a DataRow body, `None` for NULL.
fn last_column(body: &[u8]) -> Result<Option<String>, BackendError> {
    let short = || BackendError::Protocol("short DataRow from the auth query".into());
    let count = i16::from_be_bytes(
        body.get(..2)
            .ok_or_else(short)?
            .try_into()
            .expect("2 bytes"),
    );
    let mut rest = &body[2..];
    let mut last = None;
    for _ in 0..count {
        let len = i32::from_be_bytes(
            rest.get(..4)
                .ok_or_else(short)?
                .try_into()
                .expect("4 bytes"),
        );
        rest = &rest[4..];
        if len < 0 {
            last = None;
            continue;
        }
        let value = rest.get(..len as usize).ok_or_else(short)?;
        last = Some(String::from_utf8_lossy(value).into_owned());
        rest = &rest[len as usize..];
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_last_column() {
        let mut body = BytesMut::new();
        body.put_i16(2);
        body.put_i32(5);
        body.put_slice(b"alice");
        body.put_i32(3);
        body.put_slice(b"md5");
        assert_eq!(last_column(&body).unwrap().as_deref(), Some("md5"));
        let mut null = BytesMut::new();
        null.put_i16(1);
        null.put_i32(-1);
        assert_eq!(last_column(&null).unwrap(), None);
        assert!(last_column(&body[..6]).is_err());
    }
}
