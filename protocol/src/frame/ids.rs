//! Identifiers and their limits: the subprotocol name, request ids ([`RequestId`]) and
//! event ids ([`EventId`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The WebSocket subprotocol name (RFC 6455 section 1.9) for this version.
pub const SUBPROTOCOL: &str = "scopecast.v1";
/// Most bytes in a request `id`.
pub const MAX_REQUEST_ID_BYTES: usize = 64;
/// Most bytes in an `event_id`.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Deepest nesting of arrays and objects allowed in event `data`. Deeper payloads are refused
/// so that no subscriber's JSON parser is driven into its own recursion limit.
pub const MAX_DATA_DEPTH: usize = 64;

pub(super) fn visible_ascii(s: &str) -> bool {
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
