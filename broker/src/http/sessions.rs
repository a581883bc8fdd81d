//! `/admin/v1/sessions`: the live WebSocket sessions (viewer), and closing one (admin) with
//! 4010 `closed_by_operator`, a code after which the client reconnects with backoff (unlike
//! 4003, which tells it an admin must act first).

use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use scopecast_protocol::CloseCode;
use scopecast_protocol::admin::{SessionList, SessionView};
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use crate::session::SessionHandle;
use crate::state::Broker;

/// Query of `GET /admin/v1/sessions`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionsQuery {
    client_id: Option<String>,
}

/// The admin view of a local session (in cluster mode its id is `<node>:<id>`).
pub(crate) fn view(state: &Broker, e: &SessionHandle) -> SessionView {
    let snap = state.registry.snapshot();
    let s = e;
    let node = state.cluster.as_ref().map(|c| c.node.clone());
    SessionView {
        session: match &node {
            Some(n) => format!("{n}:{:x}", s.id),
            None => format!("{:x}", s.id),
        },
        node,
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
        last_seq_written: s.written_last.load(Ordering::Relaxed),
        replaying: s.replaying(),
    }
}

/// `GET /admin/v1/sessions[?client_id=]`: live sessions, oldest first.
pub(crate) async fn list(
    State(state): State<Broker>,
    query: Result<Query<SessionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return ApiError::new(
                scopecast_protocol::Reason::InvalidField,
                format!("query: {}; the only parameter is client_id", e.body_text()),
            )
            .into_response();
        }
    };
    let mut sessions = local(&state, q.client_id.as_deref());
    if state.cluster.is_some() {
        // Every other node answers for its own sessions.
        sessions.extend(crate::cluster::remote_sessions(&state, q.client_id.as_deref()).await);
        sessions.sort_by(|a, b| {
            (&a.connected_since, &a.session).cmp(&(&b.connected_since, &b.session))
        });
    }
    Json(SessionList { sessions }).into_response()
}

/// This node's sessions (of `client_id` only, when given), oldest first.
pub(crate) fn local(state: &Broker, client_id: Option<&str>) -> Vec<SessionView> {
    let mut entries = state.sessions.all();
    if let Some(c) = client_id {
        entries.retain(|e| &*e.client_id == c);
    }
    entries.sort_by_key(|e| e.id);
    entries.iter().map(|e| view(state, e)).collect()
}

/// Closes this node's session `id` (hex) with 4010; its view, or `None` when there is none.
pub(crate) fn close_local(state: &Broker, id: &str) -> Option<SessionView> {
    let entry = state.sessions.find(id)?;
    let shown = view(state, &entry);
    entry
        .outbox
        .close(CloseCode::ClosedByOperator, "closed by an operator", false);
    Some(shown)
}

/// `POST /admin/v1/sessions/{session}/close`: closes the session with 4010 at once (what it
/// had queued is dropped); the client reconnects with backoff and resumes by `seq`.
pub(crate) async fn close(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    Path(session): Path<String>,
) -> Response {
    // In cluster mode the id names its node: this one, or another that closes it.
    let closed = match (&state.cluster, session.split_once(':')) {
        (Some(c), Some((node, id))) if node == c.node => close_local(&state, id),
        (Some(_), Some((node, id))) => crate::cluster::close_remote(&state, node, id).await,
        (_, None) => close_local(&state, &session),
        (None, Some(_)) => None,
    };
    let Some(shown) = closed else {
        return ApiError::new(
            scopecast_protocol::Reason::NotFound,
            format!("no live session {session} (scopecast sessions lists them)"),
        )
        .into_response();
    };
    tracing::info!(actor = %caller.name, session = %session, client_id = %shown.client_id, "session closed by an operator with 4010");
    if let Err(e) = state
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
