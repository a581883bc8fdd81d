//! The HTTP surface on the broker's one port (DESIGN section 6).
//!
//! - `error`: [`ApiError`](error::ApiError), the one error shape of every endpoint but the
//!   token endpoint.
//! - `auth`: bearer tokens of applications (never in URLs) and the credential gate of the
//!   operator endpoints (admin API, metrics).
//! - `oauth`: `POST /oauth2/token`, `/.well-known/jwks.json`,
//!   `/.well-known/oauth-authorization-server`.
//! - `admin`: `/admin/v1/...` applications, clients, audit, keys.
//! - `audit`: `/admin/v1/audit/access` and `/admin/v1/audit/verify` (the access audit).
//! - `console`: the operator console at `/console` (server-rendered pages).
//! - `backup`: `POST /admin/v1/backup`, a consistent copy of the data folder as a tar stream.
//! - `credentials`: `/admin/v1/credentials`.
//! - `sessions`: `/admin/v1/sessions`, live sessions and closing one.
//! - `stream`: `GET /v1/stream`, the WebSocket upgrade.
//! - `publish`: `POST /v1/events/{topic}`.
//! - `events`: `GET /v1/events`, history.
//! - here: the routers, `/healthz`, `/readyz`, `/metrics`, and JSON errors.
//!
//! With `admin_listen` set, the operator endpoints (`/admin/v1`, `/metrics`) are served on
//! that listener only, beside `/healthz` and `/readyz`; the public port no longer has them and
//! answers them with a 404 that says so (without the admin address).

mod admin;
mod audit;
pub(crate) mod auth;
mod backup;
mod console;
mod credentials;
mod developer;
mod error;
mod events;
mod oauth;
mod publish;
mod records;
pub(crate) mod sessions;
mod stream;
mod webhooks;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use scopecast_protocol::{ErrorCode, Reason};
use serde_json::json;

pub(crate) use error::ApiError;

use crate::access::Denied;
use crate::auth::token::Principal;
use crate::state::Broker;

/// Largest admin request body, in bytes (a JWK Set of 10 RSA keys fits well within).
const MAX_ADMIN_BODY_BYTES: usize = 256 * 1024;

