//! Start-up and shutdown: binds nothing itself ([`run`] takes a bound listener so tests can use
//! port 0), prepares the data folder, serves HTTP and WebSocket on one port, and stops
//! gracefully (STYLE "Shutdown").

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

use axum::Router;
use tokio::net::TcpListener;

use crate::auth::client_auth::ClientAuthenticator;
use crate::auth::jwks::JwksCache;
use crate::auth::keys::KeyRing;
use crate::auth::secret;
use crate::auth::token::{TokenIssuer, TokenVerifier};
use crate::config::Config;
use crate::config::LogMode;
use crate::fanout::Fanout;
use crate::http;
use crate::listener;
use crate::log::{DurableLog, EventLog, MemoryLog, Retention, SyncMode};
use crate::metrics::Metrics;
use crate::registry::{Registry, SqliteStore};
use crate::state::{Broker, Parts};
use std::time::Duration;

/// The admin credential file in the data folder.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The signing key file in the data folder.
pub const SIGNING_KEYS_FILE: &str = "signing-keys.json";
/// The record-signing keys of this deployment as a catalog (never the token keys).
pub const RECORD_KEYS_FILE: &str = "record-signing-keys.json";
/// The registry database in the data folder.
pub const REGISTRY_FILE: &str = "registry.sqlite";
/// The durable event log in the data folder.
pub const EVENT_LOG_FILE: &str = "events.redb";

/// Why the broker could not start or stopped with a fault.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data folder could not be created or used.
    #[error("data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A start-up step failed (keys, registry, configuration).
    #[error("{0}")]
    Startup(String),
    /// The listener failed.
    #[error("serving HTTP: {0}")]
    Io(#[from] io::Error),
}

/// The sockets the broker serves on, bound by the caller (so tests can use port 0).
#[derive(Debug)]
pub struct Listeners {
    /// The public port: HTTP APIs, WebSocket, OAuth2 (and the operator endpoints unless
    /// `admin` is given).
    pub main: TcpListener,
    /// The operator port (`admin_listen`): admin API, metrics, health.
    pub admin: Option<TcpListener>,
}

/// Runs the broker on `listener` until `shutdown` completes, then stops gracefully: it stops
/// accepting, lets in-flight requests finish, and waits at most `config.shutdown_grace_ms`.
/// With `admin_listen` configured, it binds that address itself.
///
/// # Errors
/// [`ServeError`] when the data folder cannot be prepared or a listener fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let admin = match config.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| ServeError::Startup(format!("binding admin_listen {addr}: {e}")))?,
        ),
        None => None,
    };
    run_on(
        Listeners {
            main: listener,
            admin,
        },
        config,
        shutdown,
    )
    .await
}

