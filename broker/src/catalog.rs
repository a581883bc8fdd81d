//! Signed application records (README, "Environments and the catalog"; the record's shape is
//! [`ApplicationRecord`]).
//!
//! A catalog signs each record it exports with its **record-signing key** (ES256, its own key
//! file `record-signing-keys.json`, never the token-signing key, so a leaked token key cannot
//! forge records and the reverse). An environment verifies a record against the catalog
//! public keys pinned in its configuration ([`TrustedCatalogs`], `catalog.trusted_keys_file`):
//! nothing is fetched to decide trust, so an environment without a connection verifies too.
//!
//! The JWS (RFC 7515, compact) has the header `{"alg":"ES256","typ":"scopecast-record+jwt",
//! "kid":...}`: the algorithm is pinned (a record with any other `alg` is refused before any
//! key is looked at), `typ` keeps a record from being mistaken for an access token and the
//! reverse, `kid` names the pinned key.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use scopecast_protocol::admin::ApplicationRecord;
use serde_json::Value;

use crate::auth::keys::{KeyError, KeyRing};

/// The `typ` header of a signed record.
pub const RECORD_TYP: &str = "scopecast-record+jwt";

/// How long a retired record-signing key stays published, in seconds (a year: environments
/// pin keys, and records signed before a rotation must still verify there).
pub(crate) const RETIRED_KEY_KEPT_S: i64 = 365 * 24 * 3600;

/// Why a signed record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// This environment pins no catalog key (`catalog.trusted_keys_file` is not set).
    #[error(
        "this environment trusts no catalog: set catalog.trusted_keys_file to the JWK Set that \
         `scopecast catalog keys` prints on the catalog"
    )]
    NoTrustedCatalog,
    /// Not a JWS of a record, or its header is not a record's.
    #[error("not a signed application record: {0}")]
    Malformed(String),
    /// Signed with a key this environment does not pin.
    #[error(
        "signed with key {kid:?}, which this environment does not trust (not in catalog.trusted_keys_file)"
    )]
    UntrustedKey {
        /// The `kid` of the header.
        kid: String,
    },
    /// The signature does not verify (the record was changed after signing, or forged).
    #[error(
        "the record's signature does not verify: it was changed after signing, or not signed by the catalog"
    )]
    BadSignature,
}

/// The catalog's record signer.
#[derive(Debug, Clone)]
pub struct RecordSigner {
    keys: KeyRing,
}

impl RecordSigner {
    /// Opens (creating on first use) the record-signing key file at `path`.
    ///
    /// # Errors
    /// [`KeyError`] when the file cannot be read, parsed or written.
    pub fn open(path: &Path) -> Result<RecordSigner, KeyError> {
        Ok(RecordSigner {
            keys: KeyRing::open(path, RETIRED_KEY_KEPT_S)?,
        })
    }

    /// A signer on a shared key ring (cluster mode: every node signs with the same keys).
    pub(crate) fn from_ring(keys: KeyRing) -> RecordSigner {
        RecordSigner { keys }
    }

    /// The key file as it is now (what a backup keeps, so that a restored catalog signs with
    /// the keys environments pinned).
    ///
    /// # Errors
    /// [`KeyError::Io`] when the file cannot be read.
    pub fn file_bytes(&self) -> Result<Vec<u8>, KeyError> {
        self.keys.file_bytes()
    }

    /// The public keys environments pin: a JWK Set (RFC 7517).
    pub fn jwks(&self) -> Value {
        self.keys.jwks()
    }

    /// Signs `record`.
    ///
    /// # Errors
    /// A sentence when there is no signing key or signing fails.
    pub fn sign(&self, record: &ApplicationRecord) -> Result<String, String> {
        let key = self
            .keys
            .signing_key()
            .ok_or_else(|| "no record-signing key".to_owned())?;
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(RECORD_TYP.to_owned());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, record, &key.encoding).map_err(|e| e.to_string())
    }
}

/// The catalog keys an environment trusts, pinned in its configuration.
#[derive(Clone, Default)]
pub struct TrustedCatalogs {
    keys: Vec<(String, DecodingKey)>,
}

impl std::fmt::Debug for TrustedCatalogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedCatalogs")
            .field("kids", &self.kids())
            .finish()
    }
}

