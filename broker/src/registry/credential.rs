//! The one credential store (SECURITY.md, "Credentials"): named, revocable bearer credentials
//! with a [`Role`], serving the admin API, `/metrics` (and, next, the console and the developer
//! API). A token is `scc_` and 256 random bits; only its SHA-256 is stored, and a request is
//! matched by looking that hash up in memory (a slow hash would add nothing for a token of 256
//! random bits, and every admin request would pay for it).

use std::collections::HashMap;
use std::sync::Arc;

use scopecast_protocol::admin::Role;
use sha2::{Digest, Sha256};

use super::{RegistryError, now_ms, secret, validate};

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

    /// True when a credential, valid or revoked, has ever had `name`.
    pub fn names_ever_used(&self, name: &str) -> bool {
        self.all.iter().any(|c| c.name == name)
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

/// The registry's credential operations (the one credential store).
impl super::Registry {
    /// The valid credential whose bearer token is `token` (from the store, or the configured
    /// `admin_token`).
    pub fn authenticate(&self, token: &str) -> Option<Arc<Credential>> {
        self.inner.credentials.load().authenticate(token)
    }

    /// Every credential at this instant.
    pub fn credentials(&self) -> Arc<CredentialSet> {
        self.inner.credentials.load_full()
    }

    /// Makes the `admin_token` setting a valid admin credential named `admin (config)`, kept in
    /// memory only.
    ///
    /// # Errors
    /// A storage failure while reloading the store's credentials.
    pub async fn set_config_credential(&self, token: &str) -> Result<(), RegistryError> {
        self.inner
            .config_credential
            .store(Some(Arc::new(Credential {
                id: "config".to_owned(),
                name: "admin (config)".to_owned(),
                role: Role::Admin,
                token_hash: token_hash(token),
                created_at_ms: now_ms(),
                created_by: "config".to_owned(),
                revoked_at_ms: None,
                revoked_by: None,
                source: CredentialSource::Config,
            })));
        // Under the feed's cursor, so that a credential change applied meanwhile cannot put
        // back a set read before this one.
        let _cursor = self.inner.cursor.lock().await;
        self.inner.reload_credentials().await
    }

    /// Stores `token` as the admin credential named `admin` unless the store already knows it
    /// (valid or revoked): the first start's `admin.token`, and the upgrade of a data folder
    /// made before the credential store existed. True when it was added.
    ///
    /// # Errors
    /// [`RegistryError::Conflict`] when a valid credential is already named `admin`, or a
    /// storage failure.
    pub async fn bootstrap_admin(&self, token: &str) -> Result<bool, RegistryError> {
        let hash = token_hash(token);
        let _guard = self.inner.writes.lock().await;
        if self
            .inner
            .store
            .load_credentials()
            .await?
            .iter()
            .any(|c| c.token_hash == hash)
        {
            return Ok(false);
        }
        let c = Credential {
            id: uuid::Uuid::new_v4().to_string(),
            name: "admin".to_owned(),
            role: Role::Admin,
            token_hash: hash,
            created_at_ms: now_ms(),
            created_by: "bootstrap".to_owned(),
            revoked_at_ms: None,
            revoked_by: None,
            source: CredentialSource::Store,
        };
        let entry = self.audit_entry(
            "bootstrap",
            "credential.create",
            None,
            None,
            serde_json::json!({"credential_id": c.id, "name": c.name, "role": c.role.as_str()}),
        );
        self.inner.store.insert_credential(&c, &entry).await?;
        self.catch_up().await?;
        Ok(true)
    }

    /// Makes a credential named `name` with `role`; returns it and its token, which is shown
    /// this once (only its SHA-256 is stored).
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] for a bad name, [`RegistryError::Conflict`] when a valid
    /// credential has that name, or a storage failure.
    pub async fn create_credential(
        &self,
        name: &str,
        role: Role,
        actor: &str,
    ) -> Result<(Arc<Credential>, String), RegistryError> {
        let name = validate::name("name", name)?;
        let token = format!(
            "{}{}",
            TOKEN_PREFIX,
            secret::random_token(secret::SECRET_BYTES)
                .map_err(|e| RegistryError::Internal(e.to_string()))?
        );
        let c = Credential {
            id: uuid::Uuid::new_v4().to_string(),
            name,
            role,
            token_hash: token_hash(&token),
            created_at_ms: now_ms(),
            created_by: actor.to_owned(),
            revoked_at_ms: None,
            revoked_by: None,
            source: CredentialSource::Store,
        };
        let entry = self.audit_entry(
            actor,
            "credential.create",
            None,
            None,
            serde_json::json!({"credential_id": c.id, "name": c.name, "role": c.role.as_str()}),
        );
        let _guard = self.inner.writes.lock().await;
        self.inner.store.insert_credential(&c, &entry).await?;
        self.catch_up().await?;
        let stored = self
            .credentials()
            .find(&c.id)
            .ok_or_else(|| RegistryError::Internal("created credential vanished".into()))?;
        Ok((stored, token))
    }

    /// Revokes the valid credential named (or with id) `name_or_id`; it stops working at once.
    /// The last valid admin credential of the store cannot be revoked (nobody could make
    /// another), nor the configured one.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], [`RegistryError::Conflict`] for the last admin or a
    /// configured credential, or a storage failure.
    pub async fn revoke_credential(
        &self,
        name_or_id: &str,
        actor: &str,
    ) -> Result<Arc<Credential>, RegistryError> {
        let _guard = self.inner.writes.lock().await;
        let set = self.credentials();
        let c = set
            .find(name_or_id)
            .filter(|c| c.is_valid())
            .ok_or_else(|| RegistryError::NotFound {
                what: "credential",
                id: name_or_id.to_owned(),
            })?;
        if c.source == CredentialSource::Config {
            return Err(RegistryError::Conflict(
                "this credential is the broker's admin_token setting: remove it from the configuration".into(),
            ));
        }
        let store_admins = set
            .all()
            .iter()
            .filter(|x| {
                x.is_valid() && x.role == Role::Admin && x.source == CredentialSource::Store
            })
            .count();
        if c.role == Role::Admin && store_admins <= 1 {
            return Err(RegistryError::Conflict(format!(
                "{:?} is the last admin credential: create another admin credential first",
                c.name
            )));
        }
        let entry = self.audit_entry(
            actor,
            "credential.revoke",
            None,
            None,
            serde_json::json!({"credential_id": c.id, "name": c.name, "role": c.role.as_str()}),
        );
        if !self
            .inner
            .store
            .revoke_credential(&c.id, now_ms(), actor, &entry)
            .await?
        {
            return Err(RegistryError::NotFound {
                what: "credential",
                id: name_or_id.to_owned(),
            });
        }
        self.catch_up().await?;
        self.credentials()
            .find(&c.id)
            .ok_or_else(|| RegistryError::Internal("revoked credential vanished".into()))
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
