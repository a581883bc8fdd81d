//! Client subcommands of `scopecast`: `app ...` and `keys rotate` over the admin API, and
//! `token` over the token endpoint. Readable tables by default, `--json` for scripts.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use scopecast_broker::ADMIN_TOKEN_FILE;
use scopecast_client::{CertificateError, PrivateKey, TlsConfig, TokenSource};
use scopecast_protocol::admin::{
    ApplicationList, ApplicationPatch, ApplicationView, AuditList, ClientIdHeader, ClientKeysView,
    ClientView, CredentialView, DeletedApplication, IssuedSecret, NewApplication, Reason,
    RotatedKey, SetKeys,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// `println!` that ends quietly when stdout is closed (`scopecast app list | head -1`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

pub(crate) mod audit;
mod webhook;

/// Where the broker is.
#[derive(Args, Clone)]
pub(crate) struct Target {
    /// Broker base URL. For `sub`, `pub` and `replay`, several nodes of a cluster may be
    /// given, comma-separated: the connection fails over between them (other commands, and
    /// token requests, use the first).
    #[arg(
        long,
        env = "SCOPECAST_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub(crate) url: String,
    /// PEM file of CA certificates to trust besides the bundled and system roots: the
    /// organisation's own CA that signed the broker's certificate.
    #[arg(long, env = "SCOPECAST_CACERT", value_name = "FILE", global = true)]
    pub(crate) cacert: Option<PathBuf>,
}

impl Target {
    /// The first broker URL given (token requests and the admin API go there).
    pub(crate) fn base(&self) -> &str {
        self.url.split(',').next().unwrap_or("").trim()
    }

    /// The CAs every connection to the broker trusts: the bundled Mozilla roots, the system
    /// trust store (`SSL_CERT_FILE`, `SSL_CERT_DIR`, the OS bundle), and `--cacert`.
    fn tls(&self) -> anyhow::Result<TlsConfig> {
        let tls = TlsConfig::new();
        Ok(match &self.cacert {
            Some(path) => tls.add_root_certificates(path)?,
            None => tls,
        })
    }

    /// An HTTP client that trusts what [`Target::tls`] trusts.
    fn http(&self) -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls()?.client_config()?).clone())
            .build()
            .context("setting up the HTTP client")
    }
}

/// Admin credential options, and where the admin API is.
#[derive(Args, Clone)]
pub(crate) struct AdminAuth {
    /// Base URL of the admin API, when the broker serves it on a separate listener
    /// (`admin_listen`) [default: --url].
    #[arg(long, env = "SCOPECAST_ADMIN_URL", global = true)]
    admin_url: Option<String>,
    /// Admin bearer credential [env: SCOPECAST_ADMIN_TOKEN].
    #[arg(
        long,
        global = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    admin_token: Option<String>,
    /// Read the admin credential from DIR/admin.token [default: ./scopecast-data].
    #[arg(long, env = "SCOPECAST_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// A developer's credential (the developer API of a catalog).
#[derive(clap::Args)]
pub(crate) struct DevAuth {
    /// Developer bearer credential.
    #[arg(
        long,
        env = "SCOPECAST_DEV_TOKEN",
        hide_env_values = true,
        global = true,
        allow_hyphen_values = true
    )]
    dev_token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// `scopecast dev ...`: a developer's side of a catalog.
#[derive(Subcommand)]
pub(crate) enum DevCommand {
    /// Make a developer account where the catalog allows self-registration; prints its
    /// credential once (use it as --dev-token / SCOPECAST_DEV_TOKEN).
    Register {
        /// The account's name: the owner of its applications.
        #[arg(long)]
        name: String,
    },
    /// Manage your applications.
    App {
        #[command(subcommand)]
        command: DevAppCommand,
    },
}

