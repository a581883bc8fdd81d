//! `POST /v1/events/{topic}`: publishing over HTTP. The body is the event's JSON data;
//! `Idempotency-Key` becomes the event id. Answers 201 `{"seq", "id", "duplicate": false}`, or
//! 200 with `"duplicate": true` for an id already stored; refusals carry RFC 6750 challenges
//! (`invalid_token`, `insufficient_scope` with `scope="publish:<topic>"`). The publish goes
//! through the one admission (`access::Admission`), as over WebSocket.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use scopecast_protocol::{EventId, RawJson, Reason, Topic};
use serde_json::json;

use super::auth::{self, token_in_query, token_in_url};
use super::error::ApiError;
use super::scope_refusal;
use crate::access::PublishRefused;
use crate::state::Broker;

/// `POST /v1/events/{topic}`.
pub(crate) async fn publish(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(topic): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if token_in_query(&uri) {
        return Err(token_in_url(&state, peer));
    }
    let topic = Topic::new(&topic)
        .map_err(|e| ApiError::new(Reason::InvalidTopic, format!("invalid topic: {e}")))?;
    let principal = auth::client(&state, &headers, peer).await?;
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let mime = v.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        });
    if !json_body {
        return Err(ApiError::new(
            Reason::UnsupportedMediaType,
            "the body must be JSON (Content-Type: application/json or application/fhir+json)",
        )
        .status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    let max = state.config.limits.max_publish_body_bytes;
    if body.len() > max {
        return Err(ApiError::new(
            Reason::FrameTooLarge,
            format!("the body is over {max} bytes"),
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(Reason::MalformedJson, "the body is not UTF-8"))?;
    let data = RawJson::payload(text)
        .map_err(|e| ApiError::new(Reason::InvalidField, format!("body: {e}")).field("body"))?;
    let event_id = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| EventId::new(s).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        Reason::InvalidField,
                        "Idempotency-Key must be 1 to 128 bytes of visible ASCII",
                    )
                    .field("Idempotency-Key")
                })?,
        ),
    };
    let pending = state
        .admission
        .submit(&principal, topic, data, event_id)
        .await
        .map_err(|r| refused(&principal, r))?;
    let ack = pending.await.map_err(|r| refused(&principal, r))?;
    let status = if ack.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        axum::Json(
            json!({"seq": ack.seq, "id": ack.event_id.as_str(), "duplicate": ack.duplicate}),
        ),
    )
        .into_response())
}

/// The HTTP answer to a refused publish.
fn refused(principal: &crate::auth::token::Principal, r: PublishRefused) -> ApiError {
    match r {
        PublishRefused::Denied(d) => scope_refusal(principal, &d, "publish to"),
        PublishRefused::RateLimited { retry_after, .. } => ApiError::new(
            Reason::PublishRateExceeded,
            "publish rate exceeded for this client ID",
        )
        .retry_after_ms(retry_after.as_millis().max(1) as u64),
        PublishRefused::Unavailable(m) => ApiError::new(
            Reason::LogUnavailable,
            format!(
                "the event log cannot store events right now ({m}); nothing was stored, retry later"
            ),
        )
        .retry_after_ms(1000),
        PublishRefused::Unknown(m) => ApiError::new(
            Reason::LogUnavailable,
            format!(
                "the event log did not say whether the event was stored ({m}): retry with the \
                 same Idempotency-Key"
            ),
        )
        .retry_after_ms(1000),
        PublishRefused::Conflict => ApiError::new(
            Reason::EventIdConflict,
            "this Idempotency-Key was already used for another topic or payload",
        ),
    }
}
