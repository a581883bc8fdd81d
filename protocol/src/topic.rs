//! Topics and subscription patterns (DESIGN section 3, PROTOCOL.md "Topics and patterns").
//!
//! A [`Topic`] is concrete: 1 to 16 segments joined by `.`, each segment 1 to 64 bytes of
//! `[a-z0-9_-]`, at most 255 bytes in all. A [`Pattern`] is a topic whose segments may be `*`
//! (exactly one segment) and whose last segment may be `>` (one or more segments). Upper case is
//! refused, never folded, so that two spellings can never name one topic.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most segments in a topic or pattern.
pub const MAX_SEGMENTS: usize = 16;
/// Most bytes in one segment.
pub const MAX_SEGMENT_BYTES: usize = 64;
/// Most bytes in a whole topic or pattern, separators included.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Why a string is not a valid [`Topic`] or [`Pattern`].
///
/// Segment numbers count from 1; byte offsets count from 0 over the whole string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string is empty.
    #[error("topic is empty")]
    Empty,
    /// More than [`MAX_TOPIC_BYTES`] bytes.
    #[error("topic is {len} bytes long; the limit is {MAX_TOPIC_BYTES} bytes")]
    TooLong {
        /// Length found, in bytes.
        len: usize,
    },
    /// More than [`MAX_SEGMENTS`] segments.
    #[error("topic has {count} segments; the limit is {MAX_SEGMENTS}")]
    TooManySegments {
        /// Segments found.
        count: usize,
    },
    /// Two dots in a row, or a dot at the start or the end.
    #[error("segment {segment} is empty (no leading, trailing or doubled `.`)")]
    EmptySegment {
        /// Segment number, from 1.
        segment: usize,
    },
    /// A segment over [`MAX_SEGMENT_BYTES`] bytes.
    #[error("segment {segment} is {len} bytes long; the limit is {MAX_SEGMENT_BYTES} bytes")]
    SegmentTooLong {
        /// Segment number, from 1.
        segment: usize,
        /// Length found, in bytes.
        len: usize,
    },
    /// An upper-case ASCII letter: refused, not folded.
    #[error(
        "segment {segment} has upper-case {found:?} at byte {offset}; topics are lower case only \
         and are not folded"
    )]
    UpperCase {
        /// Segment number, from 1.
        segment: usize,
        /// Byte offset in the whole string.
        offset: usize,
        /// The character found.
        found: char,
    },
    /// A character outside `[a-z0-9_-]` (and not a whole-segment wildcard).
    #[error(
        "segment {segment} has {found:?} at byte {offset}; a segment uses only a-z, 0-9, `_` and `-`"
    )]
    InvalidCharacter {
        /// Segment number, from 1.
        segment: usize,
        /// Byte offset in the whole string.
        offset: usize,
        /// The character found.
        found: char,
    },
    /// `*` or `>` mixed with other characters in one segment, such as `a*`.
    #[error("segment {segment}: a wildcard `*` or `>` must be the whole segment")]
    PartialWildcard {
        /// Segment number, from 1.
        segment: usize,
    },
    /// `>` somewhere other than the last segment.
    #[error("segment {segment}: `>` may only be the last segment")]
    TailNotLast {
        /// Segment number, from 1.
        segment: usize,
    },
    /// A wildcard in a concrete topic (publishing needs a concrete topic).
    #[error("segment {segment}: wildcards are not allowed here; publishing needs a concrete topic")]
    WildcardInTopic {
        /// Segment number, from 1.
        segment: usize,
    },
}

