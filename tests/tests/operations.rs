//! What the hospital's operators rely on: the one credential store with roles (the audit names
//! the credential), metrics behind a credential, a separate admin listener, the live session
//! list and closing one session, and per-client metrics.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::Method;
use scopecast_tests::ws::{Ended, Ws};
use scopecast_tests::{TestBroker, test_config};
use serde_json::{Value, json};

async fn credential(broker: &TestBroker, name: &str, role: &str) -> String {
    let a = broker
        .admin(
            Method::POST,
            "/credentials",
            Some(json!({"name": name, "role": role})),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["role"], role);
    let token = a.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("scc_"), "{token}");
    token
}

async fn metrics_with(broker: &TestBroker, token: Option<&str>) -> (u16, String) {
    let mut req = broker.http_client().get(broker.operator_url("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn credentials_have_roles_the_audit_names_them_and_revocation_is_immediate() {
    let broker = TestBroker::start(test_config()).await;
    let alice = credential(&broker, "alice", "admin").await;
    let viewer = credential(&broker, "auditor", "viewer").await;
    let prometheus = credential(&broker, "prometheus", "metrics").await;

    // An admin credential acts under its own name, whatever header the caller sends.
    let created = broker
        .http_client()
        .post(broker.operator_url("/admin/v1/applications"))
        .bearer_auth(&alice)
        .header("scopecast-actor", "mallory")
        .json(&json!({"name": "Audited", "vendor": "V", "scope": "subscribe:adt.>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let app: Value = created.json().await.unwrap();
    let audit = broker
        .admin_as(
            &viewer,
            Method::GET,
            &format!("/audit?application_id={}", app["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(audit.status, 200, "a viewer reads the audit trail");
    assert_eq!(audit.body["entries"][0]["actor"], "alice");
    assert_eq!(audit.body["entries"][0]["action"], "application.create");

    // A viewer reads but never changes; the metrics credential only scrapes.
    assert_eq!(
        broker
            .admin_as(&viewer, Method::GET, "/applications", None)
            .await
            .status,
        200
    );
    let refused = broker
        .admin_as(
            &viewer,
            Method::POST,
            "/applications",
            Some(json!({"name": "Nope", "vendor": "V", "scope": "subscribe:a"})),
        )
        .await;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert_eq!(refused.body["error"], "forbidden");
    assert_eq!(refused.body["reason"], "insufficient_role");
    assert_eq!(
        broker
            .admin_as(&prometheus, Method::GET, "/applications", None)
            .await
            .status,
        403
    );
    assert_eq!(metrics_with(&broker, Some(&prometheus)).await.0, 200);
    assert_eq!(metrics_with(&broker, Some(&viewer)).await.0, 200);
    let (status, body) = metrics_with(&broker, None).await;
    assert_eq!(status, 401, "metrics list client IDs: not for anyone");
    assert!(!body.contains("scopecast_"), "{body}");
    assert_eq!(
        metrics_with(&broker, Some("scc_not-a-credential")).await.0,
        401
    );

    // The list shows names and roles, never a token or its hash.
    let list = broker
        .admin_as(&viewer, Method::GET, "/credentials", None)
        .await;
    let text = list.body.to_string();
    for secret in [&alice, &viewer, &prometheus] {
        assert!(!text.contains(secret.as_str()));
    }
    let names: Vec<&str> = list.body["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in ["admin", "alice", "auditor", "prometheus"] {
        assert!(names.contains(&n), "{names:?}");
    }

    // Revoked: refused at once.
    let revoked = broker
        .admin_as(&alice, Method::DELETE, "/credentials/prometheus", None)
        .await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert!(revoked.body["revoked_at"].is_string());
    assert_eq!(revoked.body["revoked_by"], "alice");
    assert_eq!(metrics_with(&broker, Some(&prometheus)).await.0, 401);

    // The last admin credential of the store cannot be revoked; another one can.
    assert_eq!(
        broker
            .admin_as(&alice, Method::DELETE, "/credentials/admin", None)
            .await
            .status,
        200
    );
    let last = broker
        .admin_as(&alice, Method::DELETE, "/credentials/alice", None)
        .await;
    assert_eq!(last.status, 409, "{:?}", last.body);
    // A name may not be taken twice while valid.
    let dup = broker
        .admin_as(
            &alice,
            Method::POST,
            "/credentials",
            Some(json!({"name": "auditor", "role": "viewer"})),
        )
        .await;
    assert_eq!(dup.status, 409, "{:?}", dup.body);
    let bad_role = broker
        .admin_as(
            &alice,
            Method::POST,
            "/credentials",
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(bad_role.status, 400, "{:?}", bad_role.body);
    let trail = broker
        .admin_as(&alice, Method::GET, "/audit?limit=10", None)
        .await;
    let actions: Vec<(&str, &str)> = trail.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert!(
        actions.contains(&("alice", "credential.revoke")),
        "{actions:?}"
    );
}

#[tokio::test]
async fn with_admin_listen_the_public_port_has_no_admin_api_and_no_metrics() {
    let mut config = test_config();
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = TestBroker::start(config).await;
    let public = broker
        .http_client()
        .get(broker.http_url("/admin/v1/applications"))
        .bearer_auth(broker.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let public_metrics = broker
        .http_client()
        .get(broker.http_url("/metrics"))
        .bearer_auth(broker.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(public_metrics.status(), 404);
    // Each says where they went, in the one JSON error shape, without the admin address.
    let admin_port = broker
        .operator_url("")
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    for body in [
        public.json::<serde_json::Value>().await.unwrap(),
        public_metrics.json::<serde_json::Value>().await.unwrap(),
    ] {
        assert_eq!(body["error"], "not_found", "{body}");
        assert_eq!(body["reason"], "not_found", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("separate admin listener"), "{message}");
        assert!(!message.contains(&admin_port), "{message}");
    }
    // The operator port has them, and health too (for its own probes).
    assert_ne!(broker.operator_url(""), broker.http_url(""));
    assert_eq!(
        broker
            .admin(Method::GET, "/applications", None)
            .await
            .status,
        200
    );
    assert!(broker.metrics().await.contains("scopecast_connections"));
    for path in ["/healthz", "/readyz"] {
        for url in [broker.http_url(path), broker.operator_url(path)] {
            let r = broker.http_client().get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
        }
    }
    // The public port still serves applications.
    let client = broker.active_client("Public", "subscribe:adt.>").await;
    let token = broker.token(&client, None).await;
    let (mut ws, welcome) = Ws::connect(&broker, &token).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(ws.subscribe("s", "adt.>").await["type"], "subscribed");
}

#[tokio::test]
async fn operators_list_live_sessions_and_close_one_with_4010() {
    let broker = TestBroker::start(test_config()).await;
    let sub = broker.active_client("Ward Board", "subscribe:adt.>").await;
    let publisher = broker.active_client("ADT Feed", "publish:adt.>").await;
    let st = broker.token(&sub, None).await;
    let pt = broker.token(&publisher, None).await;
    let (mut a, wa) = Ws::connect(&broker, &st).await;
    let (mut b, _) = Ws::connect(&broker, &st).await;
    let (mut p, _) = Ws::connect(&broker, &pt).await;
    assert_eq!(a.subscribe("s1", "adt.>").await["type"], "subscribed");
    assert_eq!(
        a.subscribe("s2", "adt.patient.*").await["type"],
        "subscribed"
    );
    assert_eq!(b.subscribe("s", "adt.>").await["type"], "subscribed");
    for i in 0..3 {
        assert_eq!(
            p.publish(&format!("p{i}"), "adt.patient.admitted", json!({"i": i}))
                .await["type"],
            "published"
        );
    }
    for ws in [&mut a, &mut b] {
        for _ in 0..3 {
            assert_eq!(ws.recv_type("event").await.1["type"], "event");
        }
    }

    let viewer = credential(&broker, "ops", "viewer").await;
    let list = broker
        .admin_as(
            &viewer,
            Method::GET,
            &format!("/sessions?client_id={}", sub.client_id),
            None,
        )
        .await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    let sessions = list.body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let mine = sessions
        .iter()
        .find(|s| s["session"] == wa["session"])
        .unwrap();
    assert_eq!(mine["client_id"], sub.client_id.as_str());
    assert_eq!(mine["application_name"], "Ward Board");
    assert!(mine["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(mine["connected_since"].as_str().unwrap().ends_with('Z'));
    let mut patterns: Vec<&str> = mine["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    patterns.sort_unstable();
    assert_eq!(patterns, ["adt.>", "adt.patient.*"]);
    assert_eq!(
        mine["events_delivered"], 3,
        "each event once, written to the socket"
    );
    assert_eq!(mine["outbox_bytes"], 0);
    let all = broker.admin(Method::GET, "/sessions", None).await;
    let publisher_row = all.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["client_id"] == publisher.client_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(publisher_row["events_published"], 3);

    // A viewer may not close a session; an admin may, with 4010 (retry with backoff).
    let path = format!("/sessions/{}/close", wa["session"].as_str().unwrap());
    assert_eq!(
        broker
            .admin_as(&viewer, Method::POST, &path, None)
            .await
            .status,
        403
    );
    let closed = broker.admin(Method::POST, &path, None).await;
    assert_eq!(closed.status, 200, "{:?}", closed.body);
    let (_, ended) = a.until_closed(Duration::from_secs(5)).await;
    assert!(matches!(ended, Ended::Close(4010, _)), "{ended:?}");
    assert_eq!(
        broker
            .admin(Method::POST, "/sessions/ffffffff/close", None)
            .await
            .status,
        404
    );
    // The other session of the same client carries on.
    assert_eq!(
        p.publish("p9", "adt.x", json!(9)).await["type"],
        "published"
    );
    assert_eq!(b.recv_type("event").await.1["data"], 9);
    let audit = broker.admin(Method::GET, "/audit?limit=5", None).await;
    assert!(
        audit.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "session.close" && e["actor"] == "admin"),
        "{:?}",
        audit.body
    );
}

/// The value of the series whose line starts with `prefix` (name and labels), or 0.
fn series(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_per_registered_client_and_unknown_for_the_rest() {
    let broker = TestBroker::start(test_config()).await;
    let sub = broker.active_client("Counted", "subscribe:adt.>").await;
    let publisher = broker.active_client("Feeder", "publish:adt.>").await;
    let st = broker.token(&sub, None).await;
    let pt = broker.token(&publisher, None).await;
    let (mut ws, _) = Ws::connect(&broker, &st).await;
    assert_eq!(ws.subscribe("s", "adt.>").await["type"], "subscribed");
    for i in 0..4 {
        broker.publish_http(&pt, "adt.x", &json!(i)).await;
    }
    for _ in 0..4 {
        ws.recv_type("event").await;
    }
    // Refusals: an unknown client at the token endpoint, a bad secret, a forged token.
    broker
        .token_request(
            &[("grant_type", "client_credentials")],
            Some(("not-registered", "x")),
        )
        .await;
    broker
        .token_request(
            &[("grant_type", "client_credentials")],
            Some((&sub.client_id, "wrong-secret")),
        )
        .await;
    let status = broker
        .http_client()
        .get(broker.http_url("/v1/events?topic=adt.>"))
        .bearer_auth("eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);

    let text = broker.metrics().await;
    let c = &sub.client_id;
    let p = &publisher.client_id;
    assert_eq!(
        series(
            &text,
            &format!("scopecast_client_events_delivered_total{{client_id=\"{c}\"}}")
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            &format!("scopecast_client_events_published_total{{client_id=\"{p}\"}}")
        ),
        4.0
    );
    assert_eq!(
        series(
            &text,
            &format!("scopecast_token_requests_total{{client_id=\"{c}\",outcome=\"issued\"}}")
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            &format!(
                "scopecast_token_requests_total{{client_id=\"{c}\",outcome=\"invalid_client\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            "scopecast_token_requests_total{client_id=\"unknown\",outcome=\"invalid_client\"}"
        ),
        1.0,
        "an unregistered client ID never becomes a label"
    );
    assert!(!text.contains("not-registered"));
    assert!(
        series(
            &text,
            "scopecast_refused_connections_total{client_id=\"unknown\",reason=\"unknown_issuer\"}"
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "scopecast_http_requests_total{route=\"/v1/events/{topic}\",status=\"201\"}"
        ),
        4.0
    );
    assert!(series(&text, "scopecast_event_log_last_seq") >= 4.0);
    assert_eq!(series(&text, "scopecast_event_log_writable"), 1.0);
    assert!(series(&text, "scopecast_event_log_bytes") > 0.0);
    assert_eq!(
        series(&text, "scopecast_event_log_retention{limit=\"max_age_s\"}"),
        604_800.0
    );
    assert!(text.contains("scopecast_build_info{version=\""));
    assert!(
        text.contains("process_resident_memory_bytes"),
        "process metrics"
    );
}

/// Reads `body` as the admin API's typed shape `T`, strictly: every field the type names is
/// there with its type.
fn typed<T: serde::de::DeserializeOwned>(what: &str, body: &Value) -> T {
    serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("{what}: not the typed shape: {e}: {body}"))
}

#[tokio::test]
async fn every_admin_answer_has_its_typed_shape() {
    use scopecast_protocol::admin::*;
    let broker = TestBroker::start(test_config()).await;
    let new = NewApplication {
        name: "Typed".to_owned(),
        vendor: "V".to_owned(),
        description: "d".to_owned(),
        scope: "subscribe:adt.>".to_owned(),
    };
    let a = broker
        .admin(
            Method::POST,
            "/applications",
            Some(serde_json::to_value(&new).unwrap()),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let app: ApplicationView = typed("create", &a.body);
    assert_eq!(
        (app.name.as_str(), app.scope.as_str()),
        ("Typed", "subscribe:adt.>")
    );
    for c in app.clients.both() {
        assert!(c.client_secret.is_some(), "secrets shown once at creation");
        assert!(!c.active);
        assert_eq!(c.keys, ClientKeysView::None);
    }
    assert_eq!(app.clients.production.kind, "production");
    assert_eq!(app.clients.non_production.kind, "non-production");
    let cid = app.clients.non_production.client_id.clone();

    let list: ApplicationList = typed(
        "list",
        &broker.admin(Method::GET, "/applications", None).await.body,
    );
    assert!(list.applications.iter().any(|x| x.id == app.id));
    let shown: ApplicationView = typed(
        "show",
        &broker
            .admin(Method::GET, &format!("/applications/{}", app.id), None)
            .await
            .body,
    );
    assert!(
        shown
            .clients
            .both()
            .iter()
            .all(|c| c.client_secret.is_none())
    );

    let patch = ApplicationPatch {
        scope: Some("subscribe:adt.a".to_owned()),
        ..ApplicationPatch::default()
    };
    let patched: ApplicationView = typed(
        "patch",
        &broker
            .admin(
                Method::PATCH,
                &format!("/applications/{}", app.id),
                Some(serde_json::to_value(&patch).unwrap()),
            )
            .await
            .body,
    );
    assert_eq!(patched.scope, "subscribe:adt.a");

    let reason = serde_json::to_value(Reason {
        reason: "go-live".to_owned(),
    })
    .unwrap();
    let active: ClientView = typed(
        "activate",
        &broker
            .admin(
                Method::POST,
                &format!("/clients/{cid}/activate"),
                Some(reason.clone()),
            )
            .await
            .body,
    );
    assert!(active.active);
    let client: ClientView = typed(
        "client",
        &broker
            .admin(Method::GET, &format!("/clients/{cid}"), None)
            .await
            .body,
    );
    assert_eq!(client.application_id.as_deref(), Some(app.id.as_str()));
    assert_eq!(client.application_name.as_deref(), Some("Typed"));

    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]});
    let keyed: ClientView = typed(
        "set keys",
        &broker
            .admin(
                Method::PUT,
                &format!("/clients/{cid}/keys"),
                Some(
                    serde_json::to_value(SetKeys {
                        jwks: Some(jwks),
                        jwks_uri: None,
                    })
                    .unwrap(),
                ),
            )
            .await
            .body,
    );
    assert_eq!(
        keyed.keys,
        ClientKeysView::Jwks {
            kids: vec!["k1".to_owned()]
        }
    );
    let header: ClientView = typed(
        "client-id header",
        &broker
            .admin(
                Method::PUT,
                &format!("/clients/{cid}/client-id-header"),
                Some(serde_json::to_value(ClientIdHeader { enabled: true }).unwrap()),
            )
            .await
            .body,
    );
    assert!(header.client_id_header);
    let secret: IssuedSecret = typed(
        "rotate secret",
        &broker
            .admin(Method::POST, &format!("/clients/{cid}/rotate-secret"), None)
            .await
            .body,
    );
    assert_eq!(secret.client_id, cid);
    let rotated: RotatedKey = typed(
        "rotate keys",
        &broker.admin(Method::POST, "/keys/rotate", None).await.body,
    );
    assert!(!rotated.kid.is_empty());
    let audit: AuditList = typed(
        "audit",
        &broker
            .admin(
                Method::GET,
                &format!("/audit?application_id={}", app.id),
                None,
            )
            .await
            .body,
    );
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.len() >= 5, "{actions:?}");
    assert!(
        audit.entries.iter().all(|e| e.actor == "admin"),
        "{actions:?}"
    );
    let deactivated: ClientView = typed(
        "deactivate",
        &broker
            .admin(
                Method::POST,
                &format!("/clients/{cid}/deactivate"),
                Some(reason),
            )
            .await
            .body,
    );
    assert!(!deactivated.active);
    let deleted: DeletedApplication = typed(
        "delete",
        &broker
            .admin(
                Method::DELETE,
                &format!("/applications/{}?reason=done", app.id),
                None,
            )
            .await
            .body,
    );
    assert_eq!(deleted.client_ids.len(), 2);
    assert!(deleted.client_ids.contains(&cid));
    // A misspelt request field is refused by name, never ignored.
    let typo = broker
        .admin(
            Method::PATCH,
            "/applications/00000000-0000-0000-0000-000000000000",
            Some(json!({"scpoe": "subscribe:a"})),
        )
        .await;
    assert_eq!(
        (typo.status, typo.body["field"].as_str()),
        (400, Some("scpoe")),
        "{:?}",
        typo.body
    );
}

/// The access audit on a connection with several subscriptions (issue 19): each record counts
/// the events its own pattern matched (an event matching two overlapping subscriptions is
/// written once and counted by each), and "who received seq N" names the connection once.
#[tokio::test]
async fn several_subscriptions_on_one_connection_each_count_their_own_events() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker
        .active_client(
            "Ward Board",
            "subscribe:lab.> subscribe:adt.> publish:lab.> publish:adt.>",
        )
        .await;
    let token = broker.token(&client, None).await;
    let (mut several, _) = Ws::connect(&broker, &token).await;
    let (mut single, _) = Ws::connect(&broker, &token).await;
    assert_eq!(single.subscribe("a", "lab.>").await["type"], "subscribed");
    // One event while `several` has one subscription (counted by the connection), then two
    // more subscriptions (each counts itself from then on).
    assert_eq!(several.subscribe("a", "lab.>").await["type"], "subscribed");
    let before = broker
        .publish_http(&token, "lab.result", &json!({"t": "before"}))
        .await;
    assert_eq!(before.status, 201, "{:?}", before.body);
    let mut seqs = vec![("lab.result", before.body["seq"].as_u64().unwrap())];
    assert_eq!(several.recv().await["seq"], seqs[0].1);
    for (id, pattern) in [("b", "adt.>"), ("c", "lab.result")] {
        assert_eq!(several.subscribe(id, pattern).await["type"], "subscribed");
    }
    for topic in [
        "lab.result",
        "adt.admit",
        "lab.result",
        "lab.order",
        "adt.discharge",
        "lab.result",
    ] {
        let a = broker
            .publish_http(&token, topic, &json!({"t": topic}))
            .await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        seqs.push((topic, a.body["seq"].as_u64().unwrap()));
    }
    // Each event once on the connection with three subscriptions.
    let mut got = Vec::new();
    while got.len() < 6 {
        let f = several.recv().await;
        if f["type"] == "event" {
            got.push(f["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(got, seqs[1..].iter().map(|(_, s)| *s).collect::<Vec<_>>());
    assert_eq!(
        several.recv_within(Duration::from_millis(300)).await,
        None,
        "nothing twice"
    );
    for _ in 0..5 {
        single.recv().await;
    }
    let of = |topic_prefix: &str| -> Vec<u64> {
        seqs.iter()
            .filter(|(t, _)| t.starts_with(topic_prefix))
            .map(|(_, s)| *s)
            .collect()
    };
    // Back to one subscription, still live: its record is never brought up to date from the
    // connection's counters, which hold the adt events too.
    for (id, pattern) in [("ub", "adt.>"), ("uc", "lab.result")] {
        several
            .send(json!({"type": "unsubscribe", "id": id, "topic": pattern}))
            .await;
        assert_eq!(several.recv_answer(id).await.1["type"], "unsubscribed");
    }
    // The subscription records a query answers (the newest snapshot of each).
    let subscriptions = |query: String| {
        let broker = &broker;
        async move {
            let a = broker
                .admin(
                    Method::GET,
                    &format!("/audit/access?{query}&kind=subscription"),
                    None,
                )
                .await;
            assert_eq!(a.status, 200, "{:?}", a.body);
            a.body["records"].as_array().unwrap().clone()
        }
    };
    let records_of_client = || subscriptions(format!("client_id={}", client.client_id));
    // Both live lab.> records come to name their first event: the snapshots taken at the
    // first write (and, on the connection with several, at the switch to counting itself)
    // reach the store within the audit writer's 250 ms batches.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = records_of_client().await;
        let named = records
            .iter()
            .filter(|r| r["pattern"] == "lab.>" && r["ended_at"].is_null())
            .filter(|r| r["first_seq"] == seqs[0].1)
            .count();
        if named == 2 {
            break records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "live lab.> records with their first seq: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let live: Vec<u64> = records
        .iter()
        .filter(|r| r["pattern"] == "lab.>" && r["ended_at"].is_null())
        .map(|r| r["count"].as_u64().unwrap())
        .collect();
    assert_eq!(live.len(), 2, "{records:?}");
    assert!(
        live.iter().all(|c| *c <= of("lab.").len() as u64),
        "a live lab.> record counts only lab events: {live:?}"
    );
    several.close().await;
    single.close().await;
    // The ended records, by (session, pattern): count, first and last seq.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = records_of_client().await;
        if records.len() == 4 && records.iter().all(|r| !r["ended_at"].is_null()) {
            break records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the four records, ended: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sessions: std::collections::BTreeSet<&str> = records
        .iter()
        .map(|r| r["session"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), 2);
    let several_session = records.iter().find(|r| r["pattern"] == "adt.>").unwrap()["session"]
        .as_str()
        .unwrap();
    let summary = |session_is_several: bool, pattern: &str| -> (u64, u64, u64) {
        let r = records
            .iter()
            .find(|r| {
                r["pattern"] == pattern && (r["session"] == several_session) == session_is_several
            })
            .unwrap_or_else(|| panic!("{pattern}: {records:#?}"));
        (
            r["count"].as_u64().unwrap(),
            r["first_seq"].as_u64().unwrap(),
            r["last_seq"].as_u64().unwrap(),
        )
    };
    let (lab, adt, result) = (of("lab."), of("adt."), of("lab.result"));
    let span = |v: &[u64]| (v.len() as u64, v[0], *v.last().unwrap());
    assert_eq!(summary(true, "lab.>"), span(&lab));
    assert_eq!(summary(true, "adt.>"), span(&adt));
    // lab.result came after the first event.
    assert_eq!(summary(true, "lab.result"), span(&result[1..]));
    assert_eq!(summary(false, "lab.>"), span(&lab));
    // Who received the second lab.result (the first both lab.> and lab.result covered): each
    // connection once (the one with three subscriptions by its earliest that covers it,
    // lab.>); for the adt event, only the connection that had adt.>.
    let who = |seq: u64| {
        let records = subscriptions(format!("seq={seq}"));
        async move {
            let mut v: Vec<(String, String)> = records
                .await
                .iter()
                .map(|r| {
                    (
                        r["session"].as_str().unwrap().to_owned(),
                        r["pattern"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            v.sort();
            v
        }
    };
    let first_result = who(result[1]).await;
    assert_eq!(first_result.len(), 2, "{first_result:?}");
    assert!(
        first_result.iter().all(|(_, p)| p == "lab.>"),
        "{first_result:?}"
    );
    assert_eq!(
        who(adt[0]).await,
        [(several_session.to_owned(), "adt.>".to_owned())]
    );
}
