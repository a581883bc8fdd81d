//! Access tokens for Scopecast by the OAuth2 client credentials grant (RFC 6749 section 4.4),
//! authenticating with a client secret (`client_secret_basic`) or a private key
//! (`private_key_jwt`, RFC 7523, as in SMART Backend Services).
//!
//! [`TokenSource`] caches the token and fetches a new one before the old one expires. It trusts
//! the CAs of a [`TlsConfig`]: its own ([`TokenSource::with_tls`]), or else the one of the
//! connection it serves ([`ConnectOptions::tls`](crate::ConnectOptions::tls)), or else the
//! bundled and system roots.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, OnceCell};

use crate::tls::{CertificateError, TlsConfig, TlsError};

/// `client_assertion_type` for JWT client assertions (RFC 7523 section 2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of the client assertions we sign, in seconds (SMART: at most 5 minutes).
const ASSERTION_LIFETIME_S: i64 = 240;

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint could not be reached or answered with something unreadable.
    #[error("token endpoint {url}: {source}")]
    Http {
        /// The URL asked.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The token endpoint's certificate was refused; the message says what to do.
    #[error("token endpoint {url}: {source}")]
    Certificate {
        /// The URL asked.
        url: String,
        /// What is wrong with the certificate.
        #[source]
        source: CertificateError,
    },
    /// The TLS configuration could not be used.
    #[error("token endpoint: {0}")]
    Tls(#[from] TlsError),
    /// The authorization server refused (RFC 6749 section 5.2).
    #[error("token request refused ({status}): {error}: {description}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The OAuth2 `error` code: `invalid_client`, `unauthorized_client`, `invalid_scope`...
        error: String,
        /// The server's `error_description`.
        description: String,
    },
    /// The private key could not be read or used.
    #[error("private key: {0}")]
    Key(String),
}

impl TokenError {
    /// True when retrying later cannot help: the server refused the credentials or request, or
    /// the key or TLS configuration is unusable. A refused certificate is not permanent: the
    /// broker's may be replaced.
    pub fn is_permanent(&self) -> bool {
        matches!(self, TokenError::Refused { status, .. } if *status < 500)
            || matches!(self, TokenError::Key(_) | TokenError::Tls(_))
    }

    /// A transport error of a request to `url`, explained when it is a refused certificate.
    fn transport(url: &str, source: reqwest::Error) -> TokenError {
        match CertificateError::find(&source) {
            Some(certificate) => TokenError::Certificate {
                url: url.to_owned(),
                source: certificate,
            },
            None => TokenError::Http {
                url: url.to_owned(),
                source,
            },
        }
    }
}

/// An access token and what came with it.
#[derive(Clone)]
pub struct AccessToken {
    /// The bearer token (a JWT). Not shown by `Debug`.
    pub access_token: String,
    /// The granted scope, space-separated.
    pub scope: String,
    /// Lifetime when issued, in seconds.
    pub expires_in: u64,
    /// When it was received (monotonic clock).
    pub received_at: Instant,
}

impl AccessToken {
    /// Time left before it expires (zero when expired).
    pub fn remaining(&self) -> Duration {
        Duration::from_secs(self.expires_in).saturating_sub(self.received_at.elapsed())
    }

