//! The authorization server's HTTP endpoints: `POST /oauth2/token` (RFC 6749 section 4.4,
//! client credentials), `GET /.well-known/jwks.json` (RFC 7517) and
//! `GET /.well-known/oauth-authorization-server` (RFC 8414).

use axum::Json;
use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use scopecast_protocol::ScopeSet;
use serde_json::json;

use crate::auth::client_auth::{AuthFailure, Credentials, JWT_BEARER, Method};
use crate::state::Broker;

/// Largest token request body, in bytes.
pub(crate) const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;

/// An RFC 6749 section 5.2 error response, never cached.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"scopecast\""),
        );
    }
    resp
}

/// A refused token request: an RFC 6749 section 5.2 error code (a fixed set, also the
/// outcome label of the `token_requests_total` metric) and its description.
struct Refused {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: bool,
}

fn refused(status: StatusCode, error: &'static str, description: &str) -> Refused {
    Refused {
        status,
        error,
        description: description.to_owned(),
        retry_after: false,
    }
}

fn invalid_request(description: &str) -> Refused {
    refused(StatusCode::BAD_REQUEST, "invalid_request", description)
}

/// Decodes one `application/x-www-form-urlencoded` component (RFC 6749 section 2.3.1 encodes
/// the client ID and secret this way before Basic).
fn form_decode(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

/// Reads `Authorization: Basic` credentials, if present.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, Refused> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| invalid_request("the Authorization header is not ASCII"))?;
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Err(invalid_request(
            "the Authorization header has no credentials",
        ));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(invalid_request(
            "the token endpoint takes Basic client authentication only",
        ));
    }
    let decoded = STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| invalid_request("Basic credentials are not base64 of UTF-8"))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| invalid_request("Basic credentials need client_id:client_secret"))?;
    Ok(Some((form_decode(id), form_decode(secret))))
}

/// `POST /oauth2/token`. Every request counts in `token_requests_total` by client ID (a
/// registered one, else `unknown`) and outcome; a refusal is logged at `info` with the client
/// ID and the peer's address (never the secret or the assertion).
pub(crate) async fn token(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut claimed: Option<String> = None;
    let result = issue(&state, &headers, &body, &mut claimed).await;
    let registered = claimed
        .as_deref()
        .filter(|id| state.registry.client(id).is_some());
    let label = registered.unwrap_or(crate::metrics::UNKNOWN_CLIENT);
    let outcome = match &result {
        Ok(_) => "issued",
        Err(r) => r.error,
    };
    state
        .metrics
        .token_requests
        .with_label_values(&[label, outcome])
        .inc();
    match result {
        Ok(resp) => resp,
        Err(r) => {
            tracing::info!(
                client_id = claimed.as_deref().unwrap_or("-"),
                %peer,
                error = r.error,
                reason = %r.description,
                "token request refused"
            );
            // The access audit counts it: the client authenticated when the refusal is about
            // what it asked for (its kind, its activation, its scope); else the client ID is
            // only claimed.
            let verified = matches!(r.error, "unauthorized_client" | "invalid_scope");
            state
                .access
                .audit()
                .refusal(registered, !verified, r.error, None);
            let mut resp = oauth_error(r.status, r.error, &r.description);
            if r.retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            resp
        }
    }
}

