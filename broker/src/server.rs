//! Start-up and shutdown: binds nothing itself ([`run`] takes a bound listener so tests can use
//! port 0), prepares the data folder, serves HTTP and WebSocket on one port, and stops
//! gracefully (STYLE "Shutdown").

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::client_auth::ClientAuthenticator;
use crate::auth::jwks::JwksCache;
use crate::auth::keys::KeyRing;
use crate::auth::secret;
use crate::auth::token::{TokenIssuer, TokenVerifier};
use crate::config::Config;
use crate::config::LogMode;
use crate::fanout::Bus;
use crate::http;
use crate::listener;
use crate::log::{DurableLog, EventLog, MemoryLog, Retention, SyncMode};
use crate::metrics::Metrics;
use crate::registry::{Registry, SqliteStore};
use crate::session::Hub;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// The admin credential file in the data folder.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The signing key file in the data folder.
pub const SIGNING_KEYS_FILE: &str = "signing-keys.json";
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

/// State shared by every request handler: a cheap `Clone` over `Arc`s.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// False once shutdown has begun; `/readyz` reports it so load balancers drain us first.
    pub(crate) ready: AtomicBool,
    pub(crate) registry: Registry,
    pub(crate) issuer: TokenIssuer,
    pub(crate) client_auth: ClientAuthenticator,
    /// What WebSocket sessions and the publish API share.
    pub(crate) hub: Arc<Hub>,
    /// Every WebSocket session task, so shutdown can wait for them.
    pub(crate) sessions: TaskTracker,
    /// The admin API credential; compared in constant time, never logged.
    pub(crate) admin_token: String,
}

impl AppState {
    pub(crate) fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }
}

/// Runs the broker on `listener` until `shutdown` completes, then stops gracefully: it stops
/// accepting, lets in-flight requests finish, and waits at most `config.shutdown_grace_ms`.
///
/// # Errors
/// [`ServeError`] when the data folder cannot be prepared or the listener fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    prepare_data_dir(&config.data_dir)?;
    let grace = config.shutdown_grace();
    let admin_token = admin_token(&config)?;
    let o = &config.oauth;
    // A retired key stays published until every token it signed has expired.
    let retain_for = (o.token_lifetime_s + o.leeway_s + 60) as i64;
    let keys_path = config.data_dir.join(SIGNING_KEYS_FILE);
    let keys =
        KeyRing::open(&keys_path, retain_for).map_err(|e| ServeError::Startup(e.to_string()))?;
    let registry_path = config.data_dir.join(REGISTRY_FILE);
    let store = SqliteStore::open(&registry_path)
        .await
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    let registry = Registry::open(store)
        .await
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    let public_url = config.public_url(listener.local_addr()?);
    let issuer = TokenIssuer::new(public_url.clone(), o.token_lifetime_s, keys);
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
        registry = %registry_path.display(),
        signing_keys = %keys_path.display(),
        "authorization server ready"
    );
    let metrics =
        Arc::new(Metrics::new().map_err(|e| ServeError::Startup(format!("metrics: {e}")))?);
    let retention = Retention {
        max_events: config.retention.max_events,
        max_bytes: config.retention.max_bytes,
        max_age_s: config.retention.max_age_s,
    };
    let (log, retainer): (Arc<dyn EventLog>, Option<tokio::task::JoinHandle<()>>) = match config.log
    {
        LogMode::Memory => (Arc::new(MemoryLog::new(config.memory_log_events)), None),
        LogMode::Durable => {
            let path = config.data_dir.join(EVENT_LOG_FILE);
            let sync = match config.log_sync {
                crate::config::LogSync::Fsync => SyncMode::Fsync,
                crate::config::LogSync::Os => SyncMode::Os,
            };
            let durable = Arc::new(
                DurableLog::open_cached(&path, sync, config.log_cache_bytes)
                    .map_err(|e| ServeError::Startup(format!("{}: {e}", path.display())))?,
            );
            tracing::info!(path = %path.display(), last_seq = durable.last_seq(), "event log opened");
            let every = Duration::from_millis(config.retention.interval_ms);
            let weak = Arc::downgrade(&durable);
            let retainer = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(log) = weak.upgrade() else { return };
                    match tokio::task::spawn_blocking(move || log.enforce(retention)).await {
                        Ok(Ok(n)) if n > 0 => {
                            tracing::info!(removed = n, "retention removed old events")
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "retention failed; will retry"),
                        _ => {}
                    }
                }
            });
            (durable, Some(retainer))
        }
    };
    let (bus, sequencer) = Bus::start(
        log.clone(),
        metrics.clone(),
        config.limits.publish_queue,
        (
            Duration::from_secs(config.limits.idempotency_window_s),
            config.limits.idempotency_max_keys,
        ),
    );
    let cancel = CancellationToken::new();
    let hub = Arc::new(Hub::new(
        bus,
        log,
        verifier,
        registry.clone(),
        metrics,
        config.limits.clone(),
        cancel.clone(),
    ));
    let follower = tokio::spawn(hub.sessions.clone().follow(registry.clone()));
    let sessions = TaskTracker::new();
    let state = AppState {
        inner: Arc::new(Inner {
            config,
            ready: AtomicBool::new(true),
            registry,
            issuer,
            client_auth,
            admin_token,
            hub,
            sessions: sessions.clone(),
        }),
    };
    let app: Router = http::router(state.clone());

    let on_signal = {
        let cancel = cancel.clone();
        let state = state.clone();
        async move {
            shutdown.await;
            state.inner.ready.store(false, Ordering::Release);
            tracing::info!(
                "shutdown requested; no longer accepting connections; closing sessions with 1001"
            );
            cancel.cancel();
        }
    };
    let tls = match (
        &state.inner.config.tls.cert_file,
        &state.inner.config.tls.key_file,
    ) {
        (Some(cert), Some(key)) => Some(
            listener::tls_acceptor(cert, key).map_err(|e| ServeError::Startup(e.to_string()))?,
        ),
        _ => None,
    };
    let local = listener.local_addr()?;
    tracing::info!(%local, tls = tls.is_some(), "scopecast listening");
    let server = {
        let limits = state.inner.config.limits.clone();
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
    if tokio::time::timeout_at(deadline, server).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period over; stopping"
        );
    }
    // Dropping the last Bus handles (in the state) stops the sequencer after its last batch.
    drop(state);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sequencer).await;
    follower.abort();
    if let Some(r) = retainer {
        r.abort();
    }
    tracing::info!("scopecast stopped");
    Ok(())
}

/// The admin credential: from the configuration, else `<data_dir>/admin.token`, created
/// (mode 0600, 256 random bits) on first start.
fn admin_token(config: &Config) -> Result<String, ServeError> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    let wrap = |source| ServeError::DataDir {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
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
        return Ok(token);
    }
    let token = secret::random_token(secret::SECRET_BYTES)
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&path).map_err(wrap)?;
        f.write_all(token.as_bytes()).map_err(wrap)?;
        f.write_all(b"\n").map_err(wrap)?;
    }
    tracing::info!(path = %path.display(), "created the admin credential (mode 0600)");
    Ok(token)
}

/// Creates the data folder (mode 0700 on Unix) on first start.
fn prepare_data_dir(dir: &Path) -> Result<(), ServeError> {
    let wrap = |source| ServeError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(wrap)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(wrap)?;
        }
        tracing::info!(path = %dir.display(), "created data folder");
    } else if !dir.is_dir() {
        return Err(wrap(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a folder",
        )));
    }
    Ok(())
}