/// As [`run`], on listeners the caller bound (`listeners.admin` is used when `admin_listen`
/// is configured, and must then be given).
///
/// # Errors
/// As [`run`].
pub async fn run_on(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Listeners {
        main: listener,
        admin: admin_listener,
    } = listeners;
    if config.admin_listen.is_some() != admin_listener.is_some() {
        return Err(ServeError::Startup(
            "admin_listen is configured but no admin listener was given (or the reverse)".into(),
        ));
    }
    crate::data_dir::prepare(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    // Held until `run_on` returns: a second broker, or a restore, on this folder is refused.
    let _data_lock = crate::data_dir::lock(&config.data_dir).map_err(|e| match e {
        crate::data_dir::LockError::Held(_) => ServeError::Startup(format!(
            "{e}; stop it first, or give this broker another --data-dir"
        )),
        other => ServeError::Startup(other.to_string()),
    })?;
    let grace = config.shutdown_grace();
    let public_url = config.public_url(listener.local_addr()?);
    let Assembled {
        state,
        fanout_task,
        background,
        deliveries,
        audit,
    } = assemble(config, public_url, listener.local_addr()?.port()).await?;
    let cancel = state.shutdown.clone();
    // Kept to stop the registry's feed follower at the end (tasks may outlive `state`).
    let feed = state.registry.clone();
    let sessions = state.session_tasks.clone();
    let (app, admin_app): (Router, Option<Router>) = http::routers(state.clone());

    let on_signal = {
        let cancel = cancel.clone();
        let state = state.clone();
        async move {
            shutdown.await;
            state.ready.store(false, Ordering::Release);
            tracing::info!(
                "shutdown requested; no longer accepting connections; closing sessions with 1001"
            );
            cancel.cancel();
        }
    };
    let tls = match (&state.config.tls.cert_file, &state.config.tls.key_file) {
        (Some(cert), Some(key)) => Some(
            listener::tls_acceptor(cert, key).map_err(|e| ServeError::Startup(e.to_string()))?,
        ),
        _ => None,
    };
    let local = listener.local_addr()?;
    tracing::info!(%local, tls = tls.is_some(), "scopecast listening");
    let admin_server = match (admin_listener, admin_app) {
        (Some(l), Some(app)) => {
            let admin_local = l.local_addr()?;
            tracing::info!(%admin_local, tls = tls.is_some(), "admin API and metrics listening");
            let limits = state.config.limits.clone();
            let cancel = cancel.clone();
            let tls = tls.clone();
            Some(tokio::spawn(async move {
                listener::serve(l, app, tls, &limits, cancel, grace).await
            }))
        }
        _ => None,
    };
    let server = {
        let limits = state.config.limits.clone();
        let cancel = cancel.clone();
        tokio::spawn(
            async move { listener::serve(listener, app, tls, &limits, cancel, grace).await },
        )
    };
    tokio::spawn(on_signal);
    cancel.cancelled().await;
    // Sessions see the cancellation, queue a 1001 close after what they hold, and end.
    sessions.close();
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period over with sessions still open"
        );
    }
    if let Some(a) = admin_server {
        let _ = tokio::time::timeout_at(deadline, a).await;
    }
    if tokio::time::timeout_at(deadline, server).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period over; stopping"
        );
    }
    // The webhook engine began stopping with the cancellation: its requests in flight
    // finish, then it saves the cursors (a delivery that was answered is not made again
    // after the restart) and gives the leases back.
    let deliveries_abort = deliveries.abort_handle();
    if tokio::time::timeout(crate::webhooks::SHUTDOWN_WAIT, deliveries)
        .await
        .is_err()
    {
        tracing::warn!("webhook deliveries did not stop in time; their cursors may be behind");
        deliveries_abort.abort();
    }
    // The sessions have sent their last records: write them, sign the chain's head.
    let (audit_stop, audit_task) = audit;
    audit_stop.cancel();
    if let Some(task) = audit_task {
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("the access audit's last records were not written in time");
            abort.abort();
        }
    }
    // Dropping the last handles of the log (in the state) stops its writer after its last
    // batch, and with it the fan-out's tail.
    drop(state);
    // A tailing fan-out (cluster mode) holds its consumer until it is stopped.
    let fanout_abort = fanout_task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), fanout_task)
        .await
        .is_err()
    {
        fanout_abort.abort();
    }
    for task in background {
        task.abort();
    }
    feed.stop_following();
    tracing::info!("scopecast stopped");
    Ok(())
}

/// A broker's services, assembled and running, without listeners.
pub(crate) struct Assembled {
    /// The services.
    pub(crate) state: Broker,
    /// The fan-out task: it ends after the log's last handle is dropped.
    pub(crate) fanout_task: tokio::task::JoinHandle<()>,
    /// Background tasks (registry follower, log prober, retention) to abort at the end.
    pub(crate) background: Vec<tokio::task::JoinHandle<()>>,
    /// The webhook engine: at shutdown it lets requests in flight finish, saves the cursors
    /// and gives its leases back; awaited (bounded) before the end.
    pub(crate) deliveries: tokio::task::JoinHandle<()>,
    /// The access audit's writer (when on) and what stops it: cancelled after the sessions and
    /// the webhook engine have ended, then awaited (bounded).
    pub(crate) audit: (CancellationToken, Option<tokio::task::JoinHandle<()>>),
}

