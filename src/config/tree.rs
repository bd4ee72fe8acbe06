//! The settings as a tree of values that remember where each came from: a place in
//! the file (read with `toml_edit`, which keeps byte spans) or an environment
//! variable. Environment overrides are merged into the tree here, so every later
//! error can name its origin.

use std::ops::Range;

/// One value and where it was set.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Entries in the order they were written.
    Table(Vec<(String, Node)>),
    Array(Vec<Node>),
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    /// An environment variable's text, typed when the setting's type asks for it.
    Env(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Byte offsets in the file of the key and of the value, when known.
    File {
        key: Option<usize>,
        value: Option<usize>,
    },
    /// Set by this environment variable.
    Env(String),
    /// Made up: the root, or a section no source named.
    Nowhere,
}

/// The prefix of environment overrides: `PGTENANT__SECTION__KEY`.
pub const ENV_PREFIX: &str = "PGTENANT__";
const ENV_SEPARATOR: &str = "__";

/// A TOML syntax error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: Option<usize>,
    pub message: String,
}

/// Parses TOML text into a located tree.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| SyntaxError {
        offset: e.span().map(|s| s.start),
        message: one_line(e.message()),
    })?;
    Ok(Node {
        value: table(doc.as_table()),
        origin: Origin::Nowhere,
    })
}

/// toml_edit's messages span lines ("invalid key\nexpected ..."): join them.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

fn start(span: Option<Range<usize>>) -> Option<usize> {
    span.map(|s| s.start)
}

fn table(table: &toml_edit::Table) -> Value {
    let entries = table.iter().filter_map(|(name, item)| {
        let key = start(table.key(name).and_then(|k| k.span()));
        Some((name.to_string(), item_node(item, key)?))
    });
    Value::Table(entries.collect())
}

fn item_node(item: &toml_edit::Item, key: Option<usize>) -> Option<Node> {
    let (value, at) = match item {
        toml_edit::Item::None => return None,
        toml_edit::Item::Value(v) => return Some(value_node(v, key)),
        toml_edit::Item::Table(t) => (table(t), start(t.span())),
        toml_edit::Item::ArrayOfTables(a) => {
            let tables = a.iter().map(|t| Node {
                value: table(t),
                origin: Origin::File {
                    key,
                    value: start(t.span()),
                },
            });
            (Value::Array(tables.collect()), start(a.span()))
        }
    };
    let origin = Origin::File {
        key,
        value: at.or(key),
    };
    Some(Node { value, origin })
}

fn value_node(value: &toml_edit::Value, key: Option<usize>) -> Node {
    use toml_edit::Value as V;
    let v = match value {
        V::String(s) => Value::String(s.value().clone()),
        V::Integer(i) => Value::Integer(*i.value()),
        V::Float(f) => Value::Float(*f.value()),
        V::Boolean(b) => Value::Boolean(*b.value()),
        V::Datetime(d) => Value::Datetime(d.value().to_string()),
        V::Array(a) => Value::Array(a.iter().map(|v| value_node(v, None)).collect()),
        V::InlineTable(t) => {
            let entries = t.iter().map(|(name, v)| {
                let key = start(t.key(name).and_then(|k| k.span()));
                (name.to_string(), value_node(v, key))
            });
            Value::Table(entries.collect())
        }
    };
    Node {
        value: v,
        origin: Origin::File {
            key,
            value: start(value.span()).or(key),
        },
    }
}

impl Node {
    pub fn empty_table() -> Node {
        Node {
            value: Value::Table(Vec::new()),
            origin: Origin::Nowhere,
        }
    }

    /// The node at a key path, if there is one.
    pub fn get(&self, path: &[&str]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        match &self.value {
            Value::Table(entries) => entries
                .iter()
                .find(|(k, _)| k == first)
                .and_then(|(_, node)| node.get(rest)),
            _ => None,
        }
    }

    /// Sets the value at a key path, making tables on the way (replacing anything
    /// else that stands there).
    pub fn set(&mut self, path: &[String], node: Node) {
        let Some((first, rest)) = path.split_first() else {
            *self = node;
            return;
        };
        if !matches!(self.value, Value::Table(_)) {
            self.value = Value::Table(Vec::new());
        }
        let Value::Table(entries) = &mut self.value else {
            unreachable!("made a table above")
        };
        let at = match entries.iter().position(|(k, _)| k == first) {
            Some(at) => at,
            None => {
                let origin = node.origin.clone();
                entries.push((first.clone(), Node::empty_table()));
                let at = entries.len() - 1;
                entries[at].1.origin = origin;
                at
            }
        };
        entries[at].1.set(rest, node);
    }

    /// Removes the entry at a key path; `false` if there is none.
    pub fn remove(&mut self, path: &[String]) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return false;
        };
        let Value::Table(entries) = &mut self.value else {
            return false;
        };
        let Some(at) = entries.iter().position(|(k, _)| k == first) else {
            return false;
        };
        if rest.is_empty() {
            entries.remove(at);
            true
        } else {
            entries[at].1.remove(rest)
        }
    }
}

/// Merges `PGTENANT__SECTION__KEY=value` variables into the tree, in name order; they
/// win over the file. Names are lower-cased; `PGTENANT_LOG` (one underscore) and
/// other variables are not settings.
pub fn apply_env(root: &mut Node, vars: impl IntoIterator<Item = (String, String)>) {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, text) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        let node = Node {
            value: Value::Env(text),
            origin: Origin::Env(name),
        };
        root.set(&path, node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let text = "[pool]\npool_size = 5\n";
        let root = parse(text).unwrap();
        let node = root.get(&["pool", "pool_size"]).unwrap();
        assert_eq!(node.value, Value::Integer(5));
        assert_eq!(
            node.origin,
            Origin::File {
                key: Some(7),
                value: Some(19)
            }
        );
    }

    #[test]
    fn environment_wins_and_makes_sections() {
        let mut root = parse("[pool]\npool_size = 5\n").unwrap();
        apply_env(
            &mut root,
            [
                ("PGTENANT__POOL__POOL_SIZE".to_string(), "7".to_string()),
                ("PGTENANT__PROXY__LISTEN".to_string(), "x:1".to_string()),
                ("PGTENANT_LOG".to_string(), "debug".to_string()),
            ],
        );
        let size = root.get(&["pool", "pool_size"]).unwrap();
        assert_eq!(size.value, Value::Env("7".into()));
        assert_eq!(size.origin, Origin::Env("PGTENANT__POOL__POOL_SIZE".into()));
        let proxy = root.get(&["proxy"]).unwrap();
        assert_eq!(proxy.origin, Origin::Env("PGTENANT__PROXY__LISTEN".into()));
        assert!(root.get(&["log"]).is_none());
    }

    #[test]
    fn syntax_error_has_an_offset() {
        let err = parse("[pool]\npool_size = = 5\n").unwrap_err();
        assert!(err.offset.is_some(), "{err:?}");
    }
}
