//! Tokens of external issuers shaped like the real ones: Microsoft Entra ID (v1 and v2),
//! Okta and Keycloak, with the claim names their documentation gives, signed with real RSA
//! keys published in real JWK Set files. Checks the claim mapping (client ID and scope),
//! the lifetime limit, and that nothing is read from a token before its signature verified.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use scopecast_broker::auth::jwks::JwksCache;
use scopecast_broker::auth::keys::KeyRing;
use scopecast_broker::auth::token::{Principal, TokenIssuer, TokenVerifier, VerifyError};
use scopecast_broker::registry::{CreateApplication, Registry, SqliteStore};
use scopecast_broker::{EnvironmentKind, ExternalIssuer};
use scopecast_protocol::{Reason, ScopeSet};
use scopecast_tests::keys::{TestKey, now, signed_with_header};
use serde_json::{Value, json};

const OWN: &str = "https://events.hospital.example";
/// The hospital's Entra ID tenant.
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The application ID (client ID) of the app registration that represents the broker in
/// Entra ID: the `aud` of v2 tokens.
const ENTRA_API_APP_ID: &str = "0f2b3a4c-5d6e-4f70-8a9b-0c1d2e3f4a5b";
/// Its application ID URI: the `aud` of v1 tokens requested for `api://scopecast/.default`.
const ENTRA_API_URI: &str = "api://scopecast";
const OKTA: &str = "https://hospital.okta.com/oauth2/default";
const KEYCLOAK: &str = "https://sso.hospital.example/realms/hospital";
const CUSTOM: &str = "https://login.hospital.example";

fn entra_v2() -> String {
    format!("https://login.microsoftonline.com/{TENANT}/v2.0")
}

fn entra_v1() -> String {
    format!("https://sts.windows.net/{TENANT}/")
}

struct Fixture {
    _dir: tempfile::TempDir,
    verifier: TokenVerifier,
    keys: KeyRing,
    registry: Registry,
    /// Active, non-production: this broker's kind.
    client_id: String,
    /// Active, but production.
    production_client_id: String,
    entra: TestKey,
    okta: TestKey,
    keycloak: TestKey,
    custom: TestKey,
}

/// The issuers' RSA keys, made once for all tests (RSA key generation is slow).
fn issuer_keys() -> &'static [TestKey; 4] {
    static KEYS: OnceLock<[TestKey; 4]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            "entra-kid-1",
            "okta-kid-1",
            "keycloak-kid-1",
            "custom-kid-1",
        ]
        .map(|kid| TestKey::rsa(kid, 2048, Algorithm::RS256))
    })
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyRing::open(&dir.path().join("keys.json"), 600).unwrap();
    let store = SqliteStore::open(&dir.path().join("registry.sqlite"))
        .await
        .unwrap();
    let registry = Registry::open(store).await.unwrap();
    let (_app, secrets) = registry
        .create_application(
            CreateApplication {
                name: "Bed board".into(),
                vendor: "Test".into(),
                description: String::new(),
                scope: "subscribe:adt.>".into(),
            },
            "test",
        )
        .await
        .unwrap();
    let id_of = |kind| {
        secrets
            .iter()
            .find(|s| s.kind == kind)
            .unwrap()
            .client_id
            .clone()
    };
    let client_id = id_of(EnvironmentKind::NonProduction);
    let production_client_id = id_of(EnvironmentKind::Production);
    for id in [&client_id, &production_client_id] {
        registry.set_active(id, true, "test", "").await.unwrap();
    }

    // Entra ID signs v1 and v2 tokens with the same tenant keys.
    let [entra, okta, keycloak, custom] = issuer_keys().each_ref().map(TestKey::rsa_shared);
    let jwks_file = |name: &str, key: &TestKey| {
        let path = dir.path().join(name);
        std::fs::write(&path, key.jwks().to_string()).unwrap();
        Some(path)
    };
    let external = vec![
        // Entra ID access tokens have `typ: JWT`, and by default live 60 to 90 minutes.
        ExternalIssuer {
            jwks_file: jwks_file("entra.json", &entra),
            require_typ: false,
            max_token_lifetime_s: 5_400,
            ..ExternalIssuer::new(entra_v2(), ENTRA_API_APP_ID)
        },
        ExternalIssuer {
            jwks_file: jwks_file("entra-v1.json", &entra),
            require_typ: false,
            max_token_lifetime_s: 5_400,
            ..ExternalIssuer::new(entra_v1(), ENTRA_API_URI)
        },
        // Okta puts no `typ` in its access tokens' header. Defaults otherwise (one hour).
        ExternalIssuer {
            jwks_file: jwks_file("okta.json", &okta),
            require_typ: false,
            ..ExternalIssuer::new(OKTA, "api://default")
        },
        ExternalIssuer {
            jwks_file: jwks_file("keycloak.json", &keycloak),
            require_typ: false,
            ..ExternalIssuer::new(KEYCLOAK, "scopecast")
        },
        // A mapping of its own: the client ID only from `cid`, the scope only from `scp`.
        ExternalIssuer {
            jwks_file: jwks_file("custom.json", &custom),
            require_typ: false,
            client_id_claims: vec!["cid".into()],
            scope_claims: vec!["scp".into()],
            ..ExternalIssuer::new(CUSTOM, "scopecast")
        },
    ];
    let issuer = TokenIssuer::new(
        OWN.into(),
        300,
        keys.clone(),
        "non-production/default".into(),
    );
    let verifier = TokenVerifier::new(
        &issuer,
        &external,
        JwksCache::new(Duration::from_secs(2), Duration::from_secs(30)),
        registry.clone(),
        EnvironmentKind::NonProduction,
        30,
    )
    .unwrap();
    Fixture {
        _dir: dir,
        verifier,
        keys,
        registry,
        client_id,
        production_client_id,
        entra,
        okta,
        keycloak,
        custom,
    }
}

