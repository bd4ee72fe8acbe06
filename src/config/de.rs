//! Serde deserialization straight from the located tree. Its error type keeps what
//! serde knows (the key path, the valid keys or values, what was expected and what
//! was found) so the message can say it in the settings' own words, and environment
//! text is typed on demand (`"5"` becomes a number where a number is expected, `a,b`
//! a list where a list is).

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::tree::{Node, Value};

/// One deserialization error and the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeError {
    /// Keys from the root; list items are left out (the error names the list).
    pub path: Vec<String>,
    /// The error is about the last key itself (unknown), not its value.
    pub at_key: bool,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    UnknownKey { valid: &'static [&'static str] },
    UnknownValue { value: String, valid: Vec<String> },
    Mismatch { expected: String, found: String },
    MissingKey(&'static str),
    Other(String),
}

impl DeError {
    fn new(kind: Kind) -> DeError {
        DeError {
            path: Vec::new(),
            at_key: false,
            kind,
        }
    }

    fn under(mut self, key: &str) -> DeError {
        self.path.insert(0, key.to_string());
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.path.join("."), self.kind)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(Kind::Other(msg.to_string()))
    }

    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DeError::new(Kind::Mismatch {
            expected: expected_text(&exp.to_string()),
            found: found_text(&unexp),
        })
    }

    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        Self::invalid_type(unexp, exp)
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        DeError::new(Kind::Mismatch {
            expected: expected_text(&exp.to_string()),
            found: format!("{len} items"),
        })
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(Kind::UnknownValue {
            value: variant.to_string(),
            valid: expected.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(Kind::UnknownKey { valid: expected })
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::new(Kind::MissingKey(field))
    }
}

/// Serde's names for what a type expects, in the words of a settings file.
fn expected_text(serde_says: &str) -> String {
    let text = match serde_says {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "path string" | "a borrowed string" => "a string",
        "a sequence" => "a list such as [\"a\", \"b\"]",
        "a duration" => "a duration such as \"5s\" or \"250ms\"",
        "a map" => "a table",
        s if s.starts_with("struct ") => "a table",
        s => s,
    };
    text.to_string()
}

/// What was found, written as it would be in the file.
fn found_text(unexp: &de::Unexpected) -> String {
    use de::Unexpected as U;
    match unexp {
        U::Str(s) => format!("{s:?}"),
        U::Signed(i) => i.to_string(),
        U::Unsigned(u) => u.to_string(),
        U::Float(f) => f.to_string(),
        U::Bool(b) => b.to_string(),
        U::Char(c) => format!("{:?}", c.to_string()),
        U::Seq => "a list".into(),
        U::Map => "a table".into(),
        U::Unit => "nothing".into(),
        other => other.to_string(),
    }
}

fn found_node(node: &Node) -> String {
    match &node.value {
        Value::Table(_) => "a table".into(),
        Value::Array(_) => "a list".into(),
        Value::String(s) | Value::Env(s) => format!("{s:?}"),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.clone(),
    }
}

/// Deserializes settings from a (sub)tree.
pub struct NodeDe<'a>(pub &'a Node);

impl NodeDe<'_> {
    fn env(&self) -> Option<&str> {
        match &self.0.value {
            Value::Env(text) => Some(text.trim()),
            _ => None,
        }
    }
}

