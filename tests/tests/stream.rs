//! The broker over real WebSockets: authentication, scope enforcement, fan-out, ordering,
//! refresh, expiry, deactivation, back-pressure, limits and shutdown.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use reqwest::Method;
use scopecast_tests::ws::{Ended, Ws};
use scopecast_tests::{TestBroker, test_config};
use serde_json::{Value, json};

const SUBSCRIBER: &str = "subscribe:adt.> subscribe:lab.> subscribe:fhir.>";
const PUBLISHER: &str = "publish:adt.> publish:lab.> publish:fhir.>";

struct Pair {
    sub_token: String,
    pub_token: String,
}

async fn pair(broker: &TestBroker) -> Pair {
    let s = broker.active_client("Subscriber", SUBSCRIBER).await;
    let p = broker.active_client("Publisher", PUBLISHER).await;
    Pair {
        sub_token: broker.token(&s, None).await,
        pub_token: broker.token(&p, None).await,
    }
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "event")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

async fn events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = ws.recv().await;
        if f["type"] == "event" {
            out.push(f);
        }
    }
    out
}

#[tokio::test]
async fn in_scope_subscriber_receives_what_a_publisher_publishes_in_seq_order() {
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let (mut sub, welcome) = Ws::connect(&broker, &p.sub_token).await;
    assert_eq!(welcome["scope"], SUBSCRIBER);
    assert!(welcome["limits"]["max_frame_bytes"].as_u64().unwrap() > 0);
    let ok = sub.subscribe("s1", "adt.>").await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    assert_eq!(ok["head_seq"], 0);

    let (mut publisher, _) = Ws::connect(&broker, &p.pub_token).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let topic = if i % 2 == 0 {
            "adt.patient.admitted"
        } else {
            "adt.patient.discharged"
        };
        let ack = publisher
            .publish(
                &format!("p{i}"),
                topic,
                json!({"n": i, "resourceType": "Encounter"}),
            )
            .await;
        assert_eq!(ack["type"], "published", "{ack}");
        acked.push(ack["seq"].as_u64().unwrap());
    }
    let got = events(&mut sub, 20).await;
    assert_eq!(seqs(&got), acked, "every event, in seq order");
    assert_eq!(got[0]["data"], json!({"n": 0, "resourceType": "Encounter"}));
    assert_eq!(got[0]["topic"], "adt.patient.admitted");
    assert!(got[0]["time"].as_str().unwrap().ends_with('Z'));

    // HTTP publish reaches the same subscriber, with an Idempotency-Key as event id.
    let resp = reqwest::Client::new()
        .post(broker.http_url("/v1/events/adt.patient.admitted"))
        .bearer_auth(&p.pub_token)
        .header("content-type", "application/fhir+json")
        .header("idempotency-key", "adt-000123")
        .body(r#"{"resourceType":"Encounter","id":"e1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "adt-000123");
    let e = events(&mut sub, 1).await.remove(0);
    assert_eq!(e["seq"], body["seq"]);
    assert_eq!(e["id"], "adt-000123");
    assert_eq!(e["data"]["id"], "e1");
}

#[tokio::test]
async fn subscribe_outside_scope_gets_forbidden_and_connection_survives() {
    let broker = TestBroker::start(test_config()).await;
    let sub_client = broker.active_client("Narrow", "subscribe:adt.*").await;
    let publisher = broker.active_client("Pub", PUBLISHER).await;
    let token = broker.token(&sub_client, None).await;
    let pub_token = broker.token(&publisher, None).await;
    let (mut ws, _) = Ws::connect(&broker, &token).await;
    assert_eq!(ws.subscribe("ok", "adt.x").await["type"], "subscribed");
    let refused = ws.subscribe("nope", "adt.>").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(refused["error"], "insufficient_scope");
    assert_eq!(refused["required_scope"], "subscribe:adt.>");
    let msg = refused["message"].as_str().unwrap();
    assert!(
        msg.contains(&sub_client.client_id)
            && msg.contains("adt.>")
            && msg.contains("subscribe:adt.>"),
        "{msg}"
    );

    // The other subscription keeps receiving.
    let a = broker
        .publish_http(&pub_token, "adt.x", &json!({"still": "here"}))
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let e = events(&mut ws, 1).await.remove(0);
    assert_eq!(e["data"]["still"], "here");
    assert_eq!(ws.subscribe("ok2", "adt.y").await["type"], "subscribed");
}