impl Fixture {
    async fn accepted(&self, token: &str) -> Principal {
        self.verifier.verify(token).await.unwrap()
    }

    async fn refused(&self, token: &str) -> VerifyError {
        self.verifier
            .verify(token)
            .await
            .expect_err("token should be refused")
    }

    /// An Entra ID v2.0 app-only (client credentials) access token for the broker's API, with
    /// the application permission `subscribe:adt.>` granted (in `roles`).
    fn entra_v2_claims(&self) -> Value {
        let t = now();
        json!({
            "aud": ENTRA_API_APP_ID,
            "iss": entra_v2(),
            "iat": t, "nbf": t, "exp": t + 4_500,
            "aio": "k2BgYDD2tXu3+9hZ5r3Bdl1ZvQ==",
            "azp": self.client_id,
            "azpacr": "1",
            "idtyp": "app",
            "oid": "8c4d3a2b-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
            "rh": "0.AXQAv4j5cvGGr0GRqy180BHbRw.",
            "roles": ["subscribe:adt.>"],
            "sub": "8c4d3a2b-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
            "tid": TENANT,
            "uti": "Yf9sGq3dPUq0xw3H0A9gAA",
            "ver": "2.0",
        })
    }

    /// The same grant as a v1.0 token: the client in `appid`, no `azp`.
    fn entra_v1_claims(&self) -> Value {
        let t = now();
        json!({
            "aud": ENTRA_API_URI,
            "iss": entra_v1(),
            "iat": t, "nbf": t, "exp": t + 4_500,
            "aio": "E2ZgYNj4mP3xc7b0V1t9tQ8A",
            "appid": self.client_id,
            "appidacr": "1",
            "idp": entra_v1(),
            "idtyp": "app",
            "oid": "8c4d3a2b-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
            "rh": "0.AXQAv4j5cvGGr0GRqy180BHbRw.",
            "roles": ["subscribe:adt.>"],
            "sub": "8c4d3a2b-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
            "tid": TENANT,
            "uti": "Qm3kX0u1tEy6ZL4y7mR2AA",
            "ver": "1.0",
        })
    }

    /// Entra ID's header: `typ` is `JWT`, and there is an `x5t` next to the `kid`.
    fn entra_token(&self, claims: &Value) -> String {
        let header = json!({"typ": "JWT", "alg": "RS256", "x5t": self.entra.kid,
                            "kid": self.entra.kid});
        signed_with_header(&header, claims, &self.entra)
    }

    /// An Okta custom authorization server's client-credentials token.
    fn okta_claims(&self) -> Value {
        let t = now();
        json!({
            "ver": 1,
            "jti": "AT.u3DfLrnYkw4Sx2cRgS2VZ5B4xaLb7XnA8H9dJt2kqQw",
            "iss": OKTA,
            "aud": "api://default",
            "iat": t, "exp": t + 3_600,
            "cid": self.client_id,
            "uid": "00u1a2b3c4d5e6f7g8h9",
            "scp": ["subscribe:adt.>"],
            "sub": self.client_id,
        })
    }

