//! Reading the PostgreSQL registry into the shape of the registry file (`RawFile`),
//! so both sources are validated by one function. Rows are read with the simple
//! protocol (every value as text), so an application's own table may use any column
//! types that print sensibly: `search_path` as `text[]` or as comma-separated text.

use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

use super::validate::{RawFile, RawHost, RawTenant, RawUser};
use crate::config::{PoolMode, Problem};
use crate::tls::client::BackendTlsMode;

/// The name validation messages give the PostgreSQL registry as their "file".
pub const SOURCE: &str = "registry database";

pub const HOSTS_QUERY: &str = "SELECT name, address, max_connections, tls, tls_ca_file, \
     tls_server_name, auth_user, auth_password, admin_user, admin_password FROM pgtenant.hosts";
pub const TENANTS_QUERY: &str = "SELECT name, host, database, search_path, backend_user, \
     backend_password, pool_size, min_idle, pool_mode, share FROM pgtenant.tenants";
pub const USERS_QUERY: &str = "SELECT name, password, tenants FROM pgtenant.users";

/// A client error with the server's message (tokio-postgres prints "db error" alone).
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}", error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Values(Vec<Problem>),
}

/// Reads hosts, tenants (from `tenants_query` when given) and users. The three
/// queries run in one repeatable-read transaction: one consistent registry.
pub(crate) async fn read(
    client: &Client,
    tenants_query: Option<&str>,
) -> Result<RawFile, ReadError> {
    let queries = [
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        HOSTS_QUERY,
        tenants_query.unwrap_or(TENANTS_QUERY),
        USERS_QUERY,
    ];
    let mut results = Vec::new();
    for query in queries {
        let result = client.simple_query(query).await;
        if result.is_err() {
            let _ = client.simple_query("ROLLBACK").await;
        }
        results.push(rows(result?));
    }
    client.simple_query("COMMIT").await?;
    // 100,000 rows take a while to turn into strings: not on the event loop.
    tokio::task::spawn_blocking(move || convert(&results))
        .await
        .unwrap_or_else(|e| {
            Err(ReadError::Values(vec![Problem {
                file: SOURCE.into(),
                key: String::new(),
                message: format!("reading the rows failed: {e}"),
            }]))
        })
}

fn convert(results: &[Vec<SimpleQueryRow>]) -> Result<RawFile, ReadError> {
    let mut problems = Vec::new();
    let mut raw = RawFile::default();
    for row in &results[1] {
        let mut r = Reader::new(row, "hosts", &mut problems);
        let name = r.text("name").unwrap_or_default();
        let host = RawHost {
            address: r.text("address").unwrap_or_default(),
            max_connections: r.number("max_connections"),
            tls: r.tls("tls"),
            tls_ca_file: r.text("tls_ca_file").map(Into::into),
            tls_server_name: r.text("tls_server_name"),
            auth_user: r.text("auth_user"),
            auth_password: r.text("auth_password"),
            admin_user: r.text("admin_user"),
            admin_password: r.text("admin_password"),
        };
        raw.hosts.insert(name, host);
    }
    for row in &results[2] {
        let mut r = Reader::new(row, "tenants", &mut problems);
        let Some(name) = r.required("name") else {
            continue;
        };
        let tenant = RawTenant {
            host: r.required("host").unwrap_or_default(),
            database: r.required("database").unwrap_or_default(),
            search_path: r.list("search_path"),
            backend_user: r.text("backend_user"),
            backend_password: r.text("backend_password"),
            pool_size: r.number("pool_size"),
            min_idle: r.number("min_idle"),
            pool_mode: r.pool_mode("pool_mode"),
            share: r.boolean("share"),
        };
        if raw.tenants.insert(name.clone(), tenant).is_some() {
            r.problem("name", format!("tenant \"{name}\" is listed twice"));
        }
    }
    for row in &results[3] {
        let mut r = Reader::new(row, "users", &mut problems);
        let name = r.text("name").unwrap_or_default();
        let user = RawUser {
            password: r.text("password").unwrap_or_default(),
            tenants: r.list("tenants"),
        };
        raw.users.insert(name, user);
    }
    match problems.is_empty() {
        true => Ok(raw),
        false => Err(ReadError::Values(problems)),
    }
}

