//! Scopecast broker: an OAuth2-scoped event broker for health IT.
//!
//! Modules:
//! - `config`: [`Config`], loaded from defaults, a TOML file, `SCOPECAST_*` variables and flags.
//! - `server`: [`run`]: start-up on a bound listener, the data folder, graceful shutdown.
//! - `http`: the HTTP routes on the one port (health, readiness; more with each issue).
//!
//! `src/main.rs` is the thin `scopecast` binary: it parses the CLI, installs tracing and calls
//! [`run`].

mod config;
mod http;
mod server;

pub use config::{Config, ConfigError, EnvironmentKind, LogMode, Overrides};
pub use server::{ServeError, run};