#[tokio::test]
async fn containment_not_prefix_decides_every_subscribe() {
    let broker = TestBroker::start(test_config()).await;
    let c = broker
        .active_client(
            "Containment",
            "subscribe:adt.* subscribe:adt.patient subscribe:lab.> subscribe:fhir.*.final",
        )
        .await;
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&c, None).await).await;
    for (pattern, allowed) in [
        ("adt.>", false),
        ("adt.a.b", false),
        ("adt.a", true),
        ("adt.*", true),
        ("adt.patient", true),
        ("adt.patientx", true), // covered by adt.*, not by the exact scope
        ("adt.patientx.y", false),
        ("lab.>", true),
        ("lab.*.final", true),
        (">", false),
        ("*", false),
        ("fhir.*.final", true),
        ("fhir.lab.final", true),
        ("fhir.lab.*", false),
    ] {
        let f = ws.subscribe(pattern, pattern).await;
        let want = if allowed { "subscribed" } else { "error" };
        assert_eq!(f["type"], want, "{pattern}: {f}");
    }
    for bad in [
        "Adt.x",
        "adt..x",
        "adt.x*",
        "adt.\u{430}",
        "adt.x\u{200b}",
        "adt.>.x",
    ] {
        let f = ws.subscribe("bad", bad).await;
        assert_eq!(
            (f["type"].as_str(), f["error"].as_str()),
            (Some("error"), Some("invalid_topic")),
            "{bad}: {f}"
        );
    }
}

