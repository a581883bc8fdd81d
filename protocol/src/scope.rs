//! OAuth2 scopes and the rights they grant (DESIGN section 3, PROTOCOL.md section 2).
//!
//! A `scope` value is a list of scope tokens separated by single spaces (RFC 6749 section 3.3:
//! `scope = scope-token *( SP scope-token )`, `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`).
//! The tokens that grant rights come from a closed list of families, each with its own
//! containment rule ([`Scope::covers`]):
//!
//! - `subscribe:<pattern>` and `publish:<pattern>`: topic rights, by pattern containment;
//! - `webhook:manage`: managing webhooks; covers only itself;
//! - `system/<Type|*>.<permissions>`: SMART App Launch v2 system scopes ([`SystemScope`]).
//!
//! Two parsers. [`ScopeSet::parse`] reads the scope of an access token, which may carry tokens
//! of other issuers (`openid`, `profile`, SMART scopes with parameters): they are kept as
//! [`Scope::Other`] and grant nothing. [`ScopeSet::parse_ceiling`] reads what an admin sets as
//! an application's ceiling and refuses every token outside the families, saying which
//! families there are.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::topic::{Pattern, Topic, TopicError};

mod system;

pub use system::{Permissions, SystemScope, SystemScopeError};

/// Prefix of scope tokens that allow subscribing.
pub const SUBSCRIBE_PREFIX: &str = "subscribe:";
/// Prefix of scope tokens that allow publishing.
pub const PUBLISH_PREFIX: &str = "publish:";
/// Prefix of SMART App Launch system scopes (`system/Encounter.rs`).
pub const SYSTEM_PREFIX: &str = "system/";
/// The one scope token of the webhook family.
pub const WEBHOOK_MANAGE: &str = "webhook:manage";
/// The scope families, each with an example: what the refusal of an unknown token lists.
pub const SCOPE_FAMILIES: &str = "`subscribe:<pattern>` (e.g. `subscribe:adt.>`), \
     `publish:<pattern>` (e.g. `publish:lab.result.final`), `webhook:manage`, \
     `system/<Type|*>.<cruds|read|write>` (e.g. `system/Encounter.rs`)";

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
    /// Scopes written as a comma-separated list (`subscribe:a.>,publish:b`).
    #[error(
        "scope `{token}` contains a comma: scopes are separated by spaces, not commas \
         (`{respaced}`)"
    )]
    CommaSeparated {
        /// The token holding the comma.
        token: String,
        /// The whole value with its commas turned into single spaces.
        respaced: String,
    },
    /// A `system/` token that breaks the SMART scope grammar (ceilings only: an access token
    /// keeps it as [`Scope::Other`]).
    #[error("scope `{token}`: {source}")]
    InvalidSystemScope {
        /// The whole token.
        token: String,
        /// What is wrong with it.
        source: SystemScopeError,
    },
    /// A `webhook:` token other than `webhook:manage` (ceilings only).
    #[error("scope `{token}`: the webhook family has one scope, `{WEBHOOK_MANAGE}`")]
    InvalidWebhookScope {
        /// The whole token.
        token: String,
    },
    /// A token of no family (ceilings only: an access token keeps it as [`Scope::Other`]).
    #[error(
        "unknown scope `{token}`{}; scopes come from these families: {SCOPE_FAMILIES}",
        did_you_mean(.suggestion)
    )]
    UnknownFamily {
        /// The whole token.
        token: String,
        /// The token as it was probably meant, when it is a near miss (`subscibe:x`).
        suggestion: Option<String>,
    },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// One scope token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `subscribe:<pattern>`: may subscribe to any pattern this one covers.
    Subscribe(Pattern),
    /// `publish:<pattern>`: may publish to any topic this pattern matches.
    Publish(Pattern),
    /// `webhook:manage`: may manage webhooks. Covers only itself.
    WebhookManage,
    /// `system/<Type|*>.<permissions>`: a SMART App Launch system scope (FHIR access).
    System(SystemScope),
    /// A scope token of some other meaning, kept verbatim, granting nothing here. Only access
    /// tokens carry these; a ceiling never does.
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
            (Scope::WebhookManage, Scope::WebhookManage) => true,
            (Scope::System(a), Scope::System(b)) => a.covers(b),
            (Scope::Other(a), Scope::Other(b)) => a == b,
            _ => false,
        }
    }

    /// Reads token number `index` of the value `whole`. `strict` (a ceiling) refuses tokens
    /// outside the families; otherwise (an access token) they are kept as [`Scope::Other`].
    fn parse_token(
        index: usize,
        token: &str,
        whole: &str,
        strict: bool,
    ) -> Result<Self, ScopeError> {
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
            if rest.contains(',') {
                return Err(comma_separated(token, whole));
            }
            Pattern::new(rest).map_err(|source| ScopeError::InvalidPattern {
                token: token.to_owned(),
                source,
            })
        };
        if let Some(rest) = token.strip_prefix(SUBSCRIBE_PREFIX) {
            return Ok(Scope::Subscribe(pattern(rest)?));
        }
        if let Some(rest) = token.strip_prefix(PUBLISH_PREFIX) {
            return Ok(Scope::Publish(pattern(rest)?));
        }
        if token == WEBHOOK_MANAGE {
            return Ok(Scope::WebhookManage);
        }
        if token.starts_with(SYSTEM_PREFIX) {
            match SystemScope::parse(token) {
                Ok(s) => return Ok(Scope::System(s)),
                Err(source) if strict => {
                    return Err(ScopeError::InvalidSystemScope {
                        token: token.to_owned(),
                        source,
                    });
                }
                Err(_) => {}
            }
        }
        // An access token's foreign scope: kept, and no refusal worked out on this hot path.
        if !strict {
            return Ok(Scope::Other(token.into()));
        }
        if token.starts_with("webhook:") {
            return Err(ScopeError::InvalidWebhookScope {
                token: token.to_owned(),
            });
        }
        Err(ScopeError::UnknownFamily {
            token: token.to_owned(),
            suggestion: near_miss(token),
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Subscribe(p) => write!(f, "{SUBSCRIBE_PREFIX}{p}"),
            Scope::Publish(p) => write!(f, "{PUBLISH_PREFIX}{p}"),
            Scope::WebhookManage => f.write_str(WEBHOOK_MANAGE),
            Scope::System(s) => fmt::Display::fmt(s, f),
            Scope::Other(s) => f.write_str(s),
        }
    }
}

