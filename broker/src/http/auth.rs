//! Who calls: the bearer helpers of the HTTP surface.
//!
//! - Applications (`/v1`): an access token in `Authorization: Bearer` (RFC 6750 section 2.1),
//!   never in the URL (section 5.3), verified into a [`Principal`]; or, where the operator
//!   allows it, the `Scopecast-Client-Id` header ([`client`]).
//! - Operators (`/admin/v1`, `/metrics`): a credential of the one credential store
//!   (`registry::credential`), whose role decides what it may do: admin API reads need
//!   `viewer` or `admin`, its changes `admin`; `/metrics` takes `metrics`, `viewer` or `admin`.
//!   The credential's name is the actor the audit trail records, never a header the caller
//!   chooses.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use scopecast_protocol::Reason;
use scopecast_protocol::admin::Role;

use super::error::ApiError;
use crate::auth::token::{Principal, VerifyError};
use crate::state::Broker;

/// Header naming the client on the HTTP APIs when identification by header is on.
pub(crate) const CLIENT_ID_HEADER: &str = "scopecast-client-id";

/// Query parameter names that would carry a token (RFC 6750 section 2.3 and common variants).
const TOKEN_PARAMS: [&str; 6] = [
    "access_token",
    "token",
    "bearer",
    "auth",
    "authorization",
    "jwt",
];

/// True when the query string carries something that looks like a token.
pub(crate) fn token_in_query(uri: &Uri) -> bool {
    let Some(q) = uri.query() else { return false };
    form_urlencoded::parse(q.as_bytes()).any(|(k, v)| {
        TOKEN_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p))
            || (v.starts_with("eyJ") && v.split('.').count() == 3)
    })
}

/// The refusal of a token sent in a URL (PROTOCOL.md section 3), counted once.
pub(crate) fn token_in_url(state: &Broker, peer: SocketAddr) -> ApiError {
    state
        .access
        .refused(None, peer, "token_in_url", "token in a URL");
    ApiError::new(
        Reason::TokenInUrl,
        "tokens are refused in URLs (they end up in logs): send `Authorization: Bearer` or, on \
         the WebSocket, a first `auth` frame",
    )
}

/// The bearer token of an `Authorization` header, if it has one.
///
/// # Errors
/// 401 when the header is there but not `Bearer <token>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or("");
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(unauthorized(
            "the Authorization header must be `Bearer <access token>`",
            "invalid_request",
        )),
    }
}

/// 401 with an RFC 6750 section 3 challenge (`error` is the challenge's error code); the
/// body's reason is `invalid_token`.
pub(crate) fn unauthorized(message: &str, error: &str) -> ApiError {
    ApiError::new(Reason::InvalidToken, message).challenge("scopecast", error)
}

/// The HTTP answer to a refused token: 403 `client_inactive` for a client that may not act
/// here, else 401 with the challenge and the precise reason in the body (RFC 6750 has one
/// error code for every bad token; PROTOCOL.md section 6 tells an expired one apart).
pub(crate) fn refused_token(e: &VerifyError) -> ApiError {
    match e {
        VerifyError::ClientInactive | VerifyError::WrongEnvironment => {
            ApiError::new(Reason::ClientInactive, e.to_string())
        }
        _ => ApiError::new(e.reason(), e.to_string()).challenge("scopecast", "invalid_token"),
    }
}

