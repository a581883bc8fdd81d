//! `/admin/v1/credentials`: the one credential store over the admin API. Listing needs
//! `viewer`; creating and revoking need `admin`. A new credential's token is in the answer to
//! its creation only.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use scopecast_protocol::Timestamp;
use scopecast_protocol::admin::{CredentialList, CredentialView, IssuedCredential, NewCredential};

use super::admin::{body, registry_error};
use super::auth::Caller;
use crate::registry::credential::Credential;
use crate::state::Broker;

fn rfc3339(ms: i64) -> String {
    Timestamp::from_unix_ms(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The API's view of a stored credential: never its hash.
pub(crate) fn view(c: &Credential) -> CredentialView {
    CredentialView {
        id: c.id.clone(),
        name: c.name.clone(),
        role: c.role,
        created_at: rfc3339(c.created_at_ms),
        created_by: c.created_by.clone(),
        revoked_at: c.revoked_at_ms.map(rfc3339),
        revoked_by: c.revoked_by.clone(),
        source: c.source.as_str().to_owned(),
    }
}

/// `GET /admin/v1/credentials`.
pub(crate) async fn list(State(state): State<Broker>) -> Response {
    let credentials = state
        .registry
        .credentials()
        .all()
        .iter()
        .map(|c| view(c))
        .collect();
    Json(CredentialList { credentials }).into_response()
}

/// `POST /admin/v1/credentials` `{"name", "role"}`: 201 with the token, shown once.
pub(crate) async fn create(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let b: NewCredential = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .registry
        .create_credential(&b.name, b.role, &caller.name)
        .await
    {
        Ok((c, token)) => {
            tracing::info!(actor = %caller.name, name = %c.name, role = %c.role, "credential created");
            (
                StatusCode::CREATED,
                Json(IssuedCredential {
                    credential: view(&c),
                    token,
                }),
            )
                .into_response()
        }
        Err(e) => registry_error(e),
    }
}

/// `DELETE /admin/v1/credentials/{name or id}`: revoked at once.
pub(crate) async fn revoke(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    match state.registry.revoke_credential(&name, &caller.name).await {
        Ok(c) => {
            tracing::info!(actor = %caller.name, name = %c.name, "credential revoked");
            Json(view(&c)).into_response()
        }
        Err(e) => registry_error(e),
    }
}
