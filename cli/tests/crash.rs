//! No acknowledged event is lost: publish from several connections to the real `scopecast`
//! binary on the durable log, SIGKILL it mid-stream, restart it on the same data folder, and
//! check every acknowledged event, its `seq`, and that no `seq` is reused.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

mod support;

use support::{BIN, Served};

fn serve(data: &Path) -> Served {
    support::serve(data, "durable")
}

fn cli(served: &Served, data: &Path, args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(args)
        .args(["--url", &served.url])
        .env("SCOPECAST_DATA_DIR", data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn token(served: &Served, id: &str, secret: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "token",
            "--client-id",
            id,
            "--client-secret",
            secret,
            "--url",
            &served.url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_event_and_reuses_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let served = serve(&data);
    let app = cli(
        &served,
        &data,
        &[
            "app",
            "create",
            "--name",
            "Crash",
            "--vendor",
            "T",
            "--scope",
            "publish:adt.> subscribe:adt.>",
            "--json",
        ],
    );
    let np = &app["clients"]["non_production"];
    let (id, secret) = (
        np["client_id"].as_str().unwrap().to_owned(),
        np["client_secret"].as_str().unwrap().to_owned(),
    );
    cli(&served, &data, &["app", "activate", &id, "--json"]);
    let tok = token(&served, &id, &secret);

    // Four publishers, each recording what was acknowledged.
    let acked: Arc<Mutex<BTreeMap<u64, Value>>> = Arc::default();
    let mut tasks = Vec::new();
    for p in 0..4 {
        let (url, tok, acked) = (served.url.clone(), tok.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0.. {
                let data = json!({"publisher": p, "i": i});
                let r = http
                    .post(format!("{url}/v1/events/adt.p{p}"))
                    .bearer_auth(&tok)
                    .header("content-type", "application/json")
                    .body(data.to_string())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let body: Value = r.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .insert(body["seq"].as_u64().unwrap(), data);
                    }
                    Ok(r) if r.status() == 429 => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut served = served;
    served.child.kill().unwrap(); // SIGKILL
    served.child.wait().unwrap();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "only {} events were acknowledged before the kill",
        acked.len()
    );

    let served = serve(&data);
    let tok = token(&served, &id, &secret);
    let http = reqwest::Client::new();
    let mut stored: BTreeMap<u64, Value> = BTreeMap::new();
    let mut since = 0u64;
    loop {
        let page: Value = http
            .get(format!(
                "{}/v1/events?topic=adt.>&since={since}&limit=1000",
                served.url
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        for e in events {
            let seq = e["seq"].as_u64().unwrap();
            assert!(
                stored.insert(seq, e["data"].clone()).is_none(),
                "seq {seq} twice"
            );
        }
        since = page["next_since"].as_u64().unwrap();
        if events.is_empty() || since >= page["head_seq"].as_u64().unwrap() {
            break;
        }
    }
    for (seq, data) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(data),
            "acknowledged event {seq} lost or changed"
        );
    }
    let max = *stored.keys().last().unwrap();
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=max).collect::<Vec<_>>(),
        "seqs are contiguous"
    );
    let r: Value = http
        .post(format!("{}/v1/events/adt.after", served.url))
        .bearer_auth(&tok)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["seq"].as_u64().unwrap(),
        max + 1,
        "the next seq follows the last stored one"
    );
}
