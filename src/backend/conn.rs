//! One open server connection and the exchanges the proxy runs on it by itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::auth::read_frame;
use super::connect::BackendError;
use super::prepared::PreparedCache;
use crate::protocol::messages::{self, parse_error_fields, parse_parameter_status};
use crate::protocol::startup::CancelKey;
use crate::sql::{classify, Effect};

/// Reported parameters a client may change with SET; these follow each client from
/// server to server. Read-only ones (server_version, is_superuser, …) do not.
pub const CLIENT_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

/// A followed setting whose value is the client's own SET statement, replayed as
/// written on the next server, rather than a value for `set_config`. A setting's
/// value cannot hold NUL, so a leading NUL marks these.
pub fn replayed(statement: &str) -> String {
    format!("\0{statement}")
}

/// The statement that gives a session one of a client's followed settings: its own
/// SET replayed, else a `set_config` call.
pub fn setting_statement(name: &str, value: &str) -> String {
    match value.strip_prefix('\0') {
        Some(statement) => statement.to_string(),
        None => format!(
            "SELECT pg_catalog.set_config({}, {}, false)",
            literal(name),
            literal(value)
        ),
    }
}

/// How long `close` waits for the server to end the session.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Until the pool sets `max_prepared_statements`.
const DEFAULT_PREPARED_CAPACITY: usize = 100;

/// What a fresh server session tells a client at startup: every reported parameter,
/// and the client-changeable ones among them. Kept per pool so a transaction-mode
/// client can be greeted without taking a server connection.
#[derive(Debug, Clone, Default)]
pub struct Greeting {
    pub params: Vec<(String, String)>,
    pub initial: Vec<(String, String)>,
}

impl Greeting {
    /// Whether the server would report each client-changeable setting the client asked
    /// for exactly as the client spelled it, so the greeting can be answered from here.
    /// (`DateStyle=ISO` is reported as `ISO, MDY`: such a client takes a server.)
    pub fn reports_as_asked(&self, settings: &[(String, String)]) -> bool {
        settings.iter().all(|(name, value)| {
            let Some(known) = CLIENT_PARAMETERS
                .iter()
                .find(|p| p.eq_ignore_ascii_case(name))
            else {
                return true;
            };
            if *known != name {
                return false;
            }
            match *known {
                // Kept as sent when short and printable ASCII (NAMEDATALEN).
                "application_name" => {
                    value.len() < 64 && value.bytes().all(|b| (b' '..=b'~').contains(&b))
                }
                _ => self.initial.iter().any(|(n, v)| n == name && v == value),
            }
        })
    }
}

pub struct ServerConn {
    pub stream: TcpStream,
    /// Bytes read from the server and not yet handled; empty whenever it is idle.
    pub buf: BytesMut,
    pub max_message: usize,
    /// The server's own cancel key, for forwarding a client's CancelRequest.
    pub key: CancelKey,
    /// Parameters as the server last reported them (ParameterStatus).
    params: BTreeMap<String, String>,
    /// Client-changeable parameters as they were when the connection opened: what a
    /// client that asks for nothing gets.
    initial: Vec<(String, String)>,
    /// Unreported settings the proxy applied for a client, to skip repeating them.
    applied: BTreeMap<String, String>,
    /// Transaction status from the last ReadyForQuery: b'I', b'T' or b'E'.
    pub status: u8,
    /// Statements the proxy prepared here for transaction-mode clients.
    pub prepared: PreparedCache,
    /// The server's statements turned out to differ from `prepared`: it is closed
    /// instead of going back to the pool.
    pub out_of_step: bool,
    /// Shared by schema tenants: opened without a search_path, which follows each
    /// client instead (`path`), and is left out of `sync_params`.
    pub shared: bool,
    /// The search_path statement known to be in force (its transaction committed);
    /// `None`: the server's default, or not known.
    pub path: Option<Arc<str>>,
    /// Shared: clients of the same search_path it was handed to in a row ahead of
    /// the first in line (bounded by `pool.share_streak`).
    pub streak: u32,
    pub created: Instant,
    /// When startup finished and the connection could serve its tenant: its host turn
    /// counts from here (opening one can take long on a busy server).
    pub ready_at: Instant,
    pub last_used: Instant,
}

