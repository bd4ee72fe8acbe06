//! One admin console session: greeting, then queries in the simple protocol (psql)
//! and the extended one (drivers: Parse/Bind/Describe/Execute/Sync), answered with
//! typed rows. An error in the extended protocol skips to the next Sync, as
//! PostgreSQL does.

use std::collections::HashMap;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::command::Command;
use super::control::{self, Failed};
use super::show;
use super::wire::{self, Formats};
use crate::app::{App, ClientId};
use crate::protocol::frame::{read_cstr, split_frame};
use crate::protocol::messages::{self, Severity};
use crate::protocol::sqlstate;
use crate::protocol::startup::StartupMessage;
use crate::proxy::refusal::Refusal;
use crate::tls::ClientStream;

/// Largest message the console reads: its commands are one short line.
const MAX_MESSAGE: usize = 64 * 1024;

/// Serves a console client until it leaves. `out` holds what was already prepared
/// for it (protocol negotiation). Refusals are written here and returned for the log.
pub async fn serve<T>(
    app: &App,
    mut stream: ClientStream,
    mut out: BytesMut,
    startup: &StartupMessage,
    id: ClientId,
) -> Result<Option<T>, Refusal> {
    let user = startup.get("user").unwrap_or_default().to_string();
    let peer = stream.tcp().peer_addr().ok();
    if let Err(refusal) = super::console_access(app, &user, peer) {
        out.extend_from_slice(&refusal.fatal());
        let _ = stream.write_all(&out).await;
        return Err(refusal);
    }
    // The caller authenticated the user (and queued AuthenticationOk).
    tracing::info!(client = %id, %user, peer = ?peer, "admin console connected");
    for (name, value) in [
        ("server_version", "15.0 (pgtenant admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        (
            "application_name",
            startup.get("application_name").unwrap_or(""),
        ),
    ] {
        messages::parameter_status(&mut out, name, value);
    }
    messages::backend_key_data(&mut out, 0, 0);
    messages::ready_for_query(&mut out, b'I');
    let mut console = Console {
        app,
        statements: HashMap::new(),
        portals: HashMap::new(),
        skipping: false,
    };
    let mut input = BytesMut::with_capacity(1024);
    loop {
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
        let frame = loop {
            match split_frame(&mut input, MAX_MESSAGE) {
                Ok(Some(frame)) => break Some(frame),
                Ok(None) => {}
                Err(e) => {
                    let refusal = Refusal::from(&e);
                    let _ = stream.write_all(&refusal.fatal()).await;
                    return Err(refusal);
                }
            }
            match stream.read_buf(&mut input).await {
                Ok(0) | Err(_) => break None,
                Ok(_) => {}
            }
        };
        let Some(frame) = frame else { break };
        if frame.tag() == b'X' {
            break;
        }
        console.handle(frame.tag(), frame.body(), &mut out).await;
    }
    tracing::info!(client = %id, %user, "admin console disconnected");
    Ok(None)
}

/// A prepared console statement: the command, or why it does not parse (reported
/// when it is described or run, as PostgreSQL reports a bad Parse).
type Prepared = Result<Command, String>;

struct Console<'a> {
    app: &'a App,
    statements: HashMap<Vec<u8>, Prepared>,
    /// Portals: the command and the result formats its Bind asked for.
    portals: HashMap<Vec<u8>, (Command, Formats)>,
    /// After an error in the extended protocol: ignore everything up to Sync.
    skipping: bool,
}

