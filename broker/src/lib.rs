//! Scopecast broker: an OAuth2-scoped event broker for health IT.
//!
//! Modules:
//! - `config`: [`Config`], loaded from defaults, a TOML file, `SCOPECAST_*` variables and flags.
//! - `server`: [`run`]: start-up on a bound listener, graceful shutdown.
//! - `data_dir`: the data folder, the modes of the files in it, and its lock.
//! - [`backup`]: backups taken while the broker runs (`POST /admin/v1/backup`), their
//!   manifest, and restore.
//! - [`registry`]: applications, client IDs, credentials, activations, audit; the SQLite store
//!   and its change feed, which the in-memory snapshot follows.
//! - [`auth`]: OAuth2 secrets, signing keys, tokens and verification.
//! - [`fanout`]: the sequencer, the topic index and per-session outboxes.
//! - [`log`]: the [`log::EventLog`] trait and its stores.
//! - [`session`]: one WebSocket session of `scopecast.v1`.
//! - [`metrics`]: Prometheus metrics.
//! - [`listener`]: the accept loop, TLS and handshake limits.
//! - `http`: the HTTP routes on the one port (health, readiness; more with each issue).
//!
//! `src/main.rs` is the thin `scopecast` binary: it parses the CLI, installs tracing and calls
//! [`run`].

pub mod auth;
pub mod backup;
mod config;
mod data_dir;
pub mod fanout;
mod http;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod registry;
mod server;
pub mod session;

pub use config::{
    Config, ConfigError, EnvironmentKind, ExternalIssuer, HttpConfig, LimitsConfig, LogFormat,
    LogMode, LogSync, OAuthConfig, Overrides, RetentionConfig, TlsConfig,
};
pub use data_dir::LOCK_FILE;
pub use server::{
    ADMIN_TOKEN_FILE, EVENT_LOG_FILE, Listeners, REGISTRY_FILE, SIGNING_KEYS_FILE, ServeError, run,
    run_on,
};
