//! Micro-benchmarks of token verification: the ES256 signature check alone, and the whole
//! verifier (header routing, signature, claims, registry snapshot lookup) as a WebSocket
//! upgrade runs it, for a token it verified before (remembered: no signature check) and for
//! a new token each time.
//!
//! Run: `cargo bench -p scopecast-bench --bench auth`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, Validation};
use scopecast_broker::EnvironmentKind;
use scopecast_broker::auth::jwks::JwksCache;
use scopecast_broker::auth::keys::KeyRing;
use scopecast_broker::auth::token::{TokenIssuer, TokenVerifier};
use scopecast_broker::registry::{CreateApplication, Registry, SqliteStore};
use scopecast_protocol::ScopeSet;

fn token_verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = KeyRing::open(&dir.path().join("keys.json"), 600).expect("keys");
    let issuer = TokenIssuer::new(
        "https://bench.example".into(),
        300,
        keys.clone(),
        "non-production/bench".into(),
    );
    let (registry, client_id) = rt.block_on(async {
        let store = SqliteStore::open(&dir.path().join("registry.sqlite"))
            .await
            .expect("store");
        let registry = Registry::open(store).await.expect("registry");
        let (_, secrets) = registry
            .create_application(
                CreateApplication {
                    name: "bench".into(),
                    vendor: "bench".into(),
                    description: String::new(),
                    scope: "subscribe:fhir.>".into(),
                },
                "bench",
            )
            .await
            .expect("app");
        let id = secrets
            .iter()
            .find(|s| s.kind == EnvironmentKind::NonProduction)
            .expect("client")
            .client_id
            .clone();
        registry
            .set_active(&id, true, "bench", "")
            .await
            .expect("activate");
        (registry, id)
    });
    let verifier = TokenVerifier::new(
        &issuer,
        &[],
        JwksCache::new(Duration::from_secs(1), Duration::from_secs(30)),
        registry,
        EnvironmentKind::NonProduction,
        30,
    )
    .expect("verifier");
    let scope = ScopeSet::parse("subscribe:fhir.>").expect("scope");
    let token = issuer
        .issue(&client_id, &scope)
        .expect("token")
        .access_token;
    let kid = keys.signing_key().expect("key").kid;
    let decoding = keys.decoding_key(&kid).expect("decoding key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["https://bench.example"]);

    let mut group = c.benchmark_group("token_verify");
    group.bench_function("es256_signature_and_claims", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &decoding, &validation)
                .expect("valid")
        })
    });
    group.bench_function("full_verifier_token_seen_before", |b| {
        b.iter(|| {
            rt.block_on(verifier.verify(black_box(&token)))
                .expect("valid")
        })
    });
    // A token never seen before each time (minted outside the timing; its `jti` differs):
    // the signature check plus the memory's hash, insert and, once full, eviction.
    group.bench_function("full_verifier_new_token", |b| {
        b.iter_batched(
            || {
                issuer
                    .issue(&client_id, &scope)
                    .expect("token")
                    .access_token
            },
            |token| {
                rt.block_on(verifier.verify(black_box(&token)))
                    .expect("valid")
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("es256_sign", |b| {
        b.iter(|| issuer.issue(black_box(&client_id), &scope).expect("token"))
    });
    group.finish();
}

criterion_group!(benches, token_verify);
criterion_main!(benches);