/// `scopecast dev app ...`.
#[derive(Subcommand)]
pub(crate) enum DevAppCommand {
    /// Register an application (version 1, a draft until `ready`); its two client IDs are
    /// made now and never change.
    Create(#[command(flatten)] NewAppArgs),
    /// Change a draft, or make the next version (a draft) of a ready one.
    Update(#[command(flatten)] AppPatchArgs),
    /// Show one of your applications.
    Show {
        /// Application id.
        id: String,
    },
    /// List your applications.
    List,
    /// Set a client ID's public keys for private_key_jwt (part of the record: a new draft).
    SetKeys {
        /// Application id.
        id: String,
        /// Client ID (one of the application's two).
        client_id: String,
        /// A JWK Set file or a PEM public key (as for `app set-keys`).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["jwks_uri", "none"])]
        jwks: Option<PathBuf>,
        /// A JWK Set URL (https).
        #[arg(long, conflicts_with = "none")]
        jwks_uri: Option<String>,
        /// Remove the keys.
        #[arg(long)]
        none: bool,
    },
    /// Mark the current version ready for production: it is frozen, and the catalog hands it
    /// to environments.
    Ready {
        /// Application id.
        id: String,
    },
    /// Retire an application: environments deactivate its client IDs when they import it.
    Retire {
        /// Application id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// The keys of `set-keys` (`--jwks FILE`, `--jwks-uri URL` or `--none`) as the API's body.
fn keys_arg(
    jwks: Option<PathBuf>,
    jwks_uri: Option<String>,
    none: bool,
) -> anyhow::Result<SetKeys> {
    Ok(match (jwks, jwks_uri, none) {
        (Some(path), _, _) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let value = jwks_file(&text)
                .with_context(|| format!("reading the keys in {}", path.display()))?;
            SetKeys {
                jwks: Some(value),
                jwks_uri: None,
            }
        }
        (None, Some(uri), _) => SetKeys {
            jwks: None,
            jwks_uri: Some(uri),
        },
        (None, None, true) => SetKeys::default(),
        (None, None, false) => bail!("give --jwks FILE, --jwks-uri URL or --none"),
    })
}

/// `scopecast dev ...`.
pub(crate) async fn dev(target: Target, auth: DevAuth, cmd: DevCommand) -> anyhow::Result<()> {
    use reqwest::Method as M;
    let j = auth.json;
    let cmd = match cmd {
        DevCommand::Register { name } => {
            let http = target.http()?;
            let url = format!("{}/dev/v1/register", target.base().trim_end_matches('/'));
            let resp = http
                .post(&url)
                .json(&scopecast_protocol::admin::NewDeveloper { name })
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!(
                    "{status}: {}",
                    v["message"].as_str().unwrap_or("no message")
                );
            }
            return print(j, &v, |c: &scopecast_protocol::admin::IssuedCredential| {
                outln!(
                    "developer {}: your credential (shown once; use it as SCOPECAST_DEV_TOKEN):\n{}",
                    c.credential.name,
                    c.token
                );
            });
        }
        DevCommand::App { command } => command,
    };
    let dev = Admin::developer(&target, &auth)?;
    let v = match cmd {
        DevAppCommand::Create(args) => dev.call(M::POST, "/apps", body(&args.body())?).await?,
        DevAppCommand::Update(args) => {
            let (id, patch) = args.body();
            dev.call(M::PATCH, &format!("/apps/{id}"), body(&patch)?)
                .await?
        }
        DevAppCommand::Show { id } => dev.call(M::GET, &format!("/apps/{id}"), None).await?,
        DevAppCommand::List => {
            let v = dev.call(M::GET, "/apps", None).await?;
            return print(j, &v, |l: &ApplicationList| {
                for a in &l.applications {
                    outln!(
                        "{}  {}  version {}{}",
                        a.id,
                        a.name,
                        a.version,
                        if a.ready { " (ready)" } else { " (draft)" }
                    );
                }
            });
        }
        DevAppCommand::SetKeys {
            id,
            client_id,
            jwks,
            jwks_uri,
            none,
        } => {
            let keys = keys_arg(jwks, jwks_uri, none)?;
            dev.call(
                M::PUT,
                &format!("/apps/{id}/clients/{client_id}/keys"),
                body(&keys)?,
            )
            .await?
        }
        DevAppCommand::Ready { id } => {
            dev.call(M::POST, &format!("/apps/{id}/ready"), None)
                .await?
        }
        DevAppCommand::Retire { id, reason } => {
            dev.call(
                M::POST,
                &format!("/apps/{id}/retire"),
                body(&Reason { reason })?,
            )
            .await?
        }
    };
    print(j, &v, |a: &ApplicationView| {
        outln!(
            "version {}: {}",
            a.version,
            if a.ready {
                "ready for production"
            } else {
                "draft (`scopecast dev app ready` freezes it)"
            }
        );
        print_app(a);
    })
}

impl AdminAuth {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.admin_token {
            return Ok(t.clone());
        }
        if let Ok(t) = std::env::var("SCOPECAST_ADMIN_TOKEN")
            && !t.is_empty()
        {
            return Ok(t);
        }
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./scopecast-data"));
        let path = dir.join(ADMIN_TOKEN_FILE);
        let token = std::fs::read_to_string(&path).with_context(|| {
            format!("no admin credential: pass --admin-token, set SCOPECAST_ADMIN_TOKEN, or point --data-dir at the broker's data folder ({} not readable)", path.display())
        })?;
        Ok(token.trim().to_owned())
    }
}

/// `scopecast app ...`.
/// The fields of a new application (`app create`, `dev app create`).
#[derive(Args)]
pub(crate) struct NewAppArgs {
    /// Display name (unique).
    #[arg(long)]
    name: String,
    /// Vendor (developer).
    #[arg(long)]
    vendor: String,
    /// Scope, space-separated, e.g. "subscribe:fhir.> publish:adt.*"; families:
    /// subscribe:PATTERN, publish:PATTERN, webhook:manage,
    /// system/TYPE.PERMS (TYPE a FHIR type or *, PERMS cruds, read or write).
    #[arg(long)]
    scope: String,
    /// Free-text description.
    #[arg(long, default_value = "")]
    description: String,
}

impl NewAppArgs {
    fn body(self) -> NewApplication {
        NewApplication {
            name: self.name,
            vendor: self.vendor,
            scope: self.scope,
            description: self.description,
        }
    }
}

/// The fields an application update may change (`app update`, `dev app update`).
#[derive(Args)]
pub(crate) struct AppPatchArgs {
    /// Application id.
    id: String,
    /// New name.
    #[arg(long)]
    name: Option<String>,
    /// New vendor.
    #[arg(long)]
    vendor: Option<String>,
    /// New description.
    #[arg(long)]
    description: Option<String>,
    /// New scope.
    #[arg(long)]
    scope: Option<String>,
}

impl AppPatchArgs {
    /// The application id, and the patch.
    fn body(self) -> (String, ApplicationPatch) {
        (
            self.id,
            ApplicationPatch {
                name: self.name,
                vendor: self.vendor,
                description: self.description,
                scope: self.scope,
            },
        )
    }
}

#[derive(Subcommand)]
pub(crate) enum AppCommand {
    /// Register an application; prints its two client IDs and their secrets (shown once).
    Create(#[command(flatten)] NewAppArgs),
    /// List applications.
    List,
    /// Show an application (by application id or by one of its client IDs).
    Show {
        /// Application id or client ID.
        id: String,
    },
    /// Change an application's name, vendor, description or scope ceiling.
    Update(#[command(flatten)] AppPatchArgs),
    /// Replace an application's scope ceiling (given an application id registered here), or
    /// set this environment's grant for a client ID (given a client ID: at most the record's
    /// scope; the way to narrow an imported application here). Live subscriptions it no
    /// longer covers end within a second.
    SetScope {
        /// Application id, or client ID.
        id: String,
        /// The new scope, space-separated (families as for `app create --scope`).
        scope: String,
        /// Why (recorded in the audit trail; for a client ID's grant).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Grant a client ID the record's current scope here: the scopes a newer version added
    /// (`pending_scope` in `app show`) take effect.
    Approve {
        /// Client ID.
        client_id: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Write an application's signed record (JWS) to a file, for `app import` in another
    /// environment: signed here with this deployment's record-signing key, or as imported.
    Export {
        /// Application id.
        id: String,
        /// The file to write (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Import a signed application record (from `app export`); verified against the catalog
    /// keys pinned in `catalog.trusted_keys_file`. Idempotent; keeps the record's client IDs.
    Import {
        /// The record file.
        file: PathBuf,
    },
    /// Pull the configured catalog now (`catalog.url`) and import what is new there.
    Sync,
    /// Retire an application registered here: a new version, both client IDs deactivated;
    /// environments that import the new version deactivate them too.
    Retire {
        /// Application id.
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Set a client's public keys for private_key_jwt.
    SetKeys {
        /// Client ID.
        client_id: String,
        /// A JWK Set file (public keys only), or a PEM public key (`PUBLIC KEY`, SPKI, as
        /// `openssl pkey -pubout` writes it) of EC P-256, EC P-384 or RSA, which is sent as a
        /// JWK Set (`kid` its RFC 7638 thumbprint; `alg` ES256 or ES384; RSA without `alg`, so
        /// RS256 and RS384 both verify).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["jwks_uri", "none"])]
        jwks: Option<PathBuf>,
        /// A JWK Set URL (https).
        #[arg(long, conflicts_with = "none")]
        jwks_uri: Option<String>,
        /// Remove the keys.
        #[arg(long)]
        none: bool,
    },
    /// Allow or forbid identifying a client by the Scopecast-Client-Id header on the HTTP
    /// publish API (only where the broker's `http.client_id_header` setting is on).
    ClientIdHeader {
        /// Client ID.
        client_id: String,
        /// Allow it.
        #[arg(long, conflicts_with = "disable", required_unless_present = "disable")]
        enable: bool,
        /// Forbid it.
        #[arg(long)]
        disable: bool,
    },
    /// Give a client a new secret (printed once); the old one stops working at once.
    RotateSecret {
        /// Client ID.
        client_id: String,
    },
    /// Activate a client ID in this environment.
    Activate {
        /// Client ID.
        client_id: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deactivate a client ID: its live sessions close within a second.
    Deactivate {
        /// Client ID.
        client_id: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delete an application with its two client IDs and their credentials (refused while
    /// either client ID is active). The audit trail and the activation history are kept.
    Delete {
        /// Application id.
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Webhook endpoints: signed HTTP deliveries to a client ID (WEBHOOKS.md).
    Webhook {
        #[command(subcommand)]
        cmd: webhook::WebhookCommand,
    },
    /// Read the audit trail, newest first.
    Audit {
        /// Only this application.
        #[arg(long)]
        application: Option<String>,
        /// Only this client ID.
        #[arg(long)]
        client: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// `scopecast credential ...`.
#[derive(Subcommand)]
pub(crate) enum CredentialCommand {
    /// Make a named credential with a role; prints its token once.
    Create {
        /// Whom it belongs to (a person, `prometheus`, ...); the audit trail names it.
        #[arg(long)]
        name: String,
        /// admin (everything), viewer (read-only), developer (the developer API of a catalog:
        /// only its own applications), metrics (GET /metrics only).
        #[arg(long)]
        role: scopecast_protocol::admin::Role,
    },
    /// List credentials (never their tokens).
    List,
    /// Revoke a credential by name or id; it stops working at once.
    Revoke {
        /// Name or id.
        name: String,
    },
}

/// `scopecast sessions ...`.
#[derive(Subcommand)]
pub(crate) enum SessionsCommand {
    /// List live sessions.
    List {
        /// Only this client ID's sessions.
        #[arg(long)]
        client_id: Option<String>,
    },
    /// Close a session with 4010 (the client reconnects with backoff and resumes by seq).
    Kill {
        /// The session id, as `scopecast sessions` shows it.
        session: String,
    },
}

/// `scopecast keys ...`.
#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Make a new signing key; the old one stays published until its tokens expire.
    Rotate,
}

/// `scopecast keygen`: a key pair for `private_key_jwt`.
#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600). Refuses to overwrite.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The key's `kid` [default: its RFC 7638 thumbprint].
    #[arg(long)]
    pub(crate) kid: Option<String>,
    /// EC curve: P-256 (ES256) or P-384 (ES384).
    #[arg(long, default_value = "ES256", value_parser = ["ES256", "ES384"])]
    pub(crate) alg: String,
}

/// Credentials for the token endpoint (`token`, `sub`, `pub`, `replay`).
#[derive(Args)]
pub(crate) struct TokenArgs {
    /// Client ID.
    #[arg(long, env = "SCOPECAST_CLIENT_ID")]
    pub(crate) client_id: Option<String>,
    /// Client secret (client_secret_basic).
    #[arg(
        long,
        env = "SCOPECAST_CLIENT_SECRET",
        hide_env_values = true,
        conflicts_with = "private_key",
        allow_hyphen_values = true
    )]
    pub(crate) client_secret: Option<String>,
    /// Private key for private_key_jwt: a PEM file or a private JWK file.
    #[arg(long, env = "SCOPECAST_PRIVATE_KEY")]
    pub(crate) private_key: Option<PathBuf>,
    /// The `kid` registered for the private key [default: its RFC 7638 thumbprint, or the JWK's kid].
    #[arg(long)]
    pub(crate) kid: Option<String>,
    /// Ask for a narrower scope than the application's ceiling.
    #[arg(long)]
    pub(crate) scope: Option<String>,
    /// A ready access token instead of client credentials (it is not refreshed).
    #[arg(long, env = "SCOPECAST_TOKEN", hide_env_values = true, conflicts_with_all = ["client_secret", "private_key"], allow_hyphen_values = true)]
    pub(crate) token: Option<String>,
}

/// The admin API (or the developer API), called with a credential of the one credential
/// store (its name is the actor the audit trail records).
struct Admin {
    http: reqwest::Client,
    url: String,
    token: String,
    /// `/admin/v1` or `/dev/v1`.
    prefix: &'static str,
}

impl Admin {
    fn new(target: &Target, auth: &AdminAuth) -> anyhow::Result<Admin> {
        let http = target.http()?;
        let url = auth.admin_url.as_deref().unwrap_or(target.base());
        Ok(Admin {
            http,
            url: url.trim_end_matches('/').to_owned(),
            token: auth.token()?,
            prefix: "/admin/v1",
        })
    }

    /// The developer API of the catalog at `--url`, with a developer credential.
    fn developer(target: &Target, auth: &DevAuth) -> anyhow::Result<Admin> {
        let http = target.http()?;
        let token = auth.dev_token.clone().filter(|t| !t.is_empty()).context(
            "no developer credential: pass --dev-token or set SCOPECAST_DEV_TOKEN \
             (`scopecast dev register`, or ask the catalog's admin)",
        )?;
        Ok(Admin {
            http,
            url: target.base().trim_end_matches('/').to_owned(),
            token,
            prefix: "/dev/v1",
        })
    }

    /// As [`Admin::call`], read into `T`.
    async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let v = self.call(method, path, body).await?;
        serde_json::from_value(v)
            .with_context(|| format!("the answer of {path} is not what this CLI expects"))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let resp = self.send(method, path, body).await?;
        Ok(resp.json().await.unwrap_or(Value::Null))
    }

    /// Sends a request; an answer that is not a success becomes an error with the broker's
    /// code and message.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{}{path}", self.url, self.prefix);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                // A refused certificate says what to do about it.
                let cause = match CertificateError::find(&e) {
                    Some(certificate) => anyhow::Error::new(certificate),
                    None => anyhow::Error::new(e),
                };
                return Err(cause.context(format!("cannot reach {url}")));
            }
        };
        let status = resp.status();
        if !status.is_success() {
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            let msg = value["message"].as_str().unwrap_or("no message");
            let code = value["error"].as_str().unwrap_or("error");
            // Not an application or a client that is missing, but the admin API itself: the
            // broker serves it on another listener, or this URL is not a broker's.
            let hint = if status == reqwest::StatusCode::NOT_FOUND && no_endpoint(msg) {
                "; if the broker sets admin_listen, point --admin-url (SCOPECAST_ADMIN_URL) at it"
            } else {
                ""
            };
            match value["reason"].as_str() {
                Some(reason) if reason != code => {
                    bail!("{status}: {code} ({reason}): {msg}{hint}")
                }
                _ => bail!("{status}: {code}: {msg}{hint}"),
            }
        }
        Ok(resp)
    }
}

/// Whether a 404's message says the path itself is not served (rather than naming a missing
/// application, client, credential or session): the broker's "no such endpoint", its answer on
/// a public port when the admin API is on `admin_listen`, or no message at all.
fn no_endpoint(message: &str) -> bool {
    message == "no such endpoint" || message == "no message" || message.contains("admin listener")
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

fn print_app(app: &ApplicationView) {
    let mut t = table(&["field", "value"]);
    for (f, v) in [
        ("id", &app.id),
        ("name", &app.name),
        ("vendor", &app.vendor),
        ("description", &app.description),
        ("scope", &app.scope),
        ("created_at", &app.created_at),
        ("updated_at", &app.updated_at),
        ("version", &app.version.to_string()),
        (
            "origin",
            &app.origin
                .as_ref()
                .map_or("registered here".to_owned(), |k| {
                    format!("imported (catalog key {k})")
                }),
        ),
    ] {
        t.add_row(vec![f.to_owned(), v.clone()]);
    }
    if let Some(at) = &app.retired_at {
        t.add_row(vec!["retired_at".to_owned(), at.clone()]);
    }
    outln!("{t}");
    let mut c = table(&[
        "kind",
        "client_id",
        "active",
        "effective scope",
        "pending",
        "keys",
        "client_secret",
    ]);
    for client in app.clients.both() {
        c.add_row(vec![
            client.kind.clone(),
            client.client_id.clone(),
            client.active.to_string(),
            client.effective_scope.clone(),
            client.pending_scope.clone(),
            keys_kind(&client.keys).to_owned(),
            client.client_secret.clone().unwrap_or_else(|| {
                if client.has_secret {
                    "(hidden)"
                } else {
                    "(none yet)"
                }
                .to_owned()
            }),
        ]);
    }
    outln!("{c}");
    if app.clients.production.client_secret.is_some() {
        outln!("Store the client secrets now: they are not shown again.");
    }
}

fn keys_kind(keys: &ClientKeysView) -> &'static str {
    match keys {
        ClientKeysView::None => "none",
        ClientKeysView::Jwks { .. } => "jwks",
        ClientKeysView::JwksUri { .. } => "jwks_uri",
    }
}

fn print_client(client: &ClientView) {
    let mut t = table(&["field", "value"]);
    let mut row = |f: &str, v: String| {
        t.add_row(vec![f.to_owned(), v]);
    };
    row("client_id", client.client_id.clone());
    row("kind", client.kind.clone());
    row("active", client.active.to_string());
    row("has_secret", client.has_secret.to_string());
    row("client_id_header", client.client_id_header.to_string());
    row("effective_scope", client.effective_scope.clone());
    if let Some(g) = &client.granted_scope {
        row("granted_scope", g.clone());
    }
    if !client.pending_scope.is_empty() {
        row(
            "pending_scope (waits for `app approve`)",
            client.pending_scope.clone(),
        );
    }
    if let Some(secret) = &client.client_secret {
        row("client_secret (shown once)", secret.clone());
    }
    row("updated_at", client.updated_at.clone());
    if let Some(id) = &client.application_id {
        row("application_id", id.clone());
    }
    row(
        "keys",
        match &client.keys {
            ClientKeysView::None => "none".to_owned(),
            ClientKeysView::Jwks { kids } => format!("jwks: {}", kids.join(", ")),
            ClientKeysView::JwksUri { jwks_uri } => format!("jwks_uri: {jwks_uri}"),
        },
    );
    outln!("{t}");
}

/// Prints the broker's answer: as it came with `--json` (fields this CLI does not know
/// included), else through `human` after reading it as `T`, the admin API's typed shape.
fn print<T: DeserializeOwned>(
    json_out: bool,
    value: &Value,
    human: impl FnOnce(&T),
) -> anyhow::Result<()> {
    if json_out {
        outln!("{}", serde_json::to_string_pretty(value)?);
    } else {
        let typed: T = serde_json::from_value(value.clone())
            .context("the broker's answer does not have the admin API's shape")?;
        human(&typed);
    }
    Ok(())
}

/// A request body of the admin API's typed shape.
fn body(v: &impl Serialize) -> anyhow::Result<Option<Value>> {
    Ok(Some(serde_json::to_value(v)?))
}

/// Runs an `app` subcommand.
pub(crate) async fn app(target: Target, auth: AdminAuth, cmd: AppCommand) -> anyhow::Result<()> {
    let admin = Admin::new(&target, &auth)?;
    let j = auth.json;
    use reqwest::Method as M;
    match cmd {
        AppCommand::Create(args) => {
            let app = admin
                .call(M::POST, "/applications", body(&args.body())?)
                .await?;
            print(j, &app, print_app)
        }
        AppCommand::List => {
            let list = admin.call(M::GET, "/applications", None).await?;
            print(j, &list, |v: &ApplicationList| {
                let mut t = table(&[
                    "id",
                    "name",
                    "vendor",
                    "scope",
                    "production",
                    "non-production",
                ]);
                for a in &v.applications {
                    let client = |c: &ClientView| {
                        let state = if c.active { "active" } else { "inactive" };
                        format!("{} ({state})", c.client_id)
                    };
                    t.add_row(vec![
                        a.id.clone(),
                        a.name.clone(),
                        a.vendor.clone(),
                        a.scope.clone(),
                        client(&a.clients.production),
                        client(&a.clients.non_production),
                    ]);
                }
                outln!("{t}");
            })
        }
        AppCommand::Show { id } => {
            let app = match admin
                .call(M::GET, &format!("/applications/{id}"), None)
                .await
            {
                Ok(app) => app,
                Err(first) => {
                    let client: ClientView =
                        match admin.call(M::GET, &format!("/clients/{id}"), None).await {
                            Ok(client) => serde_json::from_value(client)?,
                            Err(_) => return Err(not_an_application(&admin, &id, first).await),
                        };
                    let app_id = client.application_id.unwrap_or_default();
                    admin
                        .call(M::GET, &format!("/applications/{app_id}"), None)
                        .await?
                }
            };
            print(j, &app, print_app)
        }
        AppCommand::Update(args) => {
            let (id, patch) = args.body();
            let app = admin
                .call(M::PATCH, &format!("/applications/{id}"), body(&patch)?)
                .await?;
            print(j, &app, print_app)
        }
        AppCommand::SetScope { id, scope, reason } => {
            // A client ID: this environment's grant. An application id: its record's scope.
            let client: Option<ClientView> = admin
                .typed::<ClientView>(M::GET, &format!("/clients/{id}"), None)
                .await
                .ok();
            if client.is_some() {
                let v = admin
                    .call(
                        M::PUT,
                        &format!("/clients/{id}/grant"),
                        body(&scopecast_protocol::admin::Grant { scope, reason })?,
                    )
                    .await?;
                return print(j, &v, print_client);
            }
            let app = admin
                .call(
                    M::PATCH,
                    &format!("/applications/{id}"),
                    body(&ApplicationPatch {
                        scope: Some(scope),
                        ..ApplicationPatch::default()
                    })?,
                )
                .await?;
            print(j, &app, print_app)
        }
        AppCommand::SetKeys {
            client_id,
            jwks,
            jwks_uri,
            none,
        } => {
            let keys = keys_arg(jwks, jwks_uri, none)?;
            let client = admin
                .call(M::PUT, &format!("/clients/{client_id}/keys"), body(&keys)?)
                .await?;
            print(j, &client, print_client)
        }
        AppCommand::ClientIdHeader {
            client_id,
            enable,
            disable: _,
        } => {
            let v = admin
                .call(
                    M::PUT,
                    &format!("/clients/{client_id}/client-id-header"),
                    body(&ClientIdHeader { enabled: enable })?,
                )
                .await?;
            print(j, &v, print_client)
        }
        AppCommand::RotateSecret { client_id } => {
            let v = admin
                .call(
                    M::POST,
                    &format!("/clients/{client_id}/rotate-secret"),
                    None,
                )
                .await?;
            print(j, &v, |v: &IssuedSecret| {
                let mut t = table(&["client_id", "kind", "client_secret"]);
                t.add_row(vec![
                    v.client_id.clone(),
                    v.kind.clone(),
                    v.client_secret.clone(),
                ]);
                outln!("{t}\nStore the new secret now: it is not shown again.");
            })
        }
        AppCommand::Approve { client_id, reason } => {
            let v = admin
                .call(
                    M::POST,
                    &format!("/clients/{client_id}/approve"),
                    body(&Reason { reason })?,
                )
                .await?;
            print(j, &v, print_client)
        }
        AppCommand::Export { id, out } => {
            let doc: scopecast_protocol::admin::RecordDocument = admin
                .typed(M::GET, &format!("/applications/{id}/record"), None)
                .await?;
            match out {
                Some(path) => {
                    std::fs::write(&path, format!("{}\n", doc.record))
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("wrote the signed record of {id} to {}", path.display());
                }
                None => outln!("{}", doc.record),
            }
            Ok(())
        }
        AppCommand::Import { file } => {
            let record = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let v = admin
                .call(
                    M::POST,
                    "/records",
                    body(&scopecast_protocol::admin::RecordDocument {
                        record: record.trim().to_owned(),
                    })?,
                )
                .await?;
            print(j, &v, |v: &scopecast_protocol::admin::Imported| {
                outln!("{}: version {}", v.outcome, v.application.version);
                print_app(&v.application);
            })
        }
        AppCommand::Sync => {
            let v = admin.call(M::POST, "/catalog/sync", None).await?;
            print(j, &v, |r: &scopecast_protocol::admin::SyncReport| {
                outln!(
                    "created {}, updated {}, unchanged {}, refused {}",
                    r.created,
                    r.updated,
                    r.unchanged,
                    r.refused.len()
                );
                for why in &r.refused {
                    outln!("  refused: {why}");
                }
            })
        }
        AppCommand::Retire { id, reason } => {
            let v = admin
                .call(
                    M::POST,
                    &format!("/applications/{id}/retire"),
                    body(&Reason { reason })?,
                )
                .await?;
            print(j, &v, print_app)
        }
        AppCommand::Activate { client_id, reason } => {
            let v = admin
                .call(
                    M::POST,
                    &format!("/clients/{client_id}/activate"),
                    body(&Reason { reason })?,
                )
                .await?;
            print(j, &v, print_client)
        }
        AppCommand::Deactivate { client_id, reason } => {
            let v = admin
                .call(
                    M::POST,
                    &format!("/clients/{client_id}/deactivate"),
                    body(&Reason { reason })?,
                )
                .await?;
            print(j, &v, print_client)
        }
        AppCommand::Delete { id, reason } => {
            let v = admin
                .call(
                    M::DELETE,
                    &format!(
                        "/applications/{}?reason={}",
                        percent_encode(&id),
                        percent_encode(&reason)
                    ),
                    None,
                )
                .await?;
            print(j, &v, |v: &DeletedApplication| {
                outln!(
                    "deleted application {} ({}) and its client IDs {}",
                    v.name,
                    v.id,
                    v.client_ids.join(", ")
                );
            })
        }
        AppCommand::Webhook { cmd } => webhook::run(&admin, j, cmd).await,
        AppCommand::Audit {
            application,
            client,
            limit,
        } => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(a) = application {
                q.push(format!("application_id={a}"));
            }
            if let Some(c) = client {
                q.push(format!("client_id={c}"));
            }
            let v = admin
                .call(M::GET, &format!("/audit?{}", q.join("&")), None)
                .await?;
            print(j, &v, |v: &AuditList| {
                let mut t = table(&[
                    "at",
                    "environment",
                    "actor",
                    "action",
                    "application",
                    "client",
                    "detail",
                ]);
                for e in &v.entries {
                    t.add_row(vec![
                        e.at.clone(),
                        e.environment.clone().unwrap_or_default(),
                        e.actor.clone(),
                        e.action.clone(),
                        e.application_id.clone().unwrap_or_default(),
                        e.client_id.clone().unwrap_or_default(),
                        e.detail.to_string(),
                    ]);
                }
                outln!("{t}");
            })
        }
    }
}

/// The keys of a `--jwks` file: a JWK Set, one JWK, or a PEM public key.
fn jwks_file(text: &str) -> anyhow::Result<Value> {
    if text.trim_start().starts_with("-----BEGIN") {
        return crate::public_key::jwk_set_from_pem(text);
    }
    let value: Value = serde_json::from_str(text)
        .context("neither JSON (a JWK Set) nor a PEM public key (-----BEGIN PUBLIC KEY-----)")?;
    // Accept a single JWK as well as a set.
    Ok(if value.get("keys").is_some() {
        value
    } else {
        json!({"keys": [value]})
    })
}

/// `app show ID` found neither an application nor a client ID `id`: says which it was when
/// the audit trail knows `id` as a client ID (a deleted application's, say), else both.
/// `first` (the answer to the application lookup) stands when it was not a 404.
async fn not_an_application(admin: &Admin, id: &str, first: anyhow::Error) -> anyhow::Error {
    let said = first.to_string();
    // Another failure, or no admin API at this URL at all: that is the answer.
    if !said.starts_with("404") || said.contains("--admin-url") {
        return first;
    }
    let audit = admin
        .call(
            reqwest::Method::GET,
            &format!("/audit?limit=1&client_id={}", percent_encode(id)),
            None,
        )
        .await;
    let known_client = audit.is_ok_and(|v| {
        v["entries"]
            .as_array()
            .is_some_and(|entries| !entries.is_empty())
    });
    if known_client {
        anyhow::anyhow!(
            "404 Not Found: not_found: no application has the client ID {id} (any more: the audit trail has it; `scopecast app audit --client {id}`)"
        )
    } else {
        anyhow::anyhow!("404 Not Found: not_found: no application has the id or the client ID {id}")
    }
}

/// Runs a `credential` subcommand.
pub(crate) async fn credential(
    target: Target,
    auth: AdminAuth,
    cmd: CredentialCommand,
) -> anyhow::Result<()> {
    use scopecast_protocol::admin::{CredentialList, IssuedCredential};
    let admin = Admin::new(&target, &auth)?;
    use reqwest::Method as M;
    match cmd {
        CredentialCommand::Create { name, role } => {
            let issued: IssuedCredential = admin
                .typed(
                    M::POST,
                    "/credentials",
                    Some(json!({"name": name, "role": role})),
                )
                .await?;
            if auth.json {
                outln!("{}", serde_json::to_string_pretty(&issued)?);
            } else {
                outln!("{}", issued.token);
                eprintln!(
                    "credential {:?} (role {}) created; the token above is shown only now",
                    issued.credential.name, issued.credential.role
                );
            }
            Ok(())
        }
        CredentialCommand::List => {
            let list: CredentialList = admin.typed(M::GET, "/credentials", None).await?;
            if auth.json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let mut t = table(&[
                "name",
                "role",
                "created_at",
                "created_by",
                "revoked_at",
                "id",
            ]);
            for c in &list.credentials {
                t.add_row(vec![
                    c.name.clone(),
                    c.role.to_string(),
                    c.created_at.clone(),
                    c.created_by.clone(),
                    c.revoked_at.clone().unwrap_or_default(),
                    c.id.clone(),
                ]);
            }
            outln!("{t}");
            Ok(())
        }
        CredentialCommand::Revoke { name } => {
            let v = admin
                .call(
                    M::DELETE,
                    &format!("/credentials/{}", percent_encode(&name)),
                    None,
                )
                .await?;
            print(auth.json, &v, |v: &CredentialView| {
                outln!("revoked {} ({})", v.name, v.role)
            })
        }
    }
}

/// Runs a `sessions` subcommand; `sessions [--client-id C]` without one lists.
pub(crate) async fn sessions(
    target: Target,
    auth: AdminAuth,
    client_id: Option<String>,
    cmd: Option<SessionsCommand>,
) -> anyhow::Result<()> {
    use scopecast_protocol::admin::{SessionList, SessionView};
    let cmd = match (cmd, client_id) {
        (None, client_id) => SessionsCommand::List { client_id },
        (Some(cmd), None) => cmd,
        (Some(SessionsCommand::List { client_id: None }), Some(c)) => {
            SessionsCommand::List { client_id: Some(c) }
        }
        (Some(_), Some(_)) => {
            bail!(
                "give --client-id once: `scopecast sessions --client-id C` or `scopecast sessions list --client-id C`"
            )
        }
    };
    let admin = Admin::new(&target, &auth)?;
    match cmd {
        SessionsCommand::List { client_id } => {
            let path = match client_id {
                Some(c) => format!("/sessions?client_id={}", percent_encode(&c)),
                None => "/sessions".to_owned(),
            };
            let list: SessionList = admin.typed(reqwest::Method::GET, &path, None).await?;
            if auth.json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let mut t = table(&[
                "session",
                "client_id",
                "application",
                "peer",
                "since",
                "subscriptions",
                "delivered",
                "published",
                "outbox",
            ]);
            for v in &list.sessions {
                t.add_row(vec![
                    v.session.clone(),
                    v.client_id.clone(),
                    v.application_name.clone(),
                    v.peer.clone(),
                    v.connected_since.clone(),
                    v.subscriptions.join(" "),
                    v.events_delivered.to_string(),
                    v.events_published.to_string(),
                    v.outbox_bytes.to_string(),
                ]);
            }
            outln!("{t}");
            Ok(())
        }
        SessionsCommand::Kill { session } => {
            let v: SessionView = admin
                .typed(
                    reqwest::Method::POST,
                    &format!("/sessions/{}/close", percent_encode(&session)),
                    None,
                )
                .await?;
            if auth.json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                outln!(
                    "closed session {} of {} ({}) with 4010; it may reconnect",
                    v.session,
                    v.client_id,
                    v.application_name
                );
            }
            Ok(())
        }
    }
}

/// `s` as one URL path segment or query value.
fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Runs a `keys` subcommand.
pub(crate) async fn keys(target: Target, auth: AdminAuth, cmd: KeysCommand) -> anyhow::Result<()> {
    let admin = Admin::new(&target, &auth)?;
    match cmd {
        KeysCommand::Rotate => {
            let v = admin
                .call(reqwest::Method::POST, "/keys/rotate", None)
                .await?;
            print(auth.json, &v, |v: &RotatedKey| {
                outln!("new signing key: {}", v.kid)
            })
        }
    }
}

/// `scopecast catalog keys`: the catalog's record-signing public keys (a JWK Set, from the
/// public `GET /catalog/v1/keys`), to pin in each environment's `catalog.trusted_keys_file`.
/// Compare the printed `kid`s with the catalog operator's by another channel before pinning.
pub(crate) async fn catalog_keys(target: Target, out: Option<PathBuf>) -> anyhow::Result<()> {
    let http = target.http()?;
    let url = format!("{}/catalog/v1/keys", target.base().trim_end_matches('/'));
    let resp = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !resp.status().is_success() {
        bail!("{url}: {}", resp.status());
    }
    let jwks: Value = resp.json().await.context("the answer is not JSON")?;
    let text = serde_json::to_string_pretty(&jwks)?;
    match out {
        Some(path) => {
            std::fs::write(&path, format!("{text}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            let kids: Vec<&str> = jwks["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k["kid"].as_str())
                .collect();
            eprintln!(
                "wrote {} (kid {}); set catalog.trusted_keys_file to it",
                path.display(),
                kids.join(", ")
            );
        }
        None => outln!("{text}"),
    }
    Ok(())
}

/// `scopecast keygen`: writes a private key and prints the public JWK Set to register with
/// `scopecast app set-keys CLIENT_ID --jwks FILE`.
pub(crate) fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let mut bytes = [0u8; 48];
    let pem = loop {
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
        let pem = if args.alg == "ES256" {
            p256::SecretKey::from_slice(&bytes[..32])
                .ok()
                .map(|k| k.to_pkcs8_pem(LineEnding::LF))
        } else {
            p384::SecretKey::from_slice(&bytes)
                .ok()
                .map(|k| k.to_pkcs8_pem(LineEnding::LF))
        };
        // A random string is a valid scalar except with negligible probability.
        if let Some(pem) = pem {
            break pem.map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?;
        }
    };
    let mut key = PrivateKey::from_pem(&pem)?;
    if let Some(kid) = &args.kid {
        key = key.with_kid(kid);
    }
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options
            .open(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        f.write_all(pem.as_bytes())?;
    }
    let mut jwk = key.public_jwk().clone();
    jwk["alg"] = json!(args.alg);
    jwk["use"] = json!("sig");
    outln!("{}", serde_json::to_string_pretty(&json!({"keys": [jwk]}))?);
    eprintln!(
        "private key written to {} (kid {}); register the JWK Set above with `scopecast app set-keys`",
        args.out.display(),
        key.kid()
    );
    Ok(())
}

/// The token source that `token`, `sub`, `pub` and `replay` authenticate with, trusting `tls`.
pub(crate) fn token_source(
    target: &Target,
    args: &TokenArgs,
    tls: &TlsConfig,
) -> anyhow::Result<TokenSource> {
    let Some(client_id) = args.client_id.as_deref() else {
        bail!(
            "give --client-id (or SCOPECAST_CLIENT_ID) with --client-secret or --private-key, or a ready --token"
        );
    };
    let source = match (&args.client_secret, &args.private_key) {
        (Some(secret), _) => TokenSource::client_secret(target.base(), client_id, secret),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut key = if text.trim_start().starts_with('{') {
                PrivateKey::from_jwk(&text)?
            } else {
                PrivateKey::from_pem(&text)?
            };
            if let Some(kid) = &args.kid {
                key = key.with_kid(kid);
            }
            TokenSource::private_key(target.base(), client_id, key)
        }
        (None, None) => {
            bail!("give --client-secret (or SCOPECAST_CLIENT_SECRET) or --private-key FILE")
        }
    };
    let source = source.with_tls(tls.clone());
    Ok(match &args.scope {
        Some(scope) => source.with_scope(scope),
        None => source,
    })
}

/// `scopecast token`: prints an access token (or the whole response with `--json`).
pub(crate) async fn token(target: Target, args: TokenArgs, json_out: bool) -> anyhow::Result<()> {
    let source = token_source(&target, &args, &target.tls()?)?;
    let t = source.fetch().await?;
    if json_out {
        outln!(
            "{}",
            json!({"access_token": t.access_token, "token_type": "Bearer", "expires_in": t.expires_in, "scope": t.scope})
        );
    } else {
        outln!("{}", t.access_token);
    }
    Ok(())
}

/// Connects with the credentials given; what happens to the connection (a failed token
/// refresh, a drop and the reconnect) is said on stderr as it happens.
async fn client(target: &Target, auth: &TokenArgs) -> anyhow::Result<scopecast_client::Client> {
    let tls = target.tls()?;
    let options = scopecast_client::ConnectOptions::new().tls(tls.clone());
    let options = match &auth.token {
        Some(t) => options.token(t),
        None => options.token_source(token_source(target, auth, &tls)?),
    };
    let options = options.event_callback(|e| match e {
        scopecast_client::ClientEvent::TokenRefreshFailed(why) => {
            eprintln!("scopecast: token refresh failed: {why}; the current token stays in force until it expires")
        }
        scopecast_client::ClientEvent::Disconnected(why) => {
            eprintln!("scopecast: disconnected ({why}); reconnecting")
        }
        scopecast_client::ClientEvent::Reconnected => eprintln!("scopecast: reconnected"),
        _ => {}
    });
    options
        .connect(&target.url)
        .await
        .with_context(|| format!("connecting to {}", target.url))
}

/// `scopecast sub PATTERN... [--since SEQ]`: prints one event object per line (NDJSON) on
/// stdout, and nothing else there; gaps and errors go to stderr.
pub(crate) async fn sub(
    target: Target,
    auth: TokenArgs,
    patterns: Vec<String>,
    since: Option<u64>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let client = client(&target, &auth).await?;
    let mut streams = Vec::new();
    for p in &patterns {
        let sub = match client.subscribe_since(p, since).await {
            Ok(sub) => sub,
            Err(e) => {
                client.close().await;
                return Err(anyhow::Error::new(e).context(format!("subscribing to {p}")));
            }
        };
        // Each item says which pattern it came from, so an ended one can be named.
        let pattern = p.clone();
        streams.push(sub.map(move |item| (pattern.clone(), item)).boxed());
    }
    // A subscription that ends (the scope was narrowed) is said on stderr; the others go on.
    // The command ends, closing the connection properly, once none is left.
    let mut live = streams.len();
    let mut all = futures_util::stream::select_all(streams);
    // Overlapping patterns each yield an event; print it once. The merged streams interleave,
    // so remember recent seqs rather than only the newest.
    let mut seen = std::collections::BTreeSet::new();
    // Ctrl-C or SIGTERM: close the connection properly (1000), then stop.
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let item = tokio::select! {
            () = &mut stop => {
                client.close().await;
                return Ok(());
            }
            item = all.next() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let (pattern, item) = item;
        match item {
            scopecast_client::Item::Event(e) => {
                if !seen.insert(e.seq) {
                    continue;
                }
                if seen.len() > 100_000
                    && let Some(&newest) = seen.last()
                {
                    seen = seen.split_off(&newest.saturating_sub(50_000));
                }
                // The payload is printed as published, never re-serialized; only a line break
                // (which JSON allows solely as whitespace between tokens) becomes a space, so
                // that each event stays on one NDJSON line.
                let id = serde_json::to_string(e.id.as_str()).unwrap_or_default();
                outln!(
                    "{{\"seq\":{},\"topic\":\"{}\",\"id\":{id},\"time\":\"{}\",\"data\":{}}}",
                    e.seq,
                    e.topic,
                    e.time,
                    one_line(e.data.get())
                );
            }
            scopecast_client::Item::Gap { from_seq, to_seq } => {
                eprintln!("gap: events {from_seq} to {to_seq} are past the broker's retention");
            }
            scopecast_client::Item::Ended(why) => {
                live -= 1;
                if live == 0 {
                    client.close().await;
                    bail!("the subscription to {pattern} ended: {why}; no subscription is left");
                }
                eprintln!(
                    "scopecast: the subscription to {pattern} ended: {why}; {live} other subscription(s) go on"
                );
            }
        }
    }
    client.close().await;
    bail!("the connection closed")
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `json` on one line: CR and LF, which JSON text holds only as insignificant whitespace (inside
/// strings they are always escaped), become spaces; every other byte is kept.
fn one_line(json: &str) -> std::borrow::Cow<'_, str> {
    if json.contains(['\n', '\r']) {
        std::borrow::Cow::Owned(json.replace(['\n', '\r'], " "))
    } else {
        std::borrow::Cow::Borrowed(json)
    }
}

/// `scopecast pub TOPIC [DATA|-]` or `scopecast pub --ndjson FILE`: prints each `seq`.
pub(crate) async fn publish(
    target: Target,
    auth: TokenArgs,
    topic: Option<String>,
    data: Option<String>,
    ndjson: Option<PathBuf>,
) -> anyhow::Result<()> {
    let client = client(&target, &auth).await?;
    let send = |topic: String, json: String| {
        let client = client.clone();
        async move {
            let raw = scopecast_client::protocol::RawJson::payload(&json)
                .map_err(|e| anyhow::anyhow!("data: {e}"))?;
            client
                .publish_raw(&topic, raw, None)
                .await
                .with_context(|| format!("publishing to {topic}"))
        }
    };
    match (topic, ndjson) {
        (Some(topic), None) => {
            let json = match data.as_deref() {
                None | Some("-") => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                    s
                }
                Some(d) => d.to_owned(),
            };
            let seq = send(topic, json).await?;
            outln!("{seq}");
        }
        (None, Some(file)) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                /// One line; `data` keeps the exact bytes of the file.
                #[derive(serde::Deserialize)]
                struct Line {
                    topic: String,
                    data: Box<serde_json::value::RawValue>,
                }
                let l: Line = serde_json::from_str(line).with_context(|| {
                    format!(
                        "{}:{}: a line is {{\"topic\": ..., \"data\": ...}}",
                        file.display(),
                        n + 1
                    )
                })?;
                let seq = send(l.topic, l.data.get().to_owned()).await?;
                outln!("{seq}");
            }
        }
        _ => bail!("give TOPIC [DATA|-], or --ndjson FILE"),
    }
    client.close().await;
    Ok(())
}

