//! Cluster mode with real `scopecast serve` processes (issue 16): two broker nodes on a
//! 3-node JetStream cluster and PostgreSQL started by the test; 1,000 SDK subscribers on one
//! node, which is then `kill -9`ed: every subscriber resumes on the other node with no gap and
//! no duplicate, and the killed node leaves no JetStream consumer behind.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use scopecast_client::{ConnectOptions, Item};
use scopecast_testkit::{NatsCluster, Postgres};
use serde_json::{Value, json};

mod support;

use support::{BIN, Served};

/// The public URL both nodes announce (as behind one load balancer).
const PUBLIC_URL: &str = "http://scopecast-cluster.test";

fn node(data: &Path, name: &str, settings: &[(&str, String)]) -> Served {
    let mut env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("SCOPECAST_CLUSTER__NODE_NAME", name));
    support::serve_env(data, "memory", &env)
}

fn cli(url: &str, data: &Path, args: &[&str]) -> Value {
    let out = support::run_ok(
        Command::new(BIN)
            .args(args)
            .args(["--url", url])
            .env("SCOPECAST_DATA_DIR", data),
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

async fn publish(http: &reqwest::Client, url: &str, token: &str, n: usize) -> u64 {
    let r = http
        .post(format!("{url}/v1/events/lab.result"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(json!({ "n": n }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap()
}

/// Reads events from `s` until `upto`: their `seq`s.
async fn read(s: &mut scopecast_client::Subscription, upto: u64) -> Vec<u64> {
    let mut got = Vec::new();
    while got.last().copied().unwrap_or(0) < upto {
        match tokio::time::timeout(Duration::from_secs(60), s.next()).await {
            Ok(Some(Item::Event(e))) => got.push(e.seq),
            other => panic!("after {:?}: {other:?}", got.last()),
        }
    }
    got
}

async fn consumers(nats: &NatsCluster, stream: &str) -> usize {
    let js = async_nats::jetstream::new(nats.connect().await.unwrap());
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.consumer_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_broker_process_moves_1000_sdk_subscribers_to_another_node() {
    let nats = NatsCluster::shared();
    let database = Postgres::shared().database().await;
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    support::run_ok(Command::new(BIN).args(["cluster", "kek"]).arg(&kek));
    let stream = format!("CLI_{}", std::process::id());
    let settings = [
        ("SCOPECAST_OAUTH__PUBLIC_URL", PUBLIC_URL.to_owned()),
        ("SCOPECAST_CLUSTER__NATS_URL", nats.url()),
        ("SCOPECAST_CLUSTER__POSTGRES_URL", database),
        (
            "SCOPECAST_CLUSTER__KEY_ENCRYPTION_KEY_FILE",
            kek.display().to_string(),
        ),
        ("SCOPECAST_CLUSTER__STREAM", stream.clone()),
        (
            "SCOPECAST_CLUSTER__SUBJECT_PREFIX",
            format!("cli{}", std::process::id()),
        ),
        (
            "SCOPECAST_CLUSTER__NATS_PING_INTERVAL_MS",
            "1000".to_owned(),
        ),
        ("SCOPECAST_RETENTION__MAX_BYTES", (64u64 << 20).to_string()),
    ];
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = node(&data_a, "a", &settings);
    let b = node(&data_b, "b", &settings);
    // The first node made the admin credential; the second found it in PostgreSQL.
    let app = cli(
        &b.url,
        &data_a,
        &[
            "app",
            "create",
            "--name",
            "Killed",
            "--vendor",
            "T",
            "--scope",
            "subscribe:lab.> publish:lab.>",
            "--json",
        ],
    );
    let np = &app["clients"]["non_production"];
    let id = np["client_id"].as_str().unwrap();
    // Through the other node, once the registry's change feed brought it the new application
    // (NOTIFY, or the poll when a notification is late on a loaded machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(BIN)
            .args(["app", "activate", id, "--reason", "test", "--url", &a.url])
            .env("SCOPECAST_DATA_DIR", &data_a)
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not found") && std::time::Instant::now() < deadline,
            "{err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = support::run_ok(Command::new(BIN).args([
        "token",
        "--client-id",
        id,
        "--client-secret",
        np["client_secret"].as_str().unwrap(),
        "--url",
        &a.url,
    ]));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    const CLIENTS: usize = 1000;
    let urls = format!("{},{}", a.url, b.url);
    let mut subs = Vec::with_capacity(CLIENTS);
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let c = ConnectOptions::new()
            .token(&token)
            .max_reconnect_delay(Duration::from_secs(1))
            .connect(&urls)
            .await
            .unwrap();
        subs.push(c.subscribe("lab.>").await.unwrap());
        clients.push(c);
    }
    let http = reqwest::Client::new();
    let mut seqs = Vec::new();
    for n in 0..20 {
        seqs.push(publish(&http, &b.url, &token, n).await);
    }
    // Every subscriber has the first 20 before the kill.
    let first_last = *seqs.last().unwrap();
    let mut before = Vec::new();
    for s in subs.iter_mut() {
        before.push(read(s, first_last).await);
    }
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let killed_at = Instant::now();
    for n in 20..40 {
        seqs.push(publish(&http, &b.url, &token, n).await);
    }
    let last = *seqs.last().unwrap();
    for (i, s) in subs.iter_mut().enumerate() {
        let mut got = before[i].clone();
        got.extend(read(s, last).await);
        assert_eq!(
            got, seqs,
            "subscriber {i}: every event once, in order, across the kill"
        );
    }
    eprintln!(
        "1000 SDK subscribers resumed on node b {:?} after the kill of node a",
        killed_at.elapsed()
    );
    // The killed node's consumer goes after the ordered consumer's inactive threshold (30 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumers(nats, &stream).await != 1 {
        assert!(Instant::now() < deadline, "a JetStream consumer leaked");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn kill_9_of_the_webhook_lease_holder_moves_deliveries_to_another_node() {
    use support::receiver::{Receiver, seq_of};
    let nats = NatsCluster::shared();
    let database = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Postgres::shared().database());
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    support::run_ok(Command::new(BIN).args(["cluster", "kek"]).arg(&kek));
    let tag = format!("{}w", std::process::id());
    let settings = [
        ("SCOPECAST_OAUTH__PUBLIC_URL", PUBLIC_URL.to_owned()),
        ("SCOPECAST_CLUSTER__NATS_URL", nats.url()),
        ("SCOPECAST_CLUSTER__POSTGRES_URL", database),
        (
            "SCOPECAST_CLUSTER__KEY_ENCRYPTION_KEY_FILE",
            kek.display().to_string(),
        ),
        ("SCOPECAST_CLUSTER__STREAM", format!("CLI_{tag}")),
        ("SCOPECAST_CLUSTER__SUBJECT_PREFIX", format!("cli{tag}")),
        (
            "SCOPECAST_CLUSTER__NATS_PING_INTERVAL_MS",
            "1000".to_owned(),
        ),
        ("SCOPECAST_RETENTION__MAX_BYTES", (64u64 << 20).to_string()),
        (
            "SCOPECAST_WEBHOOKS__ALLOW_PRIVATE",
            "[\"127.0.0.1/32\"]".to_owned(),
        ),
        ("SCOPECAST_WEBHOOKS__ALLOW_HTTP", "true".to_owned()),
        ("SCOPECAST_WEBHOOKS__LEASE_MS", "3000".to_owned()),
        (
            "SCOPECAST_WEBHOOKS__RETRY_SCHEDULE_MS",
            "[200, 400]".to_owned(),
        ),
    ];
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = node(&data_a, "a", &settings);
    let b = node(&data_b, "b", &settings);
    let app = cli(
        &a.url,
        &data_a,
        &[
            "app",
            "create",
            "--name",
            "Hooked",
            "--vendor",
            "T",
            "--scope",
            "subscribe:lab.> publish:lab.>",
            "--json",
        ],
    );
    let np = &app["clients"]["non_production"];
    let id = np["client_id"].as_str().unwrap();
    cli(
        &a.url,
        &data_a,
        &["app", "activate", id, "--reason", "test"],
    );
    let out = support::run_ok(Command::new(BIN).args([
        "token",
        "--client-id",
        id,
        "--client-secret",
        np["client_secret"].as_str().unwrap(),
        "--url",
        &a.url,
    ]));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let receiver = Receiver::start();
    let added = cli(
        &b.url,
        &data_a,
        &[
            "app",
            "webhook",
            "add",
            id,
            "--endpoint-url",
            &receiver.url("/hook"),
            "--topics",
            "lab.>",
            "--json",
        ],
    );
    let endpoint = added["id"].as_str().unwrap().to_owned();
    receiver.control(
        "/_control/secrets",
        json!({ "secrets": [added["secret"].as_str().unwrap()] }),
    );
    // A slow receiver (20 ms a request), so the kill lands mid-stream.
    receiver.control(
        "/_control/plan",
        json!({ "answers": vec![json!({"sleep_s": 0.02}); 2000] }),
    );
    let http = reqwest::blocking::Client::new();
    let seqs: Vec<u64> = (0..150)
        .map(|n| {
            let r = http
                .post(format!("{}/v1/events/lab.result", a.url))
                .bearer_auth(&token)
                .json(&json!({ "n": n }))
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 201);
            r.json::<Value>().unwrap()["seq"].as_u64().unwrap()
        })
        .collect();
    receiver.wait_for("a third delivered", Duration::from_secs(30), |l| {
        l.len() >= 50
    });
    // Which node holds the lease: kill that one.
    let shown = cli(
        &a.url,
        &data_a,
        &["app", "webhook", "show", &endpoint, "--json"],
    );
    let holder = shown["delivering_node"].as_str().unwrap().to_owned();
    let (mut killed, survivor, survivor_data) = if holder == "a" {
        (a, b, data_a)
    } else {
        (b, a, data_a)
    };
    killed.child.kill().unwrap();
    let _ = killed.child.wait();
    let killed_at = Instant::now();
    let at_kill = receiver.log().len();
    assert!(
        at_kill < 150,
        "the kill came too late to test anything ({at_kill})"
    );
    let wanted: std::collections::HashSet<u64> = seqs.iter().copied().collect();
    let log = receiver.wait_for(
        "every event after the takeover",
        Duration::from_secs(60),
        |l| {
            l.iter()
                .map(seq_of)
                .collect::<std::collections::HashSet<_>>()
                .is_superset(&wanted)
        },
    );
    eprintln!(
        "webhook deliveries moved from node {holder} and caught up {:?} after its kill -9",
        killed_at.elapsed()
    );
    assert!(log.iter().all(|r| r["verified_by"] == json!([0])));
    let got: Vec<u64> = log.iter().map(seq_of).collect();
    let restarts = got.windows(2).filter(|w| w[1] <= w[0]).count();
    assert!(
        restarts <= 1,
        "in seq order, one resumption at most: {got:?}"
    );
    let shown = cli(
        &survivor.url,
        &survivor_data,
        &["app", "webhook", "show", &endpoint, "--json"],
    );
    assert_ne!(shown["delivering_node"], json!(holder), "{shown}");
}
