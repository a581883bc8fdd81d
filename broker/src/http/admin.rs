//! The admin API, `/admin/v1/...` (JSON): applications, client IDs, credentials, activation,
//! the audit trail and key rotation. Every route needs the admin bearer credential.
//!
//! Errors are `{"error": code, "message": ..., "field"?: ...}` with the status of the code
//! (PROTOCOL.md section 6): 400 names the field, 401, 404, 409.

// Handlers return `Result<_, Response>`: the error is a ready HTTP answer, built only on the
// error path, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use scopecast_protocol::{ErrorCode, Timestamp};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use crate::registry::validate::{self, InvalidInput};
use crate::registry::{
    Application, ApplicationPatch, AuditQuery, ClientKeysSpec, CreateApplication, IssuedSecret,
    RegistryError, StoredClient,
};
use crate::state::Broker;

/// The admin API's error answer: the one shape ([`ApiError`]), naming the field at fault.
fn error(code: ErrorCode, message: &str, field: Option<&str>) -> Response {
    let mut e = ApiError::for_code(code, message);
    if let Some(f) = field {
        e = e.field(f);
    }
    e.into_response()
}

fn invalid(e: &InvalidInput) -> Response {
    error(ErrorCode::BadRequest, &e.to_string(), Some(&e.field))
}

pub(crate) fn registry_error(e: RegistryError) -> Response {
    match e {
        RegistryError::Invalid(i) => invalid(&i),
        RegistryError::NotFound { .. } => error(ErrorCode::NotFound, &e.to_string(), None),
        RegistryError::Conflict(m) => error(ErrorCode::Conflict, &m, None),
        other => {
            tracing::error!(error = %other, "admin API: registry failure");
            error(
                ErrorCode::Internal,
                "the registry failed; see the broker's log",
                None,
            )
        }
    }
}

/// Parses a JSON body, naming the field at fault. An empty body reads as `{}`.
pub(crate) fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Response> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        // A syntax error is the body's, whatever field the parser had reached.
        let syntax = !e.inner().is_data();
        let field = if path == "." || syntax {
            "body".to_owned()
        } else {
            path
        };
        error(
            ErrorCode::BadRequest,
            &format!("`{field}`: {}", e.inner()),
            Some(&field),
        )
    })
}

fn time(ms: i64) -> Value {
    Timestamp::from_unix_ms(ms)
        .map(|t| json!(t.to_string()))
        .unwrap_or(Value::Null)
}

