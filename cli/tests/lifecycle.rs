//! Lifecycle operations against the real `scopecast` binary: `app delete`, `scopecast backup`
//! while events and applications keep arriving, `scopecast restore` into a new data folder and
//! a broker started on it; tampered backups and a running broker are refused.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::BIN;

/// Longest a test waits for anything.
const WAIT: Duration = Duration::from_secs(30);

/// The broker's public URL, the issuer and audience of its tokens: a site keeps it when it
/// restores (here the restored broker listens on another port), so tokens issued before
/// still verify.
const PUBLIC_URL: (&str, &str) = (
    "SCOPECAST_OAUTH__PUBLIC_URL",
    "https://scopecast.hospital.test",
);

fn admin_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Runs `scopecast ARGS --url URL` with the admin credential `token`.
fn cli(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--url", url, "--admin-token", token])
        .env_remove("SCOPECAST_ADMIN_TOKEN")
        .env_remove("SCOPECAST_DATA_DIR")
        .output()
        .unwrap()
}

/// `scopecast catalog keys`: the record-signing public keys (public: no credential).
fn catalog_keys(url: &str) -> String {
    ok(&Command::new(BIN)
        .args(["catalog", "keys", "--url", url])
        .output()
        .unwrap())
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json_of(out: &Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// Registers an application and activates its non-production client: (app id, client ID,
/// secret).
fn active_app(url: &str, token: &str, name: &str, scope: &str) -> (String, String, String) {
    let app = json_of(&cli(
        url,
        token,
        &[
            "app", "create", "--name", name, "--vendor", "V", "--scope", scope, "--json",
        ],
    ));
    let np = &app["clients"]["non_production"];
    let client_id = np["client_id"].as_str().unwrap().to_owned();
    ok(&cli(url, token, &["app", "activate", &client_id, "--json"]));
    (
        app["id"].as_str().unwrap().to_owned(),
        client_id,
        np["client_secret"].as_str().unwrap().to_owned(),
    )
}

fn access_token(url: &str, client_id: &str, secret: &str) -> String {
    let v: Value = http()
        .post(format!("{url}/oauth2/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {v}"))
        .to_owned()
}

/// Publishes `body` to `topic`; its seq. Waits out the publish rate limit.
fn publish(
    http: &reqwest::blocking::Client,
    url: &str,
    token: &str,
    topic: &str,
    body: &str,
) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = http
            .post(format!("{url}/v1/events/{topic}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        if status == 429 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let v: Value = resp.json().unwrap();
        assert_eq!(status, 201, "publish: {v}");
        return v["seq"].as_u64().unwrap();
    }
}

/// One event of `GET /v1/events`, as the broker wrote it.
#[derive(serde::Deserialize)]
struct HistoryEvent {
    seq: u64,
    data: Box<serde_json::value::RawValue>,
}

/// Every event of `topic` from seq 1 to `last` (or the newest, if lower): each as the broker
/// wrote it (raw JSON), and its `data` exactly.
fn history(url: &str, token: &str, topic: &str, last: u64) -> BTreeMap<u64, (String, String)> {
    #[derive(serde::Deserialize)]
    struct Page {
        events: Vec<Box<serde_json::value::RawValue>>,
        next_since: u64,
        head_seq: u64,
    }
    let http = http();
    let mut out = BTreeMap::new();
    let mut since = 0;
    while since < last {
        let limit = (last - since).min(1000).to_string();
        let text = http
            .get(format!("{url}/v1/events"))
            .bearer_auth(token)
            .query(&[
                ("topic", topic),
                ("since", &since.to_string()),
                ("limit", &limit),
            ])
            .send()
            .unwrap()
            .text()
            .unwrap();
        let page: Page = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        for raw in &page.events {
            let e: HistoryEvent = serde_json::from_str(raw.get()).unwrap();
            if e.seq <= last {
                out.insert(e.seq, (raw.get().to_owned(), e.data.get().to_owned()));
            }
        }
        if page.next_since >= page.head_seq {
            break;
        }
        assert!(page.next_since > since, "no progress after {since}: {text}");
        since = page.next_since;
    }
    out
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn app_delete_is_refused_while_active_then_audited_and_gone() {
    let data = tempfile::tempdir().unwrap();
    let served = support::serve(data.path(), "memory");
    let (url, token) = (served.url.as_str(), admin_token(data.path()));
    let (app_id, np, secret) = active_app(url, &token, "Old Board", "subscribe:adt.>");
    let prod = json_of(&cli(url, &token, &["app", "show", &app_id, "--json"]))["clients"]
        ["production"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Only the client ID of this environment's kind can be active here.
    let err = refused(&cli(url, &token, &["app", "activate", &prod, "--json"]));
    assert!(err.contains("409") && err.contains(&np), "{err}");
    let err = refused(&cli(url, &token, &["app", "delete", &app_id]));
    assert!(err.contains(&np) && !err.contains(&prod), "{err}");
    assert!(err.contains("deactivate it first"), "{err}");
    ok(&cli(
        url,
        &token,
        &["app", "deactivate", &np, "--reason", "retiring", "--json"],
    ));

    // Only the admin role deletes.
    let viewer = json_of(&cli(
        url,
        &token,
        &[
            "credential",
            "create",
            "--name",
            "auditor",
            "--role",
            "viewer",
            "--json",
        ],
    ))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let err = refused(&cli(url, &viewer, &["app", "delete", &app_id]));
    assert!(err.contains("403"), "{err}");
    // Nor does a viewer take backups: they hold the signing keys.
    let elsewhere = tempfile::tempdir().unwrap();
    let into = elsewhere.path().join("backup");
    let err = refused(&cli(url, &viewer, &["backup", into.to_str().unwrap()]));
    assert!(err.contains("403"), "{err}");
    assert!(!into.exists(), "nothing written");

    let deleted = json_of(&cli(
        url,
        &token,
        &["app", "delete", &app_id, "--reason", "retired", "--json"],
    ));
    assert_eq!(deleted["id"], app_id.as_str());
    assert_eq!(deleted["name"], "Old Board");
    let ids: BTreeSet<&str> = deleted["client_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from([np.as_str(), prod.as_str()]));

    let listed = json_of(&cli(url, &token, &["app", "list", "--json"]));
    assert_eq!(listed["applications"].as_array().unwrap().len(), 0);
    assert!(refused(&cli(url, &token, &["app", "show", &np])).contains("404"));
    let err = refused(&cli(url, &token, &["app", "delete", &app_id]));
    assert!(err.contains("404") && err.contains("not found"), "{err}");

    // The client ID no longer gets a token.
    let resp = http()
        .post(format!("{url}/oauth2/token"))
        .basic_auth(&np, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // The audit trail keeps the deletion, who did it, and the client's history before it.
    let trail = json_of(&cli(
        url,
        &token,
        &["app", "audit", "--application", &app_id, "--json"],
    ));
    let entries = trail["entries"].as_array().unwrap();
    let last = &entries[0];
    assert_eq!(last["action"], "application.delete");
    assert_eq!(last["actor"], "admin", "the credential's name");
    assert_eq!(last["detail"]["name"], "Old Board");
    assert_eq!(last["detail"]["reason"], "retired");
    assert_eq!(last["detail"]["client_ids"].as_array().unwrap().len(), 2);
    let of_np = json_of(&cli(
        url,
        &token,
        &["app", "audit", "--client", &np, "--json"],
    ));
    let actions: Vec<&str> = of_np["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["client.deactivate", "client.activate"]);

    // The name is free again.
    active_app(url, &token, "Old Board", "subscribe:adt.>");
}

#[test]
fn a_backup_taken_under_load_restores_into_a_broker_that_goes_on_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data1 = tmp.path().join("data1");
    let served = support::serve_env(&data1, "durable", &[PUBLIC_URL]);
    let url = served.url.clone();
    let token = admin_token(&data1);
    // The record-signing keys environments pinned (a catalog's): kept by the backup.
    let record_keys = catalog_keys(&url);
    assert!(record_keys.contains("\"kid\""), "{record_keys}");
    let (_, feed_id, feed_secret) =
        active_app(&url, &token, "Lab Feed", "publish:lab.> subscribe:lab.>");
    // Inactive, with keys: the registry copy must hold every kind of row.
    let idle = json_of(&cli(
        &url,
        &token,
        &[
            "app",
            "create",
            "--name",
            "Idle",
            "--vendor",
            "V",
            "--scope",
            "subscribe:x",
            "--json",
        ],
    ));
    let feed_token = access_token(&url, &feed_id, &feed_secret);

    // Payloads a re-serialization would change: trailing zeros, big integers, key order,
    // spaces, escapes.
    let bodies = [
        r#"{"value": 1.50, "unit":"mmol/L"}"#,
        r#"{"b":1,"a":2}"#,
        r#"[123456789012345678901234567890, -0.0, 1e5]"#,
        "{\"note\":\"caf\\u00e9 \\\"x\\\"\",\n \"ok\":true}",
    ];
    let sent: Arc<parking_lot::Mutex<BTreeMap<u64, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // A publisher that also registers an application now and then, then publishes an event
    // naming it: wherever the backup's instant falls, an event naming an application means
    // that application was registered before it.
    let writer = {
        let (sent, stop) = (sent.clone(), stop.clone());
        let (url, token, feed_token) = (url.clone(), token.clone(), feed_token.clone());
        std::thread::spawn(move || {
            let http = http();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut n = 0usize;
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline && n < 5_000 {
                if n.is_multiple_of(25) {
                    let name = format!("Concurrent {n}");
                    let resp = http
                        .post(format!("{url}/admin/v1/applications"))
                        .bearer_auth(&token)
                        .json(&json!({"name": name, "vendor": "V", "scope": "subscribe:lab.>"}))
                        .send()
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 201);
                    let id = resp.json::<Value>().unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    let body = format!(r#"{{"registered_app": "{id}"}}"#);
                    let seq = publish(&http, &url, &feed_token, "lab.app", &body);
                    sent.lock().insert(seq, body);
                } else {
                    let body = bodies[n % bodies.len()];
                    let seq = publish(&http, &url, &feed_token, "lab.result", body);
                    sent.lock().insert(seq, body.to_owned());
                }
                n += 1;
            }
        })
    };
    let wait_for = |count: usize| {
        let deadline = Instant::now() + WAIT;
        while sent.lock().len() < count {
            assert!(Instant::now() < deadline, "the publisher is stuck");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(60);
    let backup = tmp.path().join("backup");
    let out = cli(&url, &token, &["backup", backup.to_str().unwrap()]);
    let summary = ok(&out);
    let before_end = sent.lock().len();
    wait_for(before_end + 60);
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    assert!(summary.contains("events: seq"), "{summary}");

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup.join("backup.json")).unwrap()).unwrap();
    let last_seq = manifest["last_seq"].as_u64().unwrap();
    assert_eq!(manifest["first_seq"], 1);
    assert_eq!(manifest["events"], last_seq);
    assert_eq!(manifest["log"], "durable");
    assert_eq!(manifest["environment"]["kind"], "non-production");
    assert!(last_seq >= 60, "taken after 60 publishes: {last_seq}");
    let sent = sent.lock().clone();
    assert!(
        sent.keys().any(|&s| s > last_seq),
        "publishes went on after the backup"
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&backup), 0o700);
        for f in [
            "backup.json",
            "registry.sqlite",
            "events.redb",
            "signing-keys.json",
            "record-signing-keys.json",
            "webhooks.kek",
        ] {
            assert_eq!(mode(&backup.join(f)), 0o600, "{f}");
        }
    }
    assert!(
        !backup.join("admin.token").exists(),
        "no credential in clear"
    );
    // The broker left no temporary files in its data folder.
    let leftovers: Vec<_> = std::fs::read_dir(&data1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A non-empty folder is refused before anything is asked of the broker.
    let err = refused(&cli(&url, &token, &["backup", backup.to_str().unwrap()]));
    assert!(err.contains("not empty"), "{err}");

    // What broker 1 serves up to the backup's last seq, as it wrote it.
    let original = history(&url, &feed_token, "lab.>", last_seq);
    assert_eq!(original.len() as u64, last_seq);
    let apps_before: Value = json_of(&cli(&url, &token, &["app", "list", "--json"]));

    // Restoring onto the running broker's data folder is refused, and changes nothing.
    let err = refused(
        &Command::new(BIN)
            .args(["restore", backup.to_str().unwrap(), "--force", "--data-dir"])
            .arg(&data1)
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("a broker is running") && err.contains("stop it"),
        "{err}"
    );
    // So is a second broker on it.
    let mut second = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "durable",
            "--data-dir",
        ])
        .arg(&data1)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second broker started on the same data folder");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("broker.lock"), "{err}");

    // A backup with one byte changed is refused, naming the file.
    let tampered = tmp.path().join("tampered");
    std::fs::create_dir(&tampered).unwrap();
    for f in [
        "backup.json",
        "registry.sqlite",
        "events.redb",
        "signing-keys.json",
        "record-signing-keys.json",
        "webhooks.kek",
    ] {
        std::fs::copy(backup.join(f), tampered.join(f)).unwrap();
    }
    let events_file = tampered.join("events.redb");
    let mut bytes = std::fs::read(&events_file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&events_file, bytes).unwrap();
    let data3 = tmp.path().join("data3");
    let err = refused(
        &Command::new(BIN)
            .args(["restore", tampered.to_str().unwrap(), "--data-dir"])
            .arg(&data3)
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("events.redb") && err.contains("SHA-256"),
        "{err}"
    );
    assert!(!data3.join("registry.sqlite").exists());
    assert!(
        !data3.exists(),
        "the folder the refused restore made, broker.lock and all, is gone"
    );

    // Restore into a new folder.
    let data2 = tmp.path().join("data2");
    let out = Command::new(BIN)
        .args(["restore", backup.to_str().unwrap(), "--data-dir"])
        .arg(&data2)
        .output()
        .unwrap();
    let said = ok(&out);
    assert!(
        said.contains(&format!(
            "the next event published gets seq {}",
            last_seq + 1
        )),
        "{said}"
    );
    assert!(said.contains("scopecast serve --data-dir"), "{said}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&data2), 0o700);
        for f in [
            "registry.sqlite",
            "events.redb",
            "signing-keys.json",
            "record-signing-keys.json",
            "webhooks.kek",
        ] {
            assert_eq!(mode(&data2.join(f)), 0o600, "{f}");
        }
    }
    drop(served);

    let restored = support::serve_env(&data2, "durable", &[PUBLIC_URL]);
    let url2 = restored.url.clone();
    let keys_after = catalog_keys(&url2);
    assert_eq!(
        keys_after, record_keys,
        "the restored catalog signs with the key environments pinned"
    );
    assert!(
        !data2.join("admin.token").exists(),
        "no new admin.token that the restored store would refuse"
    );
    // The admin credential of before works; the applications are those of the backup.
    let apps: Value = json_of(&cli(&url2, &token, &["app", "list", "--json"]));
    let by_id = |v: &Value| -> BTreeMap<String, Value> {
        v["applications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["id"].as_str().unwrap().to_owned(), a.clone()))
            .collect()
    };
    let (restored_apps, apps_after) = (by_id(&apps), by_id(&apps_before));
    for (id, app) in &restored_apps {
        assert_eq!(Some(app), apps_after.get(id), "restored as it was");
    }
    let idle_id = idle["id"].as_str().unwrap();
    assert!(restored_apps.contains_key(idle_id));
    assert_eq!(
        restored_apps[idle_id]["clients"]["production"]["client_id"],
        idle["clients"]["production"]["client_id"]
    );
    // The token issued before the backup still verifies (the signing keys came along), and
    // the events up to the backup's last seq are there, byte for byte.
    let copy = history(&url2, &feed_token, "lab.>", last_seq + 1000);
    assert_eq!(
        copy.keys().next_back(),
        Some(&last_seq),
        "nothing after last_seq"
    );
    assert_eq!(copy, original);
    for (seq, (_, data)) in &copy {
        assert_eq!(Some(data), sent.get(seq), "seq {seq} as published");
    }
    // One point: every application an event of the backup names is in its registry.
    for (_, data) in copy.values() {
        if let Some(id) = serde_json::from_str::<Value>(data).unwrap()["registered_app"].as_str() {
            assert!(
                restored_apps.contains_key(id),
                "{id} named by an event, missing"
            );
        }
    }
    // The client secret works too, and the sequence goes on after the backup's last seq.
    let fresh = access_token(&url2, &feed_id, &feed_secret);
    let next = publish(
        &http(),
        &url2,
        &fresh,
        "lab.result",
        r#"{"after":"restore"}"#,
    );
    assert_eq!(next, last_seq + 1);
}

#[test]
fn a_memory_log_backup_restores_into_a_durable_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let data1 = tmp.path().join("data1");
    let served = support::serve_env(&data1, "memory", &[PUBLIC_URL]);
    let token = admin_token(&data1);
    let (_, id, secret) = active_app(&served.url, &token, "Mem", "publish:m.> subscribe:m.>");
    let feed = access_token(&served.url, &id, &secret);
    let http = http();
    let seqs: Vec<u64> = (0..5)
        .map(|i| publish(&http, &served.url, &feed, "m.x", &format!("{{\"i\": {i}}}")))
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let backup = tmp.path().join("backup");
    let out = json_of(&cli(
        &served.url,
        &token,
        &["backup", backup.to_str().unwrap(), "--json"],
    ));
    assert_eq!(
        (out["log"].as_str(), out["last_seq"].as_u64()),
        (Some("memory"), Some(5))
    );
    drop(served);
    let data2 = tmp.path().join("data2");
    ok(&Command::new(BIN)
        .args(["restore", backup.to_str().unwrap(), "--data-dir"])
        .arg(&data2)
        .output()
        .unwrap());
    let restored = support::serve_env(&data2, "durable", &[PUBLIC_URL]);
    let got = history(&restored.url, &feed, "m.>", 5);
    let data: Vec<&str> = got.values().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        data,
        [
            "{\"i\": 0}",
            "{\"i\": 1}",
            "{\"i\": 2}",
            "{\"i\": 3}",
            "{\"i\": 4}"
        ]
    );
    assert_eq!(publish(&http, &restored.url, &feed, "m.x", "6"), 6);
}