#[tokio::test]
async fn bad_topics_are_refused_on_every_entry_point() {
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let (mut ws, _) = Ws::connect(&broker, &p.pub_token).await;
    for bad in ["Adt.x", "adt.*", "adt.>", "adt..x", "adt.\u{430}"] {
        let f = ws.publish("p", bad, json!(1)).await;
        assert_eq!(f["error"], "invalid_topic", "{bad}: {f}");
        let path = format!("/v1/events/{}", bad.replace('>', "%3E"));
        let a = reqwest::Client::new()
            .post(broker.http_url(&path))
            .bearer_auth(&p.pub_token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(a.status(), 400, "{bad}");
        let body: Value = a.json().await.unwrap();
        assert_eq!(body["reason"], "invalid_topic", "{bad}: {body}");
    }
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_and_unsubscribe_stops_delivery() {
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let (mut ws, _) = Ws::connect(&broker, &p.sub_token).await;
    for (id, pat) in [
        ("a", "adt.>"),
        ("b", "adt.patient.*"),
        ("c", "adt.patient.admitted"),
    ] {
        assert_eq!(ws.subscribe(id, pat).await["type"], "subscribed");
    }
    // Duplicate subscribe is idempotent.
    assert_eq!(ws.subscribe("a2", "adt.>").await["type"], "subscribed");
    for i in 0..5 {
        assert_eq!(
            broker
                .publish_http(&p.pub_token, "adt.patient.admitted", &json!(i))
                .await
                .status,
            201
        );
    }
    let got = events(&mut ws, 5).await;
    assert_eq!(seqs(&got), [1, 2, 3, 4, 5]);
    assert!(
        ws.recv_within(Duration::from_millis(300)).await.is_none(),
        "no duplicate"
    );

    for (id, pat) in [
        ("u1", "adt.>"),
        ("u2", "adt.patient.*"),
        ("u3", "adt.patient.admitted"),
    ] {
        ws.send(json!({"type": "unsubscribe", "id": id, "topic": pat}))
            .await;
        let (_, f) = ws.recv_answer(id).await;
        assert_eq!(f["type"], "unsubscribed");
    }
    ws.send(json!({"type": "unsubscribe", "id": "u4", "topic": "adt.>"}))
        .await;
    let (_, f) = ws.recv_answer("u4").await;
    assert_eq!(
        (f["code"].as_str(), f["error"].as_str()),
        (Some("not_found"), Some("subscription_not_found"))
    );
    broker
        .publish_http(&p.pub_token, "adt.patient.admitted", &json!("late"))
        .await;
    assert!(
        ws.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing after unsubscribe"
    );
}

#[tokio::test]
async fn subscribe_then_unsubscribe_in_one_write_leaves_nothing_behind() {
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let (mut ws, _) = Ws::connect(&broker, &p.sub_token).await;
    let both = [
        json!({"type": "subscribe", "id": "s", "topic": "lab.>"}).to_string(),
        json!({"type": "unsubscribe", "id": "u", "topic": "lab.>"}).to_string(),
    ];
    use futures_util::SinkExt;
    for t in both {
        ws.stream
            .feed(tokio_tungstenite::tungstenite::Message::text(t))
            .await
            .unwrap();
    }
    ws.stream.flush().await.unwrap();
    assert_eq!(ws.recv().await["type"], "subscribed");
    assert_eq!(ws.recv().await["type"], "unsubscribed");
    broker
        .publish_http(&p.pub_token, "lab.result", &json!(1))
        .await;
    assert!(ws.recv_within(Duration::from_millis(300)).await.is_none());
    assert_eq!(broker.metric("scopecast_subscriptions").await, 0.0);
}

#[tokio::test]
async fn the_ping_frame_is_answered_and_malformed_frames_get_error_frames_then_4000() {
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let (mut ws, _) = Ws::connect(&broker, &p.sub_token).await;
    ws.send(json!({"type": "ping", "id": "k1"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": "k1"}));
    ws.send_text("{not json").await;
    let f = ws.recv().await;
    assert_eq!(
        (f["code"].as_str(), f["error"].as_str()),
        (Some("bad_request"), Some("malformed_json"))
    );
    ws.send(json!({"type": "launch", "id": "x"})).await;
    let f = ws.recv().await;
    assert_eq!(
        (f["error"].as_str(), f["id"].as_str()),
        (Some("unknown_type"), Some("x"))
    );
    // A good frame resets the run; then eight bad ones in a row close with 4000.
    ws.send(json!({"type": "ping", "id": "k2"})).await;
    assert_eq!(ws.recv().await["type"], "pong");
    for _ in 0..8 {
        ws.send_text("[]").await;
    }
    let (frames, ended) = ws.until_closed(Duration::from_secs(5)).await;
    assert_eq!(frames.len(), 8);
    assert!(matches!(ended, Ended::Close(4000, _)), "{ended:?}");
}

#[tokio::test]
async fn transport_faults_get_their_rfc6455_close_codes() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let mut config = test_config();
    config.limits.max_frame_bytes = 4096;
    let broker = TestBroker::start(config).await;
    let p = pair(&broker).await;

    let (mut ws, _) = Ws::connect(&broker, &p.sub_token).await;
    ws.stream
        .send(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert!(matches!(
        ws.until_closed(Duration::from_secs(5)).await.1,
        Ended::Close(1003, _)
    ));

    let (mut ws, _) = Ws::connect(&broker, &p.sub_token).await;
    ws.stream
        .send(Message::text("x".repeat(5000)))
        .await
        .unwrap();
    assert!(matches!(
        ws.until_closed(Duration::from_secs(5)).await.1,
        Ended::Close(1009, _)
    ));

    let (mut ws, _) = Ws::connect(&broker, &p.sub_token).await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.stream.send(Message::Frame(bad)).await.unwrap();
    assert!(matches!(
        ws.until_closed(Duration::from_secs(5)).await.1,
        Ended::Close(1007, _)
    ));
}

#[tokio::test]
async fn auth_by_first_frame_and_every_way_to_fail_it() {
    let mut config = test_config();
    config.limits.auth_timeout_ms = 300;
    let broker = TestBroker::start(config).await;
    let p = pair(&broker).await;

    let mut ws = Ws::try_connect(&broker, None, "/v1/stream").await.unwrap();
    ws.send(json!({"type": "auth", "token": p.sub_token})).await;
    assert_eq!(ws.recv().await["type"], "welcome");
    assert_eq!(ws.subscribe("s", "adt.>").await["type"], "subscribed");

    let mut ws = Ws::try_connect(&broker, None, "/v1/stream").await.unwrap();
    assert!(
        matches!(
            ws.until_closed(Duration::from_secs(5)).await.1,
            Ended::Close(4001, _)
        ),
        "auth timeout"
    );

    let mut ws = Ws::try_connect(&broker, None, "/v1/stream").await.unwrap();
    ws.send(json!({"type": "subscribe", "id": "early", "topic": "adt.>"}))
        .await;
    let (frames, ended) = ws.until_closed(Duration::from_secs(5)).await;
    assert_eq!(frames[0]["error"], "auth_required");
    assert_eq!(frames[0]["id"], "early");
    assert!(matches!(ended, Ended::Close(4001, _)));

    let mut ws = Ws::try_connect(&broker, None, "/v1/stream").await.unwrap();
    ws.send(json!({"type": "auth", "token": "not.a.token"}))
        .await;
    let (frames, ended) = ws.until_closed(Duration::from_secs(5)).await;
    assert_eq!(frames[0]["error"], "invalid_token");
    assert!(matches!(ended, Ended::Close(4001, _)));

    // Tokens in the URL, a bad header token, and a wrong subprotocol are refused before upgrade.
    let r = Ws::try_connect(
        &broker,
        None,
        &format!("/v1/stream?access_token={}", p.sub_token),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (400, Some("token_in_url"))
    );
    assert!(r.body["message"].as_str().unwrap().contains("URL"));
    let r = Ws::try_connect(&broker, Some("garbage"), "/v1/stream")
        .await
        .err()
        .unwrap();
    assert_eq!(r.status, 401);
    let challenge = r.headers.get("www-authenticate").unwrap().to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\""),
        "{challenge}"
    );
}

#[tokio::test]
async fn refused_subprotocols_and_inactive_clients_at_the_upgrade() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let broker = TestBroker::start(test_config()).await;
    let app = broker.create_app("Later", SUBSCRIBER).await;
    broker.activate(&app.non_production.client_id).await;
    let token = broker.token(&app.non_production, None).await;
    let mut req = broker.ws_url("/v1/stream").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("{:?}", other.map(|_| ())),
    }
    broker.deactivate(&app.non_production.client_id).await;
    let r = Ws::try_connect(&broker, Some(&token), "/v1/stream")
        .await
        .err()
        .unwrap();
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (403, Some("client_inactive"))
    );
}

