//! Bounded, expiring memories of checks already passed, so a repeat costs a hash instead of a
//! signature check or an argon2id run (issue "Performance, round two", item 4):
//!
//! - `TokenCache`: an access token whose signature and claims verified, keyed by the
//!   SHA-256 of the whole token, kept until its `exp`. Only the signature and the token's own
//!   claims are remembered: the key is looked up in the current key set before the cache is
//!   asked (a revoked key ends every cached token it signed), and the registry checks
//!   (client ID known, active, of this environment) run on every use, so a deactivation
//!   refuses the next connection at once.
//! - `SecretCache`: a client secret that matched its stored argon2id hash, keyed by an
//!   HMAC-SHA256 under a random per-process key of the client ID, the secret and the stored
//!   hash (never the secret itself; a rotation changes the hash, so the old entry is never
//!   found again), kept for a few minutes.
//!
//! Both hold at most a fixed number of entries, in two generations (the older dropped when
//! the younger fills), so a storm of tokens each seen once costs a hash and an insert each,
//! never memory, and entries in use stay. Only successes are remembered.

use std::collections::HashMap;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// Most tokens remembered at once (about 200 bytes each with their claims).
pub const TOKEN_CACHE_ENTRIES: usize = 16_384;

/// Most secret checks remembered at once.
pub const SECRET_CACHE_ENTRIES: usize = 4_096;

/// How long a matched secret is remembered, in seconds.
pub const SECRET_CACHE_S: i64 = 300;

/// A map from a 32-byte digest to a value and its expiry (Unix seconds), bounded by two
/// generations of at most `max / 2` entries each: new entries go to the young one; when it
/// is full it becomes the old one and the old one is dropped; an entry found in the old
/// generation moves to the young one. Every operation is O(1) (amortized), so a storm of
/// entries each seen once costs no sweep, and what is used stays.
struct Expiring<V> {
    gens: Mutex<Generations<V>>,
    half: usize,
}

struct Generations<V> {
    young: HashMap<[u8; 32], (i64, V)>,
    old: HashMap<[u8; 32], (i64, V)>,
}

impl<V: Clone> Expiring<V> {
    fn new(max: usize) -> Self {
        Expiring {
            gens: Mutex::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
            }),
            half: (max / 2).max(1),
        }
    }

    /// The value under `key` while `now` is before its expiry.
    fn get(&self, key: &[u8; 32], now: i64) -> Option<V> {
        let mut g = self.gens.lock();
        if let Some((until, v)) = g.young.get(key) {
            return (now < *until).then(|| v.clone());
        }
        let (until, v) = g.old.remove(key)?;
        if now >= until {
            return None;
        }
        let found = v.clone();
        self.put(&mut g, *key, until, v);
        Some(found)
    }

    fn insert(&self, key: [u8; 32], until: i64, value: V) {
        let mut g = self.gens.lock();
        g.old.remove(&key);
        self.put(&mut g, key, until, value);
    }

    fn put(&self, g: &mut Generations<V>, key: [u8; 32], until: i64, value: V) {
        if g.young.len() >= self.half && !g.young.contains_key(&key) {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(key, (until, value));
    }

    fn len(&self) -> usize {
        let g = self.gens.lock();
        g.young.len() + g.old.len()
    }
}

/// Access tokens whose signature and claims verified, until their `exp` (see the module).
pub(crate) struct TokenCache<V> {
    entries: Expiring<V>,
}

impl<V: Clone> TokenCache<V> {
    pub(crate) fn new(max: usize) -> Self {
        TokenCache {
            entries: Expiring::new(max),
        }
    }

    /// The SHA-256 of the whole token: its key.
    pub(crate) fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// What `key`'s token verified to, while `now` (Unix seconds) is before its `exp`.
    pub(crate) fn get(&self, key: &[u8; 32], now: i64) -> Option<V> {
        self.entries.get(key, now)
    }

    /// Remembers a token that verified, until `exp` (Unix seconds).
    pub(crate) fn insert(&self, key: [u8; 32], exp: i64, value: V, now: i64) {
        if exp > now {
            self.entries.insert(key, exp, value);
        }
    }

    /// Tokens remembered now.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Client secrets that matched their stored hash, for [`SECRET_CACHE_S`] (see the module).
pub(crate) struct SecretCache {
    key: ring::hmac::Key,
    entries: Expiring<()>,
}

impl SecretCache {
    /// A cache under a fresh random key.
    ///
    /// # Panics
    /// When the operating system has no randomness to give.
    pub(crate) fn new(max: usize) -> Self {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).expect("the operating system's random numbers");
        SecretCache {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k),
            entries: Expiring::new(max),
        }
    }

    fn digest(&self, client_id: &str, secret: &str, stored_hash: &str) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        // Lengths first: no two different triples give the same bytes.
        for part in [client_id, secret, stored_hash] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// True when `secret` matched `stored_hash` for `client_id` less than
    /// [`SECRET_CACHE_S`] ago.
    pub(crate) fn matched(
        &self,
        client_id: &str,
        secret: &str,
        stored_hash: &str,
        now: i64,
    ) -> bool {
        self.entries
            .get(&self.digest(client_id, secret, stored_hash), now)
            .is_some()
    }

    /// Remembers that `secret` matched `stored_hash` for `client_id`.
    pub(crate) fn remember(&self, client_id: &str, secret: &str, stored_hash: &str, now: i64) {
        let key = self.digest(client_id, secret, stored_hash);
        self.entries.insert(key, now + SECRET_CACHE_S, ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_kept_until_its_exp_and_the_cache_stays_bounded() {
        let c: TokenCache<u32> = TokenCache::new(4);
        let k = TokenCache::<u32>::key("a.b.c");
        c.insert(k, 100, 7, 50);
        assert_eq!(c.get(&k, 99), Some(7));
        assert_eq!(c.get(&k, 100), None, "dropped at exp");
        // An expired token is never stored.
        let k2 = TokenCache::<u32>::key("d.e.f");
        c.insert(k2, 40, 8, 50);
        assert_eq!(c.get(&k2, 20), None);
        // Bounded; and a token in use stays while others come and go.
        c.insert(k, 1_000, 7, 50);
        for i in 0..10u32 {
            c.insert(TokenCache::<u32>::key(&i.to_string()), 1_000, i, 50);
            assert!(c.len() <= 4);
            assert_eq!(c.get(&k, 60), Some(7), "after {i} others");
        }
    }

    #[test]
    fn a_secret_is_remembered_per_client_secret_and_hash() {
        let c = SecretCache::new(8);
        c.remember("app", "s3cret", "$argon2id$h1", 1_000);
        assert!(c.matched("app", "s3cret", "$argon2id$h1", 1_001));
        assert!(
            !c.matched("app", "s3cret", "$argon2id$h2", 1_001),
            "rotated"
        );
        assert!(!c.matched("app", "other", "$argon2id$h1", 1_001));
        assert!(!c.matched("app2", "s3cret", "$argon2id$h1", 1_001));
        assert!(!c.matched("app", "s3cret", "$argon2id$h1", 1_000 + SECRET_CACHE_S));
        // Lengths are part of the digest: ("ab", "c") is not ("a", "bc").
        c.remember("ab", "c", "h", 1_000);
        assert!(!c.matched("a", "bc", "h", 1_000));
    }
}
