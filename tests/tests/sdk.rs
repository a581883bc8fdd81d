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

/// A client of `c` with a token source, connected to `broker`.
async fn connect(broker: &TestBroker, c: &scopecast_tests::TestClient) -> scopecast_client::Client {
    ConnectOptions::new()
        .token_source(source(broker, c))
        .connect(&broker.base_url())
        .await
        .unwrap()
}

/// Like [`connect`], with reconnect attempts at most `max_delay` apart.
async fn reconnecting(
    broker: &TestBroker,
    c: &scopecast_tests::TestClient,
    max_delay: Duration,
) -> scopecast_client::Client {
    ConnectOptions::new()
        .token_source(source(broker, c))
        .max_reconnect_delay(max_delay)
        .connect(&broker.base_url())
        .await
        .unwrap()
}

async fn next_event(sub: &mut scopecast_client::Subscription) -> scopecast_client::protocol::Event {
    match tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an item in time")
        .expect("open")
    {
        Item::Event(e) => e,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn forbidden_is_a_typed_error_naming_the_scope_and_streams_carry_events() {
    let broker = TestBroker::start(test_config()).await;
    let sub = broker
        .active_client("SDK sub", "subscribe:fhir.encounter.>")
        .await;
    let publisher = broker.active_client("SDK pub", "publish:fhir.>").await;
    let client = connect(&broker, &sub).await;
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
    let client = connect(&broker, &sub).await;
    let stream = client.subscribe("lab.>").await.unwrap();
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
        let mut stream = stream;
        let mut got = Vec::new();
        while let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await
        {
            match item {
                Item::Event(e) => got.push(e.seq),
                other => panic!("unexpected {other:?}"),
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
    let client = reconnecting(&broker, &sub, Duration::from_millis(500)).await;
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
    let client = connect(&broker, &sub).await;
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

/// Publishes `n` events to `topic` over HTTP; returns their seqs.
async fn publish_many(broker: &TestBroker, token: &str, topic: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        let a = broker.publish_http(token, topic, &json!({"i": i})).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        seqs.push(a.body["seq"].as_u64().unwrap());
    }
    seqs
}

/// Reads `n` events (and nothing else) from `sub`.
async fn read_events(sub: &mut scopecast_client::Subscription, n: usize) -> Vec<u64> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(next_event(sub).await.seq);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_subscription_stalls_nothing_and_later_gets_every_event_in_order() {
    let mut config = test_config();
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let app = broker
        .active_client("Slow reader", "subscribe:adt.> publish:adt.>")
        .await;
    let client = connect(&broker, &app).await;
    // Never read while 6,000 events (more than its 4,096-item buffer) go by.
    let mut unread = client.subscribe("adt.>").await.unwrap();
    let mut other = client.subscribe("adt.x").await.unwrap();
    let mut expected = Vec::new();
    for i in 0..6_000 {
        // Publishing on the same connection: every ack comes back while `unread` is full.
        let seq = tokio::time::timeout(
            Duration::from_secs(10),
            client.publish("adt.x", &json!({"i": i})),
        )
        .await
        .expect("an acknowledgement in time")
        .unwrap();
        expected.push(seq);
        if i % 500 == 0 {
            // The other subscription keeps flowing too.
            while next_event(&mut other).await.seq != seq {}
        }
    }
    assert_eq!(*client.state().borrow(), ConnectionState::Connected);
    // Now read: every event once, in order, the missed ones fetched from the history.
    assert_eq!(read_events(&mut unread, expected.len()).await, expected);
    // And it is live again afterwards.
    let seq = client.publish("adt.y", &json!("live")).await.unwrap();
    assert_eq!(next_event(&mut unread).await.seq, seq);
}

#[tokio::test]
async fn subscribe_since_replays_events_an_overlapping_subscription_already_received() {
    let mut config = test_config();
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let app = broker
        .active_client("Overlap", "subscribe:adt.> publish:adt.>")
        .await;
    let pt = broker.token(&app, None).await;
    let client = connect(&broker, &app).await;
    let mut wide = client.subscribe("adt.>").await.unwrap();
    let mut x = publish_many(&broker, &pt, "adt.x", 5).await;
    let y = publish_many(&broker, &pt, "adt.y", 3).await;
    let mut all = x.clone();
    all.extend(&y);
    assert_eq!(read_events(&mut wide, all.len()).await, all);
    // The connection already received these through `adt.>`; a new subscription from seq 0
    // gets them anyway, then live ones, with no duplicate.
    let mut narrow = client.subscribe_since("adt.x", Some(0)).await.unwrap();
    x.extend(publish_many(&broker, &pt, "adt.x", 2).await);
    assert_eq!(read_events(&mut narrow, x.len()).await, x);
    let seq = client.publish("adt.x", &json!("live")).await.unwrap();
    assert_eq!(next_event(&mut narrow).await.seq, seq);
    assert!(
        futures_util::FutureExt::now_or_never(narrow.next()).is_none(),
        "no duplicate"
    );
}

#[tokio::test]
async fn events_past_retention_are_one_gap_item_before_the_rest() {
    let mut config = test_config();
    config.limits.publish_rate_per_sec = 0;
    config.memory_log_events = 10;
    let broker = TestBroker::start(config).await;
    let app = broker
        .active_client("Late", "subscribe:adt.> publish:adt.>")
        .await;
    let pt = broker.token(&app, None).await;
    let seqs = publish_many(&broker, &pt, "adt.x", 25).await;
    let client = connect(&broker, &app).await;
    let mut sub = client.subscribe_since("adt.>", Some(0)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    let kept = &seqs[seqs.len() - 10..];
    assert_eq!(
        first,
        Item::Gap {
            from_seq: 1,
            to_seq: kept[0] - 1
        }
    );
    assert_eq!(read_events(&mut sub, kept.len()).await, kept);
}

#[tokio::test]
async fn a_subscription_the_admin_takes_away_ends_with_a_typed_item() {
    let broker = TestBroker::start(test_config()).await;
    let app = broker
        .create_app("Narrowed", "subscribe:adt.> subscribe:lab.>")
        .await;
    broker.activate(&app.non_production.client_id).await;
    let client = connect(&broker, &app.non_production).await;
    let mut adt = client.subscribe("adt.>").await.unwrap();
    let mut lab = client.subscribe("lab.>").await.unwrap();
    let a = broker
        .admin(
            reqwest::Method::PATCH,
            &format!("/applications/{}", app.id),
            Some(json!({"scope": "subscribe:lab.>"})),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let item = tokio::time::timeout(Duration::from_secs(10), adt.next())
        .await
        .unwrap();
    assert_eq!(
        item,
        Some(Item::Ended(SubscribeError::Forbidden {
            required_scope: "subscribe:adt.>".to_owned()
        }))
    );
    assert_eq!(adt.next().await, None, "nothing follows Ended");
    // The other subscription is untouched.
    assert!(futures_util::FutureExt::now_or_never(lab.next()).is_none());
    assert_eq!(*client.state().borrow(), ConnectionState::Connected);
}

#[tokio::test]
async fn deactivating_the_client_ends_every_subscription_with_client_inactive() {
    let broker = TestBroker::start(test_config()).await;
    let app = broker
        .active_client("Switched off", "subscribe:adt.>")
        .await;
    let client = connect(&broker, &app).await;
    let mut a = client.subscribe("adt.a").await.unwrap();
    let mut b = client.subscribe("adt.b").await.unwrap();
    broker.deactivate(&app.client_id).await;
    for sub in [&mut a, &mut b] {
        let item = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap();
        assert!(
            matches!(item, Some(Item::Ended(SubscribeError::ClientInactive(_)))),
            "{item:?}"
        );
        assert_eq!(sub.next().await, None);
    }
    assert!(matches!(
        *client.state().borrow(),
        ConnectionState::Closed(_)
    ));
}

/// A `subscribe` whose future is dropped after the command went out (a caller's `timeout`)
/// must not leave a subscription behind on the broker or in the SDK.
#[tokio::test]
async fn a_cancelled_subscribe_leaks_nothing() {
    let mut config = test_config();
    config.limits.max_subscriptions = 1;
    let broker = TestBroker::start(config).await;
    let app = broker.active_client("Cancel", "subscribe:adt.>").await;
    let client = connect(&broker, &app).await;
    // Polled once: the command is queued, the reply is not there yet; then dropped.
    assert!(futures_util::FutureExt::now_or_never(client.subscribe("adt.a")).is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Nobody holds a Subscription, so the connection should hold no subscription either.
    match client.subscribe("adt.b").await {
        Ok(_) => {}
        Err(e) => panic!("the cancelled subscribe still holds the only slot: {e:?}"),
    }
}

/// A client whose credentials are refused for good (its secret was rotated) must end its
/// streams, not reconnect forever in `Connecting` with every subscription silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_end_the_streams_instead_of_retrying_forever() {
    let mut config = test_config();
    config.oauth.token_lifetime_s = 5;
    config.oauth.leeway_s = 0;
    config.limits.token_warning_ms = 2_000;
    let broker = TestBroker::start(config).await;
    let app = broker.active_client("Rotated", "subscribe:adt.>").await;
    let client = reconnecting(&broker, &app, Duration::from_millis(500)).await;
    let mut sub = client.subscribe("adt.>").await.unwrap();
    let a = broker
        .admin(
            reqwest::Method::POST,
            &format!("/clients/{}/rotate-secret", app.client_id),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    // The token expires within 5 s; no new one can be had with the old secret.
    let item = tokio::time::timeout(Duration::from_secs(25), sub.next()).await;
    let state = client.state().borrow().clone();
    assert!(
        matches!(item, Ok(Some(Item::Ended(_)))),
        "25 s after the secret was rotated: item {item:?}, state {state:?}"
    );
}

/// With a fixed token, expiry (close 4002) should end the streams with `TokenExpired`, the
/// variant documented for it.
#[tokio::test]
async fn a_fixed_token_that_expires_ends_with_token_expired() {
    let mut config = test_config();
    config.oauth.token_lifetime_s = 5;
    config.oauth.leeway_s = 0;
    config.limits.token_warning_ms = 2_000;
    let broker = TestBroker::start(config).await;
    let app = broker.active_client("Fixed", "subscribe:adt.>").await;
    let token = broker.token(&app, None).await;
    let client = ConnectOptions::new()
        .token(&token)
        .max_reconnect_delay(Duration::from_millis(500))
        .connect(&broker.base_url())
        .await
        .unwrap();
    let mut sub = client.subscribe("adt.>").await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .unwrap();
    assert_eq!(item, Some(Item::Ended(SubscribeError::TokenExpired)));
}

/// After a restart of a broker whose head went back (memory log), the SDK must not drop every
/// event silently until `seq` passes the old one: deliver them, or say so.
/// A memory log starts again at every restart: its `log_epoch` changes, and the SDK ends the
/// subscription rather than resuming from a `seq` that names nothing in the new log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_log_is_not_silently_resumed_into() {
    let mut config = test_config();
    config.limits.publish_rate_per_sec = 0;
    let mut broker = TestBroker::start(config).await;
    let app = broker
        .active_client("Memory", "subscribe:adt.> publish:adt.>")
        .await;
    let client = reconnecting(&broker, &app, Duration::from_millis(500)).await;
    let mut sub = client.subscribe("adt.>").await.unwrap();
    let pt = broker.token(&app, None).await;
    let before = publish_many(&broker, &pt, "adt.x", 20).await;
    assert_eq!(read_events(&mut sub, 20).await, before);
    broker.restart().await;
    let item = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
    match item {
        Ok(Some(Item::Ended(SubscribeError::LogReplaced(why)))) => {
            assert!(why.contains("log_epoch"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(*client.state().borrow(), ConnectionState::Closed(_)),
        "the client stops instead of resuming into another log"
    );
}

/// Nothing follows `Ended`, even when the subscription ends while a catch-up task is pushing
/// a history page on another worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_follows_ended_during_a_catch_up() {
    let mut config = test_config();
    config.limits.publish_rate_per_sec = 0;
    let broker = TestBroker::start(config).await;
    let app = broker
        .create_app("Race", "subscribe:adt.> publish:adt.>")
        .await;
    broker.activate(&app.non_production.client_id).await;
    let c = app.non_production.clone();
    let publisher = connect(&broker, &c).await;
    let big = "x".repeat(4_000);
    let mut n = 0;
    while n < 8_000 {
        let futs: Vec<_> = (0..500)
            .map(|i| {
                let p = publisher.clone();
                let v = json!({"i": i, "pad": big});
                async move { p.publish("adt.x", &v).await }
            })
            .collect();
        for r in futures_util::future::join_all(futs).await {
            r.unwrap();
        }
        n += 500;
    }
    for trial in 0..5u64 {
        let client = connect(&broker, &c).await;
        let mut sub = client.subscribe_since("adt.>", Some(0)).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut after_ended = 0usize;
            let mut ended = false;
            while let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_secs(30), sub.next()).await
            {
                match item {
                    Item::Ended(_) => ended = true,
                    _ if ended => after_ended += 1,
                    _ => {}
                }
            }
            (ended, after_ended)
        });
        tokio::time::sleep(Duration::from_millis(100 + trial * 37)).await;
        let a = broker
            .admin(
                reqwest::Method::PATCH,
                &format!("/applications/{}", app.id),
                Some(json!({"scope": "publish:adt.>"})),
            )
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        let (ended, after) = reader.await.unwrap();
        assert!(ended, "trial {trial}: no Ended");
        assert_eq!(after, 0, "trial {trial}: {after} items after Ended");
        let a = broker
            .admin(
                reqwest::Method::PATCH,
                &format!("/applications/{}", app.id),
                Some(json!({"scope": "subscribe:adt.> publish:adt.>"})),
            )
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        drop(client);
    }
}

/// Held-up check: a reconnect while a full subscription catches up, plus a same-pattern twin
/// dropped mid-way, loses and duplicates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_during_catch_up_keeps_order() {
    let mut config = test_config();
    config.log = LogMode::Durable;
    config.limits.publish_rate_per_sec = 0;
    let mut broker = TestBroker::start(config).await;
    let app = broker
        .active_client("Reconnect catch-up", "subscribe:adt.> publish:adt.>")
        .await;
    let client = reconnecting(&broker, &app, Duration::from_millis(300)).await;
    let mut unread = client.subscribe("adt.>").await.unwrap();
    let mut twin = Some(client.subscribe("adt.>").await.unwrap());
    let mut expected = Vec::new();
    for chunk in 0..12 {
        let futs: Vec<_> = (0..500)
            .map(|i| {
                let c = client.clone();
                async move { c.publish("adt.x", &json!({"i": i})).await }
            })
            .collect();
        for r in futures_util::future::join_all(futs).await {
            expected.push(r.unwrap());
        }
        if chunk == 6 {
            twin.take();
        }
    }
    expected.sort_unstable();
    // Read a little, so a catch-up is running, then restart.
    let mut got = read_events(&mut unread, 100).await;
    broker.restart().await;
    let pt = broker.token(&app, None).await;
    expected.extend(publish_many(&broker, &pt, "adt.y", 50).await);
    while got.len() < expected.len() {
        got.push(next_event(&mut unread).await.seq);
    }
    assert_eq!(got, expected);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), unread.next())
            .await
            .is_err(),
        "no duplicate"
    );
}