    /// A Keycloak client-credentials token, with an audience mapper adding `scopecast`.
    fn keycloak_claims(&self) -> Value {
        let t = now();
        json!({
            "exp": t + 300, "iat": t,
            "jti": "6f1c2d3e-4b5a-4c7d-9e8f-0a1b2c3d4e5f",
            "iss": KEYCLOAK,
            "aud": ["scopecast", "account"],
            "sub": "4a9e6b1c-2d3f-4e5a-8b7c-9d0e1f2a3b4c",
            "typ": "Bearer",
            "azp": self.client_id,
            "acr": "1",
            "realm_access": {"roles": ["default-roles-hospital", "offline_access"]},
            "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
            "scope": "profile email subscribe:adt.>",
            "clientId": self.client_id,
            "clientHost": "10.20.30.40",
            "email_verified": false,
            "preferred_username": format!("service-account-{}", self.client_id),
            "clientAddress": "10.20.30.40",
        })
    }

    fn custom_claims(&self) -> Value {
        json!({"iss": CUSTOM, "aud": "scopecast", "iat": now(), "exp": now() + 300,
               "cid": self.client_id, "scp": ["subscribe:adt.>"]})
    }
}

fn jwt(key: &TestKey, claims: &Value) -> String {
    key.sign(claims, Some("JWT"))
}

fn scope(s: &str) -> ScopeSet {
    ScopeSet::parse(s).unwrap()
}

fn remove(mut claims: Value, names: &[&str]) -> Value {
    for name in names {
        claims.as_object_mut().unwrap().remove(*name);
    }
    claims
}

#[tokio::test]
async fn entra_id_v2_app_only_token_maps_azp_and_roles() {
    let f = fixture().await;
    let p = f.accepted(&f.entra_token(&f.entra_v2_claims())).await;
    assert_eq!(p.client_id, f.client_id);
    assert_eq!(*p.scope, scope("subscribe:adt.>"));
    assert!(p.scope.allows_subscribe(&"adt.a01".parse().unwrap()));
    assert_eq!(p.issuer, entra_v2());
    assert_eq!(p.kind, EnvironmentKind::NonProduction);
}

#[tokio::test]
async fn entra_id_v1_token_maps_appid() {
    let f = fixture().await;
    let p = f.accepted(&f.entra_token(&f.entra_v1_claims())).await;
    assert_eq!(p.client_id, f.client_id);
    assert_eq!(*p.scope, scope("subscribe:adt.>"));
    assert_eq!(p.issuer, entra_v1());
}

#[tokio::test]
async fn okta_token_maps_cid_and_the_scp_array() {
    let f = fixture().await;
    // Okta's `sub` is the client ID in client credentials; with a user it would not be, and
    // `cid` is what names the client either way.
    let mut claims = f.okta_claims();
    claims["sub"] = json!("nurse@hospital.example");
    let p = f.accepted(&f.okta.sign(&claims, None)).await;
    assert_eq!(p.client_id, f.client_id);
    assert_eq!(*p.scope, scope("subscribe:adt.>"));
    assert_eq!(p.issuer, OKTA);
}

#[tokio::test]
async fn keycloak_client_credentials_token_maps_azp_and_the_scope_string() {
    let f = fixture().await;
    let p = f.accepted(&jwt(&f.keycloak, &f.keycloak_claims())).await;
    assert_eq!(p.client_id, f.client_id);
    assert_eq!(*p.scope, scope("profile email subscribe:adt.>"));
    assert!(p.scope.allows_subscribe(&"adt.>".parse().unwrap()));
    assert!(!p.scope.allows_publish(&"adt.a01".parse().unwrap()));
    assert_eq!(p.issuer, KEYCLOAK);
}

#[tokio::test]
async fn the_first_scope_claim_present_is_the_grant_and_others_are_not_merged() {
    let f = fixture().await;
    // A delegated Entra ID token carries the user's delegated scopes in `scp` and may also
    // carry the user's app roles in `roles`: the roles must not widen the grant.
    let mut claims = f.entra_v2_claims();
    claims["scp"] = json!("User.Read");
    let p = f.accepted(&f.entra_token(&claims)).await;
    assert_eq!(*p.scope, scope("User.Read"));
    assert!(!p.scope.allows_subscribe(&"adt.a01".parse().unwrap()));
    // Present but empty is still the first present: it grants nothing.
    claims["scp"] = json!([]);
    assert!(f.accepted(&f.entra_token(&claims)).await.scope.is_empty());
    // No scope claim at all: the empty scope.
    let claims = remove(f.entra_v2_claims(), &["roles"]);
    assert!(f.accepted(&f.entra_token(&claims)).await.scope.is_empty());
}

