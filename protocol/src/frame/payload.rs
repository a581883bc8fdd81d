//! Event payloads: [`RawJson`] keeps the exact JSON text a publisher sent, checked once
//! (nesting, lone surrogates, number range) and never turned into a tree. It is kept as a
//! plain `Box<str>`, checked when made: a `Box<RawValue>` can only be made by parsing again.

use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::MAX_DATA_DEPTH;

/// An event payload kept as the exact JSON text the publisher sent: always one well-formed
/// JSON value, without surrounding whitespace.
#[derive(Clone)]
pub struct RawJson(pub(super) Box<str>);

impl RawJson {
    /// Checks that `json` is one well-formed JSON value and keeps its text.
    ///
    /// # Errors
    /// The parser's error, with line and column.
    pub fn from_string(json: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json).map(|raw| RawJson(raw.into()))
    }

    /// Serializes `value` to compact JSON.
    ///
    /// # Errors
    /// When `value` cannot be serialized (e.g. a map with non-string keys).
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(|raw| RawJson(raw.into()))
    }

    /// Checks `text` as an event payload, by the same rules as a `publish` frame's `data`:
    /// one JSON value, not `null`, nesting at most [`MAX_DATA_DEPTH`], no lone surrogate
    /// escapes, numbers within the f64 range. Surrounding whitespace is trimmed.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn payload(text: &str) -> Result<RawJson, String> {
        // One pass checks it; what that pass does not take, serde decides and words.
        let trimmed = text.trim();
        if trimmed != "null" && super::scan::data(trimmed) {
            return Ok(RawJson(trimmed.into()));
        }
        Self::payload_by_serde(text)
    }

    /// [`RawJson::payload`] by serde alone (the one-pass check skipped).
    pub(super) fn payload_by_serde(text: &str) -> Result<RawJson, String> {
        let raw: Box<RawValue> =
            serde_json::from_str(text.trim()).map_err(|e| format!("not one JSON value: {e}"))?;
        if raw.get() == "null" {
            return Err("the payload is null".to_owned());
        }
        check_data(raw.get())?;
        Ok(RawJson(raw.into()))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// The payload as a raw value, for a serde structure that embeds it verbatim. Reads the
    /// text once more (serde_json makes a `RawValue` only by parsing): not for a path that
    /// runs once per delivered event.
    pub fn to_raw(&self) -> &RawValue {
        serde_json::from_str(&self.0).expect("a RawJson holds one well-formed JSON value")
    }

    /// Parses the payload into `T`.
    ///
    /// # Errors
    /// When the payload does not fit `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> Self {
        RawJson(raw.into())
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
        // One more read of the text (history pages, admin answers); the fan-out and webhook
        // bodies copy it without serde (`encode_event_text`, `encode_webhook_body`).
        self.to_raw().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(|raw| RawJson(raw.into()))
    }
}

/// Checks that event `data` is JSON every subscriber can read: strings free of lone surrogate
/// escapes, numbers within f64 range, nesting at most [`MAX_DATA_DEPTH`]. One pass, no tree.
pub(super) fn check_data(data: &str) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(data);
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
