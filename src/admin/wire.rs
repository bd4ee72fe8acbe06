//! The console's answers on the wire: RowDescription and DataRow with typed columns
//! (text or binary, as the client's Bind asked), and the small fixed messages.

use bytes::{BufMut, BytesMut};

use crate::protocol::messages::message;

/// A column type the console answers with (PostgreSQL type OIDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Bool,
    Int8,
    Float8,
    Text,
}

impl Type {
    fn oid(self) -> u32 {
        match self {
            Type::Bool => 16,
            Type::Int8 => 20,
            Type::Float8 => 701,
            Type::Text => 25,
        }
    }

    fn size(self) -> i16 {
        match self {
            Type::Bool => 1,
            Type::Int8 | Type::Float8 => 8,
            Type::Text => -1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: Type,
}

pub const fn col(name: &'static str, ty: Type) -> Column {
    Column { name, ty }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::Int(n as i64)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(n as i64)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Value {
        Value::Float(n)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Result format codes from a Bind: none means text for all, one applies to all,
/// otherwise one per column.
#[derive(Debug, Clone, Default)]
pub struct Formats(pub Vec<i16>);

impl Formats {
    fn binary(&self, column: usize) -> bool {
        match self.0.len() {
            0 => false,
            1 => self.0[0] == 1,
            _ => self.0.get(column) == Some(&1),
        }
    }
}

pub fn row_description(buf: &mut BytesMut, columns: &[Column], formats: &Formats) {
    message(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for (i, c) in columns.iter().enumerate() {
            b.put_slice(c.name.as_bytes());
            b.put_u8(0);
            b.put_u32(0); // table oid
            b.put_i16(0); // column number
            b.put_u32(c.ty.oid());
            b.put_i16(c.ty.size());
            b.put_i32(-1); // type modifier
            b.put_i16(i16::from(formats.binary(i)));
        }
    });
}

pub fn data_row(buf: &mut BytesMut, values: &[Value], formats: &Formats) {
    message(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for (i, v) in values.iter().enumerate() {
            let binary = formats.binary(i);
            let bytes: Option<Vec<u8>> = match (v, binary) {
                (Value::Null, _) => None,
                (Value::Bool(v), true) => Some(vec![u8::from(*v)]),
                (Value::Bool(v), false) => Some(if *v { b"t".to_vec() } else { b"f".to_vec() }),
                (Value::Int(v), true) => Some(v.to_be_bytes().to_vec()),
                (Value::Int(v), false) => Some(v.to_string().into_bytes()),
                (Value::Float(v), true) => Some(v.to_be_bytes().to_vec()),
                (Value::Float(v), false) => Some(format!("{v:.3}").into_bytes()),
                (Value::Text(v), _) => Some(v.as_bytes().to_vec()),
            };
            match bytes {
                None => b.put_i32(-1),
                Some(bytes) => {
                    b.put_i32(bytes.len() as i32);
                    b.put_slice(&bytes);
                }
            }
        }
    });
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    message(buf, b'C', |b| {
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
    });
}

/// A message with no body: ParseComplete '1', BindComplete '2', CloseComplete '3',
/// NoData 'n', EmptyQueryResponse 'I'.
pub fn empty(buf: &mut BytesMut, tag: u8) {
    message(buf, tag, |_| {});
}

/// ParameterDescription: console statements take no parameters.
pub fn no_parameters(buf: &mut BytesMut) {
    message(buf, b't', |b| b.put_i16(0));
}

pub fn notice(buf: &mut BytesMut, text: &str) {
    message(buf, b'N', |b| {
        for (kind, value) in [
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "00000"),
            (b'M', text),
        ] {
            b.put_u8(kind);
            b.put_slice(value.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_text_rows() {
        let mut buf = BytesMut::new();
        let values = [Value::Int(7), Value::Null, Value::Bool(true)];
        data_row(&mut buf, &values, &Formats(vec![1]));
        // tag, length, 3 columns, int8 of 8 bytes, NULL, bool of 1 byte
        assert_eq!(buf[0], b'D');
        assert_eq!(&buf[5..7], &[0, 3]);
        assert_eq!(&buf[7..11], &8i32.to_be_bytes());
        assert_eq!(&buf[11..19], &7i64.to_be_bytes());
        assert_eq!(&buf[19..23], &(-1i32).to_be_bytes());
        assert_eq!(&buf[23..28], &[0, 0, 0, 1, 1]);
        let mut text = BytesMut::new();
        data_row(&mut text, &values[..1], &Formats::default());
        assert_eq!(&text[7..], &[0, 0, 0, 1, b'7']);
    }
}
