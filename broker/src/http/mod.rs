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
        .route("/v1/events", get(publish::history))
        .route("/metrics", get(metrics))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        )
        .nest("/admin/v1", admin)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(json_errors))
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

/// Turns the few error answers produced outside our handlers (a body over its limit, a wrong
/// method, a failed upgrade) into the JSON shape every other error has: `{error, message}`,
/// or RFC 6749 section 5.2 `{error, error_description}` on the token endpoint.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let token_endpoint = req.uri().path() == "/oauth2/token";
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let message = match status.as_u16() {
        413 => "the request body is too large",
        405 => "this method is not allowed on this path",
        415 => "unsupported content type",
        _ => status.canonical_reason().unwrap_or("request refused"),
    };
    let code = match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        413 | 431 => ErrorCode::TooLarge,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::Unavailable,
        s if s >= 500 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let (parts, _) = resp.into_parts();
    let body = if token_endpoint {
        json!({"error": if status.as_u16() >= 500 { "server_error" } else { "invalid_request" }, "error_description": message})
    } else {
        json!({"error": code.as_str(), "message": message})
    };
    let mut out = (status, Json(body)).into_response();
    // Keep headers such as `Allow`, but not the old body's type or length.
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    if token_endpoint {
        out.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    out
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
