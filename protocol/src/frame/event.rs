//! The `event` frame written once per event: [`encode_event`] copies `data` verbatim into one
//! shared buffer for every subscriber.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

use super::EventId;
use crate::timestamp::Timestamp;
use crate::topic::Topic;

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
