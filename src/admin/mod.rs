//! Operating the proxy: the admin console over the wire protocol (`console`, with
//! one file per command group), the limits on clients (`limits`), and the HTTP
//! listener with /metrics, /healthz, /readyz and the status page (`http`).

pub mod api;
pub mod command;
pub mod console;
pub mod control;
pub mod http;
pub mod limits;
pub mod moving;
mod page;
pub mod prom;
pub mod show;
pub mod wire;

use std::net::SocketAddr;

use crate::app::App;
use crate::config::{AdminSettings, AuthMethod};
use crate::protocol::sqlstate;
use crate::protocol::startup::StartupMessage;
use crate::proxy::refusal::Refusal;

/// Whether this client asks for the admin console rather than a tenant: the
/// console database wins over any tenant of that name.
pub fn is_console(settings: &AdminSettings, startup: &StartupMessage) -> bool {
    startup.get("database") == Some(settings.console_database.as_str())
}

/// Who may use the console: the users in `admin.users`; with `trust`, only from
/// loopback unless `admin.console_trust_remote`. The one place this is decided, so
/// client authentication plugs in here.
pub fn console_access(app: &App, user: &str, peer: Option<SocketAddr>) -> Result<(), Refusal> {
    let admin = &app.settings.admin;
    if !admin.users.iter().any(|u| u == user) {
        return Err(Refusal::new(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            format!(
                "user \"{user}\" may not use the admin console \"{}\" (admin.users)",
                admin.console_database
            ),
        ));
    }
    let loopback = peer.is_some_and(|p| p.ip().is_loopback());
    if app.settings.proxy.auth == AuthMethod::Trust && !loopback && !admin.console_trust_remote {
        return Err(Refusal::new(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "the admin console takes unauthenticated (trust) connections only from loopback (admin.console_trust_remote)",
        ));
    }
    Ok(())
}
