//! Client authentication at the token endpoint (RFC 6749 section 2.3): `client_secret_basic`,
//! `client_secret_post`, and `private_key_jwt` (RFC 7523 section 2.2 and 3, SMART Backend
//! Services): assertion `iss` = `sub` = client_id, `aud` = the token endpoint URL, `exp` at
//! most 5 minutes ahead, `jti` never reused before its `exp`, RS256/RS384/ES256/ES384 with the
//! key chosen by `kid` and the algorithm pinned by that key.

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::cache::{SECRET_CACHE_ENTRIES, SecretCache};
use super::jwks::{self, JwksCache};
use super::jwt;
use super::secret;
use crate::registry::{ClientEntry, ClientKeys, Registry};

/// `client_assertion_type` for JWT client assertions (RFC 7523 section 2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest an assertion may live, from now to its `exp`, in seconds.
pub const MAX_ASSERTION_LIFETIME_S: i64 = 300;
/// Algorithms accepted for client assertions.
pub const ASSERTION_ALGS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// How the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// HTTP Basic with the client ID and secret.
    SecretBasic,
    /// `client_id` and `client_secret` in the form body.
    SecretPost,
    /// A signed JWT assertion.
    PrivateKeyJwt,
}

/// The credentials a token request carried.
#[derive(Debug)]
pub enum Credentials {
    /// A client ID and secret, by Basic or in the body.
    Secret {
        /// Which of the two.
        method: Method,
        /// The client ID.
        client_id: String,
        /// The secret; never logged.
        secret: String,
    },
    /// A JWT assertion.
    Assertion {
        /// The `client_id` form parameter, if given (must then match the assertion).
        client_id: Option<String>,
        /// The assertion.
        assertion: String,
    },
}

/// Why client authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The credentials are wrong: `invalid_client` (RFC 6749 section 5.2), with a message safe
    /// to return.
    #[error("{0}")]
    Invalid(String),
    /// Too many secret checks are running (each argon2id check takes about 19 MiB and tens of
    /// ms): `temporarily_unavailable`, retry shortly.
    #[error("too many client authentications in progress; retry shortly")]
    Busy,
}

/// Longest a token request waits for a secret-check slot.
const SECRET_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Deserialize)]
struct AssertionClaims {
    exp: i64,
    #[serde(default)]
    jti: Option<String>,
}

/// Authenticates clients at the token endpoint. Cheap to clone.
#[derive(Clone)]
pub struct ClientAuthenticator {
    registry: Registry,
    jwks: JwksCache,
    token_endpoint: String,
    leeway_s: u64,
    /// Bounds concurrent argon2id checks, so a flood of token requests cannot exhaust memory.
    secret_checks: Arc<tokio::sync::Semaphore>,
    /// Secrets that matched lately: a client asking again within minutes skips argon2id
    /// (`auth::cache`).
    matched: Arc<SecretCache>,
}