macro_rules! typed_from_env {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.env().map(str::parse::<$ty>) {
                Some(Ok(v)) => visitor.$visit(v),
                _ => self.deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::String(s) | Value::Env(s) | Value::Datetime(s) => visitor.visit_str(s),
            Value::Integer(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Boolean(b) => visitor.visit_bool(*b),
            Value::Array(items) => visitor.visit_seq(Seq {
                items: items.iter(),
            }),
            Value::Table(entries) => visitor.visit_map(Map { entries, next: 0 }),
        }
    }

    typed_from_env! {
        deserialize_bool => visit_bool: bool,
        deserialize_i8 => visit_i64: i64,
        deserialize_i16 => visit_i64: i64,
        deserialize_i32 => visit_i64: i64,
        deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u64: u64,
        deserialize_u16 => visit_u64: u64,
        deserialize_u32 => visit_u64: u64,
        deserialize_u64 => visit_u64: u64,
        deserialize_f32 => visit_f64: f64,
        deserialize_f64 => visit_f64: f64,
    }

    /// A list from the environment is comma-separated: `database,user`.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Some(text) = self.env() else {
            return self.deserialize_any(visitor);
        };
        let items: Vec<Node> = text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| Node {
                value: Value::Env(item.to_string()),
                origin: self.0.origin.clone(),
            })
            .collect();
        visitor.visit_seq(Seq {
            items: items.iter(),
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::String(s) | Value::Env(s) => visitor.visit_enum(s.trim().into_deserializer()),
            _ => Err(DeError::new(Kind::Mismatch {
                expected: one_of(variants),
                found: found_node(self.0),
            })),
        }
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct tuple tuple_struct map struct
        identifier ignored_any
    }
}

/// `"a", "b" or "c"`.
pub fn one_of(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

struct Seq<'a> {
    items: std::slice::Iter<'a, Node>,
}

impl<'de> de::SeqAccess<'de> for Seq<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed.deserialize(NodeDe(node)).map(Some),
            None => Ok(None),
        }
    }
}

struct Map<'a> {
    entries: &'a [(String, Node)],
    next: usize,
}

impl<'de> de::MapAccess<'de> for Map<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, _)) = self.entries.get(self.next) else {
            return Ok(None);
        };
        let de: de::value::StrDeserializer<DeError> = key.as_str().into_deserializer();
        seed.deserialize(de).map(Some).map_err(|e| {
            let mut e = e.under(key);
            e.at_key = true;
            e
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, node) = &self.entries[self.next];
        self.next += 1;
        seed.deserialize(NodeDe(node)).map_err(|e| e.under(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tree::{apply_env, parse};
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        size: usize,
        #[serde(default)]
        names: Vec<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Inner,
    }

    fn de(text: &str, env: &[(&str, &str)]) -> Result<Outer, DeError> {
        let mut root = parse(text).unwrap();
        apply_env(
            &mut root,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Outer::deserialize(NodeDe(&root))
    }

    #[test]
    fn unknown_key_names_its_path_and_the_valid_keys() {
        let err = de("[inner]\nsize = 1\nsise = 2\n", &[]).unwrap_err();
        assert_eq!(err.path, vec!["inner", "sise"]);
        assert!(err.at_key);
        assert_eq!(
            err.kind,
            Kind::UnknownKey {
                valid: &["size", "names"]
            }
        );
    }

    #[test]
    fn environment_text_is_typed_on_demand() {
        let got = de(
            "[inner]\nsize = 1\n",
            &[
                ("PGTENANT__INNER__SIZE", "7"),
                ("PGTENANT__INNER__NAMES", "a, b"),
            ],
        )
        .unwrap();
        assert_eq!(got.inner.size, 7);
        assert_eq!(got.inner.names, vec!["a", "b"]);
        let err = de("", &[("PGTENANT__INNER__SIZE", "seven")]).unwrap_err();
        assert_eq!(err.path, vec!["inner", "size"]);
        assert_eq!(
            err.kind,
            Kind::Mismatch {
                expected: "a whole number (0 or more)".into(),
                found: "\"seven\"".into()
            }
        );
    }

    #[test]
    fn lists_name_their_key() {
        let err = de("[inner]\nsize = 1\nnames = [\"a\", 2]\n", &[]).unwrap_err();
        assert_eq!(err.path, vec!["inner", "names"]);
        assert!(!err.at_key);
    }

    #[test]
    fn one_of_reads_naturally() {
        assert_eq!(one_of(&["a"]), "\"a\"");
        assert_eq!(one_of(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
    }
}
