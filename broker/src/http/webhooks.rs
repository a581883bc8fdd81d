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

/// 409 for a change of an endpoint that delivers a FHIR Subscription (FHIR.md section 5): it
/// is changed through the Subscription, which its status and handshake follow.
async fn fhir_owned(state: &Broker, id: &str) -> Option<Response> {
    let w = state.webhooks.get(id).await.ok()?;
    let sub = w.fhir_subscription_id?;
    Some(
        super::ApiError::new(
            scopecast_protocol::Reason::Conflict,
            format!(
                "endpoint {id} delivers FHIR Subscription {sub}: change, stop or delete it through /fhir/Subscription/{sub}"
            ),
        )
        .into_response(),
    )
}

/// `PATCH /admin/v1/webhooks/{id}`.
pub(crate) async fn update(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    if let Some(r) = fhir_owned(&state, &id).await {
        return r;
    }
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
    if let Some(r) = fhir_owned(&state, &id).await {
        return r;
    }
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
    if let Some(r) = fhir_owned(&state, &id).await {
        return r;
    }
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
    if let Some(r) = fhir_owned(&state, &id).await {
        return r;
    }
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
    attempts_page(&state, &id, page).await
}

/// One page of endpoint `id`'s delivery log (both APIs): a bad query is a 400 naming
/// `query`.
async fn attempts_page(
    state: &Broker,
    id: &str,
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
        .attempts(id, p.before, p.limit.unwrap_or(100))
        .await
    {
        Ok(a) => Json(WebhookAttemptList {
            attempts: a.iter().map(attempt_view).collect(),
        })
        .into_response(),
        Err(e) => registry_error(e),
    }
}

/// The application's own API (`/v1/webhooks`, WEBHOOKS.md section 2): an access token with
/// `webhook:manage` (in the token's scope and in the application's current grant, its client
/// ID active here) manages the endpoints of its own client ID. Another client's endpoint is a
/// 404, as one that does not exist. Pausing, resuming and replaying stay admin actions.
pub(crate) mod app {
    use std::net::SocketAddr;

    use axum::extract::{ConnectInfo, Path, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::{Json, body::Bytes};
    use scopecast_protocol::admin::{NewWebhook, WebhookList, WebhookPatch};

    use super::super::admin::{body, registry_error};
    use super::super::auth;
    use super::super::scope_refusal;
    use super::Page;
    use crate::access::Action;
    use crate::auth::token::Principal;
    use crate::registry::RegistryError;
    use crate::state::Broker;
    use crate::webhooks::service::view;

    /// The caller, allowed to manage webhooks.
    async fn caller(
        state: &Broker,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<Principal, Response> {
        let principal = auth::client(state, headers, peer)
            .await
            .map_err(IntoResponse::into_response)?;
        state
            .access
            .check(&principal, Action::ManageWebhooks)
            .map_err(|d| scope_refusal(&principal, &d, "manage").into_response())?;
        Ok(principal)
    }

    /// The caller, allowed to manage webhooks, when endpoint `id` is its own (another
    /// client's is not found).
    async fn owner(
        state: &Broker,
        headers: &HeaderMap,
        peer: SocketAddr,
        id: &str,
    ) -> Result<Principal, Response> {
        let principal = caller(state, headers, peer).await?;
        match state.webhooks.get(id).await {
            Ok(w) if w.client_id == principal.client_id => Ok(principal),
            Ok(_) => Err(registry_error(RegistryError::NotFound {
                what: "webhook endpoint",
                id: id.to_owned(),
            })),
            Err(e) => Err(registry_error(e)),
        }
    }

    fn actor(p: &Principal) -> String {
        format!("client {}", p.client_id)
    }

    /// `POST /v1/webhooks`: 201 with the endpoint and its secret (shown once).
    pub(crate) async fn create(
        State(state): State<Broker>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        bytes: Bytes,
    ) -> Response {
        let p = match caller(&state, &headers, peer).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        let b: NewWebhook = match body(&bytes) {
            Ok(b) => b,
            Err(r) => return r,
        };
        match state.webhooks.create(&p.client_id, b, &actor(&p)).await {
            Ok((w, secret)) => (
                StatusCode::CREATED,
                Json(view(&state.webhooks, &w, Some(&secret))),
            )
                .into_response(),
            Err(e) => registry_error(e),
        }
    }

    /// `GET /v1/webhooks`: the caller's endpoints.
    pub(crate) async fn list(
        State(state): State<Broker>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
    ) -> Response {
        let p = match caller(&state, &headers, peer).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        match state.webhooks.list(Some(&p.client_id)).await {
            Ok(all) => Json(WebhookList {
                webhooks: all.iter().map(|w| view(&state.webhooks, w, None)).collect(),
            })
            .into_response(),
            Err(e) => registry_error(e),
        }
    }

    /// `GET /v1/webhooks/{id}`.
    pub(crate) async fn show(
        State(state): State<Broker>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        Path(id): Path<String>,
    ) -> Response {
        if let Err(r) = owner(&state, &headers, peer, &id).await {
            return r;
        }
        match state.webhooks.get(&id).await {
            Ok(w) => Json(view(&state.webhooks, &w, None)).into_response(),
            Err(e) => registry_error(e),
        }
    }

    /// `PATCH /v1/webhooks/{id}`.
    pub(crate) async fn update(
        State(state): State<Broker>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        Path(id): Path<String>,
        bytes: Bytes,
    ) -> Response {
        let p = match owner(&state, &headers, peer, &id).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        if let Some(r) = super::fhir_owned(&state, &id).await {
            return r;
        }
        let b: WebhookPatch = match body(&bytes) {
            Ok(b) => b,
            Err(r) => return r,
        };
        match state.webhooks.update(&id, b, &actor(&p)).await {
            Ok(w) => Json(view(&state.webhooks, &w, None)).into_response(),
            Err(e) => registry_error(e),
        }
    }

    /// `DELETE /v1/webhooks/{id}`: 204.
    pub(crate) async fn delete(
        State(state): State<Broker>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        Path(id): Path<String>,
    ) -> Response {
        let p = match owner(&state, &headers, peer, &id).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        if let Some(r) = super::fhir_owned(&state, &id).await {
            return r;
        }
        match state.webhooks.delete(&id, &actor(&p)).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => registry_error(e),
        }
    }

    /// `POST /v1/webhooks/{id}/rotate-secret`.
    pub(crate) async fn rotate_secret(
        State(state): State<Broker>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        Path(id): Path<String>,
    ) -> Response {
        let p = match owner(&state, &headers, peer, &id).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        match state.webhooks.rotate_secret(&id, &actor(&p)).await {
            Ok((w, secret)) => Json(view(&state.webhooks, &w, Some(&secret))).into_response(),
            Err(e) => registry_error(e),
        }
    }

    /// `GET /v1/webhooks/{id}/deliveries`.
    pub(crate) async fn deliveries(
        State(state): State<Broker>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        Path(id): Path<String>,
        page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
    ) -> Response {
        if let Err(r) = owner(&state, &headers, peer, &id).await {
            return r;
        }
        super::attempts_page(&state, &id, page).await
    }
}
