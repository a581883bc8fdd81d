//! The HTTP surface on the broker's one port (DESIGN section 6): health and readiness now;
//! the token endpoint, admin API, publish API, stream upgrade and metrics join this router.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use scopecast_protocol::ErrorCode;
use serde_json::json;

use crate::server::AppState;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
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
