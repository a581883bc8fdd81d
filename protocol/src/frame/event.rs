//! The `event` frame written once per event: [`encode_event_text`] copies `data` verbatim into
//! one buffer that every subscriber shares ([`encode_event`] gives it as [`Bytes`]).

use bytes::Bytes;
use serde_json::value::RawValue;

use super::EventId;
use crate::timestamp::Timestamp;
use crate::topic::Topic;

/// Writes a whole `event` frame once, for every subscriber to share, as text (a `String`
/// becomes WebSocket text without another UTF-8 check).
///
/// Shape: `{"type":"event","seq":N,"topic":"...","id":"...","time":"RFC 3339","data":<raw>}`.
/// `data` is copied verbatim, never parsed. The result decodes with
/// [`ServerFrame::decode`](super::ServerFrame::decode) to the same [`Event`](super::Event).
pub fn encode_event_text(
    seq: u64,
    topic: &Topic,
    id: &EventId,
    time: Timestamp,
    data: &RawValue,
) -> String {
    let time = time.to_rfc3339();
    let data = data.get();
    let mut buf = String::with_capacity(
        64 + topic.as_str().len() + id.as_str().len() + time.len() + data.len(),
    );
    buf.push_str("{\"type\":\"event\",\"seq\":");
    buf.push_str(itoa::Buffer::new().format(seq));
    // Topics are `[a-z0-9_.*>-]` only: nothing to escape.
    buf.push_str(",\"topic\":\"");
    buf.push_str(topic.as_str());
    buf.push_str("\",\"id\":");
    push_json_string(&mut buf, id.as_str());
    buf.push_str(",\"time\":\"");
    buf.push_str(&time);
    buf.push_str("\",\"data\":");
    buf.push_str(data);
    buf.push('}');
    buf
}

/// [`encode_event_text`] as shared [`Bytes`].
pub fn encode_event(
    seq: u64,
    topic: &Topic,
    id: &EventId,
    time: Timestamp,
    data: &RawValue,
) -> Bytes {
    Bytes::from(encode_event_text(seq, topic, id, time, data))
}

/// Writes `s` (visible ASCII only, as event ids are) as a JSON string.
fn push_json_string(buf: &mut String, s: &str) {
    buf.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            buf.push('\\');
        }
        buf.push(c);
    }
    buf.push('"');
}
