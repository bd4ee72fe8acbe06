//! Turning a settings file and the environment into `Settings`, or into every problem
//! at once, each placed as `file:line:column` (or the environment variable that set
//! it) with its key.
//!
//! Serde stops at the first error, so a failed key is reported, taken out of the
//! tree (its default stands in) and the rest is read again, until nothing fails;
//! then the values are validated. This works for any section or key the settings
//! types declare, without a list of them here.

use serde::Deserialize;

use super::de::{one_of, DeError, Kind, NodeDe};
use super::tree::{self, Node, Origin};
use super::{ConfigError, Problem, Settings};

/// Where the settings text came from: its name in messages, and the text itself for
/// line and column numbers.
struct Source<'a> {
    name: &'a str,
    text: &'a str,
}

/// A problem and the order it is reported in: file positions first, top to bottom,
/// then environment variables by name.
struct Placed {
    order: (u8, usize, String),
    problem: Problem,
}

/// Reads settings from `text` (named `name` in messages) with `env` overrides.
pub(super) fn settings(
    name: &str,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let source = Source { name, text };
    let mut root = match tree::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let (location, _) = source.place(&Origin::File {
                key: None,
                value: e.offset,
            });
            let problem = Problem {
                file: location,
                key: String::new(),
                message: format!("invalid TOML: {}", e.message),
            };
            return Err(ConfigError::Invalid {
                problems: vec![problem],
            });
        }
    };
    tree::apply_env(&mut root, env);

    let mut placed = Vec::new();
    let settings = loop {
        match Settings::deserialize(NodeDe(&root)) {
            Ok(settings) => break Some(settings),
            Err(e) => {
                placed.push(source.problem_from(&root, &e));
                if !root.remove(&e.path) {
                    break None;
                }
            }
        }
    };
    let mut settings = settings;
    if let Some(settings) = &mut settings {
        // registry.file has a default; a url given without a file replaces it.
        if settings.registry.url.is_some() && root.get(&["registry", "file"]).is_none() {
            settings.registry.file = None;
        }
    }
    if let Some(settings) = &settings {
        for problem in settings.problems(name) {
            let path: Vec<&str> = problem.key.split('.').collect();
            let origin = origin_of(&root, &path, false);
            let (file, order) = source.place(&origin);
            placed.push(Placed {
                order,
                problem: Problem { file, ..problem },
            });
        }
    }
    match settings {
        Some(settings) if placed.is_empty() => Ok(settings),
        _ => {
            placed.sort_by(|a, b| a.order.cmp(&b.order));
            Err(ConfigError::Invalid {
                problems: placed.into_iter().map(|p| p.problem).collect(),
            })
        }
    }
}

/// Where the node at `path` (or its nearest parent that has a place) was set; for
/// `at_key`, the key rather than the value.
fn origin_of(root: &Node, path: &[&str], at_key: bool) -> Origin {
    for len in (0..=path.len()).rev() {
        let Some(node) = root.get(&path[..len]) else {
            continue;
        };
        match &node.origin {
            Origin::Nowhere => continue,
            Origin::Env(var) => return Origin::Env(var.clone()),
            Origin::File { key, value } => {
                let at = if at_key {
                    key.or(*value)
                } else {
                    value.or(*key)
                };
                return Origin::File {
                    key: None,
                    value: at,
                };
            }
        }
    }
    Origin::Nowhere
}

