//! The access-token verifier as the broker uses it: real keys, a real SQLite registry, real
//! JWTs, and a real HTTP server for an external issuer's JWK Set. Every refusal is typed.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use scopecast_broker::auth::jwks::JwksCache;
use scopecast_broker::auth::keys::KeyRing;
use scopecast_broker::auth::token::{TokenIssuer, TokenVerifier, VerifyError};
use scopecast_broker::registry::{CreateApplication, Registry, SqliteStore};
use scopecast_broker::{EnvironmentKind, ExternalIssuer};
use scopecast_protocol::{Reason, ScopeSet};
use scopecast_tests::keys::{TestKey, forged, now};
use serde_json::{Value, json};

const ISSUER: &str = "https://events.hospital.example";
const FOREIGN: &str = "https://login.hospital.example";
/// This environment, as its tokens name it.
const ENV: &str = "non-production/test";

struct Fixture {
    _dir: tempfile::TempDir,
    registry: Registry,
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    /// PEM of the broker's signing key, to forge tokens that only differ in one claim.
    own: TestKey,
    client_id: String,
    production_client_id: String,
    foreign: TestKey,
}

async fn fixture(external_uri: Option<String>) -> Fixture {
    fixture_keeping_retired_keys(external_uri, 600).await
}

/// [`fixture`] whose key ring keeps a retired signing key `retain_s` seconds (0: a rotation
/// removes the old key at once, as a revocation does).
async fn fixture_keeping_retired_keys(external_uri: Option<String>, retain_s: i64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyRing::open(&dir.path().join("keys.json"), retain_s).unwrap();
    let store = SqliteStore::open(&dir.path().join("registry.sqlite"))
        .await
        .unwrap();
    let registry = Registry::open(store).await.unwrap();
    let (_app, secrets) = registry
        .create_application(
            CreateApplication {
                name: "Verifier".into(),
                vendor: "Test".into(),
                description: String::new(),
                scope: "subscribe:adt.>".into(),
            },
            "test",
        )
        .await
        .unwrap();
    let client_id = secrets
        .iter()
        .find(|s| s.kind == EnvironmentKind::NonProduction)
        .unwrap()
        .client_id
        .clone();
    let production_client_id = secrets
        .iter()
        .find(|s| s.kind == EnvironmentKind::Production)
        .unwrap()
        .client_id
        .clone();
    registry
        .set_active(&client_id, true, "test", "")
        .await
        .unwrap();
    registry
        .set_active(&production_client_id, true, "test", "")
        .await
        .unwrap();

    // The broker's own key, read back from its file so tests can sign look-alike tokens.
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("keys.json")).unwrap())
            .unwrap();
    let pem = file["keys"][0]["private_key_pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let kid = file["keys"][0]["kid"].as_str().unwrap().to_owned();
    let own = TestKey {
        kid,
        alg: Algorithm::ES256,
        encoding: jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        public_jwk: keys.jwks()["keys"][0].clone(),
        pem,
    };

    let foreign = TestKey::rsa("foreign-1", 2048, Algorithm::RS256);
    let jwks_file = dir.path().join("foreign.json");
    std::fs::write(&jwks_file, foreign.jwks().to_string()).unwrap();
    let external = vec![ExternalIssuer {
        jwks_file: if external_uri.is_some() {
            None
        } else {
            Some(jwks_file)
        },
        jwks_uri: external_uri,
        require_typ: false,
        ..ExternalIssuer::new(FOREIGN, "scopecast")
    }];
    let issuer = TokenIssuer::new(ISSUER.into(), 300, keys, ENV.into());
    let jwks = JwksCache::new(Duration::from_secs(2), Duration::from_secs(30));
    let verifier = TokenVerifier::new(
        &issuer,
        &external,
        jwks,
        registry.clone(),
        EnvironmentKind::NonProduction,
        30,
    )
    .unwrap();
    Fixture {
        _dir: dir,
        registry,
        issuer,
        verifier,
        own,
        client_id,
        production_client_id,
        foreign,
    }
}

impl Fixture {
    fn claims(&self) -> Value {
        json!({"iss": ISSUER, "aud": ISSUER, "sub": self.client_id, "client_id": self.client_id,
               "scope": "subscribe:adt.*", "iat": now(), "exp": now() + 120, "jti": "t1", "env": ENV})
    }

