//! Cluster mode end to end (issue 16): broker nodes sharing a real 3-node JetStream cluster
//! (`nats-server -js` with routes) and a real PostgreSQL, both started by the tests on
//! loopback ports. Each scenario ends with a read-back audit of the stream: every
//! acknowledged event present exactly once, `seq` strictly increasing for every reader,
//! messages = last - first + 1.
//!
//! Fault scenarios hold the write lock of `cluster::faults()` (through `exclusive_faults`, which
//! heals the shared NATS cluster when the scenario ends, passed or failed); the others its read
//! lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use scopecast_testkit::NatsCluster;
use scopecast_tests::cluster::{
    PUBLIC_URL, TestCluster, eventually, exclusive_faults, faults, readyz,
};
use scopecast_tests::keys::{TestKey, assertion};
use scopecast_tests::ws::{Ended, Ws};
use scopecast_tests::{TestBroker, TestClient, WAIT};
use serde_json::{Value, json};

const SCOPE: &str = "subscribe:lab.> publish:lab.>";

/// An active client with `SCOPE`, registered through node `a`.
async fn client(cluster: &TestCluster, name: &str) -> TestClient {
    cluster.node('a').active_client(name, SCOPE).await
}

/// Connects to `node` and subscribes to `pattern` (optionally from `since`); returns the
/// socket and the `subscribed` frame.
async fn subscriber(
    node: &TestBroker,
    token: &str,
    pattern: &str,
    since: Option<u64>,
) -> (Ws, Value) {
    let (mut ws, _) = Ws::connect(node, token).await;
    let mut frame = json!({"type": "subscribe", "id": "s", "topic": pattern});
    if let Some(s) = since {
        frame["since"] = json!({"seq": s});
    }
    ws.send(frame).await;
    let (_, answer) = ws.recv_answer("s").await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    (ws, answer)
}

/// Reads `n` events from `ws`: their `(seq, event_id)` in arrival order.
async fn read_events(ws: &mut Ws, n: usize, within: Duration) -> Vec<(u64, String)> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(f) = ws.recv_within(left).await else {
            panic!("only {} of {n} events within {within:?}", out.len());
        };
        match f["type"].as_str() {
            Some("event") => out.push((
                f["seq"].as_u64().expect("seq"),
                f["id"].as_str().unwrap_or_default().to_owned(),
            )),
            Some("gap") => panic!("unexpected gap: {f}"),
            _ => {}
        }
    }
    out
}

/// Publishes `count` events over one WebSocket to `node`, `window` at a time; returns the
/// `(seq, event_id)` of each acknowledgement, in `seq` order.
async fn publish_many(
    node: &TestBroker,
    token: &str,
    prefix: &str,
    count: usize,
    window: usize,
) -> Vec<(u64, String)> {
    let (mut ws, _) = Ws::connect(node, token).await;
    let mut acks = Vec::with_capacity(count);
    let mut sent = 0;
    while sent < count {
        let n = window.min(count - sent);
        for i in sent..sent + n {
            ws.send(
                json!({"type": "publish", "id": format!("p{i}"), "topic": "lab.result",
                           "event_id": format!("{prefix}-{i}"), "data": {"n": i}}),
            )
            .await;
        }
        for _ in 0..n {
            let f = ws.recv().await;
            assert_eq!(f["type"], "published", "{f}");
            acks.push((
                f["seq"].as_u64().expect("seq"),
                f["event_id"].as_str().expect("id").to_owned(),
            ));
        }
        sent += n;
    }
    ws.close().await;
    // In seq order: what a subscriber sees (a publish retried under load is stored after
    // those sent behind it).
    acks.sort();
    acks
}

