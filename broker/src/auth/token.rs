//! Access tokens: issuing RFC 9068 JWTs, and verifying them (ours and external issuers') into
//! a [`Principal`] or a typed [`VerifyError`].
//!
//! Verification rules (DESIGN section 4): the algorithm is pinned by the key chosen by `kid`,
//! never taken from the token alone, so `none` and symmetric algorithms are refused; `exp`,
//! `iss` and `aud` are required; `nbf` is checked; the leeway is our explicit setting; and the
//! `client_id` must be registered, of this environment's kind, and active.
//!
//! An external issuer's tokens also live at most its `max_token_lifetime_s`, and their client
//! ID and scope come from the claims its `client_id_claims` and `scope_claims` name. Those
//! claims are read from the claims `jsonwebtoken` returns after the signature verified; before
//! that, only `iss` and the header are looked at, to choose the key ([`jwt::peek`]).

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use scopecast_protocol::{Reason, ScopeSet, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cache::{TOKEN_CACHE_ENTRIES, TokenCache};
use super::jwks::{self, JwksCache};
use super::jwt;
use super::keys::KeyRing;
use crate::config::{EnvironmentKind, ExternalIssuer};
use crate::registry::Registry;
use crate::registry::validate::ClientKey;

/// The RFC 9068 `typ` header value for access tokens.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// What a verified access token resolves to.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The OAuth2 `client_id`.
    pub client_id: String,
    /// Its application.
    pub application_id: String,
    /// Its environment kind (always this broker's).
    pub kind: EnvironmentKind,
    /// The token's granted scope. A request is allowed only when this scope AND the
    /// application's current ceiling (from the registry, which can change after the token was
    /// issued) both allow it: callers check both, every time.
    pub scope: Arc<ScopeSet>,
    /// The token's `exp`.
    pub expires_at: Timestamp,
    /// The token's `iss`.
    pub issuer: String,
    /// The token's `jti`, when it has one (the access audit names the token by it).
    pub token_id: Option<String>,
    /// The token's `iat`, when it has one.
    pub issued_at: Option<Timestamp>,
}

/// Why a token was refused. Messages are for the client: they never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a well-formed JWT, or a claim has the wrong type.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// The signature does not verify with the key named by `kid`.
    #[error("the token signature is invalid")]
    BadSignature,
    /// `aud` does not name this broker.
    #[error("the token audience (aud) does not name this broker")]
    WrongAudience,
    /// `iss` is not this broker nor a configured external issuer.
    #[error("the token issuer (iss) is not trusted here")]
    UnknownIssuer,
    /// No key with that `kid`.
    #[error("no signing key with this kid")]
    UnknownKey,
    /// `alg` is not the algorithm pinned to the key (this includes `none` and HMAC).
    #[error("algorithm {0:?} is not allowed for this key")]
    AlgorithmNotAllowed(String),
    /// `typ` is not `at+jwt`.
    #[error("the token type (typ) must be at+jwt")]
    WrongType,
    /// A required claim is absent. When any one of several claims would do (an external
    /// issuer's `client_id_claims`), their names, separated by commas.
    #[error("the token has {}", missing_claims(.0))]
    MissingClaim(String),
    /// `client_id` is not registered here.
    #[error("the token's client_id is not registered here")]
    UnknownClient,
    /// `client_id` is of the other environment kind.
    #[error("the token's client_id is for another environment kind")]
    WrongEnvironment,
    /// `client_id` is not active here.
    #[error("the token's client_id is not active in this environment")]
    ClientInactive,
    /// One of this broker's tokens whose `env` claim names another environment (or none): a
    /// token is valid only in the environment that issued it, even where the signing key is
    /// shared (a copied data folder, a restored backup).
    #[error("the token was issued for the environment {named:?}, not {expected:?}")]
    OtherEnvironment {
        /// The token's `env` claim, at most 64 characters; empty when it has none.
        named: String,
        /// This environment's `<kind>/<name>`.
        expected: String,
    },
    /// An issuer's keys could not be fetched and none are cached.
    #[error("the issuer's keys are unavailable")]
    KeysUnavailable,
    /// An external issuer's token lives longer than that issuer's `max_token_lifetime_s`:
    /// `exp - iat`, or the time left until `exp`, exceeds it.
    #[error(
        "the token lives longer than the {max_s} s accepted from its issuer (the broker \
         setting `max_token_lifetime_s` of this issuer in `oauth.external_issuers` raises it)"
    )]
    LifetimeTooLong {
        /// The issuer's limit, in seconds.
        max_s: u64,
    },
}

