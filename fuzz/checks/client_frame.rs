//! Properties of `ClientFrame::decode`, checked on one input (any bytes; non-UTF-8 is skipped,
//! since the broker only decodes WebSocket text messages).
//!
//! Shared by `fuzz_targets/client_frame.rs` and `protocol/tests/fuzz_regressions.rs` (which
//! includes this file with `#[path]`), so the corpus is replayed on stable by the same checks.

use scopecast_protocol::{
    ClientFrame, EventId, MAX_DATA_DEPTH, Reason, ServerFrame, Timestamp, encode_event,
};

/// The decoder's size limit in these checks: the broker's default `max_frame_bytes`.
const MAX_BYTES: usize = 1 << 20;

/// Decodes `data` as a client frame and checks:
/// - a decoded frame encodes, and the encoding decodes to an equal frame that encodes to the
///   same text (the SDK's frames are what the broker reads);
/// - a decoded `publish` has `data` nested at most `MAX_DATA_DEPTH` deep, and becomes an `event` frame (as the broker writes it) that the client
///   side decodes with the same topic, id and byte-for-byte `data`;
/// - a refusal becomes an `error` frame that the client side decodes back unchanged, and
///   whose message is non-empty;
/// - the size limit is exact: one byte less than the text is `frame_too_large`.
pub(crate) fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !text.is_empty() {
        let err = ClientFrame::decode(text, text.len() - 1)
            .expect_err("a frame over the limit must be refused");
        assert_eq!(err.reason, Reason::FrameTooLarge);
    }
    match ClientFrame::decode(text, MAX_BYTES) {
        Ok(frame) => check_frame(&frame),
        Err(err) => {
            assert!(!err.message.is_empty(), "empty message for {err:?}");
            let frame = err.to_frame();
            let encoded = frame.encode();
            let back = ServerFrame::decode(&encoded)
                .unwrap_or_else(|e| panic!("error frame {encoded} does not decode: {e}"));
            assert_eq!(back, frame, "error frame {encoded} changed on the way back");
        }
    }
}

fn check_frame(frame: &ClientFrame) {
    let encoded = frame.encode();
    let again = ClientFrame::decode(&encoded, MAX_BYTES)
        .unwrap_or_else(|e| panic!("{frame:?} encodes to {encoded}, which is refused: {e}"));
    assert_eq!(&again, frame, "{encoded} decodes to another frame");
    assert_eq!(again.encode(), encoded, "encoding is not stable");
    if let ClientFrame::Publish {
        topic,
        data,
        event_id,
        ..
    } = frame
    {
        let depth = nesting(data.get());
        assert!(depth <= MAX_DATA_DEPTH, "accepted data nested {depth} deep");
        let id = event_id
            .clone()
            .unwrap_or_else(|| EventId::from_uuid([0xa5; 16]));
        let time = Timestamp::from_unix_seconds(1_790_000_000).expect("a time in range");
        let bytes = encode_event(1, topic, &id, time, data);
        let text = std::str::from_utf8(&bytes).expect("an event frame is UTF-8");
        match ServerFrame::decode(text) {
            Ok(ServerFrame::Event(event)) => {
                assert_eq!(&event.topic, topic);
                assert_eq!(event.id, id);
                assert_eq!(event.time, time);
                assert_eq!(event.data.get(), data.get(), "data is not byte for byte");
            }
            other => panic!("event frame {text} decodes to {other:?}"),
        }
    }
}

/// The deepest nesting of arrays and objects in well-formed JSON text, counted without a
/// parser: brackets inside strings do not count.
fn nesting(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0_usize, 0, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}
