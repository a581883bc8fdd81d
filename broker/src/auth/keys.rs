//! The broker's own token-signing keys: ES256 (P-256), made at first start, persisted in the
//! data folder (mode 0600), rotated with overlap, published as a JWK Set (RFC 7517).
//!
//! The newest unretired key signs. A retired key stays published (so tokens it signed still
//! verify) until `retain_for` after its retirement: the longest token lifetime plus leeway.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, EncodingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A key store failure.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("signing key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The key file does not parse or holds a bad key.
    #[error("signing key file {path}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Key generation failed.
    #[error("generating a signing key: {0}")]
    Generate(String),
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredKey {
    kid: String,
    alg: String,
    private_key_pem: String,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds; `None` while it is the signing key.
    retired_at: Option<i64>,
}

/// One signing key with its public half.
#[derive(Clone)]
pub struct SigningKey {
    /// Its key id: the RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub kid: String,
    /// For signing.
    pub encoding: EncodingKey,
    /// For verifying.
    pub decoding: DecodingKey,
    /// The public JWK, with `kid`, `alg` and `use`.
    pub public_jwk: Value,
    created_at: i64,
    retired_at: Option<i64>,
}

/// The key id and dates only: never key material.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// The broker's signing keys. Cheap to clone.
#[derive(Clone)]
pub struct KeyRing {
    backing: Arc<Backing>,
    retain_for_s: i64,
    keys: Arc<ArcSwap<Vec<SigningKey>>>,
    /// Serialises rotations (file rewrite and swap).
    rotate: Arc<std::sync::Mutex<()>>,
}

/// Where a [`KeyRing`]'s key set lives.
enum Backing {
    /// A file in the data folder (one node).
    File(PathBuf),
    /// Shared by the nodes of a cluster through the registry (sealed there): the ring holds
    /// the key set's bytes as last installed ([`KeyRing::install`]).
    Shared(ArcSwap<Vec<u8>>),
}

impl Backing {
    fn label(&self) -> String {
        match self {
            Backing::File(p) => p.display().to_string(),
            Backing::Shared(_) => "shared key set".to_owned(),
        }
    }
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("backing", &self.backing.label())
            .field("keys", &*self.keys.load())
            .finish_non_exhaustive()
    }
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn generate() -> Result<StoredKey, KeyError> {
    let secret = loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Generate(e.to_string()))?;
        // A random 32-byte string is a valid P-256 scalar except with negligible probability.
        if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
            break k;
        }
    };
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let (x, y) = coordinates(&secret.public_key());
    Ok(StoredKey {
        kid: thumbprint(&x, &y),
        alg: "ES256".to_owned(),
        private_key_pem: pem.to_string(),
        created_at: now_s(),
        retired_at: None,
    })
}

fn coordinates(public: &p256::PublicKey) -> (String, String) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let point = public.to_encoded_point(false);
    let x = point
        .x()
        .map(|x| URL_SAFE_NO_PAD.encode(x))
        .unwrap_or_default();
    let y = point
        .y()
        .map(|y| URL_SAFE_NO_PAD.encode(y))
        .unwrap_or_default();
    (x, y)
}

/// RFC 7638 JWK thumbprint of an EC P-256 public key.
fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn load_key(stored: &StoredKey, label: &str) -> Result<SigningKey, KeyError> {
    let corrupt = |message: String| KeyError::Corrupt {
        path: label.to_owned(),
        message,
    };
    if stored.alg != "ES256" {
        return Err(corrupt(format!(
            "key {} has unsupported alg {:?}",
            stored.kid, stored.alg
        )));
    }
    let secret = p256::SecretKey::from_pkcs8_pem(&stored.private_key_pem)
        .map_err(|e| corrupt(format!("key {}: {e}", stored.kid)))?;
    let (x, y) = coordinates(&secret.public_key());
    let encoding = EncodingKey::from_ec_pem(stored.private_key_pem.as_bytes())
        .map_err(|e| corrupt(format!("key {}: {e}", stored.kid)))?;
    let decoding = DecodingKey::from_ec_components(&x, &y)
        .map_err(|e| corrupt(format!("key {}: {e}", stored.kid)))?;
    Ok(SigningKey {
        kid: stored.kid.clone(),
        encoding,
        decoding,
        public_jwk: json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": stored.kid, "alg": "ES256", "use": "sig"}),
        created_at: stored.created_at,
        retired_at: stored.retired_at,
    })
}

fn write_file(path: &Path, keys: &[StoredKey]) -> Result<(), KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = serialise(keys)?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(io_err)?;
        f.write_all(&text).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
    }
    std::fs::rename(&tmp, path).map_err(io_err)?;
    Ok(())
}

