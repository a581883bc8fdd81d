//! Scopecast broker: an OAuth2-scoped event broker for health IT.
//!
//! Modules:
//! - `config`: [`Config`], loaded from defaults, a TOML file, `SCOPECAST_*` variables and flags.
//! - `server`: [`run`]: start-up on a bound listener, the data folder, graceful shutdown.
//! - [`registry`]: applications, client IDs, credentials, activations, audit; SQLite store.
//! - [`auth`]: OAuth2 secrets, signing keys, tokens and verification.
//! - `http`: the HTTP routes on the one port (health, readiness; more with each issue).
//!
//! `src/main.rs` is the thin `scopecast` binary: it parses the CLI, installs tracing and calls
//! [`run`].

pub mod auth;
mod config;
mod http;
pub mod registry;
mod server;

pub use config::{
    Config, ConfigError, EnvironmentKind, ExternalIssuer, HttpConfig, LimitsConfig, LogMode,
    OAuthConfig, Overrides,
};
pub use server::{ADMIN_TOKEN_FILE, REGISTRY_FILE, SIGNING_KEYS_FILE, ServeError, run};
