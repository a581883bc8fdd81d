//! Replay and resume by `seq` (PROTOCOL.md section 8), on the memory log and the durable log.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use scopecast_broker::LogMode;
use scopecast_tests::ws::Ws;
use scopecast_tests::{TestBroker, test_config};
use serde_json::{Value, json};

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

fn seqs(v: &[Value]) -> Vec<u64> {
    v.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}

async fn publish_n(broker: &TestBroker, token: &str, topic: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..n {
        let a = broker.publish_http(token, topic, &json!({"i": i})).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        out.push(a.body["seq"].as_u64().unwrap());
    }
    out
}

async fn resume_case(log: LogMode, patterns: &[&str], topics: &[&str]) {
    let mut config = test_config();
    config.log = log;
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let sub = broker
        .active_client("Resumer", "subscribe:adt.> subscribe:lab.>")
        .await;
    let publisher = broker
        .active_client("Feeder", "publish:adt.> publish:lab.>")
        .await;
    let (st, pt) = (
        broker.token(&sub, None).await,
        broker.token(&publisher, None).await,
    );

    let (mut ws, _) = Ws::connect(&broker, &st).await;
    for (i, p) in patterns.iter().enumerate() {
        assert_eq!(
            ws.subscribe(&format!("s{i}"), p).await["type"],
            "subscribed"
        );
    }
    let mut first = Vec::new();
    for t in topics {
        first.extend(publish_n(&broker, &pt, t, 50).await);
    }
    let got = events(&mut ws, first.len()).await;
    assert_eq!(seqs(&got), first);
    let last = *first.last().unwrap();
    ws.close().await;
    drop(ws);

    let mut missed = Vec::new();
    for t in topics {
        missed.extend(publish_n(&broker, &pt, t, 50).await);
    }
    let (mut ws, _) = Ws::connect(&broker, &st).await;
    let mut replayed = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        ws.send(
            json!({"type": "subscribe", "id": format!("r{i}"), "topic": p, "since": {"seq": last}}),
        )
        .await;
        let (before, ok) = ws.recv_answer(&format!("r{i}")).await;
        replayed.extend(before);
        assert_eq!(ok["type"], "subscribed", "{ok}");
        assert_eq!(ok["replay"]["truncated"], false);
        assert_eq!(ok["replay"]["from_seq"], last + 1);
    }
    let live = publish_n(&broker, &pt, topics[0], 3).await;
    let rest = events(
        &mut ws,
        missed.len() + live.len() - replayed.iter().filter(|f| f["type"] == "event").count(),
    )
    .await;
    let mut all: Vec<Value> = replayed
        .into_iter()
        .filter(|f| f["type"] == "event")
        .collect();
    all.extend(rest);
    let mut got = seqs(&all);
    let unique: std::collections::BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a duplicate: {got:?}");
    got.sort_unstable();
    let mut want = missed.clone();
    want.extend(&live);
    assert_eq!(got, want, "exactly the missed events, then the live ones");
    assert!(
        ws.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing more"
    );
}

#[tokio::test]
async fn resume_from_the_last_seq_gets_exactly_what_was_missed() {
    resume_case(LogMode::Memory, &["adt.patient"], &["adt.patient"]).await;
}

#[tokio::test]
async fn resume_works_for_wildcards_on_the_durable_log() {
    resume_case(
        LogMode::Durable,
        &["adt.>"],
        &["adt.patient", "adt.visit.start"],
    )
    .await;
}

#[tokio::test]
async fn resume_with_two_overlapping_subscriptions_delivers_each_event_once() {
    resume_case(
        LogMode::Durable,
        &["adt.>", "adt.patient"],
        &["adt.patient", "adt.visit"],
    )
    .await;
}

