//! FHIR Subscriptions (issue 18, FHIR.md): R4B topic-based Subscriptions over the websocket
//! channel, end to end against a real broker, with every resource the broker sent validated
//! at the end of each test by `fhir.resources` (R4B) and `fhirpathpy`
//! (`tests/python/fhir_validate.py`; `.ci/run` installs them).

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use reqwest::Method;
use scopecast_broker::LogMode;
use scopecast_tests::fhir::{
    ENCOUNTER_END, ENCOUNTER_START, FhirClient, FhirSocket, Seen, encounter, parameter, status_of,
    subscription, validate,
};
use scopecast_tests::{TestBroker, test_config};
use serde_json::{Value, json};

/// A broker with an active reader (`subscribe:fhir.encounter.>`) and publisher.
struct Setup {
    broker: TestBroker,
    reader: scopecast_tests::TestClient,
    fhir: FhirClient,
    publisher: String,
    seen: Seen,
}

async fn setup(config: scopecast_broker::Config, reader_scope: &str) -> Setup {
    let broker = TestBroker::start(config).await;
    let reader = broker.active_client("FHIR reader", reader_scope).await;
    let token = broker.token(&reader, None).await;
    let feeder = broker.active_client("Feeder", "publish:fhir.>").await;
    let publisher = broker.token(&feeder, None).await;
    let seen = Seen::default();
    let fhir = FhirClient::new(broker.http_client(), &broker.base_url(), &token, &seen);
    Setup {
        broker,
        reader,
        fhir,
        publisher,
        seen,
    }
}

impl Setup {
    async fn publish(&self, topic: &str, data: &Value) {
        let a = self.broker.publish_http(&self.publisher, topic, data).await;
        assert!(
            a.status == 200 || a.status == 201 || a.status == 202,
            "{a:?}"
        );
    }

    /// An id-only websocket Subscription to one patient's encounter starts: its id.
    async fn encounters_of(&self, patient: &str) -> String {
        self.fhir
            .create(&subscription(
                ENCOUNTER_START,
                Some(&format!("Encounter?patient=Patient/{patient}")),
                "id-only",
                None,
            ))
            .await
    }

    /// Waits until `$status` of Subscription `id` counts `count` events.
    async fn wait_count(&self, id: &str, count: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = self.fhir.get(&format!("/Subscription/{id}/$status")).await;
            if status_of(&st.body)["eventsSinceSubscriptionStart"] == count {
                return;
            }
            assert!(Instant::now() < deadline, "{}", st.body);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn socket(&self) -> FhirSocket {
        FhirSocket::connect(&self.broker.ws_url("/fhir/ws"), &self.seen).await
    }
}

#[tokio::test]
async fn metadata_and_the_topic_catalogue() {
    let s = setup(test_config(), "subscribe:fhir.encounter.>").await;
    let m = s.fhir.get("/metadata").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), Some("application/fhir+json"));
    assert_eq!(m.body["resourceType"], "CapabilityStatement");
    assert_eq!(m.body["fhirVersion"], "4.3.0");
    let ops: Vec<&str> = m.body["rest"][0]["resource"][0]["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["status", "events", "get-ws-binding-token"]);

    let topics = s.fhir.get("/SubscriptionTopic").await;
    assert_eq!(topics.body["type"], "searchset");
    let urls: Vec<&str> = topics.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["url"].as_str().unwrap())
        .collect();
    for canonical in [
        ENCOUNTER_START,
        ENCOUNTER_END,
        "http://hl7.org/SubscriptionTopic/admission",
        "https://scopecast.dev/fhir/SubscriptionTopic/condition-recorded",
    ] {
        assert!(urls.contains(&canonical), "{canonical} in {urls:?}");
    }
    let one = s.fhir.get("/SubscriptionTopic/encounter-start").await;
    assert_eq!(one.body["canFilterBy"][0]["filterParameter"], "patient");
    assert_eq!(s.fhir.get("/SubscriptionTopic/nope").await.status, 404);
    assert_eq!(
        s.fhir.get("/Patient/1").await.body["resourceType"],
        "OperationOutcome"
    );
    assert!(validate(&s.seen) >= 4);
}