fn rows(messages: Vec<SimpleQueryMessage>) -> Vec<SimpleQueryRow> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect()
}

/// One row's values by column name; a column the row lacks reads as NULL.
struct Reader<'a> {
    row: &'a SimpleQueryRow,
    table: &'static str,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Reader<'a> {
    fn new(row: &'a SimpleQueryRow, table: &'static str, problems: &'a mut Vec<Problem>) -> Self {
        Reader {
            row,
            table,
            problems,
        }
    }

    fn problem(&mut self, column: &str, message: String) {
        let name = self.raw("name").unwrap_or("?").to_string();
        self.problems.push(Problem {
            file: SOURCE.into(),
            key: format!("{}.\"{name}\".{column}", self.table),
            message,
        });
    }

    fn raw(&self, column: &str) -> Option<&str> {
        let index = self.row.columns().iter().position(|c| c.name() == column)?;
        self.row.get(index)
    }

    fn text(&mut self, column: &str) -> Option<String> {
        self.raw(column).map(str::to_string)
    }

    fn required(&mut self, column: &str) -> Option<String> {
        let value = self.text(column);
        if value.is_none() {
            self.problem(column, "is missing (NULL or no such column)".into());
        }
        value
    }

    fn number(&mut self, column: &str) -> Option<usize> {
        let text = self.raw(column)?.to_string();
        text.parse()
            .map_err(|_| self.problem(column, format!("\"{text}\" is not a count")))
            .ok()
    }

    fn boolean(&mut self, column: &str) -> Option<bool> {
        match self.raw(column)? {
            "t" | "true" => Some(true),
            "f" | "false" => Some(false),
            other => {
                let message = format!("\"{other}\" is not a boolean");
                self.problem(column, message);
                None
            }
        }
    }

    fn pool_mode(&mut self, column: &str) -> Option<PoolMode> {
        match self.raw(column)? {
            "session" => Some(PoolMode::Session),
            "transaction" => Some(PoolMode::Transaction),
            other => {
                let message = format!("\"{other}\" is not session or transaction");
                self.problem(column, message);
                None
            }
        }
    }

    fn tls(&mut self, column: &str) -> BackendTlsMode {
        match self.raw(column).unwrap_or("disable") {
            "disable" => BackendTlsMode::Disable,
            "prefer" => BackendTlsMode::Prefer,
            "require" => BackendTlsMode::Require,
            "verify-ca" => BackendTlsMode::VerifyCa,
            "verify-full" => BackendTlsMode::VerifyFull,
            other => {
                let message = format!(
                    "\"{other}\" is not one of disable, prefer, require, verify-ca, verify-full"
                );
                self.problem(column, message);
                BackendTlsMode::Disable
            }
        }
    }

    /// `text[]` as PostgreSQL prints it (`{a,"b c"}`), or `a, b` as plain text.
    fn list(&mut self, column: &str) -> Vec<String> {
        self.raw(column).map(parse_list).unwrap_or_default()
    }
}

/// Reads an array literal (`{a,"b,c"}`) or comma-separated text into its elements.
pub fn parse_list(text: &str) -> Vec<String> {
    let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
    };
    let mut items = Vec::new();
    let mut chars = inner.chars();
    let mut item = String::new();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => item.extend(chars.next()),
            ',' if !quoted => items.push(std::mem::take(&mut item)),
            c => item.push(c),
        }
    }
    if !inner.is_empty() {
        items.push(item);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_both_ways() {
        assert_eq!(parse_list("{}"), Vec::<String>::new());
        assert_eq!(parse_list("{a,b}"), vec!["a", "b"]);
        assert_eq!(
            parse_list(r#"{"a b","c,d","e\"f"}"#),
            vec!["a b", "c,d", "e\"f"]
        );
        assert_eq!(parse_list("fin_acme, public"), vec!["fin_acme", "public"]);
        assert_eq!(parse_list(""), Vec::<String>::new());
    }
}
