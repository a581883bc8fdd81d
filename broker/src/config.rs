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
    "ADMIN_URL",
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

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans), for log shippers.
    Json,
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
    /// Address to listen on (HTTP, WebSocket; also the admin API and metrics unless
    /// `admin_listen` is set).
    pub listen: SocketAddr,
    /// A separate address for the operator endpoints (`/admin/v1`, `/metrics`, plus
    /// `/healthz` and `/readyz`); when set, the public `listen` address no longer serves them.
    pub admin_listen: Option<SocketAddr>,
    /// Folder for the registry, signing keys, admin credential and event log.
    pub data_dir: PathBuf,
    /// This broker's environment kind.
    pub environment: EnvironmentKind,
    /// The customer's name for this environment, shown in metadata and logs.
    pub environment_name: String,
    /// Event log mode.
    pub log: LogMode,
    /// Format of the broker's own log lines on stderr.
    pub log_format: LogFormat,
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
    /// How often the registry's change feed is read when nothing signalled a change, in ms:
    /// the longest a change written by another process or node sharing the registry takes
    /// to reach this broker (this broker's own changes apply at once).
    pub registry_poll_ms: u64,
    /// Application records from a catalog (README, "Environments and the catalog").
    pub catalog: CatalogConfig,
    /// Cluster mode: the event log on NATS JetStream and the registry on PostgreSQL, shared
    /// by every node (README, "Cluster mode"). Off (the embedded redb and SQLite) unless
    /// `cluster.nats_url` is set.
    pub cluster: ClusterConfig,
    /// Outgoing delivery: signed webhooks (WEBHOOKS.md).
    pub webhooks: WebhooksConfig,
    /// FHIR Subscriptions (FHIR.md).
    pub fhir: FhirConfig,
    /// The access audit (SECURITY.md "Access audit"): who received what, who was refused.
    pub audit: AuditConfig,
    /// The operator console at `/console` (SECURITY.md "Operator console").
    pub console: ConsoleConfig,
}

/// The operator console at `/console` (SECURITY.md "Operator console").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The console is served (on the broker's port; `/console`).
    pub enabled: bool,
    /// A session ends after this many seconds without a request.
    pub idle_timeout_s: u64,
    /// A session ends this many seconds after sign-in, whatever happens.
    pub absolute_timeout_s: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            idle_timeout_s: 1_800,
            absolute_timeout_s: 43_200,
        }
    }
}

impl ConsoleConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=86_400).contains(&self.idle_timeout_s) {
            return Err(invalid("console.idle_timeout_s", "must be from 1 to 86400"));
        }
        if !(self.idle_timeout_s..=604_800).contains(&self.absolute_timeout_s) {
            return Err(invalid(
                "console.absolute_timeout_s",
                "must be from console.idle_timeout_s to 604800",
            ));
        }
        Ok(())
    }
}

/// The access audit (SECURITY.md "Access audit").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Records are written at all (on by default; off only to measure its cost).
    pub enabled: bool,
    /// Records are kept this many days (then pruned, up to a signed checkpoint).
    pub retention_days: u64,
    /// A live subscription's record is written again this often, ms (its counts so far).
    pub checkpoint_ms: u64,
    /// The chain's newest row is signed this often, ms (when rows were added).
    pub sign_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            retention_days: 365,
            checkpoint_ms: 60_000,
            sign_ms: 10_000,
        }
    }
}

impl AuditConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.retention_days == 0 {
            return Err(invalid("audit.retention_days", "must be at least 1"));
        }
        if !(100..=3_600_000).contains(&self.checkpoint_ms) {
            return Err(invalid(
                "audit.checkpoint_ms",
                "must be from 100 to 3600000",
            ));
        }
        if !(100..=3_600_000).contains(&self.sign_ms) {
            return Err(invalid("audit.sign_ms", "must be from 100 to 3600000"));
        }
        Ok(())
    }
}