/// Checks `s` against the grammar; `wildcards` allows `*` and a final `>`.
fn validate(s: &str, wildcards: bool) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: s.len() });
    }
    let bytes = s.as_bytes();
    let mut segment = 1;
    let mut start = 0;
    // One pass over the bytes; `i == len` closes the last segment.
    for i in 0..=bytes.len() {
        let at_end = i == bytes.len();
        if !at_end && bytes[i] != b'.' {
            continue;
        }
        if segment > MAX_SEGMENTS {
            let count = s.split('.').count();
            return Err(TopicError::TooManySegments { count });
        }
        let seg = &bytes[start..i];
        check_segment(s, seg, start, segment, wildcards, at_end)?;
        segment += 1;
        start = i + 1;
    }
    Ok(())
}

fn check_segment(
    whole: &str,
    seg: &[u8],
    start: usize,
    segment: usize,
    wildcards: bool,
    last: bool,
) -> Result<(), TopicError> {
    if seg.is_empty() {
        return Err(TopicError::EmptySegment { segment });
    }
    if seg.len() > MAX_SEGMENT_BYTES {
        return Err(TopicError::SegmentTooLong {
            segment,
            len: seg.len(),
        });
    }
    if seg == b"*" || seg == b">" {
        if !wildcards {
            return Err(TopicError::WildcardInTopic { segment });
        }
        if seg == b">" && !last {
            return Err(TopicError::TailNotLast { segment });
        }
        return Ok(());
    }
    for (k, &b) in seg.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => {}
            b'*' | b'>' => {
                return Err(if wildcards {
                    TopicError::PartialWildcard { segment }
                } else {
                    TopicError::WildcardInTopic { segment }
                });
            }
            _ => {
                let offset = start + k;
                let found = whole[offset..].chars().next().unwrap_or('\u{fffd}');
                return Err(if b.is_ascii_uppercase() {
                    TopicError::UpperCase {
                        segment,
                        offset,
                        found,
                    }
                } else {
                    TopicError::InvalidCharacter {
                        segment,
                        offset,
                        found,
                    }
                });
            }
        }
    }
    Ok(())
}

/// A concrete topic such as `adt.patient.admitted`: what events are published to.
///
/// Cheap to clone (a shared `Arc<str>`). Hashes and compares like its `&str`, so maps keyed by
/// `Topic` can be queried with a `&str`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Parses and validates a topic.
    ///
    /// # Errors
    /// A [`TopicError`] naming the rule that broke and where.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        validate(s, false)?;
        Ok(Self(Arc::from(s)))
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its segments, in order.
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

/// One segment of a [`Pattern`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// A literal segment that matches only itself.
    Literal(&'a str),
    /// `*`: exactly one segment, any value.
    Any,
    /// `>`: one or more segments; only ever last.
    Tail,
}

impl<'a> Segment<'a> {
    fn parse(s: &'a str) -> Self {
        match s {
            "*" => Segment::Any,
            ">" => Segment::Tail,
            _ => Segment::Literal(s),
        }
    }
}

/// A subscription pattern such as `adt.*.admitted` or `fhir.>`.
///
/// Every [`Topic`] is also a valid pattern that matches only itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    text: Arc<str>,
    /// True when some segment is `*` or `>`.
    wild: bool,
}

impl Pattern {
    /// Parses and validates a pattern.
    ///
    /// # Errors
    /// A [`TopicError`] naming the rule that broke and where.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        validate(s, true)?;
        let wild = s.split('.').any(|seg| seg == "*" || seg == ">");
        Ok(Self {
            text: Arc::from(s),
            wild,
        })
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has a `*` or `>` segment.
    pub fn is_wildcard(&self) -> bool {
        self.wild
    }

    /// The concrete topic, when the pattern has no wildcard.
    pub fn as_topic(&self) -> Option<Topic> {
        (!self.wild).then(|| Topic(self.text.clone()))
    }

