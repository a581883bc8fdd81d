//! [`Timestamp`]: an instant that always has an RFC 3339 form, so that encoding a frame can
//! never fail.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// An instant in UTC between years 1 and 9999, written as RFC 3339 with `Z` and 0 to 9
/// fractional digits, trailing zeros dropped (`2026-11-29T10:00:00.123456789Z`,
/// `2026-11-29T10:00:00.5Z`, `2026-11-29T10:00:00Z`).
///
/// Parsing accepts any RFC 3339 offset and converts to UTC; instants outside the range are
/// refused, so [`fmt::Display`] and serialization never fail.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(OffsetDateTime);

/// An instant with no RFC 3339 form in UTC (before year 1 or after 9999).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time is outside years 1 to 9999 in UTC")]
pub struct OutOfRange;

impl Timestamp {
    /// Now.
    pub fn now() -> Timestamp {
        Timestamp(OffsetDateTime::now_utc())
    }

    /// Converts to UTC and checks the range.
    ///
    /// # Errors
    /// [`OutOfRange`] outside years 1 to 9999 in UTC.
    pub fn new(t: OffsetDateTime) -> Result<Timestamp, OutOfRange> {
        let utc = t.checked_to_offset(UtcOffset::UTC).ok_or(OutOfRange)?;
        if (1..=9999).contains(&utc.year()) {
            Ok(Timestamp(utc))
        } else {
            Err(OutOfRange)
        }
    }

    /// From Unix seconds (JWT NumericDate, RFC 7519 section 2).
    ///
    /// # Errors
    /// [`OutOfRange`] outside years 1 to 9999.
    pub fn from_unix_seconds(s: i64) -> Result<Timestamp, OutOfRange> {
        OffsetDateTime::from_unix_timestamp(s)
            .map_err(|_| OutOfRange)
            .and_then(Timestamp::new)
    }

    /// From Unix milliseconds.
    ///
    /// # Errors
    /// [`OutOfRange`] outside years 1 to 9999.
    pub fn from_unix_ms(ms: i64) -> Result<Timestamp, OutOfRange> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .map_err(|_| OutOfRange)
            .and_then(Timestamp::new)
    }

    /// From Unix nanoseconds.
    ///
    /// # Errors
    /// [`OutOfRange`] outside years 1 to 9999.
    pub fn from_unix_nanos(ns: i128) -> Result<Timestamp, OutOfRange> {
        OffsetDateTime::from_unix_timestamp_nanos(ns)
            .map_err(|_| OutOfRange)
            .and_then(Timestamp::new)
    }

    /// Unix nanoseconds.
    pub fn unix_nanos(self) -> i128 {
        self.0.unix_timestamp_nanos()
    }

    /// Parses RFC 3339.
    ///
    /// # Errors
    /// A sentence saying why.
    pub fn parse(s: &str) -> Result<Timestamp, String> {
        let t =
            OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("not an RFC 3339 time: {e}"))?;
        Timestamp::new(t).map_err(|e| e.to_string())
    }

    /// The instant.
    pub fn get(self) -> OffsetDateTime {
        self.0
    }

    /// Unix seconds.
    pub fn unix_seconds(self) -> i64 {
        self.0.unix_timestamp()
    }

    /// Unix milliseconds.
    pub fn unix_ms(self) -> i64 {
        (self.0.unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// The RFC 3339 text.
    pub fn to_rfc3339(self) -> String {
        // In range by construction: formatting cannot fail.
        self.0.format(&Rfc3339).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn writes_z_and_up_to_nine_fractional_digits_without_trailing_zeros() {
        let at = |ns: i128| {
            Timestamp::from_unix_nanos(1_795_946_400_000_000_000 + ns)
                .unwrap()
                .to_string()
        };
        assert_eq!(at(0), "2026-11-29T10:00:00Z");
        assert_eq!(at(500_000_000), "2026-11-29T10:00:00.5Z");
        assert_eq!(at(123_000_000), "2026-11-29T10:00:00.123Z");
        assert_eq!(at(123_456_780), "2026-11-29T10:00:00.12345678Z");
        assert_eq!(at(123_456_789), "2026-11-29T10:00:00.123456789Z");
    }

    #[test]
    fn parses_any_offset_into_utc() {
        let t = Timestamp::parse("2026-01-02T04:04:05+01:00").unwrap();
        assert_eq!(t.get(), datetime!(2026-01-02 03:04:05 UTC));
        assert_eq!(t.to_string(), "2026-01-02T03:04:05Z");
    }

    #[test]
    fn refuses_instants_without_an_rfc3339_form() {
        assert!(Timestamp::new(datetime!(-0001-01-01 0:00 UTC)).is_err());
        assert!(Timestamp::parse("9999-12-31T23:59:59-01:00").is_err());
        assert!(Timestamp::from_unix_seconds(i64::MAX).is_err());
        assert!(Timestamp::from_unix_seconds(253_402_300_799).is_ok());
        assert!(Timestamp::parse("yesterday").is_err());
    }
}
