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
    "CACERT",
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
    /// Per-connection and per-client limits.
    pub limits: LimitsConfig,
    /// The HTTP publish and history APIs.
    pub http: HttpConfig,
    /// Most events the in-memory log keeps (`log = "memory"`).
    pub memory_log_events: usize,
    /// TLS: serve HTTPS and WSS when both files are set.
    pub tls: TlsConfig,
    /// When an acknowledged event is on disk (`log = "durable"`).
    pub log_sync: LogSync,
    /// The durable log's page cache, in bytes (recently read and written pages of
    /// `events.redb`; more speeds up replays of old events, at the cost of memory).
    pub log_cache_bytes: usize,
    /// How long events are kept (both logs; the memory log also stops at `memory_log_events`).
    pub retention: RetentionConfig,
}

/// Durability of acknowledged events in the durable log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogSync {
    /// Each batch is flushed to the disk before it is acknowledged (survives any crash).
    Fsync,
    /// Written without waiting for the disk; flushed every 100 ms. Faster; a crash can lose
    /// the last 100 ms of acknowledged events.
    Os,
}

/// Retention of the event log; an event goes when any limit is exceeded; 0 disables a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Most events kept.
    pub max_events: u64,
    /// Most bytes of stored events kept.
    pub max_bytes: u64,
    /// Oldest event kept, in seconds.
    pub max_age_s: u64,
    /// How often retention runs, in ms.
    pub interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_events: 10_000_000,
            max_bytes: 10 << 30,
            max_age_s: 7 * 24 * 3600,
            interval_ms: 10_000,
        }
    }
}

