//! The registry as HTTP JSON under /api on the admin listener: the same operations
//! as `pgtenant tenant|host|user …`, through the same `Store`. Changes land in the
//! registry source; this instance and every other one pick them up from there.
//!
//! The API needs `admin.http_token`: without one it answers 403, since it can point
//! tenants at other servers.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::app::App;
use crate::auth::Verifier;
use crate::registry::store::{
    HostRecord, Store, StoreError, TenantRecord, TenantUpdate, UserRecord,
};

pub(super) type AppState = std::sync::Weak<App>;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::Exists { .. } => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

type Answer = Result<Response, ApiError>;

/// The /api routes; the caller puts them behind the bearer-token check.
pub fn routes(app: &Arc<App>) -> Router {
    let state: AppState = Arc::downgrade(app);
    Router::new()
        .route("/api/tenants", get(list_tenants).post(add_tenant))
        .route(
            "/api/tenants/{name}",
            get(show_tenant).patch(update_tenant).delete(remove_tenant),
        )
        .route("/api/hosts", get(list_hosts).post(add_host))
        .route("/api/hosts/{name}", get(show_host).delete(remove_host))
        .route("/api/users", get(list_users).post(add_user))
        .route("/api/users/{name}", axum::routing::delete(remove_user))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            token_required,
        ))
        .with_state(state)
}

/// `Authorization: Bearer <admin.http_token>` on every request; with no token
/// configured the API is off (403).
pub(super) async fn token_required(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    use subtle::ConstantTimeEq;
    let Some(app) = state.upgrade() else {
        return ApiError(StatusCode::SERVICE_UNAVAILABLE, "stopped".into()).into_response();
    };
    let Some(token) = app.settings.admin.http_token.as_deref() else {
        return ApiError(
            StatusCode::FORBIDDEN,
            "the registry API needs admin.http_token to be set".into(),
        )
        .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (admin.http_token)".into(),
        )
        .into_response();
    }
    drop(app);
    next.run(request).await
}

fn store(state: &AppState) -> Result<Store, ApiError> {
    let app = state
        .upgrade()
        .ok_or_else(|| ApiError(StatusCode::SERVICE_UNAVAILABLE, "stopped".into()))?;
    Ok(Store::open(&app.settings)?)
}

fn ok<T: serde::Serialize>(status: StatusCode, body: T) -> Answer {
    Ok((status, Json(body)).into_response())
}

fn gone() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_tenants(State(s): State<AppState>) -> Answer {
    ok(StatusCode::OK, store(&s)?.tenants().await?)
}

async fn show_tenant(State(s): State<AppState>, Path(name): Path<String>) -> Answer {
    ok(StatusCode::OK, store(&s)?.tenant(&name).await?)
}

async fn add_tenant(State(s): State<AppState>, Json(tenant): Json<TenantRecord>) -> Answer {
    let store = store(&s)?;
    let name = tenant.name.clone();
    store.add_tenant(tenant).await?;
    ok(StatusCode::CREATED, store.tenant(&name).await?)
}

async fn update_tenant(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(update): Json<TenantUpdate>,
) -> Answer {
    ok(
        StatusCode::OK,
        store(&s)?.update_tenant(&name, update).await?,
    )
}

async fn remove_tenant(State(s): State<AppState>, Path(name): Path<String>) -> Answer {
    store(&s)?.remove_tenant(&name).await?;
    gone()
}

async fn list_hosts(State(s): State<AppState>) -> Answer {
    ok(StatusCode::OK, store(&s)?.hosts().await?)
}

async fn show_host(State(s): State<AppState>, Path(name): Path<String>) -> Answer {
    ok(StatusCode::OK, store(&s)?.host(&name).await?)
}

async fn add_host(State(s): State<AppState>, Json(host): Json<HostRecord>) -> Answer {
    let store = store(&s)?;
    let name = host.name.clone();
    store.add_host(host).await?;
    ok(StatusCode::CREATED, store.host(&name).await?)
}

async fn remove_host(State(s): State<AppState>, Path(name): Path<String>) -> Answer {
    store(&s)?.remove_host(&name).await?;
    gone()
}

async fn list_users(State(s): State<AppState>) -> Answer {
    ok(StatusCode::OK, store(&s)?.users().await?)
}

/// Takes `{"name", "password", "tenants"}`; the password is stored as a SCRAM
/// verifier (a value already in verifier form is kept as it is).
async fn add_user(State(s): State<AppState>, Json(mut user): Json<UserRecord>) -> Answer {
    if user.password.is_empty() {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "password must not be empty".into(),
        ));
    }
    if user.password.parse::<Verifier>().is_err() {
        user.password = Verifier::scram_text(&user.password);
    }
    let store = store(&s)?;
    let name = user.name.clone();
    store.put_user(user).await?;
    let stored = store.users().await?.into_iter().find(|u| u.name == name);
    ok(StatusCode::CREATED, stored)
}

async fn remove_user(State(s): State<AppState>, Path(name): Path<String>) -> Answer {
    store(&s)?.remove_user(&name).await?;
    gone()
}
