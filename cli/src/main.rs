//! The `scopecast` command: `scopecast serve` runs the broker; `app`, `keys`, `token` and
//! `backup` talk to a running one; `restore` works on the data folder of a stopped one.

mod cli;
mod fhir_replay;
mod public_key;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scopecast_broker::{Config, EnvironmentKind, LogFormat, LogMode, Overrides};

#[derive(Parser)]
#[command(
    name = "scopecast",
    version,
    about = "Scopecast: an OAuth2-scoped event broker for health IT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `scopecast catalog ...`.
#[derive(Subcommand)]
enum CatalogCommand {
    /// Print the catalog's record-signing public keys (a JWK Set), or write them to a file.
    Keys {
        /// The file to write (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// `scopecast cluster ...`.
#[derive(Subcommand)]
enum ClusterCommand {
    /// Make the key-encryption key every node of a cluster needs
    /// (`cluster.key_encryption_key_file`): writes 32 random bytes, base64, to FILE (mode
    /// 0600; refuses to overwrite). Copy the same file to every node.
    Kek {
        /// The file to write.
        #[arg(value_name = "FILE")]
        out: PathBuf,
    },
    /// Move a stopped single node into a new cluster: its registry (applications, client IDs,
    /// activations, credentials, audit trail) copied into the cluster's PostgreSQL database,
    /// which must be new, and its token and record signing keys sealed into it. Run it before
    /// the first cluster node starts. Events are not moved: the cluster's log is a new one.
    Migrate {
        /// The single node's data folder (the broker must be stopped).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The cluster's configuration file (its `[cluster]` section; `SCOPECAST_*`
        /// variables apply as for `serve`).
        #[arg(long, env = "SCOPECAST_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Cluster mode's setup: `cluster kek FILE` makes the key-encryption key (README "Cluster
    /// mode").
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Manage applications and their client IDs (admin API).
    App {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        auth: cli::AdminAuth,
        #[command(subcommand)]
        command: cli::AppCommand,
    },
    /// Manage the credentials of the admin API, console and metrics (admin API).
    Credential {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        auth: cli::AdminAuth,
        #[command(subcommand)]
        command: cli::CredentialCommand,
    },
    /// List live WebSocket sessions (`sessions [--client-id C]`, the same as `sessions list`),
    /// or close one (`sessions kill SESSION`) (admin API).
    Sessions {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        auth: cli::AdminAuth,
        /// Only this client ID's sessions.
        #[arg(long)]
        client_id: Option<String>,
        #[command(subcommand)]
        command: Option<cli::SessionsCommand>,
    },
    /// The catalog side of application records: `catalog keys` prints the record-signing
    /// public keys that environments pin (`catalog.trusted_keys_file`).
    Catalog {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// A developer's side of a catalog: register, and manage your applications (developer API).
    Dev {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        auth: cli::DevAuth,
        #[command(subcommand)]
        command: cli::DevCommand,
    },
    /// The access audit: who received which events (`audit access`), and its tamper check
    /// (`audit verify`) (admin API; a viewer credential may read it).
    Audit {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        auth: cli::AdminAuth,
        #[command(subcommand)]
        command: cli::audit::AuditCommand,
    },
    /// Manage the broker's token signing keys (admin API).
    Keys {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        auth: cli::AdminAuth,
        #[command(subcommand)]
        command: cli::KeysCommand,
    },
    /// Subscribe and print events as NDJSON (one object per line) on stdout.
    Sub {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        auth: cli::TokenArgs,
        /// Patterns, e.g. `adt.>` `fhir.encounter.*`.
        #[arg(required = true)]
        patterns: Vec<String>,
        /// Replay the stored events after this `seq` first.
        #[arg(long)]
        since: Option<u64>,
    },
    /// Publish one event (`pub TOPIC DATA`, `pub TOPIC -` for stdin) or a file of them
    /// (`pub --ndjson FILE`, lines of {"topic": ..., "data": ...}); prints each seq.
    Pub {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        auth: cli::TokenArgs,
        /// Topic.
        topic: Option<String>,
        /// JSON data, or `-` to read it from stdin.
        data: Option<String>,
        /// NDJSON file of {"topic": ..., "data": ...} lines.
        #[arg(long, conflicts_with_all = ["topic", "data"])]
        ndjson: Option<PathBuf>,
    },
    /// Publish a FHIR Bulk Data export as events, in order of clinical time. Event ids come
    /// from the resources: a rerun within the broker's idempotency window
    /// (`limits.idempotency_window_s`, 600 s by default) publishes nothing twice.
    Replay {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        auth: cli::TokenArgs,
        /// Folder of `<ResourceType>.*.ndjson` files.
        #[arg(long)]
        fhir_bulk: PathBuf,
        /// At most this many events per second.
        #[arg(long, conflicts_with = "speedup")]
        rate: Option<f64>,
        /// Replay clinical time this many times faster than real time.
        #[arg(long)]
        speedup: Option<f64>,
    },
    /// Take a backup of a running broker (admin API) into DIR (new or empty): the registry and
    /// the event log at one instant, the signing keys, and a manifest with SHA-256s.
    Backup {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        auth: cli::AdminAuth,
        /// Folder to write the backup into (made 0700; must be new or empty).
        dir: PathBuf,
    },
    /// Restore a backup into the data folder of a stopped broker (checks every SHA-256 first).
    Restore {
        /// The backup folder (`scopecast backup DIR` made it).
        backup: PathBuf,
        /// The data folder to restore into (made 0700 when missing; a broker must not be
        /// running on it).
        #[arg(long)]
        data_dir: PathBuf,
        /// Restore into a folder that holds files: they are moved to
        /// DIR/pre-restore-TIME/ first.
        #[arg(long)]
        force: bool,
    },
    /// Make a key pair for private_key_jwt: writes the private key, prints the public JWK Set.
    Keygen(cli::KeygenArgs),
    /// Get an access token by the client credentials grant and print it.
    Token {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        args: cli::TokenArgs,
        /// Print the whole token response as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "SCOPECAST_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070] [env: SCOPECAST_LISTEN].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A separate address for the admin API and metrics [env: SCOPECAST_ADMIN_LISTEN].
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Data folder [default: ./scopecast-data] [env: SCOPECAST_DATA_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Environment kind [default: non-production] [env: SCOPECAST_ENVIRONMENT].
    #[arg(long, value_enum)]
    environment: Option<EnvironmentKind>,
    /// Event log [default: durable] [env: SCOPECAST_LOG].
    #[arg(long, value_enum)]
    log: Option<LogMode>,
    /// Format of the broker's log lines [default: text] [env: SCOPECAST_LOG_FORMAT].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scopecast: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The cause chain on one line, without a backtrace (like `{:#}`), leaving out a cause whose
/// message the line already holds: many errors repeat their source's message in their own.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if line.contains(&message) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&message);
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::App {
            target,
            auth,
            command,
        } => client_runtime()?.block_on(cli::app(target, auth, command)),
        Command::Keys {
            target,
            auth,
            command,
        } => client_runtime()?.block_on(cli::keys(target, auth, command)),
        Command::Audit {
            target,
            auth,
            command,
        } => client_runtime()?.block_on(cli::audit::run(target, auth, command)),
        Command::Dev {
            target,
            auth,
            command,
        } => client_runtime()?.block_on(cli::dev(target, auth, command)),
        Command::Catalog {
            target,
            command: CatalogCommand::Keys { out },
        } => client_runtime()?.block_on(cli::catalog_keys(target, out)),
        Command::Credential {
            target,
            auth,
            command,
        } => client_runtime()?.block_on(cli::credential(target, auth, command)),
        Command::Sessions {
            target,
            auth,
            client_id,
            command,
        } => client_runtime()?.block_on(cli::sessions(target, auth, client_id, command)),
        Command::Backup { target, auth, dir } => {
            client_runtime()?.block_on(cli::backup(target, auth, dir))
        }
        Command::Restore {
            backup,
            data_dir,
            force,
        } => cli::restore(backup, data_dir, force),
        Command::Keygen(args) => cli::keygen(args),
        Command::Cluster {
            command: ClusterCommand::Kek { out },
        } => write_kek(&out),
        Command::Cluster {
            command: ClusterCommand::Migrate { from, config },
        } => migrate(&from, config.as_deref()),
        Command::Sub {
            target,
            auth,
            patterns,
            since,
        } => client_runtime()?.block_on(cli::sub(target, auth, patterns, since)),
        Command::Pub {
            target,
            auth,
            topic,
            data,
            ndjson,
        } => client_runtime()?.block_on(cli::publish(target, auth, topic, data, ndjson)),
        Command::Replay {
            target,
            auth,
            fhir_bulk,
            rate,
            speedup,
        } => {
            let pace = match (rate, speedup) {
                (Some(r), _) if r > 0.0 => fhir_replay::Pace::Rate(r),
                (_, Some(x)) if x > 0.0 => fhir_replay::Pace::Speedup(x),
                (None, None) => fhir_replay::Pace::Fast,
                _ => anyhow::bail!("--rate and --speedup must be positive"),
            };
            client_runtime()?.block_on(cli::replay(target, auth, fhir_bulk, pace))
        }
        Command::Token { target, args, json } => {
            client_runtime()?.block_on(cli::token(target, args, json))
        }
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let flags = Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        data_dir: args.data_dir,
        environment: args.environment,
        log: args.log,
        log_format: args.log_format,
    };
    let config = Config::load(args.config.as_deref(), &flags)?;
    if args.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    // Whatever the broker (or SQLite, redb) creates from now on is private to the service.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Flushes the log lines still queued when `serve` returns.
    let _log_guard = install_tracing(config.log_format);
    raise_open_file_limit();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        // Before anything else, so a SIGTERM during start-up is a graceful stop.
        let signals = shutdown_signal();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        scopecast_broker::run(listener, config, signals).await?;
        Ok(())
    })
}

/// Raises the soft limit on open files to the hard limit: every WebSocket is a file
/// descriptor, and distributions often start processes with a soft limit of 1,024.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(
            limit,
            "open-file limit (RLIMIT_NOFILE soft) raised to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)"),
    }
}

