//! One client connection, top to bottom: handshake → resolve → authenticate →
//! server → relay. Each phase refuses with its own SQLSTATE.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::handshake::{read_startup, Handshake, HandshakeError};
use super::params::{client_settings, set_setting};
use super::refusal::Refusal;
use super::relay::Session;
use super::resolve::resolve;
use crate::app::{App, ClientId};
use crate::backend::CLIENT_PARAMETERS;
use crate::config::PoolMode;
use crate::protocol::messages;
use crate::protocol::startup::SUPPORTED_MINOR;

/// Serves one client until it leaves. Never panics on input; every refusal is an
/// ErrorResponse.
pub async fn serve(app: Arc<App>, stream: TcpStream, peer: SocketAddr, id: ClientId) {
    let span = tracing::info_span!("client", %id, %peer, tenant = tracing::field::Empty, user = tracing::field::Empty);
    async move {
        let _ = stream.set_nodelay(true);
        // The startup phase is boxed: its state is freed once the relay runs, so a
        // long-lived idle client keeps only the relay's state.
        let result = match Box::pin(start(&app, stream)).await {
            Ok(Some(session)) => relay(session).await,
            Ok(None) => Ok(()),
            Err(refusal) => Err(refusal),
        };
        if let Err(refusal) = result {
            tracing::info!(code = refusal.code.code(), "refused: {}", refusal.message);
        }
    }
    .instrument(span)
    .await
}

/// Handshake to ReadyForQuery: a session ready to relay, or `None` when there is
/// nothing to serve (a cancel request, a client that left). Refusals are written to
/// the client here; the returned one is for the log.
async fn start(app: &App, mut stream: TcpStream) -> Result<Option<Box<Session<'_>>>, Refusal> {
    let startup = match read_startup(&mut stream, app.settings.proxy.startup_timeout).await {
        Ok(Handshake::Startup(startup)) => startup,
        Ok(Handshake::Cancel(key)) => {
            app.cancels.cancel(key).await;
            return Ok(None);
        }
        Err(HandshakeError::Closed) => return Ok(None),
        Err(e) => return Err(refuse(&mut stream, Refusal::from(&e)).await),
    };

    let mut out = BytesMut::new();
    if startup.needs_negotiation() {
        messages::negotiate_protocol_version(&mut out, SUPPORTED_MINOR, &startup.protocol_options);
    }

    let snapshot = app.registry.snapshot();
    let resolved = match resolve(&snapshot, &app.settings.proxy.tenant_from, &startup) {
        Ok(resolved) => resolved,
        Err(e) => return Err(refuse_after(&mut stream, out, Refusal::from(&e)).await),
    };
    let span = tracing::Span::current();
    span.record("tenant", resolved.tenant.name.as_str());
    span.record("user", resolved.user.as_str());

    // Client authentication: `trust` is the method this version serves.
    messages::authentication_ok(&mut out);

    let pool = app
        .pools
        .pool(&resolved.tenant, &resolved.host, &resolved.user);
    let mut server = match app.pools.checkout(&pool).await {
        Ok(server) => server,
        Err(e) => return Err(refuse_after(&mut stream, out, Refusal::from(&e)).await),
    };
    let mut settings = client_settings(&startup.params);
    // What the client did not ask for, it gets as a fresh server session has it, not
    // as the previous client of this server connection left it.
    for (name, value) in server.get().initial_params() {
        if !settings.iter().any(|(n, _)| n == name) {
            settings.push((name.clone(), value.clone()));
        }
    }
    if let Err(e) = server.conn().sync_params(&settings).await {
        return Err(refuse_after(&mut stream, out, Refusal::from(&e)).await);
    }
    // The client now believes every reported setting it is told below; those it may
    // change follow it to other servers, in the server's spelling. (A SET to a value
    // a server already has is not reported, so the client's view must be whole.)
    for name in CLIENT_PARAMETERS {
        if let Some(reported) = server.get().params().get(*name) {
            set_setting(&mut settings, name, reported);
        }
    }
    for (name, value) in server.get().params() {
        messages::parameter_status(&mut out, name, value);
    }
    let cancel = app.cancels.register();
    let key = cancel.key();
    messages::backend_key_data(&mut out, key.pid, key.secret);
    messages::ready_for_query(&mut out, b'I');
    if stream.write_all(&out).await.is_err() {
        server.release(&app.settings.pool.reset_query).await;
        return Ok(None);
    }

    let mode = resolved
        .tenant
        .pool_mode
        .unwrap_or(app.settings.proxy.pool_mode);
    tracing::debug!(?mode, "session started");
    // Boxed: the session lives on the heap once, not copied into each future above it.
    let mut session = Box::new(Session::new(
        app, stream, server, mode, resolved, settings, cancel,
    ));
    session.remember_pool(snapshot, pool);
    if mode == PoolMode::Transaction {
        // The server was only needed to check the tenant and learn its parameters.
        session.detach();
    }
    Ok(Some(session))
}

/// Relays until the session ends; what ended it, if the client was told, is returned
/// for the log.
async fn relay(session: Box<Session<'_>>) -> Result<(), Refusal> {
    match session.run().await.refusal() {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

async fn refuse(stream: &mut TcpStream, refusal: Refusal) -> Refusal {
    refuse_after(stream, BytesMut::new(), refusal).await
}

/// Writes what was already prepared for the client, then the FATAL error.
async fn refuse_after(stream: &mut TcpStream, mut out: BytesMut, refusal: Refusal) -> Refusal {
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
        assert!(
            size <= 3 * 1024,
            "a client task holds {size} bytes of state"
        );
    }
}
