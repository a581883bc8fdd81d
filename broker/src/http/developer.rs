//! The developer API, `/dev/v1/...` (JSON), on a deployment that serves as the catalog: a
//! developer (a credential with the `developer` role; its name is the developer account)
//! registers and manages their own applications: name, description, requested scope, public
//! keys, and "ready for production", which freezes a version. A developer never activates
//! anything, and never sees another developer's applications (they are "not found").
//!
//! Self-registration (`POST /dev/v1/register`) makes a developer credential, only where the
//! catalog allows it (`catalog.self_registration`).

#![allow(clippy::result_large_err)]

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use scopecast_protocol::ErrorCode;
use scopecast_protocol::admin::{
    self, ApplicationList, IssuedCredential, NewApplication, NewDeveloper, Reason, Role,
};

use super::admin::{app_view, body, keys_body, registry_error};
use super::auth::Caller;
use super::error::ApiError;
use crate::registry::{Application, ApplicationPatch, CreateApplication, Editor};
use crate::state::Broker;

fn editor(caller: &Caller) -> Editor {
    Editor::Developer(caller.name.clone())
}

/// One of the caller's applications (the registry's own ownership rule; another
/// developer's is "not found").
fn own(state: &Broker, caller: &Caller, id: &str) -> Result<std::sync::Arc<Application>, Response> {
    state
        .registry
        .editable(id, &editor(caller))
        .map_err(registry_error)
}

/// `POST /dev/v1/register` `{"name"}`: a developer credential, its token shown once (201);
/// 404 where the catalog does not allow self-registration; 409 when the name is taken.
pub(crate) async fn register(State(state): State<Broker>, bytes: Bytes) -> Response {
    if !state.config.catalog.self_registration {
        return ApiError::for_code(
            ErrorCode::NotFound,
            "self-registration is off here: ask the catalog's admin for a developer credential",
        )
        .into_response();
    }
    let b: NewDeveloper = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // A name that ever owned applications stays its developer's: a revoked developer's name
    // taken again by self-registration would get their applications. (A catalog admin may
    // issue a new credential under that name: `scopecast credential create --role developer`.)
    let name = b.name.trim();
    if state
        .registry
        .snapshot()
        .applications()
        .iter()
        .any(|a| a.record.owner.as_deref() == Some(name))
        || state.registry.credentials().names_ever_used(name)
    {
        return ApiError::for_code(
            ErrorCode::Conflict,
            "this developer name is taken: choose another",
        )
        .field("name")
        .into_response();
    }
    match state
        .registry
        .create_credential(&b.name, Role::Developer, "self-registration")
        .await
    {
        Ok((c, token)) => {
            tracing::info!(name = %c.name, "developer registered");
            (
                StatusCode::CREATED,
                Json(IssuedCredential {
                    credential: super::credentials::view(&c),
                    token,
                }),
            )
                .into_response()
        }
        Err(e) => registry_error(e),
    }
}

/// `GET /dev/v1/apps`: the caller's applications.
pub(crate) async fn list(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let applications = state
        .registry
        .snapshot()
        .applications()
        .iter()
        .filter(|a| a.record.owner.as_deref() == Some(caller.name.as_str()))
        .map(|a| app_view(a, &[]))
        .collect();
    Json(ApplicationList { applications }).into_response()
}

/// `POST /dev/v1/apps`: registers an application owned by the caller (version 1, a draft
/// until marked ready). The two client IDs are made now; their secrets are shown once.
pub(crate) async fn create(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
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
    match state
        .registry
        .create_application_by(req, &caller.name, &editor(&caller))
        .await
    {
        Ok((app, _secrets)) => {
            // The catalog's own secrets are not the developer's: each environment makes its
            // own at activation. None is shown here.
            (StatusCode::CREATED, Json(app_view(&app, &[]))).into_response()
        }
        Err(e) => registry_error(e),
    }
}

/// `GET /dev/v1/apps/{id}`: one of the caller's applications.
pub(crate) async fn show(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match own(&state, &caller, &id) {
        Ok(app) => Json(app_view(&app, &[])).into_response(),
        Err(r) => r,
    }
}

/// `PATCH /dev/v1/apps/{id}`: changes a draft, or makes the next version (a draft) of a
/// frozen one.
pub(crate) async fn update(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Response {
    let patch: ApplicationPatch = match body::<admin::ApplicationPatch>(&bytes) {
        Ok(b) => b.into(),
        Err(r) => return r,
    };
    match state
        .registry
        .update_application_by(&id, patch, &caller.name, &editor(&caller))
        .await
    {
        Ok(app) => Json(app_view(&app, &[])).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `PUT /dev/v1/apps/{id}/clients/{client_id}/keys`: the public keys of one of the caller's
/// client IDs (`{"jwks"}`, `{"jwks_uri"}` or `{}`); part of the record, so a new draft.
pub(crate) async fn set_keys(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    Path((id, client_id)): Path<(String, String)>,
    bytes: Bytes,
) -> Response {
    let app = match own(&state, &caller, &id) {
        Ok(app) => app,
        Err(r) => return r,
    };
    if !app.record.clients.iter().any(|c| c.client_id == client_id) {
        return ApiError::for_code(
            ErrorCode::NotFound,
            format!("client {client_id} is not one of application {id}'s"),
        )
        .into_response();
    }
    let spec = match keys_body(&bytes) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match state
        .registry
        .set_keys_by(&client_id, spec, &caller.name, &editor(&caller))
        .await
    {
        Ok(()) => show_now(&state, &caller, &id),
        Err(e) => registry_error(e),
    }
}

/// `POST /dev/v1/apps/{id}/ready`: freezes the current version, ready for production; the
/// catalog hands it out from now on.
pub(crate) async fn ready(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match state
        .registry
        .ready(&id, &caller.name, &editor(&caller))
        .await
    {
        Ok(app) => Json(app_view(&app, &[])).into_response(),
        Err(e) => registry_error(e),
    }
}

/// `POST /dev/v1/apps/{id}/retire` `{"reason"}`: retires one of the caller's applications.
pub(crate) async fn retire(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Response {
    let b: Reason = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .registry
        .retire(&id, &caller.name, &b.reason, &editor(&caller))
        .await
    {
        Ok(app) => Json(app_view(&app, &[])).into_response(),
        Err(e) => registry_error(e),
    }
}

fn show_now(state: &Broker, caller: &Caller, id: &str) -> Response {
    match own(state, caller, id) {
        Ok(app) => Json(app_view(&app, &[])).into_response(),
        Err(r) => r,
    }
}
