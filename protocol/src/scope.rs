//! OAuth2 scopes that grant topic rights (DESIGN section 3).
//!
//! A `scope` value is a list of scope tokens separated by single spaces (RFC 6749 section 3.3:
//! `scope = scope-token *( SP scope-token )`, `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`).
//! Two kinds of token grant rights here: `subscribe:<pattern>` and `publish:<pattern>`. Any
//! other token is kept (tokens from other issuers carry scopes of their own) but grants nothing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::topic::{Pattern, Topic, TopicError};

/// Prefix of scope tokens that allow subscribing.
pub const SUBSCRIBE_PREFIX: &str = "subscribe:";
/// Prefix of scope tokens that allow publishing.
pub const PUBLISH_PREFIX: &str = "publish:";

/// Why a `scope` string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// An empty token: leading, trailing or doubled space.
    #[error("scope token {index} is empty; tokens are separated by exactly one space")]
    EmptyToken {
        /// Token number, from 1.
        index: usize,
    },
    /// A character that RFC 6749 section 3.3 does not allow in a scope token.
    #[error(
        "scope token {index} has {found:?}; RFC 6749 section 3.3 allows only visible ASCII \
         except `\"` and `\\`"
    )]
    InvalidCharacter {
        /// Token number, from 1.
        index: usize,
        /// The character found.
        found: char,
    },
    /// A `subscribe:` or `publish:` token whose pattern breaks the topic grammar.
    #[error("scope token {token:?}: {source}")]
    InvalidPattern {
        /// The whole token.
        token: String,
        /// What is wrong with its pattern.
        source: TopicError,
    },
}

/// One scope token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `subscribe:<pattern>`: may subscribe to any pattern this one covers.
    Subscribe(Pattern),
    /// `publish:<pattern>`: may publish to any topic this pattern matches.
    Publish(Pattern),
    /// A scope token of some other meaning, kept verbatim, granting nothing here.
    Other(Box<str>),
}

impl Scope {
    /// The scope token that allows subscribing to `pattern`: `subscribe:<pattern>`.
    pub fn subscribe(pattern: &Pattern) -> Self {
        Scope::Subscribe(pattern.clone())
    }

    /// The scope token that allows publishing to `topic`: `publish:<topic>`.
    pub fn publish(topic: &Topic) -> Self {
        Scope::Publish(Pattern::from(topic.clone()))
    }

    /// True when holding `self` grants everything that `other` grants.
    pub fn covers(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::Subscribe(a), Scope::Subscribe(b)) | (Scope::Publish(a), Scope::Publish(b)) => {
                a.covers(b)
            }
            (Scope::Other(a), Scope::Other(b)) => a == b,
            _ => false,
        }
    }

    fn parse_token(index: usize, token: &str) -> Result<Self, ScopeError> {
        if token.is_empty() {
            return Err(ScopeError::EmptyToken { index });
        }
        if let Some(found) = token
            .chars()
            .find(|&c| !matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e'))
        {
            return Err(ScopeError::InvalidCharacter { index, found });
        }
        let pattern = |rest: &str| {
            Pattern::new(rest).map_err(|source| ScopeError::InvalidPattern {
                token: token.to_owned(),
                source,
            })
        };
        if let Some(rest) = token.strip_prefix(SUBSCRIBE_PREFIX) {
            Ok(Scope::Subscribe(pattern(rest)?))
        } else if let Some(rest) = token.strip_prefix(PUBLISH_PREFIX) {
            Ok(Scope::Publish(pattern(rest)?))
        } else {
            Ok(Scope::Other(token.into()))
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Subscribe(p) => write!(f, "{SUBSCRIBE_PREFIX}{p}"),
            Scope::Publish(p) => write!(f, "{PUBLISH_PREFIX}{p}"),
            Scope::Other(s) => f.write_str(s),
        }
    }
}

/// A parsed `scope` value: the rights of a token or the ceiling of an application.
///
/// Duplicate tokens are dropped; order is otherwise kept, and [`fmt::Display`] gives the
/// space-separated form back. The empty string is the empty set, which grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    scopes: Vec<Scope>,
}