#[tokio::test]
async fn a_custom_mapping_from_config_is_honoured() {
    let f = fixture().await;
    let p = f.accepted(&jwt(&f.custom, &f.custom_claims())).await;
    assert_eq!(p.client_id, f.client_id);
    assert_eq!(*p.scope, scope("subscribe:adt.>"));

    // `scope` and `roles` are not configured for this issuer: they grant nothing here.
    let mut claims = f.custom_claims();
    claims["scope"] = json!("subscribe:> publish:>");
    claims["roles"] = json!(["publish:>"]);
    let p = f.accepted(&jwt(&f.custom, &claims)).await;
    assert_eq!(*p.scope, scope("subscribe:adt.>"));

    // Nor do the default client ID claims.
    let mut claims = remove(f.custom_claims(), &["cid"]);
    claims["client_id"] = json!(f.client_id);
    claims["azp"] = json!(f.client_id);
    let e = f.refused(&jwt(&f.custom, &claims)).await;
    assert_eq!(e, VerifyError::MissingClaim("cid".into()));
    assert_eq!(e.to_string(), "the token has no `cid` claim");
}

#[tokio::test]
async fn a_token_without_a_usable_client_id_claim_names_the_configured_claims() {
    let f = fixture().await;
    let claims = remove(f.entra_v2_claims(), &["azp"]);
    let e = f.refused(&f.entra_token(&claims)).await;
    assert_eq!(
        e,
        VerifyError::MissingClaim("client_id,azp,appid,cid".into())
    );
    assert_eq!(
        e.to_string(),
        "the token has none of the claims `client_id`, `azp`, `appid`, `cid`"
    );
    assert_eq!(e.reason(), Reason::InvalidToken);
    // Keycloak's `clientId` (camel case) is not in the default list; `sub` never is.
    let claims = remove(f.keycloak_claims(), &["azp"]);
    assert_eq!(
        f.refused(&jwt(&f.keycloak, &claims)).await,
        VerifyError::MissingClaim("client_id,azp,appid,cid".into())
    );
    // A present client ID claim of the wrong type is refused, not skipped for the next one.
    let mut claims = f.okta_claims();
    claims["client_id"] = json!(42);
    let e = f.refused(&f.okta.sign(&claims, None)).await;
    assert!(
        matches!(&e, VerifyError::Malformed(m) if m.contains("`client_id`")),
        "{e}"
    );
    claims["client_id"] = json!("");
    assert!(matches!(
        f.refused(&f.okta.sign(&claims, None)).await,
        VerifyError::Malformed(_)
    ));
}

#[tokio::test]
async fn scope_claims_of_the_wrong_shape_are_malformed() {
    let f = fixture().await;
    let cases = [
        (
            json!(42),
            "`roles` claim (the scope) must be a string or an array of strings",
        ),
        (
            json!({"subscribe": "adt.>"}),
            "must be a string or an array of strings",
        ),
        (
            json!(["subscribe:adt.>", 7]),
            "must be a string or an array of strings",
        ),
        (json!(null), "must be a string or an array of strings"),
        // One element is one scope token: no smuggling a second one in with a space.
        (
            json!(["subscribe:adt.> publish:>"]),
            "element 1 of the `roles` claim",
        ),
        (
            json!(["subscribe:adt.>", ""]),
            "element 2 of the `roles` claim",
        ),
        (
            json!(["subscribe:adt.>", "publish:ADT"]),
            "element 2 of the `roles` claim",
        ),
    ];
    for (roles, message) in cases {
        let mut claims = f.entra_v2_claims();
        claims["roles"] = roles.clone();
        let e = f.refused(&f.entra_token(&claims)).await;
        assert!(
            matches!(&e, VerifyError::Malformed(m) if m.contains(message)),
            "roles = {roles}: {e}"
        );
        assert_eq!(e.reason(), Reason::InvalidToken);
    }
    // A string claim is space-delimited, with the scope grammar's rules.
    let mut claims = f.keycloak_claims();
    claims["scope"] = json!("profile  email");
    let e = f.refused(&jwt(&f.keycloak, &claims)).await;
    assert!(
        matches!(&e, VerifyError::Malformed(m) if m.contains("`scope` claim")),
        "{e}"
    );
}