/// The application calling an HTTP API: by its access token, or by the `Scopecast-Client-Id`
/// header where the operator turned that on (`http.client_id_header`) and an admin enabled it
/// for the client ID; the application's whole scope ceiling then stands for the token's scope
/// (DESIGN section 6). Refusals are counted once, in the access module.
///
/// # Errors
/// 401 or 403 as [`refused_token`] says, or when neither way identifies the caller.
pub(crate) async fn client(
    state: &Broker,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Principal, ApiError> {
    if let Some(token) = bearer(headers)? {
        return state.verifier.verify(token).await.map_err(|e| {
            state
                .access
                .refused(Some(token), peer, e.label(), &e.to_string());
            refused_token(&e)
        });
    }
    let Some(id) = headers.get(CLIENT_ID_HEADER) else {
        return Err(unauthorized(
            "an access token is required (Authorization: Bearer)",
            "invalid_request",
        ));
    };
    if !state.config.http.client_id_header {
        return Err(unauthorized(
            "identification by Scopecast-Client-Id is off on this broker; send a Bearer token",
            "invalid_request",
        ));
    }
    let id = id.to_str().unwrap_or("");
    let Some(client) = state.registry.client(id) else {
        state
            .access
            .refused(None, peer, "unknown_client", "unknown Scopecast-Client-Id");
        return Err(unauthorized("unknown client ID", "invalid_token"));
    };
    if !client.client_id_header {
        return Err(unauthorized(
            "this client ID may not be identified by header; send a Bearer token",
            "invalid_request",
        ));
    }
    if !client.active || client.kind != state.config.environment {
        return Err(ApiError::new(
            Reason::ClientInactive,
            "client ID is not active in this environment",
        ));
    }
    Ok(Principal {
        client_id: client.client_id.clone(),
        application_id: client.application_id.clone(),
        kind: client.kind,
        scope: Arc::clone(&client.ceiling),
        expires_at: scopecast_protocol::Timestamp::from_unix_seconds(i64::from(i32::MAX))
            .unwrap_or_else(|_| scopecast_protocol::Timestamp::now()),
        issuer: CLIENT_ID_HEADER.to_owned(),
        token_id: None,
        issued_at: None,
    })
}

/// The authenticated caller of an admin endpoint, put in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The credential's name: the actor in the audit trail.
    pub(crate) name: String,
    /// Its role.
    pub(crate) role: Role,
}

/// The bearer token of `Authorization: Bearer <token>`, if the header has that form.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
}

/// The valid credential of `headers`, if any.
fn operator(state: &Broker, headers: &HeaderMap) -> Option<Caller> {
    let c = bearer_token(headers).and_then(|t| state.registry.authenticate(t))?;
    Some(Caller {
        name: c.name.clone(),
        role: c.role,
    })
}

/// 401 with an RFC 6750 challenge for `realm`.
fn no_credential(realm: &str) -> Response {
    ApiError::new(
        Reason::InvalidToken,
        "this endpoint needs a valid credential: Authorization: Bearer <token> (scopecast credential create)",
    )
    .challenge(realm, "invalid_token")
    .into_response()
}

fn forbidden(caller: &Caller, what: &str) -> Response {
    ApiError::new(
        Reason::InsufficientRole,
        format!(
            "credential {:?} has the role {}, which may not {what}",
            caller.name, caller.role
        ),
    )
    .into_response()
}

/// Admin API gate: reads (`GET`, `HEAD`) need `viewer` or `admin`, everything else `admin`.
pub(crate) async fn require_admin_api(
    State(state): State<Broker>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(caller) = operator(&state, req.headers()) else {
        return no_credential("scopecast-admin");
    };
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let allowed = if read {
        caller.role.can_read_admin()
    } else {
        caller.role.can_write_admin()
    };
    if !allowed {
        let what = if read {
            "read the admin API"
        } else {
            "change anything through the admin API"
        };
        return forbidden(&caller, what);
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Developer API gate (`/dev/v1/...` except self-registration): a `developer` credential only.
/// Its name is the developer account, the owner of the applications it registers.
pub(crate) async fn require_developer(
    State(state): State<Broker>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(caller) = operator(&state, req.headers()) else {
        return no_credential("scopecast-developer");
    };
    if caller.role != Role::Developer {
        return forbidden(
            &caller,
            "use the developer API (a developer credential is needed)",
        );
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Catalog record list gate (`GET /catalog/v1/records`): `viewer` or `admin`, the credential
/// an environment syncs with.
pub(crate) async fn require_catalog_reader(
    State(state): State<Broker>,
    req: Request,
    next: Next,
) -> Response {
    let Some(caller) = operator(&state, req.headers()) else {
        return no_credential("scopecast-catalog");
    };
    if !caller.role.can_read_admin() {
        return forbidden(&caller, "read the catalog's records");
    }
    next.run(req).await
}

/// `/metrics` gate: `metrics`, `viewer` or `admin`.
pub(crate) async fn require_metrics(
    State(state): State<Broker>,
    req: Request,
    next: Next,
) -> Response {
    let Some(caller) = operator(&state, req.headers()) else {
        return no_credential("scopecast-metrics");
    };
    if !caller.role.can_scrape_metrics() {
        return forbidden(&caller, "read metrics");
    }
    next.run(req).await
}
