//! The one credential store (SECURITY.md, "Credentials"): named, revocable bearer credentials
//! with a [`Role`], serving the admin API, `/metrics` (and, next, the console and the developer
//! API). A token is `scc_` and 256 random bits; only its SHA-256 is stored, and a request is
//! matched by looking that hash up in memory (a slow hash would add nothing for a token of 256
//! random bits, and every admin request would pay for it).

use std::collections::HashMap;
use std::sync::Arc;

use scopecast_protocol::admin::Role;
use sha2::{Digest, Sha256};

/// Prefix of every token the store issues, so secret scanners can recognise a leaked one.
pub const TOKEN_PREFIX: &str = "scc_";

/// Where a credential comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// Made through the API (or at first start) and kept in the registry store.
    Store,
    /// The `admin_token` setting: valid while configured, not revocable through the API.
    Config,
}

impl CredentialSource {
    /// The spelling in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            CredentialSource::Store => "store",
            CredentialSource::Config => "config",
        }
    }
}

/// One credential as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Its id (UUID v4).
    pub id: String,
    /// Whom it belongs to; the audit trail's actor for what it does.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// When it was made, Unix ms.
    pub created_at_ms: i64,
    /// The name of the credential that made it (`bootstrap` for the first one).
    pub created_by: String,
    /// When it was revoked, Unix ms.
    pub revoked_at_ms: Option<i64>,
    /// The name of the credential that revoked it.
    pub revoked_by: Option<String>,
    /// Store or configuration.
    pub source: CredentialSource,
}

impl Credential {
    /// True while it may be used.
    pub fn is_valid(&self) -> bool {
        self.revoked_at_ms.is_none()
    }
}

/// Hex SHA-256 of a token: what the store keeps and looks up.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Every credential at one instant, valid ones indexed by token hash.
#[derive(Debug, Default)]
pub struct CredentialSet {
    by_hash: HashMap<String, Arc<Credential>>,
    all: Vec<Arc<Credential>>,
}

impl CredentialSet {
    /// Indexes `credentials` (valid and revoked).
    pub fn new(credentials: Vec<Credential>) -> CredentialSet {
        let mut all: Vec<Arc<Credential>> = credentials.into_iter().map(Arc::new).collect();
        all.sort_by(|a, b| {
            (!a.is_valid(), &a.name, a.created_at_ms).cmp(&(
                !b.is_valid(),
                &b.name,
                b.created_at_ms,
            ))
        });
        let by_hash = all
            .iter()
            .filter(|c| c.is_valid())
            .map(|c| (c.token_hash.clone(), c.clone()))
            .collect();
        CredentialSet { by_hash, all }
    }

    /// The valid credential whose token is `token`.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Credential>> {
        if token.is_empty() || token.len() > 512 {
            return None;
        }
        self.by_hash.get(&token_hash(token)).cloned()
    }

    /// Every credential: valid ones first, then by name.
    pub fn all(&self) -> &[Arc<Credential>] {
        &self.all
    }

    /// The valid credential named `name`, or the credential with id `name`.
    pub fn find(&self, name_or_id: &str) -> Option<Arc<Credential>> {
        self.all
            .iter()
            .find(|c| c.is_valid() && c.name == name_or_id)
            .or_else(|| self.all.iter().find(|c| c.id == name_or_id))
            .cloned()
    }

    /// How many valid admin credentials there are.
    pub fn valid_admins(&self) -> usize {
        self.all
            .iter()
            .filter(|c| c.is_valid() && c.role == Role::Admin)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(name: &str, role: Role, token: &str, revoked: bool) -> Credential {
        Credential {
            id: format!("id-{name}"),
            name: name.to_owned(),
            role,
            token_hash: token_hash(token),
            created_at_ms: 1,
            created_by: "bootstrap".to_owned(),
            revoked_at_ms: revoked.then_some(2),
            revoked_by: revoked.then(|| "admin".to_owned()),
            source: CredentialSource::Store,
        }
    }

    #[test]
    fn only_valid_credentials_authenticate_and_by_their_own_token() {
        let set = CredentialSet::new(vec![
            cred("alice", Role::Admin, "scc_a", false),
            cred("bob", Role::Viewer, "scc_b", true),
        ]);
        assert_eq!(set.authenticate("scc_a").unwrap().name, "alice");
        assert!(set.authenticate("scc_b").is_none(), "revoked");
        assert!(set.authenticate("scc_x").is_none());
        assert!(set.authenticate("").is_none());
        assert_eq!(set.valid_admins(), 1);
        assert_eq!(set.all()[0].name, "alice", "valid ones first");
        assert_eq!(set.find("id-bob").unwrap().name, "bob");
        assert!(set.find("bob").is_none(), "a revoked name is free");
    }

    #[test]
    fn the_hash_is_hex_sha256() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
