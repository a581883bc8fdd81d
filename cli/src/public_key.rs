//! `scopecast app set-keys --jwks FILE` with a PEM public key: the SPKI `PUBLIC KEY` that
//! other tools write (`openssl pkey -pubout`), EC P-256, EC P-384 or RSA, becomes the JWK Set
//! the admin API takes.

use anyhow::bail;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The JWK Set of one PEM public key (SPKI, `-----BEGIN PUBLIC KEY-----`): `kty`, `crv`, `x`,
/// `y` (EC) or `n`, `e` (RSA), `kid` = its RFC 7638 thumbprint, `use` = `sig`, and `alg`
/// ES256 (P-256) or ES384 (P-384). An RSA key gets no `alg`: the broker then accepts both
/// RS256 and RS384 with it (the `scopecast` CLI signs RS384, other tools often RS256).
///
/// # Errors
/// When the PEM holds no EC P-256, EC P-384 or RSA public key.
pub(crate) fn jwk_set_from_pem(pem: &str) -> anyhow::Result<Value> {
    use p256::pkcs8::DecodePublicKey;
    if pem.contains("PRIVATE KEY") {
        bail!(
            "this PEM holds a private key: register the public key only (`openssl pkey -in KEY -pubout -out public.pem`)"
        );
    }
    if let Ok(k) = p256::PublicKey::from_public_key_pem(pem) {
        let jwk: Value = serde_json::to_value(k.to_jwk())?;
        return Ok(ec(jwk, "ES256"));
    }
    if let Ok(k) = p384::PublicKey::from_public_key_pem(pem) {
        let jwk: Value = serde_json::to_value(k.to_jwk())?;
        return Ok(ec(jwk, "ES384"));
    }
    if let Ok(k) = rsa::RsaPublicKey::from_public_key_pem(pem) {
        use rsa::traits::PublicKeyParts;
        let (n, e) = (b64(&k.n().to_bytes_be()), b64(&k.e().to_bytes_be()));
        let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
        return Ok(json!({"keys": [{"kty": "RSA", "n": n, "e": e, "kid": kid, "use": "sig"}]}));
    }
    bail!(
        "no public key this broker takes in this PEM: give a `PUBLIC KEY` (SPKI) of EC P-256, EC P-384 or RSA, or a JWK Set"
    )
}

/// `{"keys": [jwk]}` for an EC `jwk` (`kty`, `crv`, `x`, `y`) with its `kid` and `alg`.
fn ec(mut jwk: Value, alg: &str) -> Value {
    let member = |name: &str| jwk[name].as_str().unwrap_or_default().to_owned();
    let kid = thumbprint(&format!(
        r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
        member("crv"),
        member("x"),
        member("y")
    ));
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg);
    jwk["use"] = json!("sig");
    json!({ "keys": [jwk] })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 thumbprint of the required members, given in lexicographic order.
fn thumbprint(canonical: &str) -> String {
    b64(&Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_ec_public_key_pem_becomes_a_jwk_set_with_its_thumbprint_kid() {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pem = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let set = jwk_set_from_pem(&pem).unwrap();
        let key = &set["keys"][0];
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["alg"], "ES256");
        assert!(key.get("d").is_none());
        // The SDK's PrivateKey computes the same RFC 7638 thumbprint from the private key.
        let private = scopecast_client::PrivateKey::from_pem(
            &p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&secret, LineEnding::LF).unwrap(),
        )
        .unwrap();
        assert_eq!(key["kid"], private.kid());
    }

    #[test]
    fn a_private_key_or_garbage_is_refused_with_what_to_give() {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let err = jwk_set_from_pem(&pem).unwrap_err().to_string();
        assert!(err.contains("-pubout"), "{err}");
        let err = jwk_set_from_pem("hello").unwrap_err().to_string();
        assert!(err.contains("PUBLIC KEY"), "{err}");
    }
}