/// `scopecast replay --fhir-bulk DIR`.
pub(crate) async fn replay(
    target: Target,
    auth: TokenArgs,
    dir: PathBuf,
    pace: crate::fhir_replay::Pace,
) -> anyhow::Result<()> {
    let reading = crate::fhir_replay::read_export(&dir)?;
    let client = client(&target, &auth).await?;
    let result = crate::fhir_replay::publish(&client, reading, pace).await;
    client.close().await;
    result
}

/// Hands the chunks of a download to a blocking reader, in order; an error ends it.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// `scopecast backup DIR`: asks the broker for a backup (`POST /admin/v1/backup`) and writes
/// it into DIR (new or empty; 0700, files 0600) as it arrives, checking each file against the
/// manifest's SHA-256; prints what it holds.
pub(crate) async fn backup(target: Target, auth: AdminAuth, dir: PathBuf) -> anyhow::Result<()> {
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty: give a new or empty folder for the backup",
            dir.display()
        );
    }
    let admin = Admin::new(&target, &auth)?;
    let mut resp = admin.send(reqwest::Method::POST, "/backup", None).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let into = dir.clone();
    let unpacking = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            chunk: bytes::Bytes::new(),
        };
        scopecast_broker::backup::unpack(reader, &into)
    });
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                // The unpacking stopped (it says why below).
                if tx.send(Ok(chunk)).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "the download broke off: {e}"
                    ))))
                    .await;
                break;
            }
        }
    }
    drop(tx);
    let manifest = unpacking
        .await
        .context("the unpacking task failed")?
        .with_context(|| format!("writing the backup into {}", dir.display()))?;
    if auth.json {
        outln!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    outln!(
        "backup written to {} (taken {} by scopecast {}, environment {} {:?})",
        dir.display(),
        manifest.created_at,
        manifest.broker_version,
        manifest.environment.kind,
        manifest.environment.name
    );
    outln!("  events: {}", seq_range(&manifest));
    let mut t = table(&["file", "bytes", "sha256"]);
    for f in &manifest.files {
        t.add_row(vec![f.name.clone(), f.bytes.to_string(), f.sha256.clone()]);
    }
    outln!("{t}");
    outln!(
        "  {} bytes in all; every file matches the manifest's SHA-256. The backup holds PHI and the signing keys: keep it as private as the data folder.",
        manifest.bytes()
    );
    Ok(())
}

