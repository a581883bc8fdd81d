//! The frames of `scopecast.v1` (DESIGN section 5, PROTOCOL.md "Frames").
//!
//! Every frame is one JSON object in one WebSocket text message, with a `type`. Client frames
//! are decoded by [`ClientFrame::decode`], which turns every fault into a precise
//! [`FrameError`]; server frames are encoded with [`ServerFrame::encode`], except `event`
//! frames, which [`encode_event`] writes once into shared [`Bytes`] for every subscriber.
//! Event `data` stays raw JSON ([`RawJson`]): the broker never parses it again.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::codes::{ErrorCode, Reason};
use crate::scope::ScopeSet;
use crate::timestamp::Timestamp;
use crate::topic::{Pattern, Topic};

/// The WebSocket subprotocol name (RFC 6455 section 1.9) for this version.
pub const SUBPROTOCOL: &str = "scopecast.v1";
/// Most bytes in a request `id`.
pub const MAX_REQUEST_ID_BYTES: usize = 64;
/// Most bytes in an `event_id`.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Deepest nesting of arrays and objects allowed in event `data`. Deeper payloads are refused
/// so that no subscriber's JSON parser is driven into its own recursion limit.
pub const MAX_DATA_DEPTH: usize = 64;

fn visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $max:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps an identifier.
            ///
            /// # Errors
            /// [`InvalidId`] when it is empty, too long, or has a character outside visible
            /// ASCII (0x21 to 0x7E).
            pub fn new(s: &str) -> Result<Self, InvalidId> {
                if s.is_empty() || s.len() > $max || !visible_ascii(s) {
                    return Err(InvalidId { what: $what, max: $max });
                }
                Ok(Self(Arc::from(s)))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                $name::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <Cow<'de, str>>::deserialize(deserializer)?;
                $name::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The client-chosen `id` of a request frame, echoed in its reply: 1 to 64 bytes of visible
    /// ASCII.
    RequestId,
    MAX_REQUEST_ID_BYTES,
    "id"
);

id_type!(
    /// The id of an event: the publisher's `event_id` (1 to 128 bytes of visible ASCII), or a
    /// UUID the broker makes when the publisher gave none.
    EventId,
    MAX_EVENT_ID_BYTES,
    "event_id"
);

impl EventId {
    /// The hyphenated lower-case form of a 16-byte UUID (RFC 9562), always a valid event id.
    pub fn from_uuid(bytes: [u8; 16]) -> EventId {
        let mut s = String::with_capacity(36);
        for (i, b) in bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        }
        EventId(Arc::from(s))
    }
}

/// An identifier that breaks its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{what}` must be 1 to {max} bytes of visible ASCII (0x21 to 0x7E)")]
pub struct InvalidId {
    /// The field name.
    pub what: &'static str,
    /// Its byte limit.
    pub max: usize,
}

/// An event payload kept as the exact JSON text the publisher sent.
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Checks that `json` is one well-formed JSON value and keeps its text.
    ///
    /// # Errors
    /// The parser's error, with line and column.
    pub fn from_string(json: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json).map(RawJson)
    }

    /// Serializes `value` to compact JSON.
    ///
    /// # Errors
    /// When `value` cannot be serialized (e.g. a map with non-string keys).
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(RawJson)
    }

    /// Checks `text` as an event payload, by the same rules as a `publish` frame's `data`:
    /// one JSON value, not `null`, nesting at most [`MAX_DATA_DEPTH`], no lone surrogate
    /// escapes, numbers within the f64 range. Surrounding whitespace is trimmed.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn payload(text: &str) -> Result<RawJson, String> {
        let raw: Box<RawValue> =
            serde_json::from_str(text.trim()).map_err(|e| format!("not one JSON value: {e}"))?;
        if raw.get() == "null" {
            return Err("the payload is null".to_owned());
        }
        check_data(&raw)?;
        Ok(RawJson(raw))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The payload as a raw value.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// Parses the payload into `T`.
    ///
    /// # Errors
    /// When the payload does not fit `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> Self {
        RawJson(raw)
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads can hold PHI: show the size, never the content.
        write!(f, "RawJson({} bytes)", self.get().len())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(RawJson)
    }
}

/// Where a replay starts: `{"seq": N}` (events after `seq` N) or `{"time": RFC 3339}` (events
/// published at or after that time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Since {
    /// Replay events whose `seq` is greater than this one.
    Seq(u64),
    /// Replay events published at or after this instant.
    Time(Timestamp),
}