/// FHIR Subscriptions (FHIR.md): topics besides the built-in catalogue, and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FhirConfig {
    /// More `SubscriptionTopic`s (`[[fhir.topics]]`: `id`, `canonical`, `title`,
    /// `broker_topic`, `resource_type`, `filters = [{name, path, kind = "reference"|"token"}]`).
    pub topics: Vec<scopecast_protocol::fhir::topics::TopicDef>,
    /// Subscriptions per client ID at most.
    pub max_subscriptions_per_client: usize,
}

impl Default for FhirConfig {
    fn default() -> Self {
        FhirConfig {
            topics: Vec::new(),
            max_subscriptions_per_client: 100,
        }
    }
}

impl FhirConfig {
    /// The catalogue: the built-in topics, then the configured ones.
    pub fn topics(&self) -> Vec<scopecast_protocol::fhir::topics::TopicDef> {
        let mut out = scopecast_protocol::fhir::topics::builtin_topics();
        out.extend(self.topics.iter().cloned());
        out
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let all = self.topics();
        for (i, t) in self.topics.iter().enumerate() {
            let bad = |sub: &str, message: &str| {
                invalid(
                    "fhir.topics",
                    &format!("topic {i} ({}): {sub} {message}", t.id),
                )
            };
            if t.id.is_empty()
                || t.id.len() > 64
                || !t
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(bad("id", "must be 1 to 64 of A-Z a-z 0-9 - ."));
            }
            if scopecast_protocol::Topic::new(&t.broker_topic).is_err() {
                return Err(bad(
                    "broker_topic",
                    "must be a broker topic such as fhir.observation.final (no wildcards)",
                ));
            }
            if !t.canonical.contains("://") && !t.canonical.starts_with("urn:") {
                return Err(bad("canonical", "must be a URL"));
            }
            if !t
                .resource_type
                .starts_with(|c: char| c.is_ascii_uppercase())
                || !t.resource_type.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return Err(bad(
                    "resource_type",
                    "must be a FHIR resource type such as Observation",
                ));
            }
            if all.iter().filter(|o| o.id == t.id).count() > 1
                || all.iter().filter(|o| o.canonical == t.canonical).count() > 1
            {
                return Err(bad("id or canonical", "is already in the catalogue"));
            }
        }
        if !(1..=10_000).contains(&self.max_subscriptions_per_client) {
            return Err(invalid(
                "fhir.max_subscriptions_per_client",
                "must be 1 to 10000",
            ));
        }
        Ok(())
    }
}

/// Outgoing delivery (WEBHOOKS.md). Signing secrets are sealed with a key-encryption key:
/// `cluster.key_encryption_key_file` in cluster mode, else `<data_dir>/webhooks.kek` (made on
/// first start, mode 0600; keep it with the data folder's backups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Address ranges (CIDR) deliveries may reach although they are not global unicast, e.g.
    /// `["10.20.0.0/16"]` for a hospital's internal receivers (SECURITY.md, "Webhooks").
    pub allow_private: Vec<String>,
    /// Allow `http://` endpoint URLs (the signature still holds; the body is in clear).
    pub allow_http: bool,
    /// Per-attempt time-out, connect to response, ms.
    pub timeout_ms: u64,
    /// The delay before each retry after a failed attempt, ms; past the last, the endpoint is
    /// disabled. Default: Standard Webhooks' 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h,
    /// 20 h, 24 h.
    pub retry_schedule_ms: Vec<u64>,
    /// PEM CA certificates trusted for endpoints besides the system's store.
    pub ca_file: Option<PathBuf>,
    /// Response bytes read at most (the rest is discarded).
    pub max_response_bytes: usize,
    /// How long attempt records are kept, s.
    pub attempts_retention_s: u64,
    /// How long the previous secret still signs after a rotation, s.
    pub rotation_overlap_s: u64,
    /// How long a node's claim on an endpoint lasts without renewal, ms (cluster mode: a node
    /// that died is replaced after at most this; renewed every third of it).
    pub lease_ms: u64,
    /// Endpoints per client ID at most.
    pub max_endpoints_per_client: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow_private: Vec::new(),
            allow_http: false,
            timeout_ms: 15_000,
            retry_schedule_ms: crate::webhooks::DEFAULT_SCHEDULE_MS.to_vec(),
            ca_file: None,
            max_response_bytes: 64 * 1024,
            attempts_retention_s: 30 * 86_400,
            rotation_overlap_s: 86_400,
            lease_ms: 15_000,
            max_endpoints_per_client: 10,
        }
    }
}

