//! `POST /v1/events/{topic}`: publishing over HTTP. The body is the event's JSON data;
//! `Idempotency-Key` becomes the event id. Answers 201 `{"seq", "id"}`; refusals carry RFC 6750
//! challenges (`invalid_token`, `insufficient_scope` with `scope="publish:<topic>"`).
//!
//! Where the operator turned it on (`http.client_id_header`) and an admin enabled it for the
//! client ID, the `Scopecast-Client-Id` header identifies the client instead of a token; the
//! application's whole scope ceiling then applies (DESIGN section 6).

// Helpers return `Result<_, Response>`: the error is a ready HTTP answer, built only on the
// error path, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use scopecast_protocol::{ErrorCode, EventId, RawJson, Reason, Scope, ScopeSet, Topic};
use serde_json::json;
use tokio::sync::oneshot;

use super::stream::{bearer, json_error, refused_token, token_in_query, unauthorized};
use crate::fanout::{PublishRequest, Refusal, Reply};
use crate::server::AppState;

/// Header naming the client on the HTTP APIs when identification by header is on.
pub(crate) const CLIENT_ID_HEADER: &str = "scopecast-client-id";

/// Who is publishing, and with which rights.
struct Caller {
    client_id: Arc<str>,
    scope: Arc<ScopeSet>,
}

impl Caller {
    /// `Ok` when the caller's scope AND its application's current ceiling grant `needed`;
    /// otherwise 403 with an RFC 6750 section 3 `insufficient_scope` challenge naming it.
    fn require(&self, state: &AppState, needed: &Scope) -> Result<(), Response> {
        let ceiling = state
            .inner
            .hub
            .registry
            .client(&self.client_id)
            .filter(|c| c.active)
            .map(|c| c.ceiling.clone());
        if self.scope.covers(needed) && ceiling.is_some_and(|c| c.covers(needed)) {
            return Ok(());
        }
        let message = format!("client {} lacks the scope {needed}", self.client_id);
        let mut resp = (
            StatusCode::FORBIDDEN,
            axum::Json(json!({
                "error": ErrorCode::Forbidden.as_str(),
                "reason": Reason::InsufficientScope.as_str(),
                "message": message,
                "required_scope": needed.to_string(),
            })),
        )
            .into_response();
        let challenge =
            format!("Bearer realm=\"scopecast\", error=\"insufficient_scope\", scope=\"{needed}\"");
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        Err(resp)
    }
}

/// Identifies the caller by token, or by client-ID header where allowed.
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Caller, Response> {
    let hub = &state.inner.hub;
    if let Some(token) = bearer(headers)? {
        return match hub.verifier.verify(token).await {
            Ok(p) => Ok(Caller {
                client_id: p.client_id.as_str().into(),
                scope: p.scope,
            }),
            Err(e) => {
                hub.note_refused(Some(token), peer, e.label(), &e.to_string());
                Err(refused_token(&e))
            }
        };
    }
    if let Some(id) = headers.get(CLIENT_ID_HEADER) {
        if !state.inner.config.http.client_id_header {
            return Err(unauthorized(
                "identification by Scopecast-Client-Id is off on this broker; send a Bearer token",
                "invalid_request",
            ));
        }
        let id = id.to_str().unwrap_or("");
        let Some(client) = hub.registry.client(id) else {
            hub.note_refused(None, peer, "unknown_client", "unknown Scopecast-Client-Id");
            return Err(unauthorized("unknown client ID", "invalid_token"));
        };
        if !client.client_id_header {
            return Err(unauthorized(
                "this client ID may not be identified by header; send a Bearer token",
                "invalid_request",
            ));
        }
        if !client.active || client.kind != state.inner.config.environment {
            return Err(json_error(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                Reason::ClientInactive,
                "client ID is not active in this environment",
            ));
        }
        return Ok(Caller {
            client_id: client.client_id.as_str().into(),
            scope: client.ceiling.clone(),
        });
    }
    Err(unauthorized(
        "an access token is required (Authorization: Bearer)",
        "invalid_request",
    ))
}

