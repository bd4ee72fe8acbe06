//! Client to server: whole frames forwarded (attaching a server first in
//! transaction mode), statements named by the client rewritten, what a query does to
//! the session noted, and frames too large to hold streamed through.

use bytes::Buf;

use super::Session;
use crate::config::PoolMode;
use crate::protocol::frame::{frame_len, is_frontend_message, read_cstr, HEADER_LEN};
use crate::protocol::FrameError;
use crate::proxy::carried::queue::Txn;
use crate::proxy::end::End;
use crate::sql::{self, classify};

impl Session<'_> {
    /// Moves every whole client frame towards the server, attaching one first in
    /// transaction mode.
    pub(super) async fn forward_client_frames(&mut self) -> Result<(), End> {
        let bound = self.app.settings.proxy.relay_buffer;
        let max = self.max_message();
        let transaction_mode = self.mode == PoolMode::Transaction;
        let mut ready = 0;
        loop {
            if self.client_stream > 0 {
                // The rest of a frame too large to hold: it passes as it arrives.
                let n = self.client_stream.min(self.client_in.len());
                if n == 0 {
                    break;
                }
                self.to_server.push(self.client_in.split_to(n).freeze());
                self.client_stream -= n;
                if self.client_stream > 0 || self.to_server.len() >= bound {
                    break;
                }
                continue;
            }
            let rest = &self.client_in[ready..];
            if rest.len() >= HEADER_LEN && !is_frontend_message(rest[0]) {
                return Err(End::ClientProtocol(FrameError::UnknownType(rest[0])));
            }
            let len = match frame_len(rest, max).map_err(End::ClientProtocol)? {
                Some(len) if rest.len() >= len => len,
                Some(len) if len > bound && ready == 0 => {
                    Box::pin(self.start_client_stream(len)).await?;
                    break;
                }
                _ => break,
            };
            let tag = rest[0];
            if tag == b'X' {
                return Err(End::ClientLeft);
            }
            self.seen.client_sent(tag);
            // What a query or statement does to the session, read once per message.
            let read = match (transaction_mode, tag) {
                (true, b'Q' | b'P') => {
                    Some(classify(parsed_sql(tag, &rest[HEADER_LEN..len]), true))
                }
                _ => None,
            };
            if read.as_ref().is_some_and(|r| r.path_reset_before_more)
                && self.tenant_path().is_some()
            {
                // The statements after the reset would run under the server's default
                // search_path, not the tenant's: refused whole, before anything runs.
                if ready > 0 {
                    self.to_server.push(self.client_in.split_to(ready).freeze());
                    ready = 0;
                }
                self.client_in.advance(len);
                self.txn.refuse(path_reset_refusal());
                self.push_answers();
                continue;
            }
            if self.server.is_none() {
                // Between transactions a named Parse, a bare Sync and a DEALLOCATE of
                // the client's own statement are answered without a server, so
                // preparing never waits for a pool slot.
                let pool = self.current_pool()?;
                let body = &self.client_in[HEADER_LEN..len];
                if self.pinned.is_none()
                    && read.as_ref().is_none_or(|r| r.pin.is_none())
                    && self
                        .txn
                        .answer_detached(tag, body, read.as_ref(), pool.statements())
                        .map_err(|e| End::TooManyStatements(e.0))?
                {
                    self.client_in.advance(len);
                    self.push_answers();
                    if self.to_client.len() >= bound {
                        break;
                    }
                    continue;
                }
                match self.app.pools.try_checkout(&pool) {
                    // The usual case, done without awaiting anything.
                    Some(server) if server.get().params_match(&self.settings) => {
                        self.attach(server)
                    }
                    ready => Box::pin(self.checkout_and_attach(pool, ready)).await?,
                }
            }
            if transaction_mode {
                let body = &self.client_in[ready + HEADER_LEN..ready + len];
                let conn = self.server.as_mut().expect("attached above").conn();
                if let Some(pin) = read.as_ref().and_then(|r| r.pin) {
                    if self.pinned.is_none() {
                        tracing::info!(client = %self.id, tenant = %self.resolved.tenant.name, user = %self.resolved.user, peer = %self.seen.info().peer, reason = pin.reason(), "client pinned to its server connection");
                        self.pinned = Some(pin);
                    }
                }
                let mut out = Vec::new();
                let handled = match (tag, read.as_ref()) {
                    (b'Q', Some(read)) => {
                        self.txn
                            .deallocate(read, Some((&mut conn.prepared, conn.status)), &mut out)
                    }
                    _ if Txn::needs_rewrite(tag, body) => {
                        let (_, pool) = self.pool.as_ref().expect("checked out from it");
                        self.txn
                            .rewrite(tag, body, &mut conn.prepared, pool.statements(), &mut out)
                            .map_err(|e| End::TooManyStatements(e.0))?;
                        true
                    }
                    _ => false,
                };
                if handled {
                    if ready > 0 {
                        self.to_server.push(self.client_in.split_to(ready).freeze());
                        ready = 0;
                    }
                    self.client_in.advance(len);
                    for bytes in out {
                        self.to_server.push(bytes);
                    }
                    continue;
                }
            }
            self.txn.forwarded(
                tag,
                &self.client_in[ready + HEADER_LEN..ready + len],
                read.as_ref(),
            );
            ready += len;
            if let Some(reset) = self.txn.take_restore() {
                self.to_server.push(self.client_in.split_to(ready).freeze());
                ready = 0;
                self.restore_path(reset);
            }
            if self.to_server.len() + ready >= bound {
                break;
            }
        }
        if ready > 0 {
            self.to_server.push(self.client_in.split_to(ready).freeze());
        }
        self.push_answers();
        Ok(())
    }

    /// Starts passing a client frame of `len` bytes, larger than `relay_buffer`, to the
    /// server as it arrives instead of holding it whole, when the proxy need not
    /// rewrite it: COPY data, function calls, and queries, unnamed Parses and Binds
    /// of unnamed statements. In transaction mode a query or Parse the proxy cannot
    /// read pins its client. Anything else waits until it is whole (bounded by
    /// `max_message_size`).
    async fn start_client_stream(&mut self, len: usize) -> Result<(), End> {
        let transaction_mode = self.mode == PoolMode::Transaction;
        let tag = self.client_in[0];
        let body = &self.client_in[HEADER_LEN..];
        let streams = match tag {
            b'd' | b'F' => true,
            _ if !transaction_mode => matches!(tag, b'Q' | b'P' | b'B'),
            b'Q' => true,
            b'P' => body.first() == Some(&0),
            // Its names are rewritten from what has arrived; the parameters stream.
            b'B' => read_cstr(body)
                .and_then(|(_, rest)| read_cstr(rest))
                .is_some(),
            _ => false,
        };
        if !streams {
            return Ok(());
        }
        if self.server.is_none() {
            let pool = self.current_pool()?;
            let ready = self.app.pools.try_checkout(&pool);
            self.checkout_and_attach(pool, ready).await?;
        }
        if transaction_mode && matches!(tag, b'Q' | b'P') && self.pinned.is_none() {
            tracing::info!(client = %self.id, tenant = %self.resolved.tenant.name, user = %self.resolved.user, peer = %self.seen.info().peer, reason = sql::Pin::TooLarge.reason(), "client pinned to its server connection");
            self.pinned = Some(sql::Pin::TooLarge);
        }
        let mut remaining = len;
        if transaction_mode && tag == b'B' && Txn::needs_rewrite(tag, &self.client_in[HEADER_LEN..])
        {
            let conn = self.server.as_mut().expect("attached above").conn();
            let mut out = Vec::new();
            if let Some(replaced) =
                self.txn
                    .rewrite_bind_start(&self.client_in, len, &mut conn.prepared, &mut out)
            {
                for bytes in out {
                    self.to_server.push(bytes);
                }
                self.client_in.advance(replaced);
                remaining -= replaced;
                let available = self.client_in.len().min(remaining);
                self.to_server
                    .push(self.client_in.split_to(available).freeze());
                self.client_stream = remaining - available;
                return Ok(());
            }
        }
        let available = self.client_in.len();
        self.txn
            .forwarded(tag, &self.client_in[HEADER_LEN..available], None);
        self.to_server
            .push(self.client_in.split_to(available).freeze());
        self.client_stream = remaining - available;
        Ok(())
    }

    /// Answers the proxy gives itself (ParseComplete, CloseComplete) once their turn
    /// has come.
    pub(super) fn push_answers(&mut self) {
        let mut answers = Vec::new();
        self.txn.take_answers(&mut answers);
        for bytes in answers {
            self.to_client.push(bytes);
        }
    }
}

/// The error for a query that resets search_path and then runs more statements on a
/// server shared by schema tenants.
fn path_reset_refusal() -> bytes::Bytes {
    crate::protocol::messages::build(|buf| {
        crate::protocol::messages::error_response(
            buf,
            crate::protocol::messages::Severity::Error,
            crate::protocol::sqlstate::FEATURE_NOT_SUPPORTED,
            "pgtenant: a query that resets search_path (RESET ALL, RESET search_path, DISCARD ALL, SET search_path TO DEFAULT) must be the query's last statement on a server shared by schema tenants; send the statements after it as a separate query",
        )
    })
}

/// The SQL text of a Query or Parse body (empty for other messages).
fn parsed_sql(tag: u8, body: &[u8]) -> &[u8] {
    match tag {
        // The server refuses a Query with anything after its text's NUL, so the text
        // is the body without its last byte: no search for the NUL.
        b'Q' => body.strip_suffix(&[0]).unwrap_or(body),
        b'P' => read_cstr(body)
            .and_then(|(_, rest)| read_cstr(rest))
            .map(|(sql, _)| sql)
            .unwrap_or_default(),
        _ => &[],
    }
}
