//! One client connection, top to bottom: handshake → resolve → authenticate →
//! server → relay. Each phase refuses with its own SQLSTATE.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::carried::queue::Txn;
use super::carried::settings::{client_settings, keep_only_changes, set_setting};
use super::carried::Carried;
use super::end::End;
use super::handshake::{read_startup, Handshake, HandshakeError};
use super::login;
use super::park::Parked;
use super::refusal::Refusal;
use super::relay::Session;
use super::resolve::{resolve_client, sni_tenant};
use crate::app::{App, ClientId};
use crate::backend::{BackendError, Greeting, CLIENT_PARAMETERS};
use crate::config::PoolMode;
use crate::pool::PooledConn;
use crate::protocol::messages;
use crate::protocol::startup::SUPPORTED_MINOR;
use crate::tls::ClientStream;

/// How a client task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The client is gone.
    Done,
    /// The client waits in the parking lot, still connected.
    Parked,
}

/// Serves a new client on a task of its own; it counts as connected until it leaves.
pub fn spawn(app: Arc<App>, stream: TcpStream, peer: SocketAddr, id: ClientId) {
    run_counted(app.clone(), serve(app, stream, peer, id));
}

/// Serves a parked client again on a task of its own.
pub fn spawn_resumed(app: Arc<App>, parked: Parked) {
    run_counted(app.clone(), resume(app, parked));
}

/// Runs a client's task; a client that left no longer counts against
/// `proxy.max_client_conn`, a parked one still does.
fn run_counted(app: Arc<App>, client: impl Future<Output = Served> + Send + 'static) {
    tokio::spawn(async move {
        // A guard, so that whatever ends the task (a panic included) counts it out.
        let mut counted = Counted(Some(app));
        if client.await == Served::Parked {
            counted.0 = None;
        }
    });
}