    fn own_token(&self, claims: &Value) -> String {
        self.own.sign(claims, Some("at+jwt"))
    }

    async fn refused(&self, token: &str) -> VerifyError {
        self.verifier
            .verify(token)
            .await
            .expect_err("token should be refused")
    }
}

#[tokio::test]
async fn issued_tokens_verify_into_a_principal() {
    let f = fixture(None).await;
    let scope = ScopeSet::parse("subscribe:adt.*").unwrap();
    let t = f.issuer.issue(&f.client_id, &scope).unwrap();
    let p = f.verifier.verify(&t.access_token).await.unwrap();
    assert_eq!(p.client_id, f.client_id);
    assert_eq!(*p.scope, scope);
    assert_eq!(p.kind, EnvironmentKind::NonProduction);
    assert!(p.expires_at.unix_seconds() > now());
    // The forged-by-test path makes identical tokens: the fixture's key is the broker's.
    assert!(f.verifier.verify(&f.own_token(&f.claims())).await.is_ok());
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let f = fixture(None).await;
    let header = |alg: &str| json!({"alg": alg, "typ": "at+jwt", "kid": f.own.kid});
    let none = forged(&header("none"), &f.claims(), None);
    assert!(matches!(
        f.refused(&none).await,
        VerifyError::Malformed(_) | VerifyError::AlgorithmNotAllowed(_)
    ));
    let none_signed = format!("{}x", forged(&header("none"), &f.claims(), None));
    assert!(matches!(
        f.refused(&none_signed).await,
        VerifyError::AlgorithmNotAllowed(_)
    ));
    let hs = forged(
        &header("HS256"),
        &f.claims(),
        Some(f.own.public_jwk.to_string().as_bytes()),
    );
    assert!(matches!(
        f.refused(&hs).await,
        VerifyError::AlgorithmNotAllowed(_)
    ));
    let hs_pem = forged(&header("HS256"), &f.claims(), Some(f.own.pem.as_bytes()));
    assert!(matches!(
        f.refused(&hs_pem).await,
        VerifyError::AlgorithmNotAllowed(_)
    ));
    let es384 = forged(&header("ES384"), &f.claims(), Some(b"x"));
    assert!(matches!(
        f.refused(&es384).await,
        VerifyError::AlgorithmNotAllowed(_)
    ));
}

#[tokio::test]
async fn keys_are_chosen_by_kid() {
    let f = fixture(None).await;
    let stranger = TestKey::es256("someone-else");
    let t = stranger.sign(&f.claims(), Some("at+jwt"));
    assert_eq!(f.refused(&t).await, VerifyError::UnknownKey);
    let impostor = TestKey::es256(&f.own.kid);
    let t = impostor.sign(&f.claims(), Some("at+jwt"));
    assert_eq!(f.refused(&t).await, VerifyError::BadSignature);
    let odd = forged(
        &json!({"alg": "ES256", "typ": "at+jwt", "kid": "../../etc/passwd"}),
        &f.claims(),
        Some(b"x"),
    );
    assert_eq!(f.refused(&odd).await, VerifyError::UnknownKey);
    let no_kid = forged(
        &json!({"alg": "ES256", "typ": "at+jwt"}),
        &f.claims(),
        Some(b"x"),
    );
    assert_eq!(f.refused(&no_kid).await, VerifyError::UnknownKey);
}

#[tokio::test]
async fn time_claims_are_checked_with_the_configured_leeway() {
    let f = fixture(None).await;
    let mut c = f.claims();
    c["exp"] = json!(now() - 10);
    assert!(
        f.verifier.verify(&f.own_token(&c)).await.is_ok(),
        "within the 30 s leeway"
    );
    c["exp"] = json!(now() - 60);
    let e = f.refused(&f.own_token(&c)).await;
    assert_eq!(e, VerifyError::Expired);
    assert_eq!(e.reason(), Reason::TokenExpired);
    let mut c = f.claims();
    c["nbf"] = json!(now() + 120);
    assert_eq!(f.refused(&f.own_token(&c)).await, VerifyError::NotYetValid);
    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        f.refused(&f.own_token(&c)).await,
        VerifyError::MissingClaim("exp".into())
    );
}