/// "no `exp` claim", or "none of the claims `a`, `b`" for a comma-separated list.
fn missing_claims(names: &str) -> String {
    let quoted: Vec<String> = names.split(',').map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [one] => format!("no {one} claim"),
        many => format!("none of the claims {}", many.join(", ")),
    }
}

impl VerifyError {
    /// The protocol reason to report (PROTOCOL.md section 6).
    pub fn reason(&self) -> Reason {
        match self {
            VerifyError::Expired => Reason::TokenExpired,
            VerifyError::WrongEnvironment | VerifyError::ClientInactive => Reason::ClientInactive,
            VerifyError::OtherEnvironment { .. } => Reason::InvalidToken,
            _ => Reason::InvalidToken,
        }
    }

    /// A short fixed label for metrics (bounded cardinality).
    pub fn label(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::WrongAudience => "wrong_audience",
            VerifyError::UnknownIssuer => "unknown_issuer",
            VerifyError::UnknownKey => "unknown_key",
            VerifyError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            VerifyError::WrongType => "wrong_typ",
            VerifyError::MissingClaim(_) => "missing_claim",
            VerifyError::UnknownClient => "unknown_client",
            VerifyError::WrongEnvironment => "wrong_environment",
            VerifyError::ClientInactive => "client_inactive",
            VerifyError::OtherEnvironment { .. } => "other_environment",
            VerifyError::KeysUnavailable => "keys_unavailable",
            VerifyError::LifetimeTooLong { .. } => "lifetime_too_long",
        }
    }
}

/// Claims of our access tokens (RFC 9068 section 2.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the broker's public URL.
    pub iss: String,
    /// Audience: the broker's public URL.
    pub aud: String,
    /// Subject: the client ID (client credentials grant).
    pub sub: String,
    /// The client ID.
    pub client_id: String,
    /// Granted scope, space-separated.
    pub scope: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// The environment the token is for, `<kind>/<name>` (`non-production/test`): the
    /// issuing broker's, and the only one where it is accepted.
    pub env: String,
}

/// Claims of any access token, as `jsonwebtoken` returns them after the signature verified:
/// `exp`, and the rest for [`client_id_claim`], [`scope_claim`] and `iat`.
#[derive(Deserialize)]
struct VerifiedClaims {
    exp: i64,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// What a verified token's claims gave, remembered with the token until its `exp`.
struct Checked {
    client_id: String,
    scope: Arc<ScopeSet>,
    expires_at: Timestamp,
    token_id: Option<String>,
    issued_at: Option<Timestamp>,
}

/// The claim holding the client ID in our own tokens (RFC 9068).
const OWN_CLIENT_ID_CLAIMS: &[&str] = &["client_id"];
/// The claim holding the scope in our own tokens: always a string, as we issue them.
const OWN_SCOPE_CLAIMS: &[&str] = &["scope"];

/// Issues access tokens signed with the broker's current key.
#[derive(Clone)]
pub struct TokenIssuer {
    issuer: String,
    audience: String,
    lifetime_s: i64,
    keys: KeyRing,
    env: String,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime_s", &self.lifetime_s)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The JWT.
    pub access_token: String,
    /// Lifetime, in seconds.
    pub expires_in: i64,
    /// Granted scope.
    pub scope: ScopeSet,
}

impl TokenIssuer {
    /// An issuer writing `iss` and `aud` = `issuer`, valid for `lifetime_s` seconds, for the
    /// environment `env` (`<kind>/<name>`, [`Config::environment_id`](crate::Config::environment_id)),
    /// written as the `env` claim.
    pub fn new(issuer: String, lifetime_s: u64, keys: KeyRing, env: String) -> TokenIssuer {
        TokenIssuer {
            audience: issuer.clone(),
            issuer,
            lifetime_s: lifetime_s as i64,
            keys,
            env,
        }
    }

