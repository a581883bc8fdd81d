//! The authorization server over real HTTP: client credentials with a secret and with
//! `private_key_jwt`, every RFC 6749 section 5.2 error, key rotation, the admin API's errors.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Method;
use scopecast_tests::keys::{TestKey, assertion, forged, now};
use scopecast_tests::{TestBroker, test_config};
use serde_json::{Value, json};

const GRANT: (&str, &str) = ("grant_type", "client_credentials");
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Verifies `token` against the broker's published JWKS the way a resource server would.
async fn verify_with_jwks(broker: &TestBroker, token: &str) -> (jsonwebtoken::Header, Value) {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwks: Value = reqwest::get(broker.http_url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = header.kid.clone().unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("kid published");
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[broker.base_url()]);
    v.set_issuer(&[broker.base_url()]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).unwrap();
    (data.header, data.claims)
}

fn assert_no_store(a: &scopecast_tests::Answer) {
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert_eq!(a.header("pragma"), Some("no-cache"));
}

fn assert_oauth_error(a: &scopecast_tests::Answer, status: u16, error: &str) {
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (status, Some(error)),
        "{:?}",
        a.body
    );
    assert!(
        a.body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
    assert_no_store(a);
}

#[tokio::test]
async fn client_secret_basic_and_post_get_an_rfc9068_token() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker
        .active_client("Bed Board", "subscribe:adt.> publish:lab.*")
        .await;

    let a = broker
        .token_request(&[GRANT], Some((&client.client_id, &client.secret)))
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_no_store(&a);
    assert_eq!(a.body["token_type"], "Bearer");
    assert_eq!(a.body["expires_in"], 300);
    assert_eq!(a.body["scope"], "subscribe:adt.> publish:lab.*");
    let token = a.body["access_token"].as_str().unwrap();
    let (header, claims) = verify_with_jwks(&broker, token).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(claims["client_id"], client.client_id.as_str());
    assert_eq!(claims["sub"], client.client_id.as_str());
    assert_eq!(claims["scope"], "subscribe:adt.> publish:lab.*");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    let a = broker
        .token_request(
            &[
                GRANT,
                ("client_id", &client.client_id),
                ("client_secret", &client.secret),
            ],
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
}

#[tokio::test]
async fn scope_may_be_narrowed_but_never_widened() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker
        .active_client("Narrow", "subscribe:fhir.> publish:lab.*")
        .await;
    let basic = Some((client.client_id.as_str(), client.secret.as_str()));

    let a = broker
        .token_request(&[GRANT, ("scope", "subscribe:fhir.encounter.>")], basic)
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["scope"], "subscribe:fhir.encounter.>");

    let a = broker
        .token_request(
            &[GRANT, ("scope", "subscribe:fhir.encounter.> subscribe:>")],
            basic,
        )
        .await;
    assert_oauth_error(&a, 400, "invalid_scope");
    assert!(
        a.body["error_description"]
            .as_str()
            .unwrap()
            .contains("subscribe:>")
    );

    let a = broker
        .token_request(&[GRANT, ("scope", "publish:lab.>")], basic)
        .await;
    assert_oauth_error(&a, 400, "invalid_scope");

    let a = broker
        .token_request(&[GRANT, ("scope", "subscribe:Fhir.x")], basic)
        .await;
    assert_oauth_error(&a, 400, "invalid_scope");
}

