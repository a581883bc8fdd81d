//! Cluster mode (README "Cluster mode", ARCHITECTURE.md "Cluster mode"): what the nodes of one
//! deployment share besides the event log (JetStream, `log::jetstream`) and the registry
//! (PostgreSQL, `registry::postgres`).
//!
//! - [`Kek`]: the key-encryption key from `cluster.key_encryption_key_file`, the same on every
//!   node. The token and record signing keys live in the registry's `shared_state` table
//!   sealed with it (AES-256-GCM, the blob's name as associated data): a dump of the database
//!   alone does not give them away, and a new node needs only its configuration.
//! - [`SharedRing`]: a [`KeyRing`] whose key set is such a blob. Every node signs with the same
//!   key and serves the same JWK Set; a rotation on one node is a compare-and-set write of the
//!   blob, whose change row makes every other node reload it (within the registry's wake-up,
//!   or `registry_poll_ms` when a notification was lost).
//! - [`Durability`]: what the JetStream servers can promise, read at start (RESEARCH: a client
//!   cannot read a server's fsync setting; versions before 2.10 fsync lazily, before 2.11 lose
//!   message-id de-duplication across a leader change), reported in the log, `/readyz` and
//!   `scopecast_event_log_durability_degraded`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde_json::json;

use crate::auth::keys::KeyRing;
use crate::config::ClusterConfig;
use crate::registry::{Registry, RegistryChange};

/// The shared blob holding the token-signing key set.
pub(crate) const TOKEN_KEYS: &str = "signing_keys";
/// The shared blob holding the record-signing key set (this deployment as a catalog).
pub(crate) const RECORD_KEYS: &str = "record_signing_keys";

/// The first bytes of a sealed blob (format version 1: magic, 12-byte nonce, ciphertext with
/// its 16-byte tag).
const SEALED_MAGIC: &[u8; 4] = b"SCK1";

/// The key-encryption key (32 bytes).
pub(crate) struct Kek(LessSafeKey, [u8; 32]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Reads the key from `path`: 32 bytes, base64 (standard or URL-safe, padding optional),
    /// in a file no one but the service may read (mode 0600 or 0400 on Unix).
    ///
    /// # Errors
    /// A sentence naming the file when it cannot be read, is readable by others, or holds
    /// no 32-byte key.
    pub(crate) fn load(path: &Path) -> Result<Kek, String> {
        Kek::load_setting(path, "cluster.key_encryption_key_file")
    }

    /// As [`Kek::load`], naming `setting` in its errors.
    ///
    /// # Errors
    /// As [`Kek::load`].
    pub(crate) fn load_setting(path: &Path, setting: &str) -> Result<Kek, String> {
        let name = path.display();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| format!("{setting} {name}: {e}"))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{setting} {name} is readable by others (mode {:o}); chmod 600 it",
                    mode & 0o777
                ));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{setting} {name}: {e}"))?;
        Kek::parse(text.trim()).map_err(|m| format!("{setting} {name}: {m}"))
    }

    /// The key from its base64 text.
    ///
    /// # Errors
    /// A sentence when the text is not base64 of exactly 32 bytes.
    pub(crate) fn parse(text: &str) -> Result<Kek, String> {
        let t = text.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .map_err(|_| "not base64".to_owned())?;
        if bytes.len() != 32 {
            return Err(format!("must be 32 bytes, is {}", bytes.len()));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "unusable key".to_owned())?;
        // The access audit's signing key, derived (HMAC-SHA256 of a fixed label): every node
        // holding this key-encryption key signs and verifies the same checkpoints.
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes),
            b"scopecast access audit checkpoint key v1",
        );
        let mut audit = [0u8; 32];
        audit.copy_from_slice(mac.as_ref());
        Ok(Kek(LessSafeKey::new(key), audit))
    }

    /// The seed of the access audit's Ed25519 checkpoint key (derived from this key).
    pub(crate) fn audit_seed(&self) -> [u8; 32] {
        self.1
    }

    /// A new key as base64 text (what `scopecast cluster kek` prints).
    ///
    /// # Errors
    /// When the system's random source fails.
    pub(crate) fn generate() -> Result<String, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Seals `plain` for the blob `name` (its associated data: a blob cannot pass for another).
    ///
    /// # Errors
    /// When the random source fails.
    pub(crate) fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
        let mut body = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut body,
            )
            .map_err(|_| "sealing failed".to_owned())?;
        let mut out = Vec::with_capacity(4 + NONCE_LEN + body.len());
        out.extend_from_slice(SEALED_MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a blob sealed for `name`.
    ///
    /// # Errors
    /// A sentence when it is not a sealed blob, or not sealed with this key for `name` (the
    /// nodes were given different key-encryption keys).
    pub(crate) fn unseal(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let rest = sealed
            .strip_prefix(SEALED_MAGIC.as_slice())
            .filter(|r| r.len() >= NONCE_LEN + 16)
            .ok_or_else(|| format!("shared state `{name}` is not a sealed blob"))?;
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| format!("shared state `{name}`: bad nonce"))?;
        let mut body = body.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
            .map_err(|_| {
                format!(
                    "shared state `{name}` does not open with this node's key-encryption key \
                     (every node needs the same cluster.key_encryption_key_file)"
                )
            })?;
        Ok(plain.to_vec())
    }
}