    /// The environment its tokens are for (`env`).
    pub fn env(&self) -> &str {
        &self.env
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The broker's keys.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Signs a token for `client_id` with `scope`.
    ///
    /// # Errors
    /// A message when no signing key is loaded or signing fails (not expected).
    pub fn issue(&self, client_id: &str, scope: &ScopeSet) -> Result<IssuedToken, String> {
        let key = self.keys.signing_key().ok_or("no signing key")?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: client_id.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_string(),
            iat: now,
            exp: now + self.lifetime_s,
            jti: uuid::Uuid::new_v4().to_string(),
            env: self.env.clone(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(key.kid.clone());
        let access_token =
            jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|e| e.to_string())?;
        Ok(IssuedToken {
            access_token,
            expires_in: self.lifetime_s,
            scope: scope.clone(),
        })
    }
}

/// Where an external issuer's keys come from.
#[derive(Clone)]
enum IssuerKeys {
    Static(Arc<Vec<ClientKey>>),
    Uri(String),
}

#[derive(Clone)]
struct External {
    issuer: String,
    audience: String,
    require_typ: bool,
    keys: IssuerKeys,
    max_token_lifetime_s: u64,
    client_id_claims: Vec<String>,
    scope_claims: Vec<String>,
}

/// How a token of one issuer is checked, chosen from its (unverified) `iss` and `kid`.
struct Route<'a> {
    audience: &'a str,
    require_typ: bool,
    key: DecodingKey,
    /// The algorithms pinned to `key`.
    algorithms: Vec<Algorithm>,
    /// The external issuer, or `None` for our own tokens.
    external: Option<&'a External>,
}

/// Verifies access tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    own_issuer: String,
    own_audience: String,
    /// The `env` our own tokens must carry.
    own_env: String,
    keys: KeyRing,
    external: Arc<Vec<External>>,
    jwks: JwksCache,
    registry: Registry,
    environment: EnvironmentKind,
    leeway_s: u64,
    /// Tokens whose signature and claims verified, until their `exp` (`auth::cache`).
    verified: Arc<TokenCache<Arc<Checked>>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("own_issuer", &self.own_issuer)
            .field("own_audience", &self.own_audience)
            .finish_non_exhaustive()
    }
}

/// A verifier could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
#[error("external issuer {issuer}: {message}")]
pub struct VerifierConfigError {
    /// The issuer.
    pub issuer: String,
    /// What is wrong.
    pub message: String,
}