impl TrustedCatalogs {
    /// Reads the JWK Set file `path` (none: trusts no catalog). Every key must be a P-256
    /// public key (`kty` `EC`, `crv` `P-256`) with a `kid`.
    ///
    /// # Errors
    /// A sentence naming the file and what is wrong.
    pub fn load(path: Option<&Path>) -> Result<TrustedCatalogs, String> {
        let Some(path) = path else {
            return Ok(TrustedCatalogs::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("catalog.trusted_keys_file {}: {e}", path.display()))?;
        TrustedCatalogs::parse(&text)
            .map_err(|e| format!("catalog.trusted_keys_file {}: {e}", path.display()))
    }

    /// Reads a JWK Set's text (see [`TrustedCatalogs::load`]).
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(text: &str) -> Result<TrustedCatalogs, String> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(text).map_err(|e| format!("not a JWK Set: {e}"))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| format!("key {i} has no kid"))?;
            match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec)
                    if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 => {}
                _ => return Err(format!("key {kid:?} is not a P-256 (ES256) public key")),
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
            keys.push((kid, key));
        }
        if keys.is_empty() {
            return Err("the JWK Set has no key".to_owned());
        }
        Ok(TrustedCatalogs { keys })
    }

    /// The pinned key ids.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// Verifies a signed record and returns it with the `kid` that signed it. Only the
    /// signature and the header are checked here; version order and client IDs are the
    /// registry's (`Registry::import_record`).
    ///
    /// # Errors
    /// [`RecordError`].
    pub fn verify(&self, jws: &str) -> Result<(ApplicationRecord, String), RecordError> {
        if self.keys.is_empty() {
            return Err(RecordError::NoTrustedCatalog);
        }
        let header = jsonwebtoken::decode_header(jws.trim())
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::ES256 {
            return Err(RecordError::Malformed(format!(
                "alg {:?}: records are signed with ES256 only",
                header.alg
            )));
        }
        if header.typ.as_deref() != Some(RECORD_TYP) {
            return Err(RecordError::Malformed(format!(
                "typ {:?}: a record's typ is {RECORD_TYP}",
                header.typ.unwrap_or_default()
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| RecordError::Malformed("no kid in the header".to_owned()))?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| *k == kid)
            .ok_or_else(|| RecordError::UntrustedKey { kid: kid.clone() })?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<ApplicationRecord>(jws.trim(), key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => RecordError::BadSignature,
                _ => RecordError::Malformed(e.to_string()),
            })?;
        Ok((data.claims, kid))
    }
}

/// Why a signed record was not imported.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    /// Its signature or header did not check out.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The registry refused it (version order, client IDs, fields).
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

/// Verifies the signed record `jws` with the pinned catalog keys and imports it; `source`
/// (`file`, `sync`) and `actor` go into the audit. The one path of `POST /admin/v1/records`
/// and of the catalog sync.
pub(crate) async fn import(
    state: &crate::state::Broker,
    jws: &str,
    actor: &str,
    source: &str,
) -> Result<
    (
        std::sync::Arc<crate::registry::Application>,
        crate::registry::ImportOutcome,
    ),
    ImportError,
> {
    let (record, kid) = state.trusted.verify(jws)?;
    let imported = state
        .registry
        .import_record(&record, &kid, jws.trim(), actor, source)
        .await?;
    tracing::info!(actor, source, application_id = %record.application_id, version = record.version, outcome = imported.1.as_str(), "application record imported");
    Ok(imported)
}

/// Why a catalog sync did not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    /// `catalog.url` is not set.
    #[error("no catalog configured")]
    NotConfigured,
    /// The catalog could not be read.
    #[error("{0}")]
    Catalog(String),
    /// The catalog refused this environment's credential (`catalog.token_file`).
    #[error("{0}")]
    Refused(String),
}