#[tokio::test]
async fn tokens_living_longer_than_the_issuers_limit_are_refused() {
    let f = fixture().await;
    let t = now();
    // Okta's issuer has the default limit, one hour. A two-hour token:
    let mut claims = f.okta_claims();
    claims["exp"] = json!(t + 7_200);
    let e = f.refused(&f.okta.sign(&claims, None)).await;
    assert_eq!(e, VerifyError::LifetimeTooLong { max_s: 3_600 });
    assert_eq!(e.reason(), Reason::InvalidToken);
    assert_eq!(e.label(), "lifetime_too_long");
    let message = e.to_string();
    assert!(
        message.contains("3600 s") && message.contains("max_token_lifetime_s"),
        "{message}"
    );

    // No `iat`, but `exp` two hours ahead: the remaining life alone is too long.
    let claims = remove(claims, &["iat"]);
    assert_eq!(
        f.refused(&f.okta.sign(&claims, None)).await,
        VerifyError::LifetimeTooLong { max_s: 3_600 }
    );

    // Issued long ago for two hours, with a minute left: `exp - iat` is too long.
    let mut claims = f.okta_claims();
    claims["iat"] = json!(t - 7_140);
    claims["exp"] = json!(t + 60);
    assert_eq!(
        f.refused(&f.okta.sign(&claims, None)).await,
        VerifyError::LifetimeTooLong { max_s: 3_600 }
    );

    // Exactly the limit is accepted; so is a clock ahead of ours by less than the leeway.
    let mut claims = f.okta_claims();
    claims["exp"] = json!(t + 3_600);
    f.accepted(&f.okta.sign(&claims, None)).await;
    let mut claims = remove(f.okta_claims(), &["iat"]);
    claims["exp"] = json!(t + 3_600 + 20);
    f.accepted(&f.okta.sign(&claims, None)).await;

    // Entra ID's issuer allows 90 minutes (its default lifetime is 60 to 90): a 75-minute
    // token passes, a two-hour one does not.
    let mut claims = f.entra_v2_claims();
    claims["exp"] = json!(t + 4_500);
    f.accepted(&f.entra_token(&claims)).await;
    claims["exp"] = json!(t + 7_200);
    assert_eq!(
        f.refused(&f.entra_token(&claims)).await,
        VerifyError::LifetimeTooLong { max_s: 5_400 }
    );

    // `iat` of the wrong type cannot dodge the rule.
    let mut claims = f.okta_claims();
    claims["iat"] = json!("yesterday");
    assert!(matches!(
        f.refused(&f.okta.sign(&claims, None)).await,
        VerifyError::Malformed(m) if m.contains("`iat`")
    ));
}

#[tokio::test]
async fn our_own_tokens_are_not_subject_to_the_external_limit() {
    let f = fixture().await;
    let long = TokenIssuer::new(
        OWN.into(),
        7_200,
        f.keys.clone(),
        "non-production/default".into(),
    );
    let t = long.issue(&f.client_id, &scope("subscribe:adt.>")).unwrap();
    let p = f.accepted(&t.access_token).await;
    assert_eq!(p.issuer, OWN);
    assert!(p.expires_at.unix_seconds() > now() + 7_000);
}

#[tokio::test]
async fn claims_are_judged_only_after_the_signature_verifies() {
    let f = fixture().await;
    // Same `kid`, another key: a forgery. Its claims break every other rule, yet the
    // refusal is the signature, so nothing in them was read before it was checked.
    let forger = TestKey::rsa(&f.okta.kid, 2048, Algorithm::RS256);
    let mut claims = remove(f.okta_claims(), &["cid"]);
    claims["exp"] = json!(now() + 86_400);
    claims["scp"] = json!(42);
    assert_eq!(
        f.refused(&forger.sign(&claims, None)).await,
        VerifyError::BadSignature
    );
    // One issuer's key does not sign for another.
    let t = jwt(&f.okta, &f.keycloak_claims());
    assert_eq!(f.refused(&t).await, VerifyError::UnknownKey);
}

#[tokio::test]
async fn the_mapped_client_id_must_be_registered_active_and_of_this_kind() {
    let f = fixture().await;
    let mut claims = f.entra_v2_claims();
    claims["azp"] = json!(f.production_client_id);
    assert_eq!(
        f.refused(&f.entra_token(&claims)).await,
        VerifyError::WrongEnvironment
    );
    claims["azp"] = json!("3f8a1c2b-4d5e-4f60-9a8b-7c6d5e4f3a2b");
    assert_eq!(
        f.refused(&f.entra_token(&claims)).await,
        VerifyError::UnknownClient
    );
    f.registry
        .set_active(&f.client_id, false, "test", "offboarded")
        .await
        .unwrap();
    assert_eq!(
        f.refused(&jwt(&f.keycloak, &f.keycloak_claims())).await,
        VerifyError::ClientInactive
    );
}