    /// True when less than a fifth of its lifetime (at most 60 s) remains: time to refresh.
    pub fn needs_refresh(&self) -> bool {
        let margin = Duration::from_secs((self.expires_in / 5).min(60));
        self.remaining() <= margin
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("access_token", &"<redacted>")
            .field("scope", &self.scope)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// A private key for `private_key_jwt`, with its pinned algorithm and `kid`.
#[derive(Clone)]
pub struct PrivateKey {
    algorithm: Algorithm,
    kid: String,
    key: EncodingKey,
    /// The public JWK, to register with the broker.
    public_jwk: serde_json::Value,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 thumbprint over the required members, in lexicographic order.
fn thumbprint(canonical: &str) -> String {
    b64(&Sha256::digest(canonical.as_bytes()))
}

fn ec_jwk(crv: &str, x: &[u8], y: &[u8]) -> (String, serde_json::Value) {
    let (x, y) = (b64(x), b64(y));
    let kid = thumbprint(&format!(
        r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#
    ));
    (
        kid.clone(),
        serde_json::json!({"kty": "EC", "crv": crv, "x": x, "y": y, "kid": kid}),
    )
}

impl PrivateKey {
    /// Reads a PEM private key: PKCS#8 (`PRIVATE KEY`) for EC P-256 (ES256), P-384 (ES384) or
    /// RSA (RS384), SEC1 (`EC PRIVATE KEY`), or PKCS#1 (`RSA PRIVATE KEY`). The `kid` defaults to the RFC 7638
    /// thumbprint of the public key; change it with [`PrivateKey::with_kid`].
    ///
    /// # Errors
    /// [`TokenError::Key`] when the PEM holds no supported private key.
    pub fn from_pem(pem: &str) -> Result<PrivateKey, TokenError> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        // SEC1 `EC PRIVATE KEY` (what `openssl ecparam -genkey` writes): re-encode as PKCS#8.
        if pem.contains("BEGIN EC PRIVATE KEY") {
            let pkcs8 = if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
                k.to_pkcs8_pem(LineEnding::LF).map(|p| p.to_string())
            } else if let Ok(k) = p384::SecretKey::from_sec1_pem(pem) {
                k.to_pkcs8_pem(LineEnding::LF).map(|p| p.to_string())
            } else {
                return Err(TokenError::Key(
                    "an EC PRIVATE KEY that is not on P-256 or P-384".to_owned(),
                ));
            };
            return PrivateKey::from_pem(&pkcs8.map_err(|e| TokenError::Key(e.to_string()))?);
        }
        if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem) {
            let p = k.public_key().to_encoded_point(false);
            let (kid, jwk) = ec_jwk(
                "P-256",
                p.x().map(|v| &v[..]).unwrap_or_default(),
                p.y().map(|v| &v[..]).unwrap_or_default(),
            );
            let key = EncodingKey::from_ec_pem(pem.as_bytes())
                .map_err(|e| TokenError::Key(e.to_string()))?;
            return Ok(PrivateKey {
                algorithm: Algorithm::ES256,
                kid,
                key,
                public_jwk: jwk,
            });
        }
        if let Ok(k) = p384::SecretKey::from_pkcs8_pem(pem) {
            let p = k.public_key().to_encoded_point(false);
            let (kid, jwk) = ec_jwk(
                "P-384",
                p.x().map(|v| &v[..]).unwrap_or_default(),
                p.y().map(|v| &v[..]).unwrap_or_default(),
            );
            let key = EncodingKey::from_ec_pem(pem.as_bytes())
                .map_err(|e| TokenError::Key(e.to_string()))?;
            return Ok(PrivateKey {
                algorithm: Algorithm::ES384,
                kid,
                key,
                public_jwk: jwk,
            });
        }
        let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem));
        if let Ok(k) = rsa {
            let (n, e) = (b64(&k.n().to_bytes_be()), b64(&k.e().to_bytes_be()));
            let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
            let jwk = serde_json::json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "alg": "RS384"});
            let key = EncodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|e| TokenError::Key(e.to_string()))?;
            return Ok(PrivateKey {
                algorithm: Algorithm::RS384,
                kid,
                key,
                public_jwk: jwk,
            });
        }
        Err(TokenError::Key(
            "no EC P-256, EC P-384 or RSA private key in this PEM".to_owned(),
        ))
    }

    /// Reads a private JWK (RFC 7517): EC P-256/P-384 with `d`, or RSA with `d`, `p`, `q`.
    /// Its `kid` and `alg` are used when present.
    ///
    /// # Errors
    /// [`TokenError::Key`] when it is not a supported private JWK.
    pub fn from_jwk(jwk: &str) -> Result<PrivateKey, TokenError> {
        let v: serde_json::Value =
            serde_json::from_str(jwk).map_err(|e| TokenError::Key(format!("not JSON: {e}")))?;
        let pem = match (v["kty"].as_str(), v["crv"].as_str()) {
            (Some("EC"), Some("P-256")) => p256::SecretKey::from_jwk_str(jwk)
                .map_err(|e| TokenError::Key(e.to_string()))?
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| TokenError::Key(e.to_string()))?
                .to_string(),
            (Some("EC"), Some("P-384")) => p384::SecretKey::from_jwk_str(jwk)
                .map_err(|e| TokenError::Key(e.to_string()))?
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| TokenError::Key(e.to_string()))?
                .to_string(),
            (Some("RSA"), _) => {
                let part = |name: &str| -> Result<rsa::BigUint, TokenError> {
                    let s = v[name]
                        .as_str()
                        .ok_or_else(|| TokenError::Key(format!("RSA JWK lacks `{name}`")))?;
                    let bytes = URL_SAFE_NO_PAD
                        .decode(s)
                        .map_err(|_| TokenError::Key(format!("`{name}` is not base64url")))?;
                    Ok(rsa::BigUint::from_bytes_be(&bytes))
                };
                let key = rsa::RsaPrivateKey::from_components(
                    part("n")?,
                    part("e")?,
                    part("d")?,
                    vec![part("p")?, part("q")?],
                )
                .map_err(|e| TokenError::Key(e.to_string()))?;
                key.to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| TokenError::Key(e.to_string()))?
                    .to_string()
            }
            _ => {
                return Err(TokenError::Key(
                    "a private JWK must be EC P-256, EC P-384 or RSA".to_owned(),
                ));
            }
        };
        let mut key = PrivateKey::from_pem(&pem)?;
        if let Some(kid) = v["kid"].as_str() {
            key = key.with_kid(kid);
        }
        if let Some(alg) = v["alg"].as_str() {
            key.algorithm = match (key.algorithm, alg) {
                (Algorithm::RS384 | Algorithm::RS256, "RS256") => Algorithm::RS256,
                (Algorithm::RS384 | Algorithm::RS256, "RS384") => Algorithm::RS384,
                (a, _) if format!("{a:?}") == alg => a,
                _ => {
                    return Err(TokenError::Key(format!(
                        "`alg` {alg:?} does not fit this key"
                    )));
                }
            };
            key.public_jwk["alg"] = serde_json::json!(alg);
        }
        Ok(key)
    }

    /// Uses `kid` in assertions (it must match the `kid` registered with the broker).
    pub fn with_kid(mut self, kid: &str) -> PrivateKey {
        kid.clone_into(&mut self.kid);
        self.public_jwk["kid"] = serde_json::json!(kid);
        self
    }

    /// The `kid` used in assertions.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, to register with `scopecast app set-keys`.
    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.public_jwk
    }

    /// Signs a client assertion for `client_id` addressed to `audience` (the token endpoint).
    ///
    /// # Errors
    /// [`TokenError::Key`] when signing fails.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<String, TokenError> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            sub: &'a str,
            aud: &'a str,
            exp: i64,
            iat: i64,
            jti: String,
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        let claims = Claims {
            iss: client_id,
            sub: client_id,
            aud: audience,
            exp: now + ASSERTION_LIFETIME_S,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError::Key(e.to_string()))
    }
}

