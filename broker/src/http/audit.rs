//! The access audit's admin API (SECURITY.md "Access audit"):
//!
//! - `GET /admin/v1/audit/access?client_id=&topic=&seq=&from=&to=&kind=&limit=&format=`: the
//!   newest snapshot of each matching record, oldest first. `format`: `json` (default,
//!   [`AccessList`]), `ndjson` (one record per line; a last line `{"truncated":true}` when
//!   the limit cut it), or `fhir` (a FHIR R4B `Bundle` of type `collection` of `AuditEvent`s,
//!   `application/fhir+json`).
//! - `GET /admin/v1/audit/verify`: every hash chain checked against its signed checkpoints
//!   ([`scopecast_protocol::audit::VerifyReport`]); 200 either way, `ok` says which.
//!
//! Both are reads: a viewer credential may call them.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use scopecast_protocol::audit::AccessList;
use scopecast_protocol::{ErrorCode, Timestamp, Topic};
use serde::Deserialize;

use super::admin::registry_error;
use super::error::ApiError;
use crate::audit::query::{AccessQuery, MAX_LIMIT, QueryError, access, fhir_bundle, ndjson};
use crate::state::Broker;

/// The query string of `GET /admin/v1/audit/access`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessParams {
    client_id: Option<String>,
    topic: Option<String>,
    seq: Option<u64>,
    from: Option<String>,
    to: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
    format: Option<String>,
}

fn bad(message: &str, field: &str) -> Response {
    ApiError::for_code(ErrorCode::BadRequest, message)
        .field(field)
        .into_response()
}

fn busy() -> Response {
    let mut r = ApiError::for_code(
        ErrorCode::Unavailable,
        "two audit queries already run on this node; try again shortly",
    )
    .into_response();
    r.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    r
}

fn off() -> Response {
    ApiError::for_code(
        ErrorCode::NotFound,
        "the access audit is off on this broker (audit.enabled = false)",
    )
    .into_response()
}

/// `GET /admin/v1/audit/access`.
pub(crate) async fn access_records(
    State(state): State<Broker>,
    params: Result<Query<AccessParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => {
            return ApiError::for_code(ErrorCode::BadRequest, e.body_text()).into_response();
        }
    };
    if !state.access.audit().enabled() {
        return off();
    }
    let time = |v: &Option<String>, field: &str| -> Result<Option<Timestamp>, String> {
        v.as_deref()
            .map(|s| {
                Timestamp::parse(s).map_err(|e| format!("`{field}` must be an RFC 3339 time: {e}"))
            })
            .transpose()
    };
    let from = match time(&p.from, "from") {
        Ok(t) => t,
        Err(m) => return bad(&m, "from"),
    };
    let to = match time(&p.to, "to") {
        Ok(t) => t,
        Err(m) => return bad(&m, "to"),
    };
    let topic = match p.topic.as_deref().map(Topic::new).transpose() {
        Ok(t) => t,
        Err(_) => {
            return bad(
                "`topic` must be one concrete topic such as fhir.encounter.started (no \
                 wildcard): the records whose pattern matches it are found",
                "topic",
            );
        }
    };
    if let Some(k) = &p.kind
        && !matches!(k.as_str(), "subscription" | "refusal" | "webhook_attempt")
    {
        return bad(
            "`kind` must be subscription, refusal or webhook_attempt",
            "kind",
        );
    }
    if p.limit.is_some_and(|l| l == 0 || l > MAX_LIMIT) {
        return bad(&format!("`limit` must be 1 to {MAX_LIMIT}"), "limit");
    }
    if let Some(c) = &p.client_id
        && (c.is_empty() || c.len() > 128)
    {
        return bad("`client_id` must be 1 to 128 characters", "client_id");
    }
    let format = p.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "ndjson" | "fhir") {
        return bad("`format` must be json, ndjson or fhir", "format");
    }
    let q = AccessQuery {
        client_id: p.client_id,
        topic,
        seq: p.seq,
        from,
        to,
        kind: p.kind,
        limit: p.limit.unwrap_or(1_000),
        newest_first: false,
    };
    let Some(_permit) = crate::audit::query::permit() else {
        return busy();
    };
    let (records, truncated) = match access(&state, &q).await {
        Ok(r) => r,
        Err(QueryError::Registry(e)) => return registry_error(e),
        Err(QueryError::Log(m)) => {
            return ApiError::for_code(ErrorCode::Unavailable, &m).into_response();
        }
    };
    match format {
        "ndjson" => (
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            ndjson(&records, truncated),
        )
            .into_response(),
        "fhir" => (
            [(header::CONTENT_TYPE, "application/fhir+json")],
            fhir_bundle(&records, &state.public_url, truncated).to_string(),
        )
            .into_response(),
        _ => Json(AccessList { records, truncated }).into_response(),
    }
}

/// `GET /admin/v1/audit/verify`.
pub(crate) async fn verify(State(state): State<Broker>) -> Response {
    let Some(key) = state.access.audit().key() else {
        return off();
    };
    let Some(_permit) = crate::audit::query::permit() else {
        return busy();
    };
    let a = &state.config.audit;
    let policy = crate::audit::chain::Policy {
        now_ms: Timestamp::now().unix_ms(),
        sign_ms: i64::try_from(a.sign_ms).unwrap_or(i64::MAX / 4),
        retention_ms: i64::try_from(a.retention_days.saturating_mul(86_400_000))
            .unwrap_or(i64::MAX / 4),
    };
    // Read before the chains: rows only grow after it.
    let written = state.access.audit().written();
    let written = written.as_ref().map(|(chain, seq)| (chain.as_str(), *seq));
    match crate::audit::chain::verify(&state.registry, key, policy, written).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => registry_error(e),
    }
}
