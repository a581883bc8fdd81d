//! Random credentials and their argon2id hashes. Secrets are shown once and stored only as
//! hashes (PHC strings, RFC 9106 argon2id with the argon2 crate's OWASP-recommended defaults).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Bytes of randomness in a generated client secret or admin token (256 bits).
pub const SECRET_BYTES: usize = 32;

/// A failure of the operating system's random source or of hashing.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The OS random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// Hashing failed (bad parameters; not expected).
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// `n` random bytes from the OS, base64url without padding.
///
/// # Errors
/// [`SecretError::Random`] when the OS random source fails.
pub fn random_token(n: usize) -> Result<String, SecretError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// A fresh client secret: 32 random bytes, base64url (43 characters).
///
/// # Errors
/// [`SecretError::Random`] when the OS random source fails.
pub fn new_secret() -> Result<String, SecretError> {
    random_token(SECRET_BYTES)
}

/// The argon2id PHC hash of `secret`, with a fresh random salt.
///
/// # Errors
/// [`SecretError`] when the salt cannot be drawn or hashing fails.
pub fn hash_secret(secret: &str) -> Result<String, SecretError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| SecretError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| SecretError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| SecretError::Hash(e.to_string()))
}

/// True when `secret` matches the PHC `hash` (constant-time comparison inside argon2).
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_verify_only_themselves() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        let hash = hash_secret(&a).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains(&a));
        assert!(verify_secret(&a, &hash));
        assert!(!verify_secret(&b, &hash));
        assert!(!verify_secret(&a, "not a hash"));
    }
}
