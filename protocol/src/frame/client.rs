//! Client frames: [`ClientFrame`] and its one-pass decoder, which turns every fault into a
//! precise [`FrameError`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::scan::Members;
use super::{ErrorFrame, EventId, RawJson, RequestId, ServerFrame, check_data};
use crate::codes::Reason;
use crate::timestamp::Timestamp;
use crate::topic::{Pattern, Topic};

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
        // One pass that checks the frame and `data` and finds the members; what it does not
        // take (an error, or a rare form such as an escaped member name) is read by serde,
        // which words the error.
        match super::scan::frame(text) {
            Some(members) => members.into_frame(true),
            None => decode_by_serde(text),
        }
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

/// [`ClientFrame::decode`]'s serde path: the frame (within the size limit) read by serde,
/// `data` checked by [`check_data`]. Also what the property test compares the one-pass
/// reader with.
pub(super) fn decode_by_serde(text: &str) -> Result<ClientFrame, FrameError> {
    let env: Envelope<'_> = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(e) => return Err(envelope_error(text, &e)),
    };
    Members::from(env).into_frame(false)
}

impl<'a> From<Envelope<'a>> for Members<'a> {
    fn from(env: Envelope<'a>) -> Self {
        Members {
            kind: env.kind.map(RawValue::get),
            id: env.id.map(RawValue::get),
            token: env.token.map(RawValue::get),
            topic: env.topic.map(RawValue::get),
            since: env.since.map(RawValue::get),
            data: env.data.map(RawValue::get),
            event_id: env.event_id.map(RawValue::get),
        }
    }
}

/// Longest client-chosen text echoed back in an error message, in bytes.
const MAX_ECHO_BYTES: usize = 64;

pub(super) fn echo(s: &str) -> String {
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
    raw: &'a str,
    name: &str,
    id: Option<&RequestId>,
) -> Result<T, FrameError> {
    serde_json::from_str(raw).map_err(|e| {
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

impl<'a> Members<'a> {
    /// The frame these members make; `data_checked` when `data` was already checked by
    /// [`check_data`]'s rules (the one-pass reader checks it as it reads).
    fn into_frame(self, data_checked: bool) -> Result<ClientFrame, FrameError> {
        // The `id` as far as it is readable, to echo in an error about `type`.
        let readable_id = self
            .id
            .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw).ok())
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
                if !data_checked {
                    check_data(data).map_err(|msg| {
                        FrameError::new(
                            Some(id.clone()),
                            Reason::InvalidField,
                            format!("`data`: {msg}"),
                        )
                    })?;
                }
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
                    data: RawJson(data.into()),
                    event_id,
                })
            }
        }
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