/// "seq 1 to 42 (42 events)", or "none".
fn seq_range(m: &scopecast_broker::backup::Manifest) -> String {
    if m.events == 0 {
        format!("none (last seq {})", m.last_seq)
    } else {
        format!(
            "seq {} to {} ({} events)",
            m.first_seq, m.last_seq, m.events
        )
    }
}

/// `scopecast restore BACKUP_DIR --data-dir DIR [--force]`: puts a backup into the data
/// folder of a stopped broker and says what to do next.
pub(crate) fn restore(backup: PathBuf, data_dir: PathBuf, force: bool) -> anyhow::Result<()> {
    let restored = scopecast_broker::backup::restore(&backup, &data_dir, force)?;
    let m = &restored.manifest;
    outln!(
        "restored the backup taken {} (scopecast {}, environment {} {:?}) into {}",
        m.created_at,
        m.broker_version,
        m.environment.kind,
        m.environment.name,
        data_dir.display()
    );
    outln!(
        "  events: {}; the next event published gets seq {}",
        seq_range(m),
        m.last_seq + 1
    );
    if let Some(aside) = &restored.moved_aside {
        outln!("  the folder's previous files are in {}", aside.display());
    }
    outln!("next:");
    outln!(
        "  1. start the broker on it, with the configuration it had (environment {}): scopecast serve --data-dir {}",
        m.environment.kind,
        data_dir.display()
    );
    outln!(
        "  2. the credentials are those of the backup; admin.token is not part of a backup: use the admin credential of that time (--admin-token, SCOPECAST_ADMIN_TOKEN, or that admin.token copied into {} with mode 0600)",
        data_dir.display()
    );
    outln!(
        "  3. the restored event log is a new log, with a new log_epoch: events published after the backup was taken (seq above {last}) are not in it, and new events get those seqs again. Subscribers that resume by seq (the SDK after a reconnect, scopecast sub) stop with \"the broker's event log was replaced (log_epoch ... became ...); subscribe again\": subscribe again, live, or with --since {last} for every event published from now on",
        last = m.last_seq
    );
    Ok(())
}