/// mimalloc rather than the system allocator: each argon2 secret check allocates its 19 MiB
/// working area on a blocking thread, and glibc's malloc kept those areas (RSS grew by
/// ~19 MiB per token request, up to ~250 MiB); mimalloc gives freed memory back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Most log lines queued for the writer thread; past it, new lines are dropped.
const LOG_QUEUE_LINES: usize = 128_000;

/// Logs go to stderr through a background writer thread: a runtime worker formats a line
/// and queues it, and never waits on a slow or blocked sink (a full pipe, a stalled
/// journald). When the queue holds [`LOG_QUEUE_LINES`] lines, further lines are dropped
/// rather than stalling the broker. Writing each line from the worker cost a quarter of the
/// connect-storm rate (BENCHMARKS.md).
fn install_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("scopecast-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line: `timestamp`, `level`, `target`, `fields` (with `message`),
        // `span` and `spans` (session, peer, client_id).
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    guard
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called (not when
/// the future is first polled), so a signal that arrives during start-up is not lost to the
/// default action.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM or SIGINT");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

/// `scopecast cluster migrate --from DIR [--config FILE]`.
fn migrate(from: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = scopecast_broker::Config::load(config, &scopecast_broker::Overrides::default())?;
    let report = client_runtime()?
        .block_on(scopecast_broker::migrate_to_cluster(from, &config))
        .map_err(anyhow::Error::msg)?;
    for line in report {
        println!("{line}");
    }
    println!(
        "done: start the cluster's nodes now; subscribers get a new log_epoch (the events of {} stay there)",
        from.display()
    );
    Ok(())
}

/// `scopecast cluster kek FILE`.
fn write_kek(out: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let key = scopecast_broker::generate_kek().map_err(anyhow::Error::msg)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    f.write_all(format!("{key}\n").as_bytes())?;
    f.sync_all()?;
    eprintln!(
        "wrote a key-encryption key to {} (mode 0600); give every node of the cluster the same file",
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_line_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("token endpoint x: {0}")]
        struct Outer(#[source] std::io::Error);
        let e = anyhow::Error::new(Outer(std::io::Error::other("refused"))).context("connecting");
        assert_eq!(one_line(&e), "connecting: token endpoint x: refused");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
    }
}