impl Console<'_> {
    async fn handle(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) {
        if self.skipping && tag != b'S' {
            return;
        }
        let result = match tag {
            b'Q' => {
                self.simple_query(body, out).await;
                messages::ready_for_query(out, b'I');
                Ok(())
            }
            b'P' => self.parse(body, out),
            b'B' => self.bind(body, out),
            b'D' => self.describe(body, out),
            b'E' => self.execute(body, out).await,
            b'C' => {
                self.close(body);
                wire::empty(out, b'3');
                Ok(())
            }
            b'S' => {
                self.skipping = false;
                self.portals.remove(&Vec::new());
                messages::ready_for_query(out, b'I');
                Ok(())
            }
            b'H' => Ok(()),
            other => Err(Failed {
                code: sqlstate::PROTOCOL_VIOLATION,
                message: format!(
                    "the admin console does not take message type '{}'",
                    other as char
                ),
            }),
        };
        if let Err(f) = result {
            messages::error_response(out, Severity::Error, f.code, &f.message);
            self.skipping = true;
        }
    }

    /// Runs each statement of a simple query in turn, stopping at the first error.
    async fn simple_query(&mut self, body: &[u8], out: &mut BytesMut) {
        let text = read_cstr(body).map_or(body, |(sql, _)| sql);
        let text = String::from_utf8_lossy(text);
        let statements: Vec<&str> = text.split(';').filter(|s| !s.trim().is_empty()).collect();
        if statements.is_empty() {
            wire::empty(out, b'I');
            return;
        }
        for statement in statements {
            let command = match Command::parse(statement) {
                Ok(command) => command,
                Err(e) => {
                    syntax_error(out, &e.0);
                    return;
                }
            };
            let columns = command.columns();
            if !columns.is_empty() {
                wire::row_description(out, columns, &Formats::default());
            }
            if let Err(f) = self.run(&command, &Formats::default(), out).await {
                messages::error_response(out, Severity::Error, f.code, &f.message);
                return;
            }
        }
    }

    fn parse(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), Failed> {
        let (name, rest) = read_cstr(body).ok_or_else(malformed)?;
        let (sql, _) = read_cstr(rest).ok_or_else(malformed)?;
        let prepared = Command::parse(&String::from_utf8_lossy(sql)).map_err(|e| e.0);
        if let Err(message) = &prepared {
            return Err(Failed {
                code: sqlstate::SYNTAX_ERROR,
                message: message.clone(),
            });
        }
        self.statements.insert(name.to_vec(), prepared);
        wire::empty(out, b'1');
        Ok(())
    }

    fn bind(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), Failed> {
        let (portal, rest) = read_cstr(body).ok_or_else(malformed)?;
        let (statement, mut rest) = read_cstr(rest).ok_or_else(malformed)?;
        let command = self.statement(statement)?;
        // Parameter formats, parameters (the console takes none, but skip them),
        // then the result formats.
        let count = get_i16(&mut rest)?;
        for _ in 0..count {
            get_i16(&mut rest)?;
        }
        let params = get_i16(&mut rest)?;
        for _ in 0..params {
            let len = get_i32(&mut rest)?;
            if len > 0 {
                let len = len as usize;
                if rest.len() < len {
                    return Err(malformed());
                }
                rest.advance(len);
            }
        }
        let count = get_i16(&mut rest)?;
        let mut formats = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count {
            formats.push(get_i16(&mut rest)?);
        }
        self.portals
            .insert(portal.to_vec(), (command, Formats(formats)));
        wire::empty(out, b'2');
        Ok(())
    }

    fn describe(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), Failed> {
        let (&kind, rest) = body.split_first().ok_or_else(malformed)?;
        let (name, _) = read_cstr(rest).ok_or_else(malformed)?;
        let (command, formats) = match kind {
            b'S' => {
                let command = self.statement(name)?;
                wire::no_parameters(out);
                (command, Formats::default())
            }
            _ => self.portal(name)?,
        };
        match command.columns() {
            [] => wire::empty(out, b'n'),
            columns => wire::row_description(out, columns, &formats),
        }
        Ok(())
    }

    async fn execute(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), Failed> {
        let (name, _) = read_cstr(body).ok_or_else(malformed)?;
        let (command, formats) = self.portal(name)?;
        if command == Command::Empty {
            wire::empty(out, b'I');
            return Ok(());
        }
        self.run(&command, &formats, out).await
    }

    fn close(&mut self, body: &[u8]) {
        if let Some((&kind, rest)) = body.split_first() {
            if let Some((name, _)) = read_cstr(rest) {
                match kind {
                    b'S' => self.statements.remove(name),
                    _ => self.portals.remove(name).map(|_| Ok(Command::Empty)),
                };
            }
        }
    }

    fn statement(&self, name: &[u8]) -> Result<Command, Failed> {
        match self.statements.get(name) {
            Some(Ok(command)) => Ok(command.clone()),
            Some(Err(message)) => Err(Failed {
                code: sqlstate::SYNTAX_ERROR,
                message: message.clone(),
            }),
            None => Err(Failed {
                code: sqlstate::INVALID_SQL_STATEMENT_NAME,
                message: format!(
                    "prepared statement \"{}\" does not exist",
                    String::from_utf8_lossy(name)
                ),
            }),
        }
    }

    fn portal(&self, name: &[u8]) -> Result<(Command, Formats), Failed> {
        self.portals.get(name).cloned().ok_or_else(|| Failed {
            code: sqlstate::INVALID_CURSOR_NAME,
            message: format!(
                "portal \"{}\" does not exist",
                String::from_utf8_lossy(name)
            ),
        })
    }

    /// Runs a command: its rows (no RowDescription: the caller sent it or Describe
    /// did), a notice saying what happened, and CommandComplete.
    async fn run(
        &mut self,
        command: &Command,
        formats: &Formats,
        out: &mut BytesMut,
    ) -> Result<(), Failed> {
        let app = self.app;
        let said = match command {
            Command::Show(what) => {
                let rows = match what {
                    // Read where moves are recorded (another instance's too).
                    super::command::Show::Moves => super::moving::rows(app).await?,
                    _ => show::rows(app, *what),
                };
                for row in &rows {
                    wire::data_row(out, row, formats);
                }
                wire::command_complete(out, &format!("SHOW {}", rows.len()));
                return Ok(());
            }
            Command::Pause(tenant) => control::pause(app, tenant.as_deref()).await?,
            Command::Resume(tenant) => control::resume(app, tenant.as_deref())?,
            Command::Reload => control::reload(app)?,
            Command::Kill(tenant) => control::kill(app, tenant)?,
            Command::Shutdown => control::shutdown(app)?,
            Command::Move(request) => super::moving::run(&app.handle(), request).await?,
            Command::AbortMove(tenant) => super::moving::abort(&app.handle(), tenant).await?,
            Command::Set | Command::Empty => String::new(),
        };
        if !said.is_empty() {
            wire::notice(out, &said);
        }
        wire::command_complete(out, command.tag());
        Ok(())
    }
}

fn syntax_error(out: &mut BytesMut, message: &str) {
    messages::error_response(out, Severity::Error, sqlstate::SYNTAX_ERROR, message);
}

fn malformed() -> Failed {
    Failed {
        code: sqlstate::PROTOCOL_VIOLATION,
        message: "malformed message".into(),
    }
}

fn get_i16(buf: &mut &[u8]) -> Result<i16, Failed> {
    if buf.len() < 2 {
        return Err(malformed());
    }
    Ok(buf.get_i16())
}

fn get_i32(buf: &mut &[u8]) -> Result<i32, Failed> {
    if buf.len() < 4 {
        return Err(malformed());
    }
    Ok(buf.get_i32())
}
