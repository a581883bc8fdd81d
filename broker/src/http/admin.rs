//! The admin API, `/admin/v1/...` (JSON): applications, client IDs, credentials, activation,
//! the audit trail and key rotation. Every route needs the admin bearer credential.
//!
//! Request and answer bodies are the typed shapes of `scopecast_protocol::admin`. Errors are
//! the one JSON shape of [`ApiError`] (`{"error", "reason", "message", "field"?}`, PROTOCOL.md):
//! 400 names the field, 401, 403, 404, 409.

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
use scopecast_protocol::admin::{
    self, ApplicationClients, ApplicationList, ApplicationView, AuditList, ClientIdHeader,
    ClientKeysView, ClientView, NewApplication, Reason, RotatedKey, SetKeys,
};
use scopecast_protocol::{ErrorCode, Timestamp};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::auth::Caller;
use super::error::ApiError;
use crate::config::EnvironmentKind;
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
        RegistryError::Store(crate::registry::StoreError::Database(m)) => {
            // The database is down or unreachable (PostgreSQL restarting, a lost network):
            // nothing was changed, and the same request succeeds once it is back.
            tracing::error!(error = %m, "admin API: the registry's database failed");
            let mut resp = error(
                ErrorCode::Unavailable,
                "the registry's database cannot be reached; nothing was changed, retry later",
                None,
            );
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            resp
        }
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

/// The body of a keys change (`{"jwks"}`, `{"jwks_uri"}` or `{}`): a [`SetKeys`], at most
/// one of the two.
pub(crate) fn keys_body(bytes: &Bytes) -> Result<ClientKeysSpec, Response> {
    let b: SetKeys = body(bytes)?;
    match (b.jwks, b.jwks_uri) {
        (Some(_), Some(_)) => Err(error(
            ErrorCode::BadRequest,
            "give `jwks` or `jwks_uri`, not both",
            Some("jwks"),
        )),
        (Some(j), None) => Ok(ClientKeysSpec::Jwks(j)),
        (None, Some(u)) => Ok(ClientKeysSpec::JwksUri(u)),
        (None, None) => Ok(ClientKeysSpec::None),
    }
}

