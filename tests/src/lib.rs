//! Support for Scopecast's end-to-end tests (the tests themselves are in `tests/tests/`).
//!
//! - [`TestBroker`]: a real broker on `127.0.0.1:0` with its own temporary data folder,
//!   stopped when dropped, with helpers for the admin API and the token endpoint.
//! - [`test_config`]: the configuration tests start from.
//! - [`cluster`]: broker nodes in cluster mode on a real JetStream cluster and PostgreSQL.
//! - [`ws`]: a raw `scopecast.v1` WebSocket client.
//! - [`fhir`]: a FHIR client (REST and the websocket channel) that keeps every resource it
//!   saw, and the Python validators run over them.
//! - [`keys`]: real key pairs (EC P-256, P-384, RSA) for `private_key_jwt` and foreign issuers.
//! - [`pki`]: an organisation's own CA, an intermediate and a server certificate, as PEM files.

// Test fixtures hold sockets, key material and child processes; printing them helps no test.
#![allow(missing_debug_implementations)]

pub mod cluster;
pub mod fhir;
pub mod keys;
pub mod pki;
pub mod raw;
pub mod receiver;
pub mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scopecast_broker::{Config, LogMode};
use scopecast_protocol::admin;
use serde_json::Value;
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

/// A client ID and its secret, as `app create` returned them.
#[derive(Debug, Clone)]
pub struct TestClient {
    /// The client ID.
    pub client_id: String,
    /// Its secret.
    pub secret: String,
}

/// A registered application.
#[derive(Debug, Clone)]
pub struct TestApp {
    /// Application id.
    pub id: String,
    /// The production client.
    pub production: TestClient,
    /// The non-production client.
    pub non_production: TestClient,
}

/// An HTTP answer: status, headers and JSON body (`Null` when not JSON).
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as JSON.
    pub body: Value,
}

impl Answer {
    /// Reads `resp` whole.
    pub async fn from(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A broker running in this process on an ephemeral port.
pub struct TestBroker {
    addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS.
    base: String,
    /// The operator port's base URL when `admin_listen` is set.
    admin_base: Option<String>,
    data_dir: PathBuf,
    admin_token: String,
    http: reqwest::Client,
    /// Owns the temporary data folder; removed when the broker is dropped.
    _temp: TempDir,
    /// Dropping or sending on it starts the broker's graceful shutdown.
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), scopecast_broker::ServeError>>>,
    /// The configuration it runs with (data folder and address filled in), for restarts.
    config: Config,
}

impl TestBroker {
    /// As [`TestBroker::restart`], with `change` made to the configuration first (an
    /// operator's edit before the restart).
    pub async fn restart_with(&mut self, change: impl FnOnce(&mut Config)) {
        change(&mut self.config);
        self.restart().await;
    }