impl TokenVerifier {
    /// A verifier for tokens of `issuer` (ours, keys in `keys`) and of `external` issuers.
    ///
    /// # Errors
    /// [`VerifierConfigError`] when an external issuer's JWK Set file is unreadable or invalid.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        issuer: &TokenIssuer,
        external: &[ExternalIssuer],
        jwks: JwksCache,
        registry: Registry,
        environment: EnvironmentKind,
        leeway_s: u64,
    ) -> Result<TokenVerifier, VerifierConfigError> {
        let mut ext = Vec::new();
        for e in external {
            let fail = |message: String| VerifierConfigError {
                issuer: e.issuer.clone(),
                message,
            };
            let keys = match (&e.jwks_file, &e.jwks_uri) {
                (Some(path), _) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|err| fail(format!("{}: {err}", path.display())))?;
                    let value: serde_json::Value =
                        serde_json::from_str(&text).map_err(|err| fail(err.to_string()))?;
                    let keys = crate::registry::validate::jwk_set(&value)
                        .map_err(|err| fail(err.to_string()))?;
                    IssuerKeys::Static(Arc::new(keys))
                }
                (None, Some(uri)) => IssuerKeys::Uri(uri.clone()),
                (None, None) => return Err(fail("needs jwks_file or jwks_uri".to_owned())),
            };
            ext.push(External {
                issuer: e.issuer.clone(),
                audience: e.audience.clone(),
                require_typ: e.require_typ,
                keys,
                max_token_lifetime_s: e.max_token_lifetime_s,
                client_id_claims: e.client_id_claims.clone(),
                scope_claims: e.scope_claims.clone(),
            });
        }
        Ok(TokenVerifier {
            own_issuer: issuer.issuer.clone(),
            own_audience: issuer.audience.clone(),
            own_env: issuer.env.clone(),
            keys: issuer.keys.clone(),
            external: Arc::new(ext),
            jwks,
            registry,
            environment,
            leeway_s,
            verified: Arc::new(TokenCache::new(TOKEN_CACHE_ENTRIES)),
        })
    }

    /// How many verified tokens are remembered now (at most
    /// [`TOKEN_CACHE_ENTRIES`]).
    pub fn remembered_tokens(&self) -> usize {
        self.verified.len()
    }

    /// The leeway applied to `exp` and `nbf`, in seconds.
    pub fn leeway_s(&self) -> u64 {
        self.leeway_s
    }

    /// Verifies `token` and resolves it against the registry's current state.
    ///
    /// # Errors
    /// A [`VerifyError`] naming the first rule the token breaks.
    pub async fn verify(&self, token: &str) -> Result<Principal, VerifyError> {
        let peeked = jwt::peek(token).map_err(VerifyError::Malformed)?;
        let iss = peeked
            .str_claim("iss")
            .ok_or_else(|| VerifyError::MissingClaim("iss".into()))?
            .to_owned();
        let route = if iss == self.own_issuer {
            let kid = peeked
                .header
                .kid
                .as_deref()
                .ok_or(VerifyError::UnknownKey)?;
            let key = self.keys.decoding_key(kid).ok_or(VerifyError::UnknownKey)?;
            Route {
                audience: &self.own_audience,
                require_typ: true,
                key,
                algorithms: vec![Algorithm::ES256],
                external: None,
            }
        } else if let Some(ext) = self.external.iter().find(|e| e.issuer == iss) {
            let kid = peeked.header.kid.as_deref();
            let key = match &ext.keys {
                IssuerKeys::Static(keys) => {
                    jwks::select(keys, kid).ok_or(VerifyError::UnknownKey)?
                }
                IssuerKeys::Uri(uri) => self.jwks.key(uri, kid).await.map_err(|e| match e {
                    jwks::JwksError::UnknownKey(_) => VerifyError::UnknownKey,
                    jwks::JwksError::Unavailable(_) => VerifyError::KeysUnavailable,
                })?,
            };
            Route {
                audience: &ext.audience,
                require_typ: ext.require_typ,
                key: key.decoding_key,
                algorithms: key.algorithms,
                external: Some(ext),
            }
        } else {
            return Err(VerifyError::UnknownIssuer);
        };
        if route.require_typ {
            let typ = peeked.header.typ.as_deref().unwrap_or("");
            if !(typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
                || typ.eq_ignore_ascii_case("application/at+jwt"))
            {
                return Err(VerifyError::WrongType);
            }
        }
        let alg = peeked.header.alg.as_str();
        let pinned = route
            .algorithms
            .iter()
            .find(|a| format!("{a:?}") == alg)
            .copied();
        let Some(alg) = pinned else {
            return Err(VerifyError::AlgorithmNotAllowed(
                alg.chars().take(16).collect(),
            ));
        };
        // Only from here on are claims trusted: the signature, `iss`, `aud`, `exp` and `nbf`
        // have been checked by `jsonwebtoken` with the key we chose.
        // A token verified before (same bytes, so same `kid`, `alg`, `iss` and `aud`, and its
        // key still in the set, looked up above) is not checked again before its `exp`: what
        // its claims gave is remembered (the registry decides below, every time).
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let cache_key = TokenCache::<Arc<Checked>>::key(token);
        let checked = match self.verified.get(&cache_key, now) {
            Some(checked) => checked,
            None => {
                let claims = self.check(token, &route.key, alg, &iss, route.audience)?;
                let checked = Arc::new(self.read_claims(&claims, route.external)?);
                self.verified
                    .insert(cache_key, claims.exp, checked.clone(), now);
                checked
            }
        };
        let client = self
            .registry
            .client(&checked.client_id)
            .ok_or(VerifyError::UnknownClient)?;
        if client.kind != self.environment {
            return Err(VerifyError::WrongEnvironment);
        }
        if !client.active {
            return Err(VerifyError::ClientInactive);
        }
        Ok(Principal {
            client_id: checked.client_id.clone(),
            application_id: client.application_id.clone(),
            kind: client.kind,
            scope: checked.scope.clone(),
            expires_at: checked.expires_at,
            issuer: iss,
            token_id: checked.token_id.clone(),
            issued_at: checked.issued_at,
        })
    }

    /// What a token's verified claims give: the client ID and scope (by our rules or the
    /// external issuer's), `exp`, `jti` and `iat`. Our own tokens must name this environment;
    /// an external issuer's must not live longer than its `max_token_lifetime_s`.
    fn read_claims(
        &self,
        claims: &VerifiedClaims,
        external: Option<&External>,
    ) -> Result<Checked, VerifyError> {
        let (client_id, scope) = match external {
            None => {
                // Our own token is valid only in the environment that issued it.
                let env = claims.other.get("env").and_then(Value::as_str);
                if env != Some(self.own_env.as_str()) {
                    return Err(VerifyError::OtherEnvironment {
                        named: env.unwrap_or("").chars().take(64).collect(),
                        expected: self.own_env.clone(),
                    });
                }
                (
                    client_id_claim(&claims.other, OWN_CLIENT_ID_CLAIMS)?,
                    scope_claim(&claims.other, OWN_SCOPE_CLAIMS)?,
                )
            }
            Some(ext) => {
                // The time left only shrinks: a token that passes now passes later.
                self.check_lifetime(claims, ext.max_token_lifetime_s)?;
                (
                    client_id_claim(&claims.other, &ext.client_id_claims)?,
                    scope_claim(&claims.other, &ext.scope_claims)?,
                )
            }
        };
        let expires_at = Timestamp::from_unix_seconds(claims.exp)
            .map_err(|_| VerifyError::Malformed("exp is out of range".into()))?;
        Ok(Checked {
            client_id,
            scope: Arc::new(scope),
            expires_at,
            token_id: claims
                .other
                .get("jti")
                .and_then(Value::as_str)
                .map(|j| j.chars().take(128).collect()),
            issued_at: claims
                .other
                .get("iat")
                .and_then(Value::as_i64)
                .and_then(|s| Timestamp::from_unix_seconds(s).ok()),
        })
    }

    /// Refuses a token whose lifetime (`exp - iat`, when it has `iat`) or remaining life
    /// (`exp - now`, beyond the leeway for a clock ahead of ours) exceeds `max_s`.
    fn check_lifetime(&self, claims: &VerifiedClaims, max_s: u64) -> Result<(), VerifyError> {
        let max = i64::try_from(max_s).unwrap_or(i64::MAX);
        let leeway = i64::try_from(self.leeway_s).unwrap_or(i64::MAX);
        let iat = match claims.other.get("iat") {
            None => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| {
                VerifyError::Malformed("the `iat` claim must be a whole number of seconds".into())
            })?),
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let lifetime_too_long = iat.is_some_and(|iat| claims.exp.saturating_sub(iat) > max);
        let remaining_too_long = claims.exp.saturating_sub(now) > max.saturating_add(leeway);
        if lifetime_too_long || remaining_too_long {
            return Err(VerifyError::LifetimeTooLong { max_s });
        }
        Ok(())
    }

    fn check(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
        iss: &str,
        aud: &str,
    ) -> Result<VerifiedClaims, VerifyError> {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_s;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_audience(&[aud]);
        v.set_issuer(&[iss]);
        v.required_spec_claims = ["exp", "iss", "aud"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<HashSet<_>>();
        jsonwebtoken::decode::<VerifiedClaims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(map_jwt_error)
    }
}

