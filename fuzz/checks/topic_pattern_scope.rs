//! Properties of `Topic`, `Pattern` and `ScopeSet`, checked on one input.
//!
//! The input is read twice:
//! - **as text**: the whole input, if UTF-8, is parsed as a topic, a pattern and a scope set;
//! - **as structure**: split on `|` into patterns `A`, `B`, a topic `T` and a pattern `C`, each
//!   written in a small alphabet so that interesting cases are common. The bytes `a b c * > .`
//!   stand for themselves, `X` for a 16-byte segment part `xxxxxxxxxxxxxxxx` (to reach the
//!   64-byte segment and 255-byte topic limits), and any other byte for one of `a b c * > .`.
//!   So `a.>|a.*|a.b|a.b` is a readable seed.
//!
//! Structured inputs are decoded by hand rather than with the `arbitrary` crate, so that
//! `protocol/tests/fuzz_regressions.rs` can include this file with `#[path]` and replay the
//! corpus on stable with no extra dependency.

use std::collections::HashSet;

use scopecast_protocol::{Pattern, Scope, ScopeSet, Segment, SystemScope, Topic, TopicError};

/// Checks every property below on `data`.
pub(crate) fn check(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_text(text);
    }
    check_structured(data);
}

/// Parsing arbitrary text: topics round-trip, every topic is an exact pattern, a pattern covers
/// itself, a scope set prints as text that parses back to the same set, and the ceiling parser
/// accepts exactly the values whose every token is of a known family.
fn check_text(s: &str) {
    let topic = Topic::new(s);
    let pattern = Pattern::new(s);
    assert_eq!(s.parse::<Topic>(), topic);
    assert_eq!(s.parse::<Pattern>(), pattern);
    match &topic {
        Ok(t) => {
            assert_eq!(t.as_str(), s);
            assert_eq!(t.to_string(), s);
            assert!(t.segments().count() <= scopecast_protocol::MAX_SEGMENTS);
            assert!(s.len() <= scopecast_protocol::MAX_TOPIC_BYTES);
            let json = serde_json::to_string(t).expect("a topic serializes");
            assert_eq!(
                &serde_json::from_str::<Topic>(&json).expect("and reads back"),
                t
            );
            let p = pattern.as_ref().expect("every topic is a pattern");
            assert!(!p.is_wildcard(), "{s:?}");
            assert_eq!(p.as_topic().as_ref(), Some(t));
            assert_eq!(&Pattern::from(t.clone()), p);
            assert!(p.matches(t), "{s:?} does not match itself");
        }
        Err(e) => check_error(e),
    }
    match &pattern {
        Ok(p) => {
            assert_eq!(p.as_str(), s);
            assert!(p.covers(p), "{s:?} does not cover itself");
            let json = serde_json::to_string(p).expect("a pattern serializes");
            assert_eq!(
                &serde_json::from_str::<Pattern>(&json).expect("and reads back"),
                p
            );
            if p.is_wildcard() {
                assert!(
                    matches!(topic, Err(TopicError::WildcardInTopic { .. })),
                    "{s:?}: {topic:?}"
                );
            } else {
                assert!(topic.is_ok(), "{s:?} is an exact pattern but not a topic");
            }
        }
        Err(e) => {
            check_error(e);
            assert!(topic.is_err(), "{s:?} is a topic but not a pattern");
        }
    }
    check_scope_text(s);
}

fn check_error(e: &TopicError) {
    assert!(!e.to_string().is_empty());
    let segment = match e {
        TopicError::Empty | TopicError::TooLong { .. } | TopicError::TooManySegments { .. } => 1,
        TopicError::EmptySegment { segment }
        | TopicError::SegmentTooLong { segment, .. }
        | TopicError::UpperCase { segment, .. }
        | TopicError::InvalidCharacter { segment, .. }
        | TopicError::PartialWildcard { segment }
        | TopicError::TailNotLast { segment }
        | TopicError::WildcardInTopic { segment } => *segment,
    };
    assert!(
        (1..=scopecast_protocol::MAX_SEGMENTS).contains(&segment),
        "{e:?}: segments count from 1"
    );
}