    /// Its segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> + '_ {
        self.text.split('.').map(Segment::parse)
    }

    /// True when `topic` is one of the topics this pattern names.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_str(&topic.0)
    }

    /// [`Pattern::matches`] for a topic's text taken as it is (for a topic read back from a
    /// frame this broker encoded, so known valid).
    pub fn matches_str(&self, topic: &str) -> bool {
        if !self.wild {
            return *self.text == *topic;
        }
        let mut topic_segments = topic.split('.');
        for seg in self.segments() {
            match seg {
                Segment::Tail => return topic_segments.next().is_some(),
                Segment::Any => {
                    if topic_segments.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if topic_segments.next() != Some(lit) {
                        return false;
                    }
                }
            }
        }
        topic_segments.next().is_none()
    }

    /// True when every topic that `other` matches, `self` matches too (language containment).
    ///
    /// This is the rule behind scope checks (DESIGN section 3): `adt.*` does not cover `adt.>`
    /// (which also names `adt.a.b`), and `adt.patient` does not cover `adt.patientx`.
    pub fn covers<'a>(&'a self, other: &'a Pattern) -> bool {
        if !self.wild {
            // An exact pattern names one topic: only that same topic is inside it.
            return !other.wild && self.text == other.text;
        }
        let mine = segment_count(&self.text);
        let theirs = segment_count(&other.text);
        let mine_open = opens(&self.text, mine);
        let other_open = opens(&other.text, theirs);
        // A `>` that can only ever match one segment names the same topics as `*`.
        let one = |s: Segment<'a>| if s == Segment::Tail { Segment::Any } else { s };
        let mut pairs = self
            .segments()
            .zip(other.segments())
            .map(|(m, t)| (one(m), one(t)));
        if mine_open {
            // `self` names every topic of at least `mine` segments whose first `mine - 1`
            // segments it matches; `other`'s shortest topic has `theirs` segments whether or
            // not it ends in `>`.
            theirs >= mine && pairs.take(mine - 1).all(|(m, t)| segment_covers(m, t))
        } else {
            // `self` names topics of exactly `mine` segments only.
            !other_open && theirs == mine && pairs.all(|(m, t)| segment_covers(m, t))
        }
    }
}

/// True when `text` ends in a `>` that can match more than one segment: the pattern has fewer
/// than [`MAX_SEGMENTS`] segments and leaves room for at least `x.y` (3 bytes) within
/// [`MAX_TOPIC_BYTES`]. Otherwise the limits let its `>` match exactly one segment.
fn opens(text: &str, segments: usize) -> bool {
    // `>` can only be a whole, final segment, so a trailing `>` byte means a tail wildcard.
    text.ends_with('>') && segments < MAX_SEGMENTS && text.len() < MAX_TOPIC_BYTES - 1
}

fn segment_count(text: &str) -> usize {
    text.bytes().filter(|&b| b == b'.').count() + 1
}

/// Whether one non-final pattern segment covers another in the same position.
fn segment_covers(mine: Segment<'_>, theirs: Segment<'_>) -> bool {
    match (mine, theirs) {
        (Segment::Any, Segment::Literal(_) | Segment::Any) => true,
        (Segment::Literal(a), Segment::Literal(b)) => a == b,
        _ => false,
    }
}

impl From<Topic> for Pattern {
    fn from(topic: Topic) -> Self {
        Pattern {
            text: topic.0,
            wild: false,
        }
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

macro_rules! text_impls {
    ($ty:ident, $expecting:literal) => {
        impl FromStr for $ty {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::new(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.as_str())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::new(v).map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Visitor)
            }
        }
    };
}

