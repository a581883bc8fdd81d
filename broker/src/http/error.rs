//! [`ApiError`]: every error answer of the HTTP surface (`/v1`, `/admin`, health) in one JSON
//! shape (PROTOCOL.md section 6):
//!
//! ```json
//! {"error": "forbidden", "reason": "insufficient_scope", "message": "...",
//!  "required_scope": "publish:adt.x", "field": "scope", "retry_after_ms": 1000}
//! ```
//!
//! `error` is the closed set of codes, `reason` the precise reason; `field`, `required_scope`
//! and `retry_after_ms` appear when they apply. The status follows the code (415 for an
//! unsupported media type is the one exception the table names). The token endpoint keeps
//! RFC 6749 section 5.2's shape instead (`oauth.rs`).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use scopecast_protocol::{ErrorCode, Reason};
use serde::Serialize;

/// An error answer. Built with [`ApiError::new`] and the setters; a handler returns
/// `Result<_, ApiError>`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    reason: Reason,
    message: String,
    field: Option<String>,
    required_scope: Option<String>,
    retry_after_ms: Option<u64>,
    /// `WWW-Authenticate` (RFC 6750 section 3), on 401 and on scope refusals.
    challenge: Option<String>,
    /// `Upgrade` (a plain request to the WebSocket endpoint).
    upgrade: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    reason: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    required_scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl ApiError {
    /// An error for `reason`, with the status of its code.
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(reason.code().http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            reason,
            message: message.into(),
            field: None,
            required_scope: None,
            retry_after_ms: None,
            challenge: None,
            upgrade: false,
        }
    }

    /// Another status than the code's (415, 413 for an over-large body, 429).
    pub(crate) fn status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    /// Names the field (or parameter) at fault.
    pub(crate) fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// The scope that would allow the request (`insufficient_scope`), also in a
    /// `WWW-Authenticate: Bearer error="insufficient_scope"` challenge (RFC 6750 section 3).
    pub(crate) fn required_scope(mut self, scope: impl Into<String>) -> ApiError {
        let scope = scope.into();
        self.challenge = Some(format!(
            "Bearer realm=\"scopecast\", error=\"insufficient_scope\", scope=\"{scope}\""
        ));
        self.required_scope = Some(scope);
        self
    }

    /// An RFC 6750 section 3 challenge on a 401: `error` is the challenge's error code.
    pub(crate) fn challenge(mut self, realm: &str, error: &str) -> ApiError {
        self.challenge = Some(format!(
            "Bearer realm=\"{realm}\", error=\"{error}\", error_description=\"{}\"",
            self.message.replace('"', "'")
        ));
        self
    }

    /// When to retry (also as `Retry-After`, in whole seconds).
    pub(crate) fn retry_after_ms(mut self, ms: u64) -> ApiError {
        self.retry_after_ms = Some(ms);
        self
    }

    /// Its status, message and `WWW-Authenticate` challenge (the FHIR front end words the
    /// same refusal as an `OperationOutcome`).
    pub(crate) fn parts(&self) -> (StatusCode, &str, Option<&str>) {
        (self.status, &self.message, self.challenge.as_deref())
    }

    /// Adds `Upgrade: websocket`.
    pub(crate) fn upgrade(mut self) -> ApiError {
        self.upgrade = true;
        self
    }

    /// An error for a code with no more precise reason (answers made outside the handlers:
    /// a wrong method, a body over its limit).
    pub(crate) fn for_code(code: ErrorCode, message: impl Into<String>) -> ApiError {
        let reason = match code {
            ErrorCode::BadRequest => Reason::InvalidField,
            ErrorCode::Unauthorized => Reason::InvalidToken,
            ErrorCode::Forbidden => Reason::InsufficientRole,
            ErrorCode::NotFound => Reason::NotFound,
            ErrorCode::TooLarge => Reason::FrameTooLarge,
            ErrorCode::RateLimited => Reason::PublishRateExceeded,
            ErrorCode::Conflict => Reason::Conflict,
            ErrorCode::Unavailable => Reason::ShuttingDown,
            ErrorCode::Internal => Reason::InternalError,
        };
        ApiError::new(reason, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.reason.code().as_str(),
            reason: self.reason.as_str(),
            message: &self.message,
            field: self.field.as_deref(),
            required_scope: self.required_scope.as_deref(),
            retry_after_ms: self.retry_after_ms,
        };
        let mut resp = (self.status, Json(body)).into_response();
        let h = resp.headers_mut();
        if let Some(c) = self.challenge
            && let Ok(v) = HeaderValue::from_str(&c)
        {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        if let Some(ms) = self.retry_after_ms {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(ms.div_ceil(1000).max(1)),
            );
        }
        if self.upgrade {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        resp
    }
}
