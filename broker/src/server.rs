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

use crate::config::Config;
use crate::http;

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
    let state = AppState {
        inner: Arc::new(Inner {
            config,
            ready: AtomicBool::new(true),
        }),
    };
    let app: Router = http::router(state.clone());

    let cancel = CancellationToken::new();
    let on_signal = {
        let cancel = cancel.clone();
        let state = state.clone();
        async move {
            shutdown.await;
            state.inner.ready.store(false, Ordering::Release);
            tracing::info!("shutdown requested; no longer accepting connections");
            cancel.cancel();
        }
    };
    let local = listener.local_addr()?;
    tracing::info!(%local, "scopecast listening");
    let server = axum::serve(listener, app).with_graceful_shutdown(on_signal);
    let server = tokio::spawn(async move { server.await });
    cancel.cancelled().await;
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!(error = %join, "server task failed"),
        Err(_) => tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period over; stopping"
        ),
    }
    tracing::info!("scopecast stopped");
    Ok(())
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