#[tokio::test]
async fn request_errors_follow_rfc6749_section_5_2() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker.active_client("Errors", "subscribe:adt.>").await;
    let basic = Some((client.client_id.as_str(), client.secret.as_str()));

    let a = broker.token_request(&[], basic).await;
    assert_oauth_error(&a, 400, "invalid_request");

    let a = broker
        .token_request(&[("grant_type", "authorization_code")], basic)
        .await;
    assert_oauth_error(&a, 400, "unsupported_grant_type");

    let a = broker.token_request(&[GRANT, GRANT], basic).await;
    assert_oauth_error(&a, 400, "invalid_request");

    let a = broker
        .token_request(
            &[
                GRANT,
                ("client_secret", &client.secret),
                ("client_id", &client.client_id),
            ],
            basic,
        )
        .await;
    assert_oauth_error(&a, 400, "invalid_request");

    let resp = reqwest::Client::new()
        .post(broker.token_endpoint())
        .basic_auth(&client.client_id, Some(&client.secret))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let a = broker.token_request(&[GRANT], None).await;
    assert_oauth_error(&a, 401, "invalid_client");
}

#[tokio::test]
async fn wrong_secret_and_unknown_client_are_invalid_client_with_basic_challenge() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker.active_client("Secrets", "subscribe:adt.>").await;

    let a = broker
        .token_request(&[GRANT], Some((&client.client_id, "not-the-secret")))
        .await;
    assert_oauth_error(&a, 401, "invalid_client");
    assert!(
        a.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic")),
        "{:?}",
        a.headers
    );

    let a = broker
        .token_request(
            &[GRANT],
            Some((&uuid::Uuid::new_v4().to_string(), &client.secret)),
        )
        .await;
    assert_oauth_error(&a, 401, "invalid_client");

    let a = broker
        .token_request(
            &[
                GRANT,
                ("client_id", &client.client_id),
                ("client_secret", "nope"),
            ],
            None,
        )
        .await;
    assert_oauth_error(&a, 401, "invalid_client");
}

#[tokio::test]
async fn basic_credentials_are_decoded_exactly_and_odd_bodies_get_oauth_json() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker.active_client("Exact", "subscribe:adt.>").await;
    // Anything after a `&` is part of the secret, not dropped.
    let junk = format!("{}&junk", client.secret);
    let a = broker
        .token_request(&[GRANT], Some((&client.client_id, &junk)))
        .await;
    assert_oauth_error(&a, 401, "invalid_client");
    let id_junk = format!("{}&junk", client.client_id);
    let a = broker
        .token_request(&[GRANT], Some((&id_junk, &client.secret)))
        .await;
    assert_oauth_error(&a, 401, "invalid_client");

    let a = broker
        .token_request(
            &[GRANT, ("scope", "")],
            Some((&client.client_id, &client.secret)),
        )
        .await;
    assert_oauth_error(&a, 400, "invalid_scope");

    let resp = reqwest::Client::new()
        .post(broker.token_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&pad={}",
            "x".repeat(64 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    let resp = reqwest::Client::new()
        .get(broker.token_endpoint())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error_description"].is_string(), "{body}");
}

#[tokio::test]
async fn inactive_and_other_environment_clients_are_unauthorized_client() {
    let broker = TestBroker::start(test_config()).await;
    let app = broker.create_app("Inactive", "subscribe:adt.>").await;
    let np = &app.non_production;
    let a = broker
        .token_request(&[GRANT], Some((&np.client_id, &np.secret)))
        .await;
    assert_oauth_error(&a, 400, "unauthorized_client");
    assert!(
        a.body["error_description"]
            .as_str()
            .unwrap()
            .contains("not active")
    );

    // A production client ID cannot be activated on a non-production broker: the refusal
    // names the client ID to activate instead.
    let prod = &app.production;
    let refused = broker
        .admin(
            reqwest::Method::POST,
            &format!("/clients/{}/activate", prod.client_id),
            Some(json!({"reason": "wrong kind"})),
        )
        .await;
    assert_eq!(
        (refused.status, refused.body["reason"].as_str()),
        (409, Some("conflict")),
        "{:?}",
        refused.body
    );
    let message = refused.body["message"].as_str().unwrap();
    assert!(
        message.contains("production client ID")
            && message.contains("non-production environment")
            && message.contains(&np.client_id),
        "{message}"
    );
    // And its token requests are refused as another environment's.
    let a = broker
        .token_request(&[GRANT], Some((&prod.client_id, &prod.secret)))
        .await;
    assert_oauth_error(&a, 400, "unauthorized_client");
    assert!(
        a.body["error_description"]
            .as_str()
            .unwrap()
            .contains("production")
    );

    // Deactivation takes effect at once.
    broker.activate(&np.client_id).await;
    broker.token(np, None).await;
    broker.deactivate(&np.client_id).await;
    let a = broker
        .token_request(&[GRANT], Some((&np.client_id, &np.secret)))
        .await;
    assert_oauth_error(&a, 400, "unauthorized_client");
}

async fn jwt_client(broker: &TestBroker, name: &str, key: &TestKey) -> String {
    let client = broker.active_client(name, "subscribe:fhir.>").await;
    let a = broker
        .admin(
            Method::PUT,
            &format!("/clients/{}/keys", client.client_id),
            Some(json!({"jwks": key.jwks()})),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    client.client_id
}

fn assertion_form(assertion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "client_credentials".to_owned()),
        ("client_assertion_type", JWT_BEARER.to_owned()),
        ("client_assertion", assertion.to_owned()),
    ]
}