#[tokio::test]
async fn deactivation_mid_stream_closes_4003_within_a_second_and_delivers_nothing_after() {
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let app_client = broker.active_client("Doomed", SUBSCRIBER).await;
    let token = broker.token(&app_client, None).await;
    let (mut ws, _) = Ws::connect(&broker, &token).await;
    assert_eq!(ws.subscribe("s", "adt.>").await["type"], "subscribed");
    broker
        .publish_http(&p.pub_token, "adt.x", &json!("before"))
        .await;
    assert_eq!(events(&mut ws, 1).await[0]["data"], "before");

    let start = Instant::now();
    broker.deactivate(&app_client.client_id).await;
    broker
        .publish_http(&p.pub_token, "adt.x", &json!("after"))
        .await;
    let (frames, ended) = ws.until_closed(Duration::from_secs(2)).await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        start.elapsed()
    );
    assert!(matches!(ended, Ended::Close(4003, _)), "{ended:?}");
    assert!(frames.iter().all(|f| f["data"] != "after"), "{frames:?}");
    let r = Ws::try_connect(&broker, Some(&token), "/v1/stream")
        .await
        .err()
        .unwrap();
    assert_eq!(r.status, 403);
}

fn short_tokens() -> scopecast_broker::Config {
    let mut config = test_config();
    config.oauth.token_lifetime_s = 5;
    config.oauth.leeway_s = 0;
    config.limits.token_warning_ms = 2_000;
    config
}