fn check_scope_text(s: &str) {
    let Ok(set) = ScopeSet::parse(s) else {
        return;
    };
    let printed = set.to_string();
    let again = ScopeSet::parse(&printed)
        .unwrap_or_else(|e| panic!("{s:?} prints as {printed:?}, which is refused: {e}"));
    assert_eq!(again, set, "{s:?} prints as {printed:?}, another set");
    assert_eq!(again.to_string(), printed);
    let tokens: Vec<&str> = if s.is_empty() {
        vec![]
    } else {
        s.split(' ').collect()
    };
    if tokens.iter().collect::<HashSet<_>>().len() == tokens.len() {
        assert_eq!(
            printed, s,
            "a set without duplicates prints as it was written"
        );
    }
    assert_eq!(
        set.first_uncovered(&set),
        None,
        "{s:?} does not cover itself"
    );
    for scope in set.iter() {
        match scope {
            Scope::Subscribe(p) => assert!(set.check_subscribe(p).is_ok(), "{s:?}: {p}"),
            Scope::Publish(p) => {
                if let Some(t) = p.as_topic() {
                    assert!(set.check_publish(&t).is_ok(), "{s:?}: {t}");
                }
            }
            Scope::System(sys) => {
                assert!(sys.covers(sys), "{s:?}: {sys}");
                assert_eq!(
                    SystemScope::parse(&sys.to_string()).as_ref(),
                    Ok(sys),
                    "{s:?}"
                );
            }
            Scope::WebhookManage | Scope::Other(_) => assert!(set.covers(scope), "{s:?}"),
        }
    }
    check_ceiling_text(s, &set);
}

/// The ceiling parser is the token parser with every token outside the families refused: what
/// it accepts, the token parser reads the same, with no foreign token.
fn check_ceiling_text(s: &str, lenient: &ScopeSet) {
    match ScopeSet::parse_ceiling(s) {
        Ok(strict) => {
            assert_eq!(&strict, lenient, "{s:?}");
            assert!(
                strict.iter().all(|t| !matches!(t, Scope::Other(_))),
                "{s:?}: a ceiling with a foreign token"
            );
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(
                lenient.iter().any(|t| matches!(t, Scope::Other(_))),
                "{s:?} is refused as a ceiling ({e}) but holds no foreign token"
            );
        }
    }
}

/// Expands one part of a structured input into text (see the module documentation).
fn expand(part: &[u8]) -> String {
    const SYMBOLS: &[u8; 6] = b"abc*>.";
    let mut out = String::new();
    for &b in part {
        match b {
            b'a' | b'b' | b'c' | b'*' | b'>' | b'.' => out.push(char::from(b)),
            b'X' => out.push_str("xxxxxxxxxxxxxxxx"),
            _ => out.push(char::from(SYMBOLS[usize::from(b) % SYMBOLS.len()])),
        }
    }
    out
}

/// Matching and containment on structured inputs:
/// - `matches` agrees with an independent recursive matcher;
/// - for a topic `T`, `A.covers(T as a pattern)` is exactly `A.matches(T)`;
/// - soundness: if `A` covers `B` and `B` matches `T`, then `A` matches `T`;
/// - exactness: `A` covers `B` exactly when `A` matches `B`'s witness topics (each wildcard
///   replaced by a fresh literal `z`, a final `>` also by `z.z` when the limits leave room);
/// - transitivity over `A`, `B`, `C`; mutual cover means equal languages;
/// - `subscribe:A publish:A` allows subscribing to `B` and publishing to `T` exactly as
///   `covers` and `matches` say, and a refusal names `subscribe:B`.
///
/// Each property is checked for `(A, B)` and for `(B, A)`.
fn check_structured(data: &[u8]) {
    let mut parts = data.split(|&b| b == b'|').map(expand);
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return;
    };
    let topic = parts.next().and_then(|t| Topic::new(&t).ok());
    let c = parts.next().and_then(|c| Pattern::new(&c).ok());
    let (Ok(a), Ok(b)) = (Pattern::new(&a), Pattern::new(&b)) else {
        return;
    };
    // Both ways round: a boundary case is often found as `A = x.*, B = x.>` or the reverse.
    check_pair(&a, &b, topic.as_ref(), c.as_ref());
    check_pair(&b, &a, topic.as_ref(), c.as_ref());
}