async fn post_assertion(broker: &TestBroker, assertion: &str) -> scopecast_tests::Answer {
    let form = assertion_form(assertion);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    broker.token_request(&form, None).await
}

#[tokio::test]
async fn private_key_jwt_with_es256_rs256_and_rs384() {
    let broker = TestBroker::start(test_config()).await;
    for (i, key) in [
        TestKey::es256("ec-1"),
        TestKey::rsa("rsa-256", 2048, Algorithm::RS256),
        TestKey::rsa("rsa-384", 2048, Algorithm::RS384),
    ]
    .iter()
    .enumerate()
    {
        let client_id = jwt_client(&broker, &format!("JWT app {i}"), key).await;
        let a = post_assertion(
            &broker,
            &assertion(key, &client_id, &broker.token_endpoint(), 120),
        )
        .await;
        assert_eq!(a.status, 200, "{:?}: {:?}", key.alg, a.body);
        let (_, claims) = verify_with_jwks(&broker, a.body["access_token"].as_str().unwrap()).await;
        assert_eq!(claims["client_id"], client_id.as_str());
    }
}

#[tokio::test]
async fn client_assertions_that_must_be_refused() {
    let broker = TestBroker::start(test_config()).await;
    let key = TestKey::es256("k1");
    let client_id = jwt_client(&broker, "Assertions", &key).await;
    let aud = broker.token_endpoint();

    // A replayed jti.
    let once = assertion(&key, &client_id, &aud, 120);
    assert_eq!(post_assertion(&broker, &once).await.status, 200);
    let a = post_assertion(&broker, &once).await;
    assert_oauth_error(&a, 401, "invalid_client");
    assert!(
        a.body["error_description"]
            .as_str()
            .unwrap()
            .contains("jti"),
        "{:?}",
        a.body
    );

    // exp 10 minutes ahead.
    let a = post_assertion(&broker, &assertion(&key, &client_id, &aud, 600)).await;
    assert_oauth_error(&a, 401, "invalid_client");
    assert!(
        a.body["error_description"]
            .as_str()
            .unwrap()
            .contains("5 minutes")
    );

    // Expired beyond the leeway.
    let a = post_assertion(&broker, &assertion(&key, &client_id, &aud, -120)).await;
    assert_oauth_error(&a, 401, "invalid_client");

    // Wrong audience.
    let a = post_assertion(
        &broker,
        &assertion(&key, &client_id, &broker.base_url(), 120),
    )
    .await;
    assert_oauth_error(&a, 401, "invalid_client");

    // iss != sub.
    let claims = json!({"iss": client_id, "sub": "someone-else", "aud": aud, "exp": now() + 60, "jti": "x1"});
    assert_oauth_error(
        &post_assertion(&broker, &key.sign(&claims, None)).await,
        401,
        "invalid_client",
    );

    // No jti.
    let claims = json!({"iss": client_id, "sub": client_id, "aud": aud, "exp": now() + 60});
    assert_oauth_error(
        &post_assertion(&broker, &key.sign(&claims, None)).await,
        401,
        "invalid_client",
    );

    // Unknown kid.
    let other = TestKey::es256("k-unknown");
    assert_oauth_error(
        &post_assertion(&broker, &assertion(&other, &client_id, &aud, 60)).await,
        401,
        "invalid_client",
    );

    // Signed by another key under the registered kid.
    let impostor = TestKey::es256("k1");
    assert_oauth_error(
        &post_assertion(&broker, &assertion(&impostor, &client_id, &aud, 60)).await,
        401,
        "invalid_client",
    );

    // alg none, and HS256 keyed with the public key.
    let claims =
        json!({"iss": client_id, "sub": client_id, "aud": aud, "exp": now() + 60, "jti": "n1"});
    let none = forged(&json!({"alg": "none", "kid": "k1"}), &claims, None);
    assert_oauth_error(&post_assertion(&broker, &none).await, 401, "invalid_client");
    let hs = forged(
        &json!({"alg": "HS256", "kid": "k1"}),
        &claims,
        Some(key.public_jwk.to_string().as_bytes()),
    );
    assert_oauth_error(&post_assertion(&broker, &hs).await, 401, "invalid_client");

    // The wrong assertion type.
    let a = broker
        .token_request(
            &[
                GRANT,
                ("client_assertion_type", "urn:other"),
                ("client_assertion", &assertion(&key, &client_id, &aud, 60)),
            ],
            None,
        )
        .await;
    assert_oauth_error(&a, 400, "invalid_request");
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_kid() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker.active_client("Rotation", "subscribe:adt.>").await;
    let old = broker.token(&client, None).await;
    let old_kid = jsonwebtoken::decode_header(&old).unwrap().kid.unwrap();

    let a = broker.admin(Method::POST, "/keys/rotate", None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let new_kid = a.body["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);

    let jwks: Value = reqwest::get(broker.http_url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );
    for k in jwks["keys"].as_array().unwrap() {
        assert!(k.get("d").is_none(), "private key material published");
    }

    // The old token still verifies against the published set; new tokens carry the new kid.
    verify_with_jwks(&broker, &old).await;
    let new = broker.token(&client, None).await;
    assert_eq!(
        jsonwebtoken::decode_header(&new).unwrap().kid.unwrap(),
        new_kid
    );
    verify_with_jwks(&broker, &new).await;

    let audit = broker.admin(Method::GET, "/audit?limit=1", None).await;
    assert_eq!(audit.body["entries"][0]["action"], "keys.rotate");
}

#[tokio::test]
async fn authorization_server_metadata_follows_rfc8414() {
    let broker = TestBroker::start(test_config()).await;
    let m: Value = reqwest::get(broker.http_url("/.well-known/oauth-authorization-server"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["issuer"], broker.base_url());
    assert_eq!(m["token_endpoint"], broker.token_endpoint());
    assert_eq!(m["jwks_uri"], broker.http_url("/.well-known/jwks.json"));
    assert_eq!(m["grant_types_supported"], json!(["client_credentials"]));
    let methods = m["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    assert!(methods.contains(&json!("private_key_jwt")));
}

#[tokio::test]
async fn admin_api_errors_name_the_field_and_use_the_right_status() {
    let broker = TestBroker::start(test_config()).await;

    // No or wrong credential: 401.
    let resp = reqwest::Client::new()
        .get(broker.http_url("/admin/v1/applications"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("www-authenticate").is_some());
    let resp = reqwest::Client::new()
        .get(broker.http_url("/admin/v1/applications"))
        .bearer_auth("x".repeat(43))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // 400 naming the field.
    for (body, field) in [
        (
            json!({"name": "", "vendor": "v", "scope": "subscribe:a"}),
            "name",
        ),
        (
            json!({"name": "a\u{7}b", "vendor": "v", "scope": "subscribe:a"}),
            "name",
        ),
        (
            json!({"name": "n", "vendor": "v", "scope": "subscribe:A"}),
            "scope",
        ),
        (json!({"name": "n", "vendor": "v"}), "body"),
        (
            json!({"name": "n", "vendor": 5, "scope": "subscribe:a"}),
            "vendor",
        ),
        (
            json!({"name": "n", "vendor": "v", "scope": "subscribe:a", "extra": 1}),
            "extra",
        ),
    ] {
        let a = broker
            .admin(Method::POST, "/applications", Some(body.clone()))
            .await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (400, Some("bad_request")),
            "{body}: {:?}",
            a.body
        );
        assert_eq!(a.body["field"], field, "{body}: {:?}", a.body);
        assert!(a.body["message"].is_string());
    }

    // 409 on a duplicate name; 404 on unknown ids; 400 on malformed ids.
    broker.create_app("Twice", "subscribe:a").await;
    let a = broker
        .admin(
            Method::POST,
            "/applications",
            Some(json!({"name": "Twice", "vendor": "v", "scope": "subscribe:a"})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (409, Some("conflict")),
        "{:?}",
        a.body
    );
    let missing = uuid::Uuid::new_v4();
    let a = broker
        .admin(Method::GET, &format!("/applications/{missing}"), None)
        .await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (404, Some("not_found"))
    );
    let a = broker
        .admin(Method::POST, &format!("/clients/{missing}/activate"), None)
        .await;
    assert_eq!(a.status, 404);
    let a = broker
        .admin(Method::POST, "/clients/adt.*/activate", None)
        .await;
    assert_eq!(
        (a.status, a.body["field"].as_str()),
        (400, Some("client_id"))
    );
}

#[tokio::test]
async fn uploaded_keys_are_validated() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker.active_client("Keys", "subscribe:a").await;
    let path = format!("/clients/{}/keys", client.client_id);
    let short = TestKey::rsa("short", 1024, Algorithm::RS256);
    let a = broker
        .admin(Method::PUT, &path, Some(json!({"jwks": short.jwks()})))
        .await;
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert!(a.body["message"].as_str().unwrap().contains("2048"));

    let mut private = TestKey::es256("p").public_jwk;
    private["d"] = json!("c2VjcmV0");
    let a = broker
        .admin(
            Method::PUT,
            &path,
            Some(json!({"jwks": {"keys": [private]}})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["field"].as_str()),
        (400, Some("jwks.keys[0].d"))
    );

    let a = broker
        .admin(
            Method::PUT,
            &path,
            Some(json!({"jwks_uri": "http://vendor.example/jwks"})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["field"].as_str()),
        (400, Some("jwks_uri"))
    );

    let good = TestKey::es256("good");
    let a = broker
        .admin(Method::PUT, &path, Some(json!({"jwks": good.jwks()})))
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["keys"], json!({"type": "jwks", "kids": ["good"]}));
}

#[tokio::test]
async fn rotated_secrets_replace_the_old_one_at_once() {
    let broker = TestBroker::start(test_config()).await;
    let mut client = broker.active_client("Rotate", "subscribe:a").await;
    // The old secret matched a moment ago (and is remembered to spare argon2id a repeat):
    // the rotation ends it all the same.
    broker.token(&client, None).await;
    broker.token(&client, None).await;
    let a = broker
        .admin(
            Method::POST,
            &format!("/clients/{}/rotate-secret", client.client_id),
            None,
        )
        .await;
    assert_eq!(a.status, 200);
    let new_secret = a.body["client_secret"].as_str().unwrap().to_owned();
    let a = broker
        .token_request(&[GRANT], Some((&client.client_id, &client.secret)))
        .await;
    assert_oauth_error(&a, 401, "invalid_client");
    client.secret = new_secret;
    broker.token(&client, None).await;
}