/// `POST /v1/events/{topic}`.
pub(crate) async fn publish(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(topic): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hub = state.inner.hub.clone();
    if token_in_query(&uri) {
        hub.note_refused(None, peer, "token_in_url", "token in a URL");
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            Reason::TokenInUrl,
            "tokens are refused in URLs; send Authorization: Bearer",
        );
    }
    let topic = match Topic::new(&topic) {
        Ok(t) => t,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                Reason::InvalidTopic,
                &format!("invalid topic: {e}"),
            );
        }
    };
    let caller = match caller(&state, &headers, peer).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if let Err(resp) = caller.require(&state, &Scope::publish(&topic)) {
        return resp;
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let mime = v.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        });
    if !json_body {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadRequest,
            Reason::UnsupportedMediaType,
            "the body must be JSON (Content-Type: application/json or application/fhir+json)",
        );
    }
    if body.len() > hub.limits.max_publish_body_bytes {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            Reason::FrameTooLarge,
            &format!(
                "the body is over {} bytes",
                hub.limits.max_publish_body_bytes
            ),
        );
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            Reason::MalformedJson,
            "the body is not UTF-8",
        );
    };
    let data = match RawJson::payload(text) {
        Ok(d) => d,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                Reason::InvalidField,
                &format!("body: {e}"),
            );
        }
    };
    let event_id = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| EventId::new(s).ok()) {
            Some(id) => Some(id),
            None => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    Reason::InvalidField,
                    "Idempotency-Key must be 1 to 128 bytes of visible ASCII",
                );
            }
        },
    };
    if let Err(wait) = hub.rate.take(&caller.client_id) {
        hub.metrics.publish_rate_limited.inc();
        let mut resp = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            Reason::PublishRateExceeded,
            "publish rate exceeded for this client ID",
        );
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let (tx, rx) = oneshot::channel();
    let req = PublishRequest {
        topic,
        data,
        event_id,
        reply: Reply::Http(tx),
    };
    if hub.bus.publish(req).await.is_err() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            Reason::ShuttingDown,
            "the broker is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(ack)) if ack.duplicate => {
            // Nothing was stored: the publish costs no rate.
            hub.rate.refund(&caller.client_id);
            (
                StatusCode::OK,
                axum::Json(json!({"seq": ack.seq, "id": ack.event_id.as_str(), "duplicate": true})),
            )
                .into_response()
        }
        Ok(Ok(ack)) => {
            hub.metrics
                .client(&caller.client_id)
                .published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (
                StatusCode::CREATED,
                axum::Json(
                    json!({"seq": ack.seq, "id": ack.event_id.as_str(), "duplicate": false}),
                ),
            )
                .into_response()
        }
        Ok(Err(Refusal::EventIdConflict)) => json_error(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            Reason::EventIdConflict,
            "this Idempotency-Key was already used for another topic or payload",
        ),
        Ok(Err(e)) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            Reason::LogUnavailable,
            &e.to_string(),
        ),
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            Reason::ShuttingDown,
            "the broker is shutting down",
        ),
    }
}

/// Most events in one history answer.
const MAX_HISTORY_LIMIT: usize = 1000;
/// Events in a history answer when the query sets no `limit`.
const DEFAULT_HISTORY_LIMIT: usize = 100;
/// Most characters of a refused query value quoted back in the message.
const MAX_QUOTED_CHARS: usize = 40;
/// Most events scanned for one history answer (a rare pattern over a long log continues with
/// `next_since` instead of scanning everything at once).
const MAX_HISTORY_SCAN: usize = 100_000;

/// Most payload bytes in one history page (about; topic and id included), so a page of large
/// events stays a few MiB: `next_since` then stops before the event that would not fit.
const MAX_HISTORY_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// The query of `GET /v1/events`, read by hand: a refusal names the parameter and says in
/// plain words what it takes, where the query extractor's own texts name Rust types
/// (`invalid digit found in string`). Parameters other than these three, or one given twice,
/// are refused: a misspelt `sinse=` read silently from the start would be worse.
struct HistoryQuery {
    topic: String,
    since: u64,
    limit: usize,
}

impl HistoryQuery {
    fn parse(query: Option<&str>) -> Result<HistoryQuery, Response> {
        let mut topic = None;
        let mut since = None;
        let mut limit = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "topic" => &mut topic,
                "since" => &mut since,
                "limit" => &mut limit,
                other => {
                    return Err(invalid_query(&format!(
                        "unknown query parameter `{}`: GET /v1/events takes `topic`, `since` \
                         and `limit`",
                        quoted(other)
                    )));
                }
            };
            if slot.is_some() {
                return Err(invalid_query(&format!(
                    "query parameter `{key}` is given twice"
                )));
            }
            *slot = Some(value.into_owned());
        }
        let Some(topic) = topic else {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                Reason::MissingField,
                "query parameter `topic` is required: the pattern to read, percent-encoded \
                 (`?topic=adt.%3E` for `adt.>`)",
            ));
        };
        let since = match since {
            None => 0,
            Some(v) => whole_number(&v).ok_or_else(|| {
                invalid_query(&format!(
                    "`since` must be a whole number ≥ 0, the seq after which to read (got `{}`)",
                    quoted(&v)
                ))
            })?,
        };
        let limit = match limit {
            None => DEFAULT_HISTORY_LIMIT,
            Some(v) => whole_number(&v)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n))
                .ok_or_else(|| {
                    invalid_query(&format!(
                        "`limit` must be a whole number from 1 to {MAX_HISTORY_LIMIT}, the most \
                         events to return (got `{}`)",
                        quoted(&v)
                    ))
                })?,
        };
        Ok(HistoryQuery {
            topic,
            since,
            limit,
        })
    }
}