/// A client counted against `proxy.max_client_conn` until dropped.
struct Counted(Option<Arc<App>>);

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(app) = self.0.take() {
            app.clients.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Serves one client until it leaves or parks. Never panics on input; every refusal
/// is an ErrorResponse.
pub async fn serve(app: Arc<App>, stream: TcpStream, peer: SocketAddr, id: ClientId) -> Served {
    // A debug-level span: at the default level it costs an idle client nothing, and
    // the events below that matter at info level name the client themselves.
    let span = tracing::debug_span!("client", %id, %peer, tenant = tracing::field::Empty, user = tracing::field::Empty);
    async move {
        let _ = stream.set_nodelay(true);
        let mut who = Who::default();
        // The startup phase is boxed: its state is freed once the relay runs, so a
        // long-lived idle client keeps only the relay's state.
        let result = match Box::pin(start(&app, stream, id, &mut who)).await {
            Ok(Some(session)) => relay(session).await,
            Ok(None) => Ok(Served::Done),
            Err(refusal) => Err(refusal),
        };
        log_end(&app, id, peer, &who, result)
    }
    .instrument(span)
    .await
}

/// Serves a parked client from where it stopped: between transactions, no server.
async fn resume(app: Arc<App>, parked: Parked) -> Served {
    let Parked { client, carried } = parked;
    let id = carried.id;
    // The socket changes hands: it is not closed behind the client's entry's back.
    carried.seen.socket(None);
    let Ok(stream) = TcpStream::from_std(client) else {
        return Served::Done;
    };
    carried
        .seen
        .socket(Some(std::os::fd::AsRawFd::as_raw_fd(&stream)));
    carried.seen.set_state(crate::metrics::ClientState::Idle);
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let span = tracing::debug_span!("client", %id, %peer, tenant = %carried.resolved.tenant.name, user = %carried.resolved.user);
    let who = Who {
        tenant: Some(carried.resolved.tenant.name.clone()),
        user: Some(carried.resolved.user.as_str().into()),
    };
    async move {
        let session = Box::new(Session::new(
            &app,
            stream,
            None,
            PoolMode::Transaction,
            carried,
        ));
        log_end(&app, id, peer, &who, relay(session).await)
    }
    .instrument(span)
    .await
}

/// Who a client is, as far as its startup got: for the line that logs its refusal
/// (the client span is debug-level, so the line names them itself).
#[derive(Default)]
struct Who {
    tenant: Option<crate::registry::TenantName>,
    user: Option<Arc<str>>,
}

fn log_end(
    app: &App,
    id: ClientId,
    peer: SocketAddr,
    who: &Who,
    result: Result<Served, Refusal>,
) -> Served {
    match result {
        Ok(served) => served,
        Err(refusal) => {
            app.metrics.refused(refusal.code.code());
            let tenant = who.tenant.as_ref().map(|t| t.as_str());
            let user = who.user.as_deref();
            let detail = refusal.detail.as_deref();
            tracing::info!(client = %id, tenant, user, %peer, code = refusal.code.code(), detail, "refused: {}", refusal.message);
            Served::Done
        }
    }
}

/// Handshake to ReadyForQuery: a session ready to relay, or `None` when there is
/// nothing to serve (a cancel request, a client that left). Refusals are written to
/// the client here; the returned one is for the log.
async fn start<'a>(
    app: &'a App,
    stream: TcpStream,
    id: ClientId,
    who: &mut Who,
) -> Result<Option<Box<Session<'a>>>, Refusal> {
    let (stream, handshake) = read_startup(app, stream).await;
    let (mut startup, pending, mut stream) = match (handshake, stream) {
        (Ok(Handshake::Startup(startup, pending)), Some(stream)) => (startup, pending, stream),
        (Ok(Handshake::Cancel(key)), _) => {
            app.cancels.cancel(key).await;
            return Ok(None);
        }
        (Err(HandshakeError::Closed), _) | (Ok(_), None) => return Ok(None),
        (Err(e), None) => return Err(Refusal::from(&e)),
        (Err(e), Some(mut stream)) => return Err(refuse(&mut stream, Refusal::from(&e)).await),
    };

    who.user = startup.get("user").map(Arc::from);
    let mut out = BytesMut::new();
    if startup.needs_negotiation() {
        messages::negotiate_protocol_version(&mut out, SUPPORTED_MINOR, &startup.protocol_options);
    }

    if crate::admin::is_console(&app.settings.admin, &startup) {
        let user = startup.get("user").unwrap_or_default().to_string();
        let login = login::authenticate_console(app, &mut stream, &user, pending, &mut out);
        if let Err(e) = login.await {
            return Err(refuse_after(&mut stream, out, e).await);
        }
        return crate::admin::console::serve(app, stream, out, &startup, id).await;
    }
    let snapshot = app.registry.snapshot();
    let sni = sni_tenant(stream.server_name(), app.settings.tls.sni_suffix.as_deref());
    let sni = sni.map(str::to_owned);
    let sources = &app.settings.proxy.tenant_from;
    let resolved = match resolve_client(&snapshot, sources, &mut startup, sni.as_deref()) {
        Ok(resolved) => resolved,
        Err(e) => {
            if let super::resolve::ResolveError::UnknownTenant(asked) = &e {
                who.tenant = Some(crate::registry::TenantName::new(asked));
            }
            return Err(refuse_after(&mut stream, out, Refusal::from(&e)).await);
        }
    };
    who.tenant = Some(resolved.tenant.name.clone());
    who.user = Some(resolved.user.as_str().into());
    let span = tracing::Span::current();
    span.record("tenant", resolved.tenant.name.as_str());
    span.record("user", resolved.user.as_str());

    if let Err(e) = login::authenticate(app, &mut stream, &resolved, pending, &mut out).await {
        return Err(refuse_after(&mut stream, out, e).await);
    }
    let seen = match crate::admin::limits::admit(app, id, &resolved, stream.tcp()) {
        Ok(seen) => seen,
        Err(e) => return Err(refuse_after(&mut stream, out, e).await),
    };

    let pool = app
        .pools
        .pool(&resolved.tenant, &resolved.host, &resolved.user);
    let mode = resolved
        .tenant
        .pool_mode
        .unwrap_or(app.settings.proxy.pool_mode);
    let mut settings = client_settings(&startup.params);
    // Transaction mode needs no server until the first query when the pool already
    // knows what to tell the client (the common case for short-lived connections).
    let known = match mode {
        PoolMode::Transaction => pool
            .greeting()
            .filter(|greeting| greeting.reports_as_asked(&settings)),
        PoolMode::Session => None,
    };
    let server = match known {
        Some(greeting) => {
            greet_from(&greeting, &mut settings, &mut out);
            None
        }
        None => {
            seen.set_state(crate::metrics::ClientState::Waiting);
            let mut server = match app.pools.checkout(&pool).await {
                Ok(server) => server,
                Err(e) => return Err(refuse_after(&mut stream, out, Refusal::from(&e)).await),
            };
            if let Err(e) = greet_from_server(&mut server, &mut settings, &mut out).await {
                return Err(refuse_after(&mut stream, out, Refusal::from(&e)).await);
            }
            Some(server)
        }
    };
    let cancel = app.cancels.register();
    let key = cancel.key();
    messages::backend_key_data(&mut out, key.pid, key.secret);
    messages::ready_for_query(&mut out, b'I');
    let written = stream.write_all(&out).await;
    let stream = written.and_then(|()| stream.into_relay());
    let Ok(stream) = stream else {
        if let Some(server) = server {
            server.release(&app.settings.pool.reset_query).await;
        }
        return Ok(None);
    };

    tracing::debug!(?mode, "session started");
    // Boxed: the session lives on the heap once, not copied into each future above it.
    let txn = match mode {
        PoolMode::Transaction => Txn::following_settings(app.settings.pool.max_client_statements),
        PoolMode::Session => Txn::default(),
    };
    let carried = Carried {
        id,
        resolved,
        pool: Some((snapshot, pool)),
        settings,
        txn,
        cancel,
        seen,
    };
    let mut session = Box::new(Session::new(app, stream, server, mode, carried));
    if mode == PoolMode::Transaction {
        // The server was only needed to check the tenant and learn its parameters.
        session.detach();
    }
    Ok(Some(session))
}