#[tokio::test]
async fn a_resume_from_before_retention_is_reported_as_truncated() {
    let mut config = test_config();
    config.memory_log_events = 10;
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let sub = broker.active_client("Late", "subscribe:lab.>").await;
    let publisher = broker.active_client("Lab", "publish:lab.>").await;
    let pt = broker.token(&publisher, None).await;
    let published = publish_n(&broker, &pt, "lab.result", 25).await;
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&sub, None).await).await;
    ws.send(json!({"type": "subscribe", "id": "r", "topic": "lab.>", "since": {"seq": 0}}))
        .await;
    let (_, ok) = ws.recv_answer("r").await;
    assert_eq!(ok["replay"]["truncated"], true, "{ok}");
    assert_eq!(ok["replay"]["from_seq"], published[15]);
    let got = events(&mut ws, 10).await;
    assert_eq!(seqs(&got), published[15..].to_vec());
}

#[tokio::test]
async fn replay_since_a_time_starts_at_the_first_event_at_or_after_it() {
    let mut config = test_config();
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let sub = broker.active_client("Timed", "subscribe:adt.>").await;
    let publisher = broker.active_client("Pub", "publish:adt.>").await;
    let pt = broker.token(&publisher, None).await;
    publish_n(&broker, &pt, "adt.a", 5).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mark = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = publish_n(&broker, &pt, "adt.a", 5).await;
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&sub, None).await).await;
    ws.send(json!({"type": "subscribe", "id": "t", "topic": "adt.>", "since": {"time": mark}}))
        .await;
    let (_, ok) = ws.recv_answer("t").await;
    assert_eq!(ok["replay"]["from_seq"], after[0], "{ok}");
    assert_eq!(seqs(&events(&mut ws, 5).await), after);
}