/// The token request's work: a token, or why not. `claimed` is set to the client ID the
/// request names as soon as it is known (for the metric and the log line).
async fn issue(
    state: &Broker,
    headers: &HeaderMap,
    body: &Bytes,
    claimed: &mut Option<String>,
) -> Result<Response, Refused> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        // RFC 6749 section 3.2: parameters MUST NOT be included more than once.
        if params.iter().any(|(seen, _)| *seen == k) {
            return Err(invalid_request(&format!("parameter `{k}` is repeated")));
        }
        params.push((k.into_owned(), v.into_owned()));
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };

    let basic = basic_credentials(headers)?;
    *claimed = basic
        .as_ref()
        .map(|(id, _)| id.clone())
        .or_else(|| param("client_id").map(str::to_owned));
    match param("grant_type") {
        None => return Err(invalid_request("missing `grant_type`")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only `client_credentials` is supported",
            ));
        }
    }
    let methods = [
        basic.is_some(),
        param("client_secret").is_some(),
        param("client_assertion").is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(invalid_request(
            "use exactly one client authentication method",
        ));
    }
    let creds = if let Some((client_id, secret)) = basic {
        if param("client_id").is_some_and(|id| id != client_id) {
            return Err(invalid_request(
                "`client_id` differs from the Basic credentials",
            ));
        }
        Credentials::Secret {
            method: Method::SecretBasic,
            client_id,
            secret,
        }
    } else if let Some(secret) = param("client_secret") {
        let Some(client_id) = param("client_id") else {
            return Err(invalid_request("`client_secret` needs `client_id`"));
        };
        Credentials::Secret {
            method: Method::SecretPost,
            client_id: client_id.to_owned(),
            secret: secret.to_owned(),
        }
    } else if let Some(assertion) = param("client_assertion") {
        if param("client_assertion_type") != Some(JWT_BEARER) {
            return Err(invalid_request(&format!(
                "`client_assertion_type` must be {JWT_BEARER}"
            )));
        }
        // Without a `client_id` parameter the assertion's `iss` names the client (RFC 7523
        // section 3): read unverified, it only labels the metric and the log line, and the
        // label is kept only for a registered client ID.
        if claimed.is_none() {
            *claimed = crate::auth::jwt::peek(assertion)
                .ok()
                .and_then(|p| p.str_claim("iss").map(str::to_owned));
        }
        Credentials::Assertion {
            client_id: param("client_id").map(str::to_owned),
            assertion: assertion.to_owned(),
        }
    } else {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "no client authentication",
        ));
    };
    let method = match &creds {
        Credentials::Secret { method, .. } => *method,
        Credentials::Assertion { .. } => Method::PrivateKeyJwt,
    };
    let client = match state.client_auth.authenticate(creds).await {
        Ok(c) => c,
        Err(AuthFailure::Busy) => {
            tracing::warn!("token request refused: too many secret checks in progress");
            return Err(Refused {
                retry_after: true,
                ..refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "too many client authentications in progress; retry shortly",
                )
            });
        }
        Err(AuthFailure::Invalid(e)) => {
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                &format!("{e} ({method:?})"),
            ));
        }
    };
    *claimed = Some(client.client_id.clone());
    let environment = state.config.environment;
    if client.kind != environment {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "client {} is a {} client ID; this broker is {}",
                client.client_id,
                client.kind.as_str(),
                environment.as_str()
            ),
        ));
    }
    if !client.active {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "client {} is not active in this environment; an administrator must activate it",
                client.client_id
            ),
        ));
    }
    let granted = match param("scope") {
        None => (*client.ceiling).clone(),
        Some("") => {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "`scope` is empty; leave it out to get the application's whole scope",
            ));
        }
        Some(requested_text) => {
            // The token parser: a ceiling saved before the scope families were closed may
            // hold a foreign token, which a request may still name.
            let requested = match ScopeSet::parse(requested_text) {
                Ok(s) => s,
                Err(e) => {
                    return Err(refused(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        &e.to_string(),
                    ));
                }
            };
            if let Some(beyond) = client.ceiling.first_uncovered(&requested) {
                // A token of no family, or a comma-separated list, is explained as an admin
                // setting the ceiling would hear it; otherwise the scope too wide is named.
                let description = match ScopeSet::parse_ceiling(requested_text) {
                    Err(e) => e.to_string(),
                    Ok(_) => format!(
                        "`{beyond}` is beyond the application's scope ({})",
                        client.ceiling
                    ),
                };
                return Err(refused(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    &description,
                ));
            }
            requested
        }
    };
    let issued = match state.issuer.issue(&client.client_id, &granted) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign an access token");
            return Err(refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token could not be signed",
            ));
        }
    };
    tracing::info!(client_id = %client.client_id, ?method, scope = %issued.scope, "issued an access token");
    let mut resp = Json(json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scope.to_string(),
    }))
    .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// `GET /.well-known/jwks.json`.
pub(crate) async fn jwks(State(state): State<Broker>) -> Response {
    let mut resp = Json(state.issuer.keys().jwks()).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414 section 2).
pub(crate) async fn metadata(State(state): State<Broker>) -> Response {
    let issuer = state.issuer.issuer();
    Json(json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "RS384", "ES256", "ES384"],
    }))
    .into_response()
}
