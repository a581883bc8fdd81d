//! `/admin/v1/sessions`: the live WebSocket sessions (viewer), and closing one (admin) with
//! 4010 `closed_by_operator`, a code after which the client reconnects with backoff (unlike
//! 4003, which tells it an admin must act first).

use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use scopecast_protocol::admin::{SessionList, SessionView};
use scopecast_protocol::{CloseCode, ErrorCode};
use serde::Deserialize;

use super::auth::Caller;
use super::error_response;
use crate::server::AppState;
use crate::session::table::SessionEntry;

/// Query of `GET /admin/v1/sessions`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionsQuery {
    client_id: Option<String>,
}

fn view(state: &AppState, e: &SessionEntry) -> SessionView {
    let snap = state.inner.registry.snapshot();
    let s = &e.subscriber;
    SessionView {
        session: format!("{:x}", s.session_id),
        client_id: s.client_id.to_string(),
        application_id: e.application_id.clone(),
        application_name: snap
            .application(&e.application_id)
            .map(|a| a.record.name.clone())
            .unwrap_or_default(),
        peer: e.peer.to_string(),
        connected_since: e.connected_since.to_string(),
        subscriptions: e
            .subscriptions
            .lock()
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        events_delivered: s.delivered.load(Ordering::Relaxed),
        events_published: s.published.load(Ordering::Relaxed),
        outbox_bytes: s.outbox.queued_bytes() as u64,
    }
}

/// `GET /admin/v1/sessions[?client_id=]`: live sessions, oldest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<SessionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return error_response(
                ErrorCode::BadRequest,
                "invalid_field",
                &format!("query: {}; the only parameter is client_id", e.body_text()),
            );
        }
    };
    let mut entries = state.inner.hub.sessions.all();
    if let Some(c) = &q.client_id {
        entries.retain(|e| &*e.subscriber.client_id == c.as_str());
    }
    entries.sort_by_key(|e| e.subscriber.session_id);
    let sessions = entries.iter().map(|e| view(&state, e)).collect();
    Json(SessionList { sessions }).into_response()
}

/// `POST /admin/v1/sessions/{session}/close`: closes the session with 4010 at once (what it
/// had queued is dropped); the client reconnects with backoff and resumes by `seq`.
pub(crate) async fn close(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(session): Path<String>,
) -> Response {
    let Some(entry) = state.inner.hub.sessions.find(&session) else {
        return error_response(
            ErrorCode::NotFound,
            "not_found",
            &format!("no live session {session} (scopecast sessions lists them)"),
        );
    };
    let shown = view(&state, &entry);
    entry
        .subscriber
        .outbox
        .close(CloseCode::ClosedByOperator, "closed by an operator", false);
    tracing::info!(actor = %caller.name, session = %session, client_id = %shown.client_id, "session closed by an operator with 4010");
    if let Err(e) = state
        .inner
        .registry
        .record(
            &caller.name,
            "session.close",
            serde_json::json!({"session": session, "client_id": shown.client_id, "peer": shown.peer}),
        )
        .await
    {
        tracing::error!(error = %e, "could not record the session close in the audit trail");
    }
    Json(shown).into_response()
}