/// TLS settings (rustls).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// Limits (PROTOCOL.md section 9). Each is announced to clients where it concerns them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest WebSocket message (and frame) a client may send, in bytes; larger: close 1009.
    pub max_frame_bytes: usize,
    /// Most subscriptions on one connection.
    pub max_subscriptions: usize,
    /// Most simultaneous connections per client ID; more: HTTP 429 or close 4029.
    pub max_connections_per_client: usize,
    /// Publishes per second per client ID (token bucket, burst of one second); 0: no limit.
    pub publish_rate_per_sec: u32,
    /// Outbound queue per connection, in bytes; past it: close 4008.
    pub outbound_queue_bytes: usize,
    /// Time for the first `auth` frame when the upgrade had no token, in ms; then close 4001.
    pub auth_timeout_ms: u64,
    /// Malformed frames in a row before closing with 4000.
    pub max_bad_frames: u32,
    /// Interval of server WebSocket pings, in ms; a peer silent for two intervals is closed 4009.
    pub heartbeat_ms: u64,
    /// How long before token expiry `token_expiring` is sent, in ms (at most half the lifetime).
    pub token_warning_ms: u64,
    /// Largest HTTP publish body, in bytes.
    pub max_publish_body_bytes: usize,
    /// Publish requests waiting for the sequencer before publishers wait.
    pub publish_queue: usize,
    /// WebSocket read buffer per connection, in bytes (1,024 to 1 MiB). It is the first read's
    /// size and what every connection holds while idle; a larger frame grows it to the
    /// frame's length. 1 KiB rather than 4 KiB saves 3 KiB per idle connection, with no
    /// measured cost to WebSocket publish throughput (BENCHMARKS.md, idle connections).
    pub read_buffer_bytes: usize,
    /// Bytes of outgoing frames a connection collects before writing them to its socket
    /// (1 KiB to 1 MiB); a batch of events goes out whenever this much is collected, and once
    /// more at its end. The buffer keeps the largest size it reached for the connection's
    /// life, about this plus the largest frame sent, so it bounds what a burst of small events
    /// leaves behind per connection: with tungstenite's default (128 KiB), 10,000 subscribers
    /// kept 1.8 GiB after one burst (BENCHMARKS.md). One large event (up to
    /// `max_frame_bytes`) still leaves a buffer of its size in every connection it went to.
    pub write_buffer_bytes: usize,
    /// How long a publisher's `event_id` / `Idempotency-Key` is remembered, in seconds; a
    /// repeat within it gets the original `seq` and is not delivered again. 0: off.
    pub idempotency_window_s: u64,
    /// Most event ids remembered at once (the oldest are forgotten first).
    pub idempotency_max_keys: usize,
    /// Largest HTTP request head (request line and headers), in bytes; larger: refused.
    pub max_header_bytes: usize,
    /// Most HTTP request headers.
    pub max_headers: usize,
    /// Time to finish the TLS handshake and send the request headers, in ms.
    pub handshake_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 1 << 20,
            max_subscriptions: 1_000,
            max_connections_per_client: 1_000,
            publish_rate_per_sec: 1_000,
            outbound_queue_bytes: 8 << 20,
            auth_timeout_ms: 5_000,
            max_bad_frames: 8,
            heartbeat_ms: 20_000,
            token_warning_ms: 60_000,
            max_publish_body_bytes: 1 << 20,
            publish_queue: 8_192,
            read_buffer_bytes: 1_024,
            write_buffer_bytes: 16_384,
            idempotency_window_s: 600,
            idempotency_max_keys: 200_000,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// The HTTP APIs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Lets the HTTP publish and history APIs identify a client by the `Scopecast-Client-Id`
    /// header instead of a token, for client IDs an admin enabled it for (DESIGN section 6).
    /// WebSocket subscriptions always need a token.
    pub client_id_header: bool,
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
    /// Most client-secret checks (argon2id, about 19 MiB each) running at once; token requests
    /// beyond it wait up to 2 s, then get 503 `temporarily_unavailable`.
    pub max_concurrent_secret_checks: usize,
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
            max_concurrent_secret_checks: 4,
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
            limits: LimitsConfig::default(),
            http: HttpConfig::default(),
            memory_log_events: 100_000,
            tls: TlsConfig::default(),
            log_sync: LogSync::Fsync,
            log_cache_bytes: crate::log::DEFAULT_CACHE_BYTES,
            retention: RetentionConfig::default(),
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
        if let Some(t) = &self.admin_token
            && (t.len() < 32 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                "admin_token",
                "must be at least 32 characters, no whitespace",
            ));
        }
        let l = &self.limits;
        if !(256..=64 << 20).contains(&l.max_frame_bytes) {
            return Err(invalid(
                "limits.max_frame_bytes",
                "must be 256 bytes to 64 MiB",
            ));
        }
        if l.max_subscriptions == 0 || l.max_connections_per_client == 0 {
            return Err(invalid(
                "limits",
                "max_subscriptions and max_connections_per_client must be at least 1",
            ));
        }
        if l.outbound_queue_bytes < l.max_frame_bytes.min(64 << 10) {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                "must hold at least one frame (64 KiB or max_frame_bytes)",
            ));
        }
        if !(100..=600_000).contains(&l.auth_timeout_ms) {
            return Err(invalid(
                "limits.auth_timeout_ms",
                "must be 100 to 600000 ms",
            ));
        }
        if !(100..=600_000).contains(&l.heartbeat_ms) {
            return Err(invalid("limits.heartbeat_ms", "must be 100 to 600000 ms"));
        }
        if l.max_bad_frames == 0 || l.publish_queue == 0 {
            return Err(invalid(
                "limits",
                "max_bad_frames and publish_queue must be at least 1",
            ));
        }
        if !(1024..=1 << 20).contains(&l.read_buffer_bytes) {
            return Err(invalid(
                "limits.read_buffer_bytes",
                "must be 1 KiB to 1 MiB",
            ));
        }
        if !(1024..=1 << 20).contains(&l.write_buffer_bytes) {
            return Err(invalid(
                "limits.write_buffer_bytes",
                "must be 1 KiB to 1 MiB",
            ));
        }
        if !(8192..=1 << 20).contains(&l.max_header_bytes) {
            return Err(invalid("limits.max_header_bytes", "must be 8 KiB to 1 MiB"));
        }
        if !(8..=1000).contains(&l.max_headers) {
            return Err(invalid("limits.max_headers", "must be 8 to 1000"));
        }
        if !(100..=120_000).contains(&l.handshake_timeout_ms) {
            return Err(invalid(
                "limits.handshake_timeout_ms",
                "must be 100 to 120000 ms",
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(invalid(
                "tls",
                "set both cert_file and key_file, or neither",
            ));
        }
        if !(100..=3_600_000).contains(&self.retention.interval_ms) {
            return Err(invalid(
                "retention.interval_ms",
                "must be 100 to 3600000 ms",
            ));
        }
        if self.memory_log_events == 0 {
            return Err(invalid("memory_log_events", "must be at least 1"));
        }
        let o = &self.oauth;
        if let Some(url) = &o.public_url {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => {}
                _ => {
                    return Err(invalid(
                        "oauth.public_url",
                        "must be an http(s) URL without a query",
                    ));
                }
            }
        }
        if !(5..=86_400).contains(&o.token_lifetime_s) {
            return Err(invalid(
                "oauth.token_lifetime_s",
                "must be 5 to 86400 seconds",
            ));
        }
        if o.jwks_min_refresh_s == 0 || o.jwks_min_refresh_s > 86_400 {
            return Err(invalid(
                "oauth.jwks_min_refresh_s",
                "must be 1 to 86400 seconds",
            ));
        }
        if !(1..=256).contains(&o.max_concurrent_secret_checks) {
            return Err(invalid(
                "oauth.max_concurrent_secret_checks",
                "must be 1 to 256",
            ));
        }
        if o.leeway_s > 300 {
            return Err(invalid("oauth.leeway_s", "must be at most 300 seconds"));
        }
        if !(100..=60_000).contains(&o.jwks_fetch_timeout_ms) {
            return Err(invalid(
                "oauth.jwks_fetch_timeout_ms",
                "must be 100 to 60000 ms",
            ));
        }
        for issuer in &o.external_issuers {
            if issuer.issuer.is_empty() || issuer.audience.is_empty() {
                return Err(invalid(
                    "oauth.external_issuers",
                    "each needs `issuer` and `audience`",
                ));
            }
            if issuer.jwks_file.is_some() == issuer.jwks_uri.is_some() {
                return Err(invalid(
                    "oauth.external_issuers",
                    "each needs exactly one of `jwks_file` and `jwks_uri`",
                ));
            }
        }
        Ok(())
    }

    /// The public base URL: `oauth.public_url`, or `http://<bound>` when unset. No trailing `/`.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        match &self.oauth.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.tls.cert_file.is_some() => format!("https://{bound}"),
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
            jail.set_env("SCOPECAST_CACERT", "/etc/ssl/hospital-ca.pem");
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
    fn out_of_range_values_name_their_field() {
        let mut c = Config::default();
        c.oauth.token_lifetime_s = 1;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("oauth.token_lifetime_s")
        );
        let mut c = Config::default();
        c.limits.max_frame_bytes = 10;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("limits.max_frame_bytes")
        );
        let c = Config {
            admin_token: Some("short".into()),
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("admin_token")
        );
        let mut c = Config::default();
        c.oauth.public_url = Some("ftp://x".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("oauth.public_url")
        );
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