/// The client ID: the first of `names` present in the verified `claims`, which must be a
/// non-empty string (a present claim of another type is refused, not skipped).
fn client_id_claim<S: AsRef<str>>(
    claims: &Map<String, Value>,
    names: &[S],
) -> Result<String, VerifyError> {
    for name in names.iter().map(AsRef::as_ref) {
        match claims.get(name) {
            None => {}
            Some(Value::String(id)) if !id.is_empty() => return Ok(id.clone()),
            Some(_) => {
                return Err(VerifyError::Malformed(format!(
                    "the `{name}` claim (the client ID) must be a non-empty string"
                )));
            }
        }
    }
    let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    Err(VerifyError::MissingClaim(names.join(",")))
}

/// The granted scope: the first of `names` present in the verified `claims`, the others
/// ignored (never merged, so they cannot widen the grant). A string is space-delimited; an
/// array holds one scope token per element. None present: the empty scope.
fn scope_claim<S: AsRef<str>>(
    claims: &Map<String, Value>,
    names: &[S],
) -> Result<ScopeSet, VerifyError> {
    let Some((name, value)) = names
        .iter()
        .map(AsRef::as_ref)
        .find_map(|name| claims.get(name).map(|value| (name, value)))
    else {
        return Ok(ScopeSet::default());
    };
    let wrong_type = || {
        VerifyError::Malformed(format!(
            "the `{name}` claim (the scope) must be a string or an array of strings"
        ))
    };
    match value {
        Value::String(scope) => ScopeSet::parse(scope)
            .map_err(|e| VerifyError::Malformed(format!("the `{name}` claim: {e}"))),
        Value::Array(items) => {
            let mut set = ScopeSet::default();
            for (i, item) in items.iter().enumerate() {
                let token = item.as_str().ok_or_else(wrong_type)?;
                // One element is one scope token: a space would smuggle in a second.
                if token.is_empty() || token.contains(' ') {
                    return Err(VerifyError::Malformed(format!(
                        "element {} of the `{name}` claim must be one scope token, without spaces",
                        i + 1
                    )));
                }
                let parsed = ScopeSet::parse(token).map_err(|e| {
                    VerifyError::Malformed(format!("element {} of the `{name}` claim: {e}", i + 1))
                })?;
                parsed.iter().cloned().for_each(|scope| set.insert(scope));
            }
            Ok(set)
        }
        _ => Err(wrong_type()),
    }
}

