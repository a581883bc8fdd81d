//! The HTTP surface on the broker's one port (DESIGN section 6).
//!
//! - `oauth`: `POST /oauth2/token`, `/.well-known/jwks.json`,
//!   `/.well-known/oauth-authorization-server`.
//! - `admin`: `/admin/v1/...`, behind the admin bearer credential.
//! - `stream`: `GET /v1/stream`, the WebSocket upgrade.
//! - `publish`: `POST /v1/events/{topic}`.
//! - here: `/healthz`, `/readyz`, and JSON 404s.

mod admin;
mod oauth;
mod publish;
mod stream;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use scopecast_protocol::ErrorCode;
use serde_json::json;

use crate::server::AppState;

/// Largest admin request body, in bytes (a JWK Set of 10 RSA keys fits well within).
const MAX_ADMIN_BODY_BYTES: usize = 256 * 1024;

pub(crate) fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route(
            "/applications",
            post(admin::create_application).get(admin::list_applications),
        )
        .route(
            "/applications/{id}",
            get(admin::show_application).patch(admin::update_application),
        )
        .route("/clients/{client_id}", get(admin::show_client))
        .route(
            "/clients/{client_id}/rotate-secret",
            post(admin::rotate_secret),
        )
        .route("/clients/{client_id}/keys", put(admin::set_keys))
        .route(
            "/clients/{client_id}/client-id-header",
            put(admin::set_client_id_header),
        )
        .route("/clients/{client_id}/activate", post(admin::activate))
        .route("/clients/{client_id}/deactivate", post(admin::deactivate))
        .route("/audit", get(admin::audit))
        .route("/keys/rotate", post(admin::rotate_keys))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ))
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY_BYTES));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/oauth2/token",
            post(oauth::token).layer(DefaultBodyLimit::max(oauth::MAX_TOKEN_REQUEST_BYTES)),
        )
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route("/v1/stream", get(stream::stream))
        .route(
            "/v1/events/{topic}",
            post(publish::publish).layer(DefaultBodyLimit::disable()),
        )
        .route("/metrics", get(metrics))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        )
        .nest("/admin/v1", admin)
        .fallback(not_found)
        .with_state(state)
}

/// Prometheus text exposition.
async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.inner.hub.metrics.render();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

/// Liveness: the process serves HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 while accepting work, 503 once shutdown has begun.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(json!({"status": "ready", "environment": state.inner.config.environment.as_str()}))
            .into_response()
    } else {
        error_response(
            ErrorCode::Unavailable,
            "shutting_down",
            "the broker is shutting down",
        )
    }
}

async fn not_found() -> Response {
    error_response(ErrorCode::NotFound, "not_found", "no such endpoint")
}

/// A JSON error body `{error, message}` with the status that goes with `code`
/// (PROTOCOL.md section 6).
pub(crate) fn error_response(code: ErrorCode, error: &str, message: &str) -> Response {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"error": error, "message": message}))).into_response()
}
