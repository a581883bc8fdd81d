//! The access audit end to end (SECURITY.md "Access audit"), with the real `scopecast`
//! binary: a FHIR Bulk Data replay (the 3-patient subset in `cli/tests/data`) reaches three
//! subscribers of different scopes; then "which applications received seq N?" and "what did
//! client X receive?" are answered as each subscriber counted, after a restart too; refusals
//! are counted per minute; the FHIR `AuditEvent` export passes PyPI `fhir.resources`; and a
//! record changed in the database is detected by `scopecast audit verify`.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use scopecast_client::{ConnectOptions, Item, SubscribeError, TokenSource};
use serde_json::Value;

mod support;

use support::BIN;

fn data_set() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fhir-bulk-3-patients")
}

fn cli(url: &str, data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args(["--url", url])
        .env("SCOPECAST_DATA_DIR", data)
        .output()
        .unwrap()
}

fn cli_json(url: &str, data: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = cli(url, data, &all);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const AUDIT_ENV: &[(&str, &str)] = &[
    ("SCOPECAST_AUDIT__CHECKPOINT_MS", "300"),
    ("SCOPECAST_AUDIT__SIGN_MS", "300"),
];

/// Stops the broker with SIGTERM (a graceful stop: the audit writes its last records) and
/// waits for it.
fn stop(mut served: support::Served) {
    let pid = served.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    for _ in 0..200 {
        if served.child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the broker did not stop within 10 s of SIGTERM");
}

fn clients_of(records: &Value) -> BTreeSet<String> {
    records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["client_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_received_what_matches_what_each_subscriber_counted() {
    let data = tempfile::tempdir().unwrap();
    let served = support::serve_env(data.path(), "durable", AUDIT_ENV);
    let url = served.url.clone();
    let client_of = |app: &Value| {
        let np = &app["clients"]["non_production"];
        (
            np["client_id"].as_str().unwrap().to_owned(),
            np["client_secret"].as_str().unwrap().to_owned(),
        )
    };
    let make = |name: &str, scope: &str| {
        let app = cli_json(
            &url,
            data.path(),
            &[
                "app", "create", "--name", name, "--vendor", "T", "--scope", scope,
            ],
        );
        cli_json(&url, data.path(), &["app", "activate", &client_of(&app).0]);
        client_of(&app)
    };
    let feeder = make("Feeder", "publish:fhir.>");
    // Three subscribers of different scopes.
    let apps = [
        ("all", make("All", "subscribe:fhir.>"), "fhir.>"),
        (
            "started",
            make("Started", "subscribe:fhir.encounter.started"),
            "fhir.encounter.started",
        ),
        (
            "finished",
            make("Finished", "subscribe:fhir.encounter.finished"),
            "fhir.encounter.finished",
        ),
    ];
    let mut subs = Vec::new();
    for (label, (id, secret), pattern) in &apps {
        let client = ConnectOptions::new()
            .token_source(TokenSource::client_secret(&url, id, secret))
            .connect(&url)
            .await
            .unwrap();
        let sub = client.subscribe(pattern).await.unwrap();
        subs.push((*label, id.clone(), client, sub));
    }
    // A refusal: the narrow app asks for more than its scope, twice.
    for _ in 0..2 {
        match subs[1].2.subscribe("fhir.>").await {
            Err(SubscribeError::Forbidden { required_scope }) => {
                assert_eq!(required_scope, "subscribe:fhir.>")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    let replay = support::run_ok(
        Command::new(BIN)
            .args(["replay", "--fhir-bulk"])
            .arg(data_set())
            .args([
                "--url",
                &url,
                "--client-id",
                &feeder.0,
                "--client-secret",
                &feeder.1,
            ]),
    );
    let summary = String::from_utf8_lossy(&replay.stdout).into_owned();
    let total: usize = summary
        .split("published ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(total > 20, "{summary}");

    // What each subscriber counted: seqs by topic.
    let mut counted: BTreeMap<&str, BTreeMap<u64, String>> = BTreeMap::new();
    for (label, _, _, sub) in &mut subs {
        let seen = counted.entry(label).or_default();
        loop {
            match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
                Ok(Some(Item::Event(e))) => {
                    seen.insert(e.seq, e.topic.to_string());
                }
                Ok(other) => panic!("{label}: {other:?}"),
                Err(_) => break,
            }
        }
    }
    assert_eq!(
        counted["all"].len(),
        total,
        "the broad subscriber saw everything"
    );
    assert!(!counted["started"].is_empty() && !counted["finished"].is_empty());
    assert_eq!(
        counted["started"].len() + counted["finished"].len(),
        total,
        "the replay of encounters splits into started and finished"
    );
    // While they are still connected (their records' last snapshots are older than what they
    // received), "who received" is answered from the live sessions' counters.
    let by_label: BTreeMap<&str, String> =
        subs.iter().map(|(l, id, _, _)| (*l, id.clone())).collect();
    let last_started = *counted["started"].keys().next_back().unwrap();
    let live_who = clients_of(&cli_json(
        &url,
        data.path(),
        &["audit", "access", "--seq", &last_started.to_string()],
    ));
    assert_eq!(
        live_who,
        BTreeSet::from([by_label["all"].clone(), by_label["started"].clone()]),
        "live subscriptions, before any checkpoint"
    );
    let v = cli_json(
        &url,
        data.path(),
        &[
            "audit",
            "access",
            "--client-id",
            &by_label["all"],
            "--kind",
            "subscription",
        ],
    );
    assert_eq!(v["records"][0]["count"], total as u64, "{v}");
    assert!(v["records"][0]["ended_at"].is_null(), "{v}");
    // The subscribers leave (a close frame each): their records end.
    for (_, _, client, _) in &subs {
        client.close().await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // "What did client X receive?": one subscription record each, counts as counted.
    for (label, id) in &by_label {
        let v = cli_json(
            &url,
            data.path(),
            &[
                "audit",
                "access",
                "--client-id",
                id,
                "--kind",
                "subscription",
            ],
        );
        let records = v["records"].as_array().unwrap();
        assert_eq!(records.len(), 1, "{label}: {v}");
        let r = &records[0];
        let seqs = &counted[label];
        assert_eq!(r["count"], seqs.len() as u64, "{label}: {r}");
        assert_eq!(r["first_seq"], *seqs.keys().next().unwrap(), "{label}: {r}");
        assert_eq!(
            r["last_seq"],
            *seqs.keys().next_back().unwrap(),
            "{label}: {r}"
        );
        assert_eq!(r["end_reason"], "closed_by_client", "{label}: {r}");
        assert!(
            r["token_jti"].as_str().is_some_and(|j| !j.is_empty()),
            "{r}"
        );
        assert!(r["token_iat"].is_string(), "{r}");
        assert!(
            r["source"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{r}"
        );
    }
    // "Which applications received seq N?", for one event of each topic.
    let started_seq = *counted["started"].keys().nth(1).unwrap();
    let finished_seq = *counted["finished"].keys().next_back().unwrap();
    let who = |url: &str, seq: u64| {
        clients_of(&cli_json(
            url,
            data.path(),
            &["audit", "access", "--seq", &seq.to_string()],
        ))
    };
    assert_eq!(
        who(&url, started_seq),
        BTreeSet::from([by_label["all"].clone(), by_label["started"].clone()])
    );
    assert_eq!(
        who(&url, finished_seq),
        BTreeSet::from([by_label["all"].clone(), by_label["finished"].clone()])
    );
    // Past the last event: nobody received it.
    let v = cli_json(
        &url,
        data.path(),
        &["audit", "access", "--seq", &(total as u64 + 10).to_string()],
    );
    assert_eq!(v["records"].as_array().unwrap().len(), 0, "{v}");
    // A time window that ended before anything happened holds nothing.
    let v = cli_json(
        &url,
        data.path(),
        &["audit", "access", "--to", "2000-01-01T00:00:00Z"],
    );
    assert_eq!(v["records"].as_array().unwrap().len(), 0, "{v}");

    // A token request with a wrong secret: refused at the token endpoint, its client ID only
    // claimed.
    let wrong = Command::new(BIN)
        .args([
            "token",
            "--client-id",
            &by_label["finished"],
            "--client-secret",
            "not-the-secret",
            "--url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    // The refusals of this minute are written at the latest when the broker stops; the audit
    // survives the restart (it is in the registry store).
    stop(served);
    let served = support::serve_env(data.path(), "durable", AUDIT_ENV);
    let url = served.url.clone();
    let v = cli_json(&url, data.path(), &["audit", "access", "--kind", "refusal"]);
    let refusals: Vec<&Value> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "insufficient_scope")
        .collect();
    assert_eq!(refusals.len(), 1, "aggregated per minute: {v}");
    assert_eq!(refusals[0]["client_id"], by_label["started"].as_str());
    assert_eq!(refusals[0]["missing_scope"], "subscribe:fhir.>");
    assert_eq!(refusals[0]["count"], 2);
    assert_eq!(
        refusals[0]["claimed"], false,
        "an authenticated client was refused"
    );
    let token_refusal = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "invalid_client")
        .unwrap_or_else(|| panic!("the token endpoint's refusal: {v}"));
    assert_eq!(token_refusal["client_id"], by_label["finished"].as_str());
    assert_eq!(token_refusal["claimed"], true, "{token_refusal}");
    assert_eq!(
        who(&url, started_seq),
        BTreeSet::from([by_label["all"].clone(), by_label["started"].clone()]),
        "after a restart"
    );

    // NDJSON: one record per line.
    let out = cli(
        &url,
        data.path(),
        &["audit", "access", "--format", "ndjson"],
    );
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 4, "{lines:?}");
    assert!(lines.iter().all(|l| l["kind"].is_string()));

    // The FHIR export, validated by a validator no one here wrote.
    let out = cli(&url, data.path(), &["audit", "access", "--format", "fhir"]);
    assert!(out.status.success());
    let bundle_file = data.path().join("audit-bundle.json");
    std::fs::write(&bundle_file, &out.stdout).unwrap();
    let bundle: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(bundle["entry"].as_array().unwrap().len(), lines.len());
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/audit_validate.py");
    let checked = Command::new("python3")
        .arg(&script)
        .arg(&bundle_file)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Verified, then tampered with, then found out.
    let out = cli(&url, data.path(), &["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("access audit verified"));
    stop(served);
    let db = data.path().join("registry.sqlite");
    let tamper = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys\n\
             c=sqlite3.connect(sys.argv[1])\n\
             n=c.execute(\"UPDATE access_audit SET body=replace(body,'\\\"count\\\":','\\\"count\\\":1') \
             WHERE rowid=(SELECT rowid FROM access_audit WHERE kind='subscription' AND body LIKE '%closed_by_client%' LIMIT 1)\").rowcount\n\
             c.commit()\n\
             assert n==1, n\n",
        )
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        tamper.status.success(),
        "{}",
        String::from_utf8_lossy(&tamper.stderr)
    );
    let served = support::serve_env(data.path(), "durable", AUDIT_ENV);
    let out = cli(&served.url, data.path(), &["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("does not match its hash"), "{text}");
}
