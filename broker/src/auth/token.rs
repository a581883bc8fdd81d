//! Access tokens: issuing RFC 9068 JWTs, and verifying them (ours and external issuers') into
//! a [`Principal`] or a typed [`VerifyError`].
//!
//! Verification rules (DESIGN section 4): the algorithm is pinned by the key chosen by `kid`,
//! never taken from the token alone, so `none` and symmetric algorithms are refused; `exp`,
//! `iss` and `aud` are required; `nbf` is checked; the leeway is our explicit setting; and the
//! `client_id` must be registered, of this environment's kind, and active.

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use scopecast_protocol::{Reason, ScopeSet, Timestamp};
use serde::{Deserialize, Serialize};

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
    /// A required claim is absent.
    #[error("the token has no `{0}` claim")]
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
    /// An issuer's keys could not be fetched and none are cached.
    #[error("the issuer's keys are unavailable")]
    KeysUnavailable,
}

impl VerifyError {
    /// The protocol reason to report (PROTOCOL.md section 6).
    pub fn reason(&self) -> Reason {
        match self {
            VerifyError::Expired => Reason::TokenExpired,
            VerifyError::WrongEnvironment | VerifyError::ClientInactive => Reason::ClientInactive,
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
            VerifyError::KeysUnavailable => "keys_unavailable",
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
}

/// Claims we read from any access token after its signature verified.
#[derive(Deserialize)]
struct VerifiedClaims {
    exp: i64,
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// Issues access tokens signed with the broker's current key.
#[derive(Clone)]
pub struct TokenIssuer {
    issuer: String,
    audience: String,
    lifetime_s: i64,
    keys: KeyRing,
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
    /// An issuer writing `iss` and `aud` = `issuer`, valid for `lifetime_s` seconds.
    pub fn new(issuer: String, lifetime_s: u64, keys: KeyRing) -> TokenIssuer {
        TokenIssuer {
            audience: issuer.clone(),
            issuer,
            lifetime_s: lifetime_s as i64,
            keys,
        }
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
}

/// Verifies access tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    own_issuer: String,
    own_audience: String,
    keys: KeyRing,
    external: Arc<Vec<External>>,
    jwks: JwksCache,
    registry: Registry,
    environment: EnvironmentKind,
    leeway_s: u64,
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
            });
        }
        Ok(TokenVerifier {
            own_issuer: issuer.issuer.clone(),
            own_audience: issuer.audience.clone(),
            keys: issuer.keys.clone(),
            external: Arc::new(ext),
            jwks,
            registry,
            environment,
            leeway_s,
        })
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
        let (audience, require_typ, key, algorithms): (&str, bool, DecodingKey, Vec<Algorithm>) =
            if iss == self.own_issuer {
                let kid = peeked
                    .header
                    .kid
                    .as_deref()
                    .ok_or(VerifyError::UnknownKey)?;
                let key = self.keys.decoding_key(kid).ok_or(VerifyError::UnknownKey)?;
                (&self.own_audience, true, key, vec![Algorithm::ES256])
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
                (
                    &ext.audience,
                    ext.require_typ,
                    key.decoding_key,
                    key.algorithms,
                )
            } else {
                return Err(VerifyError::UnknownIssuer);
            };
        if require_typ {
            let typ = peeked.header.typ.as_deref().unwrap_or("");
            if !(typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
                || typ.eq_ignore_ascii_case("application/at+jwt"))
            {
                return Err(VerifyError::WrongType);
            }
        }
        let alg = peeked.header.alg.as_str();
        let pinned = algorithms.iter().find(|a| format!("{a:?}") == alg).copied();
        let Some(alg) = pinned else {
            return Err(VerifyError::AlgorithmNotAllowed(
                alg.chars().take(16).collect(),
            ));
        };
        let claims = self.check(token, &key, alg, &iss, audience)?;
        let client_id = claims
            .client_id
            .ok_or_else(|| VerifyError::MissingClaim("client_id".into()))?;
        let scope = ScopeSet::parse(claims.scope.as_deref().unwrap_or(""))
            .map_err(|e| VerifyError::Malformed(format!("scope: {e}")))?;
        let expires_at = Timestamp::from_unix_seconds(claims.exp)
            .map_err(|_| VerifyError::Malformed("exp is out of range".into()))?;
        let client = self
            .registry
            .client(&client_id)
            .ok_or(VerifyError::UnknownClient)?;
        if client.kind != self.environment {
            return Err(VerifyError::WrongEnvironment);
        }
        if !client.active {
            return Err(VerifyError::ClientInactive);
        }
        Ok(Principal {
            client_id,
            application_id: client.application_id.clone(),
            kind: client.kind,
            scope: Arc::new(scope),
            expires_at,
            issuer: iss,
        })
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
