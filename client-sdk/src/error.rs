//! The SDK's errors, one per operation ([`ConnectError`], [`SubscribeError`],
//! [`PublishError`]), each matchable by variant with its cause as `source()`, and the mapping
//! from the broker's `error` frames (PROTOCOL.md section 6) to them.

use scopecast_protocol::{ErrorCode, ErrorFrame, Reason};

use crate::tls::{CertificateError, TlsError};
use crate::token::TokenError;

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No token could be had.
    #[error("getting a token: {0}")]
    Token(#[from] TokenError),
    /// The broker refused the upgrade (401 invalid token, 403 inactive client, 429...).
    #[error("the broker refused the connection ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The broker's message.
        message: String,
    },
    /// The broker's TLS certificate was refused, for a reason the message explains (an
    /// organisation's own CA this client does not trust, a CA certificate served as the
    /// broker's own).
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The TLS configuration could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The broker closed the connection during the handshake.
    #[error("the broker closed the connection: {0}")]
    Closed(String),
    /// A transport failure.
    #[error("connection failed: {0}")]
    Io(String),
}

/// Why a subscribe failed. Match on the variant; `Forbidden` names the scope that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The token's or the application's scope does not allow the pattern.
    #[error("forbidden: needs scope {required_scope}")]
    Forbidden {
        /// The scope that would allow it, e.g. `subscribe:adt.>`.
        required_scope: String,
    },
    /// The pattern breaks the topic grammar.
    #[error("invalid pattern: {0}")]
    InvalidTopic(String),
    /// The token is not valid.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The client ID is not active in this environment.
    #[error("client inactive: {0}")]
    ClientInactive(String),
    /// The token expired.
    #[error("token expired")]
    TokenExpired,
    /// A limit was reached (too many subscriptions).
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The broker could not read its event log for the history this subscription needs.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The broker answered something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The broker's event log was replaced (its `log_epoch` changed, or, from a broker that
    /// does not send one, its newest `seq` went back): the `seq` this subscription had reached
    /// names nothing there. Subscribe again, from `Some(0)` to read the new log's history.
    #[error("the broker's event log was replaced ({0}); subscribe again")]
    LogReplaced(String),
    /// The connection is closed for good.
    #[error("the connection is closed")]
    Closed,
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The token's or the application's scope does not allow the topic.
    #[error("forbidden: needs scope {required_scope}")]
    Forbidden {
        /// The scope that would allow it, e.g. `publish:adt.x`.
        required_scope: String,
    },
    /// Over the client's publish rate.
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited {
        /// How long to wait, in ms.
        retry_after_ms: u64,
    },
    /// The `event_id` was used before for another topic or payload.
    #[error("event_id conflict")]
    Conflict,
    /// The broker could not store the event; retry later (with the same `event_id`).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The topic or payload was refused.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The connection dropped before the acknowledgement: the event may or may not be stored;
    /// retry with the same `event_id` to be sure.
    #[error("disconnected before the acknowledgement")]
    Disconnected,
    /// The connection is closed for good.
    #[error("the connection is closed")]
    Closed,
}

pub(crate) fn subscribe_error(e: &ErrorFrame) -> SubscribeError {
    match e.error.known() {
        Some(Reason::InsufficientScope | Reason::ScopeRevoked) => SubscribeError::Forbidden {
            required_scope: e.required_scope.clone().unwrap_or_default(),
        },
        Some(Reason::InvalidTopic) => SubscribeError::InvalidTopic(e.message.clone()),
        Some(Reason::InvalidToken | Reason::AuthRequired) => {
            SubscribeError::Unauthorized(e.message.clone())
        }
        Some(Reason::ClientInactive) => SubscribeError::ClientInactive(e.message.clone()),
        Some(Reason::TokenExpired) => SubscribeError::TokenExpired,
        Some(Reason::TooManySubscriptions) => SubscribeError::RateLimited(e.message.clone()),
        Some(Reason::LogUnavailable) => SubscribeError::Unavailable(e.message.clone()),
        // A reason this version does not know: fall back on the code (PROTOCOL.md section 6).
        _ => match e.code {
            ErrorCode::Forbidden => SubscribeError::Forbidden {
                required_scope: e.required_scope.clone().unwrap_or_default(),
            },
            ErrorCode::Unauthorized => SubscribeError::Unauthorized(e.message.clone()),
            ErrorCode::RateLimited => SubscribeError::RateLimited(e.message.clone()),
            ErrorCode::Unavailable => SubscribeError::Unavailable(e.message.clone()),
            _ => SubscribeError::Protocol(format!("{}: {}", e.error, e.message)),
        },
    }
}

pub(crate) fn publish_error(e: &ErrorFrame) -> PublishError {
    match e.error.known() {
        Some(Reason::InsufficientScope) => PublishError::Forbidden {
            required_scope: e.required_scope.clone().unwrap_or_default(),
        },
        Some(Reason::PublishRateExceeded) => PublishError::RateLimited {
            retry_after_ms: e.retry_after_ms.unwrap_or(1000),
        },
        Some(Reason::EventIdConflict) => PublishError::Conflict,
        Some(Reason::LogUnavailable | Reason::ShuttingDown) => {
            PublishError::Unavailable(e.message.clone())
        }
        _ => match e.code {
            ErrorCode::Forbidden => PublishError::Forbidden {
                required_scope: e.required_scope.clone().unwrap_or_default(),
            },
            ErrorCode::RateLimited => PublishError::RateLimited {
                retry_after_ms: e.retry_after_ms.unwrap_or(1000),
            },
            ErrorCode::Conflict => PublishError::Conflict,
            ErrorCode::Unavailable | ErrorCode::Internal => {
                PublishError::Unavailable(e.message.clone())
            }
            _ => PublishError::BadRequest(format!("{}: {}", e.error, e.message)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scopecast_protocol::ServerFrame;

    #[test]
    fn unknown_reasons_fall_back_on_the_code() {
        let frame = ServerFrame::decode(r#"{"type":"error","code":"forbidden","error":"new_in_v1_9","message":"m","required_scope":"subscribe:x"}"#).unwrap();
        let ServerFrame::Error(e) = frame else {
            panic!()
        };
        assert_eq!(
            subscribe_error(&e),
            SubscribeError::Forbidden {
                required_scope: "subscribe:x".into()
            }
        );
        let frame = ServerFrame::decode(
            r#"{"type":"error","code":"unavailable","error":"disk_on_fire","message":"m"}"#,
        )
        .unwrap();
        let ServerFrame::Error(e) = frame else {
            panic!()
        };
        assert_eq!(publish_error(&e), PublishError::Unavailable("m".into()));
    }

    #[test]
    fn forbidden_names_the_required_scope() {
        let mut e = ErrorFrame::new(None, Reason::InsufficientScope, "no".into());
        e.required_scope = Some("subscribe:adt.>".into());
        assert_eq!(
            subscribe_error(&e),
            SubscribeError::Forbidden {
                required_scope: "subscribe:adt.>".into()
            }
        );
        assert_eq!(
            publish_error(&e),
            PublishError::Forbidden {
                required_scope: "subscribe:adt.>".into()
            }
        );
    }
}