impl Source<'_> {
    fn problem_from(&self, root: &Node, e: &DeError) -> Placed {
        let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
        let (file, order) = self.place(&origin_of(root, &path, e.at_key));
        Placed {
            order,
            problem: Problem {
                file,
                key: e.path.join("."),
                message: message(root, e),
            },
        }
    }

    /// `file:line:column`, the environment variable's name, or the file alone.
    fn place(&self, origin: &Origin) -> (String, (u8, usize, String)) {
        match origin {
            Origin::File {
                value: Some(offset),
                ..
            } => {
                let (line, column) = line_column(self.text, *offset);
                let place = format!("{}:{line}:{column}", self.name);
                (place, (0, *offset, String::new()))
            }
            Origin::Env(var) => (var.clone(), (1, 0, var.clone())),
            _ => (self.name.to_string(), (2, 0, String::new())),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// The message for one deserialization error, in the settings' own words.
fn message(root: &Node, e: &DeError) -> String {
    match &e.kind {
        Kind::UnknownKey { valid } => {
            let key = e.path.last().map(String::as_str).unwrap_or("");
            let hint = suggestion(key, valid.iter().copied())
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            let valid = valid.join(", ");
            let parent = &e.path[..e.path.len().saturating_sub(1)];
            let is_table = matches!(
                root.get(&e.path.iter().map(String::as_str).collect::<Vec<_>>()),
                Some(Node {
                    value: tree::Value::Table(_),
                    ..
                })
            );
            match (parent.is_empty(), is_table) {
                (true, true) => format!("unknown section{hint}; valid sections: {valid}"),
                (true, false) => {
                    format!("unknown key{hint}; settings belong in one of the sections {valid}")
                }
                (false, _) => format!(
                    "unknown key{hint}; valid keys in [{}]: {valid}",
                    parent.join(".")
                ),
            }
        }
        Kind::UnknownValue { value, valid } => {
            let hint = suggestion(value, valid.iter().map(String::as_str))
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
            format!("unknown value {value:?}{hint}; expected {}", one_of(&valid))
        }
        Kind::Mismatch { expected, found } => format!("expected {expected}, found {found}"),
        Kind::MissingKey(key) => format!("missing key {key}"),
        Kind::Other(text) => text.clone(),
    }
}

/// The valid name closest to a misspelt one, if it is close (at most two edits).
fn suggestion<'a>(wrong: &str, valid: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    valid
        .map(|v| (edit_distance(&wrong.to_ascii_lowercase(), v), v))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        match settings("s.toml", text, env) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn every_problem_in_one_run_in_file_order() {
        let text = "[proxy]\npool_mode = \"transactions\"\n\n[pool]\ncheckout_timeout = 5\npool_sise = 3\nidle_timeout = \"5\"\nmin_idle = 20\n";
        assert_eq!(
            errors(text, &[("PGTENANT__POOL__POOL_SIZ", "5")]),
            vec![
                "s.toml:2:13: proxy.pool_mode: unknown value \"transactions\" (did you mean \"transaction\"?); expected \"session\" or \"transaction\"",
                "s.toml:5:20: pool.checkout_timeout: expected a duration such as \"5s\" or \"250ms\", found 5",
                "s.toml:6:1: pool.pool_sise: unknown key (did you mean pool_size?); valid keys in [pool]: pool_size, min_idle, max_prepared_statements, max_client_statements, connect_timeout, checkout_timeout, query_wait_timeout, idle_timeout, max_lifetime, reset_query, host_turn, share_schema_tenants, share_streak, shared_pool_size",
                "s.toml:7:16: pool.idle_timeout: expected a duration such as \"5s\" or \"250ms\", found \"5\"",
                "s.toml:8:12: pool.min_idle: must not exceed pool.pool_size",
                "PGTENANT__POOL__POOL_SIZ: pool.pool_siz: unknown key (did you mean pool_size?); valid keys in [pool]: pool_size, min_idle, max_prepared_statements, max_client_statements, connect_timeout, checkout_timeout, query_wait_timeout, idle_timeout, max_lifetime, reset_query, host_turn, share_schema_tenants, share_streak, shared_pool_size",
            ]
        );
    }

    #[test]
    fn unknown_sections_and_syntax() {
        assert_eq!(
            errors("[poool]\npool_size = 1\n", &[]),
            vec!["s.toml:1:2: poool: unknown section (did you mean pool?); valid sections: proxy, pool, registry, admin, tls, passthrough, secrets"]
        );
        assert_eq!(
            errors("listen = \"x\"\n", &[]),
            vec!["s.toml:1:1: listen: unknown key; settings belong in one of the sections proxy, pool, registry, admin, tls, passthrough, secrets"]
        );
        let syntax = errors("[pool]\npool_size = = 1\n", &[]);
        assert_eq!(syntax.len(), 1);
        assert!(
            syntax[0].starts_with("s.toml:2:13: invalid TOML: "),
            "{syntax:?}"
        );
    }

    #[test]
    fn environment_values_are_typed_and_named() {
        assert!(errors(
            "",
            &[
                ("PGTENANT__PROXY__TENANT_FROM", "user,database"),
                ("PGTENANT__POOL__POOL_SIZE", "20"),
                ("PGTENANT__POOL__CHECKOUT_TIMEOUT", "5s"),
            ]
        )
        .is_empty());
        assert_eq!(
            errors("", &[("PGTENANT__PROXY__TENANT_FROM", "database,usr")]),
            vec!["PGTENANT__PROXY__TENANT_FROM: proxy.tenant_from: unknown value \"usr\" (did you mean \"user\"?); expected \"database\", \"user_suffix\", \"user\", \"sni\" or \"options\""]
        );
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_column("ab\ncé d", 7), (2, 4));
        assert_eq!(line_column("x", 0), (1, 1));
    }

    #[test]
    fn suggestions_are_close_names_only() {
        let valid = ["pool_size", "min_idle"];
        assert_eq!(
            suggestion("pool_sise", valid.into_iter()),
            Some("pool_size")
        );
        assert_eq!(
            suggestion("POOL_SIZE", valid.into_iter()),
            Some("pool_size")
        );
        assert_eq!(suggestion("workers", valid.into_iter()), None);
    }
}