/// How the client authenticates.
#[derive(Clone)]
enum Credential {
    Secret {
        client_id: String,
        client_secret: String,
    },
    PrivateKey {
        client_id: String,
        key: PrivateKey,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Gets and caches access tokens from a Scopecast broker's token endpoint. Cheap to clone;
/// clones share the cache.
#[derive(Clone)]
pub struct TokenSource {
    /// The CAs to trust; `None`: those of the connection it serves, or the default.
    tls: Option<TlsConfig>,
    /// Made with `tls` at the first request (building it may fail, and `new` cannot); shared
    /// by clones, replaced by `with_tls`.
    http: Arc<OnceCell<reqwest::Client>>,
    base_url: String,
    credential: Credential,
    scope: Option<String>,
    cache: Arc<Mutex<Option<AccessToken>>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("base_url", &self.base_url)
            .field("scope", &self.scope)
            .finish()
    }
}

impl TokenSource {
    fn new(base_url: &str, credential: Credential) -> TokenSource {
        TokenSource {
            tls: None,
            http: Arc::default(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            credential,
            scope: None,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// Authenticates with a client secret (HTTP Basic, RFC 6749 section 2.3.1).
    pub fn client_secret(base_url: &str, client_id: &str, client_secret: &str) -> TokenSource {
        TokenSource::new(
            base_url,
            Credential::Secret {
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
            },
        )
    }

    /// Authenticates with a signed JWT assertion (`private_key_jwt`, RFC 7523).
    pub fn private_key(base_url: &str, client_id: &str, key: PrivateKey) -> TokenSource {
        TokenSource::new(
            base_url,
            Credential::PrivateKey {
                client_id: client_id.to_owned(),
                key,
            },
        )
    }

    /// Asks for `scope` (narrower than the application's ceiling) instead of all of it.
    pub fn with_scope(mut self, scope: &str) -> TokenSource {
        self.scope = Some(scope.to_owned());
        self
    }

    /// Trusts the CAs of `tls` for the token endpoint (by default: those of the connection it is
    /// given to with [`ConnectOptions::token_source`](crate::ConnectOptions::token_source), or
    /// else the bundled and system roots). Clones made before share the token cache but keep
    /// their own trust.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use scopecast_client::{TlsConfig, TokenSource};
    /// let tls = TlsConfig::new().add_root_certificates("/etc/hospital/ca.pem")?;
    /// let tokens = TokenSource::client_secret("https://scopecast.hospital.example", "ID", "SECRET")
    ///     .with_tls(tls);
    /// let token = tokens.fetch().await?;
    /// # Ok(()) }
    /// ```
    pub fn with_tls(mut self, tls: TlsConfig) -> TokenSource {
        self.tls = Some(tls);
        self.http = Arc::default();
        self
    }

    /// This source, trusting `tls` unless it was given its own.
    pub(crate) fn with_tls_unless_set(self, tls: &TlsConfig) -> TokenSource {
        if self.tls.is_some() {
            self
        } else {
            self.with_tls(tls.clone())
        }
    }

    /// The HTTP client, made at the first request.
    async fn http(&self) -> Result<&reqwest::Client, TlsError> {
        self.http
            .get_or_try_init(|| async {
                self.tls
                    .clone()
                    .unwrap_or_default()
                    .http_client(Duration::from_secs(30))
            })
            .await
    }

    /// The client ID.
    pub fn client_id(&self) -> &str {
        match &self.credential {
            Credential::Secret { client_id, .. } | Credential::PrivateKey { client_id, .. } => {
                client_id
            }
        }
    }

    /// A valid token: the cached one, or a new one when it is close to expiry.
    ///
    /// # Errors
    /// [`TokenError`] when a new token is needed and cannot be had.
    pub async fn token(&self) -> Result<AccessToken, TokenError> {
        let mut cache = self.cache.lock().await;
        if let Some(t) = cache.as_ref()
            && !t.needs_refresh()
        {
            return Ok(t.clone());
        }
        let fresh = self.fetch().await?;
        *cache = Some(fresh.clone());
        Ok(fresh)
    }

    /// A new token from the token endpoint, which replaces the cached one: for a refresh the
    /// broker asked for (`token_expiring`) or a token the broker refused.
    ///
    /// # Errors
    /// [`TokenError`] when the endpoint cannot be reached or refuses; the cache is kept then.
    pub async fn refresh(&self) -> Result<AccessToken, TokenError> {
        let fresh = self.fetch().await?;
        *self.cache.lock().await = Some(fresh.clone());
        Ok(fresh)
    }

    /// A new token from the token endpoint, bypassing the cache.
    ///
    /// # Errors
    /// [`TokenError`] when the endpoint cannot be reached or refuses.
    pub async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let url = format!("{}/oauth2/token", self.base_url);
        let mut form: Vec<(&str, String)> = vec![("grant_type", "client_credentials".to_owned())];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.clone()));
        }
        let http = self.http().await?;
        let mut req = http.post(&url);
        match &self.credential {
            Credential::Secret {
                client_id,
                client_secret,
            } => {
                // RFC 6749 section 2.3.1: form-encode each part before Basic.
                let enc = |s: &str| form_urlencoded_component(s);
                req = req.basic_auth(enc(client_id), Some(enc(client_secret)));
            }
            Credential::PrivateKey { client_id, key } => {
                let audience = self
                    .token_endpoint(http)
                    .await
                    .unwrap_or_else(|_| url.clone());
                form.push(("client_assertion_type", JWT_BEARER.to_owned()));
                form.push(("client_assertion", key.assertion(client_id, &audience)?));
            }
        }
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_urlencoded_component(v)))
            .collect::<Vec<_>>()
            .join("&");
        let resp = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|source| TokenError::transport(&url, source))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| TokenError::transport(&url, source))?;
        if status != 200 {
            let err: ErrorResponse = serde_json::from_slice(&bytes).unwrap_or(ErrorResponse {
                error: "server_error".to_owned(),
                error_description: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            });
            return Err(TokenError::Refused {
                status,
                error: err.error,
                description: err.error_description,
            });
        }
        let t: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| TokenError::Refused {
            status,
            error: "invalid_response".to_owned(),
            description: e.to_string(),
        })?;
        Ok(AccessToken {
            access_token: t.access_token,
            scope: t.scope.unwrap_or_default(),
            expires_in: t.expires_in.unwrap_or(300),
            received_at: Instant::now(),
        })
    }

    /// The token endpoint URL from the server's RFC 8414 metadata: assertions name it as `aud`.
    async fn token_endpoint(&self, http: &reqwest::Client) -> Result<String, reqwest::Error> {
        #[derive(Deserialize)]
        struct Metadata {
            token_endpoint: String,
        }
        let url = format!("{}/.well-known/oauth-authorization-server", self.base_url);
        let m: Metadata = http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(m.token_endpoint)
    }
}

/// `application/x-www-form-urlencoded` encoding of one component.
fn form_urlencoded_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_keys_give_their_algorithm_and_a_thumbprint_kid() {
        let secret = p256::SecretKey::from_slice(&[3u8; 32]).unwrap();
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(key.algorithm, Algorithm::ES256);
        assert_eq!(key.public_jwk()["kid"], key.kid());
        assert!(key.public_jwk().get("d").is_none());
        let jwt = key.assertion("client", "http://x/oauth2/token").unwrap();
        assert_eq!(jwt.split('.').count(), 3);
        assert!(PrivateKey::from_pem("not a key").is_err());
        // The SEC1 form of the same key gives the same key id.
        let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
        assert_eq!(PrivateKey::from_pem(&sec1).unwrap().kid(), key.kid());
    }

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(
            form_urlencoded_component("a b:c/d+é"),
            "a+b%3Ac%2Fd%2B%C3%A9"
        );
    }

    #[test]
    fn token_debug_hides_the_token() {
        let t = AccessToken {
            access_token: "secret.jwt.value".into(),
            scope: String::new(),
            expires_in: 300,
            received_at: Instant::now(),
        };
        assert!(!format!("{t:?}").contains("secret.jwt"));
        assert!(!t.needs_refresh());
    }
}