/// Opens the stores in `config.data_dir` (prepared and locked by the caller) and wires the
/// services: signing keys, registry and the first admin credential, token issuer (`public_url`
/// is its `iss`) and verifier, metrics, event log, fan-out, access and admission; starts the
/// registry follower, the log prober and retention.
///
/// # Errors
/// [`ServeError::Startup`] when a store cannot be opened.
pub(crate) async fn assemble(
    mut config: Config,
    public_url: String,
    port: u16,
) -> Result<Assembled, ServeError> {
    let o = &config.oauth;
    let startup = |e: &dyn std::fmt::Display| ServeError::Startup(e.to_string());
    // A retired key stays published until every token it signed has expired.
    let retain_for = (o.token_lifetime_s + o.leeway_s + 60) as i64;
    let keys_path = config.data_dir.join(SIGNING_KEYS_FILE);
    let registry_path = config.data_dir.join(REGISTRY_FILE);
    private_files(&config)?;
    let node = config
        .cluster
        .enabled()
        .then(|| crate::cluster::node_name(&config.cluster, port));
    let registry = match &node {
        None => {
            let store = SqliteStore::open(&registry_path)
                .await
                .map_err(|e| startup(&e))?;
            Registry::open_following(store, Duration::from_millis(config.registry_poll_ms)).await
        }
        Some(_) => {
            let url = crate::cluster::postgres_url(&config.cluster).map_err(|e| startup(&e))?;
            let store = crate::registry::PgStore::open(&url)
                .await
                .map_err(|e| startup(&format!("cluster registry (PostgreSQL): {e}")))?;
            Registry::open_following(store, Duration::from_millis(config.registry_poll_ms)).await
        }
    }
    .map_err(|e| startup(&e))?;
    admin_credential(&config, &registry).await?;
    registry.set_environment(&config.environment_id());
    // One node keeps its keys in files; a cluster's nodes share them, sealed, in the registry.
    let (keys, records, shared) = match &node {
        None => (
            KeyRing::open(&keys_path, retain_for).map_err(|e| startup(&e))?,
            crate::catalog::RecordSigner::open(&config.data_dir.join(RECORD_KEYS_FILE))
                .map_err(|e| startup(&e))?,
            None,
        ),
        Some(node) => {
            let path = config
                .cluster
                .key_encryption_key_file
                .as_deref()
                .ok_or_else(|| startup(&"cluster mode needs cluster.key_encryption_key_file"))?;
            let kek = Arc::new(crate::cluster::Kek::load(path).map_err(|e| startup(&e))?);
            let tokens = crate::cluster::SharedRing::open(
                registry.clone(),
                kek.clone(),
                crate::cluster::TOKEN_KEYS,
                retain_for,
                node,
            )
            .await
            .map_err(|e| startup(&e))?;
            let records = crate::cluster::SharedRing::open(
                registry.clone(),
                kek,
                crate::cluster::RECORD_KEYS,
                crate::catalog::RETIRED_KEY_KEPT_S,
                node,
            )
            .await
            .map_err(|e| startup(&e))?;
            (
                tokens.ring().clone(),
                crate::catalog::RecordSigner::from_ring(records.ring().clone()),
                Some((tokens, records)),
            )
        }
    };
    let trusted =
        crate::catalog::TrustedCatalogs::load(config.catalog.trusted_keys_file.as_deref())
            .map_err(ServeError::Startup)?;
    if let Some(path) = &config.catalog.token_file
        && let Err(e) = std::fs::read_to_string(path)
    {
        return Err(ServeError::Startup(format!(
            "catalog.token_file {}: {e}",
            path.display()
        )));
    }
    if !trusted.kids().is_empty() {
        tracing::info!(kids = ?trusted.kids(), "trusting application records signed by these catalog keys");
    }
    // The files SQLite made beside the database (`-wal`, `-shm`) copy its mode; check anyway.
    private_files(&config)?;
    let issuer = TokenIssuer::new(
        public_url.clone(),
        o.token_lifetime_s,
        keys,
        config.environment_id(),
    );
    let jwks = JwksCache::new(
        std::time::Duration::from_millis(o.jwks_fetch_timeout_ms),
        std::time::Duration::from_secs(o.jwks_min_refresh_s),
    );
    let verifier = TokenVerifier::new(
        &issuer,
        &o.external_issuers,
        jwks.clone(),
        registry.clone(),
        config.environment,
        o.leeway_s,
    )
    .map_err(|e| ServeError::Startup(e.to_string()))?;
    let client_auth = ClientAuthenticator::new(
        registry.clone(),
        jwks,
        format!("{public_url}/oauth2/token"),
        o.leeway_s,
        o.max_concurrent_secret_checks,
    );
    tracing::info!(
        issuer = %public_url,
        environment = config.environment.as_str(),
        environment_name = %config.environment_name,
        env = %config.environment_id(),
        registry = %if node.is_some() { "PostgreSQL (cluster)".to_owned() } else { registry_path.display().to_string() },
        signing_keys = %if node.is_some() { "shared through the registry, sealed".to_owned() } else { keys_path.display().to_string() },
        node = node.as_deref().unwrap_or("-"),
        "authorization server ready"
    );
    let metrics = Arc::new(
        Metrics::for_node(node.as_deref())
            .map_err(|e| ServeError::Startup(format!("metrics: {e}")))?,
    );
    metrics.set_environment(config.environment.as_str(), &config.environment_name);
    let retention = Retention {
        max_events: config.retention.max_events,
        max_bytes: config.retention.max_bytes,
        max_age_s: config.retention.max_age_s,
    };
    let queue = config.limits.publish_queue;
    let idempotency = (
        Duration::from_secs(config.limits.idempotency_window_s),
        config.limits.idempotency_max_keys,
    );
    let mut cluster = None;
    let mut max_payload = None;
    let (log, retainer): (Arc<dyn EventLog>, Option<tokio::task::JoinHandle<()>>) = match config.log
    {
        _ if node.is_some() => {
            let node = node.clone().unwrap_or_default();
            let c = &config.cluster;
            let client = crate::cluster::connect_nats(c, &node)
                .await
                .map_err(|e| startup(&e))?;
            let durability =
                crate::cluster::Durability::assess(&client.server_info().version, c.replicas);
            max_payload = Some(client.server_info().max_payload);
            let log = crate::log::JetStreamLog::open(
                client.clone(),
                crate::log::JetStreamSettings {
                    stream: c.stream.clone(),
                    subject_prefix: c.subject_prefix.clone(),
                    replicas: c.replicas,
                    max_events: config.retention.max_events,
                    max_bytes: config.retention.max_bytes,
                    max_age: Duration::from_secs(config.retention.max_age_s),
                    duplicate_window: Duration::from_secs(config.limits.idempotency_window_s),
                },
            )
            .await
            .map_err(|e| startup(&format!("cluster event log (JetStream): {e}")))?;
            for reason in &durability.reasons {
                metrics
                    .log_durability_degraded
                    .with_label_values(&[reason])
                    .set(1);
            }
            if durability.reasons.is_empty() {
                tracing::info!(server_version = %durability.server_version, replicas = c.replicas, "event log on JetStream");
            } else {
                tracing::warn!(
                    server_version = %durability.server_version,
                    replicas = c.replicas,
                    degraded = ?durability.reasons,
                    "event log on JetStream with degraded durability (docs/FAULTS.md)"
                );
            }
            tracing::info!(stream = %c.stream, last_seq = log.bounds().last, "event log opened");
            let (tokens, records) = shared.clone().ok_or_else(|| startup(&"no shared keys"))?;
            cluster = Some(crate::state::ClusterState {
                node,
                durability,
                tokens,
                records,
                nats: client,
            });
            (Arc::new(log) as Arc<dyn EventLog>, None)
        }
        LogMode::Memory => (
            Arc::new(MemoryLog::start(
                config.memory_log_events,
                queue,
                idempotency,
            )),
            None,
        ),
        LogMode::Durable => {
            let path = config.data_dir.join(EVENT_LOG_FILE);
            let sync = match config.log_sync {
                crate::config::LogSync::Fsync => SyncMode::Fsync,
                crate::config::LogSync::Os => SyncMode::Os,
            };
            let durable = DurableLog::open_cached(&path, sync, config.log_cache_bytes)
                .map_err(|e| ServeError::Startup(format!("{}: {e}", path.display())))?
                .start(queue, idempotency);
            tracing::info!(path = %path.display(), last_seq = durable.bounds().last, "event log opened");
            let every = Duration::from_millis(config.retention.interval_ms);
            let retained = durable.clone();
            let retainer = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let log = retained.clone();
                    match tokio::task::spawn_blocking(move || log.storage().enforce(retention))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => {
                            tracing::info!(removed = n, "retention removed old events")
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "retention failed; will retry"),
                        _ => {}
                    }
                }
            });
            (Arc::new(durable), Some(retainer))
        }
    };
    if let Some(max) = max_payload {
        fit_nats_payload(&mut config, max);
    }
    let (fanout, fanout_task) = Fanout::start(log.clone(), metrics.clone());
    let webhooks = crate::webhooks::kit(&config).map_err(|e| startup(&e))?;
    let audit_key = crate::audit::chain::AuditKey::from_seed(&webhooks.kek.audit_seed())
        .map_err(|e| startup(&e))?;
    let (audit, audit_writer) = crate::audit::AccessAudit::new(
        &config.audit,
        registry.clone(),
        config.environment_id(),
        node.clone().unwrap_or_else(|| "local".to_owned()),
        audit_key,
        metrics.clone(),
    );
    let state = Broker::new(Parts {
        config,
        registry: registry.clone(),
        issuer,
        verifier,
        client_auth,
        log,
        fanout,
        metrics,
        records,
        trusted,
        public_url: public_url.clone(),
        cluster,
        webhooks,
        audit,
    });
    // Stopped after the sessions and the webhook engine, so their last records are written.
    let audit_stop = CancellationToken::new();
    let audit_task = audit_writer.map(|w| tokio::spawn(w.run(audit_stop.clone())));
    let follower = tokio::spawn(state.sessions.clone().follow(registry.clone()));
    // Pulls the catalog's records on an interval, when one is configured.
    tokio::spawn(crate::catalog::sync_loop(
        state.clone(),
        state.shutdown.clone(),
    ));
    // After a failed append, find out when the log takes writes again even if nobody
    // publishes (readiness follows it).
    let prober = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if !state.admission.log_writable() && state.log.probe().await.is_ok() {
                    state.admission.set_log_writable();
                }
            }
        })
    };
    let deliveries = tokio::spawn(state.webhooks.clone().run(state.shutdown.clone()));
    // The Subscriptions are known before the first request (their numbers follow from the
    // numbering task).
    state
        .fhir
        .refresh()
        .await
        .map_err(|e| startup(&format!("FHIR Subscriptions: {e}")))?;
    let fhir = tokio::spawn(state.fhir.clone().run(state.shutdown.clone()));
    let mut background = vec![follower, prober, fhir];
    if let Some(c) = &state.cluster {
        background.push(tokio::spawn(crate::cluster::serve_sessions(state.clone())));
        background.push(tokio::spawn(crate::cluster::follow_rings(
            registry.clone(),
            vec![c.tokens.clone(), c.records.clone()],
        )));
    }
    background.extend(retainer);
    Ok(Assembled {
        state,
        fanout_task,
        background,
        deliveries,
        audit: (audit_stop, audit_task),
    })
}

