//! Application records across environments (README, "Environments and the catalog"): the
//! catalog side (`GET /catalog/v1/keys`, `GET /admin/v1/applications/{id}/record`) and the
//! environment side (`POST /admin/v1/records`, a client ID's grant and its approval,
//! retirement). Bodies are the typed shapes of `scopecast_protocol::admin`.

#![allow(clippy::result_large_err)]

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use scopecast_protocol::ErrorCode;
use scopecast_protocol::Reason as ErrorReason;
use scopecast_protocol::admin::{Grant, Imported, Reason, RecordDocument};

use super::admin::{app_view, body, client_view, find_app, find_client, registry_error};
use super::auth::Caller;
use super::error::ApiError;
use crate::catalog::{ImportError, RecordError};
use crate::state::Broker;

/// `GET /catalog/v1/keys`: the public keys this deployment signs application records with,
/// a JWK Set for environments to pin (`catalog.trusted_keys_file`). Public keys only, so no
/// credential is needed.
pub(crate) async fn keys(State(state): State<Broker>) -> Response {
    Json(state.records.jwks()).into_response()
}

/// `GET /catalog/v1/records` (a `viewer` or `admin` credential of the catalog): the newest
/// ready version of every application registered here, each signed, for environments to sync.
pub(crate) async fn list(State(state): State<Broker>) -> Response {
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut records = Vec::new();
    for r in state.registry.frozen_records(&state.public_url, now_s) {
        match state.records.sign(&r) {
            Ok(jws) => records.push(jws),
            Err(e) => {
                tracing::error!(error = %e, "cannot sign an application record");
                return ApiError::for_code(
                    ErrorCode::Internal,
                    "cannot sign the records; see the broker's log",
                )
                .into_response();
            }
        }
    }
    Json(scopecast_protocol::admin::RecordList { records }).into_response()
}

/// `POST /admin/v1/catalog/sync`: pulls the configured catalog now (`catalog.url`) and
/// imports what is new; 409 when no catalog is configured, 503 `catalog_unreachable` or
/// `catalog_refused_credential` when the catalog cannot be read.
pub(crate) async fn sync(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
) -> Response {
    match crate::catalog::sync(&state, &caller.name).await {
        Ok(report) => Json(report).into_response(),
        Err(crate::catalog::SyncError::NotConfigured) => ApiError::for_code(
            ErrorCode::Conflict,
            "no catalog to sync from: set catalog.url (and catalog.token_file)",
        )
        .into_response(),
        Err(e) => {
            let reason = match e {
                crate::catalog::SyncError::Refused(_) => ErrorReason::CatalogRefusedCredential,
                _ => ErrorReason::CatalogUnreachable,
            };
            ApiError::new(reason, e.to_string()).into_response()
        }
    }
}

/// `GET /admin/v1/applications/{id}/record`: the application's signed record (its current
/// version): signed here for a record registered here, or the signed record as imported.
pub(crate) async fn export(State(state): State<Broker>, Path(id): Path<String>) -> Response {
    let app = match find_app(&state, &id) {
        Ok(app) => app,
        Err(r) => return r,
    };
    if let Some(jws) = &app.record.record_jws {
        return Json(RecordDocument {
            record: jws.clone(),
        })
        .into_response();
    }
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    let record = match state
        .registry
        .record_of(&app.record.id, &state.public_url, now_s)
    {
        Ok(r) => r,
        Err(e) => return registry_error(e),
    };
    match state.records.sign(&record) {
        Ok(record) => Json(RecordDocument { record }).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot sign an application record");
            ApiError::for_code(
                ErrorCode::Internal,
                "cannot sign the record; see the broker's log",
            )
            .into_response()
        }
    }
}

/// `POST /admin/v1/records` `{"record": "<JWS>"}`: imports a signed record. 201 when the
/// application is new here, 200 when updated or unchanged; 400 `malformed_record`,
/// `bad_signature` or `untrusted_catalog`; 409 `no_trusted_catalog`, or for an older version,
/// other client IDs, or a record registered here; 400 naming a field that breaks the
/// registry's rules.
pub(crate) async fn import(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let doc: RecordDocument = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match crate::catalog::import(&state, &doc.record, &caller.name, "file").await {
        Ok((app, outcome)) => {
            let status = if outcome == crate::registry::ImportOutcome::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (
                status,
                Json(Imported {
                    outcome: outcome.as_str().to_owned(),
                    application: app_view(&app, &[]),
                }),
            )
                .into_response()
        }
        Err(ImportError::Registry(e)) => registry_error(e),
        Err(ImportError::Record(e)) => {
            tracing::warn!(actor = %caller.name, error = %e, "application record refused");
            let reason = match e {
                RecordError::NoTrustedCatalog => ErrorReason::NoTrustedCatalog,
                RecordError::Malformed(_) => ErrorReason::MalformedRecord,
                RecordError::UntrustedKey { .. } => ErrorReason::UntrustedCatalog,
                RecordError::BadSignature => ErrorReason::BadSignature,
            };
            ApiError::new(reason, e.to_string())
                .field("record")
                .into_response()
        }
    }
}

/// `PUT /admin/v1/clients/{client_id}/grant` `{"scope", "reason"}`: this environment's grant,
/// inside the record's scope.
pub(crate) async fn set_grant(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let b: Grant = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .registry
        .set_grant(&client_id, &b.scope, &caller.name, &b.reason)
        .await
    {
        Ok(_) => client(&state, &client_id),
        Err(e) => registry_error(e),
    }
}

/// `POST /admin/v1/clients/{client_id}/approve` `{"reason"}`: grants the record's current
/// scope here (what `pending_scope` listed takes effect).
pub(crate) async fn approve(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let b: Reason = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .registry
        .approve_scope(&client_id, &caller.name, &b.reason)
        .await
    {
        Ok(_) => client(&state, &client_id),
        Err(e) => registry_error(e),
    }
}

/// `POST /admin/v1/applications/{id}/retire` `{"reason"}`: retires an application registered
/// here (a new version; both client IDs deactivated).
pub(crate) async fn retire(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let b: Reason = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .registry
        .retire(
            &id,
            &caller.name,
            &b.reason,
            &crate::registry::Editor::Admin,
        )
        .await
    {
        Ok(app) => Json(app_view(&app, &[])).into_response(),
        Err(e) => registry_error(e),
    }
}

fn client(state: &Broker, client_id: &str) -> Response {
    match find_client(state, client_id) {
        Ok((app, c)) => Json(client_view(&app, &c, None)).into_response(),
        Err(r) => r,
    }
}