impl ScopeSet {
    /// Parses a space-separated `scope` value.
    ///
    /// # Errors
    /// A [`ScopeError`] naming the token at fault.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let mut set = ScopeSet::default();
        if s.is_empty() {
            return Ok(set);
        }
        for (i, token) in s.split(' ').enumerate() {
            set.insert(Scope::parse_token(i + 1, token)?);
        }
        Ok(set)
    }

    /// Adds a scope unless it is already there.
    pub fn insert(&mut self, scope: Scope) {
        if !self.scopes.contains(&scope) {
            self.scopes.push(scope);
        }
    }

    /// The scopes, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Scope> {
        self.scopes.iter()
    }

    /// True when there is no scope at all.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// True when some `subscribe:P` held covers `pattern` (language containment).
    pub fn allows_subscribe(&self, pattern: &Pattern) -> bool {
        self.scopes
            .iter()
            .any(|s| matches!(s, Scope::Subscribe(p) if p.covers(pattern)))
    }

    /// True when some `publish:P` held matches `topic`.
    pub fn allows_publish(&self, topic: &Topic) -> bool {
        self.scopes
            .iter()
            .any(|s| matches!(s, Scope::Publish(p) if p.matches(topic)))
    }

    /// `Ok` when subscribing to `pattern` is allowed, else the scope that would be needed.
    ///
    /// # Errors
    /// [`MissingScope`] naming `subscribe:<pattern>`.
    pub fn check_subscribe(&self, pattern: &Pattern) -> Result<(), MissingScope> {
        if self.allows_subscribe(pattern) {
            Ok(())
        } else {
            Err(MissingScope(Scope::subscribe(pattern)))
        }
    }

    /// `Ok` when publishing to `topic` is allowed, else the scope that would be needed.
    ///
    /// # Errors
    /// [`MissingScope`] naming `publish:<topic>`.
    pub fn check_publish(&self, topic: &Topic) -> Result<(), MissingScope> {
        if self.allows_publish(topic) {
            Ok(())
        } else {
            Err(MissingScope(Scope::publish(topic)))
        }
    }

    /// True when some scope held covers `scope`.
    pub fn covers(&self, scope: &Scope) -> bool {
        self.scopes.iter().any(|held| held.covers(scope))
    }

    /// The first scope of `requested` that `self` does not cover, if any.
    ///
    /// A token request may narrow the application's ceiling but never widen it
    /// (RFC 6749 section 3.3, `invalid_scope`).
    pub fn first_uncovered<'a>(&self, requested: &'a ScopeSet) -> Option<&'a Scope> {
        requested.iter().find(|s| !self.covers(s))
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            fmt::Display::fmt(scope, f)?;
        }
        Ok(())
    }
}

