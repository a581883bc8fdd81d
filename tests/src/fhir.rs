//! A FHIR client for tests: the REST calls of `/fhir` and the websocket channel, keeping every
//! FHIR resource the broker sent, which [`validate`] hands to validators no one here wrote
//! (`tests/python/fhir_validate.py`: PyPI `fhir.resources` R4B models and `fhirpathpy`;
//! `tests/node/fhir_validate.mjs`: npm `@medplum/core`'s `validateResource`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Answer, WAIT};

/// Every FHIR resource seen, shared by a test's clients and sockets.
pub type Seen = Arc<parking_lot::Mutex<Vec<Value>>>;

fn keep(seen: &Seen, v: &Value) {
    if v.get("resourceType").is_some() {
        seen.lock().push(v.clone());
    }
}

/// The Subscriptions Backport IG's extension URLs.
pub const FILTER: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
/// `backport-payload-content`.
pub const CONTENT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
/// `backport-heartbeat-period`.
pub const HEARTBEAT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
/// The Argonaut encounter-start topic.
pub const ENCOUNTER_START: &str =
    "http://argonautproject.org/encounters-ig/SubscriptionTopic/encounter-start";
/// The Argonaut encounter-end topic.
pub const ENCOUNTER_END: &str =
    "http://argonautproject.org/encounters-ig/SubscriptionTopic/encounter-end";

/// An R4B websocket Subscription to `criteria` with an optional filter
/// (`Encounter?patient=Patient/1`), payload content and heartbeat period.
pub fn subscription(
    criteria: &str,
    filter: Option<&str>,
    content: &str,
    heartbeat_s: Option<u64>,
) -> Value {
    let mut s = json!({
        "resourceType": "Subscription",
        "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"]},
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": {
            "type": "websocket",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": CONTENT, "valueCode": content}]},
        },
    });
    if let Some(f) = filter {
        s["_criteria"] = json!({"extension": [{"url": FILTER, "valueString": f}]});
    }
    if let Some(h) = heartbeat_s {
        s["channel"]["extension"] = json!([{"url": HEARTBEAT, "valueUnsignedInt": h}]);
    }
    s
}

/// An Encounter of `patient` (an id) with id `id`.
pub fn encounter(id: &str, patient: &str) -> Value {
    json!({
        "resourceType": "Encounter",
        "id": id,
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{patient}")},
        "period": {"start": "2026-12-04T10:00:00Z"},
    })
}

/// A FHIR REST client with one access token.
#[derive(Clone)]
pub struct FhirClient {
    http: reqwest::Client,
    /// `http://host:port/fhir`.
    pub base: String,
    token: String,
    /// What it saw.
    pub seen: Seen,
}

impl FhirClient {
    /// A client of the broker at `base_url` (`http://host:port`) with `token`.
    pub fn new(http: &reqwest::Client, base_url: &str, token: &str, seen: &Seen) -> FhirClient {
        FhirClient {
            http: http.clone(),
            base: format!("{base_url}/fhir"),
            token: token.to_owned(),
            seen: seen.clone(),
        }
    }

    /// The same client with another token.
    pub fn with_token(&self, token: &str) -> FhirClient {
        FhirClient {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// `method` `path` (under `/fhir`) with the token and an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        let a = Answer::from(req.send().await.expect("FHIR request")).await;
        keep(&self.seen, &a.body);
        if let Some(entries) = a.body["entry"].as_array()
            && a.body["type"] == "searchset"
        {
            for e in entries {
                keep(&self.seen, &e["resource"]);
            }
        }
        a
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    /// Creates `sub`: its id (asserting 201).
    pub async fn create(&self, sub: &Value) -> String {
        let a = self.call(Method::POST, "/Subscription", Some(sub)).await;
        assert_eq!(a.status, 201, "{}", a.body);
        a.body["id"].as_str().expect("id").to_owned()
    }

    /// A binding token for Subscription `id` (asserting 200).
    pub async fn binding_token(&self, id: &str) -> String {
        let a = self
            .get(&format!("/Subscription/{id}/$get-ws-binding-token"))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        parameter(&a.body, "token")
            .and_then(|v| v["valueString"].as_str())
            .expect("token")
            .to_owned()
    }
}

/// The parameter `name` of a `Parameters`.
pub fn parameter<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p["parameter"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == name)
}

/// The SubscriptionStatus of a notification Bundle.
pub fn status_of(bundle: &Value) -> &Value {
    &bundle["entry"][0]["resource"]
}

/// A websocket on the FHIR channel.
pub struct FhirSocket {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    seen: Seen,
}

impl FhirSocket {
    /// Connects to `url` (`ws://host:port/fhir/ws`).
    pub async fn connect(url: &str, seen: &Seen) -> FhirSocket {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("FHIR websocket");
        FhirSocket {
            stream,
            seen: seen.clone(),
        }
    }

    /// Sends `text`.
    pub async fn send(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next text message within `wait` (JSON when it is, else a JSON string), or `None`;
    /// a close frame as `{"close": code}`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => {
                    let v =
                        serde_json::from_str(t.as_str()).unwrap_or(Value::String(t.to_string()));
                    keep(&self.seen, &v);
                    return Some(v);
                }
                Ok(Message::Close(f)) => {
                    return Some(json!({"close": f.map_or(1005, |f| u16::from(f.code))}));
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next text message (failing after [`WAIT`]).
    pub async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await.expect("a message in time")
    }
}

/// Runs the Python validators over every resource in `seen`; panics with their message on a
/// failure. Returns how many were validated.
pub fn validate(seen: &Seen) -> usize {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("resources.jsonl");
    let text: String = seen.lock().iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&path, text).expect("write resources");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/fhir_validate.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 must be installed (see .ci/run)");
    assert!(
        out.status.success(),
        "FHIR validation failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And Medplum's validator (npm `@medplum/core`: R4 profiles with its SubscriptionStatus,
    // FHIRPath invariants, JSON types), installed in tests/node by `.ci/run` (`npm ci`).
    let node_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/node");
    assert!(
        std::path::Path::new(node_dir)
            .join("node_modules/@medplum/core")
            .is_dir(),
        "@medplum/core is not installed: run `npm ci` in tests/node (see .ci/run)"
    );
    let medplum = std::process::Command::new("node")
        .arg(format!("{node_dir}/fhir_validate.mjs"))
        .arg(&path)
        .output()
        .expect("node must be installed (see .ci/run)");
    assert!(
        medplum.status.success(),
        "Medplum validation failed:\n{}",
        String::from_utf8_lossy(&medplum.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}