    /// Stops the broker gracefully and starts it again on the same address and data folder,
    /// as an operator's restart would.
    ///
    /// # Panics
    /// When it does not stop or start in time.
    pub async fn restart(&mut self) {
        self.shut_down().await;
        let mut config = self.config.clone();
        config.listen = self.addr;
        let deadline = tokio::time::Instant::now() + WAIT;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "rebind {}: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let mut listener = Some(listener);
        loop {
            if self.task.is_none() {
                let (tx, rx) = oneshot::channel::<()>();
                let l = match listener.take() {
                    Some(l) => l,
                    None => tokio::net::TcpListener::bind(self.addr)
                        .await
                        .expect("rebind after a failed start"),
                };
                self.task = Some(tokio::spawn(scopecast_broker::run(
                    l,
                    config.clone(),
                    async move {
                        let _ = rx.await;
                    },
                )));
                self.shutdown = Some(tx);
            }
            if self
                .http
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            // A start that failed (the old broker's resources not yet let go) is tried again
            // until the deadline, and its error is shown if it never succeeds.
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let ended = self.task.take().expect("task").await;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "broker did not come back: {ended:?}"
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker did not come back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a broker with `config`, on `127.0.0.1:0`, in a fresh temporary data folder, and
    /// waits until it answers `/healthz`.
    ///
    /// # Panics
    /// When the broker cannot start: a test cannot go on.
    pub async fn start(config: Config) -> TestBroker {
        TestBroker::start_inner(config, None).await
    }

    /// Starts a broker serving TLS with a certificate for `localhost` signed by (or being)
    /// `ca_pem`; the helpers then speak `https://localhost:PORT` and trust that CA.
    pub async fn start_tls(config: Config, ca_pem: &str) -> TestBroker {
        TestBroker::start_inner(config, Some(ca_pem)).await
    }

    async fn start_inner(mut config: Config, ca_pem: Option<&str>) -> TestBroker {
        let temp = tempfile::tempdir().expect("temporary data folder");
        config.data_dir = temp.path().join("data");
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let configured_admin = config.admin_token.clone();
        let base = match ca_pem {
            None => format!("http://{addr}"),
            Some(_) => format!("https://localhost:{}", addr.port()),
        };
        if ca_pem.is_some() && config.oauth.public_url.is_none() {
            config.oauth.public_url = Some(base.clone());
        }
        // With `admin_listen` set, the operator endpoints get a port of their own (port 0 here).
        let admin_listener = match config.admin_listen {
            Some(_) => Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the admin listener"),
            ),
            None => None,
        };
        let admin_base = admin_listener.as_ref().map(|l| {
            let a = l.local_addr().expect("admin address");
            match ca_pem {
                None => format!("http://{a}"),
                Some(_) => format!("https://localhost:{}", a.port()),
            }
        });
        if let Some(l) = &admin_listener {
            config.admin_listen = Some(l.local_addr().expect("admin address"));
        }
        let kept = config.clone();
        let task = tokio::spawn(scopecast_broker::run_on(
            scopecast_broker::Listeners {
                main: listener,
                admin: admin_listener,
            },
            config,
            async move {
                let _ = rx.await;
            },
        ));
        let mut builder = reqwest::Client::builder().timeout(WAIT);
        if let Some(pem) = ca_pem {
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("CA"));
        }
        let http = builder.build().expect("http client");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if task.is_finished() {
                let result = task.await.expect("broker task");
                panic!("broker stopped at start: {result:?}");
            }
            if http.get(format!("{base}/healthz")).send().await.is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker did not answer /healthz"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admin_token = match configured_admin {
            Some(t) => t,
            None => std::fs::read_to_string(data_dir.join(scopecast_broker::ADMIN_TOKEN_FILE))
                .expect("admin.token")
                .trim()
                .to_owned(),
        };
        TestBroker {
            addr,
            base,
            admin_base,
            data_dir,
            admin_token,
            http,
            _temp: temp,
            shutdown: Some(tx),
            task: Some(task),
            config: kept,
        }
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the broker's public URL, issuer and audience.
    pub fn base_url(&self) -> String {
        self.base.clone()
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `ws://127.0.0.1:PORT` followed by `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws{}{path}", self.base.trim_start_matches("http"))
    }

    /// The token endpoint URL (the `aud` of client assertions).
    pub fn token_endpoint(&self) -> String {
        self.http_url("/oauth2/token")
    }

    /// Its data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The admin credential.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The base URL of the operator endpoints (admin API, metrics): the `admin_listen` port
    /// when set, else the public one.
    pub fn operator_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin_base.as_deref().unwrap_or(&self.base))
    }

    /// The HTTP client the helpers use (it trusts the test CA with TLS).
    pub fn http_client(&self) -> &reqwest::Client {
        &self.http
    }

    /// Calls the admin API with the admin credential.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        self.admin_as(&self.admin_token, method, path, body).await
    }

    /// Calls the admin API with `credential`.
    pub async fn admin_as(
        &self,
        credential: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self
            .http
            .request(method, self.operator_url(&format!("/admin/v1{path}")))
            .bearer_auth(credential);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Answer::from(req.send().await.expect("admin request")).await
    }

    /// Registers an application with `scope` as its ceiling; both client IDs start inactive
    /// (the admin API's typed shapes, [`admin::NewApplication`] and
    /// [`admin::ApplicationView`]).
    pub async fn create_app(&self, name: &str, scope: &str) -> TestApp {
        let a = self
            .admin(
                reqwest::Method::POST,
                "/applications",
                Some(
                    serde_json::to_value(admin::NewApplication {
                        name: name.to_owned(),
                        vendor: "Test Vendor".to_owned(),
                        description: String::new(),
                        scope: scope.to_owned(),
                    })
                    .expect("a typed body"),
                ),
            )
            .await;
        assert_eq!(a.status, 201, "create_app: {:?}", a.body);
        let app: admin::ApplicationView =
            serde_json::from_value(a.body).expect("the admin API's application shape");
        let client = |c: &admin::ClientView| TestClient {
            client_id: c.client_id.clone(),
            secret: c.client_secret.clone().expect("client_secret shown once"),
        };
        TestApp {
            production: client(&app.clients.production),
            non_production: client(&app.clients.non_production),
            id: app.id,
        }
    }

    /// Activates a client ID.
    pub async fn activate(&self, client_id: &str) {
        let a = self
            .admin(
                reqwest::Method::POST,
                &format!("/clients/{client_id}/activate"),
                Some(reason("test")),
            )
            .await;
        assert_eq!(a.status, 200, "activate: {:?}", a.body);
    }

    /// Deactivates a client ID.
    pub async fn deactivate(&self, client_id: &str) {
        let a = self
            .admin(
                reqwest::Method::POST,
                &format!("/clients/{client_id}/deactivate"),
                Some(reason("test")),
            )
            .await;
        assert_eq!(a.status, 200, "deactivate: {:?}", a.body);
    }

    /// Registers an application whose non-production client is active; returns that client.
    pub async fn active_client(&self, name: &str, scope: &str) -> TestClient {
        let app = self.create_app(name, scope).await;
        self.activate(&app.non_production.client_id).await;
        app.non_production
    }

    /// Posts a form to the token endpoint, optionally with HTTP Basic credentials.
    pub async fn token_request(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Answer {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut req = self
            .http
            .post(self.token_endpoint())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(enc(id), Some(enc(secret)));
        }
        Answer::from(req.send().await.expect("token request")).await
    }

    /// An access token for `client` by `client_secret_basic`, or a panic.
    pub async fn token(&self, client: &TestClient, scope: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let a = self
            .token_request(&form, Some((&client.client_id, &client.secret)))
            .await;
        assert_eq!(a.status, 200, "token: {:?}", a.body);
        a.body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// The broker's current signing key, read from its key file: to sign look-alike tokens
    /// that differ from real ones in one claim or header.
    pub fn signing_key(&self) -> keys::TestKey {
        let file: Value = serde_json::from_str(
            &std::fs::read_to_string(self.data_dir().join(scopecast_broker::SIGNING_KEYS_FILE))
                .expect("the signing key file"),
        )
        .expect("keys.json is JSON");
        let newest = file["keys"]
            .as_array()
            .and_then(|k| k.last())
            .expect("a key");
        let pem = newest["private_key_pem"].as_str().expect("pem").to_owned();
        keys::TestKey {
            kid: newest["kid"].as_str().expect("kid").to_owned(),
            alg: jsonwebtoken::Algorithm::ES256,
            encoding: jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).expect("EC key"),
            public_jwk: Value::Null,
            pem,
        }
    }

    /// The claims of a token (not verified).
    pub fn claims_of(token: &str) -> Value {
        use base64::Engine;
        let payload = token.split('.').nth(1).expect("a JWS");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON claims")
    }

    /// Publishes `data` to `topic` over HTTP with a bearer token.
    pub async fn publish_http(&self, token: &str, topic: &str, data: &Value) -> Answer {
        let resp = self
            .http
            .post(self.http_url(&format!("/v1/events/{topic}")))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(data.to_string())
            .send()
            .await
            .expect("publish request");
        Answer::from(resp).await
    }

    /// `GET /metrics` as text (with the admin credential, which may read metrics).
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.operator_url("/metrics"))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The value of one unlabelled metric, or 0.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Starts graceful shutdown and waits until the broker stopped (the data folder stays).
    async fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task)
                .await
                .expect("broker stopped");
        }
    }

    /// Stops the broker gracefully and hands over its data folder (which dropping the broker
    /// would remove): `<returned>/data` is the folder it ran on.
    ///
    /// # Panics
    /// When it does not stop in time.
    pub async fn stop_keeping_data(mut self) -> TempDir {
        self.shut_down().await;
        let keep = tempfile::tempdir().expect("a temporary folder");
        std::mem::replace(&mut self._temp, keep)
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

/// `application/x-www-form-urlencoded` encoding of one component.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
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

/// The body of an activation or deactivation ([`admin::Reason`]).
fn reason(text: &str) -> Value {
    serde_json::to_value(admin::Reason {
        reason: text.to_owned(),
    })
    .expect("a typed body")
}
