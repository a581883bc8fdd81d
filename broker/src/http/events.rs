//! `GET /v1/events?topic=PATTERN&since=SEQ&limit=N` (PROTOCOL.md section 8): stored events of
//! a pattern after a `seq`, in `seq` order, read by the one history reader (`log::History`)
//! after the same access check as a subscribe. Payloads go out byte for byte.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use scopecast_protocol::{EventId, Pattern, RawJson, Reason, Timestamp, Topic};

use super::auth::{self, token_in_query, token_in_url};
use super::error::ApiError;
use super::scope_refusal;
use crate::access::Action;
use crate::log::{HistoryQuery, StoredEvent};
use crate::state::Broker;

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
struct Query {
    topic: String,
    since: u64,
    limit: usize,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, ApiError> {
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
            return Err(ApiError::new(
                Reason::MissingField,
                "query parameter `topic` is required: the pattern to read, percent-encoded \
                 (`?topic=adt.%3E` for `adt.>`)",
            )
            .field("topic"));
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
        Ok(Query {
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

fn invalid_query(message: &str) -> ApiError {
    ApiError::new(Reason::InvalidField, message)
}

/// `GET /v1/events?topic=PATTERN&since=SEQ&limit=N`: stored events of `PATTERN` after `SEQ`, in
/// `seq` order, with the same access check as a subscribe. `next_since` continues the read.
pub(crate) async fn history(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if token_in_query(&uri) {
        return Err(token_in_url(&state, peer));
    }
    let q = Query::parse(uri.query())?;
    let pattern = Pattern::new(&q.topic)
        .map_err(|e| ApiError::new(Reason::InvalidTopic, format!("invalid topic: {e}")))?;
    let principal = auth::client(&state, &headers, peer).await?;
    state
        .access
        .check(&principal, Action::Subscribe(&pattern))
        .map_err(|d| {
            state.access.refused_subscribe(&principal, &d);
            scope_refusal(&principal, &d, "read")
        })?;
    let head = state.fanout.head_seq();
    let page = state
        .history
        .page(
            &HistoryQuery {
                pattern,
                after: q.since,
                upto: head,
                limit: q.limit,
                max_bytes: MAX_HISTORY_PAGE_BYTES,
                max_scan: MAX_HISTORY_SCAN,
            },
            |_| true,
        )
        .await
        .map_err(|e| ApiError::new(Reason::LogUnavailable, e.to_string()))?;
    // Read after the scan: retention may have moved on meanwhile, and `truncated` must say so.
    let first = state.log.fresh_bounds().await.first;
    let body = Page {
        events: page.events.iter().map(|e| Entry::from(&**e)).collect(),
        next_since: page.scanned_to,
        head_seq: head,
        first_seq: first,
        truncated: q.since + 1 < first,
    };
    // Serialized straight to text: a payload goes out byte for byte as it was published. (A
    // detour through `serde_json::Value` would reorder keys, round numbers to f64 and drop
    // the trailing zeros of FHIR decimals.)
    let bytes = serde_json::to_vec(&body).map_err(|e| {
        tracing::error!(error = %e, "history page could not be encoded");
        ApiError::new(
            Reason::InternalError,
            "the history page could not be encoded",
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response())
}

/// A page of `GET /v1/events` (PROTOCOL.md section 8).
#[derive(serde::Serialize)]
struct Page<'a> {
    events: Vec<Entry<'a>>,
    next_since: u64,
    head_seq: u64,
    first_seq: u64,
    truncated: bool,
}

/// One event of a history page: the members of an `event` frame, in its order, with `data`
/// exactly as published.
#[derive(serde::Serialize)]
struct Entry<'a> {
    seq: u64,
    topic: &'a Topic,
    id: &'a EventId,
    time: Timestamp,
    data: &'a RawJson,
}

impl<'a> From<&'a StoredEvent> for Entry<'a> {
    fn from(e: &'a StoredEvent) -> Self {
        Entry {
            seq: e.seq,
            topic: &e.topic,
            id: &e.event_id,
            time: e.time,
            data: &e.data,
        }
    }
}
