//! `GET /v1/stream`: the WebSocket upgrade (PROTOCOL.md section 3). The token is verified
//! before the upgrade is accepted when it comes in the `Authorization` header; tokens in the
//! URL are refused; the subprotocol, when offered, must include `scopecast.v1`.

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use scopecast_protocol::{Reason, SUBPROTOCOL, Scope};

use super::auth::{bearer, refused_token, token_in_query, token_in_url};
use super::error::ApiError;
use crate::session;
use crate::state::Broker;

/// `GET /v1/stream`.
pub(crate) async fn stream(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if token_in_query(&uri) {
        return Err(token_in_url(&state, peer));
    }
    if let Some(offered) = headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
        let offered = offered.to_str().unwrap_or("");
        if !offered.split(',').any(|p| p.trim() == SUBPROTOCOL) {
            return Err(ApiError::new(
                Reason::InvalidField,
                format!("Sec-WebSocket-Protocol must include {SUBPROTOCOL}"),
            )
            .field("Sec-WebSocket-Protocol"));
        }
    }
    let ws = ws.map_err(|rejection| {
        tracing::info!(%peer, reason = "upgrade_required", detail = %rejection.body_text(), "upgrade refused");
        ApiError::new(
            Reason::UpgradeRequired,
            format!(
                "GET /v1/stream is a WebSocket endpoint ({}): connect with a WebSocket client \
                 offering the subprotocol {SUBPROTOCOL}; HTTP clients read history with GET /v1/events",
                rejection.body_text()
            ),
        )
        .upgrade()
    })?;
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            Reason::ShuttingDown,
            "the broker is shutting down",
        ));
    }
    let principal = match bearer(&headers)? {
        None => None,
        Some(token) => match state.verifier.verify(token).await {
            Ok(p) => Some(p),
            Err(e) => {
                state
                    .access
                    .refused(Some(token), peer, e.label(), &e.to_string());
                return Err(refused_token(&e));
            }
        },
    };
    let limits = &state.config.limits;
    // A fast 429 before the upgrade; the session's own registration is the authoritative
    // count (and closes with 4029 when a race let one more through).
    if let Some(p) = &principal
        && state.sessions.count(&p.client_id) >= limits.max_connections_per_client
    {
        state
            .access
            .refused_client(&p.client_id, peer, "too_many_connections");
        return Err(ApiError::new(
            Reason::TooManyConnections,
            format!(
                "client {} already holds its most connections ({})",
                p.client_id, limits.max_connections_per_client
            ),
        ));
    }
    let tracker = state.session_tasks.clone();
    // A publisher reads many frames per socket read; a subscriber's idle buffer stays small.
    let publishes = principal
        .as_ref()
        .is_some_and(|p| p.scope.iter().any(|s| matches!(s, Scope::Publish(_))));
    let (max_frame, read_buffer, write_buffer) = (
        limits.max_frame_bytes,
        if publishes {
            limits.publisher_read_buffer_bytes
        } else {
            limits.read_buffer_bytes
        },
        limits.write_buffer_bytes,
    );
    // Boxed: the upgrade task keeps this closure's captures for the connection's life.
    let start = Box::new(session::Start {
        broker: state.clone(),
        principal,
        peer,
    });
    Ok(ws
        .protocols([SUBPROTOCOL])
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .read_buffer_size(read_buffer)
        .write_buffer_size(write_buffer)
        .on_upgrade(move |socket| tracker.track_future(session::run(Box::new(socket), start)))
        .into_response())
}
