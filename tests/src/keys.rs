//! Real key pairs for tests: client keys for `private_key_jwt` and keys of foreign issuers.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

/// A private key, its public JWK and its algorithm.
pub struct TestKey {
    /// `kid`.
    pub kid: String,
    /// Algorithm pinned to it.
    pub alg: Algorithm,
    /// PKCS#8 PEM of the private key.
    pub pem: String,
    /// The public JWK (with `kid`).
    pub public_jwk: Value,
    /// For signing.
    pub encoding: EncodingKey,
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    for chunk in b.chunks_mut(16) {
        chunk.copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    }
    b
}

impl TestKey {
    /// A fresh EC P-256 key (ES256).
    pub fn es256(kid: &str) -> TestKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let secret = loop {
            if let Ok(k) = p256::SecretKey::from_slice(&random32()) {
                break k;
            }
        };
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .expect("pem")
            .to_string();
        let p = secret.public_key().to_encoded_point(false);
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(p.x().expect("x")), "y": URL_SAFE_NO_PAD.encode(p.y().expect("y"))});
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).expect("ec key");
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            pem,
            public_jwk: jwk,
            encoding,
        }
    }

    /// A fresh RSA key of `bits` bits, used with `alg` (RS256 or RS384).
    pub fn rsa(kid: &str, bits: usize, alg: Algorithm) -> TestKey {
        let mut rng = rsa::rand_core::OsRng;
        let key = rsa::RsaPrivateKey::new(&mut rng, bits).expect("rsa key");
        let pem = key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
        let jwk = json!({"kty": "RSA", "kid": kid, "alg": format!("{alg:?}"),
            "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()), "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be())});
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa key");
        TestKey {
            kid: kid.to_owned(),
            alg,
            pem,
            public_jwk: jwk,
            encoding,
        }
    }

    /// The same key material as `other` (for tests that only change the `kid`).
    pub fn rsa_shared(other: &TestKey) -> TestKey {
        TestKey {
            kid: other.kid.clone(),
            alg: other.alg,
            pem: other.pem.clone(),
            public_jwk: other.public_jwk.clone(),
            encoding: other.encoding.clone(),
        }
    }

    /// A JWK Set holding only this public key.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.public_jwk]})
    }

    /// Signs `claims` with this key's algorithm and `kid`, and extra header members.
    pub fn sign(&self, claims: &Value, typ: Option<&str>) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        h.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("sign")
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A client assertion (RFC 7523) from `client_id` to `audience`, `exp` `ttl_s` ahead.
pub fn assertion(key: &TestKey, client_id: &str, audience: &str, ttl_s: i64) -> String {
    let claims = json!({"iss": client_id, "sub": client_id, "aud": audience,
        "exp": now() + ttl_s, "iat": now(), "jti": uuid::Uuid::new_v4().to_string()});
    key.sign(&claims, None)
}

/// A compact JWS with an arbitrary header (odd `kid` types, extra members...) and claims,
/// really signed by `key` with its algorithm.
pub fn signed_with_header(header: &Value, claims: &Value, key: &TestKey) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{h}.{c}");
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, key.alg).expect("sign");
    format!("{input}.{sig}")
}

/// A compact JWS with an arbitrary header and claims, signed with HMAC-SHA256 by `secret`
/// (or unsigned when `secret` is `None`): for attacks that a verifier must refuse.
pub fn forged(header: &Value, claims: &Value, secret: Option<&[u8]>) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{h}.{c}");
    match secret {
        None => format!("{input}."),
        Some(s) => {
            let key = EncodingKey::from_secret(s);
            let sig =
                jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).expect("hmac");
            format!("{input}.{sig}")
        }
    }
}