/// The properties above for one ordered pair.
fn check_pair(a: &Pattern, b: &Pattern, topic: Option<&Topic>, c: Option<&Pattern>) {
    assert!(a.covers(a) && b.covers(b));
    let a_covers_b = a.covers(b);
    let escapes: Vec<Topic> = witnesses(b).into_iter().filter(|w| !a.matches(w)).collect();
    assert_eq!(
        a_covers_b,
        escapes.is_empty(),
        "{a} covers {b} is {a_covers_b}, but the topics of {b} that {a} misses are {escapes:?}"
    );
    if let Some(c) = c
        && a_covers_b
        && b.covers(c)
    {
        assert!(
            a.covers(c),
            "{a} covers {b} covers {c}, but not {a} covers {c}"
        );
    }

    let scopes = ScopeSet::parse(&format!("subscribe:{a} publish:{a}"))
        .unwrap_or_else(|e| panic!("scopes of {a} are refused: {e}"));
    assert_eq!(scopes.allows_subscribe(b), a_covers_b);
    assert_eq!(
        Scope::Subscribe(a.clone()).covers(&Scope::Subscribe(b.clone())),
        a_covers_b
    );
    if let Err(missing) = scopes.check_subscribe(b) {
        assert_eq!(missing.to_string(), format!("subscribe:{b}"));
    }

    let Some(t) = topic else {
        return;
    };
    for p in [a, b] {
        let reference = reference_matches(
            &p.as_str().split('.').collect::<Vec<_>>(),
            &t.as_str().split('.').collect::<Vec<_>>(),
        );
        assert_eq!(p.matches(t), reference, "{p} matches {t}");
        assert_eq!(
            p.covers(&Pattern::from(t.clone())),
            p.matches(t),
            "{p} covers the exact pattern {t} but matches says otherwise"
        );
    }
    if a_covers_b && b.matches(t) {
        assert!(
            a.matches(t),
            "{a} covers {b}, {b} matches {t}, {a} does not"
        );
    }
    if a_covers_b && b.covers(a) {
        assert_eq!(a.matches(t), b.matches(t), "{a} and {b} cover each other");
    }
    assert_eq!(scopes.allows_publish(t), a.matches(t));
}

/// A matcher by recursion over segments, written independently of `Pattern::matches`.
fn reference_matches(p: &[&str], t: &[&str]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(&">"), Some(_)) => true,
        (Some(&"*"), Some(_)) => reference_matches(&p[1..], &t[1..]),
        (Some(a), Some(b)) if a == b => reference_matches(&p[1..], &t[1..]),
        _ => false,
    }
}

/// Topics of `p` that any pattern not covering `p` must miss one of: every wildcard becomes
/// `z` (a literal the alphabet never writes), and a final `>` also `z.z` when that is still a
/// valid topic.
fn witnesses(p: &Pattern) -> Vec<Topic> {
    let one: Vec<&str> = p
        .segments()
        .map(|s| match s {
            Segment::Literal(l) => l,
            Segment::Any | Segment::Tail => "z",
        })
        .collect();
    let mut out = vec![Topic::new(&one.join(".")).expect("a witness of a valid pattern")];
    if p.segments().last() == Some(Segment::Tail)
        && let Ok(two) = Topic::new(&format!("{}.z", one.join(".")))
    {
        out.push(two);
    }
    out
}