/// The refusal of a comma-separated list, with the value as it should have been written.
fn comma_separated(token: &str, whole: &str) -> ScopeError {
    let respaced: Vec<&str> = whole.split([',', ' ']).filter(|t| !t.is_empty()).collect();
    ScopeError::CommaSeparated {
        token: token.to_owned(),
        respaced: respaced.join(" "),
    }
}

/// The family prefixes a near miss is compared with.
const FAMILY_PREFIXES: [&str; 4] = [SUBSCRIBE_PREFIX, PUBLISH_PREFIX, "webhook:", SYSTEM_PREFIX];

/// What `token` was probably meant to be, when its prefix (up to the first `:` or `/`) is
/// within two edits of a family's (`subscibe:`, `Publish:`, `webhooks:`), or is SMART's
/// `user/` or `patient/` (a backend's ceiling uses `system/`).
fn near_miss(token: &str) -> Option<String> {
    let (prefix, rest) = match token.find([':', '/']) {
        Some(end) => token.split_at(end + 1),
        // A bare family name (`subscribe`) is compared as if it had its `:`.
        None => (token, ""),
    };
    let mut lower = prefix.to_ascii_lowercase();
    if !lower.ends_with([':', '/']) {
        lower.push(':');
    }
    let family = if matches!(lower.as_str(), "user/" | "patient/") {
        SYSTEM_PREFIX
    } else {
        FAMILY_PREFIXES
            .into_iter()
            .map(|f| (edit_distance(&lower, f), f))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d)?
            .1
    };
    Some(if family == "webhook:" {
        WEBHOOK_MANAGE.to_owned()
    } else if rest.is_empty() {
        let placeholder = if family == SYSTEM_PREFIX {
            "<Type|*>.<permissions>"
        } else {
            "<pattern>"
        };
        format!("{family}{placeholder}")
    } else {
        format!("{family}{rest}")
    })
}