#[tokio::test]
async fn creation_is_checked_and_refusals_are_operation_outcomes() {
    let s = setup(
        test_config(),
        "subscribe:fhir.encounter.> subscribe:fhir.condition.> system/Encounter.rs",
    )
    .await;
    // Out of scope: a token for conditions only.
    let narrow = s
        .broker
        .token(&s.reader, Some("subscribe:fhir.condition.>"))
        .await;
    let a = s
        .fhir
        .with_token(&narrow)
        .call(
            Method::POST,
            "/Subscription",
            Some(&subscription(ENCOUNTER_START, None, "id-only", None)),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.body["resourceType"], "OperationOutcome");
    assert_eq!(a.body["issue"][0]["code"], "forbidden");
    let challenge = a.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"subscribe:fhir.encounter.started\""),
        "{challenge}"
    );
    // Nothing was stored.
    let mine = s.fhir.get("/Subscription").await;
    assert_eq!(mine.body["total"], 0);

    // An unsupported filter, and a modifier.
    for filter in [
        "Encounter?location=Location/1",
        "Encounter?patient:in=Group/1",
    ] {
        let a = s
            .fhir
            .call(
                Method::POST,
                "/Subscription",
                Some(&subscription(
                    ENCOUNTER_START,
                    Some(filter),
                    "id-only",
                    None,
                )),
            )
            .await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert_eq!(a.body["issue"][0]["code"], "not-supported", "{}", a.body);
    }
    // An unknown topic; another channel type.
    let mut email = subscription(ENCOUNTER_START, None, "id-only", None);
    email["channel"]["type"] = json!("email");
    for (sub, expression) in [
        (
            subscription(
                "http://example.org/SubscriptionTopic/x",
                None,
                "id-only",
                None,
            ),
            "Subscription.criteria",
        ),
        (email, "Subscription.channel.type"),
    ] {
        let a = s.fhir.call(Method::POST, "/Subscription", Some(&sub)).await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert_eq!(a.body["issue"][0]["code"], "not-supported");
        assert_eq!(a.body["issue"][0]["expression"][0], expression);
    }
    // full-resource needs a SMART resource scope in the token...
    let no_read = s
        .broker
        .token(&s.reader, Some("subscribe:fhir.encounter.>"))
        .await;
    let a = s
        .fhir
        .with_token(&no_read)
        .call(
            Method::POST,
            "/Subscription",
            Some(&subscription(ENCOUNTER_START, None, "full-resource", None)),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.header("www-authenticate")
            .unwrap()
            .contains("scope=\"system/Encounter.rs\""),
        "{:?}",
        a.headers
    );
    // ...and a broker whose public URL is https.
    let a = s
        .fhir
        .call(
            Method::POST,
            "/Subscription",
            Some(&subscription(ENCOUNTER_START, None, "full-resource", None)),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["issue"][0]["code"], "not-supported");
    assert!(
        a.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("https")
    );
    // No token at all.
    let anon = s.fhir.with_token("").get("/Subscription").await;
    assert_eq!(anon.status, 401);
    assert_eq!(anon.body["resourceType"], "OperationOutcome");
    assert!(
        anon.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );

    // In scope: created, readable, searchable, updatable, deletable.
    let id = s.encounters_of("123").await;
    let read = s.fhir.get(&format!("/Subscription/{id}")).await;
    assert_eq!(read.body["status"], "active");
    assert_eq!(read.body["id"], id.as_str());
    let mut changed = read.body.clone();
    changed["criteria"] = json!(ENCOUNTER_END);
    let a = s
        .fhir
        .call(Method::PUT, &format!("/Subscription/{id}"), Some(&changed))
        .await;
    assert_eq!(a.status, 400, "the topic cannot change: {}", a.body);
    let mut off = read.body.clone();
    off["status"] = json!("off");
    let a = s
        .fhir
        .call(Method::PUT, &format!("/Subscription/{id}"), Some(&off))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], "off");
    let a = s
        .fhir
        .get(&format!("/Subscription/{id}/$get-ws-binding-token"))
        .await;
    assert_eq!(
        a.status, 400,
        "an off Subscription is not bound: {}",
        a.body
    );
    let a = s
        .fhir
        .call(Method::DELETE, &format!("/Subscription/{id}"), None)
        .await;
    assert_eq!(a.status, 204);
    assert_eq!(s.fhir.get(&format!("/Subscription/{id}")).await.status, 404);
    assert!(validate(&s.seen) >= 10);
}