text_impls!(Topic, "a topic string");
text_impls!(Pattern, "a topic pattern string");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn pattern(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn accepts_the_examples_from_the_design() {
        for s in [
            "fhir.encounter.started",
            "adt.patient.admitted",
            "lab.result.final",
            "a",
            "a-b_c.0",
        ] {
            assert_eq!(topic(s).as_str(), s);
            assert_eq!(pattern(s).as_str(), s);
        }
    }

    #[test]
    fn refuses_upper_case_without_folding() {
        assert_eq!(
            Topic::new("Adt.x"),
            Err(TopicError::UpperCase {
                segment: 1,
                offset: 0,
                found: 'A'
            })
        );
        assert_eq!(
            Pattern::new("adt.X"),
            Err(TopicError::UpperCase {
                segment: 2,
                offset: 4,
                found: 'X'
            })
        );
        let msg = Topic::new("Adt.x").unwrap_err().to_string();
        assert!(
            msg.contains("segment 1") && msg.contains("lower case"),
            "{msg}"
        );
    }

    #[test]
    fn refuses_empty_segments_with_their_position() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(
            Topic::new("a..b"),
            Err(TopicError::EmptySegment { segment: 2 })
        );
        assert_eq!(
            Topic::new(".a"),
            Err(TopicError::EmptySegment { segment: 1 })
        );
        assert_eq!(
            Topic::new("a."),
            Err(TopicError::EmptySegment { segment: 2 })
        );
        assert_eq!(
            Topic::new("."),
            Err(TopicError::EmptySegment { segment: 1 })
        );
        assert_eq!(
            Pattern::new("a..>"),
            Err(TopicError::EmptySegment { segment: 2 })
        );
    }

    #[test]
    fn enforces_segment_count_and_lengths() {
        let sixteen = vec!["a"; 16].join(".");
        assert!(Topic::new(&sixteen).is_ok());
        let seventeen = vec!["a"; 17].join(".");
        assert_eq!(
            Topic::new(&seventeen),
            Err(TopicError::TooManySegments { count: 17 })
        );

        let seg64 = "x".repeat(64);
        assert!(Topic::new(&seg64).is_ok());
        let seg65 = format!("a.{}", "x".repeat(65));
        assert_eq!(
            Topic::new(&seg65),
            Err(TopicError::SegmentTooLong {
                segment: 2,
                len: 65
            })
        );

        // 4 segments of 63 bytes plus 3 dots = 255 bytes: the largest topic.
        let max = vec!["y".repeat(63); 4].join(".");
        assert_eq!(max.len(), 255);
        assert!(Topic::new(&max).is_ok());
        let over = format!("{max}a");
        assert_eq!(Topic::new(&over), Err(TopicError::TooLong { len: 256 }));
        let dots = ".".repeat(65_000);
        assert_eq!(Topic::new(&dots), Err(TopicError::TooLong { len: 65_000 }));
    }

    #[test]
    fn refuses_non_ascii_look_alikes_and_control_characters() {
        // Cyrillic a, fullwidth full stop, one dot leader, zero-width space, NUL, tab, DEL.
        for (s, offset, found) in [
            ("\u{430}dt.x", 0, '\u{430}'),
            ("adt\u{ff0e}x", 3, '\u{ff0e}'),
            ("adt\u{2024}x", 3, '\u{2024}'),
            ("adt.\u{200b}x", 4, '\u{200b}'),
            ("adt\0.x", 3, '\0'),
            ("adt.\tx", 4, '\t'),
            ("adt.x\u{7f}", 5, '\u{7f}'),
            ("adt x", 3, ' '),
            ("adt/x", 3, '/'),
        ] {
            match Topic::new(s) {
                Err(TopicError::InvalidCharacter {
                    offset: o,
                    found: f,
                    ..
                }) => {
                    assert_eq!((o, f), (offset, found), "{s:?}");
                }
                other => panic!("{s:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn wildcards_only_as_whole_segments_and_never_in_topics() {
        assert_eq!(
            Pattern::new("a*"),
            Err(TopicError::PartialWildcard { segment: 1 })
        );
        assert_eq!(
            Pattern::new("a.b>"),
            Err(TopicError::PartialWildcard { segment: 2 })
        );
        assert_eq!(
            Pattern::new(">.a"),
            Err(TopicError::TailNotLast { segment: 1 })
        );
        assert_eq!(
            Pattern::new("a.>.b"),
            Err(TopicError::TailNotLast { segment: 2 })
        );
        assert_eq!(
            Topic::new("*"),
            Err(TopicError::WildcardInTopic { segment: 1 })
        );
        assert_eq!(
            Topic::new("a.>"),
            Err(TopicError::WildcardInTopic { segment: 2 })
        );
        assert_eq!(
            Topic::new("a.b*"),
            Err(TopicError::WildcardInTopic { segment: 2 })
        );
        for ok in ["*", ">", "*.*", "a.*.c", "a.>", "*.>"] {
            assert!(pattern(ok).is_wildcard(), "{ok}");
        }
        assert!(!pattern("a.b").is_wildcard());
        assert_eq!(pattern("a.b").as_topic(), Some(topic("a.b")));
        assert_eq!(pattern("a.*").as_topic(), None);
    }

    #[test]
    fn matches_by_segment() {
        let cases = [
            ("adt.*", "adt.x", true),
            ("adt.*", "adt.x.y", false),
            ("adt.*", "adt", false),
            ("adt.>", "adt.x", true),
            ("adt.>", "adt.x.y", true),
            ("adt.>", "adt", false),
            (">", "a", true),
            ("*.b.>", "a.b.c.d", true),
            ("*.b.>", "a.c.c", false),
            ("adt.patient", "adt.patientx", false),
            ("adt.patient", "adt.patient", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(pattern(p).matches(&topic(t)), want, "{p} vs {t}");
        }
    }

    #[test]
    fn covers_is_language_containment() {
        let cases = [
            ("adt.*", "adt.>", false),
            ("adt.*", "adt.a.b", false),
            ("adt.*", "adt.a", true),
            ("adt.*", "adt.*", true),
            ("adt.>", "adt.*", true),
            ("adt.>", "adt.a.b", true),
            ("adt.>", "adt.>", true),
            ("adt.>", "adt.*.>", true),
            ("adt.>", "adt", false),
            ("adt.patient", "adt.patientx", false),
            ("adt.patient", "adt.patient", true),
            ("adt.a", "adt.*", false),
            (">", "a.b.c", true),
            (">", ">", true),
            ("*", ">", false),
            ("*.>", "a.>", true),
            ("*.>", ">", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.*.c", true),
            ("a.b.c", "a.*.c", false),
        ];
        for (p, q, want) in cases {
            assert_eq!(pattern(p).covers(&pattern(q)), want, "{p} covers {q}");
        }
    }

    #[test]
    fn covers_knows_that_the_limits_shrink_a_tail_to_one_segment() {
        // At 16 segments, `>` can match only one more segment: it is a `*`.
        let fifteen = vec!["a"; 15].join(".");
        let star = pattern(&format!("{fifteen}.*"));
        let tail = pattern(&format!("{fifteen}.>"));
        assert!(star.covers(&tail) && tail.covers(&star));
        // At 254 bytes or more, `>` has no room for two segments.
        let pre = format!(
            "{}.{}.{}.{}",
            "x".repeat(63),
            "x".repeat(63),
            "x".repeat(63),
            "x".repeat(61)
        );
        let star = pattern(&format!("{pre}.*"));
        let tail = pattern(&format!("{pre}.>"));
        assert_eq!(tail.as_str().len(), 255);
        assert!(star.covers(&tail) && tail.covers(&star));
        // One byte shorter, `>` still reaches two segments (`x.y`).
        let pre = format!(
            "{}.{}.{}.{}",
            "x".repeat(63),
            "x".repeat(63),
            "x".repeat(63),
            "x".repeat(58)
        );
        let star = pattern(&format!("{pre}.*"));
        let tail = pattern(&format!("{pre}.>"));
        assert_eq!(tail.as_str().len(), 252);
        assert!(!star.covers(&tail) && tail.covers(&star));
        assert!(tail.matches(&topic(&format!("{pre}.x.y"))));
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let t: Topic = serde_json::from_str("\"adt.x\"").unwrap();
        assert_eq!(t.as_str(), "adt.x");
        let err = serde_json::from_str::<Topic>("\"Adt.x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("upper-case"), "{err}");
        assert_eq!(serde_json::to_string(&pattern("a.>")).unwrap(), "\"a.>\"");
    }

    // ---- property tests ----

    const ALPHABET: [&str; 3] = ["a", "b", "c"];

    fn arb_topic() -> impl Strategy<Value = Topic> {
        prop::collection::vec(prop::sample::select(&ALPHABET[..]), 1..6)
            .prop_map(|segs| Topic::new(&segs.join(".")).unwrap())
    }

    fn arb_pattern() -> impl Strategy<Value = Pattern> {
        (
            prop::collection::vec(prop::sample::select(&["a", "b", "c", "*"][..]), 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut segs, tail)| {
                if tail {
                    segs.push(">");
                }
                Pattern::new(&segs.join(".")).unwrap()
            })
    }

    /// A reference matcher by recursion over segments, written independently of `matches`.
    fn reference_matches(p: &[&str], t: &[&str]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(&">"), Some(_)) => true,
            (Some(&"*"), Some(_)) => reference_matches(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => reference_matches(&p[1..], &t[1..]),
            _ => false,
        }
    }

    /// Topics that exercise `q`: each `*` and `>` replaced by literal choices, and `>` by one to
    /// three segments.
    fn witnesses(q: &Pattern) -> Vec<Topic> {
        let mut out: Vec<Vec<String>> = vec![vec![]];
        for seg in q.segments() {
            let choices: Vec<Vec<String>> = match seg {
                Segment::Literal(l) => vec![vec![l.to_string()]],
                Segment::Any => ALPHABET
                    .iter()
                    .chain(&["z"])
                    .map(|s| vec![s.to_string()])
                    .collect(),
                Segment::Tail => vec![
                    vec!["z".into()],
                    vec!["a".into()],
                    vec!["a".into(), "b".into()],
                    vec!["z".into(), "z".into(), "z".into()],
                ],
            };
            out = out
                .into_iter()
                .flat_map(|prefix| {
                    choices.iter().map(move |c| {
                        let mut v = prefix.clone();
                        v.extend(c.iter().cloned());
                        v
                    })
                })
                .collect();
        }
        out.into_iter()
            .filter_map(|segs| Topic::new(&segs.join(".")).ok())
            .collect()
    }

    proptest! {
        #[test]
        fn matches_agrees_with_the_reference(p in arb_pattern(), t in arb_topic()) {
            let ps: Vec<&str> = p.as_str().split('.').collect();
            let ts: Vec<&str> = t.as_str().split('.').collect();
            prop_assert_eq!(p.matches(&t), reference_matches(&ps, &ts));
        }

        #[test]
        fn covers_implies_every_topic_of_q_matches_p(p in arb_pattern(), q in arb_pattern(), t in arb_topic()) {
            if p.covers(&q) && q.matches(&t) {
                prop_assert!(p.matches(&t), "{} covers {} but not {}", p, q, t);
            }
        }

        #[test]
        fn covers_is_exact_on_witnesses(p in arb_pattern(), q in arb_pattern()) {
            // When `p` does not cover `q`, some witness topic of `q` escapes `p`.
            let all_match = witnesses(&q).iter().all(|t| p.matches(t));
            prop_assert_eq!(p.covers(&q), all_match, "{} vs {}", p, q);
        }

        #[test]
        fn every_pattern_covers_itself(p in arb_pattern()) {
            prop_assert!(p.covers(&p));
        }

        #[test]
        fn parse_never_panics_and_valid_text_round_trips(s in "\\PC{0,40}") {
            if let Ok(p) = Pattern::new(&s) {
                prop_assert_eq!(p.as_str(), s.as_str());
            }
            let _ = Topic::new(&s);
        }
    }
}