fn parse(bytes: &[u8], label: &str) -> Result<Vec<StoredKey>, KeyError> {
    let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| KeyError::Corrupt {
        path: label.to_owned(),
        message: e.to_string(),
    })?;
    Ok(file.keys)
}

fn load_all(stored: &[StoredKey], label: &str) -> Result<Vec<SigningKey>, KeyError> {
    stored.iter().map(|k| load_key(k, label)).collect()
}

fn serialise(keys: &[StoredKey]) -> Result<Vec<u8>, KeyError> {
    serde_json::to_vec_pretty(&KeyFile {
        keys: keys.to_vec(),
    })
    .map_err(|e| KeyError::Generate(e.to_string()))
}

/// Drops keys retired more than `retain_for_s` ago and makes a signing key if none is left;
/// true when anything changed.
fn tidy(stored: &mut Vec<StoredKey>, retain_for_s: i64) -> Result<bool, KeyError> {
    let before = stored.len();
    let now = now_s();
    stored.retain(|k| k.retired_at.is_none_or(|r| r + retain_for_s > now));
    let mut changed = stored.len() != before;
    if !stored.iter().any(|k| k.retired_at.is_none()) {
        stored.push(generate()?);
        changed = true;
    }
    Ok(changed)
}

/// Retires the signing key of `stored` and adds a new one; returns its `kid`.
fn rotate_in(stored: &mut Vec<StoredKey>, retain_for_s: i64) -> Result<String, KeyError> {
    let now = now_s();
    for k in stored.iter_mut() {
        if k.retired_at.is_none() {
            k.retired_at = Some(now);
        }
    }
    stored.retain(|k| k.retired_at.is_none_or(|r| r + retain_for_s > now));
    let new = generate()?;
    let kid = new.kid.clone();
    stored.push(new);
    Ok(kid)
}

