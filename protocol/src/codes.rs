//! Error codes, reasons and WebSocket close codes: the closed sets a client can match on.
//!
//! Every value here has a row in `protocol/PROTOCOL.md`; a unit test keeps the two in step.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant, )* }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];

            /// The wire spelling.
            pub const fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )*
                    _ => Err(UnknownValue(s.to_owned())),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A string that names no known value of a closed set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownValue(pub String);

string_enum! {
    /// The broad class of an error: the `code` of an `error` frame and of an HTTP error body.
    ///
    /// A closed set: protocol v1 never adds one. Clients branch on it; [`Reason`] says more.
    pub enum ErrorCode {
        /// The request is malformed; sending it again will fail again.
        BadRequest = "bad_request",
        /// No valid credential: missing, malformed, expired or unverifiable token.
        Unauthorized = "unauthorized",
        /// A valid credential that does not allow this.
        Forbidden = "forbidden",
        /// The thing named does not exist.
        NotFound = "not_found",
        /// A frame or body over a size limit.
        TooLarge = "too_large",
        /// A rate or count limit was reached; retry later.
        RateLimited = "rate_limited",
        /// The request conflicts with the current state.
        Conflict = "conflict",
        /// The broker cannot do this right now (storage down, shutting down); retry later.
        Unavailable = "unavailable",
        /// A fault inside the broker; the details are in its logs, never in the frame.
        Internal = "internal",
    }
}

