//! `GET /v1/stream`: the WebSocket upgrade (PROTOCOL.md section 3). The token is verified
//! before the upgrade is accepted when it comes in the `Authorization` header; tokens in the
//! URL are refused; the subprotocol, when offered, must include `scopecast.v1`.

// Helpers return `Result<_, Response>`: the error is a ready HTTP answer, built only on the
// error path, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use scopecast_protocol::{ErrorCode, Reason, SUBPROTOCOL};
use serde_json::json;

use crate::auth::token::VerifyError;
use crate::server::AppState;
use crate::session;

/// Query parameter names that would carry a token (RFC 6750 section 2.3 and common variants).
const TOKEN_PARAMS: [&str; 6] = [
    "access_token",
    "token",
    "bearer",
    "auth",
    "authorization",
    "jwt",
];

pub(crate) fn json_error(
    status: StatusCode,
    code: ErrorCode,
    reason: Reason,
    message: &str,
) -> Response {
    (
        status,
        axum::Json(json!({"error": code.as_str(), "reason": reason.as_str(), "message": message})),
    )
        .into_response()
}

/// True when the query string carries something that looks like a token.
pub(crate) fn token_in_query(uri: &Uri) -> bool {
    let Some(q) = uri.query() else { return false };
    form_urlencoded::parse(q.as_bytes()).any(|(k, v)| {
        TOKEN_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p))
            || (v.starts_with("eyJ") && v.split('.').count() == 3)
    })
}

/// The bearer token of an `Authorization` header, if it has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Response> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or("");
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(unauthorized(
            "the Authorization header must be `Bearer <access token>`",
            "invalid_request",
        )),
    }
}

/// 401 with an RFC 6750 section 3 challenge (`error` is the challenge's error code); the body's
/// reason is `invalid_token`.
pub(crate) fn unauthorized(message: &str, error: &str) -> Response {
    unauthorized_for(message, error, Reason::InvalidToken)
}

/// 401 with an RFC 6750 section 3 challenge and `reason` in the body: RFC 6750 has one error
/// code for every bad token, PROTOCOL.md section 6 tells an expired one (`token_expired`) apart.
fn unauthorized_for(message: &str, error: &str, reason: Reason) -> Response {
    let mut resp = json_error(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        reason,
        message,
    );
    let challenge = format!(
        "Bearer realm=\"scopecast\", error=\"{error}\", error_description=\"{}\"",
        message.replace('"', "'")
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The HTTP answer to a refused token.
pub(crate) fn refused_token(e: &VerifyError) -> Response {
    match e {
        VerifyError::ClientInactive | VerifyError::WrongEnvironment => json_error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            Reason::ClientInactive,
            &e.to_string(),
        ),
        _ => unauthorized_for(&e.to_string(), "invalid_token", e.reason()),
    }
}

/// `GET /v1/stream`.
pub(crate) async fn stream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let hub = state.inner.hub.clone();
    if token_in_query(&uri) {
        hub.note_refused(None, peer, "token_in_url", "token in the URL of an upgrade");
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            Reason::TokenInUrl,
            "tokens are refused in URLs (they end up in logs): send `Authorization: Bearer` or a first `auth` frame",
        );
    }
    if let Some(offered) = headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
        let offered = offered.to_str().unwrap_or("");
        if !offered.split(',').any(|p| p.trim() == SUBPROTOCOL) {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                Reason::InvalidField,
                &format!("Sec-WebSocket-Protocol must include {SUBPROTOCOL}"),
            );
        }
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            tracing::info!(%peer, reason = "upgrade_required", detail = %rejection.body_text(), "upgrade refused");
            let mut resp = json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                Reason::UpgradeRequired,
                &format!(
                    "GET /v1/stream is a WebSocket endpoint ({}): connect with a WebSocket client \
                     offering the subprotocol {SUBPROTOCOL}; HTTP clients read history with GET /v1/events",
                    rejection.body_text()
                ),
            );
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            return resp;
        }
    };
    if hub.shutdown.is_cancelled() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            Reason::ShuttingDown,
            "the broker is shutting down",
        );
    }
    let principal = match bearer(&headers) {
        Err(resp) => return resp,
        Ok(None) => None,
        Ok(Some(token)) => match hub.verifier.verify(token).await {
            Ok(p) => Some(p),
            Err(e) => {
                hub.note_refused(Some(token), peer, e.label(), &e.to_string());
                return refused_token(&e);
            }
        },
    };
    if let Some(p) = &principal
        && hub.sessions.count(&p.client_id) >= hub.limits.max_connections_per_client
    {
        hub.metrics
            .refused_connections
            .with_label_values(&[p.client_id.as_str(), "too_many_connections"])
            .inc();
        tracing::info!(client_id = %p.client_id, %peer, reason = "too_many_connections", "upgrade refused");
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            Reason::TooManyConnections,
            &format!(
                "client {} already holds its most connections ({})",
                p.client_id, hub.limits.max_connections_per_client
            ),
        );
    }
    let limits = &hub.limits;
    let tracker = state.inner.sessions.clone();
    // Boxed: the upgrade task keeps this closure's captures for the connection's life.
    let start = Box::new(session::Start {
        hub: hub.clone(),
        principal,
        peer,
    });
    ws.protocols([SUBPROTOCOL])
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(limits.write_buffer_bytes)
        .on_upgrade(move |socket| tracker.track_future(session::run(Box::new(socket), start)))
}
