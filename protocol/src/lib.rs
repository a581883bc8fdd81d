//! The Scopecast wire protocol, version 1 (`scopecast.v1`). No I/O, no runtime.
//!
//! Modules:
//! - `topic`: [`Topic`] and [`Pattern`], their grammar (DESIGN section 3), matching and
//!   containment ([`Pattern::matches`], [`Pattern::covers`]).
//! - `scope`: OAuth2 `scope` values ([`ScopeSet`], RFC 6749 section 3.3) and the rights they
//!   grant: the closed list of scope families (`subscribe:<pattern>`, `publish:<pattern>`,
//!   `webhook:manage`, SMART `system/<Type|*>.<permissions>` as [`SystemScope`]), each with its
//!   containment rule; [`ScopeSet::parse_ceiling`] refuses tokens outside them.
//! - `frame`: [`ClientFrame`] and [`ServerFrame`], their precise decoder ([`FrameError`]), and
//!   [`encode_event`], which writes an `event` frame once for every subscriber.
//! - `timestamp`: [`Timestamp`], an instant that always has an RFC 3339 form.
//! - `codes`: the closed sets a client matches on: [`ErrorCode`], [`Reason`], [`CloseCode`].
//! - [`admin`]: request and response shapes of the admin API.
//! - [`audit`]: the access audit's records (who received what, who was refused).
//! - [`fhir`]: FHIR resources as clinical events: resource type, happening, topic, time.
//!
//! `protocol/PROTOCOL.md` is the normative text; this crate follows it, and a test fails when
//! a code defined here is missing there.

pub mod admin;
pub mod audit;
mod codes;
pub mod fhir;
mod frame;
mod scope;
mod timestamp;
mod topic;

pub use codes::{CloseCode, ErrorCode, Reason, Retry, UnknownValue};
pub use frame::{
    ClientFrame, ErrorFrame, ErrorReason, Event, EventId, FrameError, Gap, InvalidId, Limits,
    MAX_DATA_DEPTH, MAX_EVENT_ID_BYTES, MAX_REQUEST_ID_BYTES, Pong, Published, RawJson, Replay,
    RequestId, SUBPROTOCOL, ServerFrame, Since, Subscribed, TokenExpiring, Unsubscribed, Welcome,
    encode_event, encode_event_text, encode_webhook_body,
};
pub use scope::{
    MissingScope, PUBLISH_PREFIX, Permissions, SCOPE_FAMILIES, SUBSCRIBE_PREFIX, SYSTEM_PREFIX,
    Scope, ScopeError, ScopeSet, SystemScope, SystemScopeError, WEBHOOK_MANAGE,
};
pub use topic::{
    MAX_SEGMENT_BYTES, MAX_SEGMENTS, MAX_TOPIC_BYTES, Pattern, Segment, Topic, TopicError,
};

/// Re-exported so users of [`RawJson`] and [`encode_event`] need not name the same versions.
pub use bytes::Bytes;
pub use serde_json::value::RawValue;
pub use time::OffsetDateTime;
pub use timestamp::{OutOfRange, Timestamp};

#[cfg(test)]
mod spec_tests {
    //! PROTOCOL.md and the code must agree on every closed set.
    use super::*;

    const SPEC: &str = include_str!("../PROTOCOL.md");

    /// The table row that starts with `start`, or a failure naming it.
    fn row(start: &str) -> &'static str {
        SPEC.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("PROTOCOL.md lacks the row starting {start:?}"))
    }

    /// The last cell of a Markdown table row.
    fn last_cell(line: &str) -> &str {
        line.trim_end()
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap_or("")
            .trim()
    }

    #[test]
    fn every_error_code_is_in_protocol_md_with_its_http_status() {
        for code in ErrorCode::ALL {
            row(&format!("| `{code}` | {} |", code.http_status()));
        }
    }

    #[test]
    fn every_reason_is_in_protocol_md_with_its_code() {
        for reason in Reason::ALL {
            row(&format!("| `{reason}` | `{}` |", reason.code()));
        }
    }

    #[test]
    fn every_close_code_is_in_protocol_md_with_its_retry_advice() {
        for close in CloseCode::ALL {
            let line = row(&format!("| {} | `{}` |", close.as_u16(), close.name()));
            let advice = last_cell(line);
            let expected = match close.retry() {
                Retry::Reconnect => "yes",
                Retry::WithNewToken => "only with a new token",
                Retry::Never => "no",
            };
            let agrees = advice == expected
                || [",", ";", ":"]
                    .iter()
                    .any(|sep| advice.starts_with(&format!("{expected}{sep}")));
            assert!(
                agrees,
                "PROTOCOL.md advises {advice:?} after {close}; the code says {expected:?}"
            );
        }
    }

    #[test]
    fn the_subprotocol_name_is_in_protocol_md() {
        assert!(SPEC.contains(&format!("`{SUBPROTOCOL}`")));
    }
}