/// A frame from a client to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticates the connection, or refreshes its token on a live connection.
    Auth {
        /// An OAuth2 access token (RFC 9068 JWT).
        token: String,
    },
    /// Subscribes to a pattern, optionally replaying history first.
    Subscribe {
        /// Echoed in the reply.
        id: RequestId,
        /// The pattern to subscribe to.
        topic: Pattern,
        /// Replay start; absent: live events only.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
    },
    /// Ends a subscription.
    Unsubscribe {
        /// Echoed in the reply.
        id: RequestId,
        /// The pattern that was subscribed, exactly as subscribed.
        topic: Pattern,
    },
    /// Publishes one event.
    Publish {
        /// Echoed in the reply.
        id: RequestId,
        /// A concrete topic.
        topic: Topic,
        /// The payload, any JSON value but `null`.
        data: RawJson,
        /// The publisher's id for the event, for idempotent retries.
        #[serde(skip_serializing_if = "Option::is_none")]
        event_id: Option<EventId>,
    },
    /// Application-level ping, for clients that cannot see WebSocket pings (browsers).
    Ping {
        /// Echoed in the `pong`.
        id: RequestId,
    },
}

impl ClientFrame {
    /// The request `id`, when the frame has one.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            ClientFrame::Auth { .. } => None,
            ClientFrame::Subscribe { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Ping { id } => Some(id),
        }
    }

    /// Encodes the frame as JSON text.
    pub fn encode(&self) -> String {
        // Cannot fail: every member is a string, an integer, a Timestamp (always in range) or
        // raw JSON, and every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes one text frame of at most `max_bytes` bytes.
    ///
    /// Members a frame type does not use are ignored, whatever their JSON type (forward
    /// compatibility). Refusals are precise: an oversize frame is `frame_too_large` (over
    /// WebSocket the broker closes with 1009 instead: PROTOCOL.md section 7); bad JSON is
    /// `malformed_json` with line and column; an unknown `type` is `unknown_type`; a missing
    /// member is `missing_field` naming it; a member of the wrong type or value, or given
    /// twice, is `invalid_field` naming it; a bad topic is `invalid_topic` saying which rule
    /// broke. The request `id` is echoed whenever it could be read.
    ///
    /// # Errors
    /// A [`FrameError`], ready to send as an `error` frame.
    pub fn decode(text: &str, max_bytes: usize) -> Result<Self, FrameError> {
        if text.len() > max_bytes {
            return Err(FrameError::new(
                None,
                Reason::FrameTooLarge,
                format!(
                    "frame is {} bytes; the limit is {max_bytes} bytes",
                    text.len()
                ),
            ));
        }
        let env: Envelope<'_> = match serde_json::from_str(text) {
            Ok(env) => env,
            Err(e) => return Err(envelope_error(text, &e)),
        };
        env.into_frame()
    }
}

/// Every member any client frame may carry, each kept as raw JSON: the frame is scanned once,
/// and only the members the frame's `type` uses are then read, each with its own error.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
}

/// Longest client-chosen text echoed back in an error message, in bytes.
const MAX_ECHO_BYTES: usize = 64;

fn echo(s: &str) -> String {
    if s.len() <= MAX_ECHO_BYTES {
        return format!("{s:?}");
    }
    let mut end = MAX_ECHO_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &s[..end])
}

fn envelope_error(text: &str, e: &serde_json::Error) -> FrameError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            // The text is well-formed JSON: either not an object, or an object with a repeated
            // member. Re-read it leniently (last member wins) to echo the `id`.
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(map)) => {
                    let id = map
                        .get("id")
                        .and_then(|v| v.as_str())
                        .and_then(|s| RequestId::new(s).ok());
                    FrameError::new(id, Reason::InvalidField, e.to_string())
                }
                Ok(other) => FrameError::new(
                    None,
                    Reason::MalformedJson,
                    format!("a frame must be one JSON object, not {}", json_kind(&other)),
                ),
                Err(_) => FrameError::new(None, Reason::InvalidField, e.to_string()),
            }
        }
        _ => FrameError::new(None, Reason::MalformedJson, format!("malformed JSON: {e}")),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads one member as `T`, naming it on failure.
fn member<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    name: &str,
    id: Option<&RequestId>,
) -> Result<T, FrameError> {
    serde_json::from_str(raw.get()).map_err(|e| {
        // Positions inside one member would mislead: name the member instead.
        let mut msg = e.to_string();
        if let Some(at) = msg.find(" at line ") {
            msg.truncate(at);
        }
        FrameError::new(
            id.cloned(),
            Reason::InvalidField,
            format!("`{name}`: {msg}"),
        )
    })
}

