//! The HTTP listener (`admin.http_listen`): /metrics, /healthz, /readyz, the status
//! page at / and its data at /status.json. With `admin.http_token` set, everything
//! but /healthz needs `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::app::App;

/// The app, held weakly: a stopped proxy is not kept alive by its HTTP listener.
#[derive(Clone)]
struct Shared(Weak<App>);

impl Shared {
    fn app(&self) -> Result<Arc<App>, Box<Response>> {
        self.0
            .upgrade()
            .ok_or_else(|| Box::new((StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_response()))
    }
}

/// Binds `address` and serves until the runtime stops; the bound address.
pub async fn start(app: &Arc<App>, address: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    let shared = Shared(Arc::downgrade(app));
    let router = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/status.json", get(status))
        .route_layer(middleware::from_fn_with_state(shared.clone(), bearer))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shared)
        .merge(crate::admin::api::routes(app))
        .merge(crate::admin::moving::routes(app));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "HTTP listener stopped");
        }
    });
    tracing::info!(%local, "HTTP listening (/metrics, /healthz, /readyz, /)");
    Ok(local)
}

async fn bearer(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let app = match shared.app() {
        Ok(app) => app,
        Err(r) => return *r,
    };
    if let Some(token) = &app.settings.admin.http_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            // A browser opening the status page passes it in the address instead.
            .or_else(|| {
                request
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
            });
        if given != Some(token.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required (admin.http_token)\n",
            )
                .into_response();
        }
    }
    drop(app);
    next.run(request).await
}

async fn metrics(State(shared): State<Shared>) -> Response {
    match shared.app() {
        Ok(app) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            super::prom::render(&app),
        )
            .into_response(),
        Err(r) => *r,
    }
}

/// Ready while accepting clients with a registry loaded; 503 once stopping.
async fn readyz(State(shared): State<Shared>) -> Response {
    match shared.app() {
        Ok(app) if *app.shutdown.borrow() || *app.stop_requested.borrow() => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
        }
        Ok(_) => "ready\n".into_response(),
        Err(r) => *r,
    }
}

async fn page() -> Html<&'static str> {
    Html(super::page::HTML)
}

async fn status(State(shared): State<Shared>) -> Response {
    match shared.app() {
        Ok(app) => (
            [(header::CONTENT_TYPE, "application/json")],
            super::page::status_json(&app),
        )
            .into_response(),
        Err(r) => *r,
    }
}