#[tokio::test]
async fn audience_issuer_and_type_are_required() {
    let f = fixture(None).await;
    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        f.refused(&f.own_token(&c)).await,
        VerifyError::MissingClaim("aud".into())
    );
    c["aud"] = json!([]);
    assert_eq!(
        f.refused(&f.own_token(&c)).await,
        VerifyError::WrongAudience
    );
    c["aud"] = json!("https://elsewhere.example");
    assert_eq!(
        f.refused(&f.own_token(&c)).await,
        VerifyError::WrongAudience
    );
    c["aud"] = json!(["https://elsewhere.example", ISSUER]);
    assert!(f.verifier.verify(&f.own_token(&c)).await.is_ok());

    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        f.refused(&f.own_token(&c)).await,
        VerifyError::MissingClaim("iss".into())
    );
    c["iss"] = json!("https://evil.example");
    assert_eq!(
        f.refused(&f.own_token(&c)).await,
        VerifyError::UnknownIssuer
    );

    assert_eq!(
        f.refused(&f.own.sign(&f.claims(), Some("JWT"))).await,
        VerifyError::WrongType
    );
    assert_eq!(
        f.refused(&f.own.sign(&f.claims(), None)).await,
        VerifyError::WrongType
    );
    assert!(
        f.verifier
            .verify(&f.own.sign(&f.claims(), Some("application/at+jwt")))
            .await
            .is_ok()
    );

    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("client_id");
    assert_eq!(
        f.refused(&f.own_token(&c)).await,
        VerifyError::MissingClaim("client_id".into())
    );
}

#[tokio::test]
async fn oversized_and_malformed_tokens_are_refused_without_parsing_much() {
    let f = fixture(None).await;
    let big = format!(
        "{}.{}.{}",
        "a".repeat(4000),
        "b".repeat(4000),
        "c".repeat(2300)
    );
    assert!(matches!(f.refused(&big).await, VerifyError::Malformed(m) if m.contains("limit")));
    assert!(matches!(
        f.refused("not-a-jwt").await,
        VerifyError::Malformed(_)
    ));
    assert!(matches!(f.refused("").await, VerifyError::Malformed(_)));
}

/// A token is verified once and remembered (issue 20: a reconnect storm costs one signature
/// check per token), but the registry still decides every use, and a key removed from the
/// set ends every token it signed at once.
#[tokio::test]
async fn a_remembered_token_never_outlives_a_deactivation_or_its_key() {
    let f = fixture_keeping_retired_keys(None, 0).await;
    let scope = ScopeSet::parse("subscribe:adt.*").unwrap();
    let token = f.issuer.issue(&f.client_id, &scope).unwrap().access_token;
    assert_eq!(f.verifier.remembered_tokens(), 0);
    f.verifier.verify(&token).await.unwrap();
    assert_eq!(f.verifier.remembered_tokens(), 1);
    f.verifier.verify(&token).await.unwrap();
    assert_eq!(f.verifier.remembered_tokens(), 1, "one entry per token");
    f.registry
        .set_active(&f.client_id, false, "test", "offboarded")
        .await
        .unwrap();
    assert_eq!(f.refused(&token).await, VerifyError::ClientInactive);
    f.registry
        .set_active(&f.client_id, true, "test", "")
        .await
        .unwrap();
    f.verifier.verify(&token).await.unwrap();
    // Refusals are never remembered.
    let forged = f.foreign.sign(&f.claims(), Some("at+jwt"));
    f.refused(&forged).await;
    assert_eq!(f.verifier.remembered_tokens(), 1);
    // The key that signed it leaves the set: the token is refused though remembered.
    f.issuer.keys().rotate().unwrap();
    assert_eq!(f.refused(&token).await, VerifyError::UnknownKey);
}

#[tokio::test]
async fn the_registry_decides_last_inactive_and_wrong_environment_clients() {
    let f = fixture(None).await;
    let token = f.own_token(&f.claims());
    f.registry
        .set_active(&f.client_id, false, "test", "offboarded")
        .await
        .unwrap();
    let e = f.refused(&token).await;
    assert_eq!(e, VerifyError::ClientInactive);
    assert_eq!(e.reason(), Reason::ClientInactive);

    let mut c = f.claims();
    c["client_id"] = json!(f.production_client_id);
    assert_eq!(
        f.refused(&f.own_token(&c)).await,
        VerifyError::WrongEnvironment
    );
    c["client_id"] = json!(uuid::Uuid::new_v4().to_string());
    assert_eq!(
        f.refused(&f.own_token(&c)).await,
        VerifyError::UnknownClient
    );
}