impl ErrorCode {
    /// The HTTP status that carries this code on the HTTP API (RFC 9110 section 15).
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Conflict => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

string_enum! {
    /// The precise reason of an error: the `error` field of an `error` frame.
    ///
    /// New reasons may appear in later minor versions (see PROTOCOL.md "Versioning"); a client
    /// that meets one it does not know falls back on the [`ErrorCode`].
    pub enum Reason {
        /// The frame is not well-formed JSON, or not a JSON object.
        MalformedJson = "malformed_json",
        /// The frame's `type` is not one this protocol version defines.
        UnknownType = "unknown_type",
        /// A required field is absent.
        MissingField = "missing_field",
        /// A field has the wrong JSON type or an out-of-range value, or appears twice.
        InvalidField = "invalid_field",
        /// A topic or pattern breaks the grammar.
        InvalidTopic = "invalid_topic",
        /// A frame or body is over its size limit.
        FrameTooLarge = "frame_too_large",
        /// A token was sent in a URL (refused: URLs end up in logs).
        TokenInUrl = "token_in_url",
        /// A plain HTTP request reached the WebSocket endpoint.
        UpgradeRequired = "upgrade_required",
        /// An HTTP request URL holds a character that must be percent-encoded (`>`, `<`, `"`,
        /// a backquote), as `curl 'http://h/v1/events?topic=adt.>'` sends it.
        InvalidUri = "invalid_uri",
        /// An HTTP body of a type the endpoint does not take (HTTP 415).
        UnsupportedMediaType = "unsupported_media_type",
        /// A frame other than `auth` arrived before the connection was authenticated.
        AuthRequired = "auth_required",
        /// The token is malformed, unsigned, badly signed, or not meant for this broker.
        InvalidToken = "invalid_token",
        /// The token's `exp` has passed.
        TokenExpired = "token_expired",
        /// The token and the application's ceiling do not allow this; `required_scope` says what would.
        InsufficientScope = "insufficient_scope",
        /// A live subscription lost its right after a refresh or an admin change.
        ScopeRevoked = "scope_revoked",
        /// The client ID is not active in this broker's environment.
        ClientInactive = "client_inactive",
        /// A refresh carried a token of another client ID.
        ClientMismatch = "client_mismatch",
        /// `unsubscribe` named a subscription this connection does not hold.
        SubscriptionNotFound = "subscription_not_found",
        /// The thing an HTTP request names (an application, a client ID, a session, a
        /// credential, a path) does not exist.
        NotFound = "not_found",
        /// An HTTP request conflicts with the current state (a name taken, an active client,
        /// a backup already running).
        Conflict = "conflict",
        /// The credential is valid but its role does not allow this (admin API, metrics).
        InsufficientRole = "insufficient_role",
        /// The connection already holds the most subscriptions allowed.
        TooManySubscriptions = "too_many_subscriptions",
        /// The client ID already holds its most connections.
        TooManyConnections = "too_many_connections",
        /// The client published faster than its allowed rate.
        PublishRateExceeded = "publish_rate_exceeded",
        /// An `event_id` was reused with a different topic or payload.
        EventIdConflict = "event_id_conflict",
        /// The event log cannot accept events right now; nothing was stored.
        LogUnavailable = "log_unavailable",
        /// The broker is shutting down.
        ShuttingDown = "shutting_down",
        /// An unexpected fault in the broker.
        InternalError = "internal_error",
        /// Not a JWS of an application record (`POST /admin/v1/records`).
        MalformedRecord = "malformed_record",
        /// A signed record's signature does not verify with the pinned key it names.
        BadSignature = "bad_signature",
        /// A signed record's `kid` is not among the catalog keys pinned here.
        UntrustedCatalog = "untrusted_catalog",
        /// This environment pins no catalog key, so it imports no record.
        NoTrustedCatalog = "no_trusted_catalog",
        /// A catalog sync could not reach the catalog, or the catalog answered with an error.
        CatalogUnreachable = "catalog_unreachable",
        /// The catalog refused this environment's sync credential (`catalog.token_file`).
        CatalogRefusedCredential = "catalog_refused_credential",
    }
}

impl Reason {
    /// The error code this reason is sent with.
    pub const fn code(self) -> ErrorCode {
        match self {
            Reason::MalformedJson
            | Reason::UnknownType
            | Reason::MissingField
            | Reason::InvalidField
            | Reason::InvalidTopic
            | Reason::TokenInUrl
            | Reason::UpgradeRequired
            | Reason::InvalidUri
            | Reason::UnsupportedMediaType
            | Reason::MalformedRecord
            | Reason::BadSignature
            | Reason::UntrustedCatalog => ErrorCode::BadRequest,
            Reason::AuthRequired | Reason::InvalidToken | Reason::TokenExpired => {
                ErrorCode::Unauthorized
            }
            Reason::InsufficientScope
            | Reason::ScopeRevoked
            | Reason::ClientInactive
            | Reason::ClientMismatch
            | Reason::InsufficientRole => ErrorCode::Forbidden,
            Reason::SubscriptionNotFound | Reason::NotFound => ErrorCode::NotFound,
            Reason::FrameTooLarge => ErrorCode::TooLarge,
            Reason::TooManySubscriptions
            | Reason::TooManyConnections
            | Reason::PublishRateExceeded => ErrorCode::RateLimited,
            Reason::EventIdConflict | Reason::Conflict | Reason::NoTrustedCatalog => {
                ErrorCode::Conflict
            }
            Reason::LogUnavailable
            | Reason::ShuttingDown
            | Reason::CatalogUnreachable
            | Reason::CatalogRefusedCredential => ErrorCode::Unavailable,
            Reason::InternalError => ErrorCode::Internal,
        }
    }
}

/// What a client should do after the server closed the connection with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reconnect with backoff and resume from the last `seq` processed.
    Reconnect,
    /// Reconnect only with a fresh access token.
    WithNewToken,
    /// Do not reconnect: the same attempt would fail the same way.
    Never,
}

/// WebSocket close codes the broker sends (RFC 6455 section 7.4; ours in 4000-4999).
///
/// The reserved codes 1005, 1006 and 1015 are never sent and have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the purpose of the connection is fulfilled.
    Normal,
    /// 1001: the broker is shutting down.
    GoingAway,
    /// 1002: a WebSocket protocol error (bad framing, RSV bits, unmasked frame).
    ProtocolError,
    /// 1003: a binary frame; `scopecast.v1` is text only.
    UnsupportedData,
    /// 1007: a text frame or close reason that is not valid UTF-8.
    InvalidPayload,
    /// 1008: a policy violation not covered by a more precise code.
    PolicyViolation,
    /// 1009: a frame or message over the size limit.
    MessageTooBig,
    /// 1011: an unexpected fault in the broker.
    InternalError,
    /// 4000: too many bad frames in a row.
    BadFrames,
    /// 4001: not authenticated: no valid token in time, or an invalid one.
    Unauthorized,
    /// 4002: the access token expired without a refresh.
    TokenExpired,
    /// 4003: the client ID is inactive here, or a refresh carried another client's token.
    Forbidden,
    /// 4008: the session's outbound queue overflowed (slow consumer).
    SlowConsumer,
    /// 4009: the peer did not answer heartbeats in time.
    HeartbeatTimeout,
    /// 4010: an operator closed this session (`scopecast sessions kill`); the client may
    /// reconnect with backoff.
    ClosedByOperator,
    /// 4029: the client ID already has the most connections allowed.
    TooManyConnections,
}

