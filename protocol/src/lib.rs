//! The Scopecast wire protocol, version 1 (`scopecast.v1`). No I/O, no runtime.
//!
//! Modules:
//! - `topic`: [`Topic`] and [`Pattern`], their grammar (DESIGN section 3), matching and
//!   containment ([`Pattern::matches`], [`Pattern::covers`]).
//! - `scope`: OAuth2 `scope` values ([`ScopeSet`], RFC 6749 section 3.3) and the topic rights
//!   they grant (`subscribe:<pattern>`, `publish:<pattern>`).
//! - `frame`: [`ClientFrame`] and [`ServerFrame`], their precise decoder ([`FrameError`]), and
//!   [`encode_event`], which writes an `event` frame once for every subscriber.
//! - `codes`: the closed sets a client matches on: [`ErrorCode`], [`Reason`], [`CloseCode`].
//!
//! `protocol/PROTOCOL.md` is the normative text; this crate follows it, and a test fails when
//! a code defined here is missing there.

mod codes;
mod frame;
mod scope;
mod topic;

pub use codes::{CloseCode, ErrorCode, Reason, Retry, UnknownValue};
pub use frame::{
    ClientFrame, ErrorFrame, Event, EventId, FrameError, InvalidId, Limits, MAX_DATA_DEPTH,
    MAX_EVENT_ID_BYTES, MAX_REQUEST_ID_BYTES, Pong, Published, RawJson, Replay, RequestId,
    SUBPROTOCOL, ServerFrame, Since, Subscribed, TokenExpiring, Unsubscribed, Welcome,
    encode_event,
};
pub use scope::{MissingScope, PUBLISH_PREFIX, SUBSCRIBE_PREFIX, Scope, ScopeError, ScopeSet};
pub use topic::{
    MAX_SEGMENT_BYTES, MAX_SEGMENTS, MAX_TOPIC_BYTES, Pattern, Segment, Topic, TopicError,
};

/// Re-exported so users of [`RawJson`] and [`encode_event`] need not name the same versions.
pub use bytes::Bytes;
pub use serde_json::value::RawValue;
pub use time::OffsetDateTime;

#[cfg(test)]
mod spec_tests {
    //! PROTOCOL.md and the code must agree on every closed set.
    use super::*;

    const SPEC: &str = include_str!("../PROTOCOL.md");

    #[test]
    fn every_error_code_is_in_protocol_md() {
        for code in ErrorCode::ALL {
            assert!(
                SPEC.contains(&format!("`{code}`")),
                "PROTOCOL.md lacks error code `{code}`"
            );
        }
    }

    #[test]
    fn every_reason_is_in_protocol_md_with_its_code() {
        for reason in Reason::ALL {
            let row = format!("| `{reason}` | `{}` |", reason.code());
            assert!(
                SPEC.contains(&row),
                "PROTOCOL.md lacks the reason row starting {row:?}"
            );
        }
    }

    #[test]
    fn every_close_code_is_in_protocol_md() {
        for close in CloseCode::ALL {
            let row = format!("| {} | `{}` |", close.as_u16(), close.name());
            assert!(
                SPEC.contains(&row),
                "PROTOCOL.md lacks the close-code row starting {row:?}"
            );
        }
    }

    #[test]
    fn the_subprotocol_name_is_in_protocol_md() {
        assert!(SPEC.contains(&format!("`{SUBPROTOCOL}`")));
    }
}
