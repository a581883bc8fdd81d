//! Register once, activate per environment (README, "Environments and the catalog"): a
//! catalog and two environments (non-production and production) on loopback, records moved
//! between them as signed files, client IDs activated per environment, grants, versions,
//! retirement, and each step in each deployment's audit trail.

use std::time::Duration;

use reqwest::Method;
use scopecast_broker::{Config, EnvironmentKind};
use scopecast_tests::ws::{Ended, Ws};
use scopecast_tests::{TestBroker, TestClient, test_config};
use serde_json::{Value, json};

fn reason(why: &str) -> Value {
    json!({ "reason": why })
}

fn env(kind: EnvironmentKind, name: &str, trusted: Option<&std::path::Path>) -> Config {
    let mut c = test_config();
    c.environment = kind;
    c.environment_name = name.to_owned();
    c.catalog.trusted_keys_file = trusted.map(|p| p.to_owned());
    c
}

async fn export(catalog: &TestBroker, id: &str) -> String {
    let a = catalog
        .admin(Method::GET, &format!("/applications/{id}/record"), None)
        .await;
    assert_eq!(a.status, 200, "export: {:?}", a.body);
    a.body["record"].as_str().expect("record").to_owned()
}

async fn import(env: &TestBroker, record: &str) -> scopecast_tests::Answer {
    env.admin(Method::POST, "/records", Some(json!({ "record": record })))
        .await
}

/// Activates `client_id` in `env`; an imported client ID gets its secret here, shown once.
async fn activate(env: &TestBroker, client_id: &str) -> TestClient {
    let a = env
        .admin(
            Method::POST,
            &format!("/clients/{client_id}/activate"),
            Some(reason("go-live")),
        )
        .await;
    assert_eq!(a.status, 200, "activate: {:?}", a.body);
    TestClient {
        client_id: client_id.to_owned(),
        secret: a.body["client_secret"]
            .as_str()
            .expect("the first activation of an imported client ID shows its new secret")
            .to_owned(),
    }
}

async fn client_view(env: &TestBroker, client_id: &str) -> Value {
    let a = env
        .admin(Method::GET, &format!("/clients/{client_id}"), None)
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body
}