/// Greets the client as a fresh server session of its pool would, with what it asked
/// for (`Greeting::reports_as_asked` holds): the settings it did not ask for are the
/// server's initial ones.
fn greet_from(greeting: &Greeting, settings: &mut Vec<(String, String)>, out: &mut BytesMut) {
    keep_only_changes(settings, &greeting.initial);
    for (name, value) in &greeting.params {
        let asked = settings.iter().find(|(n, _)| n == name);
        let value = asked.map_or(value, |(_, v)| v);
        messages::parameter_status(out, name, value);
    }
}

/// Greets the client with a server connection's own parameters after applying the
/// client's settings to it.
async fn greet_from_server(
    server: &mut PooledConn,
    settings: &mut Vec<(String, String)>,
    out: &mut BytesMut,
) -> Result<(), BackendError> {
    // What the client did not ask for, it gets as a fresh server session has it, not
    // as the previous client of this server connection left it (`sync_params`).
    server.conn().sync_params(settings).await?;
    // The client now believes every reported setting it is told below; those it may
    // change follow it to other servers, in the server's spelling.
    for name in CLIENT_PARAMETERS {
        if let Some(reported) = server.get().params().get(*name) {
            set_setting(settings, name, reported);
        }
    }
    keep_only_changes(settings, server.get().initial_params());
    for (name, value) in server.get().params() {
        messages::parameter_status(out, name, value);
    }
    Ok(())
}

/// Relays until the session ends or parks; what ended it, if the client was told, is
/// returned for the log.
async fn relay(session: Box<Session<'_>>) -> Result<Served, Refusal> {
    match session.run().await {
        End::Parked => Ok(Served::Parked),
        end => end.refusal().map_or(Ok(Served::Done), Err),
    }
}

async fn refuse(stream: &mut ClientStream, refusal: Refusal) -> Refusal {
    refuse_after(stream, BytesMut::new(), refusal).await
}

/// Writes what was already prepared for the client, then the FATAL error.
async fn refuse_after(stream: &mut ClientStream, mut out: BytesMut, refusal: Refusal) -> Refusal {
    out.extend_from_slice(&refusal.fatal());
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    refusal
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::app::{App, ClientId};
    use crate::config::Settings;
    use crate::registry::Registry;

    /// An idle client costs its task's state; keep it from growing unnoticed (rare
    /// paths such as opening a server connection are boxed for this reason).
    #[tokio::test]
    async fn client_task_state_stays_small() {
        let app = App::new(
            Settings::default(),
            Arc::new(Registry::new(Default::default())),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let task = super::serve(app, stream, addr, ClientId(1));
        let size = std::mem::size_of_val(&task) + std::mem::size_of::<super::Session<'static>>();
        assert!(size <= 1536, "a client task holds {size} bytes of state");
    }
}