#[tokio::test]
async fn token_expiry_warns_then_closes_4002_and_delivers_nothing_after() {
    let broker = TestBroker::start(short_tokens()).await;
    let p = pair(&broker).await;
    let (mut ws, welcome) = Ws::connect(&broker, &p.sub_token).await;
    assert!(welcome["expires_at"].is_string());
    assert_eq!(ws.subscribe("s", "adt.>").await["type"], "subscribed");
    let (_, warning) = ws.recv_type("token_expiring").await;
    assert!(
        warning["expires_in_ms"].as_u64().unwrap() <= 2_500,
        "{warning}"
    );
    // Keep publishing through the expiry with a publisher that has a fresh token.
    let publisher = broker.active_client("Late publisher", PUBLISHER).await;
    let pub_token = broker.token(&publisher, None).await;
    let pusher = {
        let url = broker.http_url("/v1/events/adt.x");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..40 {
                let _ = http
                    .post(&url)
                    .bearer_auth(&pub_token)
                    .header("content-type", "application/json")
                    .body(i.to_string())
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let (frames, ended) = ws.until_closed(Duration::from_secs(8)).await;
    let closed_at = time::OffsetDateTime::now_utc();
    assert!(matches!(ended, Ended::Close(4002, _)), "{ended:?}");
    let exp = time::OffsetDateTime::parse(
        welcome["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        closed_at >= exp - time::Duration::milliseconds(100),
        "closed before exp"
    );
    for f in frames.iter().filter(|f| f["type"] == "event") {
        let t = time::OffsetDateTime::parse(
            f["time"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(t <= exp, "event accepted at {t} delivered after exp {exp}");
    }
    pusher.abort();
}

#[tokio::test]
async fn a_refresh_before_expiry_keeps_the_stream_without_a_gap() {
    let broker = TestBroker::start(short_tokens()).await;
    let s = broker.active_client("Refresher", SUBSCRIBER).await;
    let publisher = broker.active_client("Steady publisher", PUBLISHER).await;
    let pub_client = publisher.clone();
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&s, None).await).await;
    assert_eq!(ws.subscribe("s", "lab.>").await["type"], "subscribed");
    let url = broker.http_url("/v1/events/lab.result");
    let token_url = broker.token_endpoint();
    let pusher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut sent = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            // Fresh publisher token each round: the publisher's own tokens expire too.
            let tok: Value = http
                .post(&token_url)
                .basic_auth(&pub_client.client_id, Some(&pub_client.secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let r = http
                .post(&url)
                .bearer_auth(tok["access_token"].as_str().unwrap())
                .header("content-type", "application/json")
                .body(sent.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    });
    let mut got = Vec::new();
    let mut refreshed = 0;
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let f = ws.recv().await;
        match f["type"].as_str().unwrap() {
            "event" => got.push(f["data"].as_u64().unwrap()),
            "token_expiring" => {
                ws.send(json!({"type": "auth", "token": broker.token(&s, None).await}))
                    .await;
                refreshed += 1;
            }
            "welcome" => {}
            other => panic!("unexpected {other}: {f}"),
        }
        if pusher.is_finished() || Instant::now() > deadline {
            break;
        }
    }
    let sent = pusher.await.unwrap();
    while (got.len() as u64) < sent {
        got.push(events(&mut ws, 1).await[0]["data"].as_u64().unwrap());
    }
    assert!(refreshed >= 1, "the token was refreshed");
    assert_eq!(got, (0..sent).collect::<Vec<_>>(), "no gap, no duplicate");
}

#[tokio::test]
async fn a_narrower_refresh_ends_exactly_the_subscriptions_it_no_longer_covers() {
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let s = broker.active_client("Narrower", SUBSCRIBER).await;
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&s, None).await).await;
    assert_eq!(ws.subscribe("a", "adt.>").await["type"], "subscribed");
    assert_eq!(ws.subscribe("l", "lab.>").await["type"], "subscribed");
    let narrow = broker.token(&s, Some("subscribe:adt.>")).await;
    ws.send(json!({"type": "auth", "token": narrow})).await;
    let revoked = ws.recv().await;
    assert_eq!(
        (revoked["error"].as_str(), revoked["topic"].as_str()),
        (Some("scope_revoked"), Some("lab.>")),
        "{revoked}"
    );
    assert_eq!(revoked["code"], "forbidden");
    let welcome = ws.recv().await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["scope"].as_str()),
        (Some("welcome"), Some("subscribe:adt.>"))
    );
    broker
        .publish_http(&p.pub_token, "lab.x", &json!("lab"))
        .await;
    broker
        .publish_http(&p.pub_token, "adt.x", &json!("adt"))
        .await;
    assert_eq!(events(&mut ws, 1).await[0]["data"], "adt");

    // A refresh with another client's token: client_mismatch, then 4003.
    ws.send(json!({"type": "auth", "token": p.sub_token})).await;
    let (frames, ended) = ws.until_closed(Duration::from_secs(5)).await;
    assert_eq!(frames.last().unwrap()["error"], "client_mismatch");
    assert!(matches!(ended, Ended::Close(4003, _)));
}

