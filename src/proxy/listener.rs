//! Accepting clients: one task per connection, a cap on how many are served at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::refusal::Refusal;
use crate::app::App;
use crate::protocol::sqlstate;

/// Accepts until `shutdown` turns true.
pub async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let max = app.settings.proxy.max_client_conn;
        if app.clients.fetch_add(1, Ordering::AcqRel) >= max {
            app.clients.fetch_sub(1, Ordering::AcqRel);
            tokio::spawn(async move {
                let refusal = Refusal::new(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    format!(
                        "too many clients: the proxy serves at most {max} (proxy.max_client_conn)"
                    ),
                );
                let _ = stream.write_all(&refusal.fatal()).await;
            });
            continue;
        }
        let id = app.next_client_id();
        super::client::spawn(app.clone(), stream, peer, id);
    }
}