fn foreign_claims(f: &Fixture) -> Value {
    json!({"iss": FOREIGN, "aud": "scopecast", "sub": "svc", "client_id": f.client_id,
           "scope": "subscribe:adt.> openid", "exp": now() + 60})
}

#[tokio::test]
async fn external_issuer_tokens_verify_with_its_keys_only() {
    let f = fixture(None).await;
    let t = f.foreign.sign(&foreign_claims(&f), Some("JWT"));
    let p = f.verifier.verify(&t).await.unwrap();
    assert_eq!(p.issuer, FOREIGN);
    assert!(p.scope.allows_subscribe(&"adt.x".parse().unwrap()));
    // Its tokens under our audience, or our key under its issuer, are refused.
    let mut c = foreign_claims(&f);
    c["aud"] = json!(ISSUER);
    assert_eq!(
        f.refused(&f.foreign.sign(&c, None)).await,
        VerifyError::WrongAudience
    );
    let t = f.own.sign(&foreign_claims(&f), None);
    assert_eq!(f.refused(&t).await, VerifyError::UnknownKey);
}

#[tokio::test]
async fn an_unknown_kid_storm_causes_one_fetch_and_cached_keys_survive_an_outage() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks = Arc::new(std::sync::Mutex::new(Value::Null));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = {
        let fetches = fetches.clone();
        let jwks = jwks.clone();
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let fetches = fetches.clone();
                let jwks = jwks.clone();
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let body = jwks.lock().unwrap().clone();
                    axum::Json(body)
                }
            }),
        )
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    let f = fixture(Some(format!("http://{addr}/jwks.json"))).await;
    *jwks.lock().unwrap() = f.foreign.jwks();

    let good = f.foreign.sign(&foreign_claims(&f), None);
    f.verifier.verify(&good).await.unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    for i in 0..200 {
        let stranger = TestKey {
            kid: format!("random-{i}"),
            ..TestKey::rsa_shared(&f.foreign)
        };
        let t = stranger.sign(&foreign_claims(&f), None);
        assert_eq!(f.refused(&t).await, VerifyError::UnknownKey);
    }
    assert!(
        fetches.load(Ordering::SeqCst) <= 2,
        "fetched {} times",
        fetches.load(Ordering::SeqCst)
    );

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    f.verifier
        .verify(&good)
        .await
        .expect("cached key still works with the JWKS endpoint down");
}

#[tokio::test]
async fn a_token_naming_another_environment_is_refused_though_our_key_signed_it() {
    let f = fixture(None).await;
    let scope = ScopeSet::parse("subscribe:adt.*").unwrap();
    let t = f.issuer.issue(&f.client_id, &scope).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            t.access_token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["env"], ENV, "{claims}");
    // Signed with this environment's own key, naming another environment (a copied data
    // folder or backup serving a second environment with the same key).
    for other in [
        json!("production/main"),
        json!("non-production/train"),
        json!(null),
    ] {
        let mut c = f.claims();
        c["env"] = other.clone();
        let e = f.refused(&f.own_token(&c)).await;
        assert!(
            matches!(&e, VerifyError::OtherEnvironment { expected, .. } if expected == ENV),
            "{other}: {e:?}"
        );
        assert_eq!(e.reason(), Reason::InvalidToken);
        assert_eq!(e.label(), "other_environment");
    }
    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("env");
    assert!(matches!(
        f.refused(&f.own_token(&c)).await,
        VerifyError::OtherEnvironment { .. }
    ));
    // The same token issued by a broker of another environment sharing the key.
    let keys = f.issuer.keys().clone();
    let other = TokenIssuer::new(ISSUER.into(), 300, keys, "production/main".into());
    let foreign = other.issue(&f.client_id, &scope).unwrap();
    assert!(matches!(
        f.refused(&foreign.access_token).await,
        VerifyError::OtherEnvironment { named, .. } if named == "production/main"
    ));
}
