//! Support for Scopecast's end-to-end tests (the tests themselves are in `tests/tests/`).
//!
//! - [`TestBroker`]: a real broker on `127.0.0.1:0` with its own temporary data folder,
//!   stopped when dropped.
//! - [`test_config`]: the configuration tests start from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scopecast_broker::{Config, LogMode};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for anything before failing rather than hanging.
pub const WAIT: Duration = Duration::from_secs(10);

/// A configuration for tests: port 0, in-memory log, a short shutdown grace.
///
/// The data folder is replaced by [`TestBroker::start`] with a fresh temporary one.
pub fn test_config() -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        log: LogMode::Memory,
        shutdown_grace_ms: 2_000,
        ..Config::default()
    }
}

/// A broker running in this process on an ephemeral port.
pub struct TestBroker {
    addr: SocketAddr,
    data_dir: PathBuf,
    /// Owns the temporary data folder; removed when the broker is dropped.
    _temp: TempDir,
    /// Dropping or sending on it starts the broker's graceful shutdown.
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), scopecast_broker::ServeError>>>,
}

impl TestBroker {
    /// Starts a broker with `config`, on `127.0.0.1:0`, in a fresh temporary data folder.
    ///
    /// # Panics
    /// When the port cannot be bound or the folder cannot be made: a test cannot go on.
    pub async fn start(mut config: Config) -> TestBroker {
        let temp = tempfile::tempdir().expect("temporary data folder");
        config.data_dir = temp.path().join("data");
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let task = tokio::spawn(scopecast_broker::run(listener, config, async move {
            let _ = rx.await;
        }));
        TestBroker {
            addr,
            data_dir,
            _temp: temp,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://127.0.0.1:PORT` followed by `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Its data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Starts graceful shutdown and waits for the broker to stop.
    ///
    /// # Errors
    /// The broker's own error, or a time-out after [`WAIT`].
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self
            .task
            .take()
            .ok_or_else(|| anyhow::anyhow!("already stopped"))?;
        tokio::time::timeout(WAIT, task).await???;
        Ok(())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
