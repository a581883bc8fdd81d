//! `scopecast replay --fhir-bulk` on a real FHIR Bulk Data export (../shared/data, which CI
//! has; the product does not need it): subscribers see every mapped event exactly once, in
//! order of clinical time, and the counts are computed here from the files, not constants.
//! Set SCOPECAST_FHIR_TEST_DATA to use another export.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use scopecast_client::{ConnectOptions, Item, SubscribeError, TokenSource};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod support;

use support::BIN;

fn export() -> Option<PathBuf> {
    let dir = std::env::var_os("SCOPECAST_FHIR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/synthea-10-patients")
        });
    dir.is_dir().then_some(dir)
}

fn when(v: &Value) -> Option<OffsetDateTime> {
    let s = v.as_str()?;
    OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| {
        let d =
            time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
        Some(d.midnight().assume_utc())
    })
}

/// The mapping of the issue, written again independently: topic -> clinical time.
fn expected_times(r: &Value) -> Vec<(&'static str, OffsetDateTime)> {
    let mut v = Vec::new();
    let mut push = |topic, t: Option<OffsetDateTime>| {
        if let Some(t) = t {
            v.push((topic, t));
        }
    };
    match r["resourceType"].as_str().unwrap_or("") {
        "Encounter" => {
            push("fhir.encounter.started", when(&r["period"]["start"]));
            if r["status"] == "finished" {
                push("fhir.encounter.finished", when(&r["period"]["end"]));
            }
        }
        "Condition" => push(
            "fhir.condition.recorded",
            when(&r["recordedDate"]).or_else(|| when(&r["onsetDateTime"])),
        ),
        "MedicationRequest" => push("fhir.medicationrequest.ordered", when(&r["authoredOn"])),
        "Procedure" => push(
            "fhir.procedure.performed",
            when(&r["performedPeriod"]["start"]).or_else(|| when(&r["performedDateTime"])),
        ),
        "Immunization" => push("fhir.immunization.given", when(&r["occurrenceDateTime"])),
        "AllergyIntolerance" => push("fhir.allergyintolerance.recorded", when(&r["recordedDate"])),
        _ => {}
    }
    v
}

