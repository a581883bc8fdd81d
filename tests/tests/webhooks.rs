//! Signed webhooks end to end (issue 17, WEBHOOKS.md): a real broker delivers to a real
//! receiver in Python that verifies every request with PyPI's `standardwebhooks`, over
//! loopback (allowed by `webhooks.allow_private` for the test; production refuses it).
//! Retry schedules are compressed to a few hundred ms.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::Method;
use scopecast_broker::Config;
use scopecast_tests::receiver::{Received, Receiver};
use scopecast_tests::{TestBroker, TestClient, test_config};
use serde_json::{Value, json};

fn hook_config(schedule_ms: Vec<u64>) -> Config {
    let mut c = test_config();
    c.webhooks.allow_private = vec!["127.0.0.1/32".into()];
    c.webhooks.allow_http = true;
    c.webhooks.retry_schedule_ms = schedule_ms;
    c.webhooks.timeout_ms = 1_000;
    c.webhooks.rotation_overlap_s = 600;
    c
}

struct Setup {
    broker: TestBroker,
    receiver: Receiver,
    client: TestClient,
    app_id: String,
    token: String,
    endpoint: String,
    secret: String,
}

/// A broker, a receiver, an active client with `scope`, a token that may publish, and an
/// endpoint for `topics` whose secret the receiver verifies with.
async fn setup(config: Config, scope: &str, topics: &[&str]) -> Setup {
    let broker = TestBroker::start(config).await;
    let receiver = Receiver::start();
    let app = broker.create_app("Hooked", scope).await;
    broker.activate(&app.non_production.client_id).await;
    let client = app.non_production.clone();
    let token = broker.token(&client, None).await;
    let a = broker
        .admin(
            Method::POST,
            &format!("/clients/{}/webhooks", client.client_id),
            Some(json!({
                "url": receiver.url("/hook"),
                "topics": topics,
                "headers": {"X-Api-Key": "k-123"},
            })),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let secret = a.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(a.body["header_names"], json!(["X-Api-Key"]));
    assert_eq!(a.body["state"], "active");
    receiver.secrets(&[&secret]).await;
    Setup {
        secret,
        endpoint: a.body["id"].as_str().unwrap().to_owned(),
        broker,
        receiver,
        client,
        app_id: app.id,
        token,
    }
}

impl Setup {
    /// Publishes `body` as it is (its bytes, not re-serialised); its `seq`.
    async fn publish_raw(&self, topic: &str, body: &'static str) -> u64 {
        let r = self
            .broker
            .http_client()
            .post(self.broker.http_url(&format!("/v1/events/{topic}")))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap()
    }

    async fn publish(&self, topic: &str, data: &Value) -> u64 {
        let a = self.broker.publish_http(&self.token, topic, data).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        a.body["seq"].as_u64().unwrap()
    }

    /// `PATCH`es the endpoint with `body`; the new view.
    async fn patch(&self, body: Value) -> Value {
        let a = self
            .broker
            .admin(
                Method::PATCH,
                &format!("/webhooks/{}", self.endpoint),
                Some(body),
            )
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body
    }

    async fn endpoint(&self) -> Value {
        let a = self
            .broker
            .admin(Method::GET, &format!("/webhooks/{}", self.endpoint), None)
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body
    }

    async fn deliveries(&self) -> Vec<Value> {
        let a = self
            .broker
            .admin(
                Method::GET,
                &format!("/webhooks/{}/deliveries?limit=1000", self.endpoint),
                None,
            )
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body["attempts"].as_array().unwrap().clone()
    }

    /// Asserts the audit trail has an entry for `action`.
    async fn assert_audited(&self, action: &str) {
        let audit = self
            .broker
            .admin(Method::GET, "/audit?limit=100", None)
            .await;
        let entries = audit.body["entries"].as_array().unwrap();
        assert!(
            entries.iter().any(|e| e["action"] == action),
            "no {action} in {entries:#?}"
        );
    }

    /// Waits until the delivery log holds an entry for `seq` with `outcome`.
    async fn wait_outcome(&self, seq: u64, outcome: &str) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let d = self.deliveries().await;
            if d.iter().any(|a| a["seq"] == seq && a["outcome"] == outcome) {
                return d;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {outcome} record for seq {seq}: {d:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn seq_of(r: &Received) -> u64 {
    serde_json::from_str::<Value>(&r.body).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn deliveries_verify_with_standardwebhooks_in_seq_order_byte_for_byte() {
    let s = setup(
        hook_config(vec![200, 400]),
        "subscribe:lab.> publish:lab.>",
        &["lab.result.>"],
    )
    .await;
    // Payloads as published, byte for byte: odd spacing, escapes, non-ASCII.
    let raw = [
        r#"{"n":0,"name":"Zoë"}"#,
        r#"{ "n" : 1 , "esc":"a\"b\\c\u00e9" }"#,
        r#"[1,2.50,{"deep":{"x":null}}]"#,
        r#""just a string""#,
        r#"{"n":4}"#,
    ];
    let mut seqs = Vec::new();
    for (i, body) in raw.iter().enumerate() {
        seqs.push(s.publish_raw(&format!("lab.result.final.{i}"), body).await);
    }
    // Another topic: not this endpoint's.
    s.publish("lab.order", &json!({"not": "delivered"})).await;
    let got = s.receiver.wait_for(5, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (got_all, _) = s.receiver.log().await;
    assert_eq!(got_all.len(), 5, "only the endpoint's topics");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.verified_by, vec![0], "verifies with the secret: {r:?}");
        assert!(r.tampered_rejected, "a changed byte fails verification");
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.api_key, "k-123", "the endpoint's extra header");
        assert!(r.signature.starts_with("v1,"), "{}", r.signature);
        assert!(
            r.webhook_id.starts_with(&format!("msg_{}_", s.endpoint))
                && r.webhook_id.ends_with(&format!("_{}", seqs[i]))
                && !r.webhook_id.contains('.'),
            "{}",
            r.webhook_id
        );
        // The body: id, seq, topic, time, and the data exactly as published.
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["seq"], seqs[i]);
        assert_eq!(v["topic"], format!("lab.result.final.{i}"));
        assert!(v["id"].as_str().is_some() && v["time"].as_str().is_some());
        assert!(
            r.body.ends_with(&format!(",\"data\":{}}}", raw[i])),
            "data byte for byte: {}",
            r.body
        );
    }
    // The delivery log, newest first, and the endpoint's cursor.
    let d = s.wait_outcome(seqs[4], "delivered").await;
    for seq in &seqs {
        assert!(
            d.iter().any(|a| a["seq"] == *seq
                && a["outcome"] == "delivered"
                && a["attempt"] == 1
                && a["status"] == 200),
            "{d:#?}"
        );
    }
    let ep = s.endpoint().await;
    assert!(ep.get("secret").is_none(), "the secret is shown once");
    eventually(|| async { s.endpoint().await["cursor"].as_u64().unwrap() >= seqs[4] }).await;
    // Metrics by client ID and outcome.
    let m = s.broker.metrics().await;
    assert!(
        m.contains(&format!(
            "scopecast_webhook_attempts_total{{client_id=\"{}\",outcome=\"delivered\"}} 5",
            s.client.client_id
        )),
        "{m}"
    );
    // Every change is in the audit trail.
    s.assert_audited("webhook.create").await;
    // The access audit: "which applications received seq N" names this client through its
    // delivered attempt, with the event's topic.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let who = loop {
        let who = s
            .broker
            .admin(Method::GET, &format!("/audit/access?seq={}", seqs[2]), None)
            .await
            .body;
        if who["records"].as_array().is_some_and(|r| !r.is_empty()) {
            break who;
        }
        assert!(tokio::time::Instant::now() < deadline, "{who}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = &who["records"][0];
    assert_eq!(r["kind"], "webhook_attempt", "{who}");
    assert_eq!(r["client_id"], s.client.client_id.as_str());
    assert_eq!(r["endpoint_id"], s.endpoint.as_str());
    assert_eq!(r["topic"], "lab.result.final.2");
    assert_eq!(
        (r["outcome"].as_str(), r["status"].as_u64()),
        (Some("delivered"), Some(200))
    );
    let _ = s.app_id;
}

async fn eventually<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failures_are_retried_as_the_receiver_and_the_schedule_say() {
    let s = setup(
        hook_config(vec![200, 300, 400]),
        "subscribe:lab.> publish:lab.>",
        &["lab.>"],
    )
    .await;
    // 500, 500, 200: three attempts, one webhook-id, each signed afresh and verifying.
    s.receiver
        .plan(json!([{"status": 500}, {"status": 500}, {"status": 200}]))
        .await;
    let seq = s.publish("lab.result", &json!({"try": 1})).await;
    let got = s.receiver.wait_for(3, Duration::from_secs(10)).await;
    assert!(got.iter().all(|r| r.webhook_id == got[0].webhook_id));
    assert!(got.iter().all(|r| r.verified_by == vec![0]));
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    let d = s.wait_outcome(seq, "delivered").await;
    let mine: Vec<(u64, &str)> = d
        .iter()
        .filter(|a| a["seq"] == seq)
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(mine, [(3, "delivered"), (2, "failed"), (1, "failed")]);

    // A 302 is a failure and its Location is never fetched.
    s.receiver
        .plan(json!([{"status": 302, "location": s.receiver.url("/_control/trap")}]))
        .await;
    s.publish("lab.result", &json!({"try": 2})).await;
    let got = s.receiver.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(got[3].status, 302);
    assert_eq!(got[4].webhook_id, got[3].webhook_id, "retried");
    let (_, trap_hits) = s.receiver.log().await;
    assert_eq!(trap_hits, 0, "a redirect is not followed");

    // 429 with Retry-After: 2 waits at least 2 s (the schedule says 200 ms).
    s.receiver
        .plan(json!([{"status": 429, "retry_after": "2"}]))
        .await;
    s.publish("lab.result", &json!({"try": 3})).await;
    let got = s.receiver.wait_for(7, Duration::from_secs(10)).await;
    assert_eq!(got[5].status, 429);
    let waited = got[6].at - got[5].at;
    assert!(waited >= 1.95, "Retry-After honoured: waited {waited:.2} s");

    // A receiver slower than the time-out (1 s) is retried.
    s.receiver
        .plan(json!([{"sleep_s": 2, "status": 200}]))
        .await;
    let seq = s.publish("lab.result", &json!({"try": 4})).await;
    let got = s.receiver.wait_for(9, Duration::from_secs(10)).await;
    assert_eq!(got[8].webhook_id, got[7].webhook_id);
    let d = s.wait_outcome(seq, "delivered").await;
    assert!(
        d.iter().any(|a| a["seq"] == seq
            && a["attempt"] == 1
            && a["outcome"] == "failed"
            && a["error"].as_str().unwrap_or_default().contains("time")),
        "{d:#?}"
    );

    // 410 disables the endpoint at once; later events wait for an admin.
    s.receiver.plan(json!([{"status": 410}])).await;
    let gone = s.publish("lab.result", &json!({"try": 5})).await;
    s.wait_outcome(gone, "disabled").await;
    let ep = s.endpoint().await;
    assert_eq!(ep["state"], "disabled", "{ep}");
    assert!(ep["state_reason"].as_str().unwrap().contains("410"), "{ep}");
    let after = s.publish("lab.result", &json!({"try": 6})).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (got, _) = s.receiver.log().await;
    assert_eq!(got.len(), 10, "nothing goes to a disabled endpoint");
    let m = s.broker.metrics().await;
    assert!(
        m.contains(&format!(
            "scopecast_webhooks_disabled_total{{client_id=\"{}\"}} 1",
            s.client.client_id
        )),
        "{m}"
    );
    s.assert_audited("webhook.disable").await;
    // Resumed by an admin: the event that disabled it, then the one after.
    let a = s
        .broker
        .admin(
            Method::POST,
            &format!("/webhooks/{}/resume", s.endpoint),
            Some(json!({"reason": "receiver fixed"})),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let got = s.receiver.wait_for(12, Duration::from_secs(10)).await;
    assert_eq!(
        got[10..].iter().map(seq_of).collect::<Vec<_>>(),
        [gone, after]
    );
}

#[tokio::test]
async fn the_schedule_used_up_disables_the_endpoint() {
    let s = setup(
        hook_config(vec![100, 100]),
        "subscribe:lab.> publish:lab.>",
        &["lab.>"],
    )
    .await;
    s.receiver
        .plan(json!([{"status": 500}, {"status": 503}, {"status": 500}]))
        .await;
    let seq = s.publish("lab.result", &json!({})).await;
    let d = s.wait_outcome(seq, "disabled").await;
    assert_eq!(d.iter().filter(|a| a["seq"] == seq).count(), 3, "{d:#?}");
    let ep = s.endpoint().await;
    assert_eq!(ep["state"], "disabled");
    assert!(
        ep["state_reason"]
            .as_str()
            .unwrap()
            .contains("every attempt"),
        "{ep}"
    );
}

#[tokio::test]
async fn deactivation_stops_deliveries_within_a_second_and_reactivation_resumes_with_new_events() {
    // Retries every 300 ms, for long enough to be cut off by the deactivation.
    let s = setup(
        hook_config(vec![300; 30]),
        "subscribe:lab.> publish:lab.>",
        &["lab.>"],
    )
    .await;
    // Another application publishes while the receiver's client ID is inactive.
    let publisher = s.broker.active_client("Publisher", "publish:lab.>").await;
    let publisher_token = s.broker.token(&publisher, None).await;
    let publish_as_other = |data: Value| {
        let (b, t) = (&s.broker, publisher_token.clone());
        async move {
            let a = b.publish_http(&t, "lab.result", &data).await;
            assert_eq!(a.status, 201, "{:?}", a.body);
            a.body["seq"].as_u64().unwrap()
        }
    };
    s.receiver
        .plan(json!(vec![json!({"status": 500}); 100]))
        .await;
    let queued = s.publish("lab.result", &json!({"n": "queued"})).await;
    // Two more wait behind it (in seq order, max_in_flight 1).
    let behind = [
        s.publish("lab.result", &json!({"n": "behind 1"})).await,
        s.publish("lab.result", &json!({"n": "behind 2"})).await,
    ];
    s.receiver.wait_for(3, Duration::from_secs(10)).await;
    // The lag gauges grow while retries hold the endpoint (set every second, not only after
    // a delivery).
    let labels = format!(
        "client_id=\"{}\",endpoint=\"{}\"",
        s.client.client_id, s.endpoint
    );
    let gauge = |m: &str, name: &str| -> Option<i64> {
        let line = format!("scopecast_{name}{{{labels}}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = s.broker.metrics().await;
        let (events, seconds) = (
            gauge(&m, "webhook_lag_events"),
            gauge(&m, "webhook_lag_seconds"),
        );
        if events >= Some(3) && seconds >= Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag gauges while retries hold the endpoint: events {events:?}, seconds {seconds:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.broker.deactivate(&s.client.client_id).await;
    let deactivated_at = now_s();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (got, _) = s.receiver.log().await;
    // Counted: nothing arrives more than 1 s after the deactivation (the rule; retries come
    // every 300 ms, so ones that were not stopped would show here), and nothing ever for the
    // events behind it.
    let late: Vec<f64> = got
        .iter()
        .map(|r| r.at - deactivated_at)
        .filter(|d| *d > 1.0)
        .collect();
    assert!(
        late.is_empty(),
        "requests after the deactivation: {late:?} s"
    );
    assert!(
        got.iter().all(|r| seq_of(r) == queued),
        "only the first event was ever tried"
    );
    s.wait_outcome(queued, "skipped_client_inactive").await;
    for seq in behind {
        s.wait_outcome(seq, "skipped_client_inactive").await;
    }
    let during = publish_as_other(json!({"n": "during"})).await;
    s.wait_outcome(during, "skipped_client_inactive").await;
    let before_reactivation = s.receiver.log().await.0.len();
    // Active again: new events flow; the ones of the inactive period do not.
    s.receiver.plan(json!([])).await;
    s.broker.activate(&s.client.client_id).await;
    let fresh = s.publish("lab.result", &json!({"n": "fresh"})).await;
    let got = s
        .receiver
        .wait_for(before_reactivation + 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (got_all, _) = s.receiver.log().await;
    assert_eq!(got_all.len(), got.len(), "only the new event");
    assert_eq!(seq_of(got.last().unwrap()), fresh);
    // Replayed by an admin: the skipped ones are delivered after all.
    let a = s
        .broker
        .admin(
            Method::POST,
            &format!("/webhooks/{}/replay", s.endpoint),
            Some(json!({"since_seq": queued})),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let got = s
        .receiver
        .wait_for(before_reactivation + 6, Duration::from_secs(10))
        .await;
    let replayed: Vec<u64> = got[before_reactivation + 1..].iter().map(seq_of).collect();
    assert_eq!(replayed, [queued, behind[0], behind[1], during, fresh]);
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn a_narrowed_scope_skips_what_it_no_longer_covers() {
    let s = setup(
        hook_config(vec![200]),
        "subscribe:lab.> publish:lab.>",
        &["lab.>"],
    )
    .await;
    let a = s
        .broker
        .admin(
            Method::PATCH,
            &format!("/applications/{}", s.app_id),
            Some(json!({"scope": "subscribe:lab.result publish:lab.>"})),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let order = s.publish("lab.order", &json!({"n": 1})).await;
    let result = s.publish("lab.result", &json!({"n": 2})).await;
    let got = s.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(seq_of(&got[0]), result);
    let d = s.wait_outcome(order, "skipped_scope").await;
    let skip = d.iter().find(|a| a["seq"] == order).unwrap();
    assert!(
        skip["error"]
            .as_str()
            .unwrap()
            .contains("subscribe:lab.order"),
        "{skip}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.receiver.log().await.0.len(), 1);
}

#[tokio::test]
async fn during_a_rotation_both_secrets_verify() {
    let s = setup(
        hook_config(vec![200]),
        "subscribe:lab.> publish:lab.>",
        &["lab.>"],
    )
    .await;
    let first = s.endpoint().await;
    assert!(first.get("previous_secret_until").is_none());
    s.publish("lab.result", &json!({"n": 0})).await;
    let got = s.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].signature.split(' ').count(), 1);
    let a = s
        .broker
        .admin(
            Method::POST,
            &format!("/webhooks/{}/rotate-secret", s.endpoint),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let new_secret = a.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, s.secret);
    assert!(
        a.body["previous_secret_until"].as_str().is_some(),
        "{:?}",
        a.body
    );
    // Each secret alone verifies: receivers switch at their own pace. The rotation reaches the
    // delivery worker as a registry change: deliveries signed from then on carry both.
    s.receiver.secrets(&[&s.secret, &new_secret]).await;
    let mut n = 1;
    let both = loop {
        s.publish("lab.result", &json!({"n": n})).await;
        let got = s.receiver.wait_for(n + 1, Duration::from_secs(10)).await;
        let last = got.last().unwrap().clone();
        assert!(
            last.verified_by.contains(&0),
            "the old secret verifies: {last:?}"
        );
        if last.signature.split(' ').count() == 2 {
            break last;
        }
        assert!(
            n < 20,
            "no delivery signed with both secrets after the rotation"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(both.verified_by, vec![0, 1], "old and new verify: {both:?}");
}

#[tokio::test]
async fn registration_refuses_internal_addresses_and_topics_outside_the_scope() {
    // No allow-list: loopback and private addresses are refused, with the rule named.
    let broker = TestBroker::start(test_config()).await;
    let client = broker
        .active_client("Refused", "subscribe:lab.> publish:lab.>")
        .await;
    let path = format!("/clients/{}/webhooks", client.client_id);
    // Every class the issue names, one address each, by the rule the answer names.
    for (url, words) in [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://0.1.2.3/hook", "0.0.0.0/8"),
        ("https://10.1.2.3/hook", "private (10.0.0.0/8"),
        ("https://172.20.0.5/hook", "private (172.16.0.0/12"),
        ("https://192.168.1.20/hook", "private (192.168.0.0/16"),
        ("https://169.254.169.254/latest", "link-local"),
        ("https://100.100.1.1/hook", "100.64.0.0/10"),
        ("https://198.19.0.1/hook", "198.18.0.0/15"),
        ("https://250.1.2.3/hook", "240.0.0.0/4"),
        ("https://255.255.255.255/hook", "240.0.0.0/4"),
        ("https://239.1.2.3/hook", "multicast"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::]/hook", "unspecified"),
        ("https://[::ffff:127.0.0.1]/hook", "IPv4-mapped"),
        ("https://[::ffff:8.8.8.8]/hook", "IPv4-mapped"),
        ("https://[64:ff9b::a00:1]/hook", "NAT64"),
        ("https://[2002:a00:1::1]/hook", "6to4"),
        ("https://[fd00:ec2::254]/hook", "unique-local"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://[ff02::1]/hook", "multicast"),
        ("https://localhost/hook", "loopback"),
        ("http://198.41.0.4/hook", "https"),
        ("ftp://example.org/x", "scheme"),
        ("https://user:pw@example.org/x", "user name"),
    ] {
        let a = broker
            .admin(
                Method::POST,
                &path,
                Some(json!({"url": url, "topics": ["lab.>"]})),
            )
            .await;
        assert_eq!(a.status, 400, "{url}: {:?}", a.body);
        assert_eq!(a.body["field"], "url", "{url}: {:?}", a.body);
        let message = a.body["message"].as_str().unwrap();
        assert!(
            message.to_lowercase().contains(&words.to_lowercase()),
            "{url}: {message}"
        );
    }
    let a = broker
        .admin(
            Method::POST,
            &path,
            Some(json!({"url": "https://198.41.0.4/hook", "topics": ["lab.>", "adt.>"]})),
        )
        .await;
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.body["field"], "topics[1]", "{:?}", a.body);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("subscribe:adt.>"),
        "{:?}",
        a.body
    );
    let a = broker
        .admin(
            Method::POST,
            &path,
            Some(json!({"url": "https://198.41.0.4/hook", "topics": ["lab.>"], "headers": {"Content-Type": "text/plain"}})),
        )
        .await;
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.body["field"], "headers", "{:?}", a.body);
    let a = broker
        .admin(
            Method::POST,
            &path,
            Some(json!({"url": "https://198.41.0.4/hook", "topics": ["lab.>"], "secret": "x"})),
        )
        .await;
    assert_eq!(a.status, 400, "unknown fields are refused: {:?}", a.body);
    // A public address is taken (nothing is sent to it: nothing is published here).
    let a = broker
        .admin(
            Method::POST,
            &path,
            Some(json!({"url": "https://198.41.0.4/hook", "topics": ["lab.>"]})),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    // The issue's defaults: in seq order, one event per request, 15 s per attempt (config).
    assert_eq!(
        (&a.body["max_in_flight"], &a.body["max_batch"]),
        (&json!(1), &json!(1)),
        "{:?}",
        a.body
    );
    assert_eq!(test_config().webhooks.timeout_ms, 15_000);
    let id = a.body["id"].as_str().unwrap().to_owned();
    // This broker is non-production: an application's production client ID never gets an
    // endpoint here (nor the reverse on a production broker), and the answer names the one to use.
    let app = broker.create_app("Both Kinds", "subscribe:lab.>").await;
    let a = broker
        .admin(
            Method::POST,
            &format!("/clients/{}/webhooks", app.production.client_id),
            Some(json!({"url": "https://198.41.0.4/hook", "topics": ["lab.>"]})),
        )
        .await;
    assert_eq!(a.status, 409, "{:?}", a.body);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("is a production client ID"),
        "{:?}",
        a.body
    );
    // Pause and delete; a deleted endpoint is 404.
    let a = broker
        .admin(Method::POST, &format!("/webhooks/{id}/pause"), None)
        .await;
    assert_eq!(a.body["state"], "paused", "{:?}", a.body);
    let a = broker
        .admin(Method::DELETE, &format!("/webhooks/{id}"), None)
        .await;
    assert_eq!(a.status, 204);
    let a = broker
        .admin(Method::GET, &format!("/webhooks/{id}"), None)
        .await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn events_of_an_inactive_period_stay_skipped_though_no_worker_saw_it() {
    // The endpoint is paused through the whole inactive period: its worker (started again on
    // resume) never saw the client ID inactive, yet the events of that period do not go out.
    let s = setup(
        hook_config(vec![200]),
        "subscribe:lab.> publish:lab.>",
        &["lab.>"],
    )
    .await;
    let publisher = s.broker.active_client("Publisher", "publish:lab.>").await;
    let publisher_token = s.broker.token(&publisher, None).await;
    let pause = s
        .broker
        .admin(
            Method::POST,
            &format!("/webhooks/{}/pause", s.endpoint),
            None,
        )
        .await;
    assert_eq!(pause.status, 200, "{:?}", pause.body);
    s.broker.deactivate(&s.client.client_id).await;
    let a = s
        .broker
        .publish_http(&publisher_token, "lab.result", &json!({"n": "inactive"}))
        .await;
    let during = a.body["seq"].as_u64().unwrap();
    s.broker.activate(&s.client.client_id).await;
    let after = s.publish("lab.result", &json!({"n": "active"})).await;
    let resume = s
        .broker
        .admin(
            Method::POST,
            &format!("/webhooks/{}/resume", s.endpoint),
            None,
        )
        .await;
    assert_eq!(resume.status, 200, "{:?}", resume.body);
    let got = s.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(seq_of(&got[0]), after);
    let d = s.wait_outcome(during, "skipped_client_inactive").await;
    assert!(
        d.iter()
            .all(|a| !(a["seq"] == during && a["outcome"] == "delivered")),
        "{d:#?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.receiver.log().await.0.len(), 1);
}

#[tokio::test]
async fn an_application_manages_its_own_endpoints_with_webhook_manage() {
    let broker = TestBroker::start(hook_config(vec![200])).await;
    let receiver = Receiver::start();
    let client = broker
        .active_client(
            "Self-service",
            "subscribe:lab.> publish:lab.> webhook:manage",
        )
        .await;
    let other = broker
        .active_client("Other", "subscribe:lab.> webhook:manage")
        .await;
    let http = broker.http_client();
    let call = |token: String, method: Method, path: &str, body: Option<Value>| {
        let req = http
            .request(method, broker.http_url(path))
            .bearer_auth(token);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let new = json!({"url": receiver.url("/hook"), "topics": ["lab.result"]});
    // A token without webhook:manage is refused, naming the scope.
    let narrow = broker.token(&client, Some("subscribe:lab.>")).await;
    let (status, body) = call(narrow, Method::POST, "/v1/webhooks", Some(new.clone())).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "insufficient_scope", "{body}");
    assert_eq!(body["required_scope"], "webhook:manage", "{body}");
    // An application whose grant lacks it is refused too, whatever its token says.
    let plain = broker.active_client("No hooks", "subscribe:lab.>").await;
    let plain_token = broker.token(&plain, None).await;
    let (status, _) = call(plain_token, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 403);

    let token = broker.token(&client, None).await;
    let (status, body) = call(token.clone(), Method::POST, "/v1/webhooks", Some(new)).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["client_id"], client.client_id.as_str());
    receiver.secrets(&[body["secret"].as_str().unwrap()]).await;
    // Topics stay inside the application's scope.
    let (status, body) = call(
        token.clone(),
        Method::PATCH,
        &format!("/v1/webhooks/{id}"),
        Some(json!({"topics": ["adt.>"]})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "topics[0]");
    let (status, body) = call(token.clone(), Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["webhooks"].as_array().unwrap().len(), 1, "{body}");
    // Another application sees no such endpoint, and cannot change it.
    let other_token = broker.token(&other, None).await;
    for (method, path) in [
        (Method::GET, format!("/v1/webhooks/{id}")),
        (Method::DELETE, format!("/v1/webhooks/{id}")),
        (Method::POST, format!("/v1/webhooks/{id}/rotate-secret")),
    ] {
        let (status, body) = call(other_token.clone(), method, &path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (_, body) = call(other_token, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(body["webhooks"], json!([]));
    // Deliveries flow to the endpoint it made.
    let a = broker
        .publish_http(&token, "lab.result", &json!({"self": true}))
        .await;
    assert_eq!(a.status, 201);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].verified_by, vec![0]);
    let (status, body) = call(
        token.clone(),
        Method::GET,
        &format!("/v1/webhooks/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A bad page is a 400 naming the query, on this API and the admin one.
    let (status, body) = call(
        token.clone(),
        Method::GET,
        &format!("/v1/webhooks/{id}/deliveries?limit=many"),
        None,
    )
    .await;
    assert_eq!((status, &body["field"]), (400, &json!("query")), "{body}");
    let a = broker
        .admin(
            Method::GET,
            &format!("/webhooks/{id}/deliveries?since=1"),
            None,
        )
        .await;
    assert_eq!(
        (a.status, &a.body["field"]),
        (400, &json!("query")),
        "{:?}",
        a.body
    );
    // Pausing is an admin action only.
    let (status, _) = call(
        token.clone(),
        Method::POST,
        &format!("/v1/webhooks/{id}/pause"),
        None,
    )
    .await;
    assert!(status == 404 || status == 405, "{status}");
    let (status, _) = call(token, Method::DELETE, &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, 204);
    let audit = broker.admin(Method::GET, "/audit?limit=100", None).await;
    let entries = audit.body["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["action"] == "webhook.create"
            && e["actor"] == format!("client {}", client.client_id)),
        "{entries:#?}"
    );
}

/// Publishes on `topic` until a delivery's signature has `entries` entries (a registry change
/// reaches the delivery worker a moment after the API answered); that delivery.
async fn first_signed_with(s: &Setup, topic: &str, entries: usize) -> Received {
    for n in 0..40 {
        let before = s.receiver.log().await.0.len();
        s.publish(topic, &json!({"n": n})).await;
        let got = s
            .receiver
            .wait_for(before + 1, Duration::from_secs(10))
            .await;
        let last = got.last().unwrap().clone();
        if last.signature.split(' ').count() == entries {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no delivery with {entries} signatures");
}

#[tokio::test]
async fn v1a_signatures_verify_with_pynacl_and_rotate_with_the_secret() {
    let s = setup(
        hook_config(vec![200]),
        "subscribe:lab.> publish:lab.>",
        &["lab.>"],
    )
    .await;
    assert!(
        s.endpoint().await.get("public_key").is_none(),
        "v1 only by default"
    );
    // Turned on: a key pair is made and its public key shown (every time: it is public).
    let a = s.patch(json!({"v1a": true})).await;
    let public = a["public_key"].as_str().unwrap().to_owned();
    assert!(public.starts_with("whpk_"), "{public}");
    assert_eq!(s.endpoint().await["public_key"], public.as_str());
    s.receiver.keys(&[&s.secret], &[&public]).await;
    let r = first_signed_with(&s, "lab.result", 2).await;
    assert!(
        r.signature.starts_with("v1,") && r.signature.contains(" v1a,"),
        "{}",
        r.signature
    );
    assert_eq!(
        r.verified_by,
        vec![0],
        "standardwebhooks still verifies v1: {r:?}"
    );
    assert_eq!(r.v1a_verified_by, vec![0], "PyNaCl verifies v1a: {r:?}");
    assert!(r.v1a_tampered_rejected, "a changed byte fails v1a");
    // A rotation makes a new key pair too; in the overlap both keys sign.
    let a = s
        .broker
        .admin(
            Method::POST,
            &format!("/webhooks/{}/rotate-secret", s.endpoint),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let (new_secret, new_public) = (
        a.body["secret"].as_str().unwrap().to_owned(),
        a.body["public_key"].as_str().unwrap().to_owned(),
    );
    assert_ne!(new_public, public);
    s.receiver
        .keys(&[&s.secret, &new_secret], &[&public, &new_public])
        .await;
    let r = first_signed_with(&s, "lab.result", 4).await;
    assert_eq!(r.verified_by, vec![0, 1], "{r:?}");
    assert_eq!(
        r.v1a_verified_by,
        vec![0, 1],
        "old and new public keys verify: {r:?}"
    );
    // Turned off: no v1a entry any more, and no key shown.
    let a = s.patch(json!({"v1a": false})).await;
    assert!(a.get("public_key").is_none(), "{a:?}");
    let r = first_signed_with(&s, "lab.result", 2).await;
    assert!(!r.signature.contains("v1a,"), "{}", r.signature);
    assert!(r.v1a_verified_by.is_empty());
    s.assert_audited("webhook.update").await;
}

#[tokio::test]
async fn a_receiver_in_a_network_namespace_is_reached_only_while_the_allow_list_names_it() {
    // The permitted address lives in a network namespace this test makes (never off this
    // machine); the other side of the link and loopback stay refused.
    let part = scopecast_testkit::Partition::new();
    let receiver = Receiver::start_in(&part.netns, &part.inside);
    let mut config = hook_config(vec![200, 200]);
    config.webhooks.allow_private = vec![format!("{}/32", part.inside)];
    config.log = scopecast_broker::LogMode::Durable;
    let mut broker = TestBroker::start(config).await;
    let client = broker
        .active_client("Namespaced", "subscribe:lab.> publish:lab.>")
        .await;
    let token = broker.token(&client, None).await;
    let path = format!("/clients/{}/webhooks", client.client_id);
    for (url, rule) in [
        (
            format!("http://{}:{}/hook", part.outside, receiver.port),
            "private",
        ),
        (
            format!("http://127.0.0.1:{}/hook", receiver.port),
            "loopback",
        ),
    ] {
        let a = broker
            .admin(
                Method::POST,
                &path,
                Some(json!({"url": url, "topics": ["lab.>"]})),
            )
            .await;
        assert_eq!(a.status, 400, "{url}: {:?}", a.body);
        assert!(
            a.body["message"].as_str().unwrap().contains(rule),
            "{url}: {:?}",
            a.body
        );
    }
    let a = broker
        .admin(
            Method::POST,
            &path,
            Some(json!({"url": receiver.url("/hook"), "topics": ["lab.>"], "v1a": true})),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let endpoint = a.body["id"].as_str().unwrap().to_owned();
    receiver
        .keys(
            &[a.body["secret"].as_str().unwrap()],
            &[a.body["public_key"].as_str().unwrap()],
        )
        .await;
    let seq = broker
        .publish_http(&token, "lab.result", &json!({"n": 1}))
        .await
        .body["seq"]
        .as_u64()
        .unwrap();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].verified_by, vec![0], "{:?}", got[0]);
    assert_eq!(got[0].v1a_verified_by, vec![0], "{:?}", got[0]);
    assert_eq!(seq_of(&got[0]), seq);
    // The operator narrows the allow-list: the registered endpoint is refused at connect time,
    // no request reaches the namespace, and the attempt says why.
    broker
        .restart_with(|c| c.webhooks.allow_private = vec!["127.0.0.1/32".into()])
        .await;
    let seq = broker
        .publish_http(&token, "lab.result", &json!({"n": 2}))
        .await
        .body["seq"]
        .as_u64()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let a = broker
            .admin(
                Method::GET,
                &format!("/webhooks/{endpoint}/deliveries?limit=100"),
                None,
            )
            .await;
        let attempts = a.body["attempts"].as_array().unwrap().clone();
        if let Some(r) = attempts.iter().find(|r| r["seq"] == seq) {
            break r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt for {seq}: {attempts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused["outcome"], "failed", "{refused:?}");
    // A graceful restart kept the cursor: the event answered before it is not sent again.
    let a = broker
        .admin(
            Method::GET,
            &format!("/webhooks/{endpoint}/deliveries?limit=100"),
            None,
        )
        .await;
    let first: Vec<&Value> = a.body["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["seq"] == seq_of(&got[0]))
        .collect();
    assert_eq!(first.len(), 1, "{first:#?}");
    assert!(
        refused.get("status").is_none_or(Value::is_null),
        "{refused:?}"
    );
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains(&part.inside) && error.contains("private"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.log().await.0.len(),
        1,
        "nothing more reached the namespace"
    );
}

#[tokio::test]
async fn events_waiting_together_go_as_one_signed_array_with_max_batch() {
    let s = setup(
        hook_config(vec![200]),
        "subscribe:lab.> publish:lab.>",
        &["lab.>"],
    )
    .await;
    let a = s.patch(json!({"max_batch": 10})).await;
    assert_eq!(a["max_batch"], 10, "{a:?}");
    // Paused while five events are stored: on resume they are waiting together.
    let a = s
        .broker
        .admin(
            Method::POST,
            &format!("/webhooks/{}/pause", s.endpoint),
            None,
        )
        .await;
    assert_eq!(a.body["state"], "paused", "{:?}", a.body);
    let raw = [
        r#"{"n":0}"#,
        r#"{ "n" : 1.50 }"#,
        r#"[2]"#,
        r#""three""#,
        r#"{"n":4}"#,
    ];
    let mut seqs = Vec::new();
    for body in raw {
        seqs.push(s.publish_raw("lab.result", body).await);
    }
    let a = s
        .broker
        .admin(
            Method::POST,
            &format!("/webhooks/{}/resume", s.endpoint),
            None,
        )
        .await;
    assert_eq!(a.body["state"], "active", "{:?}", a.body);
    s.receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (got, _) = s.receiver.log().await;
    assert_eq!(got.len(), 1, "one request for the five: {got:#?}");
    let r = &got[0];
    assert_eq!(r.verified_by, vec![0], "{r:?}");
    assert!(r.tampered_rejected);
    assert!(
        r.webhook_id.ends_with(&format!("_{}_{}", seqs[0], seqs[4])),
        "{}",
        r.webhook_id
    );
    let array: Vec<Value> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        array
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        seqs
    );
    for body in raw {
        assert!(
            r.body.contains(&format!(",\"data\":{body}}}")),
            "data byte for byte: {}",
            r.body
        );
    }
    // Every event of the batch is recorded as delivered.
    let d = s.wait_outcome(seqs[4], "delivered").await;
    for seq in &seqs {
        assert!(
            d.iter()
                .any(|a| a["seq"] == *seq && a["outcome"] == "delivered"),
            "{d:#?}"
        );
    }
}

/// Outgoing HTTPS to a receiver whose certificate an internal CA signed: delivered when
/// `webhooks.ca_file` names the CA, refused (a certificate error, recorded, retried) without
/// it. The broker's plain-HTTP permission is off: https only, as in production.
#[tokio::test]
async fn https_receivers_are_trusted_through_the_configured_ca_file() {
    let pki = scopecast_tests::pki::InternalPki::new();
    let receiver = Receiver::start_tls(&pki);
    let config = |ca: bool| {
        let mut c = hook_config(vec![200; 20]);
        c.webhooks.allow_http = false;
        // `localhost` has both loopback addresses; every one must be allowed.
        c.webhooks.allow_private = vec!["127.0.0.1/32".into(), "::1/128".into()];
        if ca {
            c.webhooks.ca_file = Some(pki.root_file.clone());
        }
        c
    };
    for trusted in [true, false] {
        let broker = TestBroker::start(config(trusted)).await;
        let client = broker
            .active_client("Hospital Receiver", "subscribe:lab.> publish:lab.>")
            .await;
        let token = broker.token(&client, None).await;
        let a = broker
            .admin(
                Method::POST,
                &format!("/clients/{}/webhooks", client.client_id),
                Some(json!({"url": receiver.url("/hook"), "topics": ["lab.>"]})),
            )
            .await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        let endpoint = a.body["id"].as_str().unwrap().to_owned();
        receiver
            .secrets(&[a.body["secret"].as_str().unwrap()])
            .await;
        let before = receiver.log().await.0.len();
        let p = broker
            .publish_http(&token, "lab.result", &json!({"tls": trusted}))
            .await;
        assert_eq!(p.status, 201, "{:?}", p.body);
        let seq = p.body["seq"].as_u64().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let attempts = loop {
            let d = broker
                .admin(
                    Method::GET,
                    &format!("/webhooks/{endpoint}/deliveries?limit=100"),
                    None,
                )
                .await;
            let attempts = d.body["attempts"].as_array().unwrap().clone();
            let done = if trusted {
                attempts.iter().any(|a| a["outcome"] == "delivered")
            } else {
                attempts.len() >= 2
            };
            if done {
                break attempts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "trusted {trusted}: {attempts:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (got, _) = receiver.log().await;
        if trusted {
            let last = got.last().unwrap();
            assert_eq!(seq_of(last), seq);
            assert_eq!(last.verified_by, vec![0]);
        } else {
            assert_eq!(got.len(), before, "no request without trust: {got:?}");
            for a in &attempts {
                assert_eq!(a["outcome"], "failed", "{a}");
                let e = a["error"].as_str().unwrap_or_default().to_lowercase();
                assert!(e.contains("certificate") || e.contains("issuer"), "{a}");
            }
        }
    }
}