#[tokio::test]
async fn binding_tokens_belong_to_their_client_and_bind_once() {
    let s = setup(test_config(), "subscribe:fhir.encounter.>").await;
    let id = s
        .fhir
        .create(&subscription(ENCOUNTER_START, None, "id-only", None))
        .await;
    let a = s
        .fhir
        .get(&format!("/Subscription/{id}/$get-ws-binding-token"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["resourceType"], "Parameters");
    let url = parameter(&a.body, "websocket-url").unwrap()["valueUrl"]
        .as_str()
        .unwrap();
    assert_eq!(url, s.broker.ws_url("/fhir/ws"));
    let expiration = parameter(&a.body, "expiration").unwrap()["valueDateTime"]
        .as_str()
        .unwrap();
    let exp =
        time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let left = exp - time::OffsetDateTime::now_utc();
    assert!(
        left <= time::Duration::seconds(61) && left > time::Duration::ZERO,
        "{left}"
    );

    // Another application cannot see or bind it.
    let other = s
        .broker
        .active_client("Other", "subscribe:fhir.encounter.>")
        .await;
    let other_token = s.broker.token(&other, None).await;
    let stranger = s.fhir.with_token(&other_token);
    assert_eq!(
        stranger
            .get(&format!("/Subscription/{id}/$get-ws-binding-token"))
            .await
            .status,
        404
    );
    assert_eq!(
        stranger.get(&format!("/Subscription/{id}")).await.status,
        404
    );
    // An inactive client gets no token.
    let other_id = stranger
        .create(&subscription(ENCOUNTER_START, None, "id-only", None))
        .await;
    s.broker.deactivate(&other.client_id).await;
    let a = stranger
        .get(&format!("/Subscription/{other_id}/$get-ws-binding-token"))
        .await;
    assert!(a.status == 401 || a.status == 403, "{a:?}");
    assert_eq!(a.body["resourceType"], "OperationOutcome");

    // Text bind: one handshake; the token binds once.
    let token = s.fhir.binding_token(&id).await;
    let mut ws = s.socket().await;
    ws.send(&format!("bind-with-token {token}")).await;
    let hs = ws.recv().await;
    assert_eq!(hs["type"], "history");
    let st = status_of(&hs);
    assert_eq!(st["type"], "handshake");
    assert_eq!(st["eventsSinceSubscriptionStart"], "0");
    assert!(
        hs["entry"][0]["request"]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("Subscription/{id}/$status"))
    );
    let mut again = s.socket().await;
    again.send(&format!("bind-with-token {token}")).await;
    let refused = again.recv().await;
    assert_eq!(refused["resourceType"], "OperationOutcome");
    assert_eq!(refused["issue"][0]["code"], "security");
    // Garbage: an OperationOutcome, and the socket stays open.
    again.send("hello?").await;
    assert_eq!(again.recv().await["issue"][0]["code"], "invalid");
    again.send("bind-with-token not-a-token").await;
    assert_eq!(again.recv().await["issue"][0]["code"], "security");
    again.send("ping").await;
    assert_eq!(again.recv().await, json!("pong"));
    again.send(r#"{"type":"ping"}"#).await;
    assert_eq!(again.recv().await, json!({"type": "pong"}));
    assert!(validate(&s.seen) >= 5);
}

#[tokio::test]
async fn an_expired_binding_token_is_refused() {
    let mut config = test_config();
    // Access tokens of 5 s: a binding token never outlives the access token it came from.
    config.oauth.token_lifetime_s = 5;
    let s = setup(config, "subscribe:fhir.encounter.>").await;
    let id = s
        .fhir
        .create(&subscription(ENCOUNTER_START, None, "id-only", None))
        .await;
    let token = s.fhir.binding_token(&id).await;
    tokio::time::sleep(Duration::from_millis(6_100)).await;
    let mut ws = s.socket().await;
    ws.send(&json!({"type": "bind-with-token", "payload": {"token": token}}).to_string())
        .await;
    let refused = ws.recv().await;
    assert_eq!(refused["issue"][0]["code"], "expired", "{refused}");
    validate(&s.seen);
}

#[tokio::test]
async fn notifications_are_numbered_filtered_and_the_gap_filled_with_events() {
    let s = setup(test_config(), "subscribe:fhir.encounter.>").await;
    let started = s.encounters_of("123").await;
    let ended = s
        .fhir
        .create(&subscription(ENCOUNTER_END, None, "empty", None))
        .await;
    let mut ws = s.socket().await;
    // Text bind for one, JSON bind for the other: two handshakes on one socket.
    let t1 = s.fhir.binding_token(&started).await;
    ws.send(&format!("bind-with-token {t1}")).await;
    assert_eq!(status_of(&ws.recv().await)["type"], "handshake");
    let t2 = s.fhir.binding_token(&ended).await;
    ws.send(&json!({"type": "bind-with-token", "payload": {"token": t2}}).to_string())
        .await;
    let hs = ws.recv().await;
    assert_eq!(status_of(&hs)["type"], "handshake");
    assert!(status_of(&hs).get("topic").is_none(), "empty: no topic");

    // A matching encounter: event number 1, focus Encounter/e1, no resource (id-only).
    s.publish("fhir.encounter.started", &encounter("e1", "123"))
        .await;
    let n = ws.recv().await;
    let st = status_of(&n);
    assert_eq!(st["type"], "event-notification");
    assert_eq!(st["eventsSinceSubscriptionStart"], "1");
    assert_eq!(st["notificationEvent"][0]["eventNumber"], "1");
    let focus = st["notificationEvent"][0]["focus"]["reference"]
        .as_str()
        .unwrap();
    assert!(focus.ends_with("/fhir/Encounter/e1"), "{focus}");
    assert_eq!(n["entry"][1]["fullUrl"], focus);
    assert!(n["entry"][1].get("resource").is_none());
    // Another patient: nothing, and the count does not move.
    s.publish("fhir.encounter.started", &encounter("e2", "999"))
        .await;
    assert!(ws.recv_within(Duration::from_millis(1500)).await.is_none());
    // The other Subscription on the same socket.
    s.publish("fhir.encounter.finished", &encounter("e1", "123"))
        .await;
    let n = ws.recv().await;
    assert_eq!(
        status_of(&n)["subscription"]["reference"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next(),
        Some(ended.as_str())
    );
    assert_eq!(
        n["entry"].as_array().unwrap().len(),
        1,
        "empty: the status only"
    );
    s.publish("fhir.encounter.started", &encounter("e3", "123"))
        .await;
    assert_eq!(
        status_of(&ws.recv().await)["notificationEvent"][0]["eventNumber"],
        "2"
    );

    // Away: three more are published; the counters say what was missed, $events fills it.
    drop(ws);
    for i in 4..=6 {
        s.publish(
            "fhir.encounter.started",
            &encounter(&format!("e{i}"), "123"),
        )
        .await;
    }
    s.publish("fhir.encounter.started", &encounter("x", "999"))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = s
            .fhir
            .get(&format!("/Subscription/{started}/$status"))
            .await;
        let status = status_of(&st.body);
        assert_eq!(status["type"], "query-status");
        if status["eventsSinceSubscriptionStart"] == "5" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", st.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ev = s
        .fhir
        .get(&format!(
            "/Subscription/{started}/$events?eventsSinceNumber=3&eventsUntilNumber=5"
        ))
        .await;
    assert_eq!(ev.status, 200, "{}", ev.body);
    let st = status_of(&ev.body);
    assert_eq!(st["type"], "query-event");
    let numbers: Vec<&str> = st["notificationEvent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventNumber"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["3", "4", "5"]);
    let ids: Vec<&str> = ev.body["entry"].as_array().unwrap()[1..]
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(ids, ["e4", "e5", "e6"]);
    // All of them, from the start; and a bad number.
    let all = s
        .fhir
        .get(&format!("/Subscription/{started}/$events"))
        .await;
    assert_eq!(
        status_of(&all.body)["notificationEvent"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let bad = s
        .fhir
        .get(&format!(
            "/Subscription/{started}/$events?eventsSinceNumber=two"
        ))
        .await;
    assert_eq!(bad.status, 400);
    // The same through POST with Parameters.
    let post = s
        .fhir
        .call(
            Method::POST,
            &format!("/Subscription/{started}/$events"),
            Some(&json!({"resourceType": "Parameters", "parameter": [
                {"name": "eventsSinceNumber", "valueString": "5"}
            ]})),
        )
        .await;
    assert_eq!(
        status_of(&post.body)["notificationEvent"][0]["eventNumber"],
        "5"
    );
    // Back: a new socket and a new token; the handshake says 5, the next event is 6.
    let mut ws = s.socket().await;
    ws.send(&format!(
        "bind-with-token {}",
        s.fhir.binding_token(&started).await
    ))
    .await;
    assert_eq!(
        status_of(&ws.recv().await)["eventsSinceSubscriptionStart"],
        "5"
    );
    s.publish("fhir.encounter.started", &encounter("e7", "123"))
        .await;
    assert_eq!(
        status_of(&ws.recv().await)["notificationEvent"][0]["eventNumber"],
        "6"
    );
    let delivered = s.broker.metrics().await;
    assert!(
        delivered.contains("scopecast_fhir_notifications_total{")
            && delivered.contains("scopecast_fhir_subscriptions{"),
        "{delivered}"
    );
    assert!(validate(&s.seen) >= 12);
}

#[tokio::test]
async fn heartbeats_keep_the_count_and_deactivation_ends_deliveries() {
    let s = setup(test_config(), "subscribe:fhir.encounter.>").await;
    let id = s
        .fhir
        .create(&subscription(ENCOUNTER_START, None, "id-only", Some(1)))
        .await;
    s.publish("fhir.encounter.started", &encounter("e1", "1"))
        .await;
    // Counted (the numbering follows the log a moment after the publisher's answer).
    s.wait_count(&id, "1").await;
    let mut ws = s.socket().await;
    ws.send(&format!(
        "bind-with-token {}",
        s.fhir.binding_token(&id).await
    ))
    .await;
    let hs = ws.recv().await;
    assert_eq!(status_of(&hs)["eventsSinceSubscriptionStart"], "1");
    let mut beats = Vec::new();
    while beats.len() < 3 {
        let b = ws.recv().await;
        assert_eq!(status_of(&b)["type"], "heartbeat", "{b}");
        assert_eq!(status_of(&b)["eventsSinceSubscriptionStart"], "1");
        beats.push(Instant::now());
    }
    let gap = beats[2] - beats[1];
    assert!(
        gap >= Duration::from_millis(500) && gap <= Duration::from_millis(2500),
        "heartbeats about every second: {gap:?}"
    );

    // Deactivation mid-stream: an OperationOutcome within a second, nothing after it.
    let at = Instant::now();
    s.broker.deactivate(&s.reader.client_id).await;
    let told = loop {
        let m = ws.recv().await;
        if m["resourceType"] == "OperationOutcome" {
            break m;
        }
    };
    assert!(at.elapsed() < Duration::from_secs(1), "{:?}", at.elapsed());
    assert_eq!(told["issue"][0]["code"], "forbidden");
    s.publish("fhir.encounter.started", &encounter("e2", "1"))
        .await;
    while let Some(m) = ws.recv_within(Duration::from_millis(1500)).await {
        assert_ne!(status_of(&m)["type"], "event-notification", "{m}");
    }
    // Active again: the Subscription stayed off, with its error, until the client starts it.
    s.broker.activate(&s.reader.client_id).await;
    let token = s.broker.token(&s.reader, None).await;
    let fhir = s.fhir.with_token(&token);
    let read = fhir.get(&format!("/Subscription/{id}")).await;
    assert_eq!(read.body["status"], "off", "{}", read.body);
    assert!(read.body["error"].as_str().unwrap().contains("not active"));
    let st = fhir.get(&format!("/Subscription/{id}/$status")).await;
    assert_eq!(status_of(&st.body)["status"], "off");
    assert_eq!(
        status_of(&st.body)["eventsSinceSubscriptionStart"],
        "2",
        "counting went on"
    );
    let mut on = read.body.clone();
    on["status"] = json!("requested");
    let a = fhir
        .call(Method::PUT, &format!("/Subscription/{id}"), Some(&on))
        .await;
    assert_eq!(a.body["status"], "active", "{}", a.body);
    assert_eq!(
        fhir.get(&format!("/Subscription/{id}/$get-ws-binding-token"))
            .await
            .status,
        200
    );
    assert!(validate(&s.seen) >= 8);
}

#[tokio::test]
async fn a_restart_keeps_the_numbers() {
    let mut config = test_config();
    config.log = LogMode::Durable;
    let mut s = setup(config, "subscribe:fhir.encounter.>").await;
    let id = s.encounters_of("7").await;
    for (i, p) in [(1, "7"), (2, "8"), (3, "7"), (4, "7")] {
        s.publish("fhir.encounter.started", &encounter(&format!("e{i}"), p))
            .await;
    }
    // Straight away: the numbers are recomputed from the log and the last checkpoint.
    s.broker.restart().await;
    let reader = s.broker.token(&s.reader, None).await;
    let feeder_token = {
        let feeder = s.broker.active_client("Feeder 2", "publish:fhir.>").await;
        s.broker.token(&feeder, None).await
    };
    s.publisher = feeder_token;
    s.fhir = FhirClient::new(
        s.broker.http_client(),
        &s.broker.base_url(),
        &reader,
        &s.seen,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = s.fhir.get(&format!("/Subscription/{id}/$status")).await;
        if status_of(&st.body)["eventsSinceSubscriptionStart"] == "3" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", st.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ws = s.socket().await;
    ws.send(&format!(
        "bind-with-token {}",
        s.fhir.binding_token(&id).await
    ))
    .await;
    assert_eq!(
        status_of(&ws.recv().await)["eventsSinceSubscriptionStart"],
        "3"
    );
    s.publish("fhir.encounter.started", &encounter("e5", "7"))
        .await;
    let n = ws.recv().await;
    assert_eq!(status_of(&n)["notificationEvent"][0]["eventNumber"], "4");
    let ev = s.fhir.get(&format!("/Subscription/{id}/$events")).await;
    let ids: Vec<&str> = ev.body["entry"].as_array().unwrap()[1..]
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(ids, ["e1", "e3", "e4", "e5"]);
    validate(&s.seen);
}

#[tokio::test]
async fn rest_hook_notifications_are_signed_webhooks_after_a_handshake() {
    use scopecast_tests::receiver::Receiver;
    let mut config = test_config();
    // The receiver is on loopback, over http: allowed for the test only.
    config.webhooks.allow_private = vec!["127.0.0.1/32".into()];
    config.webhooks.allow_http = true;
    config.webhooks.retry_schedule_ms = vec![0, 100, 100];
    let s = setup(config, "subscribe:fhir.encounter.>").await;
    let receiver = Receiver::start();
    // The first handshake fails.
    receiver.plan(json!([{"status": 500}])).await;
    let mut sub = subscription(
        ENCOUNTER_START,
        Some("Encounter?patient=Patient/42"),
        "id-only",
        None,
    );
    sub["channel"] = json!({
        "type": "rest-hook",
        "endpoint": receiver.url("/fhir-hook"),
        "payload": "application/fhir+json",
        "header": ["X-Api-Key: k-123"],
        "_payload": {"extension": [{"url": scopecast_tests::fhir::CONTENT, "valueCode": "id-only"}]},
    });
    let a = s.fhir.call(Method::POST, "/Subscription", Some(&sub)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["status"], "requested");
    let id = a.body["id"].as_str().unwrap().to_owned();
    let secret = a.body["channel"]["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["url"]
                .as_str()
                .unwrap()
                .ends_with("webhook-signing-secret")
        })
        .unwrap()["valueString"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    let read = s.fhir.get(&format!("/Subscription/{id}")).await;
    assert!(
        !read.body.to_string().contains(&secret),
        "the secret is shown once"
    );
    assert_eq!(
        read.body["channel"]["header"],
        json!(["X-Api-Key: [sealed]"]),
        "header values are kept sealed with the endpoint"
    );
    // Its endpoint is changed through the Subscription only.
    let endpoints = s.broker.admin(Method::GET, "/webhooks", None).await;
    let endpoint = endpoints.body["webhooks"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (method, path) in [
        (Method::DELETE, format!("/webhooks/{endpoint}")),
        (Method::POST, format!("/webhooks/{endpoint}/resume")),
    ] {
        let a = s.broker.admin(method, &path, Some(json!({}))).await;
        assert_eq!(a.status, 409, "{path}: {:?}", a.body);
    }
    let wait_status = |want: &'static str| {
        let fhir = s.fhir.clone();
        let id = id.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = fhir.get(&format!("/Subscription/{id}")).await;
                if r.body["status"] == want {
                    return r.body;
                }
                assert!(Instant::now() < deadline, "waiting for {want}: {}", r.body);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let failed = wait_status("error").await;
    assert!(
        failed["error"].as_str().unwrap().contains("500"),
        "{failed}"
    );
    // Started again, with the secret known to the receiver: the handshake passes.
    receiver.secrets(&[&secret]).await;
    let mut again = failed.clone();
    again["status"] = json!("requested");
    let a = s
        .fhir
        .call(Method::PUT, &format!("/Subscription/{id}"), Some(&again))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    wait_status("active").await;

    s.publish("fhir.encounter.started", &encounter("e1", "42"))
        .await;
    s.publish("fhir.encounter.started", &encounter("e2", "7"))
        .await;
    s.publish("fhir.encounter.started", &encounter("e3", "42"))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (log, _) = receiver.log().await;
        if log.len() >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "{log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (log, _) = receiver.log().await;
    assert_eq!(
        log.len(),
        4,
        "two handshakes and two notifications: {log:?}"
    );
    let mut numbers = Vec::new();
    for (i, r) in log.iter().enumerate() {
        assert_eq!(r.content_type, "application/fhir+json");
        assert_eq!(r.api_key, "k-123", "each channel.header is sent");
        let bundle: Value = serde_json::from_str(&r.body).unwrap();
        s.seen.lock().push(bundle.clone());
        let st = status_of(&bundle);
        if i < 2 {
            assert_eq!(st["type"], "handshake");
            assert_eq!(st["status"], "requested");
            continue;
        }
        assert_eq!(r.verified_by, vec![0], "standardwebhooks verifies it");
        assert!(r.tampered_rejected);
        assert_eq!(st["type"], "event-notification");
        numbers.push(
            st["notificationEvent"][0]["eventNumber"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        log[1].verified_by,
        vec![0],
        "the second handshake is signed"
    );
    assert_eq!(numbers, ["1", "2"]);
    let st = s.fhir.get(&format!("/Subscription/{id}/$status")).await;
    assert_eq!(status_of(&st.body)["status"], "active");
    assert_eq!(status_of(&st.body)["eventsSinceSubscriptionStart"], "2");

    // Deactivated: nothing more goes out.
    s.broker.deactivate(&s.reader.client_id).await;
    s.publish("fhir.encounter.started", &encounter("e4", "42"))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.log().await.0.len(), 4);
    // Deleted with its endpoint.
    s.broker.activate(&s.reader.client_id).await;
    let token = s.broker.token(&s.reader, None).await;
    let fhir = s.fhir.with_token(&token);
    assert_eq!(
        fhir.get(&format!("/Subscription/{id}")).await.body["status"],
        "off"
    );
    let gone = fhir
        .call(Method::DELETE, &format!("/Subscription/{id}"), None)
        .await;
    assert_eq!(gone.status, 204);
    let list = s.broker.admin(Method::GET, "/webhooks", None).await;
    assert_eq!(
        list.body["webhooks"].as_array().unwrap().len(),
        0,
        "{}",
        list.body
    );
    assert!(validate(&s.seen) >= 6);
}

#[tokio::test]
async fn full_resource_carries_the_published_bytes_behind_https() {
    let mut config = test_config();
    // TLS ends at a load balancer: the public URL is https, the broker serves http behind it.
    config.oauth.public_url = Some("https://events.hospital.test".to_owned());
    let s = setup(config, "subscribe:fhir.encounter.> system/Encounter.rs").await;
    let id = s
        .fhir
        .create(&subscription(ENCOUNTER_START, None, "full-resource", None))
        .await;
    let binding = s
        .fhir
        .get(&format!("/Subscription/{id}/$get-ws-binding-token"))
        .await;
    assert_eq!(
        parameter(&binding.body, "websocket-url").unwrap()["valueUrl"],
        "wss://events.hospital.test/fhir/ws"
    );
    let token = parameter(&binding.body, "token").unwrap()["valueString"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = s.socket().await;
    ws.send(&format!("bind-with-token {token}")).await;
    assert_eq!(status_of(&ws.recv().await)["type"], "handshake");
    // A decimal with a trailing zero and a key order of its own: kept byte for byte.
    let published = r#"{"resourceType":"Encounter","status":"in-progress","id":"e-raw","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"IMP"},"subject":{"reference":"Patient/9"},"length":{"value":1.50,"unit":"h"}}"#;
    let raw = s
        .broker
        .http_client()
        .post(s.broker.http_url("/v1/events/fhir.encounter.started"))
        .bearer_auth(&s.publisher)
        .header("content-type", "application/fhir+json")
        .body(published)
        .send()
        .await
        .unwrap();
    assert!(raw.status().is_success());
    // Read the frame as text, to compare bytes.
    let n = ws.recv().await;
    let text = n.to_string();
    assert_eq!(n["entry"][1]["resource"]["id"], "e-raw");
    assert_eq!(
        n["entry"][1]["fullUrl"],
        "https://events.hospital.test/fhir/Encounter/e-raw"
    );
    assert_eq!(
        status_of(&n)["notificationEvent"][0]["focus"]["reference"],
        n["entry"][1]["fullUrl"]
    );
    assert!(status_of(&n)["topic"].is_string(), "{text}");
    // `$events` gives the resource back exactly as published.
    let ev = s
        .broker
        .http_client()
        .get(
            s.broker
                .http_url(&format!("/fhir/Subscription/{id}/$events")),
        )
        .bearer_auth(s.broker.token(&s.reader, None).await)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ev.contains(published), "{ev}");
    // A token without the resource scope may neither bind it nor ask $events for full
    // resources.
    let narrow = s
        .broker
        .token(&s.reader, Some("subscribe:fhir.encounter.>"))
        .await;
    let a = s
        .fhir
        .with_token(&narrow)
        .get(&format!("/Subscription/{id}/$events?content=full-resource"))
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = s
        .fhir
        .with_token(&narrow)
        .get(&format!("/Subscription/{id}/$get-ws-binding-token"))
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.header("www-authenticate")
            .unwrap()
            .contains("system/Encounter.rs")
    );
    assert!(validate(&s.seen) >= 3);
}

#[tokio::test]
async fn a_narrowed_ceiling_turns_the_subscription_off() {
    let s = setup(test_config(), "subscribe:fhir.encounter.>").await;
    let app = s
        .broker
        .create_app("Narrowed", "subscribe:fhir.encounter.> subscribe:lab.>")
        .await;
    s.broker.activate(&app.non_production.client_id).await;
    let token = s.broker.token(&app.non_production, None).await;
    let fhir = s.fhir.with_token(&token);
    let id = fhir
        .create(&subscription(ENCOUNTER_START, None, "empty", None))
        .await;
    let mut ws = s.socket().await;
    ws.send(&format!(
        "bind-with-token {}",
        fhir.binding_token(&id).await
    ))
    .await;
    assert_eq!(status_of(&ws.recv().await)["type"], "handshake");
    let at = Instant::now();
    let a = s
        .broker
        .admin(
            Method::PATCH,
            &format!("/applications/{}", app.id),
            Some(json!({"scope": "subscribe:lab.>"})),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let told = ws.recv().await;
    assert!(at.elapsed() < Duration::from_secs(1), "{:?}", at.elapsed());
    assert_eq!(told["issue"][0]["code"], "forbidden");
    assert!(
        told["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("subscribe:fhir.encounter.started"),
        "{told}"
    );
    s.publish("fhir.encounter.started", &encounter("e1", "1"))
        .await;
    assert!(ws.recv_within(Duration::from_millis(1000)).await.is_none());
    let read = fhir.get(&format!("/Subscription/{id}")).await;
    assert_eq!(read.body["status"], "off", "{}", read.body);
    assert!(
        read.body["error"]
            .as_str()
            .unwrap()
            .contains("subscribe:fhir.encounter.started")
    );
    validate(&s.seen);
}

#[tokio::test]
async fn topics_from_the_configuration_join_the_catalogue() {
    let mut config = test_config();
    config.fhir.topics = vec![scopecast_protocol::fhir::topics::TopicDef {
        id: "lab-final".into(),
        canonical: "https://hospital.test/fhir/SubscriptionTopic/lab-final".into(),
        title: "Final lab result".into(),
        broker_topic: "lab.result.final".into(),
        resource_type: "Observation".into(),
        filters: vec![scopecast_protocol::fhir::topics::TopicFilter {
            name: "patient".into(),
            path: "subject".into(),
            kind: scopecast_protocol::fhir::topics::FilterKind::Reference,
        }],
    }];
    let s = setup(config, "subscribe:lab.>").await;
    let t = s.fhir.get("/SubscriptionTopic/lab-final").await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(
        t.body["url"],
        "https://hospital.test/fhir/SubscriptionTopic/lab-final"
    );
    let id = s
        .fhir
        .create(&subscription(
            "https://hospital.test/fhir/SubscriptionTopic/lab-final",
            Some("Observation?patient=Patient/3"),
            "id-only",
            None,
        ))
        .await;
    let mut ws = s.socket().await;
    ws.send(&format!(
        "bind-with-token {}",
        s.fhir.binding_token(&id).await
    ))
    .await;
    assert_eq!(status_of(&ws.recv().await)["type"], "handshake");
    let feeder = s.broker.active_client("Lab", "publish:lab.>").await;
    let lab = s.broker.token(&feeder, None).await;
    let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"text": "K"}, "subject": {"reference": "Patient/3"}});
    let a = s.broker.publish_http(&lab, "lab.result.final", &obs).await;
    assert!(a.status < 300, "{a:?}");
    let n = ws.recv().await;
    assert!(
        status_of(&n)["notificationEvent"][0]["focus"]["reference"]
            .as_str()
            .unwrap()
            .ends_with("/Observation/o1")
    );
    validate(&s.seen);
}

#[tokio::test]
async fn the_readme_python_client_prints_the_notifications() {
    use tokio::io::AsyncBufReadExt;
    let s = setup(test_config(), "subscribe:fhir.encounter.>").await;
    let id = s.encounters_of("123").await;
    let token = s.broker.token(&s.reader, None).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/fhir_ws_client.py"
    );
    let mut child = tokio::process::Command::new("python3")
        .args([script, &s.broker.base_url(), &token, &id, "3"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 (see .ci/run)");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(next_line(&mut lines).await, "handshake 0 []");
    s.publish("fhir.encounter.started", &encounter("e1", "123"))
        .await;
    s.publish("fhir.encounter.started", &encounter("e2", "9"))
        .await;
    s.publish("fhir.encounter.started", &encounter("e3", "123"))
        .await;
    let base = s.fhir.base.clone();
    assert_eq!(
        next_line(&mut lines).await,
        format!("event-notification 1 [('1', '{base}/Encounter/e1')]")
    );
    assert_eq!(
        next_line(&mut lines).await,
        format!("event-notification 2 [('2', '{base}/Encounter/e3')]")
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

/// The next line of a child's output, within 10 s.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line in time")
        .expect("reading the child's output")
        .unwrap_or_default()
}

#[tokio::test]
async fn a_rest_hook_backlog_is_numbered_alike_after_a_restart() {
    use scopecast_tests::receiver::Receiver;
    let mut config = test_config();
    config.log = LogMode::Durable;
    config.webhooks.allow_private = vec!["127.0.0.1/32".into()];
    config.webhooks.allow_http = true;
    // After a failure the next attempt waits a minute: the restart comes first.
    config.webhooks.retry_schedule_ms = vec![60_000, 60_000];
    let mut s = setup(config, "subscribe:fhir.encounter.>").await;
    let receiver = Receiver::start();
    let mut sub = subscription(ENCOUNTER_START, None, "id-only", None);
    sub["channel"]["type"] = json!("rest-hook");
    sub["channel"]["endpoint"] = json!(receiver.url("/hook"));
    let a = s.fhir.call(Method::POST, "/Subscription", Some(&sub)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.fhir.get(&format!("/Subscription/{id}")).await.body["status"] != "active" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first notification fails; three events wait behind it while the numbering counts
    // them and writes its checkpoint.
    receiver.plan(json!([{"status": 500}])).await;
    for i in 1..=3 {
        s.publish("fhir.encounter.started", &encounter(&format!("e{i}"), "1"))
            .await;
    }
    s.wait_count(&id, "3").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.broker.restart().await;
    // After the restart the numbers of the backlog are worked out again from the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let (log, _) = receiver.log().await;
        if log.len() >= 5 {
            break log;
        }
        assert!(Instant::now() < deadline, "{log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let numbers: Vec<String> = log[1..]
        .iter()
        .map(|r| {
            let b: Value = serde_json::from_str(&r.body).unwrap();
            status_of(&b)["notificationEvent"][0]["eventNumber"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // The failed attempt (1), then 1, 2, 3 once each.
    assert_eq!(numbers, ["1", "1", "2", "3"]);
}
