//! Server frames: [`ServerFrame`] and its parts (`welcome`, `subscribed`, `event`,
//! `published`, `error`, ...), encoded and decoded with serde.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{EventId, FrameError, RawJson, RequestId, echo, encode_event};
use crate::codes::{ErrorCode, Reason};
use crate::scope::ScopeSet;
use crate::timestamp::Timestamp;
use crate::topic::{Pattern, Topic};

/// Limits of this connection, announced in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest client frame accepted, in bytes.
    pub max_frame_bytes: u64,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: u32,
    /// Outbound queue size in bytes; past it the connection is closed with 4008.
    pub outbound_queue_bytes: u64,
    /// Publishes allowed per second for this client ID; 0 means no limit.
    pub publish_rate_per_sec: u32,
}

/// `welcome`: the connection is authenticated (also the answer to every accepted refresh).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The broker's id for this connection, for logs and support.
    pub session: String,
    /// The OAuth2 `client_id` the token was issued to.
    pub client_id: String,
    /// The token's granted scope (RFC 6749 section 3.3).
    pub scope: ScopeSet,
    /// When the token expires (RFC 3339).
    pub expires_at: Timestamp,
    /// Interval of the server's WebSocket pings, in ms.
    pub heartbeat_ms: u64,
    /// This connection's limits.
    pub limits: Limits,
    /// The identity of the broker's event log (a UUID made when the log was created): a
    /// different value on a later connection means the log was replaced, so `seq` positions
    /// from before mean nothing there. Absent from brokers that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_epoch: Option<String>,
}

/// Where a replay really starts, in `subscribed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    /// The first `seq` the replay can deliver.
    pub from_seq: u64,
    /// True when events the client asked for are gone (past retention).
    pub truncated: bool,
}

/// `subscribed`: a subscription is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The `subscribe` frame's `id`.
    pub id: RequestId,
    /// The pattern subscribed.
    pub topic: Pattern,
    /// The newest `seq` assigned when the subscription started (0 when none yet).
    pub head_seq: u64,
    /// Replay details when `since` was given, else `null`.
    pub replay: Option<Replay>,
    /// The event log's identity, as in `welcome`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_epoch: Option<String>,
}

/// `unsubscribed`: a subscription ended at the client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// The `unsubscribe` frame's `id`.
    pub id: RequestId,
}

/// `gap`: events `from_seq..=to_seq` will never reach this connection: they left the event
/// log (retention) before they could be delivered. With `id`, one subscription's (its
/// `since` asked for events older than the oldest retained one: the gap comes right after
/// `subscribed`, before the replayed events); without `id`, every subscription of the
/// connection (the broker's fan-out met a hole in the log). What follows continues after
/// `to_seq`; a client that keeps a resume position moves it to `to_seq` (PROTOCOL.md,
/// "gap").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The `subscribe` frame's `id`; absent: every subscription of the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// The first `seq` that will not come.
    pub from_seq: u64,
    /// The last `seq` that will not come.
    pub to_seq: u64,
}

/// `event`: one published event, the same bytes for every subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its place in the broker-wide sequence, from 1.
    pub seq: u64,
    /// The topic it was published to.
    pub topic: Topic,
    /// Its event id.
    pub id: EventId,
    /// When the broker accepted it (RFC 3339, UTC).
    pub time: Timestamp,
    /// The payload, exactly as published.
    pub data: RawJson,
}

impl Event {
    /// The payload parsed into `T` (for example a FHIR resource type).
    ///
    /// # Errors
    /// When the payload does not fit `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// `published`: the event is stored with this `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The `publish` frame's `id`.
    pub id: RequestId,
    /// The event's `seq`.
    pub seq: u64,
    /// The event's id (the publisher's, or the one the broker made).
    pub event_id: EventId,
    /// True when the `event_id` was already stored within the idempotency window: `seq` is the
    /// original one and nothing was stored or delivered again. Absent reads as false.
    #[serde(default)]
    pub duplicate: bool,
}

/// `token_expiring`: the token expires soon; send `auth` with a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenExpiring {
    /// Time left before the connection closes with 4002, in ms.
    pub expires_in_ms: u64,
}

/// `pong`: the answer to `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The `ping` frame's `id`.
    pub id: RequestId,
}

/// `error`: a refused request or a notice; the connection carries on unless a close follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The refused request's `id`, when it had a readable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// The class of error.
    pub code: ErrorCode,
    /// The precise reason.
    pub error: ErrorReason,
    /// A sentence for a human.
    pub message: String,
    /// With `insufficient_scope` and `scope_revoked`: the scope token that would allow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_scope: Option<String>,
    /// With `scope_revoked`: the pattern of the subscription that ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Pattern>,
    /// With `rate_limited`: how long to wait before trying again, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorFrame {
    /// An error frame with the code that goes with `reason`.
    pub fn new(id: Option<RequestId>, reason: Reason, message: String) -> Self {
        ErrorFrame {
            id,
            code: reason.code(),
            error: ErrorReason::Known(reason),
            message,
            required_scope: None,
            topic: None,
            retry_after_ms: None,
        }
    }
}