/// Decimal digits only (no sign, point or space) that fit a `u64`.
fn whole_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A value as quoted back in a refusal: at most [`MAX_QUOTED_CHARS`] characters.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

fn invalid_query(message: &str) -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        ErrorCode::BadRequest,
        Reason::InvalidField,
        message,
    )
}

/// `GET /v1/events?topic=PATTERN&since=SEQ&limit=N`: stored events of `PATTERN` after `SEQ`, in
/// `seq` order, with the same scope check as a subscribe. `next_since` continues the read.
pub(crate) async fn history(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let hub = state.inner.hub.clone();
    if token_in_query(&uri) {
        hub.note_refused(None, peer, "token_in_url", "token in a URL");
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            Reason::TokenInUrl,
            "tokens are refused in URLs; send Authorization: Bearer",
        );
    }
    let q = match HistoryQuery::parse(uri.query()) {
        Ok(q) => q,
        Err(resp) => return resp,
    };
    let pattern = match scopecast_protocol::Pattern::new(&q.topic) {
        Ok(p) => p,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                Reason::InvalidTopic,
                &format!("invalid topic: {e}"),
            );
        }
    };
    let limit = q.limit;
    let caller = match caller(&state, &headers, peer).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if let Err(resp) = caller.require(&state, &Scope::subscribe(&pattern)) {
        return resp;
    }
    let head = hub.bus.head_seq();
    let mut cursor = q.since;
    let mut scanned = 0usize;
    let mut bytes = 0usize;
    let mut out = Vec::new();
    'scan: while cursor < head && out.len() < limit && scanned < MAX_HISTORY_SCAN {
        let page = match hub.log.read_after(cursor, 512).await {
            Ok(p) => p,
            Err(e) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    Reason::LogUnavailable,
                    &e.to_string(),
                );
            }
        };
        if page.is_empty() {
            break;
        }
        for e in page {
            if e.seq > head {
                break 'scan;
            }
            let matched = pattern.matches(&e.topic);
            if matched {
                // A page stays within its byte budget (at least one event always fits).
                let size = e.data.get().len() + e.topic.as_str().len() + e.event_id.as_str().len();
                if !out.is_empty() && bytes + size > MAX_HISTORY_PAGE_BYTES {
                    break 'scan;
                }
                bytes += size;
            }
            cursor = e.seq;
            scanned += 1;
            if matched {
                out.push(e);
                if out.len() == limit {
                    break 'scan;
                }
            }
        }
    }
    // Read after the scan: retention may have moved on meanwhile, and `truncated` must say so.
    let first = hub.log.first_seq();
    let page = HistoryPage {
        events: out.iter().map(HistoryEvent::from).collect(),
        next_since: cursor,
        head_seq: head,
        first_seq: first,
        truncated: q.since + 1 < first,
    };
    // Serialized straight to text: a payload goes out byte for byte as it was published. (A
    // detour through `serde_json::Value` would reorder keys, round numbers to f64 and drop
    // the trailing zeros of FHIR decimals.)
    match serde_json::to_vec(&page) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "history page could not be encoded");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                Reason::InternalError,
                "the history page could not be encoded",
            )
        }
    }
}

/// A page of `GET /v1/events` (PROTOCOL.md section 8).
#[derive(serde::Serialize)]
struct HistoryPage<'a> {
    events: Vec<HistoryEvent<'a>>,
    next_since: u64,
    head_seq: u64,
    first_seq: u64,
    truncated: bool,
}

/// One event of a history page: the members of an `event` frame, in its order, with `data`
/// exactly as published.
#[derive(serde::Serialize)]
struct HistoryEvent<'a> {
    seq: u64,
    topic: &'a scopecast_protocol::Topic,
    id: &'a EventId,
    time: scopecast_protocol::Timestamp,
    data: &'a RawJson,
}

impl<'a> From<&'a crate::log::StoredEvent> for HistoryEvent<'a> {
    fn from(e: &'a crate::log::StoredEvent) -> Self {
        HistoryEvent {
            seq: e.seq,
            topic: &e.topic,
            id: &e.event_id,
            time: e.time,
            data: &e.data,
        }
    }
}
