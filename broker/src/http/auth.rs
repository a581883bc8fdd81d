//! Who calls the operator endpoints: a bearer credential of the one credential store
//! (`registry::credential`), whose [`Role`] decides what it may do. The admin API reads need
//! `viewer` or `admin`, its changes `admin`; `/metrics` takes `metrics`, `viewer` or `admin`.
//! The credential's name is the actor the audit trail records, never a header the caller
//! chooses.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use scopecast_protocol::ErrorCode;
use scopecast_protocol::admin::Role;

use super::error_response;
use crate::server::AppState;

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
fn authenticate(state: &AppState, headers: &HeaderMap) -> Option<Caller> {
    let c = bearer_token(headers).and_then(|t| state.inner.registry.authenticate(t))?;
    Some(Caller {
        name: c.name.clone(),
        role: c.role,
    })
}

/// 401 with an RFC 6750 challenge for `realm`.
fn unauthorized(realm: &str) -> Response {
    let mut resp = error_response(
        ErrorCode::Unauthorized,
        "invalid_token",
        "this endpoint needs a valid credential: Authorization: Bearer <token> (scopecast credential create)",
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "Bearer realm=\"{realm}\", error=\"invalid_token\""
    )) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn forbidden(caller: &Caller, what: &str) -> Response {
    error_response(
        ErrorCode::Forbidden,
        "insufficient_role",
        &format!(
            "credential {:?} has the role {}, which may not {what}",
            caller.name, caller.role
        ),
    )
}

/// Admin API gate: reads (`GET`, `HEAD`) need `viewer` or `admin`, everything else `admin`.
pub(crate) async fn require_admin_api(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(caller) = authenticate(&state, req.headers()) else {
        return unauthorized("scopecast-admin");
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

/// `/metrics` gate: `metrics`, `viewer` or `admin`.
pub(crate) async fn require_metrics(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(caller) = authenticate(&state, req.headers()) else {
        return unauthorized("scopecast-metrics");
    };
    if !caller.role.can_scrape_metrics() {
        return forbidden(&caller, "read metrics");
    }
    next.run(req).await
}