fn cli_json(url: &str, data: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(args)
        .args(["--url", url, "--json"])
        .env("SCOPECAST_DATA_DIR", data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_bulk_export_reaches_subscribers_once_in_clinical_order() {
    let Some(dir) = export() else {
        eprintln!(
            "no FHIR Bulk Data export found (../shared/data or SCOPECAST_FHIR_TEST_DATA): skipped"
        );
        return;
    };
    // What the files say should be published.
    let mut expected: BTreeMap<&'static str, usize> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "ndjson") {
            continue;
        }
        for line in BufReader::new(std::fs::File::open(&path).unwrap()).lines() {
            let line = line.unwrap();
            if let Ok(r) = serde_json::from_str::<Value>(&line) {
                for (topic, _) in expected_times(&r) {
                    *expected.entry(topic).or_default() += 1;
                }
            }
        }
    }
    let total: usize = expected.values().sum();
    assert!(total > 1000, "the export has events");

    let data = tempfile::tempdir().unwrap();
    let served = support::serve(data.path(), "memory");
    let url = served.url.clone();
    let client_of = |app: &Value| {
        let np = &app["clients"]["non_production"];
        (
            np["client_id"].as_str().unwrap().to_owned(),
            np["client_secret"].as_str().unwrap().to_owned(),
        )
    };
    let feeder = cli_json(
        &url,
        data.path(),
        &[
            "app",
            "create",
            "--name",
            "Feeder",
            "--vendor",
            "T",
            "--scope",
            "publish:fhir.>",
        ],
    );
    let reader = cli_json(
        &url,
        data.path(),
        &[
            "app",
            "create",
            "--name",
            "Reader",
            "--vendor",
            "T",
            "--scope",
            "subscribe:fhir.>",
        ],
    );
    let narrow = cli_json(
        &url,
        data.path(),
        &[
            "app",
            "create",
            "--name",
            "Narrow",
            "--vendor",
            "T",
            "--scope",
            "subscribe:fhir.encounter.>",
        ],
    );
    for app in [&feeder, &reader, &narrow] {
        cli_json(&url, data.path(), &["app", "activate", &client_of(app).0]);
    }

    let (rid, rsecret) = client_of(&reader);
    let all_client = ConnectOptions::new()
        .token_source(TokenSource::client_secret(&url, &rid, &rsecret))
        .connect(&url)
        .await
        .unwrap();
    let mut all = all_client.subscribe("fhir.>").await.unwrap();
    let mut encounters = all_client.subscribe("fhir.encounter.>").await.unwrap();
    let (nid, nsecret) = client_of(&narrow);
    let narrow_client = ConnectOptions::new()
        .token_source(TokenSource::client_secret(&url, &nid, &nsecret))
        .connect(&url)
        .await
        .unwrap();
    match narrow_client.subscribe("fhir.>").await {
        Err(SubscribeError::Forbidden { required_scope }) => {
            assert_eq!(required_scope, "subscribe:fhir.>")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }

    let (fid, fsecret) = client_of(&feeder);
    let run_replay = || {
        let replay = Command::new(BIN)
            .args(["replay", "--fhir-bulk"])
            .arg(&dir)
            .args([
                "--url",
                &url,
                "--client-id",
                &fid,
                "--client-secret",
                &fsecret,
            ])
            .output()
            .unwrap();
        assert!(
            replay.status.success(),
            "{}",
            String::from_utf8_lossy(&replay.stderr)
        );
        String::from_utf8_lossy(&replay.stdout).into_owned()
    };
    let summary = run_replay();
    assert!(
        summary.contains(&format!("published {total} events in"))
            && summary.contains(&format!("{total} new, 0 duplicates")),
        "{summary}"
    );
    // A second run publishes nothing twice, says so, and is not slowed by the publish rate
    // (a duplicate gives its rate token back).
    let again = run_replay();
    assert!(
        again.contains(&format!("0 new, {total} duplicates already stored")),
        "{again}"
    );

    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let mut last: Option<OffsetDateTime> = None;
    let mut seqs = std::collections::BTreeSet::new();
    for _ in 0..total {
        let Item::Event(e) = tokio::time::timeout(Duration::from_secs(30), all.next())
            .await
            .unwrap()
            .unwrap()
        else {
            panic!("gap")
        };
        assert!(seqs.insert(e.seq), "event {} twice", e.seq);
        let r: Value = e.data.parse().unwrap();
        let t = expected_times(&r)
            .into_iter()
            .find(|(topic, _)| *topic == e.topic.as_str())
            .unwrap()
            .1;
        if let Some(prev) = last {
            assert!(t >= prev, "{} at {t} after {prev}", e.topic);
        }
        last = Some(t);
        *got.entry(e.topic.to_string()).or_default() += 1;
    }
    let expected_named: BTreeMap<String, usize> =
        expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(got, expected_named, "every mapped event exactly once");

    let want_encounters = expected["fhir.encounter.started"] + expected["fhir.encounter.finished"];
    for _ in 0..want_encounters {
        let Item::Event(e) = tokio::time::timeout(Duration::from_secs(30), encounters.next())
            .await
            .unwrap()
            .unwrap()
        else {
            panic!("gap")
        };
        assert!(e.topic.as_str().starts_with("fhir.encounter."));
    }
    drop(served);
}

/// The full export when at hand, else the three patients kept in `tests/data`.
fn export_or_subset() -> PathBuf {
    export().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fhir-bulk-3-patients")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fhir_subscription_with_a_patient_filter_gets_exactly_that_patients_encounters() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = export_or_subset();
    // The patient with the most started encounters, and their ids, from the files.
    let mut per_patient: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in
        BufReader::new(std::fs::File::open(dir.join("Encounter.000.ndjson")).unwrap()).lines()
    {
        let r: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if when(&r["period"]["start"]).is_some() {
            per_patient
                .entry(r["subject"]["reference"].as_str().unwrap().to_owned())
                .or_default()
                .push(r["id"].as_str().unwrap().to_owned());
        }
    }
    let (patient, mut expected) = per_patient
        .into_iter()
        .max_by_key(|(_, ids)| ids.len())
        .unwrap();
    expected.sort();

    let data = tempfile::tempdir().unwrap();
    let served = support::serve(data.path(), "memory");
    let url = served.url.clone();
    let create = |name: &str, scope: &str| {
        let app = cli_json(
            &url,
            data.path(),
            &[
                "app", "create", "--name", name, "--vendor", "T", "--scope", scope,
            ],
        );
        let np = &app["clients"]["non_production"];
        let id = np["client_id"].as_str().unwrap().to_owned();
        cli_json(&url, data.path(), &["app", "activate", &id]);
        (id, np["client_secret"].as_str().unwrap().to_owned())
    };
    let (fid, fsecret) = create("Feeder", "publish:fhir.>");
    let (rid, rsecret) = create("Board", "subscribe:fhir.encounter.>");
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{url}/oauth2/token"))
        .basic_auth(&rid, Some(&rsecret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let sub = serde_json::json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "one patient's encounters",
        "criteria": "http://argonautproject.org/encounters-ig/SubscriptionTopic/encounter-start",
        "_criteria": {"extension": [{
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
            "valueString": format!("Encounter?patient={patient}"),
        }]},
        "channel": {"type": "websocket", "payload": "application/fhir+json"},
    });
    let created: Value = http
        .post(format!("{url}/fhir/Subscription"))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(sub.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let binding: Value = http
        .get(format!(
            "{url}/fhir/Subscription/{id}/$get-ws-binding-token"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let param = |name: &str, key: &str| -> String {
        binding["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()[key]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(param("websocket-url", "valueUrl"))
        .await
        .unwrap();
    ws.send(Message::Text(
        format!("bind-with-token {}", param("token", "valueString")).into(),
    ))
    .await
    .unwrap();
    let handshake = next_json(&mut ws).await.unwrap();
    assert_eq!(handshake["entry"][0]["resource"]["type"], "handshake");

    let replay_dir = dir.clone();
    let replay = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["replay", "--fhir-bulk"])
            .arg(&replay_dir)
            .args([
                "--url",
                &url,
                "--client-id",
                &fid,
                "--client-secret",
                &fsecret,
            ])
            .output()
            .unwrap()
    });
    let mut got = Vec::new();
    for n in 1..=expected.len() {
        let b = next_json(&mut ws)
            .await
            .unwrap_or_else(|| panic!("notification {n} of {}", expected.len()));
        let st = &b["entry"][0]["resource"];
        assert_eq!(st["type"], "event-notification");
        assert_eq!(
            st["notificationEvent"][0]["eventNumber"],
            n.to_string(),
            "numbered 1..n without a gap"
        );
        let focus = st["notificationEvent"][0]["focus"]["reference"]
            .as_str()
            .unwrap();
        got.push(focus.rsplit('/').next().unwrap().to_owned());
    }
    let out = replay.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing else: no other patient's encounter, no duplicate.
    let more = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
    assert!(more.is_err(), "{more:?}");
    got.sort();
    assert_eq!(got, expected, "exactly {patient}'s encounters");
}

/// The next text message as JSON, within 30 s.
async fn next_json<S>(ws: &mut S) -> Option<Value>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
            Some(serde_json::from_str(&t).unwrap())
        }
        _ => None,
    }
}