/// A key ring shared by the nodes through the registry; see the module documentation.
#[derive(Clone, Debug)]
pub(crate) struct SharedRing {
    registry: Registry,
    kek: Arc<Kek>,
    name: &'static str,
    retain_for_s: i64,
    ring: KeyRing,
}

/// Compare-and-set rounds before a write gives up (each lost round means another node wrote).
const CAS_ROUNDS: usize = 20;

impl SharedRing {
    /// Loads the key set `name` from the registry, making it on the first start of the
    /// cluster (or a signing key when none is left), and returns the ring.
    ///
    /// # Errors
    /// A sentence when the registry fails or the blob does not open with `kek`.
    pub(crate) async fn open(
        registry: Registry,
        kek: Arc<Kek>,
        name: &'static str,
        retain_for_s: i64,
        node: &str,
    ) -> Result<SharedRing, String> {
        for _ in 0..CAS_ROUNDS {
            let (current, version) = load(&registry, &kek, name).await?;
            let (bytes, changed) =
                KeyRing::prepared(current.as_deref(), retain_for_s).map_err(|e| e.to_string())?;
            if changed {
                let sealed = kek.seal(name, &bytes)?;
                let written = registry
                    .put_state(
                        name,
                        &sealed,
                        version,
                        &format!("node:{node}"),
                        "keys.prepare",
                        json!({"set": name}),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if !written {
                    continue;
                }
            }
            let ring = KeyRing::shared(&bytes, retain_for_s).map_err(|e| e.to_string())?;
            return Ok(SharedRing {
                registry,
                kek,
                name,
                retain_for_s,
                ring,
            });
        }
        Err(format!(
            "shared state `{name}`: too many concurrent writers"
        ))
    }

    /// The ring (signs and verifies with the key set as last loaded).
    pub(crate) fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Rotates the shared key set for every node; returns the new `kid`. The audit entry
    /// (`keys.rotate`, by `actor`) is written with it.
    ///
    /// # Errors
    /// A sentence when the registry fails.
    pub(crate) async fn rotate(&self, actor: &str) -> Result<String, String> {
        for _ in 0..CAS_ROUNDS {
            let (current, version) = load(&self.registry, &self.kek, self.name).await?;
            let Some(current) = current else {
                return Err(format!("shared state `{}` is missing", self.name));
            };
            let (bytes, kid) =
                KeyRing::rotated(&current, self.retain_for_s).map_err(|e| e.to_string())?;
            let sealed = self.kek.seal(self.name, &bytes)?;
            let written = self
                .registry
                .put_state(
                    self.name,
                    &sealed,
                    version,
                    actor,
                    "keys.rotate",
                    json!({"kid": kid, "set": self.name}),
                )
                .await
                .map_err(|e| e.to_string())?;
            if written {
                self.ring.install(&bytes).map_err(|e| e.to_string())?;
                tracing::info!(%kid, set = self.name, "rotated a shared signing key set");
                return Ok(kid);
            }
        }
        Err(format!(
            "shared state `{}`: too many concurrent writers",
            self.name
        ))
    }

    /// Loads the key set again (another node changed it).
    ///
    /// # Errors
    /// A sentence when the registry fails or the blob does not open.
    pub(crate) async fn reload(&self) -> Result<(), String> {
        let (current, _) = load(&self.registry, &self.kek, self.name).await?;
        if let Some(bytes) = current {
            self.ring.install(&bytes).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

async fn load(
    registry: &Registry,
    kek: &Kek,
    name: &str,
) -> Result<(Option<Vec<u8>>, i64), String> {
    match registry.load_state(name).await.map_err(|e| e.to_string())? {
        None => Ok((None, 0)),
        Some((sealed, version)) => Ok((Some(kek.unseal(name, &sealed)?), version)),
    }
}

/// Moves a stopped single node's state into a new cluster (README "Cluster mode", "From one
/// node to a cluster"): the registry in `data_dir` copied into the cluster's PostgreSQL
/// database (which must be new: no node of the cluster started on it yet), and the node's
/// token and record signing keys sealed into it, so tokens the node issued keep verifying
/// and the catalog key environments pinned stays. The event log is not copied: the cluster's
/// stream is a new log (a new `log_epoch`).
///
/// Returns a report, one line per table and key set.
///
/// # Errors
/// A sentence when the configuration is not a cluster's, the database is not empty, or a
/// store or key file fails.
pub async fn migrate_to_cluster(
    data_dir: &Path,
    config: &crate::config::Config,
) -> Result<Vec<String>, String> {
    let c = &config.cluster;
    if !c.enabled() {
        return Err("the configuration has no [cluster] section (cluster.nats_url)".into());
    }
    // Held for the copy: a broker still running on the folder is refused.
    let _lock = crate::data_dir::lock(data_dir).map_err(|e| e.to_string())?;
    let kek = Kek::load(
        c.key_encryption_key_file
            .as_deref()
            .ok_or("cluster.key_encryption_key_file is required")?,
    )?;
    let url = postgres_url(c)?;
    let mut report = Vec::new();
    // The key files first: a damaged one is refused before anything is written.
    let mut key_sets = Vec::new();
    for (name, file) in [
        (TOKEN_KEYS, crate::server::SIGNING_KEYS_FILE),
        (RECORD_KEYS, crate::server::RECORD_KEYS_FILE),
    ] {
        let path = data_dir.join(file);
        match std::fs::read(&path) {
            Ok(bytes) => {
                KeyRing::shared(&bytes, i64::MAX / 4).map_err(|e| e.to_string())?;
                key_sets.push((name, path, bytes));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.push(format!(
                    "{name}: no {} (the cluster makes new keys)",
                    path.display()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    let copied = crate::registry::migrate::sqlite_to_postgres(
        &data_dir.join(crate::server::REGISTRY_FILE),
        &url,
    )
    .await
    .map_err(|e| e.to_string())?;
    for (table, n) in copied {
        report.push(format!("registry: {n} rows of {table}"));
    }
    let store = crate::registry::PgStore::open(&url)
        .await
        .map_err(|e| e.to_string())?;
    let registry = Registry::open(store).await.map_err(|e| e.to_string())?;
    for (name, path, bytes) in key_sets {
        let written = registry
            .put_state(
                name,
                &kek.seal(name, &bytes)?,
                0,
                "scopecast cluster migrate",
                "keys.import",
                json!({"set": name}),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !written {
            return Err(format!(
                "shared state `{name}` already exists in the database"
            ));
        }
        report.push(format!("{name}: sealed from {}", path.display()));
    }
    report.extend(reseal_webhooks(data_dir, &kek, &registry).await?);
    report.extend(resign_audit(data_dir, &kek, &registry).await?);
    Ok(report)
}

/// Signs the access audit's checkpoints again with the cluster's key (derived from its
/// key-encryption key): each checkpoint whose signature verifies with the single node's key
/// (from `webhooks.kek`) gets the same fields signed by the cluster's; one that does not is
/// left out, and `scopecast audit verify` then reports the rows after it as unsigned.
async fn resign_audit(
    data_dir: &Path,
    kek: &Kek,
    registry: &Registry,
) -> Result<Vec<String>, String> {
    use crate::audit::chain::AuditKey;
    let file = data_dir.join(crate::server::REGISTRY_FILE);
    let source = crate::registry::SqliteStore::open(&file)
        .await
        .map_err(|e| e.to_string())?;
    let source = Registry::open(source).await.map_err(|e| e.to_string())?;
    let chains = source
        .access_audit_chains()
        .await
        .map_err(|e| e.to_string())?;
    if chains.is_empty() {
        return Ok(Vec::new());
    }
    let path = data_dir.join(crate::webhooks::KEK_FILE);
    let local = Kek::load_setting(&path, "the webhook key-encryption key")?;
    let old = AuditKey::from_seed(&local.audit_seed())?;
    let new = AuditKey::from_seed(&kek.audit_seed())?;
    let (mut signed, mut refused) = (0, 0);
    for chain in chains {
        for c in source
            .access_audit_checkpoints(&chain)
            .await
            .map_err(|e| e.to_string())?
        {
            if old.verifies(&c) {
                let again = new.sign(&c.chain, c.chain_seq, &c.hash, c.at_ms);
                registry
                    .append_access_audit(&[], Some(&again))
                    .await
                    .map_err(|e| e.to_string())?;
                signed += 1;
            } else {
                refused += 1;
            }
        }
    }
    let mut out = vec![format!(
        "access audit: {signed} checkpoints signed again with the cluster's key"
    )];
    if refused > 0 {
        out.push(format!(
            "access audit: {refused} checkpoints did not verify with {} and were left out",
            path.display()
        ));
    }
    Ok(out)
}

/// Seals the copied webhook endpoints' secrets and headers again, from the single node's
/// `webhooks.kek` to the cluster's key-encryption key (the cluster's nodes open them with
/// theirs).
async fn reseal_webhooks(
    data_dir: &Path,
    kek: &Kek,
    registry: &Registry,
) -> Result<Vec<String>, String> {
    let endpoints = registry.webhooks().await.map_err(|e| e.to_string())?;
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    let path = data_dir.join(crate::webhooks::KEK_FILE);
    let local = Kek::load_setting(&path, "the webhook key-encryption key")?;
    let mut done = 0;
    for mut w in endpoints {
        let keys = crate::webhooks::endpoint::Keys::unseal(&local, &w.id, &w.sealed)?;
        w.sealed = keys.seal(kek, &w.id)?;
        let written = registry
            .update_webhook(
                &w,
                "scopecast cluster migrate",
                "webhook.reseal",
                json!({"endpoint_id": w.id}),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !written {
            return Err(format!(
                "webhook endpoint {} changed during the migration",
                w.id
            ));
        }
        done += 1;
    }
    Ok(vec![format!(
        "webhooks: {done} endpoints' secrets sealed again from {} with the cluster's key",
        path.display()
    )])
}

/// Reloads `rings` whenever the registry says their blob changed (and all of them when this
/// node missed changes), until the registry is gone.
pub(crate) async fn follow_rings(registry: Registry, rings: Vec<SharedRing>) {
    let mut changes = registry.changes();
    drop(registry);
    // A change between loading the rings at start and subscribing here is not missed.
    for ring in &rings {
        if let Err(e) = ring.reload().await {
            tracing::error!(error = %e, set = ring.name, "cannot reload a shared key set");
        }
    }
    loop {
        let names: Vec<&str> = match changes.recv().await {
            Ok(RegistryChange::StateChanged { name }) => rings
                .iter()
                .filter(|r| r.name == name)
                .map(|r| r.name)
                .collect(),
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                rings.iter().map(|r| r.name).collect()
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        for ring in rings.iter().filter(|r| names.contains(&r.name)) {
            if let Err(e) = ring.reload().await {
                tracing::error!(error = %e, set = ring.name, "cannot reload a shared key set");
            }
        }
    }
}

/// What the JetStream servers promise for acknowledged events, read once at start.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Durability {
    /// The version of the NATS server this node first connected to.
    pub(crate) server_version: String,
    /// The stream's replicas.
    pub(crate) replicas: usize,
    /// Why durability is degraded (empty: it is not): `replicas_1` (one copy: a lost disk
    /// loses events), `lazy_fsync` (a server before 2.10 fsyncs acknowledged writes about
    /// every minute: a power loss of every replica at once loses the last minute),
    /// `server_before_2_11` (message-id de-duplication is not kept across a leader change:
    /// a retried publish can be stored twice).
    pub(crate) reasons: Vec<&'static str>,
}

impl Durability {
    /// Assesses a server of `version` (e.g. `2.9.10`) with `replicas`.
    pub(crate) fn assess(version: &str, replicas: usize) -> Durability {
        let mut parts = version
            .trim_start_matches('v')
            .split(['.', '-'])
            .map(|p| p.parse::<u64>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        let mut reasons = Vec::new();
        if replicas < 2 {
            reasons.push("replicas_1");
        }
        if (major, minor) < (2, 10) {
            reasons.push("lazy_fsync");
        }
        if (major, minor) < (2, 11) {
            reasons.push("server_before_2_11");
        }
        Durability {
            server_version: version.to_owned(),
            replicas,
            reasons,
        }
    }
}

/// This node's name: `cluster.node_name`, else the host name and the port it listens on.
pub(crate) fn node_name(config: &ClusterConfig, port: u16) -> String {
    if let Some(n) = &config.node_name {
        return n.clone();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    format!("{host}-{port}")
}

/// Connects to the NATS servers of `config` (token and CA as configured; pings
/// every `nats_ping_interval_ms`; reconnects for ever).
///
/// # Errors
/// A sentence when no server answers within 10 s or the token file cannot be read.
pub(crate) async fn connect_nats(
    config: &ClusterConfig,
    node: &str,
) -> Result<async_nats::Client, String> {
    let url = config.nats_url.as_deref().unwrap_or_default();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("scopecast {node}"))
        .ping_interval(Duration::from_millis(config.nats_ping_interval_ms))
        // 2 s, as nats.go's default: a hung server accepts TCP but never answers, and each
        // reconnect attempt that picks it waits this long (a CI run took 20 s to move off a
        // SIGSTOPped server with 5 s).
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None::<usize>);
    if let Some(path) = &config.nats_token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("cluster.nats_token_file {}: {e}", path.display()))?;
        options = options.token(token.trim().to_owned());
    }
    if let Some(path) = &config.nats_ca_file {
        options = options.add_root_certificates(path.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cluster.nats_url: {e}"))?;
    tokio::time::timeout(Duration::from_secs(10), options.connect(servers))
        .await
        .map_err(|_| format!("no NATS server of {url} answered within 10 s"))?
        .map_err(|e| format!("connecting to NATS at {url}: {e}"))
}

/// The PostgreSQL URL of `config` (`postgres_url`, or the first line of `postgres_url_file`).
///
/// # Errors
/// A sentence when the file cannot be read.
pub(crate) fn postgres_url(config: &ClusterConfig) -> Result<String, String> {
    match (&config.postgres_url, &config.postgres_url_file) {
        (Some(u), _) => Ok(u.clone()),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| format!("cluster.postgres_url_file {}: {e}", path.display())),
        (None, None) => Err("cluster mode needs cluster.postgres_url".to_owned()),
    }
}

/// The subject on which every node of the cluster whose stream is `stream` answers for its
/// own sessions (core NATS, outside the stream's subjects): `list` with a JSON
/// `{"client_id": ...}` body, or `close.<node>` with a session id.
fn control_subject(stream: &str, what: &str) -> String {
    format!("_SCOPECAST.{stream}.sessions.{what}")
}

/// How long an admin request waits for the other nodes' answers.
const GATHER: Duration = Duration::from_millis(500);

/// Answers the other nodes' session requests for this node, until the broker shuts down.
pub(crate) async fn serve_sessions(state: crate::state::Broker) {
    use futures_util::StreamExt;
    let Some(c) = &state.cluster else { return };
    let stream = &state.config.cluster.stream;
    let (Ok(mut list), Ok(mut close)) = (
        c.nats.subscribe(control_subject(stream, "list")).await,
        c.nats
            .subscribe(control_subject(stream, &format!("close.{}", c.node)))
            .await,
    ) else {
        tracing::error!(
            "cannot subscribe to the cluster's session requests; the session list shows this node's sessions only on this node"
        );
        return;
    };
    loop {
        let (msg, listing) = tokio::select! {
            () = state.shutdown.cancelled() => return,
            m = list.next() => (m, true),
            m = close.next() => (m, false),
        };
        let Some(msg) = msg else { return };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let body = if listing {
            #[derive(serde::Deserialize)]
            struct Ask {
                client_id: Option<String>,
            }
            let ask: Ask = serde_json::from_slice(&msg.payload).unwrap_or(Ask { client_id: None });
            // The asking node lists its own.
            if msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Scopecast-Node"))
                .map(|v| v.as_str())
                == Some(c.node.as_str())
            {
                continue;
            }
            serde_json::to_vec(&crate::http::sessions::local(
                &state,
                ask.client_id.as_deref(),
            ))
        } else {
            let id = String::from_utf8_lossy(&msg.payload).into_owned();
            serde_json::to_vec(&crate::http::sessions::close_local(&state, &id))
        };
        if let Ok(body) = body {
            let _ = c.nats.publish(reply, body.into()).await;
        }
    }
}

/// The other nodes' sessions (of `client_id` only, when given): every answer that arrives
/// within half a second.
pub(crate) async fn remote_sessions(
    state: &crate::state::Broker,
    client_id: Option<&str>,
) -> Vec<scopecast_protocol::admin::SessionView> {
    use futures_util::StreamExt;
    let Some(c) = &state.cluster else {
        return Vec::new();
    };
    let inbox = c.nats.new_inbox();
    let Ok(mut answers) = c.nats.subscribe(inbox.clone()).await else {
        return Vec::new();
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Scopecast-Node", c.node.as_str());
    let ask = json!({ "client_id": client_id }).to_string();
    if c.nats
        .publish_with_reply_and_headers(
            control_subject(&state.config.cluster.stream, "list"),
            inbox,
            headers,
            ask.into(),
        )
        .await
        .is_err()
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + GATHER;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, answers.next()).await {
        if let Ok(views) =
            serde_json::from_slice::<Vec<scopecast_protocol::admin::SessionView>>(&m.payload)
        {
            out.extend(views);
        }
    }
    out
}

/// Asks node `node` to close its session `id`; its view, or `None` when no node answered
/// with one.
pub(crate) async fn close_remote(
    state: &crate::state::Broker,
    node: &str,
    id: &str,
) -> Option<scopecast_protocol::admin::SessionView> {
    let c = state.cluster.as_ref()?;
    let node_ok = !node.is_empty()
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !node_ok {
        return None;
    }
    let subject = control_subject(&state.config.cluster.stream, &format!("close.{node}"));
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        c.nats.request(subject, id.to_owned().into()),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice::<Option<scopecast_protocol::admin::SessionView>>(&answer.payload)
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_blob_opens_only_with_its_key_and_name() {
        let kek = Kek::parse(&Kek::generate().unwrap()).unwrap();
        let other = Kek::parse(&Kek::generate().unwrap()).unwrap();
        let sealed = kek.seal("signing_keys", b"secret set").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(kek.unseal("signing_keys", &sealed).unwrap(), b"secret set");
        assert!(kek.unseal("record_signing_keys", &sealed).is_err());
        assert!(other.unseal("signing_keys", &sealed).is_err());
        let mut flipped = sealed;
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(kek.unseal("signing_keys", &flipped).is_err());
        assert!(Kek::parse("c2hvcnQ=").is_err());
    }

    #[test]
    fn durability_names_each_reason() {
        assert_eq!(
            Durability::assess("2.9.10", 3).reasons,
            ["lazy_fsync", "server_before_2_11"]
        );
        assert_eq!(
            Durability::assess("2.10.4", 1).reasons,
            ["replicas_1", "server_before_2_11"]
        );
        assert!(Durability::assess("2.11.0", 3).reasons.is_empty());
        assert!(Durability::assess("v2.12.1-beta", 3).reasons.is_empty());
    }
}