#[tokio::test]
async fn an_admin_narrowing_the_ceiling_ends_exactly_the_affected_subscriptions() {
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let app = broker.create_app("Ceiling", SUBSCRIBER).await;
    broker.activate(&app.non_production.client_id).await;
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&app.non_production, None).await).await;
    assert_eq!(ws.subscribe("a", "adt.>").await["type"], "subscribed");
    assert_eq!(
        ws.subscribe("f", "fhir.encounter.>").await["type"],
        "subscribed"
    );
    let a = broker
        .admin(
            Method::PATCH,
            &format!("/applications/{}", app.id),
            Some(json!({"scope": "subscribe:fhir.>"})),
        )
        .await;
    assert_eq!(a.status, 200);
    let revoked = ws.recv().await;
    assert_eq!(
        (revoked["error"].as_str(), revoked["topic"].as_str()),
        (Some("scope_revoked"), Some("adt.>")),
        "{revoked}"
    );
    broker
        .publish_http(&p.pub_token, "fhir.encounter.started", &json!("kept"))
        .await;
    assert_eq!(events(&mut ws, 1).await[0]["data"], "kept");
    assert_eq!(
        ws.subscribe("a2", "adt.>").await["error"],
        "insufficient_scope"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_closed_4008_while_others_keep_full_speed() {
    let mut config = test_config();
    // Small enough that 12 MB of events overflow it and the kernel's socket buffers; large
    // enough (64 events) that the fast reader, on a machine busy with other builds, is not
    // taken for a slow one when the fan-out hands it a burst (acks do not wait for fan-out).
    config.limits.outbound_queue_bytes = 256 * 1024;
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let p = pair(&broker).await;
    let (mut slow, _) = Ws::connect(&broker, &p.sub_token).await;
    let (mut fast, _) = Ws::connect(&broker, &p.sub_token).await;
    assert_eq!(slow.subscribe("s", "fhir.>").await["type"], "subscribed");
    assert_eq!(fast.subscribe("s", "fhir.>").await["type"], "subscribed");
    let (mut publisher, _) = Ws::connect(&broker, &p.pub_token).await;
    let payload = json!({"pad": "x".repeat(4000)});
    let total = 3000;
    let reader = tokio::spawn(async move {
        let got = events(&mut fast, total).await;
        (fast, seqs(&got))
    });
    // Each publish waits for its ack, as a careful publisher would; the slow reader never
    // reads, and the broker never waits for it.
    for i in 0..total {
        let ack = publisher
            .publish(&format!("p{i}"), "fhir.x", payload.clone())
            .await;
        assert_eq!(ack["type"], "published", "{ack}");
    }
    let (_fast, got) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), total, "the fast subscriber got everything");
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert!(broker.metric("scopecast_slow_consumer_closes_total").await >= 1.0);
    let (_, ended) = slow.until_closed(Duration::from_secs(20)).await;
    assert!(
        matches!(ended, Ended::Close(4008, _) | Ended::Dropped),
        "{ended:?}"
    );
}

