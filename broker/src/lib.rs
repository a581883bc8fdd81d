//! Scopecast broker: an OAuth2-scoped event broker for health IT.
//!
//! Modules (ARCHITECTURE.md walks one event and one token through them):
//! - `config`: [`Config`], loaded from defaults, a TOML file, `SCOPECAST_*` variables and flags.
//! - `server`: [`run`]: wires the parts on a bound listener; graceful shutdown.
//! - `state`: the broker-wide services every front end shares, one cheap-clone handle.
//! - `access`: the one access check (token scope AND grant AND active client) and the one
//!   publish admission.
//! - [`log`]: the event log: it assigns `seq`, deduplicates, and can be tailed; memory and
//!   redb stores; the history reader.
//! - `fanout`: offers each stored event to local subscribers (handed batches by a local log's
//!   writer, or tailing a remote log).
//! - `session`: one WebSocket session of `scopecast.v1`, split by job.
//! - `http`: the HTTP surface (OAuth2, publish, history, the WebSocket upgrade, the admin
//!   API, metrics, health), with one error shape.
//! - [`registry`]: applications, client IDs, credentials, activations, audit; the SQLite store
//!   and its change feed, which the in-memory snapshot follows.
//! - [`auth`]: OAuth2 secrets, signing keys, tokens and verification.
//! - `cluster`: cluster mode's shared parts: the key-encryption key, the signing keys shared
//!   through the registry, the JetStream servers' durability, the NATS connection.
//! - [`catalog`]: signed application records: the catalog's record signer, the catalog
//!   keys an environment pins.
//! - [`backup`]: backups taken while the broker runs, their manifest, and restore.
//! - `rate`: publish rates per client ID.
//! - `metrics`: Prometheus metrics.
//! - `listener`: the accept loop, TLS and handshake limits.
//! - `data_dir`: the data folder, the modes of the files in it, and its lock.
//!
//! The `scopecast` binary is the `scopecast-cli` package (`cli/`): it parses the command line,
//! installs tracing and calls [`run`].

mod access;
mod audit;
pub mod auth;
pub mod backup;
pub mod catalog;
mod cluster;
mod config;
mod data_dir;
mod fanout;
mod fhir;
mod http;
mod listener;
pub mod log;
mod metrics;
mod rate;
pub mod registry;
mod server;
mod session;
mod state;
mod webhooks;

/// A new key-encryption key for `cluster.key_encryption_key_file` (base64 of 32 random bytes).
///
/// # Errors
/// When the system's random source fails.
pub fn generate_kek() -> Result<String, String> {
    cluster::Kek::generate()
}

pub use cluster::migrate_to_cluster;
pub use config::{
    ClusterConfig, Config, ConfigError, EnvironmentKind, ExternalIssuer, HttpConfig, LimitsConfig,
    LogFormat, LogMode, LogSync, OAuthConfig, Overrides, RetentionConfig, TlsConfig,
};
pub use data_dir::LOCK_FILE;
pub use server::{
    ADMIN_TOKEN_FILE, EVENT_LOG_FILE, Listeners, RECORD_KEYS_FILE, REGISTRY_FILE,
    SIGNING_KEYS_FILE, ServeError, run, run_on,
};
