//! The `event` frame written once per event: [`encode_event_text`] copies `data` verbatim into
//! one buffer that every subscriber shares ([`encode_event`] gives it as [`Bytes`]).

use bytes::Bytes;

use super::{EventId, RawJson};
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
    data: &RawJson,
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
    data: &RawJson,
) -> Bytes {
    Bytes::from(encode_event_text(seq, topic, id, time, data))
}

/// The body of an outgoing webhook delivery (WEBHOOKS.md "Body"), written once per event:
/// `{"id":"...","seq":N,"topic":"...","time":"RFC 3339","data":<raw>}`, `data` copied
/// verbatim, byte for byte as published. These exact bytes are signed and sent.
pub fn encode_webhook_body(
    seq: u64,
    topic: &Topic,
    id: &EventId,
    time: Timestamp,
    data: &RawJson,
) -> String {
    let time = time.to_rfc3339();
    let data = data.get();
    let mut buf = String::with_capacity(
        48 + topic.as_str().len() + id.as_str().len() + time.len() + data.len(),
    );
    buf.push_str("{\"id\":");
    push_json_string(&mut buf, id.as_str());
    buf.push_str(",\"seq\":");
    buf.push_str(itoa::Buffer::new().format(seq));
    buf.push_str(",\"topic\":\"");
    buf.push_str(topic.as_str());
    buf.push_str("\",\"time\":\"");
    buf.push_str(&time);
    buf.push_str("\",\"data\":");
    buf.push_str(data);
    buf.push('}');
    buf
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_body_carries_the_data_byte_for_byte() {
        let data = RawJson::from_string("{ \"b\" : 2,\n \"a\":1.50 }".to_owned()).expect("raw");
        let body = encode_webhook_body(
            7,
            &Topic::new("fhir.encounter.started").expect("topic"),
            &EventId::new("ev-\"7\"").expect("id"),
            Timestamp::from_unix_nanos(1_764_000_000_500_000_000).expect("time"),
            &data,
        );
        assert!(
            body.ends_with(",\"data\":{ \"b\" : 2,\n \"a\":1.50 }}"),
            "{body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["id"], "ev-\"7\"");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["topic"], "fhir.encounter.started");
        assert_eq!(v["time"], "2025-11-24T16:00:00.5Z");
        assert_eq!(v["data"]["a"], 1.5);
    }
}