#[tokio::test]
async fn connections_per_client_are_capped_with_429_and_others_untouched() {
    let mut config = test_config();
    config.limits.max_connections_per_client = 2;
    let broker = TestBroker::start(config).await;
    let p = pair(&broker).await;
    let (mut a, _) = Ws::connect(&broker, &p.sub_token).await;
    let (_b, _) = Ws::connect(&broker, &p.sub_token).await;
    let r = Ws::try_connect(&broker, Some(&p.sub_token), "/v1/stream")
        .await
        .err()
        .unwrap();
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (429, Some("too_many_connections"))
    );
    a.send(json!({"type": "ping", "id": "alive"})).await;
    assert_eq!(a.recv().await["type"], "pong");
}

#[tokio::test]
async fn publish_needs_publish_scope_and_is_rate_limited() {
    let mut config = test_config();
    config.limits.publish_rate_per_sec = 5;
    let broker = TestBroker::start(config).await;
    let p = pair(&broker).await;
    let (mut ws, _) = Ws::connect(&broker, &p.sub_token).await;
    let f = ws.publish("x", "adt.x", json!(1)).await;
    assert_eq!(
        (f["error"].as_str(), f["required_scope"].as_str()),
        (Some("insufficient_scope"), Some("publish:adt.x"))
    );

    let a = broker.publish_http(&p.sub_token, "adt.x", &json!(1)).await;
    assert_eq!(a.status, 403);
    assert_eq!(
        (
            a.body["error"].as_str(),
            a.body["reason"].as_str(),
            a.body["required_scope"].as_str()
        ),
        (
            Some("forbidden"),
            Some("insufficient_scope"),
            Some("publish:adt.x")
        )
    );
    let challenge = a.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"publish:adt.x\""),
        "{challenge}"
    );

    let (mut publisher, _) = Ws::connect(&broker, &p.pub_token).await;
    let mut limited = None;
    for i in 0..20 {
        let f = publisher.publish(&format!("r{i}"), "adt.x", json!(i)).await;
        if f["type"] == "error" {
            limited = Some(f);
            break;
        }
    }
    let f = limited.expect("rate limit reached");
    assert_eq!(
        (f["code"].as_str(), f["error"].as_str()),
        (Some("rate_limited"), Some("publish_rate_exceeded"))
    );
    assert!(f["retry_after_ms"].as_u64().unwrap() > 0);
    let a = broker.publish_http(&p.pub_token, "adt.x", &json!(1)).await;
    assert_eq!(a.status, 429);
}