/// Bytes of a NATS message kept for the headers of an event (ids, time, fingerprint).
const NATS_HEADER_ROOM: usize = 8 * 1024;

/// Lowers the publish body and frame limits to what the NATS servers take in one message
/// (`max_payload`, less [`NATS_HEADER_ROOM`]): an event too large for them is then refused
/// with the usual 413 or 1009 at the front end, rather than failing (and being retried) at
/// the log.
fn fit_nats_payload(config: &mut Config, max_payload: usize) {
    let room = max_payload.saturating_sub(NATS_HEADER_ROOM);
    for (name, limit) in [
        (
            "limits.max_publish_body_bytes",
            &mut config.limits.max_publish_body_bytes,
        ),
        ("limits.max_frame_bytes", &mut config.limits.max_frame_bytes),
    ] {
        if *limit > room {
            tracing::warn!(
                setting = name,
                configured = *limit,
                used = room,
                nats_max_payload = max_payload,
                "lowered to fit the NATS servers' max_payload (raise max_payload on the servers to keep it)"
            );
            *limit = room;
        }
    }
}

/// The first admin credential. The `admin_token` setting, when given, is valid as a credential
/// named `admin (config)`. Otherwise `<data_dir>/admin.token` (mode 0600, 256 random bits) is
/// created on first start and stored in the credential store as `admin`; a file from before
/// the credential store existed is imported the same way (the upgrade path). A revoked
/// `admin` stays revoked. Without the file, when the store already has a valid credential
/// named `admin` (a restored backup: backups hold the store, not the file), no file is made.
async fn admin_credential(config: &Config, registry: &Registry) -> Result<(), ServeError> {
    if let Some(t) = &config.admin_token {
        return registry
            .set_config_credential(t)
            .await
            .map_err(|e| ServeError::Startup(e.to_string()));
    }
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    let wrap = |source| ServeError::DataDir {
        path: path.display().to_string(),
        source,
    };
    let token = if path.exists() {
        let token = std::fs::read_to_string(&path)
            .map_err(wrap)?
            .trim()
            .to_owned();
        if token.len() < 32 {
            return Err(ServeError::Startup(format!(
                "{} holds no usable admin credential",
                path.display()
            )));
        }
        token
    } else if registry
        .credentials()
        .all()
        .iter()
        .any(|c| c.is_valid() && c.name == "admin")
    {
        // A restored backup (or a data folder whose admin.token was removed) already has its
        // admin credential; a new file would hold a token the store refuses.
        tracing::info!(
            path = %path.display(),
            "no admin.token; the credential store already has the admin credential `admin` (a restored backup keeps its credentials): use that credential, or one made with `scopecast credential create`"
        );
        return Ok(());
    } else {
        let token = format!(
            "{}{}",
            crate::registry::credential::TOKEN_PREFIX,
            secret::random_token(secret::SECRET_BYTES)
                .map_err(|e| ServeError::Startup(e.to_string()))?
        );
        write_private(&path, format!("{token}\n").as_bytes()).map_err(wrap)?;
        tracing::info!(path = %path.display(), "created the admin credential (mode 0600)");
        token
    };
    match registry.bootstrap_admin(&token).await {
        Ok(true) => tracing::info!("the admin credential is in the credential store as `admin`"),
        Ok(false) => {}
        Err(crate::registry::RegistryError::Conflict(_)) => tracing::warn!(
            path = %path.display(),
            "admin.token does not match the credential named `admin`; it is not accepted"
        ),
        Err(e) => return Err(ServeError::Startup(e.to_string())),
    }
    Ok(())
}

/// Creates `path` with `bytes`, readable by the service alone (mode 0600); refuses to
/// overwrite.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Every file the broker keeps in the data folder, private to the service (0600): created so
/// before a store opens it, tightened if it exists with wider permissions.
fn private_files(config: &Config) -> Result<(), ServeError> {
    let dir = &config.data_dir;
    let mut files = Vec::new();
    // In cluster mode the registry and the log are PostgreSQL and JetStream.
    if !config.cluster.enabled() {
        files.push(dir.join(REGISTRY_FILE));
        if config.log == LogMode::Durable {
            files.push(dir.join(EVENT_LOG_FILE));
        }
    }
    for path in &files {
        crate::data_dir::private_file(path).map_err(|source| ServeError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
    }
    for name in [
        SIGNING_KEYS_FILE,
        ADMIN_TOKEN_FILE,
        crate::webhooks::KEK_FILE,
        "registry.sqlite-wal",
        "registry.sqlite-shm",
    ] {
        let path = dir.join(name);
        crate::data_dir::private_if_present(&path).map_err(|source| ServeError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}