/// Pulls the catalog's record list once (`GET {catalog.url}/catalog/v1/records` with the
/// credential of `catalog.token_file`) and imports each record as `scopecast app import`
/// would, with `source` `sync` and `actor` in the audit. A refused record does not stop the
/// others; the report lists it.
pub(crate) async fn sync(
    state: &crate::state::Broker,
    actor: &str,
) -> Result<scopecast_protocol::admin::SyncReport, SyncError> {
    let c = &state.config.catalog;
    let Some(url) = &c.url else {
        return Err(SyncError::NotConfigured);
    };
    let token = match &c.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    SyncError::Catalog(format!("catalog.token_file {}: {e}", path.display()))
                })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| SyncError::Catalog(e.to_string()))?;
    let list_url = format!("{}/catalog/v1/records", url.trim_end_matches('/'));
    let mut req = http.get(&list_url);
    if let Some(t) = &token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| SyncError::Catalog(format!("cannot reach {list_url}: {e}")))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(SyncError::Refused(format!(
            "{list_url} answered {status}: the catalog refuses the credential of \
             catalog.token_file (it needs a valid viewer or admin credential of the catalog)"
        )));
    }
    if !status.is_success() {
        return Err(SyncError::Catalog(format!("{list_url} answered {status}")));
    }
    let list: scopecast_protocol::admin::RecordList = resp
        .json()
        .await
        .map_err(|e| SyncError::Catalog(format!("{list_url}: not a record list: {e}")))?;
    let mut report = scopecast_protocol::admin::SyncReport::default();
    for jws in list.records {
        match import(state, &jws, actor, "sync").await {
            Ok((_, crate::registry::ImportOutcome::Created)) => report.created += 1,
            Ok((_, crate::registry::ImportOutcome::Updated)) => report.updated += 1,
            Ok((_, crate::registry::ImportOutcome::Unchanged)) => report.unchanged += 1,
            Err(e) => report.refused.push(e.to_string()),
        }
    }
    if !report.refused.is_empty() {
        tracing::warn!(refused = ?report.refused, "catalog sync refused records");
    }
    Ok(report)
}

/// Syncs every `catalog.sync_interval_s` until `stop` (when a catalog URL is set and the
/// interval is not 0).
pub(crate) async fn sync_loop(
    state: crate::state::Broker,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = state.config.catalog.sync_interval_s;
    if state.config.catalog.url.is_none() || every == 0 {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(every));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sync(&state, "catalog-sync").await {
            Ok(r) if r.created + r.updated > 0 => {
                tracing::info!(
                    created = r.created,
                    updated = r.updated,
                    "catalog sync imported records"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "catalog sync failed; trying again at the next interval")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use scopecast_protocol::admin::{RecordClient, RecordClients};

    fn record() -> ApplicationRecord {
        ApplicationRecord {
            iss: "https://catalog.example".into(),
            iat: 1,
            application_id: "0b0e5c1e-8a6f-4b7e-9d0e-2a4c6e8f0a1b".into(),
            version: 3,
            name: "Bed board".into(),
            vendor: "Acme".into(),
            description: String::new(),
            scope: "subscribe:adt.>".into(),
            clients: RecordClients {
                production: RecordClient {
                    client_id: "1b0e5c1e-8a6f-4b7e-9d0e-2a4c6e8f0a1b".into(),
                    jwks: None,
                    jwks_uri: None,
                },
                non_production: RecordClient {
                    client_id: "2b0e5c1e-8a6f-4b7e-9d0e-2a4c6e8f0a1b".into(),
                    jwks: None,
                    jwks_uri: None,
                },
            },
            retired: false,
        }
    }

    #[test]
    fn a_record_verifies_only_untouched_and_only_with_a_pinned_key() {
        let dir = tempfile::tempdir().unwrap();
        let signer = RecordSigner::open(&dir.path().join("a.json")).unwrap();
        let other = RecordSigner::open(&dir.path().join("b.json")).unwrap();
        let trusted = TrustedCatalogs::parse(&signer.jwks().to_string()).unwrap();
        let jws = signer.sign(&record()).unwrap();
        let (got, kid) = trusted.verify(&jws).unwrap();
        assert_eq!(got, record());
        assert_eq!(trusted.kids(), [kid.as_str()]);

        // Tampered after signing: the scope widened in the payload.
        let parts: Vec<&str> = jws.split('.').collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["scope"] = "subscribe:>".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(trusted.verify(&forged), Err(RecordError::BadSignature));

        // Another catalog's key: untrusted, named.
        let foreign = other.sign(&record()).unwrap();
        assert!(matches!(
            trusted.verify(&foreign),
            Err(RecordError::UntrustedKey { .. })
        ));
        // No pinned key at all.
        assert_eq!(
            TrustedCatalogs::default().verify(&jws),
            Err(RecordError::NoTrustedCatalog)
        );
        // Not a record: garbage, or another typ.
        assert!(matches!(
            trusted.verify("a.b.c"),
            Err(RecordError::Malformed(_))
        ));
        let key = RecordSigner::open(&dir.path().join("a.json")).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid);
        header.typ = Some("JWT".into());
        let as_token = jsonwebtoken::encode(
            &header,
            &record(),
            &key.keys.signing_key().unwrap().encoding,
        )
        .unwrap();
        assert!(matches!(
            trusted.verify(&as_token),
            Err(RecordError::Malformed(m)) if m.contains("typ")
        ));
    }
}