impl CloseCode {
    /// Every value, in documentation order.
    pub const ALL: &'static [CloseCode] = &[
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::PolicyViolation,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::BadFrames,
        CloseCode::Unauthorized,
        CloseCode::TokenExpired,
        CloseCode::Forbidden,
        CloseCode::SlowConsumer,
        CloseCode::HeartbeatTimeout,
        CloseCode::ClosedByOperator,
        CloseCode::TooManyConnections,
    ];

    /// The numeric code on the wire.
    pub const fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::BadFrames => 4000,
            CloseCode::Unauthorized => 4001,
            CloseCode::TokenExpired => 4002,
            CloseCode::Forbidden => 4003,
            CloseCode::SlowConsumer => 4008,
            CloseCode::HeartbeatTimeout => 4009,
            CloseCode::ClosedByOperator => 4010,
            CloseCode::TooManyConnections => 4029,
        }
    }

    /// The code for a number, if it is one of ours.
    pub fn from_u16(code: u16) -> Option<Self> {
        CloseCode::ALL.iter().copied().find(|c| c.as_u16() == code)
    }

    /// A short name, used as the close reason text (at most 123 bytes, RFC 6455 section 5.5).
    pub const fn name(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::UnsupportedData => "unsupported_data",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::PolicyViolation => "policy_violation",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::BadFrames => "bad_frames",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::Forbidden => "forbidden",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
            CloseCode::ClosedByOperator => "closed_by_operator",
            CloseCode::TooManyConnections => "too_many_connections",
        }
    }

    /// What a client should do next (PROTOCOL.md "Close codes").
    pub const fn retry(self) -> Retry {
        match self {
            CloseCode::GoingAway
            | CloseCode::InternalError
            | CloseCode::SlowConsumer
            | CloseCode::HeartbeatTimeout
            | CloseCode::ClosedByOperator
            | CloseCode::TooManyConnections => Retry::Reconnect,
            CloseCode::Unauthorized | CloseCode::TokenExpired => Retry::WithNewToken,
            CloseCode::Normal
            | CloseCode::ProtocolError
            | CloseCode::UnsupportedData
            | CloseCode::InvalidPayload
            | CloseCode::PolicyViolation
            | CloseCode::MessageTooBig
            | CloseCode::BadFrames
            | CloseCode::Forbidden => Retry::Never,
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.as_u16(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_enums_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(c.as_str().parse::<ErrorCode>().unwrap(), *c);
            assert_eq!(serde_json::to_string(c).unwrap(), format!("\"{c}\""));
        }
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>().unwrap(), *r);
        }
        assert!("nope".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn close_codes_are_unique_and_never_reserved() {
        let mut seen = std::collections::HashSet::new();
        for c in CloseCode::ALL {
            assert!(seen.insert(c.as_u16()), "{c}");
            assert!(![1005, 1006, 1015].contains(&c.as_u16()), "{c}");
            assert!(c.name().len() <= 123);
            assert_eq!(CloseCode::from_u16(c.as_u16()), Some(*c));
        }
        assert_eq!(CloseCode::from_u16(1006), None);
    }

    #[test]
    fn forbidden_and_client_bugs_are_never_retried() {
        assert_eq!(CloseCode::Forbidden.retry(), Retry::Never);
        assert_eq!(CloseCode::BadFrames.retry(), Retry::Never);
        assert_eq!(CloseCode::SlowConsumer.retry(), Retry::Reconnect);
        assert_eq!(CloseCode::TokenExpired.retry(), Retry::WithNewToken);
    }

    #[test]
    fn reasons_map_to_the_documented_codes() {
        assert_eq!(Reason::InsufficientScope.code(), ErrorCode::Forbidden);
        assert_eq!(Reason::InvalidToken.code(), ErrorCode::Unauthorized);
        assert_eq!(Reason::FrameTooLarge.code(), ErrorCode::TooLarge);
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
    }
}
