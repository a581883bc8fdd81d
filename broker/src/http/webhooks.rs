//! Webhook endpoints over the admin API (WEBHOOKS.md "Endpoints"):
//!
//! - `POST /admin/v1/clients/{client_id}/webhooks` ([`NewWebhook`]): 201 with the endpoint
//!   and its signing secret, shown once; `GET` lists the client's endpoints.
//! - `GET /admin/v1/webhooks`: every endpoint.
//! - `GET`, `PATCH` ([`WebhookPatch`]), `DELETE /admin/v1/webhooks/{id}`.
//! - `POST /admin/v1/webhooks/{id}/pause` and `/resume` (`{"reason"}` optional; resume also
//!   re-enables a disabled endpoint), `/rotate-secret` (the new secret, once; the old one
//!   signs too for `webhooks.rotation_overlap_s`), `/replay` ([`WebhookReplay`]).
//! - `GET /admin/v1/webhooks/{id}/deliveries?limit=&before=`: attempts, newest first.
//!
//! Errors are the admin API's ([`super::admin::registry_error`]): 400 names the field (a
//! refused address names the rule), 404, 409.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use scopecast_protocol::admin::{
    NewWebhook, Reason, WebhookAttemptList, WebhookList, WebhookPatch, WebhookReplay,
};
use serde::Deserialize;

use super::admin::{body, registry_error};
use super::auth::Caller;
use crate::state::Broker;
use crate::webhooks::service::{attempt_view, view};

/// `POST /admin/v1/clients/{client_id}/webhooks`.
pub(crate) async fn create(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let b: NewWebhook = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.webhooks.create(&client_id, b, &caller.name).await {
        Ok((w, secret)) => {
            tracing::info!(actor = %caller.name, endpoint = %w.id, client_id = %w.client_id, "webhook endpoint registered");
            (
                StatusCode::CREATED,
                Json(view(&state.webhooks, &w, Some(&secret))),
            )
                .into_response()
        }
        Err(e) => registry_error(e),
    }
}

/// `GET /admin/v1/clients/{client_id}/webhooks`.
pub(crate) async fn list_for_client(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
) -> Response {
    list(&state, Some(&client_id)).await
}

/// `GET /admin/v1/webhooks`.
pub(crate) async fn list_all(State(state): State<Broker>) -> Response {
    list(&state, None).await
}

async fn list(state: &Broker, client_id: Option<&str>) -> Response {
    match state.webhooks.list(client_id).await {
        Ok(all) => Json(WebhookList {
            webhooks: all.iter().map(|w| view(&state.webhooks, w, None)).collect(),
        })
        .into_response(),
        Err(e) => registry_error(e),
    }
}

/// `GET /admin/v1/webhooks/{id}`.
pub(crate) async fn show(State(state): State<Broker>, Path(id): Path<String>) -> Response {
    match state.webhooks.get(&id).await {
        Ok(w) => Json(view(&state.webhooks, &w, None)).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `PATCH /admin/v1/webhooks/{id}`.
pub(crate) async fn update(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let b: WebhookPatch = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.webhooks.update(&id, b, &caller.name).await {
        Ok(w) => Json(view(&state.webhooks, &w, None)).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `DELETE /admin/v1/webhooks/{id}`: 204.
pub(crate) async fn delete(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Response {
    match state.webhooks.delete(&id, &caller.name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => registry_error(e),
    }
}

async fn set_paused(
    state: Broker,
    id: String,
    caller: Caller,
    bytes: Bytes,
    paused: bool,
) -> Response {
    let b: Reason = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .webhooks
        .set_paused(&id, paused, &b.reason, &caller.name)
        .await
    {
        Ok(w) => Json(view(&state.webhooks, &w, None)).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `POST /admin/v1/webhooks/{id}/pause`.
pub(crate) async fn pause(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    set_paused(state, id, caller, bytes, true).await
}

/// `POST /admin/v1/webhooks/{id}/resume`.
pub(crate) async fn resume(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    set_paused(state, id, caller, bytes, false).await
}

/// `POST /admin/v1/webhooks/{id}/rotate-secret`.
pub(crate) async fn rotate_secret(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Response {
    match state.webhooks.rotate_secret(&id, &caller.name).await {
        Ok((w, secret)) => Json(view(&state.webhooks, &w, Some(&secret))).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `POST /admin/v1/webhooks/{id}/replay`.
pub(crate) async fn replay(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let b: WebhookReplay = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.webhooks.replay(&id, b.since_seq, &caller.name).await {
        Ok(w) => Json(view(&state.webhooks, &w, None)).into_response(),
        Err(e) => registry_error(e),
    }
}

/// The paging of `deliveries`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    /// At most this many (1 to 1000; 100 by default).
    #[serde(default)]
    limit: Option<usize>,
    /// Records older than this record id.
    #[serde(default)]
    before: Option<i64>,
}

/// `GET /admin/v1/webhooks/{id}/deliveries`.
pub(crate) async fn deliveries(
    State(state): State<Broker>,
    Path(id): Path<String>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match page {
        Ok(p) => p,
        Err(e) => {
            return super::error::ApiError::for_code(
                scopecast_protocol::ErrorCode::BadRequest,
                e.body_text(),
            )
            .field("query")
            .into_response();
        }
    };
    match state
        .webhooks
        .attempts(&id, p.before, p.limit.unwrap_or(100))
        .await
    {
        Ok(a) => Json(WebhookAttemptList {
            attempts: a.iter().map(attempt_view).collect(),
        })
        .into_response(),
        Err(e) => registry_error(e),
    }
}