impl WebhooksConfig {
    /// `allow_private` parsed.
    ///
    /// # Errors
    /// The first entry that is not a CIDR range (or a single address).
    pub fn allowed_ranges(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.allow_private
            .iter()
            .map(|r| {
                r.parse::<ipnet::IpNet>()
                    .or_else(|_| r.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("`{r}` is not an address range such as 10.0.0.0/8"))
            })
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.allowed_ranges()
            .map_err(|m| invalid("webhooks.allow_private", &m))?;
        if !(100..=120_000).contains(&self.timeout_ms) {
            return Err(invalid(
                "webhooks.timeout_ms",
                "must be 100 to 120000 (2 minutes)",
            ));
        }
        if self.retry_schedule_ms.len() > 50
            || self.retry_schedule_ms.iter().any(|d| *d > 7 * 86_400_000)
        {
            return Err(invalid(
                "webhooks.retry_schedule_ms",
                "at most 50 steps, each at most 7 days",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_response_bytes) {
            return Err(invalid(
                "webhooks.max_response_bytes",
                "must be 1024 to 16777216",
            ));
        }
        if !(1_000..=600_000).contains(&self.lease_ms) {
            return Err(invalid("webhooks.lease_ms", "must be 1000 to 600000"));
        }
        if self.rotation_overlap_s > 30 * 86_400 {
            return Err(invalid(
                "webhooks.rotation_overlap_s",
                "must be at most 2592000 (30 days)",
            ));
        }
        if !(1..=1000).contains(&self.max_endpoints_per_client) {
            return Err(invalid(
                "webhooks.max_endpoints_per_client",
                "must be 1 to 1000",
            ));
        }
        Ok(())
    }
}

/// Cluster mode (README "Cluster mode", ARCHITECTURE.md "Cluster mode"). With `nats_url`
/// set, the event log is a JetStream stream and the registry a PostgreSQL database shared by
/// every node, and `log`, `log_sync`, `log_cache_bytes` and `memory_log_events` do not apply;
/// `retention` becomes the stream's limits and `limits.idempotency_window_s` its duplicate
/// window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS servers, comma-separated (`nats://10.0.0.1:4222,nats://10.0.0.2:4222`;
    /// `tls://` for TLS). Setting it turns cluster mode on.
    pub nats_url: Option<String>,
    /// A file holding a NATS token, when the servers need one (a user and password go in
    /// the URL: `nats://user:password@host:4222`; keep such a configuration private).
    pub nats_token_file: Option<PathBuf>,
    /// PEM CA certificates that verify the NATS servers' TLS certificates (else the system's).
    pub nats_ca_file: Option<PathBuf>,
    /// How often the broker pings its NATS server, in ms: a server that stops answering
    /// (hung, cut off) is left for another within about two intervals (async-nats' default of
    /// 60 s would take minutes).
    pub nats_ping_interval_ms: u64,
    /// The JetStream stream holding the events (created on first start).
    pub stream: String,
    /// Events are stored under `<subject_prefix>.<topic>`.
    pub subject_prefix: String,
    /// Stream replicas: 3 survives the loss of one NATS node; 1 survives none (reported as
    /// degraded durability).
    pub replicas: usize,
    /// The PostgreSQL registry, e.g. `postgres://scopecast@db.internal/scopecast`. Prefer
    /// `postgres_url_file` when the URL holds a password.
    #[serde(skip_serializing)]
    pub postgres_url: Option<String>,
    /// A file holding the PostgreSQL URL (kept out of the configuration file and the
    /// environment).
    pub postgres_url_file: Option<PathBuf>,
    /// The key-encryption key: a file holding 32 random bytes, base64 (`scopecast cluster
    /// kek`), the same on every node, readable by the service alone. It seals the token and
    /// record signing keys kept in PostgreSQL (AES-256-GCM).
    pub key_encryption_key_file: Option<PathBuf>,
    /// This node's name: the `node` of metrics, sessions and logs (default: host name and
    /// port).
    pub node_name: Option<String>,
    /// `/readyz` says not ready while this node's fan-out is more than this many ms behind
    /// the stream with events waiting (a node that delivers nothing is not healthy).
    pub max_fanout_lag_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: None,
            nats_token_file: None,
            nats_ca_file: None,
            nats_ping_interval_ms: 2_000,
            stream: "SCOPECAST_EVENTS".to_owned(),
            subject_prefix: "scopecast.events".to_owned(),
            replicas: 3,
            postgres_url: None,
            postgres_url_file: None,
            key_encryption_key_file: None,
            node_name: None,
            max_fanout_lag_ms: 10_000,
        }
    }
}