impl<'a> Envelope<'a> {
    fn into_frame(self) -> Result<ClientFrame, FrameError> {
        // The `id` as far as it is readable, to echo in an error about `type`.
        let readable_id = self
            .id
            .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
            .and_then(|s| RequestId::new(&s).ok());
        let Some(kind) = self.kind else {
            return Err(FrameError::new(
                readable_id,
                Reason::MissingField,
                "frame has no `type` member".to_owned(),
            ));
        };
        let kind: Cow<'a, str> = member(kind, "type", readable_id.as_ref())?;
        if kind == "auth" {
            let token = self.token.ok_or_else(|| {
                FrameError::new(
                    None,
                    Reason::MissingField,
                    "`auth` needs `token`".to_owned(),
                )
            })?;
            let token: String = member(token, "token", None)?;
            if token.is_empty() {
                return Err(FrameError::new(
                    None,
                    Reason::InvalidField,
                    "`token` is empty".to_owned(),
                ));
            }
            return Ok(ClientFrame::Auth { token });
        }
        let id = match self.id {
            None => None,
            Some(raw) => {
                let text: Cow<'a, str> = member(raw, "id", None)?;
                Some(
                    RequestId::new(&text)
                        .map_err(|e| FrameError::new(None, Reason::InvalidField, e.to_string()))?,
                )
            }
        };
        if !matches!(&*kind, "subscribe" | "unsubscribe" | "publish" | "ping") {
            return Err(FrameError::new(
                id,
                Reason::UnknownType,
                format!(
                    "unknown frame type {}; scopecast.v1 clients send auth, subscribe, \
                     unsubscribe, publish and ping",
                    echo(&kind)
                ),
            ));
        }
        let Some(id) = id else {
            return Err(FrameError::new(
                None,
                Reason::MissingField,
                format!("`{kind}` needs `id`"),
            ));
        };
        let missing = |field: &str| {
            FrameError::new(
                Some(id.clone()),
                Reason::MissingField,
                format!("`{kind}` needs `{field}`"),
            )
        };
        let bad_topic = |e: crate::topic::TopicError| {
            FrameError::new(
                Some(id.clone()),
                Reason::InvalidTopic,
                format!("invalid topic: {e}"),
            )
        };
        match &*kind {
            "ping" => Ok(ClientFrame::Ping { id }),
            "subscribe" | "unsubscribe" => {
                let topic: Cow<'a, str> = member(
                    self.topic.ok_or_else(|| missing("topic"))?,
                    "topic",
                    Some(&id),
                )?;
                let topic = Pattern::new(&topic).map_err(bad_topic)?;
                if kind == "subscribe" {
                    let since = self
                        .since
                        .map(|raw| member::<Since>(raw, "since", Some(&id)))
                        .transpose()?;
                    Ok(ClientFrame::Subscribe { id, topic, since })
                } else {
                    Ok(ClientFrame::Unsubscribe { id, topic })
                }
            }
            _ => {
                let topic: Cow<'a, str> = member(
                    self.topic.ok_or_else(|| missing("topic"))?,
                    "topic",
                    Some(&id),
                )?;
                let topic = Topic::new(&topic).map_err(bad_topic)?;
                // `null` reads as absent: a publish must carry a payload.
                let data = self.data.ok_or_else(|| missing("data"))?;
                check_data(data).map_err(|msg| {
                    FrameError::new(
                        Some(id.clone()),
                        Reason::InvalidField,
                        format!("`data`: {msg}"),
                    )
                })?;
                let event_id = match self.event_id {
                    None => None,
                    Some(raw) => {
                        let text: Cow<'a, str> = member(raw, "event_id", Some(&id))?;
                        Some(EventId::new(&text).map_err(|e| {
                            FrameError::new(Some(id.clone()), Reason::InvalidField, e.to_string())
                        })?)
                    }
                };
                Ok(ClientFrame::Publish {
                    id,
                    topic,
                    data: RawJson(data.to_owned()),
                    event_id,
                })
            }
        }
    }
}

/// Checks that event `data` is JSON every subscriber can read: strings free of lone surrogate
/// escapes, numbers within f64 range, nesting at most [`MAX_DATA_DEPTH`]. One pass, no tree.
fn check_data(data: &RawValue) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(data.get());
    DataCheck { depth: 0 }.deserialize(&mut de).map_err(|e| {
        let mut msg = e.to_string();
        if let Some(at) = msg.find(" at line ") {
            msg.truncate(at);
        }
        msg
    })
}

