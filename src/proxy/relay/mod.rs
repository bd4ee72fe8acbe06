//! The relay: client frames to the server and server frames to the client.
//!
//! Frames are split by their 5-byte header and forwarded as shared `Bytes`; only the
//! few tags that change the proxy's state are looked into. Reading from one side stops
//! while the other side has more than `relay_buffer` bytes queued (backpressure). In
//! transaction mode a server is attached at the first message of a transaction and
//! given back at ReadyForQuery 'I' once nothing the client sent is still unanswered.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Sleep;

mod client_side;
mod server_side;

use crate::app::{App, ClientId};
use crate::backend;
use crate::config::PoolMode;
use crate::pool::{PoolHandle, PooledConn};
use crate::protocol::frame::frame_len;
use crate::proxy::cancel::CancelHandle;
use crate::proxy::carried::queue::{PathSet, Txn};
use crate::proxy::carried::{disposition, Carried, Disposition};
use crate::proxy::end::End;
use crate::proxy::outbox::Outbox;
use crate::proxy::resolve::{ResolveError, Resolved};
use crate::proxy::wait::{read_some, Event, Wanted};
use crate::registry::Snapshot;
use crate::sql;

pub struct Session<'a> {
    pub app: &'a App,
    pub id: ClientId,
    /// Declared before `client`: it lets go of the socket before the socket closes.
    pub seen: crate::metrics::ClientSeen,
    pub client: TcpStream,
    pub client_in: BytesMut,
    pub to_client: Outbox,
    pub server: Option<PooledConn>,
    pub to_server: Outbox,
    pub mode: PoolMode,
    pub resolved: Resolved,
    /// The pool the client draws from and the registry snapshot it was chosen under.
    pub(super) pool: Option<(Arc<Snapshot>, PoolHandle)>,
    /// Settings that follow this client from server to server.
    pub settings: Vec<(String, String)>,
    /// Requests in flight, in order, and (transaction mode) statement names.
    pub(super) txn: Txn,
    /// Set once the client used a feature that needs its own server.
    pub(super) pinned: Option<sql::Pin>,
    /// The client's cancel key, pointed at the attached server.
    pub(super) cancel: CancelHandle,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The proxy is stopping: end at the next moment nothing is in flight.
    pub(super) closing: bool,
    /// Which side's readiness is looked at first on the next wait (they alternate).
    server_first: bool,
    /// Bytes still to come of a frame too large to hold, passing through in pieces:
    /// client to server, and server to client.
    client_stream: usize,
    server_stream: usize,
    /// Runs while a transaction-mode client is quiet between transactions; when it
    /// fires the client is parked. Kept and pushed back rather than made anew.
    pub(super) park_timer: Option<Pin<Box<Sleep>>>,
}