#[tokio::test]
async fn one_record_reaches_two_environments_and_each_activates_its_own_client_id() {
    let catalog = TestBroker::start(env(EnvironmentKind::NonProduction, "catalog", None)).await;
    // Environments pin the catalog's record-signing keys, fetched once (as `scopecast
    // catalog keys --out` does), never its token keys.
    let keys = catalog
        .http_client()
        .get(catalog.http_url("/catalog/v1/keys"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token_keys = catalog
        .http_client()
        .get(catalog.http_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let record_keys: Value = serde_json::from_str(&keys).unwrap();
    assert_ne!(
        record_keys["keys"][0]["kid"], token_keys["keys"][0]["kid"],
        "records are signed with their own key"
    );
    let pins = tempfile::tempdir().unwrap();
    let pinned = pins.path().join("catalog-keys.json");
    std::fs::write(&pinned, &keys).unwrap();
    let test = TestBroker::start(env(EnvironmentKind::NonProduction, "test", Some(&pinned))).await;
    let prod = TestBroker::start(env(EnvironmentKind::Production, "prod", Some(&pinned))).await;

    // Registered once, in the catalog.
    let app = catalog
        .create_app("Bed board", "subscribe:adt.> publish:adt.bed.*")
        .await;
    let v1 = export(&catalog, &app.id).await;

    // Both environments import it: the same application id, the same two client IDs.
    for e in [&test, &prod] {
        let a = import(e, &v1).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        assert_eq!(a.body["outcome"], "created");
        let view = &a.body["application"];
        assert_eq!(view["id"], app.id.as_str());
        assert_eq!(view["version"], 1);
        assert!(
            view["origin"].is_string(),
            "imported: origin names the catalog key"
        );
        assert_eq!(
            view["clients"]["production"]["client_id"],
            app.production.client_id.as_str()
        );
        assert_eq!(
            view["clients"]["non_production"]["client_id"],
            app.non_production.client_id.as_str()
        );
        assert_eq!(
            view["clients"]["production"]["has_secret"], false,
            "no secret travels"
        );
        // Idempotent.
        let again = import(e, &v1).await;
        assert_eq!(
            (again.status, again.body["outcome"].as_str()),
            (200, Some("unchanged"))
        );
    }

    // Each environment activates the client ID of its kind only.
    let wrong = test
        .admin(
            Method::POST,
            &format!("/clients/{}/activate", app.production.client_id),
            Some(reason("wrong kind")),
        )
        .await;
    assert_eq!(wrong.status, 409, "{:?}", wrong.body);
    assert!(
        wrong.body["message"]
            .as_str()
            .unwrap()
            .contains(&app.non_production.client_id),
        "the refusal names the right client ID: {:?}",
        wrong.body
    );
    let np = activate(&test, &app.non_production.client_id).await;
    let p = activate(&prod, &app.production.client_id).await;
    let np_token = test.token(&np, None).await;
    let p_token = prod.token(&p, None).await;
    assert_eq!(
        TestBroker::claims_of(&np_token)["env"],
        "non-production/test"
    );
    // The app subscribes in the test environment.
    let (mut ws, welcome) = Ws::connect(&test, &np_token).await;
    assert_eq!(welcome["client_id"], app.non_production.client_id.as_str());
    assert_eq!(ws.subscribe("s1", "adt.>").await["type"], "subscribed");
    assert_eq!(ws.subscribe("s2", "adt.bed.>").await["type"], "subscribed");
    // A token of one environment is refused in the other.
    for (e, token) in [(&prod, &np_token), (&test, &p_token)] {
        let a = e
            .http_client()
            .get(e.http_url("/v1/events?topic=adt.%3E"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(a.status(), 401);
    }

    // A tampered record, a record of an untrusted catalog, a garbage record: refused.
    let mut parts: Vec<String> = v1.split('.').map(str::to_owned).collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    claims["scope"] = json!("subscribe:>");
    claims["version"] = json!(9);
    parts[1] = b64.encode(claims.to_string());
    let tampered = import(&test, &parts.join(".")).await;
    assert_eq!(
        (tampered.status, tampered.body["reason"].as_str()),
        (422, Some("bad_signature")),
        "{:?}",
        tampered.body
    );
    let rogue = TestBroker::start(env(EnvironmentKind::NonProduction, "rogue", None)).await;
    let rogue_app = rogue.create_app("Rogue", "subscribe:>").await;
    let untrusted = import(&test, &export(&rogue, &rogue_app.id).await).await;
    assert_eq!(
        (untrusted.status, untrusted.body["reason"].as_str()),
        (422, Some("untrusted_catalog"))
    );
    let garbage = import(&test, "not-a-record").await;
    assert_eq!(garbage.status, 400);
    // An imported record is changed in its catalog, never here.
    let edit = test
        .admin(
            Method::PATCH,
            &format!("/applications/{}", app.id),
            Some(json!({"scope": "subscribe:>"})),
        )
        .await;
    assert_eq!(edit.status, 409, "{:?}", edit.body);

    // Version 2 asks for more: nothing widens until the admin approves.
    let v2_view = catalog
        .admin(
            Method::PATCH,
            &format!("/applications/{}", app.id),
            Some(json!({"scope": "subscribe:adt.> publish:adt.bed.* subscribe:lab.>"})),
        )
        .await;
    assert_eq!(v2_view.body["version"], 2);
    let v2 = export(&catalog, &app.id).await;
    let a = import(&test, &v2).await;
    assert_eq!(
        (a.status, a.body["outcome"].as_str()),
        (200, Some("updated"))
    );
    let c = client_view(&test, &np.client_id).await;
    assert_eq!(c["pending_scope"], "subscribe:lab.>");
    assert!(!c["effective_scope"].as_str().unwrap().contains("lab"));
    let refused = test
        .token_request(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "subscribe:lab.>"),
            ],
            Some((&np.client_id, &np.secret)),
        )
        .await;
    assert_eq!(refused.status, 400, "not approved yet: {:?}", refused.body);
    let approved = test
        .admin(
            Method::POST,
            &format!("/clients/{}/approve", np.client_id),
            Some(reason("lab feed reviewed")),
        )
        .await;
    assert_eq!(approved.status, 200, "{:?}", approved.body);
    assert_eq!(approved.body["pending_scope"], "");
    test.token(&np, Some("subscribe:lab.>")).await;
    // An older version is refused now.
    let older = import(&test, &v1).await;
    assert_eq!(older.status, 409, "{:?}", older.body);

    // This environment narrows its grant: the live subscription outside it ends within 1 s.
    let narrowed = test
        .admin(
            Method::PUT,
            &format!("/clients/{}/grant", np.client_id),
            Some(json!({"scope": "subscribe:adt.bed.>", "reason": "beds only here"})),
        )
        .await;
    assert_eq!(narrowed.status, 200, "{:?}", narrowed.body);
    let ended = ws
        .recv_within(Duration::from_secs(1))
        .await
        .expect("the subscription outside the grant ends within 1 s");
    assert_eq!(
        (ended["error"].as_str(), ended["topic"].as_str()),
        (Some("scope_revoked"), Some("adt.>")),
        "{ended}"
    );
    let wider = test
        .admin(
            Method::PUT,
            &format!("/clients/{}/grant", np.client_id),
            Some(json!({"scope": "subscribe:>", "reason": "more"})),
        )
        .await;
    assert_eq!(
        wider.status, 400,
        "a grant never exceeds the record: {:?}",
        wider.body
    );

    // Retired in the catalog: importing the new version deactivates the client ID here.
    let retired = catalog
        .admin(
            Method::POST,
            &format!("/applications/{}/retire", app.id),
            Some(reason("product discontinued")),
        )
        .await;
    assert_eq!(retired.status, 200, "{:?}", retired.body);
    let v3 = export(&catalog, &app.id).await;
    assert_eq!(import(&test, &v3).await.status, 200);
    let (_, end) = ws.until_closed(Duration::from_secs(2)).await;
    assert!(matches!(end, Ended::Close(4003, _)), "{end:?}");
    let again = test
        .admin(
            Method::POST,
            &format!("/clients/{}/activate", np.client_id),
            Some(reason("try")),
        )
        .await;
    assert_eq!(again.status, 409, "a retired application stays inactive");

    // Every step is in each deployment's audit trail, with its actor and environment.
    for (e, envid, wanted) in [
        (
            &catalog,
            "non-production/catalog",
            &[
                "application.create",
                "application.update",
                "application.retire",
            ][..],
        ),
        (
            &test,
            "non-production/test",
            &[
                "application.import",
                "client.activate",
                "client.approve_scope",
                "client.set_grant",
            ][..],
        ),
        (
            &prod,
            "production/prod",
            &["application.import", "client.activate"][..],
        ),
    ] {
        let a = e
            .admin(
                Method::GET,
                &format!("/audit?application_id={}", app.id),
                None,
            )
            .await;
        let entries = a.body["entries"].as_array().expect("entries").clone();
        for action in wanted {
            let hit = entries
                .iter()
                .find(|x| x["action"] == *action)
                .unwrap_or_else(|| panic!("{envid}: no {action} in {entries:?}"));
            assert_eq!(hit["environment"], envid, "{hit}");
            assert!(hit["actor"].is_string());
        }
    }
    // The retirement's import names the client ID it deactivated.
    let a = test
        .admin(
            Method::GET,
            &format!("/audit?application_id={}", app.id),
            None,
        )
        .await;
    let retire_import = a.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["action"] == "application.import" && x["detail"]["retired"] == true)
        .cloned()
        .expect("the import of the retired version");
    assert_eq!(
        retire_import["detail"]["deactivated"],
        json!([np.client_id.as_str()])
    );
    for b in [catalog, test, prod, rogue] {
        b.stop().await.unwrap();
    }
}