#[derive(Clone, Copy)]
struct DataCheck {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for DataCheck {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataCheck {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while map.next_key_seed(KeyCheck)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

impl DataCheck {
    fn nested<E: serde::de::Error>(self) -> Result<DataCheck, E> {
        if self.depth >= MAX_DATA_DEPTH {
            return Err(E::custom(format!(
                "nests deeper than {MAX_DATA_DEPTH} levels"
            )));
        }
        Ok(DataCheck {
            depth: self.depth + 1,
        })
    }
}

/// Reads an object key as a string, which makes the parser decode (and so check) its escapes.
#[derive(Clone, Copy)]
struct KeyCheck;

impl<'de> DeserializeSeed<'de> for KeyCheck {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyCheck {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

/// A client frame the broker refuses, ready to become an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct FrameError {
    /// The request `id`, when it could be read.
    pub id: Option<RequestId>,
    /// The precise reason; its [`Reason::code`] gives the class.
    pub reason: Reason,
    /// A sentence for a human: what was wrong and where.
    pub message: String,
}

impl FrameError {
    /// Builds a refusal.
    pub fn new(id: Option<RequestId>, reason: Reason, message: String) -> Self {
        FrameError {
            id,
            reason,
            message,
        }
    }

    /// The `error` frame that reports this refusal.
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Error(ErrorFrame::new(
            self.id.clone(),
            self.reason,
            self.message.clone(),
        ))
    }
}

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
}

/// `unsubscribed`: a subscription ended at the client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// The `unsubscribe` frame's `id`.
    pub id: RequestId,
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
                let bytes = encode_event(e.seq, &e.topic, &e.id, e.time, e.data.as_raw());
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

/// Writes a whole `event` frame once, for every subscriber to share.
///
/// Shape: `{"type":"event","seq":N,"topic":"...","id":"...","time":"RFC 3339","data":<raw>}`.
/// `data` is copied verbatim, never parsed. The result decodes with [`ServerFrame::decode`]
/// to the same [`Event`].
pub fn encode_event(
    seq: u64,
    topic: &Topic,
    id: &EventId,
    time: Timestamp,
    data: &RawValue,
) -> Bytes {
    let time = time.to_rfc3339();
    let data = data.get();
    let mut buf = BytesMut::with_capacity(
        64 + topic.as_str().len() + id.as_str().len() + time.len() + data.len(),
    );
    buf.put_slice(b"{\"type\":\"event\",\"seq\":");
    buf.put_slice(itoa::Buffer::new().format(seq).as_bytes());
    // Topics are `[a-z0-9_.*>-]` only: nothing to escape.
    buf.put_slice(b",\"topic\":\"");
    buf.put_slice(topic.as_str().as_bytes());
    buf.put_slice(b"\",\"id\":");
    put_json_string(&mut buf, id.as_str());
    buf.put_slice(b",\"time\":\"");
    buf.put_slice(time.as_bytes());
    buf.put_slice(b"\",\"data\":");
    buf.put_slice(data.as_bytes());
    buf.put_u8(b'}');
    buf.freeze()
}

/// Writes `s` (visible ASCII only, as event ids are) as a JSON string.
fn put_json_string(buf: &mut BytesMut, s: &str) {
    buf.put_u8(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            buf.put_u8(b'\\');
        }
        buf.put_u8(b);
    }
    buf.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    const MAX: usize = 1 << 20;

    fn decode(text: &str) -> Result<ClientFrame, FrameError> {
        ClientFrame::decode(text, MAX)
    }

    fn refusal(text: &str) -> FrameError {
        decode(text).unwrap_err()
    }

