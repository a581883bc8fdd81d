//! Properties of `ServerFrame::decode` (the client side of the protocol), checked on one input.
//!
//! Shared by `fuzz_targets/server_frame.rs` and `protocol/tests/fuzz_regressions.rs` (which
//! includes this file with `#[path]`).

use scopecast_protocol::ServerFrame;

/// Decodes `data` as a server frame and checks:
/// - a decoded frame encodes (events through `encode_event`, the broker's fast path), and the
///   encoding decodes to an equal frame that encodes to the same text;
/// - a refusal has a non-empty message.
pub(crate) fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ServerFrame::decode(text) {
        Ok(frame) => {
            let encoded = frame.encode();
            let again = ServerFrame::decode(&encoded).unwrap_or_else(|e| {
                panic!("{frame:?} encodes to {encoded}, which is refused: {e}")
            });
            assert_eq!(again, frame, "{encoded} decodes to another frame");
            assert_eq!(again.encode(), encoded, "encoding is not stable");
        }
        Err(err) => assert!(!err.message.is_empty(), "empty message for {err:?}"),
    }
}