impl KeyRing {
    /// Loads the key file at `path`, or creates it with one fresh key on first start. Keys
    /// retired more than `retain_for_s` seconds ago are dropped.
    ///
    /// # Errors
    /// [`KeyError`] when the file cannot be read, parsed or written.
    pub fn open(path: &Path, retain_for_s: i64) -> Result<KeyRing, KeyError> {
        let label = path.display().to_string();
        let mut stored = if path.exists() {
            let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
                path: label.clone(),
                source,
            })?;
            parse(&bytes, &label)?
        } else {
            Vec::new()
        };
        if tidy(&mut stored, retain_for_s)? {
            write_file(path, &stored)?;
        }
        let keys = load_all(&stored, &label)?;
        Ok(KeyRing {
            backing: Arc::new(Backing::File(path.to_owned())),
            retain_for_s,
            keys: Arc::new(ArcSwap::from_pointee(keys)),
            rotate: Arc::new(std::sync::Mutex::new(())),
        })
    }

    /// A ring whose key set is shared by the nodes of a cluster (kept in the registry, see
    /// `crate::cluster`), starting from the key set `bytes` (what [`KeyRing::prepared`]
    /// returned). [`KeyRing::rotate`] is not for it: the cluster rotates the shared set and
    /// every node [`KeyRing::install`]s the result.
    ///
    /// # Errors
    /// [`KeyError::Corrupt`] when `bytes` is no key set.
    pub fn shared(bytes: &[u8], retain_for_s: i64) -> Result<KeyRing, KeyError> {
        let ring = KeyRing {
            backing: Arc::new(Backing::Shared(ArcSwap::from_pointee(Vec::new()))),
            retain_for_s,
            keys: Arc::new(ArcSwap::from_pointee(Vec::new())),
            rotate: Arc::new(std::sync::Mutex::new(())),
        };
        ring.install(bytes)?;
        Ok(ring)
    }

    /// The key set `current` (bytes of a key file; `None`: none yet) made ready to use: keys
    /// past their overlap dropped, a signing key made if there is none. Returns the bytes and
    /// whether they differ from `current`.
    ///
    /// # Errors
    /// [`KeyError`] when `current` does not parse or a key cannot be made.
    pub fn prepared(
        current: Option<&[u8]>,
        retain_for_s: i64,
    ) -> Result<(Vec<u8>, bool), KeyError> {
        let mut stored = match current {
            Some(b) => parse(b, "shared key set")?,
            None => Vec::new(),
        };
        let changed = tidy(&mut stored, retain_for_s)?;
        Ok((serialise(&stored)?, changed))
    }

    /// The key set `current` after a rotation (see [`KeyRing::rotate`]), and the new `kid`.
    ///
    /// # Errors
    /// [`KeyError`] when `current` does not parse or a key cannot be made.
    pub fn rotated(current: &[u8], retain_for_s: i64) -> Result<(Vec<u8>, String), KeyError> {
        let mut stored = parse(current, "shared key set")?;
        let kid = rotate_in(&mut stored, retain_for_s)?;
        Ok((serialise(&stored)?, kid))
    }

    /// Replaces a shared ring's keys with the key set `bytes` (another node rotated them).
    ///
    /// # Errors
    /// [`KeyError::Corrupt`] when `bytes` is no key set; the ring is then unchanged.
    pub fn install(&self, bytes: &[u8]) -> Result<(), KeyError> {
        let label = self.backing.label();
        let keys = load_all(&parse(bytes, &label)?, &label)?;
        if let Backing::Shared(current) = &*self.backing {
            current.store(Arc::new(bytes.to_vec()));
        }
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> Option<SigningKey> {
        self.keys
            .load()
            .iter()
            .filter(|k| k.retired_at.is_none())
            .max_by_key(|k| k.created_at)
            .cloned()
    }

    /// The verifying key for `kid`, if published.
    pub fn decoding_key(&self, kid: &str) -> Option<DecodingKey> {
        let now = now_s();
        self.keys
            .load()
            .iter()
            .find(|k| k.kid == kid && k.retired_at.is_none_or(|r| r + self.retain_for_s > now))
            .map(|k| k.decoding.clone())
    }

    /// The `kid`s published now, the signing key's last.
    pub fn kids(&self) -> Vec<String> {
        let mut keys: Vec<SigningKey> = self.keys.load().iter().cloned().collect();
        keys.sort_by_key(|k| (k.retired_at.is_none(), k.created_at));
        keys.into_iter().map(|k| k.kid).collect()
    }

    /// The published JWK Set: the signing key and every retired key still in its overlap.
    pub fn jwks(&self) -> Value {
        let now = now_s();
        let loaded = self.keys.load();
        let keys: Vec<&Value> = loaded
            .iter()
            .filter(|k| k.retired_at.is_none_or(|r| r + self.retain_for_s > now))
            .map(|k| &k.public_jwk)
            .collect::<Vec<_>>();
        json!({ "keys": keys })
    }

    /// The key file as it is now, never halfway through a rotation: what a backup keeps, so
    /// that tokens signed before it still verify after a restore. For a shared ring, the key
    /// set as last installed.
    ///
    /// # Errors
    /// [`KeyError::Io`] when the file cannot be read.
    pub fn file_bytes(&self) -> Result<Vec<u8>, KeyError> {
        let _guard = self
            .rotate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*self.backing {
            Backing::File(path) => std::fs::read(path).map_err(|source| KeyError::Io {
                path: path.display().to_string(),
                source,
            }),
            Backing::Shared(bytes) => Ok(bytes.load().to_vec()),
        }
    }

    /// Retires the signing key (still published for `retain_for_s`) and makes a new one.
    /// Returns the new `kid`.
    ///
    /// # Errors
    /// [`KeyError`] when the key file cannot be written; the old key then stays in use. A
    /// shared ring is rotated by the cluster ([`KeyRing::rotated`], then
    /// [`KeyRing::install`]): here it is [`KeyError::Generate`].
    pub fn rotate(&self) -> Result<String, KeyError> {
        let _guard = self
            .rotate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Backing::File(path) = &*self.backing else {
            return Err(KeyError::Generate(
                "a shared key set is rotated through the registry".into(),
            ));
        };
        let label = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
            path: label.clone(),
            source,
        })?;
        let mut stored = parse(&bytes, &label)?;
        let kid = rotate_in(&mut stored, self.retain_for_s)?;
        write_file(path, &stored)?;
        let keys = load_all(&stored, &label)?;
        self.keys.store(Arc::new(keys));
        tracing::info!(%kid, "rotated the token signing key");
        Ok(kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_open_creates_a_private_file_and_reopen_keeps_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing-keys.json");
        let ring = KeyRing::open(&path, 600).unwrap();
        let kid = ring.signing_key().unwrap().kid;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let again = KeyRing::open(&path, 600).unwrap();
        assert_eq!(again.signing_key().unwrap().kid, kid);
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 1);
        assert!(
            ring.jwks()["keys"][0].get("d").is_none(),
            "private part published"
        );
    }

    #[test]
    fn rotation_keeps_the_old_key_published_for_the_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let ring = KeyRing::open(&path, 600).unwrap();
        let old = ring.signing_key().unwrap().kid;
        let new = ring.rotate().unwrap();
        assert_ne!(old, new);
        assert_eq!(ring.signing_key().unwrap().kid, new);
        assert!(ring.decoding_key(&old).is_some());
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);
        // With no overlap, the retired key is gone at the next open.
        let short = KeyRing::open(&path, 0).unwrap();
        assert!(short.decoding_key(&old).is_none());
        assert_eq!(short.signing_key().unwrap().kid, new);
    }
}
