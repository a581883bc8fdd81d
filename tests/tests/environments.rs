//! Register once, activate per environment (README, "Environments and the catalog"): a
//! catalog and two environments (non-production and production) on loopback, records moved
//! between them as signed files, client IDs activated per environment, grants, versions,
//! retirement, and each step in each deployment's audit trail.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

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

/// The application ids a developer's `create` answered.
struct App {
    id: String,
    production: String,
    non_production: String,
}

/// Makes a credential with `role` on `broker`; returns its token.
async fn credential(broker: &TestBroker, name: &str, role: &str) -> String {
    let a = broker
        .admin(
            Method::POST,
            "/credentials",
            Some(json!({"name": name, "role": role})),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["token"].as_str().unwrap().to_owned()
}

/// Calls the developer API with `token`.
async fn dev(
    broker: &TestBroker,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> scopecast_tests::Answer {
    let mut req = broker
        .http_client()
        .request(method, broker.http_url(&format!("/dev/v1{path}")))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    scopecast_tests::Answer {
        status,
        headers,
        body,
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
    // The production environment syncs from the catalog with a viewer credential of it; the
    // test environment gets records as files.
    let viewer = credential(&catalog, "prod-sync", "viewer").await;
    let viewer_file = pins.path().join("catalog.token");
    std::fs::write(&viewer_file, &viewer).unwrap();
    let test = TestBroker::start(env(EnvironmentKind::NonProduction, "test", Some(&pinned))).await;
    let mut prod_config = env(EnvironmentKind::Production, "prod", Some(&pinned));
    prod_config.catalog.url = Some(catalog.base_url());
    prod_config.catalog.token_file = Some(viewer_file);
    prod_config.catalog.sync_interval_s = 0;
    let prod = TestBroker::start(prod_config).await;

    // Registered once, in the catalog, by a developer.
    let acme = credential(&catalog, "acme", "developer").await;
    let other = credential(&catalog, "globex", "developer").await;
    let created = dev(
        &catalog,
        &acme,
        Method::POST,
        "/apps",
        Some(json!({"name": "Bed board", "vendor": "Acme", "scope": "subscribe:adt.> publish:adt.bed.*"})),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(
        (
            created.body["version"].as_u64(),
            created.body["ready"].as_bool()
        ),
        (Some(1), Some(false))
    );
    assert!(
        created.body["clients"]["production"]["client_secret"].is_null(),
        "no secret for a developer"
    );
    assert_eq!(
        created.body["clients"]["production"]["has_secret"], false,
        "none made: each environment makes its own at activation"
    );
    let app = App {
        id: created.body["id"].as_str().unwrap().to_owned(),
        production: created.body["clients"]["production"]["client_id"]
            .as_str()
            .unwrap()
            .to_owned(),
        non_production: created.body["clients"]["non_production"]["client_id"]
            .as_str()
            .unwrap()
            .to_owned(),
    };
    // Nothing is handed out before the developer marks a version ready.
    let early = catalog
        .admin(
            Method::GET,
            &format!("/applications/{}/record", app.id),
            None,
        )
        .await;
    assert_eq!(early.status, 409, "{:?}", early.body);
    // Another developer neither sees nor changes it; a developer activates nothing.
    for (m, path) in [
        (Method::GET, format!("/apps/{}", app.id)),
        (Method::POST, format!("/apps/{}/ready", app.id)),
    ] {
        assert_eq!(dev(&catalog, &other, m, &path, None).await.status, 404);
    }
    let listed = dev(&catalog, &other, Method::GET, "/apps", None).await;
    assert_eq!(listed.body["applications"], json!([]));
    let activate_as_dev = catalog
        .admin_as(
            &acme,
            Method::POST,
            &format!("/clients/{}/activate", app.non_production),
            Some(reason("me")),
        )
        .await;
    assert_eq!(activate_as_dev.status, 403, "{:?}", activate_as_dev.body);
    let ready = dev(
        &catalog,
        &acme,
        Method::POST,
        &format!("/apps/{}/ready", app.id),
        None,
    )
    .await;
    assert_eq!(ready.body["ready"], true, "{:?}", ready.body);
    let v1 = export(&catalog, &app.id).await;

    // Both environments import it: the same application id, the same two client IDs (the
    // test environment from the file, production by syncing with the catalog).
    let synced = prod.admin(Method::POST, "/catalog/sync", None).await;
    assert_eq!(synced.status, 200, "{:?}", synced.body);
    assert_eq!(
        (
            synced.body["created"].as_u64(),
            synced.body["refused"].clone()
        ),
        (Some(1), json!([]))
    );
    let again = prod.admin(Method::POST, "/catalog/sync", None).await;
    assert_eq!(again.body["unchanged"], 1, "{:?}", again.body);
    let a = import(&test, &v1).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    for e in [&test, &prod] {
        let a = import(e, &v1).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.body["outcome"], "unchanged", "idempotent");
        let view = &a.body["application"];
        assert_eq!(view["id"], app.id.as_str());
        assert_eq!(view["version"], 1);
        assert!(
            view["origin"].is_string(),
            "imported: origin names the catalog key"
        );
        assert_eq!(
            view["clients"]["production"]["client_id"],
            app.production.as_str()
        );
        assert_eq!(
            view["clients"]["non_production"]["client_id"],
            app.non_production.as_str()
        );
        assert_eq!(
            view["clients"]["production"]["has_secret"], false,
            "no secret travels"
        );
    }

    // Each environment activates the client ID of its kind only.
    let wrong = test
        .admin(
            Method::POST,
            &format!("/clients/{}/activate", app.production),
            Some(reason("wrong kind")),
        )
        .await;
    assert_eq!(wrong.status, 409, "{:?}", wrong.body);
    assert!(
        wrong.body["message"]
            .as_str()
            .unwrap()
            .contains(&app.non_production),
        "the refusal names the right client ID: {:?}",
        wrong.body
    );
    let np = activate(&test, &app.non_production).await;
    let p = activate(&prod, &app.production).await;
    let np_token = test.token(&np, None).await;
    let p_token = prod.token(&p, None).await;
    assert_eq!(
        TestBroker::claims_of(&np_token)["env"],
        "non-production/test"
    );
    // The app subscribes in the test environment.
    let (mut ws, welcome) = Ws::connect(&test, &np_token).await;
    assert_eq!(welcome["client_id"], app.non_production.as_str());
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
        (400, Some("bad_signature")),
        "{:?}",
        tampered.body
    );
    let rogue = TestBroker::start(env(EnvironmentKind::NonProduction, "rogue", None)).await;
    let rogue_app = rogue.create_app("Rogue", "subscribe:>").await;
    let untrusted = import(&test, &export(&rogue, &rogue_app.id).await).await;
    assert_eq!(
        (untrusted.status, untrusted.body["reason"].as_str()),
        (400, Some("untrusted_catalog"))
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
    // Its keys too: they come with the record.
    let keys = test
        .admin(
            Method::PUT,
            &format!("/clients/{}/keys", app.non_production),
            Some(json!({"jwks_uri": "https://keys.example/jwks.json"})),
        )
        .await;
    assert_eq!(keys.status, 409, "{:?}", keys.body);

    // Version 2 asks for more: a draft first (the frozen version 1 is what the catalog still
    // hands out), then ready; nothing widens in an environment until its admin approves.
    let v2_view = dev(
        &catalog,
        &acme,
        Method::PATCH,
        &format!("/apps/{}", app.id),
        Some(json!({"scope": "subscribe:adt.> publish:adt.bed.* subscribe:lab.>"})),
    )
    .await;
    assert_eq!(
        (
            v2_view.body["version"].as_u64(),
            v2_view.body["ready"].as_bool()
        ),
        (Some(2), Some(false))
    );
    let still_v1 = import(&test, &export(&catalog, &app.id).await).await;
    assert_eq!(
        still_v1.body["outcome"], "unchanged",
        "a draft is not handed out"
    );
    dev(
        &catalog,
        &acme,
        Method::POST,
        &format!("/apps/{}/ready", app.id),
        None,
    )
    .await;
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

    // A narrower version (3): once imported, the live subscription outside it ends within 1 s.
    dev(
        &catalog,
        &acme,
        Method::PATCH,
        &format!("/apps/{}", app.id),
        Some(json!({"scope": "subscribe:adt.bed.> subscribe:lab.>"})),
    )
    .await;
    dev(
        &catalog,
        &acme,
        Method::POST,
        &format!("/apps/{}/ready", app.id),
        None,
    )
    .await;
    let v3 = export(&catalog, &app.id).await;
    assert_eq!(import(&test, &v3).await.status, 200);
    let ended = ws
        .recv_within(Duration::from_secs(1))
        .await
        .expect("the subscription outside the narrower version ends within 1 s");
    assert_eq!(
        (ended["error"].as_str(), ended["topic"].as_str()),
        (Some("scope_revoked"), Some("adt.>")),
        "{ended}"
    );
    // This environment narrows its grant: the live subscription outside it ends within 1 s.
    let narrowed = test
        .admin(
            Method::PUT,
            &format!("/clients/{}/grant", np.client_id),
            Some(json!({"scope": "subscribe:lab.>", "reason": "lab only here"})),
        )
        .await;
    assert_eq!(narrowed.status, 200, "{:?}", narrowed.body);
    assert_eq!(narrowed.body["effective_scope"], "subscribe:lab.>");
    let ended = ws
        .recv_within(Duration::from_secs(1))
        .await
        .expect("the subscription outside the grant ends within 1 s");
    assert_eq!(
        (ended["error"].as_str(), ended["topic"].as_str()),
        (Some("scope_revoked"), Some("adt.bed.>")),
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
    let v4 = export(&catalog, &app.id).await;
    assert_eq!(import(&test, &v4).await.status, 200);
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
                "application.ready",
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
    // The developer is the actor of their changes in the catalog; production's import came
    // by sync.
    let cat = catalog
        .admin(
            Method::GET,
            &format!("/audit?application_id={}", app.id),
            None,
        )
        .await;
    let created_entry = cat.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["action"] == "application.create")
        .cloned()
        .unwrap();
    assert_eq!(created_entry["actor"], "acme");
    let p_audit = prod
        .admin(
            Method::GET,
            &format!("/audit?application_id={}", app.id),
            None,
        )
        .await;
    assert!(
        p_audit.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["action"] == "application.import" && x["detail"]["source"] == "sync"),
        "{:?}",
        p_audit.body
    );
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

#[tokio::test]
async fn developer_accounts_drafts_and_versions_hold_against_takeover_races_and_admin_edits() {
    let off = TestBroker::start(test_config()).await;
    let a = off
        .http_client()
        .post(off.http_url("/dev/v1/register"))
        .json(&json!({"name": "mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 404);
    let mut config = test_config();
    config.catalog.self_registration = true;
    let on = TestBroker::start(config).await;
    let a = on
        .http_client()
        .post(on.http_url("/dev/v1/register"))
        .json(&json!({"name": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 201);
    let body: Value = a.json().await.unwrap();
    assert_eq!(body["role"], "developer");
    let token = body["token"].as_str().unwrap();
    // The name is taken now; a developer credential reads and changes nothing of the admin API.
    let again = on
        .http_client()
        .post(on.http_url("/dev/v1/register"))
        .json(&json!({"name": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    for (m, path) in [
        (Method::GET, "/applications"),
        (Method::GET, "/audit"),
        (Method::POST, "/records"),
    ] {
        let a = on.admin_as(token, m, path, None).await;
        assert_eq!(a.status, 403, "{path}: {:?}", a.body);
    }
    // A developer's draft stays a draft whatever an admin changes; an internal jwks_uri is
    // refused; concurrent changes each make their own version.
    let created = dev(
        &on,
        token,
        Method::POST,
        "/apps",
        Some(json!({"name": "Drafty", "vendor": "Acme", "scope": "subscribe:adt.>"})),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let np = created.body["clients"]["non_production"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let typo = on
        .admin(
            Method::PATCH,
            &format!("/applications/{id}"),
            Some(json!({"description": "typo fixed"})),
        )
        .await;
    assert_eq!(
        (typo.body["version"].as_u64(), typo.body["ready"].as_bool()),
        (Some(1), Some(false)),
        "an admin's change joins the developer's draft: {:?}",
        typo.body
    );
    let export = on
        .admin(Method::GET, &format!("/applications/{id}/record"), None)
        .await;
    assert_eq!(export.status, 409, "nothing ready, nothing handed out");
    for internal in [
        "http://127.0.0.1:7070/admin/v1/applications",
        "https://10.0.0.5/jwks",
        "https://169.254.169.254/latest/meta-data",
    ] {
        let a = dev(
            &on,
            token,
            Method::PUT,
            &format!("/apps/{id}/clients/{np}/keys"),
            Some(json!({ "jwks_uri": internal })),
        )
        .await;
        assert_eq!(a.status, 400, "{internal}: {:?}", a.body);
    }
    dev(&on, token, Method::POST, &format!("/apps/{id}/ready"), None).await;
    // An admin's application: each change is a version of its own, even when they race.
    let racy = on.create_app("Racy", "subscribe:adt.>").await;
    let path = format!("/applications/{}", racy.id);
    let writes = (0..8).map(|i| {
        on.admin(
            Method::PATCH,
            &path,
            Some(json!({ "description": format!("d{i}") })),
        )
    });
    for a in futures_util::future::join_all(writes).await {
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    let audit = on
        .admin(
            Method::GET,
            &format!("/audit?application_id={}", racy.id),
            None,
        )
        .await;
    let mut versions: Vec<u64> = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "application.update")
        .map(|e| e["detail"]["version"].as_u64().unwrap())
        .collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=9).collect::<Vec<_>>(),
        "each change its own version"
    );
    // Retired: the record changes no more.
    dev(
        &on,
        token,
        Method::POST,
        &format!("/apps/{id}/retire"),
        Some(reason("gone")),
    )
    .await;
    let after = dev(
        &on,
        token,
        Method::PATCH,
        &format!("/apps/{id}"),
        Some(json!({"name": "Back"})),
    )
    .await;
    assert_eq!(after.status, 409, "{:?}", after.body);
    // A revoked developer's name is not free for self-registration: it would get the apps.
    let revoked = on.admin(Method::DELETE, "/credentials/acme", None).await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    let again = on
        .http_client()
        .post(on.http_url("/dev/v1/register"))
        .json(&json!({"name": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    // And an admin credential is not a developer's: the developer API wants the role.
    let a = on
        .http_client()
        .get(on.http_url("/dev/v1/apps"))
        .bearer_auth(on.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 403);
    off.stop().await.unwrap();
    on.stop().await.unwrap();
}