impl<'a> Session<'a> {
    pub fn new(
        app: &'a App,
        client: TcpStream,
        server: Option<PooledConn>,
        mode: PoolMode,
        carried: Carried,
    ) -> Session<'a> {
        let Carried {
            id,
            resolved,
            pool,
            settings,
            txn,
            cancel,
            seen,
        } = carried;
        cancel.set_server(server.as_ref().map(PooledConn::cancel_target));
        seen.server(server.as_ref().map(|s| s.get().key.pid));
        Session {
            app,
            id,
            seen,
            client,
            client_in: BytesMut::new(),
            to_client: Outbox::default(),
            server,
            to_server: Outbox::default(),
            mode,
            resolved,
            pool,
            settings,
            txn,
            pinned: None,
            cancel,
            shutdown: app.shutdown.subscribe(),
            closing: *app.shutdown.borrow(),
            server_first: false,
            client_stream: 0,
            server_stream: 0,
            park_timer: None,
        }
    }

    /// Relays until either side ends, then tells the client why (if it should hear
    /// it) and gives the server back clean or closes it.
    pub async fn run(mut self: Box<Self>) -> End {
        let end = match self.relay().await {
            Ok(()) => End::ClientGone,
            Err(end) => end,
        };
        if let End::Parked = end {
            return match self.park() {
                Ok(()) => End::Parked,
                Err(_) => End::ClientGone,
            };
        }
        if let Some(refusal) = end.refusal() {
            self.seen.tenant().error(refusal.code.code().as_bytes());
            self.to_client.push(refusal.fatal());
            let _ = Box::pin(self.drain_to_client()).await;
        }
        // Boxed, as the rare paths below: a future's size is that of its largest
        // state, and every idle client holds one.
        Box::pin(self.give_back_server()).await;
        end
    }

    async fn relay(&mut self) -> Result<(), End> {
        let bound = self.app.settings.proxy.relay_buffer;
        loop {
            // Forward until nothing whole is left that may move: frames held back while
            // a queue was full are already read, so no readiness event brings them back.
            loop {
                self.forward_client_frames().await?;
                self.flush()?;
                if self.to_client.len() < bound && self.server_has_frame() {
                    self.forward_server_frames()?;
                    self.flush()?;
                }
                // Answers the proxy makes itself count too: a client that does not read
                // them is not read from either.
                let client_can_move = self.to_server.len() < bound
                    && self.to_client.len() < bound
                    && match self.client_stream {
                        0 => has_frame(&self.client_in, self.max_message()),
                        _ => !self.client_in.is_empty(),
                    };
                let server_can_move = self.to_client.len() < bound && self.server_has_frame();
                if !client_can_move && !server_can_move {
                    break;
                }
            }
            if self.closing && self.at_rest() {
                return Err(End::Shutdown);
            }
            let mut may_park = false;
            if self.server.is_none() && self.client_in.is_empty() && self.to_client.is_empty() {
                // Between transactions a client holds no buffer, and once quiet for
                // `park_after` not even a task.
                self.client_in = BytesMut::new();
                self.to_client.release();
                self.to_server.release();
                self.txn.release();
                may_park = self.arm_park_timer();
            }
            let wanted = Wanted {
                read_client: self.to_server.len() < bound && self.to_client.len() < bound,
                read_server: self.to_client.len() < bound,
                write_client: !self.to_client.is_empty(),
                write_server: !self.to_server.is_empty(),
            };
            let server = self.server.as_ref().map(|s| &s.get().stream);
            if !wanted.any(server.is_some()) && self.closing {
                return Err(End::ServerGone);
            }
            self.server_first = !self.server_first;
            let (client, server_first, closing) = (&self.client, self.server_first, self.closing);
            let mut park_timer = self.park_timer.as_mut().filter(|_| may_park);
            // Readiness is polled in place rather than through a future per socket and
            // direction: this wait is where an idle client spends its life, and its
            // state is part of every client's memory.
            let event = {
                let mut shutdown = std::pin::pin!(self.shutdown.changed());
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(event) = wanted.poll(cx, client, server, server_first) {
                        return Poll::Ready(event);
                    }
                    if let Some(timer) = park_timer.as_mut() {
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Ok(Event::Park));
                        }
                    }
                    match closing {
                        false => shutdown.as_mut().poll(cx).map(|_| Ok(Event::Shutdown)),
                        true => Poll::Pending,
                    }
                })
                .await
            };
            match event {
                Ok(Event::ClientReadable) => {
                    let max = self.max_message();
                    let before = self.client_in.len();
                    if !read_some(&self.client, &mut self.client_in, max, self.client_stream)
                        .map_err(|_| End::ClientGone)?
                    {
                        return Err(End::ClientGone);
                    }
                    self.seen.client_read(self.client_in.len() - before);
                }
                Ok(Event::ServerReadable) => {
                    let max = self.max_message();
                    let conn = self
                        .server
                        .as_mut()
                        .expect("read only when attached")
                        .conn();
                    let streaming = self.server_stream;
                    let before = conn.buf.len();
                    if !matches!(
                        read_some(&conn.stream, &mut conn.buf, max, streaming),
                        Ok(true)
                    ) {
                        self.server_ended();
                        return Err(End::ServerGone);
                    }
                    self.seen.server_read(conn.buf.len() - before);
                    self.forward_server_frames()?;
                }
                Ok(Event::Writable) => {}
                Ok(Event::Shutdown) => self.closing = true,
                Ok(Event::Park) => return Err(End::Parked),
                Err(_) => return Err(End::ClientGone),
            }
        }
    }

    /// Nothing in flight in either direction and no transaction open.
    fn at_rest(&mut self) -> bool {
        let server_at_rest = match self.server.as_mut() {
            None => true,
            Some(server) => {
                let conn = server.conn();
                self.txn.is_idle() && conn.status == b'I' && conn.buf.is_empty()
            }
        };
        server_at_rest && self.client_in.is_empty() && self.to_server.is_empty()
    }

    fn server_has_frame(&self) -> bool {
        let max = self.max_message();
        self.server
            .as_ref()
            .is_some_and(|s| match self.server_stream {
                0 => has_frame(&s.get().buf, max),
                _ => !s.get().buf.is_empty(),
            })
    }

    fn max_message(&self) -> usize {
        self.app.settings.proxy.max_message_size
    }

    fn flush(&mut self) -> Result<(), End> {
        if let Some(server) = self.server.as_ref() {
            self.to_server
                .flush_now(&server.get().stream)
                .map_err(|_| End::ServerGone)?;
        }
        self.to_client
            .flush_now(&self.client)
            .map_err(|_| End::ClientGone)
    }

    /// Transaction mode: a server for the next transaction, carrying this client's
    /// settings: `ready` if the pool had one idle, else one checked out now.
    async fn checkout_and_attach(
        &mut self,
        pool: PoolHandle,
        ready: Option<PooledConn>,
    ) -> Result<(), End> {
        let mut server = match ready {
            Some(server) => server,
            None => {
                self.seen.set_state(crate::metrics::ClientState::Waiting);
                self.app
                    .pools
                    .checkout_for_query(&pool)
                    .await
                    .map_err(|e| End::Pool(Box::new(e)))?
            }
        };
        server
            .conn()
            .sync_params(&self.settings)
            .await
            .map_err(End::Backend)?;
        self.attach(server);
        Ok(())
    }

    /// Takes `server` for this client's transaction. On a shared server whose
    /// search_path is not the client's, the query that sets it goes first, pipelined
    /// with the client's message; until it is confirmed a CancelRequest is not
    /// passed on, so it can only reach the client's own statement.
    fn attach(&mut self, mut server: PooledConn) {
        let setting_path = self.set_path(&mut server);
        self.seen.server(Some(server.get().key.pid));
        self.cancel
            .set_server((!setting_path).then(|| server.cancel_target()));
        self.server = Some(server);
    }

    /// The search_path statement of this client's tenant, when its servers are shared.
    pub(super) fn tenant_path(&self) -> Option<&Arc<str>> {
        self.pool.as_ref()?.1.path()
    }

    /// Queues the query that sets this client's search_path on a shared server whose
    /// own differs: its own SET if it made one, else its tenant's. Returns whether
    /// one was queued.
    fn set_path(&mut self, server: &mut PooledConn) -> bool {
        let conn = server.conn();
        if !conn.shared {
            return false;
        }
        let Some(tenant) = self.tenant_path() else {
            return false;
        };
        let wanted: Arc<str> = match self.settings.iter().find(|(n, _)| n == "search_path") {
            Some((name, value)) => backend::setting_statement(name, value).into(),
            None => tenant.clone(),
        };
        if conn.path.as_deref() == Some(&*wanted) {
            return false;
        }
        // The server carries this client's settings (`sync_params`): a statement_timeout
        // of its own could cancel the SET, so it is lifted for it.
        let timeout = self.settings.iter().any(|(n, _)| n == "statement_timeout");
        self.to_server.push(path_query(&wanted, timeout));
        self.txn.set_path(wanted, PathSet::Attach);
        true
    }

    /// After a client's statement put search_path back to the server's default (it
    /// was just queued for the server): the tenant's is set again behind it.
    pub(super) fn restore_path(&mut self, reset: sql::PathReset) {
        let shared = self.server.as_ref().is_some_and(|s| s.get().shared);
        let Some(tenant) = self.tenant_path().filter(|_| shared).cloned() else {
            return;
        };
        let (statement, kind) = match reset {
            sql::PathReset::Session => (tenant, PathSet::Restore),
            sql::PathReset::Local => {
                let local = tenant.replacen("SET ", "SET LOCAL ", 1);
                (local.into(), PathSet::RestoreLocal)
            }
        };
        self.to_server.push(path_query(&statement, false));
        self.txn.set_path(statement, kind);
    }

    /// Transaction mode: lets go of the idle server at the end of a transaction.
    pub fn detach(&mut self) {
        self.seen.server(None);
        self.cancel.set_server(None);
        if let Some(mut server) = self.server.take() {
            let out_of_step = server.conn().out_of_step;
            match disposition(self.mode, self.pinned, true, out_of_step, "") {
                Disposition::Reuse => server.give_back_idle(),
                // A reset needs a round trip: a server that would need one is not
                // detached between transactions, so this is closed rather than reused.
                Disposition::Reset(_) => drop(server),
                Disposition::Close(why) => {
                    tracing::info!(client = %self.id, tenant = %self.resolved.tenant.name, "closing a server connection: {why}");
                }
            }
        }
    }

    /// The client's pool under the current registry: the one it has while the
    /// registry is unchanged, else the tenant looked up again (it may have moved).
    fn current_pool(&mut self) -> Result<PoolHandle, End> {
        let snapshot = self.app.registry.snapshot();
        if let Some((seen, pool)) = &self.pool {
            if Arc::ptr_eq(seen, &snapshot) {
                return Ok(pool.clone());
            }
        }
        let r = &self.resolved;
        let tenant = match &self.pool {
            Some((seen, _)) => snapshot.tenant_after(seen, r.tenant.name.as_str()),
            None => snapshot.tenant(r.tenant.name.as_str()),
        };
        let tenant = tenant
            .ok_or_else(|| End::Resolve(ResolveError::UnknownTenant(r.tenant.name.to_string())))?;
        let host = snapshot.host(&tenant.host).ok_or_else(|| {
            End::Resolve(ResolveError::UnknownHost {
                tenant: tenant.name.to_string(),
                host: tenant.host.to_string(),
            })
        })?;
        let pool = self.app.pools.pool(&tenant, &host, &r.user);
        self.resolved = Resolved {
            tenant,
            host,
            user: r.user.clone(),
        };
        self.pool = Some((snapshot, pool.clone()));
        Ok(pool)
    }

    async fn drain_to_client(&mut self) -> io::Result<()> {
        while !self.to_client.is_empty() {
            self.client.writable().await?;
            self.to_client.flush_now(&self.client)?;
        }
        Ok(())
    }

    /// The server closed its end (or its socket failed): its session is over, so it
    /// is closed without a CancelRequest for a process that no longer exists.
    fn server_ended(&mut self) {
        self.cancel.set_server(None);
        if let Some(server) = self.server.take() {
            server.discard();
        }
    }

    /// After the client is gone: a server with nothing in flight goes back to the
    /// pool (reset first); one in the middle of something is closed.
    async fn give_back_server(&mut self) {
        self.cancel.set_server(None);
        let Some(mut server) = self.server.take() else {
            return;
        };
        let quiet = self.txn.is_idle()
            && self.to_server.is_empty()
            && server.conn().buf.is_empty()
            && self.client_stream == 0
            && self.server_stream == 0;
        let out_of_step = server.conn().out_of_step;
        let reset_query = self.app.settings.pool.reset_query.as_str();
        match disposition(self.mode, self.pinned, quiet, out_of_step, reset_query) {
            Disposition::Reuse => server.release("").await,
            Disposition::Reset(query) => server.release(query).await,
            // Dropping a lent connection cancels and closes it.
            Disposition::Close(why) => tracing::debug!("closing its server connection: {why}"),
        }
    }
}

/// The query that sets search_path. `lift_timeout`: it runs alone (attaching an
/// idle server) for a client with a statement_timeout, which is lifted for it: a
/// timeout there would cost the client its server. Without one it is a statement
/// less, and each costs the server about half a primary-key SELECT.
fn path_query(statement: &str, lift_timeout: bool) -> bytes::Bytes {
    let sql = match lift_timeout {
        true => format!("SET LOCAL statement_timeout = 0; {statement}"),
        false => statement.to_string(),
    };
    let mut out = BytesMut::new();
    crate::protocol::messages::query(&mut out, &sql);
    out.freeze()
}

/// Whether `buf` starts with a whole frame (or one too long, which the frame loop
/// turns into an error).
fn has_frame(buf: &[u8], max: usize) -> bool {
    match frame_len(buf, max) {
        Ok(Some(len)) => buf.len() >= len,
        Ok(None) => false,
        Err(_) => true,
    }
}