    #[test]
    fn decodes_every_client_frame() {
        assert_eq!(
            decode(r#"{"type":"auth","token":"abc"}"#).unwrap(),
            ClientFrame::Auth {
                token: "abc".into()
            }
        );
        let sub =
            decode(r#"{"type":"subscribe","id":"1","topic":"adt.>","since":{"seq":42}}"#).unwrap();
        assert_eq!(
            sub,
            ClientFrame::Subscribe {
                id: RequestId::new("1").unwrap(),
                topic: Pattern::new("adt.>").unwrap(),
                since: Some(Since::Seq(42)),
            }
        );
        let sub = decode(
            r#"{"type":"subscribe","id":"1","topic":"a","since":{"time":"2026-01-02T03:04:05Z"}}"#,
        )
        .unwrap();
        assert!(
            matches!(sub, ClientFrame::Subscribe { since: Some(Since::Time(t)), .. } if t.get() == datetime!(2026-01-02 03:04:05 UTC))
        );
        let publish = decode(
            r#"{"type":"publish","id":"p","topic":"lab.x","data":{"a":[1, 2]},"event_id":"e-1"}"#,
        )
        .unwrap();
        match publish {
            ClientFrame::Publish { data, event_id, .. } => {
                assert_eq!(data.get(), r#"{"a":[1, 2]}"#, "data is kept verbatim");
                assert_eq!(event_id.unwrap().as_str(), "e-1");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(r#"{"type":"ping","id":"x"}"#).unwrap(),
            ClientFrame::Ping { .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"unsubscribe","id":"x","topic":"a.*"}"#).unwrap(),
            ClientFrame::Unsubscribe { .. }
        ));
    }

    #[test]
    fn ignores_unknown_fields() {
        assert!(decode(r#"{"type":"ping","id":"x","future":{"deep":[1]}}"#).is_ok());
    }

    #[test]
    fn refuses_with_precise_reasons() {
        let e = refusal(r#"{"type":"launch","id":"7"}"#);
        assert_eq!(
            (e.reason, e.id.as_ref().map(RequestId::as_str)),
            (Reason::UnknownType, Some("7"))
        );
        assert!(e.message.contains("launch"));

        let e = refusal(r#"{"type":"subscribe","id":"7"}"#);
        assert_eq!(e.reason, Reason::MissingField);
        assert!(e.message.contains("`topic`"), "{}", e.message);
        assert_eq!(e.id.unwrap().as_str(), "7");

        let e = refusal(r#"{"id":"7"}"#);
        assert_eq!(e.reason, Reason::MissingField);
        assert!(e.message.contains("`type`"));

        let e = refusal(r#"{"type":"subscribe","id":"7","topic":"Adt.x"}"#);
        assert_eq!(e.reason, Reason::InvalidTopic);
        assert_eq!(e.reason.code(), ErrorCode::BadRequest);
        assert!(e.message.contains("segment 1"), "{}", e.message);

        let e = refusal(r#"{"type":"publish","id":"7","topic":"adt.*","data":1}"#);
        assert_eq!(e.reason, Reason::InvalidTopic);

        let e = refusal(r#"{"type":"publish","id":"7","topic":"adt.x","data":null}"#);
        assert_eq!(e.reason, Reason::MissingField);
        assert!(e.message.contains("`data`"));

        let e = refusal(r#"{"type":"ping","id":"7""#);
        assert_eq!(e.reason, Reason::MalformedJson);
        assert!(e.message.contains("line 1 column"), "{}", e.message);

        let e = refusal(r#"[1,2]"#);
        assert_eq!(e.reason, Reason::MalformedJson);
    }

    #[test]
    fn wrong_types_and_duplicate_keys_name_the_field() {
        let e = refusal(r#"{"type":"ping","id":5}"#);
        assert_eq!(e.reason, Reason::InvalidField);
        assert!(e.message.contains("`id`"), "{}", e.message);

        let e = refusal(r#"{"type":"ping","id":"a","id":"b"}"#);
        assert_eq!(e.reason, Reason::InvalidField);
        assert!(e.message.contains("duplicate field `id`"), "{}", e.message);

        let e =
            refusal(r#"{"type":"subscribe","id":"a","topic":"x","since":{"time":"yesterday"}}"#);
        assert_eq!(e.reason, Reason::InvalidField);
        assert!(e.message.contains("since"), "{}", e.message);

        let long = "x".repeat(65);
        let e = refusal(&format!(r#"{{"type":"ping","id":"{long}"}}"#));
        assert_eq!(e.reason, Reason::InvalidField);
        assert!(e.id.is_none());
    }

    #[test]
    fn oversize_frames_are_refused_before_parsing() {
        let e = ClientFrame::decode(r#"{"type":"ping","id":"1"}"#, 10).unwrap_err();
        assert_eq!(e.reason, Reason::FrameTooLarge);
        assert_eq!(e.reason.code(), ErrorCode::TooLarge);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let deep = format!(
            r#"{{"type":"publish","id":"1","topic":"a","data":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let e = refusal(&deep);
        assert_eq!(e.reason, Reason::InvalidField);
        assert!(e.message.contains("deeper than 64"), "{}", e.message);
        // Deep nesting in an unknown field is skipped in linear time, never recursed into.
        assert!(
            decode(&format!(
                r#"{{"type":"ping","id":"1","x":{}1{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            ))
            .is_ok()
        );
        // A deep `since` is refused by the parser's own recursion limit, naming the member.
        let e = refusal(&format!(
            r#"{{"type":"subscribe","id":"1","topic":"a","since":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        ));
        assert!(
            matches!(e.reason, Reason::MalformedJson | Reason::InvalidField),
            "{e:?}"
        );
        // Brackets inside strings do not count.
        let ok = format!(
            r#"{{"type":"publish","id":"1","topic":"a","data":"{}\\"}}"#,
            "[".repeat(100)
        );
        assert!(decode(&ok).is_ok(), "{ok}");
        let at_limit = format!(
            r#"{{"type":"publish","id":"1","topic":"a","data":{}{}}}"#,
            "[".repeat(64),
            "]".repeat(64)
        );
        assert!(decode(&at_limit).is_ok());
    }

    #[test]
    fn event_frames_are_encoded_once_and_decode_back() {
        let topic = Topic::new("fhir.encounter.started").unwrap();
        let id = EventId::new("ev-\"1\"").unwrap();
        let time = Timestamp::new(datetime!(2026-11-29 10:00:00.123 UTC)).unwrap();
        let data = RawValue::from_string(r#"{"resourceType":"Encounter"}"#.into()).unwrap();
        let bytes = encode_event(7, &topic, &id, time, &data);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with(r#"{"type":"event","seq":7,"topic":"fhir.encounter.started""#),
            "{text}"
        );
        match ServerFrame::decode(text).unwrap() {
            ServerFrame::Event(e) => {
                assert_eq!((e.seq, e.topic, e.id, e.time), (7, topic, id, time));
                assert_eq!(e.data.get(), data.get());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_frames_carry_the_required_scope() {
        let mut frame = ErrorFrame::new(
            RequestId::new("s1").ok(),
            Reason::InsufficientScope,
            "client x may not subscribe to adt.>".into(),
        );
        frame.required_scope = Some("subscribe:adt.>".into());
        let text = ServerFrame::Error(frame).encode();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "forbidden");
        assert_eq!(v["error"], "insufficient_scope");
        assert_eq!(v["id"], "s1");
        assert_eq!(v["required_scope"], "subscribe:adt.>");
    }

    #[test]
    fn http_payloads_follow_the_publish_rules() {
        assert_eq!(
            RawJson::payload(" {\"a\":1} \n").unwrap().get(),
            "{\"a\":1}"
        );
        assert!(RawJson::payload("null").is_err());
        assert!(RawJson::payload("{").is_err());
        assert!(RawJson::payload("1 2").is_err());
        assert!(RawJson::payload("\"\\ud800\"").is_err());
        assert!(RawJson::payload(&format!("{}{}", "[".repeat(65), "]".repeat(65))).is_err());
    }

    #[test]
    fn uuid_event_ids_are_hyphenated_lower_hex() {
        let id = EventId::from_uuid([0xab; 16]);
        assert_eq!(id.as_str(), "abababab-abab-abab-abab-abababababab");
        assert_eq!(EventId::new(id.as_str()).unwrap(), id);
    }

    #[test]
    fn raw_json_debug_never_shows_the_payload() {
        let raw = RawJson::from_string(r#"{"name":"Jane"}"#.into()).unwrap();
        assert!(!format!("{raw:?}").contains("Jane"));
    }

    #[test]
    fn members_a_frame_does_not_use_are_ignored_whatever_their_type() {
        assert!(
            decode(r#"{"type":"ping","id":"1","topic":5,"token":7,"event_id":[],"since":5}"#)
                .is_ok()
        );
        assert!(decode(r#"{"type":"auth","token":"t","id":5}"#).is_ok());
        assert!(
            decode(r#"{"type":"unsubscribe","id":"1","topic":"a","since":"x","data":null}"#)
                .is_ok()
        );
    }

    #[test]
    fn type_errors_echo_the_id_and_name_the_member() {
        for (frame, member) in [
            (r#"{"type":"subscribe","id":"s1","topic":5}"#, "`topic`"),
            (
                r#"{"type":"subscribe","id":"s1","topic":"a","since":{"time":"yesterday"}}"#,
                "`since`",
            ),
            (
                r#"{"type":"subscribe","id":"s1","topic":"a","since":{"seq":-1}}"#,
                "`since`",
            ),
            (
                r#"{"type":"subscribe","id":"s1","topic":"a","since":5}"#,
                "`since`",
            ),
            (
                r#"{"type":"subscribe","id":"s1","topic":"a","since":{}}"#,
                "`since`",
            ),
            (
                r#"{"type":"publish","id":"s1","topic":"a","data":1,"event_id":5}"#,
                "`event_id`",
            ),
        ] {
            let e = refusal(frame);
            assert_eq!(e.reason, Reason::InvalidField, "{frame}: {e:?}");
            assert_eq!(e.id.as_ref().map(RequestId::as_str), Some("s1"), "{frame}");
            assert!(e.message.contains(member), "{frame}: {}", e.message);
        }
        let e = refusal(r#"{"type":"subscribe","id":"s1","topic":"a","topic":"b"}"#);
        assert_eq!(e.reason, Reason::InvalidField);
        assert_eq!(e.id.unwrap().as_str(), "s1");
        assert!(
            e.message.contains("duplicate field `topic`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn non_objects_and_empty_frames_are_malformed_with_a_reason() {
        for (text, hint) in [
            ("", "line 1 column 0"),
            ("  ", "line 1 column 2"),
            ("42", "a number"),
            ("[1]", "an array"),
            ("\u{feff}{}", "line 1 column 1"),
        ] {
            let e = refusal(text);
            assert_eq!(e.reason, Reason::MalformedJson, "{text:?}");
            assert!(e.message.contains(hint), "{text:?}: {}", e.message);
        }
    }

    #[test]
    fn data_every_subscriber_can_parse() {
        for bad in [r#""\ud800""#, r#"{"\udc00":1}"#, "1e999", "[-1e400]"] {
            let frame = format!(r#"{{"type":"publish","id":"p","topic":"a","data":{bad}}}"#);
            let e = refusal(&frame);
            assert_eq!(e.reason, Reason::InvalidField, "{bad}: {e:?}");
            assert!(e.message.starts_with("`data`"), "{}", e.message);
        }
        let ok =
            r#"{"type":"publish","id":"p","topic":"a","data":{"s":"\ud83d\ude00","n":1.5e300}}"#;
        assert!(decode(ok).is_ok());
    }

    #[test]
    fn empty_tokens_are_invalid_and_long_types_are_not_echoed_in_full() {
        let e = refusal(r#"{"type":"auth","token":""}"#);
        assert_eq!(e.reason, Reason::InvalidField);
        let long = "x".repeat(100_000);
        let e = refusal(&format!(r#"{{"type":"{long}","id":"1"}}"#));
        assert_eq!(e.reason, Reason::UnknownType);
        assert!(e.message.len() < 300, "{}", e.message.len());
    }

    #[test]
    fn server_frame_decode_names_missing_members_and_keeps_unknown_reasons() {
        let e = ServerFrame::decode(r#"{"type":"pong"}"#).unwrap_err();
        assert_eq!(e.reason, Reason::MissingField, "{}", e.message);
        let frame = ServerFrame::decode(
            r#"{"type":"error","id":"x","code":"forbidden","error":"brand_new_reason","message":"m"}"#,
        )
        .unwrap();
        match frame {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, ErrorCode::Forbidden);
                assert_eq!(e.error, ErrorReason::Unknown("brand_new_reason".into()));
                assert_eq!(e.error.known(), None);
                assert_eq!(e.id.unwrap().as_str(), "x");
            }
            other => panic!("{other:?}"),
        }
    }

    // ---- property tests: every frame round-trips ----

    fn arb_id() -> impl Strategy<Value = RequestId> {
        "[!-~]{1,64}".prop_map(|s| RequestId::new(&s).unwrap())
    }

    fn arb_event_id() -> impl Strategy<Value = EventId> {
        "[!-~]{1,128}".prop_map(|s| EventId::new(&s).unwrap())
    }

    fn arb_topic() -> impl Strategy<Value = Topic> {
        "[a-z0-9_-]{1,8}(\\.[a-z0-9_-]{1,8}){0,4}".prop_map(|s| Topic::new(&s).unwrap())
    }

    fn arb_pattern() -> impl Strategy<Value = Pattern> {
        "([a-z0-9_-]{1,8}|\\*)(\\.([a-z0-9_-]{1,8}|\\*)){0,3}(\\.>)?"
            .prop_map(|s| Pattern::new(&s).unwrap())
    }

    fn arb_time() -> impl Strategy<Value = Timestamp> {
        (0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| {
            Timestamp::new(
                time::OffsetDateTime::from_unix_timestamp(s).unwrap()
                    + time::Duration::nanoseconds(n.into()),
            )
            .unwrap()
        })
    }

    fn arb_data() -> impl Strategy<Value = RawJson> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{1,5}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        value.prop_map(|v| RawJson::from_value(&v).unwrap())
    }

    fn arb_scope() -> impl Strategy<Value = ScopeSet> {
        prop::collection::vec(arb_pattern(), 0..3)
            .prop_map(|ps| ps.into_iter().map(crate::scope::Scope::Subscribe).collect())
    }

    fn arb_client_frame() -> impl Strategy<Value = ClientFrame> {
        let since = prop_oneof![
            any::<u64>().prop_map(Since::Seq),
            arb_time().prop_map(Since::Time),
        ];
        prop_oneof![
            "[!-~]{1,200}".prop_map(|token| ClientFrame::Auth { token }),
            (arb_id(), arb_pattern(), prop::option::of(since))
                .prop_map(|(id, topic, since)| ClientFrame::Subscribe { id, topic, since }),
            (arb_id(), arb_pattern())
                .prop_map(|(id, topic)| ClientFrame::Unsubscribe { id, topic }),
            (
                arb_id(),
                arb_topic(),
                arb_data(),
                prop::option::of(arb_event_id())
            )
                .prop_map(|(id, topic, data, event_id)| ClientFrame::Publish {
                    id,
                    topic,
                    data,
                    event_id
                }),
            arb_id().prop_map(|id| ClientFrame::Ping { id }),
        ]
    }

    fn arb_server_frame() -> impl Strategy<Value = ServerFrame> {
        let reason = prop::sample::select(Reason::ALL);
        prop_oneof![
            (
                arb_id(),
                "[a-z0-9-]{1,36}",
                arb_scope(),
                arb_time(),
                any::<u64>(),
                any::<u32>()
            )
                .prop_map(|(session, client_id, scope, expires_at, n, m)| {
                    ServerFrame::Welcome(Welcome {
                        session: session.to_string(),
                        client_id,
                        scope,
                        expires_at,
                        heartbeat_ms: n,
                        limits: Limits {
                            max_frame_bytes: n,
                            max_subscriptions: m,
                            outbound_queue_bytes: n / 2,
                            publish_rate_per_sec: m / 2,
                        },
                    })
                }),
            (
                arb_id(),
                arb_pattern(),
                any::<u64>(),
                prop::option::of((any::<u64>(), any::<bool>()))
            )
                .prop_map(|(id, topic, head_seq, replay)| ServerFrame::Subscribed(
                    Subscribed {
                        id,
                        topic,
                        head_seq,
                        replay: replay.map(|(from_seq, truncated)| Replay {
                            from_seq,
                            truncated
                        }),
                    }
                )),
            arb_id().prop_map(|id| ServerFrame::Unsubscribed(Unsubscribed { id })),
            (
                any::<u64>(),
                arb_topic(),
                arb_event_id(),
                arb_time(),
                arb_data()
            )
                .prop_map(|(seq, topic, id, time, data)| ServerFrame::Event(Event {
                    seq,
                    topic,
                    id,
                    time,
                    data
                })),
            (arb_id(), any::<u64>(), arb_event_id(), any::<bool>()).prop_map(
                |(id, seq, event_id, duplicate)| {
                    ServerFrame::Published(Published {
                        id,
                        seq,
                        event_id,
                        duplicate,
                    })
                }
            ),
            any::<u64>().prop_map(|expires_in_ms| ServerFrame::TokenExpiring(TokenExpiring {
                expires_in_ms
            })),
            arb_id().prop_map(|id| ServerFrame::Pong(Pong { id })),
            (
                prop::option::of(arb_id()),
                reason,
                "\\PC{0,40}",
                prop::option::of(arb_pattern()),
                prop::option::of(any::<u64>())
            )
                .prop_map(|(id, reason, message, topic, retry)| {
                    let mut e = ErrorFrame::new(id, reason, message);
                    e.required_scope = topic.as_ref().map(|t| format!("subscribe:{t}"));
                    e.topic = topic;
                    e.retry_after_ms = retry;
                    ServerFrame::Error(e)
                }),
        ]
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(frame in arb_client_frame()) {
            let text = frame.encode();
            prop_assert_eq!(ClientFrame::decode(&text, MAX).unwrap(), frame);
        }

        #[test]
        fn server_frames_round_trip(frame in arb_server_frame()) {
            let text = frame.encode();
            prop_assert_eq!(ServerFrame::decode(&text).unwrap(), frame);
        }

        #[test]
        fn decode_never_panics(text in "\\PC{0,200}") {
            let _ = ClientFrame::decode(&text, MAX);
            let _ = ServerFrame::decode(&text);
        }
    }
}
