//! `scopecast app webhook ...` end to end, and a broker killed with SIGKILL mid-stream: the
//! `scopecast` binary serves (durable log) and delivers to the Python receiver of
//! `tests/python/webhook_receiver.py`, which verifies every request with PyPI's
//! `standardwebhooks`.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

mod support;

use support::BIN;
use support::console::Browserless;
use support::receiver::{Receiver, seq_of};

/// The webhook settings a test broker needs to reach a receiver on loopback.
const HOOK_ENV: [(&str, &str); 3] = [
    ("SCOPECAST_WEBHOOKS__ALLOW_PRIVATE", "[\"127.0.0.1/32\"]"),
    ("SCOPECAST_WEBHOOKS__ALLOW_HTTP", "true"),
    (
        "SCOPECAST_WEBHOOKS__RETRY_SCHEDULE_MS",
        "[200, 400, 800, 1600]",
    ),
];

fn run(url: &str, data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--url", url])
        .env("SCOPECAST_DATA_DIR", data)
        .env_remove("SCOPECAST_ADMIN_TOKEN")
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// An active client ID that may subscribe to and publish `lab.>`, and a token for it.
fn client(url: &str, data: &Path) -> (String, String) {
    let app = json_of(&run(
        url,
        data,
        &[
            "app",
            "create",
            "--name",
            "Receiver App",
            "--vendor",
            "V",
            "--scope",
            "subscribe:lab.> publish:lab.>",
            "--json",
        ],
    ));
    let np = &app["clients"]["non_production"];
    let (id, secret) = (
        np["client_id"].as_str().unwrap().to_owned(),
        np["client_secret"].as_str().unwrap().to_owned(),
    );
    json_of(&run(url, data, &["app", "activate", &id, "--json"]));
    let token = run(
        url,
        data,
        &["token", "--client-id", &id, "--client-secret", &secret],
    );
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    (
        id,
        String::from_utf8(token.stdout).unwrap().trim().to_owned(),
    )
}

fn publish(http: &reqwest::blocking::Client, url: &str, token: &str, n: u64) -> u64 {
    let r = http
        .post(format!("{url}/v1/events/lab.result"))
        .bearer_auth(token)
        .json(&json!({"n": n}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    r.json::<Value>().unwrap()["seq"].as_u64().unwrap()
}

#[test]
fn webhook_commands_manage_an_endpoint_and_deliveries_verify() {
    let data = tempfile::tempdir().unwrap();
    let served = support::serve_env(data.path(), "durable", &HOOK_ENV);
    let (url, dir) = (served.url.clone(), data.path());
    let receiver = Receiver::start();
    let (client_id, token) = client(&url, dir);
    let added = json_of(&run(
        &url,
        dir,
        &[
            "app",
            "webhook",
            "add",
            &client_id,
            "--endpoint-url",
            &receiver.url("/hook"),
            "--topics",
            "lab.result lab.order",
            "--header",
            "X-Api-Key: k-1",
            "--v1a",
            "--json",
        ],
    ));
    let id = added["id"].as_str().unwrap().to_owned();
    let secret = added["secret"].as_str().unwrap().to_owned();
    let public_key = added["public_key"].as_str().unwrap().to_owned();
    assert_eq!(added["topics"], json!(["lab.result", "lab.order"]));
    receiver.control(
        "/_control/secrets",
        json!({ "secrets": [secret], "public_keys": [public_key] }),
    );
    // The table output names the endpoint and its v1a public key, never the secret.
    let shown = run(&url, dir, &["app", "webhook", "show", &id]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success()
            && text.contains(&id)
            && text.contains(&public_key)
            && !text.contains("whsec_"),
        "{text}"
    );
    let listed = json_of(&run(
        &url,
        dir,
        &["app", "webhook", "list", &client_id, "--json"],
    ));
    assert_eq!(listed["webhooks"][0]["id"], id.as_str());

    let http = reqwest::blocking::Client::new();
    let seq = publish(&http, &url, &token, 1);
    let log = receiver.wait_for("a delivery", Duration::from_secs(10), |l| !l.is_empty());
    assert_eq!(log[0]["verified_by"], json!([0]));
    assert_eq!(
        log[0]["v1a_verified_by"],
        json!([0]),
        "v1a verifies with PyNaCl"
    );
    assert_eq!(log[0]["api_key"], "k-1");
    assert_eq!(seq_of(&log[0]), seq);

    // Paused: nothing goes; resumed: it goes on from the cursor.
    let paused = json_of(&run(
        &url,
        dir,
        &[
            "app",
            "webhook",
            "pause",
            &id,
            "--reason",
            "maintenance",
            "--json",
        ],
    ));
    assert_eq!(paused["state"], "paused");
    let held = publish(&http, &url, &token, 2);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(receiver.log().len(), 1, "nothing goes to a paused endpoint");
    json_of(&run(
        &url,
        dir,
        &["app", "webhook", "resume", &id, "--json"],
    ));
    let log = receiver.wait_for("the held event", Duration::from_secs(10), |l| l.len() >= 2);
    assert_eq!(seq_of(&log[1]), held);

    // Replay from the first event; the delivery log lists every attempt.
    json_of(&run(
        &url,
        dir,
        &[
            "app",
            "webhook",
            "replay",
            &id,
            "--since",
            &seq.to_string(),
            "--json",
        ],
    ));
    let log = receiver.wait_for("the replay", Duration::from_secs(10), |l| l.len() >= 4);
    assert_eq!(
        log[2..4].iter().map(seq_of).collect::<Vec<_>>(),
        [seq, held]
    );
    assert_eq!(
        log[2]["webhook_id"], log[0]["webhook_id"],
        "same webhook-id: receivers de-duplicate"
    );
    // The receiver saw the replay before the broker recorded its outcome (a CI run listed 2
    // of the 4 deliveries): read the delivery log until it has them, at most 10 s.
    let delivered = |d: &Value| {
        d["attempts"].as_array().map_or(0, |a| {
            a.iter().filter(|a| a["outcome"] == "delivered").count()
        })
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let deliveries = loop {
        let d = json_of(&run(
            &url,
            dir,
            &["app", "webhook", "deliveries", &id, "--json"],
        ));
        if delivered(&d) >= 3 || std::time::Instant::now() > until {
            break d;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        deliveries["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["outcome"] == "delivered")
            .count()
            >= 3,
        "{deliveries}"
    );
    let rotated = json_of(&run(
        &url,
        dir,
        &["app", "webhook", "rotate-secret", &id, "--json"],
    ));
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_ne!(rotated["secret"], json!(secret));
    let updated = json_of(&run(
        &url,
        dir,
        &[
            "app",
            "webhook",
            "update",
            &id,
            "--topics",
            "lab.>",
            "--no-headers",
            "--v1a",
            "false",
            "--json",
        ],
    ));
    assert_eq!(updated["topics"], json!(["lab.>"]));
    assert_eq!(updated["header_names"], json!([]));
    assert!(updated.get("public_key").is_none(), "{updated}");
    // A topic outside the scope is refused with the field named.
    let refused = run(
        &url,
        dir,
        &["app", "webhook", "update", &id, "--topics", "adt.>"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("subscribe:adt.>"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // The application's console page shows the endpoint's health from its delivery log.
    let apps = json_of(&run(&url, dir, &["app", "list", "--json"]));
    let app_id = apps["applications"][0]["id"].as_str().unwrap().to_owned();
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    let console = Browserless::sign_in(&url, admin.trim());
    let page = console
        .response(&format!("/console/apps/{app_id}"))
        .text()
        .unwrap();
    assert!(
        page.contains("past its cursor; last attempt delivered HTTP 2")
            && page.contains("no private_key_jwt keys"),
        "{page}"
    );
    let deleted = run(&url, dir, &["app", "webhook", "delete", &id]);
    assert!(deleted.status.success());
    let gone = run(&url, dir, &["app", "webhook", "show", &id]);
    assert!(!gone.status.success());
    // Every change is in the audit trail.
    let audit = json_of(&run(
        &url,
        dir,
        &["app", "audit", "--limit", "100", "--json"],
    ));
    let actions: HashSet<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "webhook.create",
        "webhook.pause",
        "webhook.resume",
        "webhook.replay",
        "webhook.rotate_secret",
        "webhook.update",
        "webhook.delete",
    ] {
        assert!(actions.contains(a), "{a} not audited: {actions:?}");
    }
    drop(served);
}

#[test]
fn sigkill_mid_stream_loses_no_event_and_keeps_seq_order() {
    let data = tempfile::tempdir().unwrap();
    let mut served = support::serve_env(data.path(), "durable", &HOOK_ENV);
    let url = served.url.clone();
    let dir = data.path();
    let receiver = Receiver::start();
    let (client_id, token) = client(&url, dir);
    let added = json_of(&run(
        &url,
        dir,
        &[
            "app",
            "webhook",
            "add",
            &client_id,
            "--endpoint-url",
            &receiver.url("/hook"),
            "--topics",
            "lab.>",
            "--json",
        ],
    ));
    receiver.control(
        "/_control/secrets",
        json!({ "secrets": [added["secret"].as_str().unwrap()] }),
    );
    // A slow receiver (20 ms a request), so the kill lands mid-stream.
    receiver.control(
        "/_control/plan",
        json!({ "answers": vec![json!({"sleep_s": 0.02}); 1000] }),
    );
    let http = reqwest::blocking::Client::new();
    let seqs: Vec<u64> = (0..150).map(|n| publish(&http, &url, &token, n)).collect();
    receiver.wait_for("a third delivered", Duration::from_secs(30), |l| {
        l.len() >= 50
    });
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let at_kill = receiver.log().len();
    assert!(
        at_kill < 150,
        "the kill came too late to test anything ({at_kill})"
    );
    // The same data folder: the endpoint, its cursor and the events are on disk.
    let _served = support::serve_env(dir, "durable", &HOOK_ENV);
    let wanted: HashSet<u64> = seqs.iter().copied().collect();
    let log = receiver.wait_for(
        "every event after the restart",
        Duration::from_secs(60),
        |l| {
            l.iter()
                .map(seq_of)
                .collect::<HashSet<_>>()
                .is_superset(&wanted)
        },
    );
    assert!(log.iter().all(|r| r["verified_by"] == json!([0])));
    // In seq order: each run is increasing; a restart goes back at most to the saved cursor.
    let got: Vec<u64> = log.iter().map(seq_of).collect();
    let restarts = got.windows(2).filter(|w| w[1] <= w[0]).count();
    assert!(restarts <= 1, "one resumption at most: {got:?}");
    let ids: HashSet<&str> = log
        .iter()
        .filter_map(|r| r["webhook_id"].as_str())
        .collect();
    assert_eq!(
        ids.len(),
        150,
        "one webhook-id per event, redeliveries included"
    );
}