impl FromStr for ScopeSet {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScopeSet::parse(s)
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut set = ScopeSet::default();
        for scope in iter {
            set.insert(scope);
        }
        set
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ScopeSet::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The scope a refused request would have needed, e.g. `subscribe:adt.>`.
///
/// Its [`fmt::Display`] is the scope token itself, ready for an `error` frame's
/// `required_scope` or an RFC 6750 `scope="..."` attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MissingScope(pub Scope);

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap()
    }

    fn pattern(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn parses_ours_and_keeps_other_tokens() {
        let s = set("subscribe:adt.> publish:lab.result.final openid system/Patient.read");
        assert_eq!(s.iter().count(), 4);
        assert_eq!(
            s.to_string(),
            "subscribe:adt.> publish:lab.result.final openid system/Patient.read"
        );
        assert!(s.covers(&Scope::Other("openid".into())));
        assert!(!s.allows_subscribe(&pattern("openid")));
    }

    #[test]
    fn drops_duplicates_and_accepts_the_empty_string() {
        assert_eq!(set("subscribe:a subscribe:a").to_string(), "subscribe:a");
        assert!(set("").is_empty());
        assert!(!set("").allows_subscribe(&pattern("a")));
    }

    #[test]
    fn refuses_bad_separators_and_characters() {
        assert_eq!(
            ScopeSet::parse(" a"),
            Err(ScopeError::EmptyToken { index: 1 })
        );
        assert_eq!(
            ScopeSet::parse("a  b"),
            Err(ScopeError::EmptyToken { index: 2 })
        );
        assert_eq!(
            ScopeSet::parse("a "),
            Err(ScopeError::EmptyToken { index: 2 })
        );
        assert_eq!(
            ScopeSet::parse("a\tb"),
            Err(ScopeError::InvalidCharacter {
                index: 1,
                found: '\t'
            })
        );
        assert_eq!(
            ScopeSet::parse("a\"b"),
            Err(ScopeError::InvalidCharacter {
                index: 1,
                found: '"'
            })
        );
        assert_eq!(
            ScopeSet::parse("x a\\b"),
            Err(ScopeError::InvalidCharacter {
                index: 2,
                found: '\\'
            })
        );
        assert_eq!(
            ScopeSet::parse("é"),
            Err(ScopeError::InvalidCharacter {
                index: 1,
                found: 'é'
            })
        );
    }

    #[test]
    fn refuses_bad_patterns_in_our_tokens() {
        let err = ScopeSet::parse("subscribe:Adt.x").unwrap_err();
        assert!(
            matches!(err, ScopeError::InvalidPattern { ref token, .. } if token == "subscribe:Adt.x")
        );
        assert!(ScopeSet::parse("subscribe:").is_err());
        assert!(ScopeSet::parse("publish:a..b").is_err());
    }

    #[test]
    fn subscribe_uses_containment_not_prefix() {
        let s = set("subscribe:adt.* subscribe:adt.patient");
        assert!(s.allows_subscribe(&pattern("adt.x")));
        assert!(s.allows_subscribe(&pattern("adt.*")));
        assert!(!s.allows_subscribe(&pattern("adt.>")));
        assert!(!s.allows_subscribe(&pattern("adt.a.b")));
        assert!(!s.allows_subscribe(&pattern("adt.patientx.y")));
        let wide = set("subscribe:fhir.>");
        assert!(wide.allows_subscribe(&pattern("fhir.encounter.>")));
        assert!(!wide.allows_subscribe(&pattern(">")));
    }

    #[test]
    fn publish_needs_a_matching_pattern_and_never_follows_from_subscribe() {
        let s = set("publish:lab.> subscribe:adt.>");
        assert!(s.allows_publish(&topic("lab.result.final")));
        assert!(!s.allows_publish(&topic("lab")));
        assert!(!s.allows_publish(&topic("adt.x")));
    }

    #[test]
    fn refusals_name_the_scope_that_was_needed() {
        let s = set("subscribe:adt.*");
        let err = s.check_subscribe(&pattern("adt.>")).unwrap_err();
        assert_eq!(err.to_string(), "subscribe:adt.>");
        let err = s.check_publish(&topic("adt.x")).unwrap_err();
        assert_eq!(err.to_string(), "publish:adt.x");
    }

    #[test]
    fn narrowing_is_checked_against_the_ceiling() {
        let ceiling = set("subscribe:fhir.> publish:lab.* launch");
        assert_eq!(
            ceiling.first_uncovered(&set("subscribe:fhir.encounter.> publish:lab.x")),
            None
        );
        assert_eq!(ceiling.first_uncovered(&set("launch")), None);
        let wider = set("subscribe:fhir.encounter.> subscribe:>");
        assert_eq!(
            ceiling
                .first_uncovered(&wider)
                .map(ToString::to_string)
                .as_deref(),
            Some("subscribe:>")
        );
        let cross = set("subscribe:lab.x");
        assert!(ceiling.first_uncovered(&cross).is_some());
    }

    #[test]
    fn serde_round_trips_as_a_string() {
        let s = set("subscribe:a.> openid");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"subscribe:a.> openid\"");
        assert_eq!(serde_json::from_str::<ScopeSet>(&json).unwrap(), s);
    }
}