/// Levenshtein distance over bytes (both sides are short ASCII prefixes).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
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
    /// Parses the space-separated `scope` of an access token.
    ///
    /// Tokens of our families must be well formed where they grant topic rights
    /// (`subscribe:`, `publish:`); every other token, including a malformed `system/` or
    /// `webhook:` one, is kept as [`Scope::Other`] and grants nothing, since tokens from other
    /// issuers carry scopes of their own.
    ///
    /// # Errors
    /// A [`ScopeError`] naming the token at fault.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        ScopeSet::parse_with(s, false)
    }

    /// Parses an application's scope ceiling, as an admin sets it: every token must belong to
    /// one of the families (see the module documentation), and a comma-separated list is
    /// refused with a message that says scopes are separated by spaces.
    ///
    /// # Errors
    /// A [`ScopeError`] naming the token at fault: [`ScopeError::UnknownFamily`] lists the
    /// families, [`ScopeError::CommaSeparated`] shows the value with spaces.
    pub fn parse_ceiling(s: &str) -> Result<Self, ScopeError> {
        ScopeSet::parse_with(s, true)
    }

    fn parse_with(s: &str, strict: bool) -> Result<Self, ScopeError> {
        let mut set = ScopeSet::default();
        if s.is_empty() {
            return Ok(set);
        }
        if strict && let Some(token) = s.split(' ').find(|t| t.contains(',')) {
            return Err(comma_separated(token, s));
        }
        for (i, token) in s.split(' ').enumerate() {
            set.insert(Scope::parse_token(i + 1, token, s, strict)?);
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

    /// What both grant, by containment: every scope of `self` that `other` covers, then every
    /// scope of `other` that `self` covers (duplicates dropped). Never wider than either: an
    /// environment's grant intersected with an application record's scope is the client's
    /// effective scope (PROTOCOL.md section 2b). Two scopes that only overlap (`subscribe:a.*.c`
    /// and `subscribe:a.b.*`) grant nothing together.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        self.scopes
            .iter()
            .filter(|s| other.covers(s))
            .chain(other.scopes.iter().filter(|s| self.covers(s)))
            .cloned()
            .collect()
    }

    /// The scopes of `self` that `other` does not cover, in order (a record's scopes an
    /// environment's grant does not yet include).
    pub fn not_covered_by(&self, other: &ScopeSet) -> ScopeSet {
        self.scopes
            .iter()
            .filter(|s| !other.covers(s))
            .cloned()
            .collect()
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
    #[test]
    fn intersection_keeps_what_both_grant_and_nothing_more() {
        let record = ScopeSet::parse_ceiling(
            "subscribe:fhir.> publish:fhir.encounter.started webhook:manage",
        )
        .unwrap();
        let grant =
            ScopeSet::parse_ceiling("subscribe:fhir.encounter.> subscribe:adt.> webhook:manage")
                .unwrap();
        let both = record.intersection(&grant);
        assert_eq!(
            both.to_string(),
            "webhook:manage subscribe:fhir.encounter.>"
        );
        assert!(both.allows_subscribe(&"fhir.encounter.started".parse().unwrap()));
        assert!(!both.allows_subscribe(&"fhir.patient.created".parse().unwrap()));
        assert!(
            !both.allows_subscribe(&"adt.a01".parse().unwrap()),
            "not in the record"
        );
        assert!(
            !both.allows_publish(&"fhir.encounter.started".parse().unwrap()),
            "not granted"
        );
        assert_eq!(
            record.not_covered_by(&grant).to_string(),
            "subscribe:fhir.> publish:fhir.encounter.started"
        );
        let a = ScopeSet::parse_ceiling("subscribe:a.*.c").unwrap();
        let b = ScopeSet::parse_ceiling("subscribe:a.b.*").unwrap();
        assert!(
            a.intersection(&b).is_empty(),
            "an overlap alone grants nothing"
        );
        assert_eq!(record.intersection(&record), record);
    }

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

    fn system(s: &str) -> SystemScope {
        SystemScope::parse(s).unwrap()
    }

    fn ceiling_error(s: &str) -> String {
        ScopeSet::parse_ceiling(s).unwrap_err().to_string()
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
        assert!(s.iter().any(|t| matches!(t, Scope::System(_))));
    }

    #[test]
    fn access_tokens_keep_foreign_and_malformed_family_tokens_as_other() {
        // Another issuer's SMART scopes (parameters, v1 `*`, user-level) and near misses are
        // kept, granting nothing, so that the token is still accepted.
        let raw = "openid profile system/Observation.rs?category=laboratory system/*.* \
                   user/Patient.read webhook:manage:x subscibe:adt.> launch/patient";
        let s = set(raw);
        assert_eq!(s.to_string(), raw);
        assert!(s.iter().all(|t| matches!(t, Scope::Other(_))), "{s:?}");
        assert!(!s.covers(&Scope::System(system("system/Observation.rs"))));
        assert!(!s.covers(&Scope::WebhookManage));
    }

    #[test]
    fn ceilings_take_every_family() {
        let raw = "subscribe:adt.> publish:lab.result.final webhook:manage system/Encounter.rs \
                   system/*.read system/Patient.write system/Observation.cruds";
        let s = ScopeSet::parse_ceiling(raw).unwrap();
        assert_eq!(s.to_string(), raw);
        assert_eq!(s, set(raw));
        assert!(ScopeSet::parse_ceiling("").unwrap().is_empty());
    }

    #[test]
    fn ceilings_refuse_unknown_families_and_list_them() {
        assert_eq!(
            ceiling_error("subscribe:adt.> read:x"),
            "unknown scope `read:x`; scopes come from these families: `subscribe:<pattern>` \
             (e.g. `subscribe:adt.>`), `publish:<pattern>` (e.g. `publish:lab.result.final`), \
             `webhook:manage`, `system/<Type|*>.<cruds|read|write>` (e.g. `system/Encounter.rs`)"
        );
        assert_eq!(
            ScopeSet::parse_ceiling("openid"),
            Err(ScopeError::UnknownFamily {
                token: "openid".into(),
                suggestion: None
            })
        );
        for (token, meant) in [
            ("subscibe:adt.>", "subscribe:adt.>"),
            ("Subscribe:adt.>", "subscribe:adt.>"),
            ("pubish:lab.x", "publish:lab.x"),
            ("webhooks:manage", "webhook:manage"),
            ("System/Patient.rs", "system/Patient.rs"),
            ("user/Patient.read", "system/Patient.read"),
            ("subscribe", "subscribe:<pattern>"),
            ("webhook", "webhook:manage"),
            ("system", "system/<Type|*>.<permissions>"),
        ] {
            let msg = ceiling_error(token);
            assert!(
                msg.starts_with(&format!(
                    "unknown scope `{token}` (did you mean `{meant}`?); "
                )),
                "{msg}"
            );
            assert!(msg.ends_with(SCOPE_FAMILIES), "{msg}");
        }
        assert!(!ceiling_error("read:x").contains("did you mean"));
    }

    #[test]
    fn comma_separated_lists_are_refused_with_the_spaced_form() {
        let spaces = "scopes are separated by spaces, not commas";
        for (value, token, respaced) in [
            (
                "subscribe:a.>,publish:b",
                "subscribe:a.>,publish:b",
                "subscribe:a.> publish:b",
            ),
            (
                "subscribe:a.>, publish:b",
                "subscribe:a.>,",
                "subscribe:a.> publish:b",
            ),
            ("openid,profile", "openid,profile", "openid profile"),
            (
                "webhook:manage,system/*.read",
                "webhook:manage,system/*.read",
                "webhook:manage system/*.read",
            ),
        ] {
            let err = ScopeSet::parse_ceiling(value).unwrap_err();
            assert_eq!(
                err,
                ScopeError::CommaSeparated {
                    token: token.into(),
                    respaced: respaced.into()
                }
            );
            assert_eq!(
                err.to_string(),
                format!("scope `{token}` contains a comma: {spaces} (`{respaced}`)")
            );
        }
        // An access token's own families say the same; a foreign token may hold a comma.
        let err = ScopeSet::parse("subscribe:a.>,publish:b").unwrap_err();
        assert!(err.to_string().contains(spaces), "{err}");
        assert_eq!(set("a,b").to_string(), "a,b");
    }

    #[test]
    fn ceilings_refuse_malformed_system_and_webhook_scopes() {
        let cases = [
            (
                "system/encounter.r",
                "scope `system/encounter.r`: `encounter` is not a FHIR resource type: write the \
                 name as FHIR spells it, an upper-case letter then up to 63 letters (e.g. \
                 `Encounter`), or `*` for every type",
            ),
            (
                "system/Encounter.sr",
                "scope `system/Encounter.sr`: permissions `sr` are out of order: SMART v2 writes \
                 each of c, r, u, d, s at most once, in that order (`rs`)",
            ),
            (
                "system/Encounter.rr",
                "scope `system/Encounter.rr`: permissions `rr` are out of order: SMART v2 writes \
                 each of c, r, u, d, s at most once, in that order (`r`)",
            ),
            (
                "system/Encounter.rx",
                "scope `system/Encounter.rx`: 'x' is not a SMART permission: use SMART v2 letters \
                 from `cruds` (e.g. `rs`), or v1 `read` or `write`",
            ),
            (
                "system/Encounter.",
                "scope `system/Encounter.`: the permissions after `.` are empty: use SMART v2 \
                 letters from `cruds` (e.g. `rs`), or v1 `read` or `write`",
            ),
            (
                "system/Encounter",
                "scope `system/Encounter`: no permissions: write \
                 `system/<Type|*>.<permissions>`, e.g. `system/Encounter.rs`",
            ),
            (
                "system/Observation.rs?category=laboratory",
                "scope `system/Observation.rs?category=laboratory`: SMART scope parameters \
                 (`?category=laboratory`) are not supported",
            ),
            (
                "system/*.*",
                "scope `system/*.*`: the SMART v1 permission `*` is not supported: write `cruds` \
                 for all five, or `read` or `write`",
            ),
            (
                "webhook:manage:x",
                "scope `webhook:manage:x`: the webhook family has one scope, `webhook:manage`",
            ),
        ];
        for (token, message) in cases {
            assert_eq!(ceiling_error(token), message);
        }
        let long = format!("system/{}.r", "A".repeat(65));
        assert!(ScopeSet::parse_ceiling(&long).is_err());
        let longest = format!("system/{}.r", "A".repeat(64));
        assert!(ScopeSet::parse_ceiling(&longest).is_ok());
        for bad in [
            "system/1Patient.r",
            "system/Pat_ient.r",
            "system/.r",
            "system/**.r",
        ] {
            assert!(
                matches!(
                    ScopeSet::parse_ceiling(bad),
                    Err(ScopeError::InvalidSystemScope {
                        source: SystemScopeError::ResourceType { .. },
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn system_scopes_cover_by_type_and_permission_set() {
        let cases = [
            ("system/*.read", "system/Encounter.r", true),
            ("system/*.read", "system/Encounter.rs", true),
            ("system/*.read", "system/*.s", true),
            ("system/*.read", "system/Patient.c", false),
            ("system/*.read", "system/*.cruds", false),
            ("system/Encounter.read", "system/Encounter.rs", true),
            ("system/Encounter.rs", "system/Encounter.read", true),
            ("system/Encounter.write", "system/Encounter.cud", true),
            ("system/Encounter.write", "system/Encounter.r", false),
            ("system/Encounter.cruds", "system/Encounter.write", true),
            ("system/Encounter.cruds", "system/*.r", false),
            ("system/Encounter.rs", "system/Patient.rs", false),
            ("system/*.cruds", "system/*.write", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(system(a).covers(&system(b)), want, "{a} covers {b}");
            assert_eq!(
                Scope::System(system(a)).covers(&Scope::System(system(b))),
                want,
                "{a} covers {b}"
            );
        }
        assert_eq!(
            system("system/Encounter.read").permissions(),
            Permissions::V1_READ
        );
        assert_eq!(system("system/*.write").resource_type(), None);
        assert_eq!(
            system("system/Encounter.rs").resource_type(),
            Some("Encounter")
        );
    }

    #[test]
    fn webhook_manage_covers_only_itself() {
        let s = ScopeSet::parse_ceiling("webhook:manage").unwrap();
        assert!(s.covers(&Scope::WebhookManage));
        assert_eq!(s.to_string(), WEBHOOK_MANAGE);
        let wide = ScopeSet::parse_ceiling("subscribe:> publish:> system/*.cruds").unwrap();
        assert!(!wide.covers(&Scope::WebhookManage));
        assert!(!s.allows_subscribe(&pattern("webhook")));
    }

    #[test]
    fn narrowing_works_for_every_family() {
        let ceiling =
            ScopeSet::parse_ceiling("system/*.read webhook:manage subscribe:adt.>").unwrap();
        let ok = set("system/Encounter.r system/*.rs system/Patient.read webhook:manage");
        assert_eq!(ceiling.first_uncovered(&ok), None);
        let beyond = set("system/Encounter.r system/Patient.c");
        assert_eq!(
            ceiling
                .first_uncovered(&beyond)
                .map(ToString::to_string)
                .as_deref(),
            Some("system/Patient.c")
        );
        assert!(ceiling.first_uncovered(&set("openid")).is_some());
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

    // ---- property tests: SMART system scopes ----

    use proptest::prelude::*;

    /// Resource types the strategies name; the reference adds one that none of them names.
    const TYPES: [&str; 2] = ["Patient", "Encounter"];
    /// A type no generated scope names, so that `*` and a named type can be told apart.
    const UNNAMED_TYPE: &str = "Observation";

    /// The text of a system scope: `*` or a type, and its permissions spelt in SMART v2
    /// letters, or in v1 `read` / `write` where they mean the same set.
    fn arb_system_text() -> impl Strategy<Value = String> {
        (0..=TYPES.len(), 1u8..=31, any::<bool>()).prop_map(|(t, bits, v1)| {
            let resource = TYPES.get(t).copied().unwrap_or("*");
            let perms = Permissions(bits);
            let spelt = match (v1, perms) {
                (true, Permissions::V1_READ) => "read".to_owned(),
                (true, Permissions::V1_WRITE) => "write".to_owned(),
                _ => perms.to_string(),
            };
            format!("system/{resource}.{spelt}")
        })
    }

    fn arb_system() -> impl Strategy<Value = SystemScope> {
        arb_system_text().prop_map(|t| system(&t))
    }

    /// What a system scope grants, by the set definition: (resource type, permission) pairs
    /// over the named types and one more.
    fn grants(s: &SystemScope) -> std::collections::HashSet<(&'static str, char)> {
        TYPES
            .iter()
            .chain([&UNNAMED_TYPE])
            .filter(|t| s.resource_type().is_none_or(|mine| mine == **t))
            .flat_map(|t| {
                Permissions::LETTERS
                    .iter()
                    .filter(|(_, p)| s.permissions().contains(*p))
                    .map(move |(c, _)| (*t, *c))
            })
            .collect()
    }

    proptest! {
        #[test]
        fn system_scope_text_round_trips_in_both_parsers(text in arb_system_text()) {
            prop_assert_eq!(&system(&text).to_string(), &text);
            let strict = ScopeSet::parse_ceiling(&text).unwrap();
            prop_assert_eq!(&strict.to_string(), &text);
            prop_assert_eq!(strict, set(&text));
        }

        #[test]
        fn system_covers_is_reflexive(a in arb_system()) {
            prop_assert!(a.covers(&a));
        }

        #[test]
        fn system_covers_is_transitive(a in arb_system(), b in arb_system(), c in arb_system()) {
            if a.covers(&b) && b.covers(&c) {
                prop_assert!(a.covers(&c), "{} covers {} covers {}", a, b, c);
            }
        }

        #[test]
        fn system_covers_is_the_subset_relation_of_grants(a in arb_system(), b in arb_system()) {
            prop_assert_eq!(
                a.covers(&b),
                grants(&b).is_subset(&grants(&a)),
                "{} vs {}", a, b
            );
        }

        #[test]
        fn v1_and_v2_spellings_cover_each_other(t in 0..=TYPES.len()) {
            let resource = TYPES.get(t).copied().unwrap_or("*");
            for (v1, v2) in [("read", "rs"), ("write", "cud")] {
                let a = system(&format!("system/{resource}.{v1}"));
                let b = system(&format!("system/{resource}.{v2}"));
                prop_assert!(a.covers(&b) && b.covers(&a), "{} and {}", a, b);
            }
        }

        #[test]
        fn ceiling_parse_never_panics_and_agrees_with_the_token_parser(s in "\\PC{0,40}") {
            if let Ok(strict) = ScopeSet::parse_ceiling(&s) {
                prop_assert!(strict.iter().all(|t| !matches!(t, Scope::Other(_))));
                prop_assert_eq!(ScopeSet::parse(&s), Ok(strict.clone()));
                prop_assert_eq!(ScopeSet::parse_ceiling(&strict.to_string()), Ok(strict));
            }
        }
    }
}