#[tokio::test]
async fn a_repeated_event_id_returns_the_original_seq_and_is_not_delivered_twice() {
    let mut config = test_config();
    config.log = LogMode::Durable;
    let broker = TestBroker::start(config).await;
    let sub = broker.active_client("Watcher", "subscribe:adt.>").await;
    let publisher = broker.active_client("Retrier", "publish:adt.>").await;
    let pt = broker.token(&publisher, None).await;
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&sub, None).await).await;
    assert_eq!(ws.subscribe("s", "adt.>").await["type"], "subscribed");

    let (mut p, _) = Ws::connect(&broker, &pt).await;
    let first = {
        p.send(json!({"type": "publish", "id": "1", "topic": "adt.x", "data": {"v": 1}, "event_id": "evt-1"})).await;
        p.recv_answer("1").await.1
    };
    let again = {
        p.send(json!({"type": "publish", "id": "2", "topic": "adt.x", "data": {"v": 1}, "event_id": "evt-1"})).await;
        p.recv_answer("2").await.1
    };
    assert_eq!(first["type"], "published");
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(again["seq"], first["seq"], "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    let conflict = {
        p.send(json!({"type": "publish", "id": "3", "topic": "adt.x", "data": {"v": 2}, "event_id": "evt-1"})).await;
        p.recv_answer("3").await.1
    };
    assert_eq!(
        (conflict["code"].as_str(), conflict["error"].as_str()),
        (Some("conflict"), Some("event_id_conflict"))
    );

    // Over HTTP, the Idempotency-Key is the same id.
    let post = |body: &'static str| {
        let url = broker.http_url("/v1/events/adt.x");
        let pt = pt.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(pt)
                .header("content-type", "application/json")
                .header("idempotency-key", "evt-1")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = post(r#"{"v":1}"#).await;
    assert_eq!(r.status(), 200, "a duplicate stores nothing: 200, not 201");
    let body = r.json::<Value>().await.unwrap();
    assert_eq!(body["seq"], first["seq"]);
    assert_eq!(body["duplicate"], true);
    assert_eq!(post(r#"{"v":3}"#).await.status(), 409);

    let got = events(&mut ws, 1).await;
    assert_eq!(got[0]["seq"], first["seq"]);
    assert!(
        ws.recv_within(Duration::from_millis(300)).await.is_none(),
        "delivered once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hand_over_from_replay_to_live_has_no_gap_while_publishers_keep_publishing() {
    let mut config = test_config();
    config.log = LogMode::Durable;
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let sub = broker.active_client("Catcher", "subscribe:lab.>").await;
    let publisher = broker.active_client("Busy", "publish:lab.>").await;
    let pt = broker.token(&publisher, None).await;
    let (mut p, _) = Ws::connect(&broker, &pt).await;
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..600 {
            let a = p
                .publish(&format!("p{i}"), "lab.result", json!({"i": i}))
                .await;
            acked.push(a["seq"].as_u64().unwrap());
        }
        acked
    });
    // Subscribe from the beginning while the writer is in full flow.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&sub, None).await).await;
    ws.send(json!({"type": "subscribe", "id": "s", "topic": "lab.>", "since": {"seq": 0}}))
        .await;
    let acked = writer.await.unwrap();
    let got = events(&mut ws, acked.len()).await;
    assert_eq!(
        seqs(&got),
        acked,
        "replayed then live, in order, no gap, no duplicate"
    );
    assert!(ws.recv_within(Duration::from_millis(300)).await.is_none());

    // The history API gives the same, with the same scope check.
    let a = reqwest::Client::new()
        .get(broker.http_url("/v1/events"))
        .query(&[("topic", "lab.>"), ("since", "0"), ("limit", "1000")])
        .bearer_auth(broker.token(&sub, None).await)
        .send()
        .await
        .unwrap();
    let body: Value = a.json().await.unwrap();
    assert_eq!(seqs(body["events"].as_array().unwrap()), acked);
    let a = reqwest::Client::new()
        .get(broker.http_url("/v1/events"))
        .query(&[("topic", "adt.>")])
        .bearer_auth(broker.token(&sub, None).await)
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_to_a_reader_that_keeps_up_is_not_a_slow_consumer() {
    let mut config = test_config();
    config.limits.outbound_queue_bytes = 256 * 1024;
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let sub = broker.active_client("Big replay", "subscribe:lab.>").await;
    let publisher = broker.active_client("Big pub", "publish:lab.>").await;
    let pt = broker.token(&publisher, None).await;
    let pad = "x".repeat(2000);
    let mut published = Vec::new();
    for i in 0..600 {
        let a = broker
            .publish_http(&pt, "lab.big", &json!({"i": i, "pad": pad}))
            .await;
        published.push(a.body["seq"].as_u64().unwrap());
    }
    let (mut ws, _) = Ws::connect(&broker, &broker.token(&sub, None).await).await;
    ws.send(json!({"type": "subscribe", "id": "r", "topic": "lab.>", "since": {"seq": 0}}))
        .await;
    let (_, ok) = ws.recv_answer("r").await;
    assert_eq!(ok["type"], "subscribed");
    assert_eq!(seqs(&events(&mut ws, 600).await), published);
}

#[tokio::test]
async fn a_duplicate_publish_gives_its_rate_token_back() {
    let mut config = test_config();
    config.limits.publish_rate_per_sec = 3;
    let broker = TestBroker::start(config).await;
    let publisher = broker.active_client("Replayer", "publish:adt.>").await;
    let pt = broker.token(&publisher, None).await;
    let (mut p, _) = Ws::connect(&broker, &pt).await;
    p.send(json!({"type": "publish", "id": "0", "topic": "adt.x", "data": {"v": 1}, "event_id": "same"})).await;
    assert_eq!(p.recv_answer("0").await.1["duplicate"], false);
    // A second run of the same replay: every publish is a duplicate, and none may be refused
    // for rate (without the refund, the third would be: the bucket holds 3 a second).
    for i in 1..=10 {
        let id = i.to_string();
        p.send(json!({"type": "publish", "id": id, "topic": "adt.x", "data": {"v": 1}, "event_id": "same"})).await;
        let answer = p.recv_answer(&id).await.1;
        assert_eq!(answer["type"], "published", "duplicate {i}: {answer}");
        assert_eq!(answer["duplicate"], true);
    }
    // A fresh event still costs a token as before.
    for i in 0..5 {
        let id = format!("f{i}");
        p.send(json!({"type": "publish", "id": id, "topic": "adt.x", "data": {"v": i}}))
            .await;
        let answer = p.recv_answer(&id).await.1;
        if answer["type"] == "error" {
            assert_eq!(answer["error"], "publish_rate_exceeded");
            return;
        }
    }
    panic!("five fresh publishes at once passed a rate of 3 a second");
}