impl ClusterConfig {
    /// True when cluster mode is on (`nats_url` set).
    pub fn enabled(&self) -> bool {
        self.nats_url.is_some()
    }
}

/// Where this environment's application records may come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// A JWK Set file with the record-signing public keys of the catalog(s) this environment
    /// trusts (what `scopecast catalog keys` prints on the catalog). Without it, no record is
    /// imported. The keys are pinned: an offline environment verifies records with them alone.
    pub trusted_keys_file: Option<PathBuf>,
    /// The catalog to sync records from (its base URL); `None`: records arrive by file only.
    pub url: Option<String>,
    /// A file holding a `viewer` credential of the catalog, sent when syncing (the catalog's
    /// record list needs one).
    pub token_file: Option<PathBuf>,
    /// How often to sync, in seconds (default 300; 0: only on demand, `scopecast app sync`).
    pub sync_interval_s: u64,
    /// On a catalog: may developers register themselves (`POST /dev/v1/register`)? Off: a
    /// catalog admin creates developer credentials (`scopecast credential create --role
    /// developer`).
    pub self_registration: bool,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            trusted_keys_file: None,
            url: None,
            token_file: None,
            sync_interval_s: 300,
            self_registration: false,
        }
    }
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
    /// WebSocket read buffer of a connection whose upgrade request carries a token with a
    /// `publish:` scope, in bytes (1,024 to 1 MiB): each socket read takes at most the
    /// buffer's size, so a publisher of 1.7 KB FHIR resources behind a 1 KiB buffer made two
    /// or three reads per frame. 64 KiB took one read for many frames: N = 1 fan-out of the
    /// Encounter 1.35x faster (BENCHMARKS.md, performance round two). Subscribers keep
    /// `read_buffer_bytes`; a connection that sends its token in an `auth` frame too.
    pub publisher_read_buffer_bytes: usize,
    /// Bytes of outgoing frames a connection collects before writing them to its socket
    /// (1 KiB to 1 MiB); a batch of events goes out whenever this much is collected, and once
    /// more at its end. The buffer keeps the largest size it reached for the connection's
    /// life, about this plus the largest frame sent, so it bounds what a burst of small events
    /// leaves behind per connection: with tungstenite's default (128 KiB), 10,000 subscribers
    /// kept 1.8 GiB after one burst (BENCHMARKS.md). One large event (up to
    /// `max_frame_bytes`) still leaves a buffer of its size in every connection it went to.
    pub write_buffer_bytes: usize,
    /// The shortest time between two writes of events to one connection while the fan-out
    /// is wide, in microseconds (0 to 100,000; 0: every wake-up writes at once). An event
    /// that finds the connection's last write older than this goes out at once; one that
    /// comes sooner waits for the rest of the interval, with whatever else comes meanwhile,
    /// so a busy connection is written (and woken) at most once per interval. Replies and
    /// closes never wait, nor does a batch of `write_buffer_bytes`. Each socket write costs
    /// the same whatever it carries (about 19 us of CPU on loopback, most of it the kernel's),
    /// so at partial load a wide fan-out spent its CPU on writes of a few events each. The
    /// default, 5 ms (Kafka's producer `linger.ms` since 4.0), halved the broker's CPU at 25%
    /// load with 100 subscribers (p99 at 50% load 4.2 to 8.7 ms); with 1,000 subscribers, whose
    /// events each come every millisecond or so, it takes 20 ms (CPU at 25% load 96% to 66%
    /// of a core, p99 at 50% load 47 to 25 ms on a machine the harness shares; BENCHMARKS.md,
    /// performance round two). Like NATS's flusher (a write per batch, not per message). The
    /// timer's resolution is 1 ms.
    pub write_coalesce_us: u64,
    /// The fan-out width from which writes are coalesced (`write_coalesce_us`): this node's
    /// recent average of connections each event went to (`scopecast_fanout_width`). Below it
    /// (apps each on their own stream, the common case) every event is written at once: a
    /// narrow fan-out already writes what is queued at each wake-up, and would only wait. The
    /// average is the node's, so on a node whose fan-out is wide a narrow stream's events are
    /// coalesced too.
    pub write_coalesce_min_fanout: u64,
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
            publisher_read_buffer_bytes: 65_536,
            write_buffer_bytes: 16_384,
            write_coalesce_us: 5_000,
            write_coalesce_min_fanout: 64,
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
/// must carry a client ID registered here, of this environment's kind and active.
///
/// The client ID and scope are read from claims named by `client_id_claims` and
/// `scope_claims`, and only from the claims of a token whose signature has verified.
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
    /// Longest token lifetime accepted from this issuer, in seconds (60 to 86400). A token is
    /// refused when `exp - iat` exceeds it (when it has `iat`), or when its remaining life,
    /// `exp - now`, exceeds it by more than `oauth.leeway_s` (always): a stolen long-lived
    /// token would outlive a deactivation at the issuer for that long.
    #[serde(default = "default_max_token_lifetime_s")]
    pub max_token_lifetime_s: u64,
    /// Claims holding the client ID, in order of preference: the first one present in the
    /// token is used, and it must be a non-empty string. Microsoft Entra ID puts the client
    /// in `azp` (v2 tokens) or `appid` (v1), Okta in `cid`, Keycloak in `azp`, RFC 9068
    /// issuers in `client_id`.
    #[serde(default = "default_client_id_claims")]
    pub client_id_claims: Vec<String>,
    /// Claims holding the granted scope, in order of preference. Only the first one present
    /// in the token is read; the others are ignored, never merged in, so a claim the issuer
    /// meant for something else (Entra ID's `roles` next to `scp` in a delegated token, say)
    /// cannot widen the grant. A string claim is space-delimited (`scope`, Keycloak); an
    /// array claim is a list of single scope tokens (`scp` in Okta, `roles` in Entra ID
    /// app-only tokens). A token with none of them has an empty scope, which grants nothing.
    #[serde(default = "default_scope_claims")]
    pub scope_claims: Vec<String>,
}