/// The `error` member of an `error` frame: a [`Reason`] this version knows, or the text of one
/// added by a later minor version (PROTOCOL.md section 10: fall back on `code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorReason {
    /// A reason this crate defines.
    Known(Reason),
    /// A reason from a newer server.
    Unknown(String),
}

impl ErrorReason {
    /// The reason, when this version knows it.
    pub fn known(&self) -> Option<Reason> {
        match self {
            ErrorReason::Known(r) => Some(*r),
            ErrorReason::Unknown(_) => None,
        }
    }

    /// The wire text.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorReason::Known(r) => r.as_str(),
            ErrorReason::Unknown(s) => s,
        }
    }
}

impl From<Reason> for ErrorReason {
    fn from(r: Reason) -> Self {
        ErrorReason::Known(r)
    }
}

impl PartialEq<Reason> for ErrorReason {
    fn eq(&self, other: &Reason) -> bool {
        self.known() == Some(*other)
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(deserializer)?;
        Ok(match s.parse::<Reason>() {
            Ok(r) => ErrorReason::Known(r),
            Err(_) => ErrorReason::Unknown(s.into_owned()),
        })
    }
}

/// A frame from the broker to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Subscribed`].
    Subscribed(Subscribed),
    /// See [`Unsubscribed`].
    Unsubscribed(Unsubscribed),
    /// See [`Event`].
    Event(Event),
    /// See [`Gap`].
    Gap(Gap),
    /// See [`Published`].
    Published(Published),
    /// See [`TokenExpiring`].
    TokenExpiring(TokenExpiring),
    /// See [`Pong`].
    Pong(Pong),
    /// See [`ErrorFrame`].
    Error(ErrorFrame),
}

impl ServerFrame {
    /// Encodes the frame as JSON text.
    pub fn encode(&self) -> String {
        match self {
            ServerFrame::Event(e) => {
                let bytes = encode_event(e.seq, &e.topic, &e.id, e.time, &e.data);
                String::from_utf8_lossy(&bytes).into_owned()
            }
            // Cannot fail: strings, integers, in-range Timestamps and raw JSON only.
            other => serde_json::to_string(other).unwrap_or_default(),
        }
    }

    /// Decodes a server frame (the client side of the protocol). Unknown fields are ignored.
    ///
    /// # Errors
    /// `malformed_json`, `missing_field` (`type`), `unknown_type`, or `invalid_field` with the
    /// parser's message.
    pub fn decode(text: &str) -> Result<Self, FrameError> {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow)]
            kind: Option<Cow<'a, str>>,
        }
        let fail = |e: serde_json::Error| {
            let reason = if !e.is_data() {
                Reason::MalformedJson
            } else if e.to_string().starts_with("missing field") {
                Reason::MissingField
            } else {
                Reason::InvalidField
            };
            FrameError::new(None, reason, e.to_string())
        };
        let kind = serde_json::from_str::<Kind<'_>>(text)
            .map_err(fail)?
            .kind
            .ok_or_else(|| {
                FrameError::new(
                    None,
                    Reason::MissingField,
                    "frame has no `type` field".to_owned(),
                )
            })?;
        Ok(match &*kind {
            "welcome" => ServerFrame::Welcome(serde_json::from_str(text).map_err(fail)?),
            "subscribed" => ServerFrame::Subscribed(serde_json::from_str(text).map_err(fail)?),
            "unsubscribed" => ServerFrame::Unsubscribed(serde_json::from_str(text).map_err(fail)?),
            "event" => ServerFrame::Event(serde_json::from_str(text).map_err(fail)?),
            "gap" => ServerFrame::Gap(serde_json::from_str(text).map_err(fail)?),
            "published" => ServerFrame::Published(serde_json::from_str(text).map_err(fail)?),
            "token_expiring" => {
                ServerFrame::TokenExpiring(serde_json::from_str(text).map_err(fail)?)
            }
            "pong" => ServerFrame::Pong(serde_json::from_str(text).map_err(fail)?),
            "error" => ServerFrame::Error(serde_json::from_str(text).map_err(fail)?),
            other => {
                return Err(FrameError::new(
                    None,
                    Reason::UnknownType,
                    format!("unknown server frame type {}", echo(other)),
                ));
            }
        })
    }
}