/// Maps a `jsonwebtoken` failure to our reasons.
pub(crate) fn map_jwt_error(e: jsonwebtoken::errors::Error) -> VerifyError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => VerifyError::Expired,
        K::ImmatureSignature => VerifyError::NotYetValid,
        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) => VerifyError::BadSignature,
        K::InvalidAudience => VerifyError::WrongAudience,
        K::InvalidIssuer => VerifyError::UnknownIssuer,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            VerifyError::AlgorithmNotAllowed(String::new())
        }
        K::MissingRequiredClaim(c) => VerifyError::MissingClaim(c.clone()),
        K::InvalidClaimFormat(c) => VerifyError::Malformed(format!("claim {c} has the wrong type")),
        K::Json(err) => {
            let msg = err.to_string();
            match msg
                .strip_prefix("missing field `")
                .and_then(|r| r.split('`').next())
            {
                Some(field) => VerifyError::MissingClaim(field.to_owned()),
                None => VerifyError::Malformed("the claims do not fit an access token".to_owned()),
            }
        }
        _ => VerifyError::Malformed("the token could not be decoded".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn the_first_client_id_claim_present_wins() {
        let names = ["client_id", "azp", "appid", "cid"];
        let c = claims(json!({"appid": "b", "azp": "a", "cid": "c"}));
        assert_eq!(client_id_claim(&c, &names), Ok("a".to_owned()));
        let c = claims(json!({"azp": 7, "appid": "b"}));
        assert!(matches!(
            client_id_claim(&c, &names),
            Err(VerifyError::Malformed(_))
        ));
        let e = client_id_claim(&claims(json!({"sub": "x"})), &names).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the token has none of the claims `client_id`, `azp`, `appid`, `cid`"
        );
    }

    #[test]
    fn only_the_first_scope_claim_present_is_read() {
        let names = ["scope", "scp", "roles"];
        let c = claims(json!({"scp": ["subscribe:a.>", "openid"], "roles": ["publish:>"]}));
        assert_eq!(
            scope_claim(&c, &names).unwrap().to_string(),
            "subscribe:a.> openid"
        );
        let c = claims(json!({"scope": "subscribe:a.> openid", "roles": ["publish:>"]}));
        assert_eq!(
            scope_claim(&c, &names).unwrap().to_string(),
            "subscribe:a.> openid"
        );
        assert!(scope_claim(&claims(json!({})), &names).unwrap().is_empty());
        for bad in [json!(1), json!(true), json!({}), json!([1]), json!(["a b"])] {
            let c = claims(json!({ "roles": bad }));
            assert!(
                matches!(scope_claim(&c, &names), Err(VerifyError::Malformed(m)) if m.contains("`roles`")),
                "{bad}"
            );
        }
    }
}
