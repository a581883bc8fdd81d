//! A webhook receiver in Python (`tests/python/webhook_receiver.py`) that verifies every
//! request with PyPI's `standardwebhooks` (and `v1a` with PyNaCl) and answers as the test
//! plans; stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id`.
    pub webhook_id: String,
    /// `webhook-timestamp`.
    pub timestamp: i64,
    /// `webhook-signature`.
    pub signature: String,
    /// `Content-Type`.
    pub content_type: String,
    /// `X-Api-Key` (an extra header of the endpoint).
    pub api_key: String,
    /// The body.
    pub body: String,
    /// Which secrets verify it (indexes into the last `secrets`).
    pub verified_by: Vec<usize>,
    /// A copy with one byte of the body changed verified with no secret.
    pub tampered_rejected: bool,
    /// Which `v1a` public keys verify it (indexes into the last `public_keys`).
    pub v1a_verified_by: Vec<usize>,
    /// A copy with one byte of the body changed verified with no public key.
    pub v1a_tampered_rejected: bool,
    /// What the receiver answered.
    pub status: u16,
    /// When it arrived, Unix s.
    pub at: f64,
}

/// The running receiver.
pub struct Receiver {
    child: Child,
    /// The address it listens on.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// `http`, or `https` when it serves TLS (then its URLs name `localhost`).
    scheme: &'static str,
    http: reqwest::Client,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Starts it on 127.0.0.1.
    ///
    /// # Panics
    /// Without python3, `standardwebhooks` and PyNaCl (`.ci/run` installs them).
    pub fn start() -> Receiver {
        Receiver::spawn(Command::new("python3"), "127.0.0.1", None)
    }

    /// Starts it inside network namespace `netns`, listening on `host` there (an address of
    /// the namespace).
    ///
    /// # Panics
    /// As [`Receiver::start`], or without `ip netns` (root).
    pub fn start_in(netns: &str, host: &str) -> Receiver {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns, "python3"]);
        Receiver::spawn(command, host, None)
    }

    /// Starts it on 127.0.0.1 serving HTTPS with `pki`'s server certificate (for `localhost`,
    /// signed by the PKI's intermediate CA); its URLs are `https://localhost:PORT`.
    ///
    /// # Panics
    /// As [`Receiver::start`].
    pub fn start_tls(pki: &crate::pki::InternalPki) -> Receiver {
        let mut receiver = Receiver::spawn(
            Command::new("python3"),
            "127.0.0.1",
            Some((&pki.chain_file, &pki.key_file)),
        );
        receiver.scheme = "https";
        receiver.host = "localhost".to_owned();
        receiver.http = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(pki.root_pem.as_bytes()).expect("the root CA"),
            )
            .build()
            .expect("an HTTPS client");
        receiver
    }

    fn spawn(
        mut command: Command,
        host: &str,
        tls: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Receiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/webhook_receiver.py");
        command.arg(script).arg(host);
        if let Some((chain, key)) = tls {
            command.arg(chain).arg(key);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (see .ci/run)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the receiver's port");
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver did not start: {line:?}"));
        Receiver {
            child,
            host: host.to_owned(),
            port,
            scheme: "http",
            http: reqwest::Client::new(),
        }
    }

    /// `http://<host>:<port><path>` (`https://localhost:...` for [`Receiver::start_tls`]).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}:{}{path}", self.scheme, self.host, self.port)
    }

    /// The secrets it verifies with.
    pub async fn secrets(&self, secrets: &[&str]) {
        self.keys(secrets, &[]).await;
    }

    /// The secrets and the `v1a` public keys it verifies with.
    pub async fn keys(&self, secrets: &[&str], public_keys: &[&str]) {
        self.control(
            "/_control/secrets",
            json!({ "secrets": secrets, "public_keys": public_keys }),
        )
        .await;
    }

    /// The answers of the next requests (then 200).
    pub async fn plan(&self, answers: Value) {
        self.control("/_control/plan", json!({ "answers": answers }))
            .await;
    }

    async fn control(&self, path: &str, body: Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("the receiver answers");
        assert_eq!(r.status().as_u16(), 204);
    }

    /// Every request so far, and how often a trap path was fetched.
    pub async fn log(&self) -> (Vec<Received>, u64) {
        let v: Value = self
            .http
            .get(self.url("/_control/log"))
            .send()
            .await
            .expect("the receiver answers")
            .json()
            .await
            .expect("JSON");
        let log = v["log"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| Received {
                webhook_id: r["webhook_id"].as_str().unwrap_or_default().to_owned(),
                timestamp: r["timestamp"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_default(),
                signature: r["signature"].as_str().unwrap_or_default().to_owned(),
                content_type: r["content_type"].as_str().unwrap_or_default().to_owned(),
                api_key: r["api_key"].as_str().unwrap_or_default().to_owned(),
                body: r["body"].as_str().unwrap_or_default().to_owned(),
                verified_by: r["verified_by"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.as_u64().map(|i| i as usize))
                    .collect(),
                tampered_rejected: r["tampered_rejected"].as_bool().unwrap_or(false),
                v1a_verified_by: r["v1a_verified_by"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.as_u64().map(|i| i as usize))
                    .collect(),
                v1a_tampered_rejected: r["v1a_tampered_rejected"].as_bool().unwrap_or(false),
                status: r["status"].as_u64().unwrap_or_default() as u16,
                at: r["at"].as_f64().unwrap_or_default(),
            })
            .collect();
        (log, v["trap_hits"].as_u64().unwrap_or_default())
    }

    /// Waits until at least `n` requests arrived; all of them.
    ///
    /// # Panics
    /// When they do not within `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (log, _) = self.log().await;
            if log.len() >= n {
                return log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} requests arrived within {within:?}",
                log.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
