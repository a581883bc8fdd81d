//! The Rust client SDK against a real broker: typed errors, subscriptions as streams, token
//! refresh without a gap, and reconnect with resume after a broker restart.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use scopecast_broker::LogMode;
use scopecast_client::{ConnectOptions, ConnectionState, Item, SubscribeError, TokenSource};
use scopecast_tests::{TestBroker, test_config};
use serde_json::json;

fn source(broker: &TestBroker, c: &scopecast_tests::TestClient) -> TokenSource {
    TokenSource::client_secret(&broker.base_url(), &c.client_id, &c.secret)
}

async fn next_event(sub: &mut scopecast_client::Subscription) -> scopecast_client::protocol::Event {
    match tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an item in time")
        .expect("open")
    {
        Item::Event(e) => e,
        Item::Gap { from_seq, to_seq } => panic!("unexpected gap {from_seq}..={to_seq}"),
    }
}

#[tokio::test]
async fn forbidden_is_a_typed_error_naming_the_scope_and_streams_carry_events() {
    let broker = TestBroker::start(test_config()).await;
    let sub = broker
        .active_client("SDK sub", "subscribe:fhir.encounter.>")
        .await;
    let publisher = broker.active_client("SDK pub", "publish:fhir.>").await;
    let client = ConnectOptions::new()
        .token_source(source(&broker, &sub))
        .connect(&broker.base_url())
        .await
        .unwrap();
    match client.subscribe("fhir.>").await {
        Err(SubscribeError::Forbidden { required_scope }) => {
            assert_eq!(required_scope, "subscribe:fhir.>")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let mut stream = client.subscribe("fhir.encounter.>").await.unwrap();
    let pc = scopecast_client::connect(&broker.base_url(), source(&broker, &publisher))
        .await
        .unwrap();
    let seq = pc
        .publish(
            "fhir.encounter.started",
            &json!({"resourceType": "Encounter", "id": "e1"}),
        )
        .await
        .unwrap();
    let e = next_event(&mut stream).await;
    assert_eq!((e.seq, e.topic.as_str()), (seq, "fhir.encounter.started"));
    let v: serde_json::Value = e.data.parse().unwrap();
    assert_eq!(v["id"], "e1");
    match pc.publish("adt.x", &json!(1)).await {
        Err(scopecast_client::PublishError::Forbidden { required_scope }) => {
            assert_eq!(required_scope, "publish:adt.x")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(*client.state().borrow(), ConnectionState::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_five_second_tokens_a_twenty_second_stream_has_no_gap_and_no_duplicate() {
    let mut config = test_config();
    config.oauth.token_lifetime_s = 5;
    config.oauth.leeway_s = 0;
    config.limits.token_warning_ms = 2_000;
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let sub = broker.active_client("Long reader", "subscribe:lab.>").await;
    let publisher = broker.active_client("Long writer", "publish:lab.>").await;
    let client = ConnectOptions::new()
        .token_source(source(&broker, &sub))
        .connect(&broker.base_url())
        .await
        .unwrap();
    let mut stream = client.subscribe("lab.>").await.unwrap();
    let pc = scopecast_client::connect(&broker.base_url(), source(&broker, &publisher))
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        let start = Instant::now();
        let mut seqs = Vec::new();
        let mut i = 0u64;
        while start.elapsed() < Duration::from_secs(20) {
            match pc.publish("lab.result", &json!({"i": i})).await {
                Ok(seq) => seqs.push(seq),
                Err(e) => panic!("publish {i} at {:?}: {e}", start.elapsed()),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seqs
    });
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await
        {
            match item {
                Item::Event(e) => got.push(e.seq),
                Item::Gap { from_seq, to_seq } => panic!("gap {from_seq}..={to_seq}"),
            }
        }
        got
    });
    let sent = writer.await.unwrap();
    let got = reader.await.unwrap();
    assert_eq!(
        got, sent,
        "every event once, in order, across four refreshes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_the_client_reconnects_and_resumes_without_a_gap() {
    let mut config = test_config();
    config.log = LogMode::Durable;
    config.limits.publish_rate_per_sec = 0;
    let mut broker = TestBroker::start(config).await;
    let sub = broker.active_client("Resumer", "subscribe:adt.>").await;
    let publisher = broker.active_client("Publisher", "publish:adt.>").await;
    let client = ConnectOptions::new()
        .token_source(source(&broker, &sub))
        .max_reconnect_delay(Duration::from_millis(500))
        .connect(&broker.base_url())
        .await
        .unwrap();
    let mut stream = client.subscribe("adt.>").await.unwrap();
    let mut expected = Vec::new();
    for i in 0..10 {
        let a = broker
            .publish_http(
                &broker.token(&publisher, None).await,
                "adt.before",
                &json!(i),
            )
            .await;
        expected.push(a.body["seq"].as_u64().unwrap());
    }
    for want in &expected[..5] {
        assert_eq!(next_event(&mut stream).await.seq, *want);
    }
    let changes = tokio::spawn({
        let mut states = Box::pin(client.state_changes());
        async move {
            let mut seen = Vec::new();
            while let Ok(Some(s)) =
                tokio::time::timeout(Duration::from_secs(10), states.next()).await
            {
                let connected = s == ConnectionState::Connected;
                seen.push(s);
                if connected {
                    break;
                }
            }
            seen
        }
    });
    broker.restart().await;
    let token = broker.token(&publisher, None).await;
    for i in 0..10 {
        let a = broker.publish_http(&token, "adt.after", &json!(i)).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        expected.push(a.body["seq"].as_u64().unwrap());
    }
    let mut got: Vec<u64> = expected[..5].to_vec();
    while got.len() < expected.len() {
        got.push(next_event(&mut stream).await.seq);
    }
    assert_eq!(
        got, expected,
        "resumed from the last seq delivered, no gap, no duplicate"
    );
    assert_eq!(*client.state().borrow(), ConnectionState::Connected);
    let seen = changes.await.unwrap();
    assert_eq!(seen.first(), Some(&ConnectionState::Connecting), "{seen:?}");
    assert_eq!(seen.last(), Some(&ConnectionState::Connected), "{seen:?}");
}

#[tokio::test]
async fn dropping_one_subscription_leaves_the_others_alone() {
    let broker = TestBroker::start(test_config()).await;
    let sub = broker.active_client("Two streams", "subscribe:adt.>").await;
    let publisher = broker.active_client("Pub two", "publish:adt.>").await;
    let pt = broker.token(&publisher, None).await;
    // A non-zero head, so a subscription id could be confused with a seq.
    for i in 0..3 {
        broker.publish_http(&pt, "adt.warmup", &json!(i)).await;
    }
    let client = ConnectOptions::new()
        .token_source(source(&broker, &sub))
        .connect(&broker.base_url())
        .await
        .unwrap();
    let x = client.subscribe("adt.x").await.unwrap();
    let mut y = client.subscribe("adt.>").await.unwrap();
    drop(x);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = broker
        .publish_http(&pt, "adt.x", &json!("after drop"))
        .await;
    let e = next_event(&mut y).await;
    assert_eq!(e.seq, a.body["seq"].as_u64().unwrap());
}