/// The routers: the public one, and the operator one when `admin_listen` is set (else the
/// operator endpoints are part of the public router).
pub(crate) fn routers(state: Broker) -> (Router, Option<Router>) {
    let admin = Router::new()
        .route(
            "/applications",
            post(admin::create_application).get(admin::list_applications),
        )
        .route(
            "/applications/{id}",
            get(admin::show_application)
                .patch(admin::update_application)
                .delete(admin::delete_application),
        )
        .route("/applications/{id}/record", get(records::export))
        .route("/applications/{id}/retire", post(records::retire))
        .route("/records", post(records::import))
        .route("/catalog/sync", post(records::sync))
        .route("/clients/{client_id}/grant", put(records::set_grant))
        .route("/clients/{client_id}/approve", post(records::approve))
        .route("/clients/{client_id}", get(admin::show_client))
        .route(
            "/clients/{client_id}/rotate-secret",
            post(admin::rotate_secret),
        )
        .route("/clients/{client_id}/keys", put(admin::set_keys))
        .route(
            "/clients/{client_id}/client-id-header",
            put(admin::set_client_id_header),
        )
        .route("/clients/{client_id}/activate", post(admin::activate))
        .route("/clients/{client_id}/deactivate", post(admin::deactivate))
        .route("/audit", get(admin::audit))
        .route("/audit/access", get(audit::access_records))
        .route("/audit/verify", get(audit::verify))
        .route("/keys/rotate", post(admin::rotate_keys))
        .route("/backup", post(backup::backup))
        .route(
            "/credentials",
            get(credentials::list).post(credentials::create),
        )
        .route("/credentials/{name}", delete(credentials::revoke))
        .route("/sessions", get(sessions::list))
        .route("/sessions/{session}/close", post(sessions::close))
        .route(
            "/clients/{client_id}/webhooks",
            post(webhooks::create).get(webhooks::list_for_client),
        )
        .route("/webhooks", get(webhooks::list_all))
        .route(
            "/webhooks/{id}",
            get(webhooks::show)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/webhooks/{id}/pause", post(webhooks::pause))
        .route("/webhooks/{id}/resume", post(webhooks::resume))
        .route(
            "/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route("/webhooks/{id}/replay", post(webhooks::replay))
        .route("/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin_api,
        ))
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY_BYTES));
    let operator = Router::new().nest("/admin/v1", admin).route(
        "/metrics",
        get(metrics).layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_metrics,
        )),
    );
    let health = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let public = Router::new()
        .merge(health.clone())
        .route(
            "/oauth2/token",
            post(oauth::token).layer(DefaultBodyLimit::max(oauth::MAX_TOKEN_REQUEST_BYTES)),
        )
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route("/catalog/v1/keys", get(records::keys))
        .route(
            "/catalog/v1/records",
            get(records::list).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::require_catalog_reader,
            )),
        )
        .route("/dev/v1/register", post(developer::register))
        .nest(
            "/dev/v1/apps",
            Router::new()
                .route("/", get(developer::list).post(developer::create))
                .route("/{id}", get(developer::show).patch(developer::update))
                .route("/{id}/clients/{client_id}/keys", put(developer::set_keys))
                .route("/{id}/ready", post(developer::ready))
                .route("/{id}/retire", post(developer::retire))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    auth::require_developer,
                ))
                .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY_BYTES)),
        )
        .route("/v1/stream", get(stream::stream))
        .route(
            "/v1/events/{topic}",
            post(publish::publish).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/events", get(events::history))
        .nest(
            "/v1/webhooks",
            Router::new()
                .route("/", get(webhooks::app::list).post(webhooks::app::create))
                .route(
                    "/{id}",
                    get(webhooks::app::show)
                        .patch(webhooks::app::update)
                        .delete(webhooks::app::delete),
                )
                .route("/{id}/rotate-secret", post(webhooks::app::rotate_secret))
                .route("/{id}/deliveries", get(webhooks::app::deliveries))
                .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY_BYTES)),
        )
        .nest("/fhir", crate::fhir::http::router())
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        );
    // The operator console: beside the admin API (on `admin_listen` when it is set).
    let operator = if state.config.console.enabled {
        operator
            .nest("/console", console::router(state.clone()))
            .route(
                "/console/",
                get(|| async { axum::response::Redirect::to("/console") }),
            )
    } else {
        operator
    };
    let finish = |r: Router<Broker>| {
        r.fallback(not_found)
            .layer(axum::middleware::from_fn(json_errors))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                count_requests,
            ))
            .with_state(state.clone())
    };
    if state.config.admin_listen.is_some() {
        // The operator paths answer with where they went, not a bare "no such endpoint"; the
        // admin address itself is not given away on a public port.
        let moved = Router::new()
            .route("/admin", axum::routing::any(on_admin_listener))
            .route("/admin/{*rest}", axum::routing::any(on_admin_listener))
            .route("/metrics", axum::routing::any(on_admin_listener));
        (
            finish(public.merge(moved)),
            Some(finish(operator.merge(health))),
        )
    } else {
        (finish(public.merge(operator)), None)
    }
}

