//! Tenant moves from the console: `MOVE tenant TO host [COPY] [DROP SOURCE]`
//! (answers when the move has ended), `ABORT MOVE tenant` and `SHOW MOVES`; and over
//! HTTP (behind `admin.http_token`, like the registry API): `POST
//! /api/tenants/{name}/move` with `{"to": "pg-b", "copy": true}` (answers when the
//! move has ended, or at once with `"wait": false`), `DELETE
//! /api/tenants/{name}/move` (abort) and `GET /api/moves`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::control::Failed;
use super::show::Rows;
use super::wire::{col, Column, Type};
use crate::app::App;
use crate::moves::{engine, MoveError, MoveRequest};

/// `MOVE …` as parsed: None when the words are not a move.
pub fn parse(words: &[&str]) -> Option<MoveRequest> {
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    if upper.len() < 4 || upper[0] != "MOVE" || upper[2] != "TO" {
        return None;
    }
    let mut request = MoveRequest {
        tenant: unquote(words[1]),
        to: unquote(words[3]),
        copy: false,
        drop_source: false,
    };
    let mut rest = upper[4..].iter().map(String::as_str);
    while let Some(word) = rest.next() {
        match word {
            "COPY" => request.copy = true,
            "DROP" if rest.next() == Some("SOURCE") => request.drop_source = true,
            _ => return None,
        }
    }
    Some(request)
}

fn unquote(word: &str) -> String {
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => word.to_string(),
    }
}

fn failed(e: MoveError) -> Failed {
    Failed {
        code: e.code(),
        message: e.to_string(),
    }
}

/// Runs a move to its end; what it did, or why it failed.
pub async fn run(app: &Arc<App>, request: &MoveRequest) -> Result<String, Failed> {
    let running = engine::start(app, request.clone()).await.map_err(failed)?;
    let mut done = running.done.subscribe();
    let _ = done.wait_for(|d| d.is_some()).await;
    let outcome = done.borrow().clone().expect("ended");
    outcome.map_err(|message| {
        failed(match message.contains(" aborted;") {
            true => MoveError::Aborted(message),
            false => MoveError::Failed(message),
        })
    })
}

pub async fn abort(app: &Arc<App>, tenant: &str) -> Result<String, Failed> {
    engine::abort(app, tenant).await.map_err(failed)
}

pub const COLUMNS: &[Column] = &[
    col("tenant", Type::Text),
    col("from_host", Type::Text),
    col("to_host", Type::Text),
    col("copy", Type::Bool),
    col("phase", Type::Text),
    col("running", Type::Bool),
    col("rows_done", Type::Int8),
    col("rows_total", Type::Int8),
    col("bytes_done", Type::Int8),
    col("bytes_total", Type::Int8),
    col("paused_ms", Type::Int8),
    col("started_at", Type::Int8),
    col("move_id", Type::Text),
    col("instance", Type::Text),
    // Last: the CLI prints it.
    col("message", Type::Text),
];

/// Every recorded move (here, the state file's, or the registry database's), and
/// whether it runs now; `running` false for one not finished: cut short.
pub async fn rows(app: &App) -> Result<Rows, Failed> {
    let listed = app.moves.list().await.map_err(|e| Failed {
        code: crate::protocol::sqlstate::CONNECTION_FAILURE,
        message: format!("cannot read the recorded moves: {e}"),
    })?;
    Ok(listed
        .into_iter()
        .map(|f| {
            let r = f.record;
            vec![
                r.tenant.into(),
                r.from.into(),
                r.to.into(),
                r.copy.into(),
                r.phase.as_str().into(),
                f.owner_alive.into(),
                r.rows_done.into(),
                r.rows_total.into(),
                r.bytes_done.into(),
                r.bytes_total.into(),
                r.paused_ms.into(),
                r.started_at.into(),
                r.id.into(),
                r.instance.into(),
                r.message.into(),
            ]
        })
        .collect())
}

/// Recorded moves as JSON objects, each with `running`.
async fn listed(app: &App) -> Result<Vec<serde_json::Value>, String> {
    Ok(app
        .moves
        .list()
        .await?
        .into_iter()
        .map(|f| {
            let mut value = serde_json::to_value(&f.record).unwrap_or_default();
            value["running"] = f.owner_alive.into();
            value
        })
        .collect())
}

async fn one(app: &App, tenant: &str) -> Option<serde_json::Value> {
    let found = app.moves.find(tenant).await.ok()??;
    serde_json::to_value(&found.record).ok()
}

pub fn routes(app: &Arc<App>) -> Router {
    let state: super::api::AppState = Arc::downgrade(app);
    Router::new()
        .route("/api/moves", get(list))
        .route("/api/tenants/{name}/move", post(start).delete(cancel))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::api::token_required,
        ))
        .with_state(state)
}

#[derive(Deserialize)]
struct MoveBody {
    to: String,
    #[serde(default)]
    copy: bool,
    #[serde(default)]
    drop_source: bool,
    /// Answer when the move has ended (the default), or at once.
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn status_of(e: &MoveError) -> StatusCode {
    match e {
        MoveError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        MoveError::Busy(_) | MoveError::Elsewhere { .. } => StatusCode::CONFLICT,
        MoveError::Aborted(_) | MoveError::Failed(_) => StatusCode::CONFLICT,
    }
}

fn stopped() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "stopped".into())
}

async fn list(State(state): State<super::api::AppState>) -> Response {
    let Some(app) = state.upgrade() else {
        return stopped();
    };
    match listed(&app).await {
        Ok(moves) => Json(moves).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the recorded moves: {e}"),
        ),
    }
}

async fn start(
    State(state): State<super::api::AppState>,
    Path(name): Path<String>,
    Json(body): Json<MoveBody>,
) -> Response {
    let Some(app) = state.upgrade() else {
        return stopped();
    };
    let request = MoveRequest {
        tenant: name.clone(),
        to: body.to,
        copy: body.copy,
        drop_source: body.drop_source,
    };
    if !body.wait {
        return match engine::start(&app, request).await {
            Ok(_) => (StatusCode::ACCEPTED, Json(one(&app, &name).await)).into_response(),
            Err(e) => error(status_of(&e), e.to_string()),
        };
    }
    match run(&app, &request).await {
        Ok(message) => {
            Json(json!({ "message": message, "move": one(&app, &name).await })).into_response()
        }
        Err(failed) => error(StatusCode::CONFLICT, failed.message),
    }
}

async fn cancel(State(state): State<super::api::AppState>, Path(name): Path<String>) -> Response {
    let Some(app) = state.upgrade() else {
        return stopped();
    };
    match engine::abort(&app, &name).await {
        Ok(message) => Json(json!({ "message": message })).into_response(),
        Err(e) => error(status_of(&e), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_words() {
        let r = parse(&["MOVE", "acme", "to", "pg-b", "copy"]).unwrap();
        assert_eq!(
            (r.tenant.as_str(), r.to.as_str(), r.copy),
            ("acme", "pg-b", true)
        );
        assert!(!r.drop_source);
        let r = parse(&["move", "\"Acme\"", "TO", "b", "COPY", "DROP", "SOURCE"]).unwrap();
        assert_eq!(r.tenant, "Acme");
        assert!(r.drop_source);
        assert!(parse(&["MOVE", "acme", "pg-b"]).is_none());
        assert!(parse(&["MOVE", "acme", "TO", "b", "FAST"]).is_none());
    }
}