impl ServerConn {
    pub(super) fn new(
        stream: TcpStream,
        buf: BytesMut,
        max_message: usize,
        key: CancelKey,
    ) -> Self {
        let now = Instant::now();
        ServerConn {
            stream,
            buf,
            max_message,
            key,
            params: BTreeMap::new(),
            initial: Vec::new(),
            applied: BTreeMap::new(),
            status: b'I',
            prepared: PreparedCache::new(DEFAULT_PREPARED_CAPACITY),
            out_of_step: false,
            shared: false,
            path: None,
            streak: 0,
            created: now,
            ready_at: now,
            last_used: now,
        }
    }

    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.params
    }

    pub(super) fn remember_initial_params(&mut self) {
        self.initial = CLIENT_PARAMETERS
            .iter()
            .filter_map(|name| Some((name.to_string(), self.params.get(*name)?.clone())))
            .collect();
    }

    /// Client-changeable parameters as they were when the connection opened.
    pub fn initial_params(&self) -> &[(String, String)] {
        &self.initial
    }

    /// What this connection told the proxy when it opened.
    pub fn greeting(&self) -> Greeting {
        Greeting {
            // search_path is the tenant's own (reported by newer servers): a greeting
            // may serve other tenants of the same database.
            params: self
                .params
                .iter()
                .filter(|(n, _)| n.as_str() != "search_path")
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            initial: self.initial.clone(),
        }
    }

    /// Records a setting a client changed here itself (SET, RESET, RESET ALL), so the
    /// next client that does not want it gets it reset.
    pub fn note_setting(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(value) => {
                self.applied.insert(name.to_string(), value.to_string());
            }
            None => {
                self.applied.remove(name);
            }
        }
    }

    pub fn forget_settings(&mut self) {
        self.applied.clear();
    }

    /// Records a ParameterStatus the relay saw go by.
    pub fn note_parameter(&mut self, name: &str, value: &str) {
        if self.params.get(name).map(String::as_str) != Some(value) {
            self.params.insert(name.to_string(), value.to_string());
        }
    }

    /// Reads until ReadyForQuery, recording parameters and the cancel key. The first
    /// ErrorResponse is returned as `Refused` once the server is ready again.
    pub(super) async fn read_until_ready(&mut self, startup: bool) -> Result<(), BackendError> {
        let mut error = None;
        loop {
            let frame = read_frame(&mut self.stream, &mut self.buf, self.max_message).await?;
            let body = frame.body();
            match frame.tag() {
                b'S' => {
                    if let Some((name, value)) = parse_parameter_status(body) {
                        self.note_parameter(name, value);
                    }
                }
                b'K' if body.len() == 8 => {
                    self.key = CancelKey {
                        pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    };
                }
                b'E' => {
                    let fields = parse_error_fields(body);
                    if startup {
                        return Err(BackendError::Refused(fields));
                    }
                    error.get_or_insert(fields);
                }
                b'Z' => {
                    self.status = body.first().copied().unwrap_or(b'I');
                    return match error {
                        Some(fields) => Err(BackendError::Refused(fields)),
                        None => Ok(()),
                    };
                }
                // Row data, command tags and notices of the proxy's own queries.
                _ => {}
            }
        }
    }

    /// Runs one simple query the proxy needs (reset, rollback, settings) and discards
    /// its results.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), BackendError> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        self.read_until_ready(false).await
    }

    /// Returns the connection to a clean idle state for the next client: rolls back
    /// an open transaction and runs `reset_query` (if any). Unreported settings the
    /// proxy applied are forgotten because the reset undid them.
    pub async fn reset(&mut self, reset_query: &str) -> Result<(), BackendError> {
        if self.status != b'I' {
            self.simple_query("ROLLBACK").await?;
        }
        if !reset_query.is_empty() {
            // Whatever the reset did to search_path, it is set again before use.
            self.path = None;
            self.simple_query(reset_query).await?;
            self.applied.clear();
            for effect in classify(reset_query.as_bytes(), true)
                .effects
                .unwrap_or_default()
            {
                match effect {
                    Effect::None => {}
                    Effect::Deallocate(name) => {
                        self.prepared.remove(&String::from_utf8_lossy(&name))
                    }
                    Effect::DeallocateAll | Effect::DiscardAll => self.prepared.clear(),
                }
            }
        }
        Ok(())
    }

    /// Ends the session politely and waits (briefly) until the server has let go of
    /// it, so a host's connection count is really down by one when this returns. A
    /// connection that may be running something is cancelled first.
    pub async fn close(mut self, cancel_at: Option<&str>) {
        if let Some(address) = cancel_at {
            let _ = super::send_cancel(address, self.key).await;
        }
        let mut out = BytesMut::new();
        messages::terminate(&mut out);
        let wait = async {
            self.stream.write_all(&out).await?;
            let mut sink = [0u8; 512];
            while self.stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, wait).await;
    }

    /// Brings the server's settings in line with what a client asked for, in one round
    /// trip, sending only those that differ. Returns whether anything was sent.
    /// Reported parameters the client did not ask for go back to this connection's
    /// initial values, and settings another client had applied here are reset, so
    /// one client's settings never reach another.
    pub async fn sync_params(&mut self, wanted: &[(String, String)]) -> Result<bool, BackendError> {
        if self.params_match(wanted) {
            return Ok(false);
        }
        let (mut calls, mut replays) = (Vec::new(), Vec::new());
        for (name, value) in self.differing(wanted) {
            match value.strip_prefix('\0') {
                Some(statement) => replays.push(statement.to_string()),
                None => calls.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    literal(name),
                    literal(value)
                )),
            }
        }
        let stale: Vec<String> = self.stale(wanted).cloned().collect();
        let mut statements = Vec::new();
        if !calls.is_empty() {
            statements.push(format!("SELECT {}", calls.join(", ")));
        }
        statements.extend(replays);
        statements.extend(
            stale
                .iter()
                .map(|name| format!("RESET {}", setting_name(name))),
        );
        // Boxed: needed only when a client's settings differ from the server's.
        Box::pin(self.simple_query(&statements.join("; "))).await?;
        for name in &stale {
            self.applied.remove(name);
        }
        for (name, value) in wanted {
            if !CLIENT_PARAMETERS.contains(&name.as_str()) && !self.follows_path(name) {
                self.applied.insert(name.clone(), value.clone());
            }
        }
        Ok(true)
    }

    /// Whether the server's settings are already what a client asks for (see
    /// `sync_params`): nothing to send.
    pub fn params_match(&self, wanted: &[(String, String)]) -> bool {
        self.differing(wanted).next().is_none() && self.stale(wanted).next().is_none()
    }

    /// The wanted settings (and, for reported parameters not asked for, the initial
    /// values) this server does not have now.
    fn differing<'a>(
        &'a self,
        wanted: &'a [(String, String)],
    ) -> impl Iterator<Item = &'a (String, String)> + 'a {
        let unasked = self
            .initial
            .iter()
            .filter(|(name, _)| !wanted.iter().any(|(n, _)| n == name));
        wanted.iter().chain(unasked).filter(|(name, value)| {
            !self.follows_path(name)
                && self.params.get(name).or_else(|| self.applied.get(name)) != Some(value)
        })
    }

    /// search_path on a shared server is set through `path`, not as a setting.
    pub fn follows_path(&self, name: &str) -> bool {
        self.shared && name == "search_path"
    }

    /// Settings another client applied here that this one did not ask for.
    fn stale<'a>(
        &'a self,
        wanted: &'a [(String, String)],
    ) -> impl Iterator<Item = &'a String> + 'a {
        self.applied
            .keys()
            .filter(|name| !wanted.iter().any(|(n, _)| n == *name))
    }
}

/// A setting's name as SQL: each dotted part a quoted identifier (`"myapp"."flag"`).
fn setting_name(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// An escaped string literal that reads the same whatever standard_conforming_strings is.
fn literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::literal;

    #[test]
    fn setting_names_are_quoted_per_part() {
        assert_eq!(
            super::setting_name("statement_timeout"),
            "\"statement_timeout\""
        );
        assert_eq!(super::setting_name("my.od\"d"), "\"my\".\"od\"\"d\"");
    }

    #[test]
    fn literal_escapes_quotes_and_backslashes() {
        assert_eq!(literal("it's a\\b"), "E'it''s a\\\\b'");
    }
}