/// The read-back audit: the stream holds `first..=last` without a hole, and each id in
/// `acked` exactly once, at the `seq` it was acknowledged with.
async fn audit(cluster: &TestCluster, acked: &[(u64, String)]) {
    // Right after a fault a server that was paused may still answer reads as the leader it
    // was, from its own copy, until it learns of the new term: a mismatch is read again after
    // the cluster has settled, and only one that stays is a failure (a lost event stays lost).
    for attempt in 1..=3 {
        let highest = acked.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        let contents = cluster.stream_contents(highest).await;
        let mut by_id: HashMap<&str, Vec<u64>> = HashMap::new();
        for (seq, _, id) in &contents {
            by_id.entry(id.as_str()).or_default().push(*seq);
        }
        let holes = match (contents.first(), contents.last()) {
            (Some(first), Some(last)) => contents.len() as u64 != last.0 - first.0 + 1,
            _ => false,
        };
        let wrong: Vec<String> = acked
            .iter()
            .filter(|(seq, id)| by_id.get(id.as_str()) != Some(&vec![*seq]))
            .map(|(seq, id)| {
                let here = contents.iter().find(|c| c.0 == *seq);
                format!(
                    "{id} acknowledged at {seq}: stored at {:?}; at {seq} the stream has {here:?}",
                    by_id.get(id.as_str())
                )
            })
            .collect();
        if !holes && wrong.is_empty() {
            return;
        }
        assert!(
            attempt < 3,
            "read-back audit: holes {holes}, acknowledged events not stored once at their seq: {wrong:?}"
        );
        eprintln!("read-back audit {attempt}: {wrong:?} (holes {holes}); reading again");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_delivers_every_event_once_in_the_same_order() {
    let _shared = faults().read().await;
    let cluster = TestCluster::start(3, 3).await;
    // Readiness names the node and says how durable acknowledged events are.
    for name in ['a', 'b', 'c'] {
        let (status, body) = readyz(cluster.node(name)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["node"], name.to_string());
        assert_eq!(body["durability"]["replicas"], 3);
        let version = body["durability"]["server_version"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // Debian's 2.9.10 by default; CI runs this binary again on a 2.15 server.
        if version.starts_with("2.9.") {
            assert_eq!(body["durability"]["degraded"], true, "{body}");
            assert_eq!(
                body["durability"]["reasons"],
                json!(["lazy_fsync", "server_before_2_11"])
            );
        } else if version.starts_with("2.1") {
            assert_eq!(body["durability"]["degraded"], false, "{body}");
            assert_eq!(body["durability"]["reasons"], json!([]));
        }
    }
    let metrics = cluster.node('b').metrics().await;
    assert!(
        metrics.contains("node=\"b\""),
        "metrics say which node they come from"
    );

    let app = client(&cluster, "Fan-out").await;
    let token = cluster.node('a').token(&app, None).await;
    // 30 subscribers, 10 per node.
    let mut subs = Vec::new();
    for i in 0..30 {
        let node = &cluster.nodes[i % 3];
        subs.push(subscriber(node, &token, "lab.>", None).await.0);
    }
    const EVENTS: usize = 10_000;
    let per_node = EVENTS / 3 + 1;
    let mut publishers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let token = token.clone();
        let count = if i < 2 {
            per_node
        } else {
            EVENTS - 2 * per_node
        };
        publishers
            .push(async move { publish_many(node, &token, &format!("fan{i}"), count, 200).await });
    }
    let readers = subs
        .iter_mut()
        .map(|ws| read_events(ws, EVENTS, Duration::from_secs(120)));
    let (acks, seen) = tokio::join!(
        futures_util::future::join_all(publishers),
        futures_util::future::join_all(readers)
    );
    let acked: Vec<(u64, String)> = acks.into_iter().flatten().collect();
    assert_eq!(acked.len(), EVENTS);
    let mut by_seq: BTreeMap<u64, String> = BTreeMap::new();
    for (seq, id) in &acked {
        assert!(
            by_seq.insert(*seq, id.clone()).is_none(),
            "seq {seq} acknowledged twice"
        );
    }
    let expected: Vec<(u64, String)> = by_seq.into_iter().collect();
    for (i, got) in seen.iter().enumerate() {
        assert_eq!(
            got,
            &expected,
            "subscriber {i} (node {}) got every event once, in seq order",
            i % 3
        );
    }
    audit(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_on_another_node_without_gap_or_duplicate() {
    let _shared = faults().read().await;
    let cluster = TestCluster::start(2, 3).await;
    let app = client(&cluster, "Resume").await;
    let token = cluster.node('a').token(&app, None).await;
    let (mut ws, _) = subscriber(cluster.node('a'), &token, "lab.>", None).await;
    let first = publish_many(cluster.node('b'), &token, "r1", 50, 50).await;
    let got = read_events(&mut ws, 50, WAIT).await;
    assert_eq!(got, first);
    ws.close().await;
    let last_seen = got.last().expect("events").0;
    // While away, more events arrive through both nodes.
    let mut second = publish_many(cluster.node('a'), &token, "r2", 30, 30).await;
    second.extend(publish_many(cluster.node('b'), &token, "r3", 30, 30).await);
    let (mut ws, subscribed) =
        subscriber(cluster.node('b'), &token, "lab.>", Some(last_seen)).await;
    assert_eq!(
        subscribed["replay"]["from_seq"],
        last_seen + 1,
        "{subscribed}"
    );
    assert_eq!(subscribed["replay"]["truncated"], false);
    let mut third = publish_many(cluster.node('a'), &token, "r4", 20, 20).await;
    let resumed = read_events(&mut ws, 80, WAIT).await;
    second.append(&mut third);
    assert_eq!(
        resumed, second,
        "replay then live, no gap, no duplicate at the join"
    );
    assert!(ws.recv_within(Duration::from_millis(300)).await.is_none());
    ws.close().await;
    // Resuming on b at the seq a has just acknowledged: b's fan-out may not have reached it
    // yet, and must not deliver what the client already has once it does.
    // Both connections are open before the publish, and the subscribe goes out the moment
    // the acknowledgement comes, so it races b's fan-out.
    let (mut publisher, _) = Ws::connect(cluster.node('a'), &token).await;
    for round in 0..20 {
        let (mut ws, _) = Ws::connect(cluster.node('b'), &token).await;
        let id = format!("h{round}");
        let ack = publisher
            .publish(&id, "lab.result", json!({"round": round}))
            .await;
        assert_eq!(ack["type"], "published", "{ack}");
        let head = ack["seq"].as_u64().expect("seq");
        ws.send(json!({"type": "subscribe", "id": "s", "topic": "lab.>",
                       "since": {"seq": head}}))
            .await;
        let (_, answer) = ws.recv_answer("s").await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        let next = publish_many(cluster.node('a'), &token, &format!("n{round}"), 1, 1).await;
        let got = read_events(&mut ws, 1, WAIT).await;
        assert_eq!(got, next, "round {round}: the first event after {head}");
        ws.close().await;
        second.push((head, ack["event_id"].as_str().expect("id").to_owned()));
        second.extend(next);
    }
    publisher.close().await;
    // The log's identity is the same on every node.
    let (_, wa) = Ws::connect(cluster.node('a'), &token).await;
    let (_, wb) = Ws::connect(cluster.node('b'), &token).await;
    assert_eq!(wa["log_epoch"], wb["log_epoch"]);
    assert!(
        wa["log_epoch"]
            .as_str()
            .unwrap_or_default()
            .starts_with("jetstream:")
    );
    let mut acked = first;
    acked.extend(second);
    acked.sort();
    audit(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_below_the_retained_head_gets_an_explicit_gap_then_the_retained_events() {
    let _shared = faults().read().await;
    let cluster = TestCluster::start_with(2, 3, |c| c.retention.max_events = 20).await;
    let app = client(&cluster, "Retention").await;
    let token = cluster.node('a').token(&app, None).await;
    let acked = publish_many(cluster.node('a'), &token, "old", 50, 50).await;
    let last = acked.last().expect("events").0;
    let first_kept = last - 19;
    let (mut ws, _) = Ws::connect(cluster.node('b'), &token).await;
    ws.send(json!({"type": "subscribe", "id": "s", "topic": "lab.>", "since": {"seq": 3}}))
        .await;
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["replay"]["truncated"], true);
    assert_eq!(subscribed["replay"]["from_seq"], first_kept);
    let gap = ws.recv().await;
    assert_eq!(
        gap,
        json!({"type": "gap", "id": "s", "from_seq": 4, "to_seq": first_kept - 1}),
        "an explicit gap before the replay, never silence"
    );
    let replayed = read_events(&mut ws, 20, WAIT).await;
    assert_eq!(replayed, acked[30..].to_vec(), "replayed {replayed:?}");
    audit(&cluster, &acked[30..]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_one_event_across_nodes() {
    let _shared = faults().read().await;
    let cluster = TestCluster::start(2, 3).await;
    let app = client(&cluster, "Idempotent").await;
    let token = cluster.node('a').token(&app, None).await;
    let publish = |node: &TestBroker, body: Value| {
        let req = node
            .http_client()
            .post(node.http_url("/v1/events/lab.result"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("idempotency-key", "order-77")
            .body(body.to_string());
        async move {
            let r = req.send().await.expect("publish");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s1, a1) = publish(cluster.node('a'), json!({"v": 1})).await;
    assert_eq!(s1, 201, "{a1}");
    assert_eq!(a1["duplicate"], false);
    let (s2, a2) = publish(cluster.node('b'), json!({"v": 1})).await;
    assert!(s2 == 200 || s2 == 201, "{a2}");
    assert_eq!(a2["duplicate"], true, "{a2}");
    assert_eq!(a2["seq"], a1["seq"]);
    let (s3, a3) = publish(cluster.node('b'), json!({"v": 2})).await;
    assert_eq!(s3, 409, "same key, other body: {a3}");
    let contents = cluster.stream_contents(0).await;
    assert_eq!(
        contents
            .iter()
            .filter(|(_, _, id)| id == "order-77")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_nats_is_refused_at_the_front_end() {
    // The test servers keep NATS's default max_payload (1 MiB), as large as the default body
    // limit: each node lowers its limits to 1 MiB less 8 KiB of header room at start.
    let _shared = faults().read().await;
    let cluster = TestCluster::start(1, 3).await;
    let app = client(&cluster, "Large").await;
    let node = cluster.node('a');
    let token = node.token(&app, None).await;
    let send = |len: usize| {
        let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(len));
        let req = node
            .http_client()
            .post(node.http_url("/v1/events/lab.result"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body);
        async move { req.send().await.expect("publish").status().as_u16() }
    };
    assert_eq!(
        send((1 << 20) - 6 * 1024).await,
        413,
        "over max_payload less 8 KiB"
    );
    assert_eq!(send((1 << 20) - 12 * 1024).await, 201, "under it");
    let (mut ws, _) = Ws::connect(node, &token).await;
    ws.send(
        json!({"type": "publish", "id": "big", "topic": "lab.result",
                   "data": {"pad": "x".repeat((1 << 20) - 6 * 1024)}}),
    )
    .await;
    let (_, ended) = ws.until_closed(WAIT).await;
    assert!(
        matches!(ended, Ended::Close(1009, _)),
        "a frame over the lowered limit: {ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keys_and_assertions_are_the_same_on_every_node() {
    let _shared = faults().read().await;
    let cluster = TestCluster::start(3, 3).await;
    let (a, b, c) = (cluster.node('a'), cluster.node('b'), cluster.node('c'));
    let jwks_kids = |node: &TestBroker| {
        let req = node
            .http_client()
            .get(node.http_url("/.well-known/jwks.json"));
        async move {
            let jwks: Value = req.send().await.expect("jwks").json().await.expect("JSON");
            jwks["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .map(|k| k["kid"].as_str().unwrap_or_default().to_owned())
                .collect::<HashSet<String>>()
        }
    };
    let before = jwks_kids(a).await;
    assert_eq!(
        before,
        jwks_kids(b).await,
        "every node serves the same JWK Set"
    );
    assert_eq!(before, jwks_kids(c).await);
    // A token issued by node a works on b.
    let app = client(&cluster, "Tokens").await;
    let token = a.token(&app, None).await;
    let (_, welcome) = Ws::connect(b, &token).await;
    assert_eq!(welcome["client_id"], app.client_id.as_str());
    // A rotation on a is served by c within 1 s, and c's tokens verify on a.
    let rotated = a.admin(Method::POST, "/keys/rotate", None).await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let kid = rotated.body["kid"].as_str().expect("kid").to_owned();
    let started = Instant::now();
    eventually(
        Duration::from_secs(1),
        "node c serves the rotated key",
        || {
            let kid = kid.clone();
            async move { jwks_kids(c).await.contains(&kid) }
        },
    )
    .await;
    let elapsed = started.elapsed();
    let from_c = c.token(&app, None).await;
    let header = jsonwebtoken::decode_header(&from_c).expect("a JWS");
    assert_eq!(
        header.kid.as_deref(),
        Some(kid.as_str()),
        "c signs with the new key ({elapsed:?})"
    );
    let (_, welcome) = Ws::connect(a, &from_c).await;
    assert_eq!(welcome["type"], "welcome");
    // The token from before the rotation still works (its key stays published).
    let (_, welcome) = Ws::connect(c, &token).await;
    assert_eq!(welcome["type"], "welcome");
    // A client assertion is accepted once by the whole deployment.
    let key = TestKey::es256("cluster-1");
    let jwt = a.active_client("Assertions", SCOPE).await;
    let set = a
        .admin(
            Method::PUT,
            &format!("/clients/{}/keys", jwt.client_id),
            Some(json!({"jwks": key.jwks()})),
        )
        .await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    let signed = assertion(
        &key,
        &jwt.client_id,
        &format!("{PUBLIC_URL}/oauth2/token"),
        120,
    );
    let form = [
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", signed.as_str()),
    ];
    let first = b.token_request(&form, None).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let replay = c.token_request(&form, None).await;
    assert_eq!(replay.status, 401, "{:?}", replay.body);
    assert_eq!(replay.body["error"], "invalid_client");
    assert!(
        replay.body["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("already used"),
        "{:?}",
        replay.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivation_closes_sessions_on_every_node_within_a_second() {
    let _shared = faults().read().await;
    let cluster = TestCluster::start(3, 3).await;
    let app = client(&cluster, "Revoked").await;
    let token = cluster.node('a').token(&app, None).await;
    let (mut on_b, _) = subscriber(cluster.node('b'), &token, "lab.>", None).await;
    let (mut on_c, _) = subscriber(cluster.node('c'), &token, "lab.>", None).await;
    let started = Instant::now();
    cluster.node('a').deactivate(&app.client_id).await;
    let (closed_b, closed_c) = tokio::join!(
        on_b.until_closed(Duration::from_secs(2)),
        on_c.until_closed(Duration::from_secs(2))
    );
    let elapsed = started.elapsed();
    assert!(
        matches!(closed_b.1, Ended::Close(4003, _)),
        "{:?}",
        closed_b.1
    );
    assert!(
        matches!(closed_c.1, Ended::Close(4003, _)),
        "{:?}",
        closed_c.1
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "closed on every node within 1 s (took {elapsed:?})"
    );
    // And the token is refused everywhere now.
    for node in &cluster.nodes {
        let refused = Ws::try_connect(node, Some(&token), "/v1/stream").await;
        assert!(refused.is_err(), "node refuses the deactivated client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_stream_leader_loses_no_acknowledged_event() {
    let _exclusive = exclusive_faults().await;
    let nats = NatsCluster::shared();
    let cluster = TestCluster::start(3, 3).await;
    let app = client(&cluster, "Failover").await;
    let token = cluster.node('a').token(&app, None).await;
    // One subscriber per node sees every event, in order, with no hole.
    let mut subs = Vec::new();
    for node in &cluster.nodes {
        subs.push(subscriber(node, &token, "lab.>", None).await.0);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let req = node.http_client().clone();
        let url = node.http_url("/v1/events/lab.result");
        let (token, stop) = (token.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut refused_from: Option<Instant> = None;
            let mut longest_refusal = Duration::ZERO;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("k{i}-{n}");
                let sent = Instant::now();
                let r = req
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .header("idempotency-key", &id)
                    .body(json!({"n": n}).to_string())
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 200 => {
                        // An answer held back by the retries of an election counts as an outage.
                        longest_refusal = longest_refusal.max(sent.elapsed());
                        let body: Value = r.json().await.expect("JSON");
                        acked.push((body["seq"].as_u64().expect("seq"), id));
                        if let Some(from) = refused_from.take() {
                            longest_refusal = longest_refusal.max(from.elapsed());
                        }
                        n += 1;
                    }
                    Ok(r) => {
                        // 503 log_unavailable (or an unknown outcome): retried with the same key.
                        let status = r.status().as_u16();
                        assert!(status == 503, "publish answered {status}");
                        refused_from.get_or_insert(sent);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("publish failed: {e}"),
                }
            }
            (acked, longest_refusal)
        }));
    }
    // And one WebSocket publisher with up to 200 publishes in flight: a session waits for its
    // oldest answer first, so the log must retry every unanswered publish at once, not one
    // after the other (that took 30 s after an election of 6 s).
    let pipelined = {
        let (mut ws, _) = Ws::connect(cluster.node('a'), &token).await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut waiting: HashMap<String, Instant> = HashMap::new();
            let (mut acked, mut longest, mut n) = (Vec::new(), Duration::ZERO, 0u64);
            let mut next = Instant::now();
            let mut stopped_at: Option<Instant> = None;
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let at = *stopped_at.get_or_insert_with(Instant::now);
                    if waiting.is_empty() {
                        break;
                    }
                    assert!(
                        at.elapsed() < Duration::from_secs(60),
                        "answers within 60 s"
                    );
                } else if waiting.len() < 200 && Instant::now() >= next {
                    let id = format!("w-{n}");
                    ws.send(json!({"type": "publish", "id": id, "topic": "lab.result",
                                   "event_id": id, "data": {"n": n}}))
                        .await;
                    waiting.insert(id, Instant::now());
                    n += 1;
                    next += Duration::from_millis(5);
                    continue;
                }
                let Some(f) = ws.recv_within(Duration::from_millis(5)).await else {
                    continue;
                };
                assert_eq!(f["type"], "published", "{f}");
                let id = f["id"].as_str().expect("id").to_owned();
                let sent = waiting
                    .remove(&id)
                    .expect("an answer to a publish in flight");
                longest = longest.max(sent.elapsed());
                acked.push((f["seq"].as_u64().expect("seq"), id));
            }
            (acked, longest)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = nats
        .stream_leader(&cluster.stream)
        .await
        .expect("a stream leader");
    nats.node(&leader).kill9();
    tokio::time::sleep(Duration::from_secs(12)).await;
    nats.node(&leader).start();
    nats.wait_for_jetstream(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for p in publishers {
        let (mine, longest) = p.await.expect("publisher");
        eprintln!(
            "publisher: {} acknowledged, longest wait for an acknowledgement {longest:?} (leader {leader} killed)",
            mine.len()
        );
        assert!(!mine.is_empty());
        assert!(
            longest < Duration::from_secs(10),
            "publishing resumed within 10 s (waited {longest:?})"
        );
        acked.extend(mine);
    }
    let (mine, longest) = pipelined.await.expect("pipelined publisher");
    eprintln!(
        "pipelined publisher: {} acknowledged, longest wait for an acknowledgement {longest:?}",
        mine.len()
    );
    assert!(
        longest < Duration::from_secs(10),
        "a window of 200 publishes was answered within 10 s (waited {longest:?})"
    );
    acked.extend(mine);
    acked.sort();
    audit(&cluster, &acked).await;
    // Every node's fan-out delivered every acknowledged event in order, with no hole.
    let last = acked.last().expect("events").0;
    for (i, ws) in subs.iter_mut().enumerate() {
        let mut seen: Vec<u64> = Vec::new();
        while seen.last().copied().unwrap_or(0) < last {
            let f = ws
                .recv_within(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| {
                    panic!("node {i}'s fan-out stopped at {:?} of {last}", seen.last())
                });
            match f["type"].as_str() {
                Some("event") => seen.push(f["seq"].as_u64().expect("seq")),
                Some("gap") => panic!("node {i}: gap {f}"),
                _ => {}
            }
        }
        assert!(
            seen.windows(2).all(|w| w[1] == w[0] + 1),
            "node {i}: seq strictly increasing without a hole"
        );
        let acked_seqs: HashSet<u64> = acked.iter().map(|a| a.0).collect();
        assert!(
            acked_seqs.iter().all(|s| seen.contains(s) || *s < seen[0]),
            "node {i} delivered every acknowledged event"
        );
    }
}

/// Publishes over HTTP through `node` with an idempotency key; the status and body.
async fn publish_keyed(
    node: &TestBroker,
    token: &str,
    key: &str,
    within: Duration,
) -> (u16, Value) {
    let r = node
        .http_client()
        .post(node.http_url("/v1/events/lab.result"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(json!({"key": key}).to_string())
        .timeout(within)
        .send()
        .await
        .expect("publish answered within its deadline");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_and_a_hung_nats_node_are_short_outages() {
    let _exclusive = exclusive_faults().await;
    let nats = NatsCluster::shared();
    let cluster = TestCluster::start(3, 3).await;
    let app = client(&cluster, "Outages").await;
    let token = cluster.node('a').token(&app, None).await;
    let mut acked = Vec::new();
    // SIGTERM of the stream leader: it hands leadership over; publishing pauses under 2 s.
    let leader = nats.stream_leader(&cluster.stream).await.expect("a leader");
    nats.node(&leader).terminate();
    let mut longest = Duration::ZERO;
    for i in 0..40 {
        let started = Instant::now();
        let (status, body) = publish_keyed(
            cluster.node('b'),
            &token,
            &format!("t{i}"),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        longest = longest.max(started.elapsed());
        acked.push((body["seq"].as_u64().expect("seq"), format!("t{i}")));
    }
    eprintln!("SIGTERM of the stream leader {leader}: longest publish {longest:?}");
    assert!(
        longest < Duration::from_secs(2),
        "outage under 2 s after SIGTERM (took {longest:?})"
    );
    nats.node(&leader).start();
    nats.wait_for_jetstream(Duration::from_secs(30));
    // SIGSTOP of the NATS node node `c` is connected to, for 30 s: node c moves to another
    // server within about 10 s, and no publish hangs past its deadline (15 s of retries).
    let (_, ready) = readyz(cluster.node('c')).await;
    let hung = ready["nats_server"]
        .as_str()
        .expect("nats_server")
        .to_owned();
    nats.node(&hung).pause();
    let paused_at = Instant::now();
    // When node c's connection moves, watched on its own (a publish in flight when the server
    // hung may take its retry window to be answered: that is not the move).
    let moved_flag = std::sync::atomic::AtomicBool::new(false);
    let watch = async {
        while paused_at.elapsed() < Duration::from_secs(30) {
            let (_, ready) = readyz(cluster.node('c')).await;
            if ready["nats_server"].as_str().is_some_and(|s| s != hung) {
                moved_flag.store(true, std::sync::atomic::Ordering::Release);
                return Some(paused_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    };
    let publish = async {
        let mut i = 0;
        while paused_at.elapsed() < Duration::from_secs(30) {
            let started = Instant::now();
            let (status, body) = publish_keyed(
                cluster.node('c'),
                &token,
                &format!("h{i}"),
                Duration::from_secs(20),
            )
            .await;
            assert!(
                started.elapsed() < Duration::from_secs(18),
                "a publish hung {:?}",
                started.elapsed()
            );
            match status {
                201 => {
                    acked.push((body["seq"].as_u64().expect("seq"), format!("h{i}")));
                    i += 1;
                }
                503 => tokio::time::sleep(Duration::from_millis(200)).await,
                other => panic!("publish answered {other}: {body}"),
            }
            if moved_flag.load(std::sync::atomic::Ordering::Acquire) && i > 20 {
                break;
            }
        }
    };
    let (moved, ()) = tokio::join!(watch, publish);
    eprintln!("SIGSTOP of {hung}: node c on another server after {moved:?}");
    let moved = moved.expect("node c moved to another NATS server");
    assert!(
        moved < Duration::from_secs(15),
        "moved within about 10 s (took {moved:?})"
    );
    nats.node(&hung).resume();
    nats.wait_for_jetstream(Duration::from_secs(30));
    audit(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_two_of_three_nats_nodes_refuses_publishes_and_loses_nothing() {
    let _exclusive = exclusive_faults().await;
    let nats = NatsCluster::shared();
    let cluster = TestCluster::start(2, 3).await;
    let app = client(&cluster, "Quorum").await;
    let token = cluster.node('a').token(&app, None).await;
    let mut acked = publish_many(cluster.node('a'), &token, "before", 20, 20).await;
    // Keep the node node `a` is connected to; kill the two others.
    let (_, ready) = readyz(cluster.node('a')).await;
    let kept = ready["nats_server"]
        .as_str()
        .expect("nats_server")
        .to_owned();
    let killed: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != kept)
        .collect();
    for n in &killed {
        nats.node(n).kill9();
    }
    let down_at = Instant::now();
    // Without quorum: refused with log_unavailable (after the retries), never acknowledged.
    let (status, body) =
        publish_keyed(cluster.node('a'), &token, "during", Duration::from_secs(20)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "log_unavailable", "{body}");
    assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
    let (ready_status, _) = readyz(cluster.node('a')).await;
    assert_eq!(
        ready_status, 503,
        "not ready while the log cannot be written"
    );
    let left = Duration::from_secs(15).saturating_sub(down_at.elapsed());
    tokio::time::sleep(left).await;
    for n in &killed {
        nats.node(n).start();
    }
    let back_at = Instant::now();
    // When JetStream itself takes writes for this stream again, through the NATS server the
    // broker is connected to: a probe publishes a message that is not an event and reads it
    // back, beside the broker's publishes (the elections after a majority returns took
    // 0.005-22 s on 2.9.10, and no client hurries them).
    let js_back = {
        let stream = cluster.stream.clone();
        let via = nats.node(&kept).url();
        let subject = format!("{}.probe", cluster.config.cluster.subject_prefix);
        tokio::spawn(async move {
            while back_at.elapsed() < Duration::from_secs(60) {
                let nats = NatsCluster::shared();
                if nats.stream_round_trip(&via, &stream, &subject).await {
                    return Some(back_at.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        })
    };
    // Recovers by itself once JetStream has quorum again; the refused key may or may not be
    // stored (its outcome was unknown): a retry with it answers either way, once.
    let mut recovered = None;
    while back_at.elapsed() < Duration::from_secs(60) {
        let (status, body) =
            publish_keyed(cluster.node('a'), &token, "during", Duration::from_secs(20)).await;
        if status == 201 || status == 200 {
            acked.push((body["seq"].as_u64().expect("seq"), "during".to_owned()));
            recovered = Some(back_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let js_back = js_back.await.expect("the JetStream probe");
    eprintln!(
        "2 of 3 NATS nodes down for 15 s: after they came back JetStream took writes for the \
         stream after {js_back:?}, the broker published again after {recovered:?}"
    );
    let recovered = recovered.expect("publishing recovered");
    let js_back = js_back.expect("JetStream took writes again");
    // The broker's part: its retries find JetStream back within about two seconds (2 s for
    // the first attempt, then 1 s per attempt with pauses up to 500 ms). JetStream's own
    // elections after a majority came back took up to 22 s (docs/FAULTS.md).
    assert!(
        recovered < js_back + Duration::from_secs(3),
        "the broker published again within 3 s of JetStream taking writes \
         (JetStream after {js_back:?}, the broker after {recovered:?})"
    );
    nats.wait_for_jetstream(Duration::from_secs(30));
    eventually(Duration::from_secs(10), "node a is ready again", || async {
        readyz(cluster.node('a')).await.0 == 200
    })
    .await;
    acked.extend(publish_many(cluster.node('b'), &token, "after", 20, 20).await);
    audit(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_survives_a_lost_listen_connection_and_a_postgres_outage() {
    let _exclusive = exclusive_faults().await;
    let cluster = TestCluster::start(3, 3).await;
    let app = client(&cluster, "Listen").await;
    let token = cluster.node('a').token(&app, None).await;
    // Cut every LISTEN connection of this cluster's database: the notifications of the next
    // change are lost; node b and c still apply it within the poll interval (1 s).
    let db = cluster
        .config
        .cluster
        .postgres_url
        .clone()
        .expect("postgres url");
    let name = db.rsplit('/').next().expect("database name").to_owned();
    let (mut on_b, _) = subscriber(cluster.node('b'), &token, "lab.>", None).await;
    let (mut on_c, _) = subscriber(cluster.node('c'), &token, "lab.>", None).await;
    let admin_db = scopecast_testkit::Postgres::shared().url("postgres");
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin_db)
            .await
            .expect("connect");
        let cut: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND query ILIKE 'LISTEN%'",
        )
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .expect("terminate the listeners");
        assert_eq!(cut, 3, "one LISTEN connection per node");
    }
    let started = Instant::now();
    cluster.node('a').deactivate(&app.client_id).await;
    let (closed_b, closed_c) = tokio::join!(
        on_b.until_closed(Duration::from_secs(3)),
        on_c.until_closed(Duration::from_secs(3))
    );
    assert!(
        matches!(closed_b.1, Ended::Close(4003, _)),
        "{:?}",
        closed_b.1
    );
    assert!(
        matches!(closed_c.1, Ended::Close(4003, _)),
        "{:?}",
        closed_c.1
    );
    let elapsed = started.elapsed();
    eprintln!("deactivation after the LISTEN connections were cut: closed in {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "within the poll interval ({elapsed:?})"
    );

    // PostgreSQL stopped for 30 s: live sessions and publishes go on; admin writes answer 503.
    let other = client(&cluster, "Outage").await;
    let token = cluster.node('a').token(&other, None).await;
    let (mut live, _) = subscriber(cluster.node('b'), &token, "lab.>", None).await;
    let pg = scopecast_testkit::Postgres::shared();
    pg.stop();
    let stopped_at = Instant::now();
    let during = publish_many(cluster.node('c'), &token, "pg-down", 10, 10).await;
    assert_eq!(
        read_events(&mut live, 10, WAIT).await,
        during,
        "publishing and delivery go on"
    );
    let write = cluster
        .node('a')
        .admin(
            Method::POST,
            "/applications",
            Some(json!({"name": "While down", "vendor": "V", "scope": SCOPE})),
        )
        .await;
    assert_eq!(
        write.status, 503,
        "admin writes refused while the registry is down: {:?}",
        write.body
    );
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped_at.elapsed())).await;
    pg.restart();
    // Every node converges: a change through one node reaches the others' sessions.
    eventually(
        Duration::from_secs(15),
        "an admin write succeeds again",
        || async {
            cluster
                .node('b')
                .admin(
                    Method::POST,
                    &format!("/clients/{}/deactivate", other.client_id),
                    Some(json!({"reason": "after the outage"})),
                )
                .await
                .status
                == 200
        },
    )
    .await;
    let (_, ended) = live.until_closed(Duration::from_secs(3)).await;
    assert!(matches!(ended, Ended::Close(4003, _)), "{ended:?}");
    for node in &cluster.nodes {
        eventually(
            Duration::from_secs(3),
            "every node knows the deactivation",
            || async {
                Ws::try_connect(node, Some(&token), "/v1/stream")
                    .await
                    .is_err()
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_subscribers_fail_over_to_another_node_without_gap_or_duplicate() {
    use futures_util::StreamExt;
    use scopecast_client::{ConnectOptions, Item};
    let _shared = faults().read().await;
    let mut cluster = TestCluster::start(2, 3).await;
    let app = client(&cluster, "Failover SDK").await;
    let token = cluster.node('a').token(&app, None).await;
    // Node a first in the list: every client connects there.
    let urls = format!(
        "{},{}",
        cluster.node('a').base_url(),
        cluster.node('b').base_url()
    );
    const CLIENTS: usize = 100;
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let c = ConnectOptions::new()
            .token(&token)
            .max_reconnect_delay(Duration::from_millis(500))
            .connect(&urls)
            .await
            .expect("connect");
        subs.push(c.subscribe("lab.>").await.expect("subscribe"));
        clients.push(c);
    }
    let mut acked = publish_many(cluster.node('b'), &token, "f1", 30, 30).await;
    // Node a goes away (closing its sessions with 1001); events go on through node b.
    let a = cluster.nodes.remove(0);
    a.stop().await.expect("node a stops");
    let b = &cluster.nodes[0];
    acked.extend(publish_many(b, &token, "f2", 30, 30).await);
    acked.extend(publish_many(b, &token, "f3", 30, 30).await);
    let reads = subs.iter_mut().map(|s| async move {
        let mut got = Vec::new();
        while got.len() < 90 {
            match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
                Ok(Some(Item::Event(e))) => got.push((e.seq, e.id.as_str().to_owned())),
                other => panic!("after {} events: {other:?}", got.len()),
            }
        }
        got
    });
    for (i, got) in futures_util::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            got, acked,
            "SDK client {i}: every event once, in order, across the failover"
        );
    }
    // The stopped node's consumer goes with its connection: only node b's tail is left.
    eventually(
        Duration::from_secs(30),
        "no JetStream consumer leaked",
        || async { cluster.consumers().await == 1 },
    )
    .await;
    audit(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_list_and_close_cover_every_node() {
    let _shared = faults().read().await;
    let cluster = TestCluster::start(3, 3).await;
    let app = client(&cluster, "Sessions").await;
    let token = cluster.node('a').token(&app, None).await;
    let (_on_b, _) = subscriber(cluster.node('b'), &token, "lab.>", None).await;
    let (mut on_c, _) = subscriber(cluster.node('c'), &token, "lab.>", None).await;
    // Asked through node a, which holds none of them.
    let list = cluster
        .node('a')
        .admin(
            Method::GET,
            &format!("/sessions?client_id={}", app.client_id),
            None,
        )
        .await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    let sessions = list.body["sessions"].as_array().expect("sessions").clone();
    let mut nodes: Vec<&str> = sessions
        .iter()
        .map(|s| s["node"].as_str().unwrap_or_default())
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["b", "c"], "{sessions:?}");
    for s in &sessions {
        assert!(
            s["session"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("{}:", s["node"].as_str().unwrap_or_default()))
        );
        assert_eq!(s["subscriptions"], json!(["lab.>"]));
    }
    let on_c_id = sessions
        .iter()
        .find(|s| s["node"] == "c")
        .and_then(|s| s["session"].as_str())
        .expect("node c's session")
        .to_owned();
    let closed = cluster
        .node('a')
        .admin(Method::POST, &format!("/sessions/{on_c_id}/close"), None)
        .await;
    assert_eq!(closed.status, 200, "{:?}", closed.body);
    assert_eq!(closed.body["node"], "c");
    let (_, ended) = on_c.until_closed(Duration::from_secs(3)).await;
    assert!(matches!(ended, Ended::Close(4010, _)), "{ended:?}");
    let gone = cluster
        .node('a')
        .admin(Method::POST, &format!("/sessions/{on_c_id}/close"), None)
        .await;
    assert_eq!(gone.status, 404, "{:?}", gone.body);
    let unknown = cluster
        .node('a')
        .admin(Method::POST, "/sessions/zz:1/close", None)
        .await;
    assert_eq!(unknown.status, 404, "{:?}", unknown.body);
}

/// The record-signing public keys a node publishes.
async fn catalog_keys(node: &TestBroker) -> Value {
    node.http_client()
        .get(node.http_url("/catalog/v1/keys"))
        .send()
        .await
        .expect("catalog keys")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_moves_into_a_cluster_with_its_registry_and_keys() {
    let _shared = faults().read().await;
    // A single node, whose public URL is the one the cluster will have behind its balancer.
    let mut single_config = scopecast_tests::test_config();
    single_config.oauth.public_url = Some(PUBLIC_URL.to_owned());
    let single = TestBroker::start(single_config).await;
    let app = single.create_app("Moved", SCOPE).await;
    single.activate(&app.non_production.client_id).await;
    let token = single.token(&app.non_production, None).await;
    let admin_token = single.admin_token().to_owned();
    let pinned = catalog_keys(&single).await;
    // A webhook endpoint, its secret and header sealed with the single node's webhooks.kek.
    let hook = single
        .admin(
            Method::POST,
            &format!("/clients/{}/webhooks", app.non_production.client_id),
            Some(json!({"url": "https://198.41.0.4/hook", "topics": ["lab.>"], "headers": {"X-Api-Key": "k"}})),
        )
        .await;
    assert_eq!(hook.status, 201, "{:?}", hook.body);
    let hook_id = hook.body["id"].as_str().expect("id").to_owned();
    let kept = single.stop_keeping_data().await;
    let data = kept.path().join("data");

    let (config, kek) = TestCluster::prepare(3).await;
    let report = scopecast_broker::migrate_to_cluster(&data, &config)
        .await
        .expect("migrate");
    assert!(
        report
            .iter()
            .any(|l| l == "registry: 1 rows of applications"),
        "{report:?}"
    );
    assert!(
        report.iter().any(|l| l.starts_with("signing_keys: sealed")),
        "{report:?}"
    );
    assert!(
        report
            .iter()
            .any(|l| l.starts_with("webhooks: 1 endpoints' secrets sealed again")),
        "{report:?}"
    );
    // A second run is refused: the database is not empty any more.
    let again = scopecast_broker::migrate_to_cluster(&data, &config).await;
    assert!(again.unwrap_err().contains("not empty"));
    let cluster = TestCluster::start_prepared(NatsCluster::shared(), config, kek, 2).await;
    let (a, b) = (cluster.node('a'), cluster.node('b'));
    // The token the single node issued works on every node; so do the client's secret and
    // the single node's admin credential.
    for node in [a, b] {
        let (_, welcome) = Ws::connect(node, &token).await;
        assert_eq!(welcome["client_id"], app.non_production.client_id.as_str());
    }
    let fresh = b.token(&app.non_production, None).await;
    let (_, welcome) = Ws::connect(a, &fresh).await;
    assert_eq!(welcome["type"], "welcome");
    let apps = b
        .http_client()
        .get(b.operator_url("/admin/v1/applications"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("admin");
    assert_eq!(apps.status().as_u16(), 200);
    let apps: Value = apps.json().await.expect("JSON");
    assert!(apps.to_string().contains("Moved"), "{apps}");
    // The catalog key environments pinned is the same.
    let after = catalog_keys(a).await;
    assert_eq!(after, pinned);
    // The endpoint's secrets open with the cluster's key: its header names show.
    let shown = b
        .http_client()
        .get(b.operator_url(&format!("/admin/v1/webhooks/{hook_id}")))
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("admin");
    let shown: Value = shown.json().await.expect("JSON");
    assert_eq!(shown["header_names"], json!(["X-Api-Key"]), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_nats_node_neither_stops_the_majority_nor_loses_events() {
    let _exclusive = exclusive_faults().await;
    // n1 and n2 here, n3 in a network namespace behind a veth link the test cuts.
    let part = scopecast_testkit::Partition::new();
    let nats: &'static NatsCluster = Box::leak(Box::new(NatsCluster::start_on(&[
        ("0.0.0.0", &part.outside, None),
        ("0.0.0.0", &part.outside, None),
        (&part.inside, &part.inside, Some(&part.netns)),
    ])));
    let (mut config, kek) = TestCluster::prepare_on(nats, 3).await;
    // The brokers are on the majority's side.
    config.cluster.nats_url = Some(format!("{},{}", nats.nodes[0].url(), nats.nodes[1].url()));
    let cluster = TestCluster::start_prepared(nats, config, kek, 2).await;
    let app = client(&cluster, "Partition").await;
    let token = cluster.node('a').token(&app, None).await;
    let mut acked = publish_many(cluster.node('a'), &token, "before", 20, 20).await;
    // The harder case: the stream's leader is the node cut off (asked to step down until
    // n3 leads; JetStream picks the new leader itself, so a few tries).
    for _ in 0..8 {
        if nats.stream_leader(&cluster.stream).await.as_deref() == Some("n3") {
            break;
        }
        let client = nats.connect().await.expect("connect");
        let _ = client
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{}", cluster.stream),
                "".into(),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let leader = nats.stream_leader(&cluster.stream).await;
    part.cut();
    let cut_at = Instant::now();
    let mut longest = Duration::ZERO;
    for i in 0..60 {
        let node = &cluster.nodes[i % 2];
        let started = Instant::now();
        let (status, body) =
            publish_keyed(node, &token, &format!("cut{i}"), Duration::from_secs(20)).await;
        assert!(
            status == 201,
            "the majority keeps publishing: {status} {body}"
        );
        longest = longest.max(started.elapsed());
        acked.push((body["seq"].as_u64().expect("seq"), format!("cut{i}")));
    }
    eprintln!(
        "partition of n3 (stream leader before: {leader:?}): 60 publishes in {:?}, longest {longest:?}",
        cut_at.elapsed()
    );
    part.heal();
    // n3 catches up: its copy of the stream reaches the last acknowledged seq.
    let last = acked.iter().map(|a| a.0).max().expect("acked");
    let n3 = nats.nodes[2].url();
    eventually(
        Duration::from_secs(30),
        "n3 caught up after the partition healed",
        || {
            let n3 = n3.clone();
            let stream = cluster.stream.clone();
            async move {
                let Ok(client) = async_nats::connect(n3).await else {
                    return false;
                };
                let js = async_nats::jetstream::new(client);
                let Ok(mut s) = js.get_stream(&stream).await else {
                    return false;
                };
                s.info().await.is_ok_and(|i| i.state.last_sequence >= last)
            }
        },
    )
    .await;
    acked.extend(publish_many(cluster.node('b'), &token, "after", 20, 20).await);
    audit(&cluster, &acked).await;
    for n in &nats.nodes {
        n.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_subscriptions_number_alike_on_every_node_and_bind_on_any() {
    use scopecast_tests::fhir::{
        ENCOUNTER_START, FhirClient, FhirSocket, Seen, encounter, status_of, subscription, validate,
    };
    let _shared = faults().read().await;
    let cluster = TestCluster::start(2, 3).await;
    let (a, b) = (cluster.node('a'), cluster.node('b'));
    let reader = a
        .active_client("FHIR reader", "subscribe:fhir.encounter.>")
        .await;
    let feeder = a.active_client("FHIR feeder", "publish:fhir.>").await;
    let token = a.token(&reader, None).await;
    let publisher = a.token(&feeder, None).await;
    let seen = Seen::default();
    let on_a = FhirClient::new(a.http_client(), &a.base_url(), &token, &seen);
    let on_b = FhirClient::new(b.http_client(), &b.base_url(), &token, &seen);
    let id = on_a
        .create(&subscription(
            ENCOUNTER_START,
            Some("Encounter?patient=Patient/5"),
            "id-only",
            None,
        ))
        .await;
    // Node b learns it through the registry's change feed.
    eventually(
        Duration::from_secs(5),
        "node b knows the Subscription",
        || {
            let on_b = on_b.clone();
            let id = id.clone();
            async move {
                on_b.get(&format!("/Subscription/{id}/$status"))
                    .await
                    .status
                    == 200
            }
        },
    )
    .await;
    // A binding token from node a binds on node b.
    let binding = on_a.binding_token(&id).await;
    let mut ws = FhirSocket::connect(&b.ws_url("/fhir/ws"), &seen).await;
    ws.send(&format!("bind-with-token {binding}")).await;
    assert_eq!(status_of(&ws.recv().await)["type"], "handshake");
    for (event, patient) in [("e1", "5"), ("e2", "6"), ("e3", "5")] {
        let r = a
            .publish_http(
                &publisher,
                "fhir.encounter.started",
                &encounter(event, patient),
            )
            .await;
        assert!(r.status < 300, "{r:?}");
    }
    let mut numbers = Vec::new();
    for _ in 0..2 {
        let n = ws.recv().await;
        let st = status_of(&n);
        numbers.push(
            st["notificationEvent"][0]["eventNumber"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(numbers, ["1", "2"]);
    // Both nodes count the same from the shared log.
    for node in [&on_a, &on_b] {
        let node = node.clone();
        let id = id.clone();
        eventually(Duration::from_secs(5), "both nodes count 2", move || {
            let node = node.clone();
            let id = id.clone();
            async move {
                let st = node.get(&format!("/Subscription/{id}/$status")).await;
                status_of(&st.body)["eventsSinceSubscriptionStart"] == "2"
            }
        })
        .await;
    }
    let ev = on_b.get(&format!("/Subscription/{id}/$events")).await;
    let ids: Vec<&str> = ev.body["entry"].as_array().unwrap()[1..]
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(ids, ["e1", "e3"]);
    // Deactivated through node a: node b's socket is told within a second.
    let at = Instant::now();
    a.deactivate(&reader.client_id).await;
    let told = ws.recv().await;
    assert_eq!(told["resourceType"], "OperationOutcome", "{told}");
    assert!(at.elapsed() < Duration::from_secs(1), "{:?}", at.elapsed());
    validate(&seen);
}

/// Signs in to the console of `node` with `token` over plain HTTP: the session cookie
/// (`name=value`).
async fn console_sign_in(node: &TestBroker, token: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let form = http
        .get(node.http_url("/console/login"))
        .send()
        .await
        .expect("login page");
    let value = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("scopecast_console_login="))
        .and_then(|c| c.split(';').next())
        .expect("sign-in cookie")
        .to_owned();
    let done = http
        .post(node.http_url("/console/login"))
        .header("cookie", format!("scopecast_console_login={value}"))
        .form(&[("credential", token), ("csrf", value.as_str())])
        .send()
        .await
        .expect("sign in");
    assert_eq!(done.status(), 303);
    done.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("scopecast_console=") && !c.starts_with("scopecast_console=;"))
        .and_then(|c| c.split(';').next())
        .expect("session cookie")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_and_the_access_audit_span_every_node() {
    let _shared = faults().read().await;
    let cluster = TestCluster::start(3, 3).await;
    let app = client(&cluster, "Audited").await;
    let token = cluster.node('a').token(&app, None).await;
    let (mut on_b, _) = subscriber(cluster.node('b'), &token, "lab.>", None).await;
    let acked = publish_many(cluster.node('a'), &token, "audited", 20, 10).await;
    let got = read_events(&mut on_b, acked.len(), WAIT).await;
    assert_eq!(got.len(), 20);

    // A console session made through node a is known to node c (sessions are in the shared
    // registry).
    let cookie = console_sign_in(cluster.node('a'), cluster.node('a').admin_token()).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let shown = cluster
        .node('a')
        .admin(Method::GET, &format!("/clients/{}", app.client_id), None)
        .await;
    let application_id = shown.body["application_id"]
        .as_str()
        .expect("application")
        .to_owned();
    let page = http
        .get(
            cluster
                .node('c')
                .http_url(&format!("/console/apps/{application_id}")),
        )
        .header("cookie", &cookie)
        .send()
        .await
        .expect("app page on c");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf field")
        .to_owned();
    // The live view through node c counts the subscriber on node b.
    let mut live = http
        .get(cluster.node('c').http_url("/console/live/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("live events");
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains(&app.client_id) && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_secs(3), live.chunk()).await
        {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    let line = seen
        .lines()
        .find(|l| l.starts_with("data:") && l.contains(&app.client_id))
        .unwrap_or_else(|| panic!("the live view shows the client: {seen}"));
    let tick: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).expect("json");
    let row = tick["clients"]
        .as_array()
        .and_then(|c| c.iter().find(|r| r["client_id"] == app.client_id.as_str()))
        .expect("row");
    assert_eq!(row["connections"], 1, "{tick}");
    assert_eq!(row["delivered"], 20, "{tick}");
    drop(live);

    // Deactivated from the console on node c: the subscriber on node b is closed within 1 s.
    let started = Instant::now();
    let done = http
        .post(
            cluster
                .node('c')
                .http_url(&format!("/console/clients/{}/deactivate", app.client_id)),
        )
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("reason", "cluster console test")])
        .send()
        .await
        .expect("deactivate");
    assert_eq!(done.status(), 303);
    let (_, ended) = on_b.until_closed(Duration::from_secs(2)).await;
    assert!(matches!(ended, Ended::Close(4003, _)), "{ended:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // The access audit, asked through node a: node b's record of the subscription, with what
    // the subscriber counted.
    let query = format!(
        "/audit/access?client_id={}&kind=subscription",
        app.client_id
    );
    let record = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let list = cluster.node('a').admin(Method::GET, &query, None).await;
            let ended = list.body["records"]
                .as_array()
                .and_then(|r| r.first().cloned())
                .filter(|r| r["end_reason"] == "closed_by_broker:4003");
            if let Some(r) = ended {
                break r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no ended record: {:?}",
                list.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(record["node"], "b", "{record}");
    assert_eq!(record["count"], 20, "{record}");
    assert_eq!(record["first_seq"], got[0].0, "{record}");
    assert_eq!(record["last_seq"], got[19].0, "{record}");
    let who = cluster
        .node('c')
        .admin(
            Method::GET,
            &format!("/audit/access?seq={}", got[5].0),
            None,
        )
        .await;
    assert!(
        who.body["records"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["client_id"] == app.client_id.as_str())),
        "{:?}",
        who.body
    );
    // Every node's chain verifies, from any node.
    let verified = cluster
        .node('c')
        .admin(Method::GET, "/audit/verify", None)
        .await;
    assert_eq!(verified.body["ok"], true, "{:?}", verified.body);
    let chains: Vec<&str> = verified.body["chains"]
        .as_array()
        .expect("chains")
        .iter()
        .filter_map(|c| c["chain"].as_str())
        .collect();
    assert!(chains.contains(&"b"), "{chains:?}");
    // The console's sign-out ends the session on every node.
    let out = http
        .post(cluster.node('b').http_url("/console/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("sign out");
    assert_eq!(out.status(), 303);
    let refused = http
        .get(cluster.node('a').http_url("/console/overview"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("overview");
    assert_eq!(refused.status(), 303, "signed out everywhere");
}
