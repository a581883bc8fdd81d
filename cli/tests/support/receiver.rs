//! The webhook receiver the tests run: `tests/python/webhook_receiver.py`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub(crate) const RECEIVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/python/webhook_receiver.py"
);

/// The Python receiver of `tests/python/webhook_receiver.py`, which verifies every request
/// with PyPI's `standardwebhooks`; stopped when dropped.
pub(crate) struct Receiver {
    child: Child,
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    http: reqwest::blocking::Client,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let mut child = Command::new("python3")
            .arg(RECEIVER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (see .ci/run)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("port ").unwrap().parse().unwrap();
        Receiver {
            child,
            port,
            http: reqwest::blocking::Client::new(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn control(&self, path: &str, body: Value) {
        let r = self.http.post(self.url(path)).json(&body).send().unwrap();
        assert_eq!(r.status().as_u16(), 204);
    }

    pub(crate) fn log(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(self.url("/_control/log"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["log"].as_array().unwrap().clone()
    }

    pub(crate) fn wait_for(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if done(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?} ({} requests)",
                log.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `seq` of a received request's body.
pub(crate) fn seq_of(r: &Value) -> u64 {
    serde_json::from_str::<Value>(r["body"].as_str().unwrap_or("{}"))
        .ok()
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or_default()
}
