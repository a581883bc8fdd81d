//! OAuth2: client credentials, signing keys, access tokens and their verification.
//!
//! - `secret`: random secrets and argon2id hashes.
//! - `keys`: the broker's ES256 signing keys, rotation, the published JWK Set.

pub mod cache;
pub mod client_auth;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod secret;
pub mod token;