#[tokio::test]
async fn http_publish_by_client_id_header_only_where_enabled() {
    let mut config = test_config();
    config.http.client_id_header = true;
    let broker = TestBroker::start(config).await;
    let publisher = broker.active_client("Header publisher", PUBLISHER).await;
    let post = |id: String| {
        let url = broker.http_url("/v1/events/adt.x");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("scopecast-client-id", id)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(publisher.client_id.clone()).await,
        401,
        "off for this client until an admin enables it"
    );
    let path = format!("/clients/{}/client-id-header", publisher.client_id);
    assert_eq!(
        broker
            .admin(Method::PUT, &path, Some(json!({"enabled": true})))
            .await
            .status,
        200
    );
    assert_eq!(post(publisher.client_id.clone()).await, 201);
    assert_eq!(post(uuid::Uuid::new_v4().to_string()).await, 401);

    let off = TestBroker::start(test_config()).await;
    let c = off.active_client("No header", PUBLISHER).await;
    off.admin(
        Method::PUT,
        &format!("/clients/{}/client-id-header", c.client_id),
        Some(json!({"enabled": true})),
    )
    .await;
    let status = reqwest::Client::new()
        .post(off.http_url("/v1/events/adt.x"))
        .header("scopecast-client-id", &c.client_id)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "off by default in the broker's config");
}

#[tokio::test]
async fn a_thousand_subscribers_each_receive_a_thousand_events() {
    let mut config = test_config();
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let p = pair(&broker).await;
    let n = 1000;
    let mut subs = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ws = Ws::try_connect(&broker, Some(&p.sub_token), "/v1/stream")
            .await
            .unwrap();
        ws.send(json!({"type": "subscribe", "id": "s", "topic": "fhir.encounter.started"}))
            .await;
        subs.push(ws);
    }
    for ws in &mut subs {
        assert_eq!(ws.recv().await["type"], "welcome");
        assert_eq!(ws.recv().await["type"], "subscribed");
    }
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut count = 0u64;
                let mut last = 0u64;
                while count < 1000 {
                    let f = ws.recv().await;
                    if f["type"] == "event" {
                        let seq = f["seq"].as_u64().unwrap();
                        assert!(seq > last);
                        last = seq;
                        count += 1;
                    }
                }
                count
            })
        })
        .collect();
    let (mut publisher, _) = Ws::connect(&broker, &p.pub_token).await;
    for i in 0..1000 {
        publisher.send(json!({"type": "publish", "id": format!("p{i}"), "topic": "fhir.encounter.started", "data": {"i": i}})).await;
    }
    for r in readers {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(120), r)
                .await
                .unwrap()
                .unwrap(),
            1000
        );
    }
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001() {
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let (mut ws, _) = Ws::connect(&broker, &p.sub_token).await;
    assert_eq!(ws.subscribe("s", "adt.>").await["type"], "subscribed");
    let stopping = tokio::spawn(broker.stop());
    let (_, ended) = ws.until_closed(Duration::from_secs(5)).await;
    assert!(matches!(ended, Ended::Close(1001, _)), "{ended:?}");
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn metrics_are_exported_without_client_chosen_labels() {
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let (mut ws, _) = Ws::connect(&broker, &p.sub_token).await;
    for i in 0..50 {
        ws.subscribe(&format!("s{i}"), &format!("adt.topic-{i}"))
            .await;
    }
    ws.subscribe("bad", "lab.nope-zzz").await;
    broker
        .publish_http(&p.pub_token, "adt.topic-1", &json!(1))
        .await;
    let text = broker.metrics().await;
    for name in [
        "scopecast_connections 1",
        "scopecast_subscriptions 51",
        "scopecast_events_published_total 1",
        "scopecast_client_connections{client_id=",
    ] {
        assert!(text.contains(name), "{name} missing in\n{text}");
    }
    assert!(
        !text.contains("topic-"),
        "a client-chosen topic reached the metrics"
    );
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    use futures_util::StreamExt;
    let broker = TestBroker::start(test_config()).await;
    let p = pair(&broker).await;
    let (mut ws, _) = Ws::connect(&broker, &p.sub_token).await;
    ws.close().await;
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.stream.next())
        .await
        .unwrap();
    match reply {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(c)))) => {
            assert_eq!(u16::from(c.code), 1000)
        }
        other => panic!("expected the closing handshake's reply, got {other:?}"),
    }
}
