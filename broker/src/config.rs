//! Broker configuration: defaults, then a TOML file, then `SCOPECAST_*` environment variables,
//! then command-line flags (DESIGN section 8). Every limit is a field here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Environment variables that belong to the client subcommands, not to `serve`.
const CLIENT_ENV: &[&str] = &[
    "URL",
    "ADMIN_TOKEN",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "TOKEN",
    "PRIVATE_KEY",
    "CONFIG",
];

/// Which kind of environment this broker serves (DESIGN section 2): a client ID of the other
/// kind is refused everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EnvironmentKind {
    /// Live patient data.
    Production,
    /// Test, staging and development.
    NonProduction,
}

impl EnvironmentKind {
    /// The spelling used in config, the CLI and the admin API.
    pub const fn as_str(self) -> &'static str {
        match self {
            EnvironmentKind::Production => "production",
            EnvironmentKind::NonProduction => "non-production",
        }
    }
}

/// Where events are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogMode {
    /// On disk in the data folder; survives restarts.
    Durable,
    /// In memory only; for tests and demos.
    Memory,
}

/// The whole broker configuration.
///
/// `Config::default()` is what tests start from; [`Config::load`] layers a file, the
/// environment and flags over it; [`Config::validate`] names the field at fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (HTTP, WebSocket, admin API and metrics share it).
    pub listen: SocketAddr,
    /// Folder for the registry, signing keys, admin credential and event log.
    pub data_dir: PathBuf,
    /// This broker's environment kind.
    pub environment: EnvironmentKind,
    /// The customer's name for this environment, shown in metadata and logs.
    pub environment_name: String,
    /// Event log mode.
    pub log: LogMode,
    /// How long shutdown waits for sessions to flush, in ms.
    pub shutdown_grace_ms: u64,
    /// The admin API's bearer credential. When unset, the broker uses
    /// `<data_dir>/admin.token`, creating it (mode 0600) on first start. Never printed.
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,
    /// The authorization server and token verification.
    pub oauth: OAuthConfig,
}

/// OAuth2 settings (DESIGN section 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// The broker's public base URL, e.g. `https://events.hospital.example`. It is the token
    /// issuer (`iss`) and audience (`aud`), and `<public_url>/oauth2/token` is the audience
    /// of client assertions. Unset: `http://<bound address>`.
    pub public_url: Option<String>,
    /// Access token lifetime, in seconds (SMART Backend Services: at most 300 recommended).
    pub token_lifetime_s: u64,
    /// Clock leeway for `exp`, `nbf` and `iat`, in seconds.
    pub leeway_s: u64,
    /// Shortest interval between two fetches of one JWK Set URL, in seconds.
    pub jwks_min_refresh_s: u64,
    /// Time-out of a JWK Set fetch, in ms.
    pub jwks_fetch_timeout_ms: u64,
    /// Issuers other than this broker whose access tokens are accepted.
    pub external_issuers: Vec<ExternalIssuer>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            public_url: None,
            token_lifetime_s: 300,
            leeway_s: 30,
            jwks_min_refresh_s: 30,
            jwks_fetch_timeout_ms: 5_000,
            external_issuers: Vec::new(),
        }
    }
}

/// An organisation's own OAuth2 server whose access tokens the broker accepts. Its tokens
/// must carry a `client_id` registered here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuer {
    /// The exact `iss` value.
    pub issuer: String,
    /// The `aud` value its tokens must carry for this broker.
    pub audience: String,
    /// A JWK Set file, read at start.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWK Set URL, fetched and cached.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Require the RFC 9068 `typ` header `at+jwt`.
    #[serde(default = "yes")]
    pub require_typ: bool,
}

fn yes() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("./scopecast-data"),
            environment: EnvironmentKind::NonProduction,
            environment_name: "default".to_owned(),
            log: LogMode::Durable,
            shutdown_grace_ms: 5_000,
            admin_token: None,
            oauth: OAuthConfig::default(),
        }
    }
}

/// A configuration that cannot be used, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an environment variable or a flag could not be read into [`Config`].
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range.
    #[error("configuration field `{field}`: {message}")]
    Invalid {
        /// The field, dotted for nested ones.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--environment`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentKind>,
    /// `--log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogMode>,
}

impl Config {
    /// Defaults, then `file` (TOML) if given, then `SCOPECAST_*` variables (nested fields with
    /// `__`, e.g. `SCOPECAST_LIMITS__MAX_FRAME_BYTES`), then `flags`; then [`Config::validate`].
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, variable or field at fault.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let env = Env::prefixed("SCOPECAST_")
            .filter(|key| {
                !CLIENT_ENV
                    .iter()
                    .any(|c| key.as_str().eq_ignore_ascii_case(c))
            })
            .split("__");
        figment = figment.merge(env).merge(Serialized::defaults(flags));
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that types cannot express.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.environment_name.is_empty()
            || self.environment_name.len() > 64
            || self.environment_name.chars().any(char::is_control)
        {
            return Err(invalid(
                "environment_name",
                "must be 1 to 64 characters, no control characters",
            ));
        }
        if self.shutdown_grace_ms > 600_000 {
            return Err(invalid(
                "shutdown_grace_ms",
                "must be at most 600000 (10 minutes)",
            ));
        }
        Ok(())
    }

    /// The public base URL: `oauth.public_url`, or `http://<bound>` when unset. No trailing `/`.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        match &self.oauth.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{bound}"),
        }
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The effective configuration as TOML, for `scopecast serve --print-config`.
    ///
    /// # Errors
    /// Only if a value has no TOML form, which the field types rule out.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}

fn invalid(field: &'static str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error.
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.data_dir, PathBuf::from("./scopecast-data"));
        assert_eq!(c.environment, EnvironmentKind::NonProduction);
        assert_eq!(c.log, LogMode::Durable);
        c.validate().unwrap();
    }

    #[test]
    fn file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "scopecast.toml",
                "listen = \"127.0.0.1:9000\"\nenvironment = \"production\"\nlog = \"memory\"\n",
            )?;
            jail.set_env("SCOPECAST_LISTEN", "127.0.0.1:9001");
            jail.set_env("SCOPECAST_URL", "http://ignored.example");
            jail.set_env("SCOPECAST_OAUTH__TOKEN_LIFETIME_S", "60");
            let flags = Overrides {
                log: Some(LogMode::Durable),
                ..Overrides::default()
            };
            let c = Config::load(Some(Path::new("scopecast.toml")), &flags)
                .map_err(|e| e.to_string())?;
            assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
            assert_eq!(c.environment, EnvironmentKind::Production);
            assert_eq!(c.log, LogMode::Durable);
            assert_eq!(c.oauth.token_lifetime_s, 60);
            Ok(())
        });
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "listn = \"127.0.0.1:1\"\n")?;
            let err = Config::load(Some(Path::new("a.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("listn"), "{err}");
            jail.create_file("b.toml", "environment = \"prod\"\n")?;
            let err = Config::load(Some(Path::new("b.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("environment"), "{err}");
            jail.create_file("c.toml", "environment_name = \"\"\n")?;
            let err = Config::load(Some(Path::new("c.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("environment_name"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn print_config_round_trips_and_never_shows_the_admin_token() {
        let c = Config {
            admin_token: Some("x".repeat(40)),
            ..Config::default()
        };
        let text = c.to_toml().unwrap();
        assert!(!text.contains(&"x".repeat(40)));
        let c = Config::default();
        let text = c.to_toml().unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