impl std::fmt::Debug for ClientAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuthenticator")
            .field("token_endpoint", &self.token_endpoint)
            .finish_non_exhaustive()
    }
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl ClientAuthenticator {
    /// An authenticator whose assertions must name `token_endpoint` as `aud`, running at most
    /// `max_secret_checks` argon2id checks at once.
    pub fn new(
        registry: Registry,
        jwks: JwksCache,
        token_endpoint: String,
        leeway_s: u64,
        max_secret_checks: usize,
    ) -> Self {
        ClientAuthenticator {
            registry,
            jwks,
            token_endpoint,
            leeway_s,
            secret_checks: Arc::new(tokio::sync::Semaphore::new(max_secret_checks.max(1))),
            matched: Arc::new(SecretCache::new(SECRET_CACHE_ENTRIES)),
        }
    }

    /// The token endpoint URL assertions must be addressed to.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// Authenticates the client. Activation and environment kind are the caller's to check
    /// (they are `unauthorized_client`, not `invalid_client`).
    ///
    /// # Errors
    /// [`AuthFailure`] with a message safe to return to the client.
    pub async fn authenticate(&self, creds: Credentials) -> Result<Arc<ClientEntry>, AuthFailure> {
        match creds {
            Credentials::Secret {
                client_id, secret, ..
            } => self.by_secret(&client_id, secret).await,
            Credentials::Assertion {
                client_id,
                assertion,
            } => self.by_assertion(client_id.as_deref(), &assertion).await,
        }
    }

    async fn by_secret(
        &self,
        client_id: &str,
        given: String,
    ) -> Result<Arc<ClientEntry>, AuthFailure> {
        let unknown = || AuthFailure::Invalid("unknown client or wrong secret".to_owned());
        // The same secret matched the same stored hash minutes ago: no argon2id run (a
        // rotated secret has another hash, so it is never found here).
        if let Some(c) = self.registry.client(client_id)
            && let Some(hash) = &c.secret_hash
            && self.matched.matched(client_id, &given, hash, now_s())
        {
            return Ok(c);
        }
        let _permit = tokio::time::timeout(SECRET_CHECK_WAIT, self.secret_checks.acquire())
            .await
            .map_err(|_| AuthFailure::Busy)?
            .map_err(|_| AuthFailure::Busy)?;
        let client = self.registry.client(client_id);
        // Hash even for unknown clients, so timing does not tell which client IDs exist.
        let hash = client
            .as_ref()
            .and_then(|c| c.secret_hash.clone())
            .unwrap_or_else(dummy_hash);
        let checked = tokio::task::spawn_blocking(move || {
            let ok = secret::verify_secret(&given, &hash);
            (ok, given, hash)
        })
        .await;
        let Ok((ok, given, hash)) = checked else {
            return Err(unknown());
        };
        match client {
            Some(c) if ok && c.secret_hash.is_some() => {
                self.matched.remember(client_id, &given, &hash, now_s());
                Ok(c)
            }
            _ => Err(unknown()),
        }
    }

    async fn by_assertion(
        &self,
        form_client_id: Option<&str>,
        assertion: &str,
    ) -> Result<Arc<ClientEntry>, AuthFailure> {
        let fail = |m: &str| AuthFailure::Invalid(format!("client assertion refused: {m}"));
        // One message whether the client ID is unknown or has no such key, so assertions do
        // not tell which client IDs exist.
        let no_key = "no registered key matches this client ID and `kid`";
        let peeked = jwt::peek(assertion).map_err(|e| fail(&e))?;
        let iss = peeked
            .str_claim("iss")
            .ok_or_else(|| fail("no `iss` claim"))?
            .to_owned();
        if peeked.str_claim("sub") != Some(iss.as_str()) {
            return Err(fail("`sub` must equal `iss` (the client ID)"));
        }
        if let Some(id) = form_client_id
            && id != iss
        {
            return Err(fail(
                "the `client_id` parameter differs from the assertion's `iss`",
            ));
        }
        let client = self.registry.client(&iss).ok_or_else(|| fail(no_key))?;
        let kid = peeked.header.kid.as_deref();
        let key = match &client.keys {
            ClientKeys::None => return Err(fail(no_key)),
            ClientKeys::Inline(keys) => jwks::select(keys, kid),
            ClientKeys::Uri(uri) => self.jwks.key(uri, kid).await.ok(),
        }
        .ok_or_else(|| fail(no_key))?;
        let alg = peeked.header.alg.as_str();
        let alg = key
            .algorithms
            .iter()
            .copied()
            .find(|a| format!("{a:?}") == alg && ASSERTION_ALGS.contains(a))
            .ok_or_else(|| fail("`alg` is not the algorithm registered for this key"))?;
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_s;
        v.validate_nbf = true;
        v.set_audience(&[&self.token_endpoint]);
        v.set_issuer(&[&iss]);
        v.sub = Some(iss.clone());
        v.required_spec_claims = ["exp", "iss", "sub", "aud"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<HashSet<_>>();
        let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key.decoding_key, &v)
            .map_err(|e| {
                use super::token::VerifyError as V;
                fail(match super::token::map_jwt_error(e) {
                    V::WrongAudience => "`aud` must be the token endpoint URL",
                    V::Expired => "the assertion has expired",
                    V::NotYetValid => "the assertion is not valid yet (`nbf`)",
                    V::BadSignature => "the signature does not verify with the registered key",
                    V::UnknownIssuer => "`iss` must be the client ID",
                    V::MissingClaim(c) if c == "exp" => "the assertion has no `exp` claim",
                    V::MissingClaim(c) if c == "aud" => "the assertion has no `aud` claim",
                    V::MissingClaim(_) => "the assertion lacks a required claim (`iss`, `sub`, `aud`, `exp`, `jti`)",
                    V::AlgorithmNotAllowed(_) => "`alg` is not the algorithm registered for this key",
                    _ => "the assertion's claims are malformed (`exp`, `nbf`, `iat` are integer seconds)",
                })
            })?
            .claims;
        let now = now_s();
        if claims.exp > now + MAX_ASSERTION_LIFETIME_S {
            return Err(fail("`exp` is more than 5 minutes ahead"));
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| fail("no usable `jti` claim"))?;
        // Remembered in the registry: for every node of a cluster, and across restarts
        // (RFC 7523 section 3: a `jti` may be used once). Only registered clients with valid
        // signatures get here, so only they add rows; rows go when their `exp` passes.
        match self
            .registry
            .remember_jti(&jti_key(&iss, &jti), claims.exp + self.leeway_s as i64, now)
            .await
        {
            Ok(true) => Ok(client),
            Ok(false) => Err(fail("`jti` was already used")),
            Err(e) => {
                tracing::warn!(error = %e, "cannot record a client assertion's jti");
                Err(AuthFailure::Busy)
            }
        }
    }
}

/// The registry's key of an assertion: hex SHA-256 of `client_id \0 jti` (a fixed length,
/// whatever the client put in `jti`, and text any database stores).
fn jti_key(client_id: &str, jti: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(client_id.as_bytes());
    h.update([0]);
    h.update(jti.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// An argon2id hash of a random secret nobody knows, made with the same parameters as real
/// ones, so refusing an unknown client costs as much time as refusing a wrong secret.
fn dummy_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        secret::new_secret()
            .and_then(|s| secret::hash_secret(&s))
            .unwrap_or_default()
    })
    .clone()
}
