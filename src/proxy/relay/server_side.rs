//! Server to client: whole frames forwarded, ReadyForQuery and ParameterStatus
//! noted, answers to requests the proxy added swallowed, large rows streamed, and in
//! transaction mode the server let go of once the client's transaction is over.

use bytes::Buf;

use super::Session;
use crate::backend::CLIENT_PARAMETERS;
use crate::config::PoolMode;
use crate::pool::is_shutdown_code;
use crate::protocol::frame::{frame_len, HEADER_LEN};
use crate::protocol::messages::{error_code, parse_parameter_status};
use crate::proxy::carried::queue::{PathOutcome, Txn, Verdict};
use crate::proxy::carried::settings::{follow_setting, set_setting};
use crate::proxy::end::End;
use crate::sql;

impl Session<'_> {
    /// Moves every whole server frame towards the client, noting ReadyForQuery and
    /// ParameterStatus; in transaction mode gives the server back when it is idle.
    pub(super) fn forward_server_frames(&mut self) -> Result<(), End> {
        let bound = self.app.settings.proxy.relay_buffer;
        let max = self.max_message();
        let release_when_idle = self.mode == PoolMode::Transaction && self.pinned.is_none();
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let conn = server.conn();
        let mut ready = 0;
        let mut idle = false;
        let mut path_settled = false;
        let mut going_down = false;
        loop {
            if self.server_stream > 0 {
                let n = self.server_stream.min(conn.buf.len());
                if n == 0 {
                    break;
                }
                self.to_client.push(conn.buf.split_to(n).freeze());
                self.server_stream -= n;
                if self.server_stream > 0 || self.to_client.len() >= bound {
                    break;
                }
                continue;
            }
            if release_when_idle && ends_unasked(conn, &self.txn, ready) {
                break;
            }
            let rest = &conn.buf[ready..];
            let len = match frame_len(rest, max).map_err(End::ServerProtocol)? {
                Some(len) if rest.len() >= len => len,
                // A row or COPY data too large to hold passes as it arrives, header
                // first: the proxy never needs to look inside them.
                Some(len) if len > bound && matches!(rest[0], b'D' | b'd') => {
                    if ready > 0 {
                        self.to_client.push(conn.buf.split_to(ready).freeze());
                        ready = 0;
                    }
                    let mut answers = Vec::new();
                    self.txn.take_answers(&mut answers);
                    for bytes in answers {
                        self.to_client.push(bytes);
                    }
                    let available = conn.buf.len();
                    self.to_client.push(conn.buf.split_to(available).freeze());
                    self.server_stream = len - available;
                    break;
                }
                _ => break,
            };
            let tag = rest[0];
            match tag {
                b'Z' => {
                    conn.status = rest.get(HEADER_LEN).copied().unwrap_or(b'I');
                    self.seen.ready(conn.status);
                }
                b'E' => {
                    let code = error_code(&rest[HEADER_LEN..len]);
                    self.seen.tenant().error(code);
                    going_down |= is_shutdown_code(code);
                }
                b'S' => {
                    if let Some((name, value)) = parse_parameter_status(&rest[HEADER_LEN..len]) {
                        if CLIENT_PARAMETERS.contains(&name) {
                            set_setting(&mut self.settings, name, value);
                        }
                        // Whoever changed the session's role (a function can), the
                        // server now carries it: it stays with this client.
                        if matches!(name, "session_authorization" | "is_superuser")
                            && conn.params().get(name).is_some_and(|v| v != value)
                            && self.pinned.is_none()
                        {
                            tracing::info!(client = %self.id, tenant = %self.resolved.tenant.name, user = %self.resolved.user, peer = %self.seen.info().peer, parameter = name, "client pinned to its server connection: its role changed");
                            self.pinned = Some(sql::Pin::Role);
                        }
                        // Servers that report search_path say when anything changed
                        // it: it is no longer known to be a tenant's.
                        if name == "search_path" {
                            conn.path = None;
                        }
                        let (name, value) = (name.to_string(), value.to_string());
                        conn.note_parameter(&name, &value);
                    }
                }
                _ => {}
            }
            let mut answers = Vec::new();
            self.txn.take_answers(&mut answers);
            let verdict = self.txn.received(
                tag,
                &conn.buf[ready + HEADER_LEN..ready + len],
                &mut conn.prepared,
            );
            let verdict = match verdict {
                Verdict::Path(outcome) => {
                    match outcome {
                        PathOutcome::Confirmed(path) => conn.path = Some(path),
                        PathOutcome::Unknown => conn.path = None,
                        PathOutcome::Unchanged => {}
                        PathOutcome::Failed(e) => {
                            tracing::warn!(client = %self.id, tenant = %self.resolved.tenant.name, code = %e.code, error = %e.message, "a shared server refused the tenant's search_path; closing it");
                            return Err(End::PathNotSet(e));
                        }
                    }
                    path_settled = true;
                    Verdict::Swallow
                }
                verdict => verdict,
            };
            // A held error the client gets after all comes before this message; a
            // segment run again goes back to the server.
            answers.extend(self.txn.take_before_this());
            for bytes in self.txn.take_replay() {
                self.to_server.push(bytes);
            }
            if self.txn.take_out_of_step() {
                tracing::warn!(client = %self.id, tenant = %self.resolved.tenant.name, "server's prepared statements differ from the proxy's record; it will be closed after this transaction");
                conn.out_of_step = true;
            }
            if tag == b'Z' {
                // Changes whose transaction committed hold for the rest of the
                // session: they follow the client.
                for change in self.txn.take_committed_settings() {
                    follow_setting(&mut self.settings, conn, change);
                }
            }
            if !answers.is_empty() || verdict == Verdict::Swallow {
                if ready > 0 {
                    self.to_client.push(conn.buf.split_to(ready).freeze());
                    ready = 0;
                }
                for bytes in answers {
                    self.to_client.push(bytes);
                }
            }
            if verdict == Verdict::Swallow {
                conn.buf.advance(len);
            } else {
                ready += len;
            }
            if tag == b'Z'
                && release_when_idle
                && self.pinned.is_none()
                && self.txn.is_idle()
                && conn.status == b'I'
            {
                idle = true;
                break;
            }
            if verdict == Verdict::Swallow {
                continue;
            }
            if self.to_client.len() + ready >= bound {
                break;
            }
        }
        if ready > 0 {
            self.to_client.push(conn.buf.split_to(ready).freeze());
        }
        self.push_answers();
        if path_settled {
            // The search_path set on attaching is in force: cancels may pass again.
            let server = self.server.as_ref().expect("attached");
            self.cancel.set_server(Some(server.cancel_target()));
        }
        let server = self.server.as_mut().expect("attached");
        if going_down {
            server.host_going_down();
        }
        // Anything after the last ReadyForQuery (an async notice) keeps it attached.
        let conn = server.conn();
        if idle && conn.buf.is_empty() && self.to_server.is_empty() {
            self.detach();
        } else if release_when_idle && ends_unasked(conn, &self.txn, 0) {
            self.drop_ending_server();
        }
        Ok(())
    }

    /// Transaction mode, between transactions: the server said it is ending its
    /// session (terminated, shut down, timed out). That answers nothing the client
    /// asked, so the client is not told: the server is closed and its next
    /// transaction gets another.
    fn drop_ending_server(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.seen.server(None);
        self.cancel.set_server(None);
        let said = server.get().buf.get(HEADER_LEN..).unwrap_or_default();
        if is_shutdown_code(error_code(said)) {
            server.host_going_down();
        }
        tracing::debug!(client = %self.id, tenant = %self.resolved.tenant.name, "the server connection ended its session between transactions; the client keeps its own");
        server.discard();
    }
}

/// Whether the server's next message, at `at` in its buffer, is an ErrorResponse that
/// follows the last answer the client waited for: a server only says that as it ends
/// its session.
fn ends_unasked(conn: &crate::backend::ServerConn, txn: &Txn, at: usize) -> bool {
    conn.buf.get(at) == Some(&b'E') && conn.status == b'I' && txn.is_idle()
}
