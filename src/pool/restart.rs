//! A host restarting versus a host stopped.
//!
//! A restart (`pg_ctl restart`) ends every server session with `FATAL 57P01`, then the
//! host refuses TCP for a moment, then answers `57P03` ("starting up") until it takes
//! connections again. A client arriving meanwhile should wait for it, up to its
//! checkout's time; a client of a host that is simply down should hear `08001` at once.
//! The difference the proxy can see is what came before: a host whose sessions were
//! ended by a shutdown (`57P01`/`57P02`) or that answered `57P03`, within the last
//! `pool.checkout_timeout`, counts as restarting, and a refused connection there is
//! tried again; a host never seen going down that refuses TCP is refused at once.
//! An immediate-mode stop (a crash) ends sessions with a warning, not a FATAL: it is
//! not waited for, unless the host then answers `57P03` (crash recovery).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::{self, BackendError, BackendTarget, ServerConn};

/// First pause between attempts at a restarting host; doubled up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What one host was last seen doing, as far as restarts go.
#[derive(Default)]
pub(super) struct RestartWatch {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When a session there last ended by a shutdown, or it last answered 57P03.
    last_down: Option<Instant>,
    /// A connection there has been tried again and has not succeeded since: logged
    /// once when it starts and once when it ends.
    retrying: bool,
}

/// Whether a server's ErrorResponse with this SQLSTATE says its host is going down
/// or not yet up: admin shutdown (also `pg_terminate_backend`), crash shutdown,
/// cannot connect now.
pub fn is_shutdown_code(code: &[u8]) -> bool {
    matches!(code, b"57P01" | b"57P02" | b"57P03")
}

impl RestartWatch {
    /// A server session on this host ended by a shutdown, or the host said 57P03.
    pub(super) fn seen_down(&self) {
        self.lock().last_down = Some(Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the failed connect `error` is worth another attempt: the host said
    /// 57P03, or it refused TCP (or dropped the connection during startup) within
    /// `window` of being seen going down.
    fn worth_retrying(&self, address: &str, error: &BackendError, window: Duration) -> bool {
        let mut state = self.lock();
        let recently_down = state.last_down.is_some_and(|t| t.elapsed() < window);
        let refused = match error {
            BackendError::Refused(fields) if fields.code == "57P03" => {
                state.last_down = Some(Instant::now());
                if !state.retrying {
                    state.retrying = true;
                    tracing::warn!(address, error = %error, "host is starting up or shutting down (57P03): connections there are tried again within each client's checkout time");
                }
                return true;
            }
            BackendError::Connect { source, .. } => {
                source.kind() == std::io::ErrorKind::ConnectionRefused
            }
            BackendError::Io(_) => true,
            _ => false,
        };
        if !refused {
            return false;
        }
        if recently_down && !state.retrying {
            state.retrying = true;
            tracing::warn!(address, error = %error, "host refuses connections after its sessions ended by a shutdown: taken as a restart, connections there are tried again within each client's checkout time (for up to pool.checkout_timeout after it went down)");
        } else if !recently_down && state.retrying {
            state.retrying = false;
            tracing::warn!(address, error = %error, "host did not come back within pool.checkout_timeout of going down: refusing at once again");
        }
        recently_down
    }

    fn back(&self, address: &str) {
        let mut state = self.lock();
        if state.retrying {
            tracing::warn!(address, "host is back: connections there open again");
        }
        *state = State::default();
    }
}

/// Opens a server connection as `backend::connect` does; while the host restarts,
/// tries again with a short backoff until `deadline`. The last error is returned when
/// it does not come back in time (or was not restarting).
pub(super) async fn connect(
    target: &BackendTarget,
    watch: &RestartWatch,
    window: Duration,
    connect_timeout: Duration,
    max_message: usize,
    deadline: Instant,
) -> Result<ServerConn, BackendError> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match backend::connect(target, connect_timeout, max_message).await {
            Ok(conn) => {
                watch.back(&target.address);
                return Ok(conn);
            }
            Err(e) => {
                if !watch.worth_retrying(&target.address, &e, window)
                    || Instant::now() + backoff >= deadline
                {
                    return Err(e);
                }
                tracing::debug!(address = %target.address, error = %e, "host restarting; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> BackendError {
        BackendError::Connect {
            address: "x".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        }
    }

    fn starting_up() -> BackendError {
        BackendError::Refused(crate::protocol::messages::ErrorFields {
            code: "57P03".into(),
            message: "the database system is starting up".into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_refused_host_is_retried_only_after_it_was_seen_going_down() {
        let window = Duration::from_secs(30);
        let watch = RestartWatch::default();
        // Never seen going down: a stopped host.
        assert!(!watch.worth_retrying("x", &refused(), window));
        watch.seen_down();
        assert!(watch.worth_retrying("x", &refused(), window));
        // Past the window it counts as stopped again.
        assert!(!watch.worth_retrying("x", &refused(), Duration::ZERO));
        // Back: forgotten.
        watch.seen_down();
        watch.back("x");
        assert!(!watch.worth_retrying("x", &refused(), window));
    }

    #[test]
    fn starting_up_is_always_retried_and_marks_the_host() {
        let window = Duration::from_secs(30);
        let watch = RestartWatch::default();
        assert!(watch.worth_retrying("x", &starting_up(), window));
        assert!(watch.worth_retrying("x", &refused(), window));
        let timeout = BackendError::Timeout {
            address: "x".into(),
            timeout: window,
        };
        assert!(!watch.worth_retrying("x", &timeout, window));
        assert!(is_shutdown_code(b"57P01") && !is_shutdown_code(b"57P05"));
    }
}