/// Prometheus text exposition.
async fn metrics(State(state): State<Broker>) -> Response {
    let m = &state.metrics;
    let b = state.log.bounds();
    m.log_first_seq.set(b.first as i64);
    m.log_last_seq.set(b.last as i64);
    m.log_bytes.set(state.log.stored_bytes() as i64);
    let r = &state.config.retention;
    for (limit, v) in [
        ("max_events", r.max_events),
        ("max_bytes", r.max_bytes),
        ("max_age_s", r.max_age_s),
    ] {
        m.log_retention.with_label_values(&[limit]).set(v as i64);
    }
    let body = m.render();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

/// Counts every HTTP request by its route template (`/admin/v1/clients/{client_id}`, never
/// the raw path, so the label set is fixed) and status.
async fn count_requests(
    State(state): State<Broker>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let route = route.as_deref().unwrap_or("unmatched");
    state
        .metrics
        .http_requests
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    resp
}

/// Liveness: the process serves HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 while accepting work; 503 once shutdown has begun, or while the event log
/// refuses writes (a full disk): a load balancer then sends publishers elsewhere.
async fn readyz(State(state): State<Broker>) -> Result<Response, ApiError> {
    if !state.is_ready() {
        return Err(ApiError::new(
            Reason::ShuttingDown,
            "the broker is shutting down",
        ));
    }
    if !state.admission.log_writable() {
        return Err(ApiError::new(
            Reason::LogUnavailable,
            "the event log refuses writes (see the broker's log); publishes answer 503 until it recovers",
        ));
    }
    let mut body = json!({
        "status": "ready",
        "environment": state.config.environment.as_str(),
        "environment_name": state.config.environment_name,
        "env": state.config.environment_id(),
    });
    if let Some(c) = &state.cluster {
        let behind = state.fanout.behind_ms();
        if behind > state.config.cluster.max_fanout_lag_ms {
            return Err(ApiError::new(
                Reason::LogUnavailable,
                format!(
                    "this node's fan-out has been behind the event log for {behind} ms without delivering (see the broker's log)"
                ),
            ));
        }
        let connected = c.nats.connection_state() == async_nats::connection::State::Connected;
        if !connected {
            return Err(ApiError::new(
                Reason::LogUnavailable,
                "this node has lost its connection to NATS and is reconnecting",
            ));
        }
        body["node"] = json!(c.node);
        body["nats_server"] = json!(c.nats.server_info().server_name);
        body["durability"] = json!({
            "degraded": !c.durability.reasons.is_empty(),
            "reasons": c.durability.reasons,
            "server_version": c.durability.server_version,
            "replicas": c.durability.replicas,
        });
        body["fanout_behind_ms"] = json!(behind);
    }
    Ok(Json(body).into_response())
}

/// Turns the few error answers produced outside our handlers (a body over its limit, a wrong
/// method, a failed upgrade) into the JSON shape every other error has: `{error, message}`,
/// or RFC 6749 section 5.2 `{error, error_description}` on the token endpoint.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let token_endpoint = req.uri().path() == "/oauth2/token";
    let fhir = req.uri().path() == "/fhir" || req.uri().path().starts_with("/fhir/");
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json")
                || v.as_bytes().starts_with(b"application/fhir+json")
                // The console's own pages say what went wrong, in HTML.
                || v.as_bytes().starts_with(b"text/html")
        });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let message = match status.as_u16() {
        413 => "the request body is too large",
        405 => "this method is not allowed on this path",
        415 => "unsupported content type",
        _ => status.canonical_reason().unwrap_or("request refused"),
    };
    if fhir {
        // The FHIR endpoint answers every refusal as an OperationOutcome.
        let code = match status.as_u16() {
            404 => "not-found",
            405 | 415 => "not-supported",
            413 => "too-costly",
            s if s >= 500 => "exception",
            _ => "invalid",
        };
        return crate::fhir::http::Fhir::refuse(status, code, message).into_response();
    }
    let code = match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        413 | 431 => ErrorCode::TooLarge,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::Unavailable,
        s if s >= 500 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let (parts, _) = resp.into_parts();
    let mut out = if token_endpoint {
        let error = if status.as_u16() >= 500 {
            "server_error"
        } else {
            "invalid_request"
        };
        (
            status,
            Json(json!({"error": error, "error_description": message})),
        )
            .into_response()
    } else {
        ApiError::for_code(code, message)
            .status(status)
            .into_response()
    };
    // Keep headers such as `Allow`, but not the old body's type or length.
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    if token_endpoint {
        out.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    out
}

async fn not_found() -> ApiError {
    ApiError::new(Reason::NotFound, "no such endpoint")
}

/// `/admin/...` and `/metrics` on the public port of a broker with `admin_listen` set.
async fn on_admin_listener() -> ApiError {
    ApiError::new(Reason::NotFound, ON_ADMIN_LISTENER)
}

/// What the public port says about the operator endpoints when they have their own listener.
const ON_ADMIN_LISTENER: &str = "no such endpoint on this port: this broker serves the admin API and metrics on a separate admin listener (admin_listen)";

/// The HTTP answer to a refused access check: 403 `client_inactive`, or 403
/// `insufficient_scope` naming the scope (and the RFC 6750 challenge) for the `verb`
/// ("publish to", "read").
pub(crate) fn scope_refusal(principal: &Principal, denied: &Denied, verb: &str) -> ApiError {
    match denied {
        Denied::Inactive => ApiError::new(
            Reason::ClientInactive,
            "client ID is not active in this environment",
        ),
        Denied::Scope {
            required_scope,
            whose,
        } => ApiError::new(
            Reason::InsufficientScope,
            format!(
                "client {} may not {verb} this: {} does not include {required_scope}",
                principal.client_id,
                whose.words()
            ),
        )
        .required_scope(required_scope.clone()),
    }
}