fn client_view(c: &StoredClient, secret: Option<&IssuedSecret>) -> Value {
    let keys = match &c.keys {
        ClientKeysSpec::None => json!({"type": "none"}),
        ClientKeysSpec::Jwks(v) => {
            let kids: Vec<&str> = v["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k["kid"].as_str())
                .collect();
            json!({"type": "jwks", "kids": kids})
        }
        ClientKeysSpec::JwksUri(u) => json!({"type": "jwks_uri", "jwks_uri": u}),
    };
    let mut v = json!({
        "client_id": c.client_id,
        "kind": c.kind.as_str(),
        "active": c.active,
        "has_secret": c.secret_hash.is_some(),
        "client_id_header": c.client_id_header,
        "keys": keys,
        "updated_at": time(c.updated_at_ms),
    });
    if let Some(s) = secret {
        v["client_secret"] = json!(s.client_secret);
    }
    v
}

fn app_view(app: &Application, secrets: &[IssuedSecret]) -> Value {
    let r = &app.record;
    let mut clients = serde_json::Map::new();
    for c in &r.clients {
        let key = if c.kind == crate::config::EnvironmentKind::Production {
            "production"
        } else {
            "non_production"
        };
        let secret = secrets.iter().find(|s| s.client_id == c.client_id);
        clients.insert(key.to_owned(), client_view(c, secret));
    }
    json!({
        "id": r.id,
        "name": r.name,
        "vendor": r.vendor,
        "description": r.description,
        "scope": r.scope,
        "created_at": time(r.created_at_ms),
        "updated_at": time(r.updated_at_ms),
        "clients": clients,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    name: String,
    vendor: String,
    #[serde(default)]
    description: String,
    scope: String,
}

/// `POST /admin/v1/applications`: 201 with both client IDs and their secrets (shown once).
pub(crate) async fn create_application(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let who = caller.name.clone();
    let b: CreateBody = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req = CreateApplication {
        name: b.name,
        vendor: b.vendor,
        description: b.description,
        scope: b.scope,
    };
    match state.registry.create_application(req, &who).await {
        Ok((app, secrets)) => (StatusCode::CREATED, Json(app_view(&app, &secrets))).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `GET /admin/v1/applications`.
pub(crate) async fn list_applications(State(state): State<Broker>) -> Response {
    let apps: Vec<Value> = state
        .registry
        .snapshot()
        .applications()
        .iter()
        .map(|a| app_view(a, &[]))
        .collect();
    Json(json!({ "applications": apps })).into_response()
}

fn find_app(state: &Broker, id: &str) -> Result<Arc<Application>, Response> {
    let id = validate::uuid_id("id", id).map_err(|e| invalid(&e))?;
    state
        .registry
        .snapshot()
        .application(&id)
        .cloned()
        .ok_or_else(|| {
            error(
                ErrorCode::NotFound,
                &format!("application {id} not found"),
                None,
            )
        })
}

/// `GET /admin/v1/applications/{id}`.
pub(crate) async fn show_application(
    State(state): State<Broker>,
    Path(id): Path<String>,
) -> Response {
    match find_app(&state, &id) {
        Ok(app) => Json(app_view(&app, &[])).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchBody {
    name: Option<String>,
    vendor: Option<String>,
    description: Option<String>,
    scope: Option<String>,
}

/// `PATCH /admin/v1/applications/{id}`: name, vendor, description, scope ceiling.
pub(crate) async fn update_application(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let who = caller.name.clone();
    let b: PatchBody = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let patch = ApplicationPatch {
        name: b.name,
        vendor: b.vendor,
        description: b.description,
        scope: b.scope,
    };
    match state.registry.update_application(&id, patch, &who).await {
        Ok(app) => Json(app_view(&app, &[])).into_response(),
        Err(e) => registry_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteParams {
    #[serde(default)]
    reason: String,
}

/// `DELETE /admin/v1/applications/{id}?reason=...`: removes the application, its client IDs
/// and their credentials; 409 while a client ID is active, 404 when there is no such
/// application (also the second time). Answers `{"id", "name", "client_ids"}`.
pub(crate) async fn delete_application(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<DeleteParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return error(ErrorCode::BadRequest, &e.body_text(), Some("query")),
    };
    match state
        .registry
        .delete_application(&id, &caller.name, &p.reason)
        .await
    {
        Ok(d) => {
            tracing::info!(actor = %caller.name, application_id = %d.id, client_ids = ?d.client_ids, "application deleted");
            Json(json!({"id": d.id, "name": d.name, "client_ids": d.client_ids})).into_response()
        }
        Err(e) => registry_error(e),
    }
}

fn find_client(
    state: &Broker,
    client_id: &str,
) -> Result<(Arc<Application>, StoredClient), Response> {
    let client_id = validate::uuid_id("client_id", client_id).map_err(|e| invalid(&e))?;
    let snap = state.registry.snapshot();
    let not_found = || {
        error(
            ErrorCode::NotFound,
            &format!("client {client_id} not found"),
            None,
        )
    };
    let entry = snap.client(&client_id).ok_or_else(not_found)?;
    let app = snap
        .application(&entry.application_id)
        .cloned()
        .ok_or_else(not_found)?;
    let stored = app
        .record
        .clients
        .iter()
        .find(|c| c.client_id == client_id)
        .cloned()
        .ok_or_else(not_found)?;
    Ok((app, stored))
}

/// `GET /admin/v1/clients/{client_id}`.
pub(crate) async fn show_client(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
) -> Response {
    match find_client(&state, &client_id) {
        Ok((app, c)) => {
            let mut v = client_view(&c, None);
            v["application_id"] = json!(app.record.id);
            v["application_name"] = json!(app.record.name);
            Json(v).into_response()
        }
        Err(r) => r,
    }
}

/// `POST /admin/v1/clients/{client_id}/rotate-secret`: the new secret, shown once.
pub(crate) async fn rotate_secret(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let who = caller.name.clone();
    match state.registry.rotate_secret(&client_id, &who).await {
        Ok(s) => Json(json!({"client_id": s.client_id, "kind": s.kind.as_str(), "client_secret": s.client_secret})).into_response(),
        Err(e) => registry_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysBody {
    jwks: Option<Value>,
    jwks_uri: Option<String>,
}

/// `PUT /admin/v1/clients/{client_id}/keys`: `{"jwks": {...}}`, `{"jwks_uri": "..."}`, or
/// `{}` to remove the keys.
pub(crate) async fn set_keys(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let who = caller.name.clone();
    let b: KeysBody = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let spec = match (b.jwks, b.jwks_uri) {
        (Some(_), Some(_)) => {
            return error(
                ErrorCode::BadRequest,
                "give `jwks` or `jwks_uri`, not both",
                Some("jwks"),
            );
        }
        (Some(j), None) => ClientKeysSpec::Jwks(j),
        (None, Some(u)) => ClientKeysSpec::JwksUri(u),
        (None, None) => ClientKeysSpec::None,
    };
    match state.registry.set_keys(&client_id, spec, &who).await {
        Ok(()) => match find_client(&state, &client_id) {
            Ok((_, c)) => Json(client_view(&c, None)).into_response(),
            Err(r) => r,
        },
        Err(e) => registry_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonBody {
    #[serde(default)]
    reason: String,
}

async fn set_active(
    state: Broker,
    client_id: String,
    caller: Caller,
    bytes: Bytes,
    active: bool,
) -> Response {
    let who = caller.name.clone();
    let b: ReasonBody = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .registry
        .set_active(&client_id, active, &who, &b.reason)
        .await
    {
        Ok(_) => match find_client(&state, &client_id) {
            Ok((_, c)) => Json(client_view(&c, None)).into_response(),
            Err(r) => r,
        },
        Err(e) => registry_error(e),
    }
}

/// `POST /admin/v1/clients/{client_id}/activate`, body `{"reason": "..."}` optional.
pub(crate) async fn activate(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    set_active(state, client_id, caller, bytes, true).await
}

/// `POST /admin/v1/clients/{client_id}/deactivate`, body `{"reason": "..."}` optional.
pub(crate) async fn deactivate(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    set_active(state, client_id, caller, bytes, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderBody {
    enabled: bool,
}

/// `PUT /admin/v1/clients/{client_id}/client-id-header`, body `{"enabled": true|false}`.
pub(crate) async fn set_client_id_header(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let who = caller.name.clone();
    let b: HeaderBody = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .registry
        .set_client_id_header(&client_id, b.enabled, &who)
        .await
    {
        Ok(()) => match find_client(&state, &client_id) {
            Ok((_, c)) => Json(client_view(&c, None)).into_response(),
            Err(r) => r,
        },
        Err(e) => registry_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    application_id: Option<String>,
    client_id: Option<String>,
    limit: Option<u32>,
}

/// `GET /admin/v1/audit?application_id=&client_id=&limit=`: newest first.
pub(crate) async fn audit(
    State(state): State<Broker>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return error(ErrorCode::BadRequest, &e.body_text(), Some("query")),
    };
    for (field, v) in [
        ("application_id", &p.application_id),
        ("client_id", &p.client_id),
    ] {
        if let Some(v) = v
            && let Err(e) = validate::uuid_id(field, v)
        {
            return invalid(&e);
        }
    }
    if p.limit.is_some_and(|l| l == 0 || l > 1000) {
        return error(
            ErrorCode::BadRequest,
            "`limit` must be 1 to 1000",
            Some("limit"),
        );
    }
    let q = AuditQuery {
        application_id: p.application_id,
        client_id: p.client_id,
        limit: p.limit.unwrap_or(100),
    };
    match state.registry.audit(q).await {
        Ok(entries) => {
            let entries: Vec<Value> = entries
                .into_iter()
                .map(|e| {
                    json!({"id": e.id, "at": time(e.at_ms), "actor": e.actor, "action": e.action,
                           "application_id": e.application_id, "client_id": e.client_id, "detail": e.detail})
                })
                .collect();
            Json(json!({ "entries": entries })).into_response()
        }
        Err(e) => registry_error(e),
    }
}

/// `POST /admin/v1/keys/rotate`: a new signing key; the old one stays published until the
/// tokens it signed have expired.
pub(crate) async fn rotate_keys(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let who = caller.name.clone();
    let keys = state.issuer.keys().clone();
    match tokio::task::spawn_blocking(move || keys.rotate()).await {
        Ok(Ok(kid)) => {
            tracing::info!(actor = %who, %kid, "signing key rotated");
            if let Err(e) = state
                .registry
                .record(&who, "keys.rotate", json!({"kid": kid}))
                .await
            {
                tracing::error!(error = %e, "could not record the key rotation in the audit trail");
            }
            Json(json!({"kid": kid})).into_response()
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "signing key rotation failed");
            error(
                ErrorCode::Internal,
                "key rotation failed; see the broker's log",
                None,
            )
        }
        Err(_) => error(ErrorCode::Internal, "key rotation failed", None),
    }
}
