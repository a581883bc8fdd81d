//! OAuth2: client credentials, signing keys, access tokens and their verification.
//!
//! - `secret`: random secrets and argon2id hashes.

pub mod secret;