/// An instant of the registry (Unix milliseconds) as the API writes it (RFC 3339).
fn time(ms: i64) -> String {
    Timestamp::from_unix_ms(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub(crate) fn client_view(
    app: &Application,
    c: &StoredClient,
    secret: Option<&IssuedSecret>,
) -> ClientView {
    let (effective, pending) = crate::registry::effective_scope(&app.ceiling, c);
    let (effective_scope, pending_scope) = (effective.to_string(), pending.to_string());
    let keys = match &c.keys {
        ClientKeysSpec::None => ClientKeysView::None,
        ClientKeysSpec::Jwks(v) => ClientKeysView::Jwks {
            kids: v["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect(),
        },
        ClientKeysSpec::JwksUri(u) => ClientKeysView::JwksUri {
            jwks_uri: u.clone(),
        },
    };
    ClientView {
        client_id: c.client_id.clone(),
        kind: c.kind.as_str().to_owned(),
        active: c.active,
        has_secret: c.secret_hash.is_some(),
        client_id_header: c.client_id_header,
        keys,
        updated_at: time(c.updated_at_ms),
        client_secret: secret.map(|s| s.client_secret.clone()),
        application_id: None,
        application_name: None,
        granted_scope: c.granted_scope.clone(),
        effective_scope,
        pending_scope,
    }
}

pub(crate) fn app_view(app: &Application, secrets: &[IssuedSecret]) -> ApplicationView {
    let r = &app.record;
    let view = |kind: EnvironmentKind| {
        r.clients.iter().find(|c| c.kind == kind).map(|c| {
            let secret = secrets.iter().find(|s| s.client_id == c.client_id);
            client_view(app, c, secret)
        })
    };
    // The registry makes both client IDs with the application and deletes them with it; an
    // empty view would only show a damaged registry file.
    let missing = || ClientView {
        client_id: String::new(),
        kind: String::new(),
        active: false,
        has_secret: false,
        client_id_header: false,
        keys: ClientKeysView::None,
        updated_at: String::new(),
        client_secret: None,
        application_id: None,
        application_name: None,
        granted_scope: None,
        effective_scope: String::new(),
        pending_scope: String::new(),
    };
    ApplicationView {
        id: r.id.clone(),
        name: r.name.clone(),
        vendor: r.vendor.clone(),
        description: r.description.clone(),
        scope: r.scope.clone(),
        created_at: time(r.created_at_ms),
        updated_at: time(r.updated_at_ms),
        version: r.version,
        origin: r.origin.clone(),
        retired_at: r.retired_at_ms.map(time),
        owner: r.owner.clone(),
        ready: r.frozen,
        clients: ApplicationClients {
            production: view(EnvironmentKind::Production).unwrap_or_else(missing),
            non_production: view(EnvironmentKind::NonProduction).unwrap_or_else(missing),
        },
    }
}

/// `POST /admin/v1/applications`: 201 with both client IDs and their secrets (shown once).
pub(crate) async fn create_application(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let who = caller.name.clone();
    let b: NewApplication = match body(&bytes) {
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
    let applications = state
        .registry
        .snapshot()
        .applications()
        .iter()
        .map(|a| app_view(a, &[]))
        .collect();
    Json(ApplicationList { applications }).into_response()
}

pub(crate) fn find_app(state: &Broker, id: &str) -> Result<Arc<Application>, Response> {
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

/// `PATCH /admin/v1/applications/{id}`: name, vendor, description, scope ceiling.
pub(crate) async fn update_application(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let who = caller.name.clone();
    let patch: ApplicationPatch = match body::<admin::ApplicationPatch>(&bytes) {
        Ok(b) => b.into(),
        Err(r) => return r,
    };
    match state.registry.update_application(&id, patch, &who).await {
        Ok(app) => Json(app_view(&app, &[])).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `DELETE /admin/v1/applications/{id}?reason=...`: removes the application, its client IDs
/// and their credentials; 409 while a client ID is active, 404 when there is no such
/// application (also the second time). Answers `{"id", "name", "client_ids"}`.
pub(crate) async fn delete_application(
    State(state): State<Broker>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<Reason>, axum::extract::rejection::QueryRejection>,
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
            Json(admin::DeletedApplication {
                id: d.id,
                name: d.name,
                client_ids: d.client_ids,
            })
            .into_response()
        }
        Err(e) => registry_error(e),
    }
}

pub(crate) fn find_client(
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
            let mut v = client_view(&app, &c, None);
            v.application_id = Some(app.record.id.clone());
            v.application_name = Some(app.record.name.clone());
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
        Ok(s) => Json(admin::IssuedSecret {
            client_id: s.client_id,
            kind: s.kind.as_str().to_owned(),
            client_secret: s.client_secret,
        })
        .into_response(),
        Err(e) => registry_error(e),
    }
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
    let spec = match keys_body(&bytes) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match state.registry.set_keys(&client_id, spec, &who).await {
        Ok(()) => match find_client(&state, &client_id) {
            Ok((app, c)) => Json(client_view(&app, &c, None)).into_response(),
            Err(r) => r,
        },
        Err(e) => registry_error(e),
    }
}

async fn set_active(
    state: Broker,
    client_id: String,
    caller: Caller,
    bytes: Bytes,
    active: bool,
) -> Response {
    let who = caller.name.clone();
    let b: Reason = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if active {
        // A client ID works only in environments of its kind: activating the other kind's
        // here would give a client ID that every token request then refuses.
        let (app, c) = match find_client(&state, &client_id) {
            Ok(found) => found,
            Err(r) => return r,
        };
        let here = state.config.environment;
        if c.kind != here {
            let right = app
                .record
                .clients
                .iter()
                .find(|o| o.kind == here)
                .map(|o| o.client_id.clone())
                .unwrap_or_default();
            return error(
                ErrorCode::Conflict,
                &format!(
                    "client ID {} is the {} client ID of {:?}; this is a {} environment ({}): activate its {} client ID {right} here",
                    c.client_id,
                    c.kind.as_str(),
                    app.record.name,
                    here.as_str(),
                    state.config.environment_id(),
                    here.as_str(),
                ),
                Some("client_id"),
            );
        }
    }
    if let Err(e) = state
        .registry
        .set_active(&client_id, active, &who, &b.reason)
        .await
    {
        return registry_error(e);
    }
    // An imported client ID has no secret (records never carry one): its first activation
    // here makes one, shown once in this answer, unless the app signs in with its keys.
    let mut issued = None;
    if active
        && let Ok((_, c)) = find_client(&state, &client_id)
        && c.secret_hash.is_none()
        && c.keys == ClientKeysSpec::None
    {
        match state.registry.rotate_secret(&client_id, &who).await {
            Ok(s) => issued = Some(s),
            Err(e) => return registry_error(e),
        }
    }
    match find_client(&state, &client_id) {
        Ok((app, c)) => Json(client_view(&app, &c, issued.as_ref())).into_response(),
        Err(r) => r,
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

/// `PUT /admin/v1/clients/{client_id}/client-id-header`, body `{"enabled": true|false}`.
pub(crate) async fn set_client_id_header(
    State(state): State<Broker>,
    Path(client_id): Path<String>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let who = caller.name.clone();
    let b: ClientIdHeader = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .registry
        .set_client_id_header(&client_id, b.enabled, &who)
        .await
    {
        Ok(()) => match find_client(&state, &client_id) {
            Ok((app, c)) => Json(client_view(&app, &c, None)).into_response(),
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
            let entries = entries
                .into_iter()
                .map(|e| admin::AuditEntry {
                    id: e.id,
                    at: time(e.at_ms),
                    actor: e.actor,
                    action: e.action,
                    application_id: e.application_id,
                    client_id: e.client_id,
                    environment: e.environment,
                    detail: e.detail,
                })
                .collect();
            Json(AuditList { entries }).into_response()
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
    if let Some(cluster) = &state.cluster {
        // Every node's ring: a compare-and-set write of the shared set, audited with it.
        return match cluster.tokens.rotate(&who).await {
            Ok(kid) => {
                tracing::info!(actor = %who, %kid, "signing key rotated for every node");
                Json(RotatedKey { kid }).into_response()
            }
            Err(e) => {
                tracing::error!(error = %e, "signing key rotation failed");
                error(
                    ErrorCode::Internal,
                    "key rotation failed; see the broker's log",
                    None,
                )
            }
        };
    }
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
            Json(RotatedKey { kid }).into_response()
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
