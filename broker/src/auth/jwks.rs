//! JWK Sets fetched from URLs (client `jwks_uri`s and external issuers), cached by their
//! `Cache-Control: max-age` and re-fetched on an unknown `kid` at a bounded rate, so that a
//! storm of random `kid`s never becomes a storm of outbound requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;

use crate::registry::validate::{self, ClientKey};

/// Most bytes of a fetched JWK Set.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Cache lifetime when the response gives no usable `max-age`.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Longest cache lifetime honoured.
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Why no key could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The set (fresh or cached) has no key with that `kid`.
    #[error("no key with kid {0:?} in the JWK Set")]
    UnknownKey(String),
    /// The set could not be fetched and nothing is cached.
    #[error("the JWK Set could not be fetched: {0}")]
    Unavailable(String),
}

struct Fetched {
    keys: Vec<ClientKey>,
    expires: Instant,
}

#[derive(Default)]
struct Slot {
    current: ArcSwapOption<Fetched>,
    /// Held while fetching; holds the time of the last attempt. Concurrent misses wait for
    /// the one fetch in flight instead of starting their own.
    fetch: tokio::sync::Mutex<Option<Instant>>,
}

/// A cache of JWK Sets by URL. Cheap to clone.
#[derive(Clone)]
pub struct JwksCache {
    http: reqwest::Client,
    slots: Arc<DashMap<String, Arc<Slot>>>,
    min_refresh: Duration,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("urls", &self.slots.len())
            .field("min_refresh", &self.min_refresh)
            .finish_non_exhaustive()
    }
}

fn max_age(headers: &reqwest::header::HeaderMap) -> Duration {
    let Some(cc) = headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    else {
        return DEFAULT_MAX_AGE;
    };
    let mut age = DEFAULT_MAX_AGE;
    for directive in cc.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Duration::ZERO;
        }
        if let Some(v) = directive.strip_prefix("max-age=")
            && let Ok(s) = v.trim_matches('"').parse::<u64>()
        {
            age = Duration::from_secs(s);
        }
    }
    age.min(MAX_MAX_AGE)
}

impl JwksCache {
    /// A cache whose fetches time out after `timeout` and that re-fetches one URL at most once
    /// per `min_refresh`.
    pub fn new(timeout: Duration, min_refresh: Duration) -> JwksCache {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        JwksCache {
            http,
            slots: Arc::new(DashMap::new()),
            min_refresh,
        }
    }

    /// The key `kid` of the set at `uri`, or the only key when `kid` is `None` and the set
    /// has exactly one.
    ///
    /// # Errors
    /// [`JwksError`] when the key is not there after at most one (rate-bounded) re-fetch.
    pub async fn key(&self, uri: &str, kid: Option<&str>) -> Result<ClientKey, JwksError> {
        let slot = self.slots.entry(uri.to_owned()).or_default().clone();
        if let Some(found) = Self::lookup(&slot, kid, true) {
            return Ok(found);
        }
        let mut last = slot.fetch.lock().await;
        // Another task may have fetched while we waited.
        if let Some(found) = Self::lookup(&slot, kid, true) {
            return Ok(found);
        }
        let may_fetch = last.is_none_or(|t| t.elapsed() >= self.min_refresh);
        if may_fetch {
            *last = Some(Instant::now());
            match self.fetch(uri).await {
                Ok(fetched) => slot.current.store(Some(Arc::new(fetched))),
                Err(e) => {
                    tracing::warn!(jwks_uri = %uri, error = %e, "JWK Set fetch failed; using cached keys");
                    if slot.current.load().is_none() {
                        return Err(JwksError::Unavailable(e));
                    }
                }
            }
        }
        Self::lookup(&slot, kid, false)
            .ok_or_else(|| JwksError::UnknownKey(kid.unwrap_or("").to_owned()))
    }

    fn lookup(slot: &Slot, kid: Option<&str>, fresh_only: bool) -> Option<ClientKey> {
        let current = slot.current.load();
        let fetched = current.as_ref()?;
        if fresh_only && fetched.expires <= Instant::now() {
            return None;
        }
        select(&fetched.keys, kid)
    }

    async fn fetch(&self, uri: &str) -> Result<Fetched, String> {
        let resp = self
            .http
            .get(uri)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        let age = max_age(resp.headers());
        // Read in chunks with a cap: a server that sends no Content-Length cannot make us
        // buffer more than MAX_JWKS_BYTES.
        let mut resp = resp;
        let mut body: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        let keys = validate::jwk_set(&value).map_err(|e| e.to_string())?;
        Ok(Fetched {
            keys,
            expires: Instant::now() + age,
        })
    }
}

/// The key named `kid`, or the only key when `kid` is absent.
pub fn select(keys: &[ClientKey], kid: Option<&str>) -> Option<ClientKey> {
    match kid {
        Some(kid) => keys.iter().find(|k| k.kid == kid).cloned(),
        None if keys.len() == 1 => keys.first().cloned(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{CACHE_CONTROL, HeaderMap, HeaderValue};

    #[test]
    fn max_age_follows_cache_control() {
        let mut h = HeaderMap::new();
        assert_eq!(max_age(&h), DEFAULT_MAX_AGE);
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        assert_eq!(max_age(&h), Duration::from_secs(60));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert_eq!(max_age(&h), Duration::ZERO);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=999999999"));
        assert_eq!(max_age(&h), MAX_MAX_AGE);
    }
}