impl ExternalIssuer {
    /// The default for `max_token_lifetime_s`: one hour.
    pub const DEFAULT_MAX_TOKEN_LIFETIME_S: u64 = 3_600;

    /// An issuer of `issuer` for `audience` with the default settings (`typ` required, one
    /// hour at most, the default claim mapping) and no keys yet: set `jwks_file` or `jwks_uri`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> ExternalIssuer {
        ExternalIssuer {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_file: None,
            jwks_uri: None,
            require_typ: true,
            max_token_lifetime_s: Self::DEFAULT_MAX_TOKEN_LIFETIME_S,
            client_id_claims: default_client_id_claims(),
            scope_claims: default_scope_claims(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_max_token_lifetime_s() -> u64 {
    ExternalIssuer::DEFAULT_MAX_TOKEN_LIFETIME_S
}

fn default_client_id_claims() -> Vec<String> {
    ["client_id", "azp", "appid", "cid"]
        .map(str::to_owned)
        .to_vec()
}

fn default_scope_claims() -> Vec<String> {
    ["scope", "scp", "roles"].map(str::to_owned).to_vec()
}

/// Checks a list of claim names from `field`: 1 to 8 names, each 1 to 64 visible ASCII
/// characters other than `,` (names are listed with commas in refusals), no repeats.
fn validate_claim_names(
    issuer: &str,
    field: &'static str,
    names: &[String],
) -> Result<(), ConfigError> {
    let bad = |message: &str| ConfigError::Invalid {
        field,
        message: format!("issuer {issuer}: {message}"),
    };
    if !(1..=8).contains(&names.len()) {
        return Err(bad("must name 1 to 8 claims"));
    }
    for (i, name) in names.iter().enumerate() {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err(bad(
                "each claim name must be 1 to 64 visible ASCII characters, no `,`",
            ));
        }
        if names[..i].contains(name) {
            return Err(bad(&format!("claim `{name}` is listed twice")));
        }
    }
    Ok(())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            admin_listen: None,
            data_dir: PathBuf::from("./scopecast-data"),
            environment: EnvironmentKind::NonProduction,
            environment_name: "default".to_owned(),
            log: LogMode::Durable,
            log_format: LogFormat::Text,
            shutdown_grace_ms: 5_000,
            admin_token: None,
            oauth: OAuthConfig::default(),
            limits: LimitsConfig::default(),
            http: HttpConfig::default(),
            memory_log_events: 100_000,
            tls: TlsConfig::default(),
            log_sync: LogSync::Fsync,
            log_cache_bytes: crate::log::DEFAULT_CACHE_BYTES,
            registry_poll_ms: 1_000,
            catalog: CatalogConfig::default(),
            retention: RetentionConfig::default(),
            cluster: ClusterConfig::default(),
            webhooks: WebhooksConfig::default(),
            fhir: FhirConfig::default(),
            audit: AuditConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

/// A configuration that cannot be used, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an environment variable or a flag could not be read into [`Config`]. The
    /// message already holds figment's whole account (value, key, and which file or variable),
    /// so it is not also given as a source: printed once.
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    /// A value is out of range.
    #[error("configuration field `{field}`: {message}")]
    Invalid {
        /// The field, dotted for nested ones.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The `SCOPECAST_*` variables, as figment's [`Env`] reads them, but with errors that name the
/// variable as it is set (`SCOPECAST_LIMITS__MAX_FRAME_BYTES`) rather than figment's key
/// (`"LIMITS.MAX_FRAME_BYTES" in SCOPECAST_ environment variable(s)`).
struct PrefixedEnv(Env);

impl figment::Provider for PrefixedEnv {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable").interpolater(
            |_: &figment::Profile, path: &[&str]| {
                let name: Vec<String> = path.iter().map(|k| k.to_ascii_uppercase()).collect();
                format!("SCOPECAST_{}", name.join("__"))
            },
        )
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.0.data()
    }
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--environment`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentKind>,
    /// `--log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogMode>,
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// This deployment's environment as tokens, `/readyz`, the logs and the metrics name it:
    /// `<kind>/<name>`, e.g. `non-production/test`.
    pub fn environment_id(&self) -> String {
        format!("{}/{}", self.environment.as_str(), self.environment_name)
    }

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
        figment = figment
            .merge(PrefixedEnv(env))
            .merge(Serialized::defaults(flags));
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The `[cluster]` checks of [`Config::validate`].
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let Some(url) = &c.nats_url else {
            return Ok(());
        };
        if url.split(',').any(|u| u.trim().is_empty()) {
            return Err(invalid(
                "cluster.nats_url",
                "must be one or more NATS URLs, comma-separated",
            ));
        }
        if c.postgres_url.is_some() == c.postgres_url_file.is_some() {
            return Err(invalid(
                "cluster.postgres_url",
                "cluster mode needs exactly one of cluster.postgres_url and cluster.postgres_url_file",
            ));
        }
        if c.key_encryption_key_file.is_none() {
            return Err(invalid(
                "cluster.key_encryption_key_file",
                "cluster mode needs the key-encryption key (make one with `scopecast cluster kek`)",
            ));
        }
        if !(1..=5).contains(&c.replicas) {
            return Err(invalid("cluster.replicas", "must be 1 to 5"));
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !token(&c.stream) {
            return Err(invalid(
                "cluster.stream",
                "must be 1 to 64 letters, digits, `_` or `-`",
            ));
        }
        if c.subject_prefix.is_empty() || c.subject_prefix.split('.').any(|t| !token(t)) {
            return Err(invalid(
                "cluster.subject_prefix",
                "must be dot-separated tokens of letters, digits, `_` or `-`",
            ));
        }
        if !(100..=60_000).contains(&c.nats_ping_interval_ms) {
            return Err(invalid(
                "cluster.nats_ping_interval_ms",
                "must be 100 to 60000",
            ));
        }
        if c.max_fanout_lag_ms < 100 {
            return Err(invalid("cluster.max_fanout_lag_ms", "must be at least 100"));
        }
        if let Some(n) = &c.node_name
            && !token(n)
        {
            return Err(invalid(
                "cluster.node_name",
                "must be 1 to 64 letters, digits, `_` or `-`",
            ));
        }
        Ok(())
    }

    /// Checks ranges that types cannot express.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        self.validate_cluster()?;
        self.webhooks.validate()?;
        self.fhir.validate()?;
        self.audit.validate()?;
        self.console.validate()?;
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
        if !(1024..=1 << 20).contains(&l.publisher_read_buffer_bytes) {
            return Err(invalid(
                "limits.publisher_read_buffer_bytes",
                "must be 1 KiB to 1 MiB",
            ));
        }
        if l.write_coalesce_us > 100_000 {
            return Err(invalid(
                "limits.write_coalesce_us",
                "must be 0 to 100000 (100 ms)",
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
        if self
            .admin_listen
            .is_some_and(|a| a == self.listen && a.port() != 0)
        {
            return Err(invalid(
                "admin_listen",
                "must differ from `listen` (unset it to serve the admin API on `listen`)",
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
        if !(10..=60_000).contains(&self.registry_poll_ms) {
            return Err(invalid("registry_poll_ms", "must be 10 to 60000 ms"));
        }
        if let Some(url) = &self.catalog.url {
            if self.catalog.trusted_keys_file.is_none() {
                return Err(invalid(
                    "catalog.trusted_keys_file",
                    "must be set with catalog.url: every synced record is verified against the \
                     catalog keys pinned there (`scopecast catalog keys --out FILE` on the catalog)",
                ));
            }
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid("catalog.url", "must be an http(s) URL"));
            }
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
            if !(60..=86_400).contains(&issuer.max_token_lifetime_s) {
                return Err(ConfigError::Invalid {
                    field: "oauth.external_issuers.max_token_lifetime_s",
                    message: format!("issuer {}: must be 60 to 86400 seconds", issuer.issuer),
                });
            }
            validate_claim_names(
                &issuer.issuer,
                "oauth.external_issuers.client_id_claims",
                &issuer.client_id_claims,
            )?;
            validate_claim_names(
                &issuer.issuer,
                "oauth.external_issuers.scope_claims",
                &issuer.scope_claims,
            )?;
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
            jail.set_env("SCOPECAST_LISTEN", "localhost-ish");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("\"SCOPECAST_LISTEN\""), "{err}");
            jail.set_env("SCOPECAST_LISTEN", "127.0.0.1:1");
            jail.set_env("SCOPECAST_LIMITS__MAX_FRAME_BYTES", "lots");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(
                err.to_string()
                    .contains("\"SCOPECAST_LIMITS__MAX_FRAME_BYTES\""),
                "{err}"
            );
            jail.set_env("SCOPECAST_LIMITS__MAX_FRAME_BYTES", "65536");
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
    fn external_issuers_default_their_lifetime_and_claim_mapping() {
        let toml = r#"
            [[oauth.external_issuers]]
            issuer = "https://login.microsoftonline.com/tid/v2.0"
            audience = "api://scopecast"
            jwks_uri = "https://login.microsoftonline.com/tid/discovery/v2.0/keys"

            [[oauth.external_issuers]]
            issuer = "https://hospital.okta.com/oauth2/default"
            audience = "api://default"
            jwks_uri = "https://hospital.okta.com/oauth2/default/v1/keys"
            max_token_lifetime_s = 900
            client_id_claims = ["cid"]
            scope_claims = ["scp"]
        "#;
        let c: Config = toml::from_str(toml).unwrap();
        c.validate().unwrap();
        let [entra, okta] = &c.oauth.external_issuers[..] else {
            panic!("two issuers");
        };
        assert!(entra.require_typ);
        assert_eq!(entra.max_token_lifetime_s, 3_600);
        assert_eq!(entra.client_id_claims, ["client_id", "azp", "appid", "cid"]);
        assert_eq!(entra.scope_claims, ["scope", "scp", "roles"]);
        assert_eq!(okta.max_token_lifetime_s, 900);
        assert_eq!(okta.client_id_claims, ["cid"]);
        assert_eq!(okta.scope_claims, ["scp"]);
        // `ExternalIssuer::new` (for code and tests) has the same defaults as the file.
        let built = ExternalIssuer {
            jwks_uri: entra.jwks_uri.clone(),
            ..ExternalIssuer::new(&entra.issuer, &entra.audience)
        };
        assert_eq!(&built, entra);

        let err = toml::from_str::<Config>(&toml.replace("scope_claims", "scope_claim"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("scope_claim"), "{err}");
    }

    #[test]
    fn the_readme_external_issuer_examples_are_valid() {
        let readme = include_str!("../../README.md");
        let examples: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .filter(|block| block.contains("[[oauth.external_issuers]]"))
            .collect();
        assert_eq!(examples.len(), 4, "generic, Entra ID, Okta, Keycloak");
        for example in examples {
            let c: Config = toml::from_str(example).unwrap_or_else(|e| panic!("{e}\n{example}"));
            c.validate().unwrap_or_else(|e| panic!("{e}\n{example}"));
        }
    }

    #[test]
    fn external_issuer_limits_name_their_field() {
        let with = |edit: fn(&mut ExternalIssuer)| {
            let mut issuer = ExternalIssuer::new("https://login.example", "scopecast");
            issuer.jwks_uri = Some("https://login.example/keys".into());
            edit(&mut issuer);
            let mut c = Config::default();
            c.oauth.external_issuers = vec![issuer];
            c.validate().map_err(|e| e.to_string())
        };
        assert_eq!(with(|_| {}), Ok(()));
        for (edit, field) in [
            (
                (|i: &mut ExternalIssuer| i.max_token_lifetime_s = 59) as fn(&mut ExternalIssuer),
                "oauth.external_issuers.max_token_lifetime_s",
            ),
            (
                |i| i.max_token_lifetime_s = 86_401,
                "oauth.external_issuers.max_token_lifetime_s",
            ),
            (
                |i| i.client_id_claims.clear(),
                "oauth.external_issuers.client_id_claims",
            ),
            (
                |i| i.client_id_claims.push("azp".into()),
                "oauth.external_issuers.client_id_claims",
            ),
            (
                |i| i.scope_claims = vec!["scope, scp".into()],
                "oauth.external_issuers.scope_claims",
            ),
            (
                |i| i.scope_claims = vec![String::new()],
                "oauth.external_issuers.scope_claims",
            ),
        ] {
            let err = with(edit).unwrap_err();
            assert!(err.contains(field), "{err}");
            assert!(err.contains("https://login.example"), "{err}");
        }
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
