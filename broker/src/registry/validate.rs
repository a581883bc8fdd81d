//! Input rules for the registry: names, identifiers, scope ceilings and uploaded public keys.
//!
//! Identifiers (application ids, client IDs, key ids) may reach topics, metric labels and log
//! lines, so they never hold whitespace, control characters, topic separators or wildcards.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// A value that breaks a registry rule, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct InvalidInput {
    /// The field at fault (dotted for nested ones, e.g. `jwks.keys[0].n`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidInput {
    InvalidInput {
        field: field.into(),
        message: message.into(),
    }
}

/// Most characters in an application name or vendor.
pub const MAX_NAME_CHARS: usize = 100;
/// Most characters in a description.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Most keys in an uploaded JWK Set.
pub const MAX_JWKS_KEYS: usize = 10;
/// Most bytes in a `kid`.
pub const MAX_KID_BYTES: usize = 128;

/// A display name (application name, vendor): trimmed, 1 to 100 characters, no control
/// characters. Returns the trimmed value.
///
/// # Errors
/// [`InvalidInput`] naming `field`.
pub fn name(field: &str, value: &str) -> Result<String, InvalidInput> {
    let v = value.trim();
    if v.chars().any(invisible) {
        return Err(invalid(
            field,
            "must not contain invisible or direction-changing characters",
        ));
    }
    if v.contains("  ") || v.chars().any(|c| c.is_whitespace() && c != ' ') {
        return Err(invalid(field, "words are separated by single plain spaces"));
    }
    if v.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if v.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

/// Unicode format characters and separators that can hide or reorder text (Cf, Zl, Zp): zero
/// width characters, bidirectional controls, the byte order mark.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// A free-text description: at most 2,000 characters; line breaks allowed, other control
/// characters not.
///
/// # Errors
/// [`InvalidInput`] naming `description`.
pub fn description(value: &str) -> Result<String, InvalidInput> {
    if value.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(
            "description",
            "must not contain control characters other than line breaks",
        ));
    }
    Ok(value.trim().to_owned())
}

/// A short reason or actor text (deactivation reason, who acted): at most 500 characters, no
/// control characters.
///
/// # Errors
/// [`InvalidInput`] naming `field`.
pub fn note(field: &str, value: &str) -> Result<String, InvalidInput> {
    if value.chars().count() > 500 {
        return Err(invalid(field, "must be at most 500 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(value.trim().to_owned())
}

/// A broker-made identifier (application id, client ID): a lower-case hyphenated UUID.
///
/// # Errors
/// [`InvalidInput`] naming `field`.
pub fn uuid_id(field: &str, value: &str) -> Result<String, InvalidInput> {
    match uuid::Uuid::try_parse(value) {
        Ok(u) if u.hyphenated().to_string() == value => Ok(value.to_owned()),
        _ => Err(invalid(
            field,
            "must be a lower-case hyphenated UUID as the broker made it",
        )),
    }
}

/// An identifier from outside (a `kid`): 1 to 128 bytes of `[A-Za-z0-9_-]` plus `.`-free
/// visible punctuation `:`, `=`, `+`, `/`... no whitespace, no control characters, no
/// `.`, `*` or `>`.
fn external_id(field: &str, value: &str) -> Result<(), InvalidInput> {
    if value.is_empty() || value.len() > MAX_KID_BYTES {
        return Err(invalid(
            field,
            format!("must be 1 to {MAX_KID_BYTES} bytes"),
        ));
    }
    if !value
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'.' | b'*' | b'>' | b'"' | b'\\'))
    {
        return Err(invalid(
            field,
            "must be visible ASCII without `.`, `*`, `>`, quotes, backslashes or whitespace",
        ));
    }
    Ok(())
}

/// One verified client public key, with the algorithms it may be used with (pinned per key).
#[derive(Clone)]
pub struct ClientKey {
    /// Its `kid`.
    pub kid: String,
    /// The algorithms allowed with this key: one, or RS256/RS384 for an RSA key without `alg`.
    pub algorithms: Vec<Algorithm>,
    /// The key, ready for signature checks.
    pub decoding_key: DecodingKey,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn b64_member(
    key: &serde_json::Map<String, Value>,
    field: &str,
    name: &str,
) -> Result<Vec<u8>, InvalidInput> {
    let text = key
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{field}.{name}"), "is required (base64url string)"))?;
    URL_SAFE_NO_PAD.decode(text).map_err(|_| {
        invalid(
            format!("{field}.{name}"),
            "must be base64url without padding",
        )
    })
}

/// Validates a public JWK Set (RFC 7517 section 5) for `private_key_jwt` and returns its keys.
///
/// Rules: 1 to 10 keys; each has a unique `kid`; `kty` `RSA` with a modulus of at least 2048
/// bits and `alg` RS256 or RS384 (or none: both), or `kty` `EC` on P-256 (ES256) or P-384
/// (ES384) with a point on the curve; `use`, if given, is `sig`; no private members (`d`, `p`,
/// `q`, `dp`, `dq`, `qi`, `oth`, `k`).
///
/// # Errors
/// [`InvalidInput`] naming the member at fault, e.g. `jwks.keys[1].crv`.
pub fn jwk_set(jwks: &Value) -> Result<Vec<ClientKey>, InvalidInput> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("jwks.keys", "a JWK Set is an object with a `keys` array"))?;
    if keys.is_empty() || keys.len() > MAX_JWKS_KEYS {
        return Err(invalid(
            "jwks.keys",
            format!("must hold 1 to {MAX_JWKS_KEYS} keys"),
        ));
    }
    let mut out: Vec<ClientKey> = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let field = format!("jwks.keys[{i}]");
        let key = key
            .as_object()
            .ok_or_else(|| invalid(&field, "must be a JSON object"))?;
        if let Some(private) = PRIVATE_MEMBERS.iter().find(|m| key.contains_key(**m)) {
            return Err(invalid(
                format!("{field}.{private}"),
                "private key material must never be uploaded; send the public key only",
            ));
        }
        let kid = key
            .get("kid")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{field}.kid"), "is required"))?;
        external_id(&format!("{field}.kid"), kid)?;
        if out.iter().any(|k| k.kid == kid) {
            return Err(invalid(
                format!("{field}.kid"),
                format!("duplicate kid {kid:?}"),
            ));
        }
        if let Some(u) = key.get("use")
            && u.as_str() != Some("sig")
        {
            return Err(invalid(
                format!("{field}.use"),
                "must be \"sig\" when present",
            ));
        }
        let alg = match key.get("alg") {
            None => None,
            Some(a) => Some(
                a.as_str()
                    .ok_or_else(|| invalid(format!("{field}.alg"), "must be a string"))?,
            ),
        };
        let kty = key.get("kty").and_then(Value::as_str).unwrap_or("");
        let (algorithms, decoding_key) = match kty {
            "RSA" => {
                // RFC 7518 section 2 (Base64urlUInt) asks for the fewest octets, but some
                // producers keep a sign byte (Java's `BigInteger.toByteArray`). aws-lc refuses
                // leading zeros in either value: without this, such a key would be accepted
                // here and then fail every signature check.
                let n = without_leading_zeros(b64_member(key, &field, "n")?);
                let e = without_leading_zeros(b64_member(key, &field, "e")?);
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8
                    - n.iter()
                        .find(|b| **b != 0)
                        .map_or(0, |b| b.leading_zeros() as usize);
                if bits < 2048 {
                    return Err(invalid(
                        format!("{field}.n"),
                        format!("RSA keys need at least 2048 bits; this one has {bits}"),
                    ));
                }
                if bits > 8192 {
                    return Err(invalid(
                        format!("{field}.n"),
                        "RSA keys of more than 8192 bits are refused",
                    ));
                }
                let e_value = e.iter().fold(0u64, |acc, b| {
                    acc.saturating_mul(256).saturating_add(u64::from(*b))
                });
                if e.is_empty() || e.len() > 4 || e_value < 3 || e_value % 2 == 0 {
                    return Err(invalid(
                        format!("{field}.e"),
                        "must be an odd public exponent from 3 to 2^32",
                    ));
                }
                // Let the RSA implementation judge the key as a whole (odd modulus, sane sizes).
                let public = rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(&n),
                    rsa::BigUint::from_bytes_be(&e),
                );
                if n.last().is_none_or(|b| b % 2 == 0) || public.is_err() {
                    return Err(invalid(format!("{field}.n"), "is not a usable RSA modulus"));
                }
                let algorithms = match alg {
                    None => vec![Algorithm::RS256, Algorithm::RS384],
                    Some("RS256") => vec![Algorithm::RS256],
                    Some("RS384") => vec![Algorithm::RS384],
                    Some(other) => {
                        return Err(invalid(
                            format!("{field}.alg"),
                            format!("{other:?} is not allowed for an RSA key; use RS256 or RS384"),
                        ));
                    }
                };
                let dk = DecodingKey::from_rsa_raw_components(&n, &e);
                (algorithms, dk)
            }
            "EC" => {
                let crv = key.get("crv").and_then(Value::as_str).unwrap_or("");
                let (expected_alg, len) = match crv {
                    "P-256" => ("ES256", 32),
                    "P-384" => ("ES384", 48),
                    other => {
                        return Err(invalid(
                            format!("{field}.crv"),
                            format!("{other:?} is not allowed; use P-256 or P-384"),
                        ));
                    }
                };
                if let Some(a) = alg
                    && a != expected_alg
                {
                    return Err(invalid(
                        format!("{field}.alg"),
                        format!("a {crv} key is used with {expected_alg}, not {a:?}"),
                    ));
                }
                let x = b64_member(key, &field, "x")?;
                let y = b64_member(key, &field, "y")?;
                if x.len() != len || y.len() != len {
                    return Err(invalid(
                        format!("{field}.x"),
                        format!("{crv} coordinates are {len} bytes each"),
                    ));
                }
                let on_curve = match crv {
                    "P-256" => p256::PublicKey::from_sec1_bytes(&sec1(&x, &y)).is_ok(),
                    _ => p384::PublicKey::from_sec1_bytes(&sec1(&x, &y)).is_ok(),
                };
                if !on_curve {
                    return Err(invalid(
                        format!("{field}.x"),
                        format!("the point is not on {crv}"),
                    ));
                }
                let algorithm = if len == 32 {
                    Algorithm::ES256
                } else {
                    Algorithm::ES384
                };
                let dk = DecodingKey::from_ec_components(
                    &URL_SAFE_NO_PAD.encode(&x),
                    &URL_SAFE_NO_PAD.encode(&y),
                )
                .map_err(|e| invalid(format!("{field}.x"), e.to_string()))?;
                (vec![algorithm], dk)
            }
            "" => return Err(invalid(format!("{field}.kty"), "is required")),
            other => {
                return Err(invalid(
                    format!("{field}.kty"),
                    format!("{other:?} is not allowed; use RSA or EC"),
                ));
            }
        };
        out.push(ClientKey {
            kid: kid.to_owned(),
            algorithms,
            decoding_key,
        });
    }
    Ok(out)
}

/// Uncompressed SEC1 encoding of a point: `04 || x || y`.
fn sec1(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + x.len() + y.len());
    v.push(4);
    v.extend_from_slice(x);
    v.extend_from_slice(y);
    v
}

/// `bytes` without its leading zero octets (a big-endian unsigned integer's minimal form).
fn without_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// A JWK Set URL: `https`, or `http` to a loopback host only (for development and tests).
///
/// # Errors
/// [`InvalidInput`] naming `jwks_uri`.
pub fn jwks_uri(value: &str) -> Result<String, InvalidInput> {
    let url =
        reqwest::Url::parse(value).map_err(|e| invalid("jwks_uri", format!("not a URL: {e}")))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(invalid(
                "jwks_uri",
                "must be an https URL (http only for loopback hosts)",
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("jwks_uri", "must not carry credentials"));
    }
    if value.len() > 2048 {
        return Err(invalid("jwks_uri", "must be at most 2048 bytes"));
    }
    Ok(url.to_string())
}

/// A JWK Set URL that travels in an application record to other environments, or that a
/// developer (not an admin of this deployment) sets: as [`jwks_uri`], and `https` only, and no
/// host that names this machine or a private network by its address (`localhost`, loopback,
/// private, link-local, unspecified, unique-local), so a record cannot make every environment's
/// broker call into its own network. A DNS name that resolves to such an address is not caught
/// here (SECURITY.md, "Known gaps").
///
/// # Errors
/// [`InvalidInput`] on `jwks_uri`.
pub fn public_jwks_uri(value: &str) -> Result<String, InvalidInput> {
    let checked = jwks_uri(value)?;
    let url = reqwest::Url::parse(&checked).map_err(|e| invalid("jwks_uri", e.to_string()))?;
    if url.scheme() != "https" {
        return Err(invalid("jwks_uri", "must be an https URL"));
    }
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let internal = match host.parse::<std::net::IpAddr>() {
        Err(_) => {
            let d = host.trim_end_matches('.').to_ascii_lowercase();
            d.is_empty() || d == "localhost" || d.ends_with(".localhost")
        }
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.octets()[0] == 0
                || (ip.octets()[0] == 100 && (64..128).contains(&ip.octets()[1]))
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip.to_ipv4_mapped().is_some()
        }
    };
    if internal {
        return Err(invalid(
            "jwks_uri",
            "must name a public host: not localhost, a loopback, private or link-local address",
        ));
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_jwks_uri_names_no_internal_host() {
        for bad in [
            "http://keys.example/jwks",
            "https://127.0.0.1/jwks",
            "https://localhost/jwks",
            "https://10.0.0.5/jwks",
            "https://192.168.1.1/jwks",
            "https://172.16.0.1/jwks",
            "https://169.254.169.254/latest",
            "https://100.64.0.1/x",
            "https://[::1]/jwks",
            "https://[fd00::1]/jwks",
            "https://[fe80::1]/jwks",
            "https://[::ffff:10.0.0.1]/jwks",
            "https://0.0.0.0/jwks",
        ] {
            assert!(public_jwks_uri(bad).is_err(), "{bad} accepted");
        }
        assert!(public_jwks_uri("https://keys.example/.well-known/jwks.json").is_ok());
        assert!(public_jwks_uri("https://8.8.8.8/jwks").is_ok());
    }
    use serde_json::json;

    fn ec_jwk() -> Value {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
        let mut jwk = jwk.as_object().unwrap().clone();
        jwk.insert("kid".into(), json!("k1"));
        Value::Object(jwk)
    }

    #[test]
    fn names_are_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(name("name", "  Bed Board ").unwrap(), "Bed Board");
        assert!(name("name", "   ").is_err());
        assert!(name("name", "a\u{0}b").is_err());
        assert!(name("name", &"x".repeat(101)).is_err());
        assert_eq!(name("vendor", "\n").unwrap_err().field, "vendor");
        for hidden in [
            "Bed\u{202E}Board",
            "Bed\u{200B}Board",
            "Bed\u{2028}Board",
            "Bed\u{a0}Board",
            "Bed  Board",
        ] {
            assert!(name("name", hidden).is_err(), "{hidden:?}");
        }
        assert!(description("line\nbreak").is_ok());
        assert!(description("tab\there").is_err());
    }

    #[test]
    fn ids_must_be_the_broker_uuids() {
        let id = uuid::Uuid::new_v4().to_string();
        assert!(uuid_id("client_id", &id).is_ok());
        assert!(uuid_id("client_id", &id.to_uppercase()).is_err());
        assert!(uuid_id("client_id", "adt.*").is_err());
        assert!(uuid_id("client_id", "").is_err());
    }

    #[test]
    fn accepts_a_p256_key_and_pins_es256() {
        let keys = jwk_set(&json!({"keys": [ec_jwk()]})).unwrap();
        assert_eq!(keys[0].kid, "k1");
        assert_eq!(keys[0].algorithms, vec![Algorithm::ES256]);
    }

    #[test]
    fn refuses_private_members_bad_curves_and_wrong_algs() {
        let mut k = ec_jwk();
        k["d"] = json!("AAAA");
        assert_eq!(
            jwk_set(&json!({"keys": [k]})).unwrap_err().field,
            "jwks.keys[0].d"
        );

        let mut k = ec_jwk();
        k["crv"] = json!("P-521");
        assert_eq!(
            jwk_set(&json!({"keys": [k]})).unwrap_err().field,
            "jwks.keys[0].crv"
        );

        let mut k = ec_jwk();
        k["alg"] = json!("HS256");
        assert_eq!(
            jwk_set(&json!({"keys": [k]})).unwrap_err().field,
            "jwks.keys[0].alg"
        );

        let mut k = ec_jwk();
        k["y"] = k["x"].clone();
        assert!(
            jwk_set(&json!({"keys": [k]}))
                .unwrap_err()
                .message
                .contains("not on")
        );

        let k = ec_jwk();
        assert!(
            jwk_set(&json!({"keys": [k.clone(), k]}))
                .unwrap_err()
                .message
                .contains("duplicate")
        );
        assert!(jwk_set(&json!({"keys": []})).is_err());
        assert!(jwk_set(&json!([])).is_err());

        let mut k = ec_jwk();
        k["kid"] = json!("a.b");
        assert_eq!(
            jwk_set(&json!({"keys": [k]})).unwrap_err().field,
            "jwks.keys[0].kid"
        );
    }

    #[test]
    fn refuses_short_rsa_keys() {
        let n = URL_SAFE_NO_PAD.encode([0xffu8; 128]); // 1024 bits
        let k = json!({"kty": "RSA", "kid": "r", "n": n, "e": "AQAB"});
        let err = jwk_set(&json!({"keys": [k]})).unwrap_err();
        assert!(err.message.contains("2048"), "{err}");
        let n = URL_SAFE_NO_PAD.encode([0xffu8; 256]);
        let k = json!({"kty": "RSA", "kid": "r", "n": n, "e": "AQAB"});
        let keys = jwk_set(&json!({"keys": [k]})).unwrap();
        for e in ["AQ", "Ag", "AQAAAAAB"] {
            let k = json!({"kty": "RSA", "kid": "r", "n": URL_SAFE_NO_PAD.encode([0xffu8; 256]), "e": e});
            assert_eq!(
                jwk_set(&json!({"keys": [k]})).unwrap_err().field,
                "jwks.keys[0].e",
                "{e}"
            );
        }
        let mut even = [0xffu8; 256];
        even[255] = 0xfe;
        let k = json!({"kty": "RSA", "kid": "r", "n": URL_SAFE_NO_PAD.encode(even), "e": "AQAB"});
        assert_eq!(
            jwk_set(&json!({"keys": [k]})).unwrap_err().field,
            "jwks.keys[0].n"
        );
        assert_eq!(keys[0].algorithms, vec![Algorithm::RS256, Algorithm::RS384]);
    }

    #[test]
    fn rsa_values_with_leading_zero_octets_still_verify_signatures() {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
        let pem = key.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key");
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("r".into());
        let token = jsonwebtoken::encode(&header, &json!({"sub": "x"}), &encoding).expect("sign");
        // A sign byte in front of `n`, and `e` = 65537 written in four octets.
        let mut n = vec![0u8];
        n.extend(key.n().to_bytes_be());
        let k = json!({"kty": "RSA", "kid": "r", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AAEAAQ"});
        let keys = jwk_set(&json!({"keys": [k]})).expect("accepted");
        let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        jsonwebtoken::decode::<Value>(&token, &keys[0].decoding_key, &v)
            .expect("the signature verifies with the normalised key");
    }

    #[test]
    fn jwks_uri_needs_https_except_on_loopback() {
        assert!(jwks_uri("https://vendor.example/jwks.json").is_ok());
        assert!(jwks_uri("http://127.0.0.1:8080/jwks.json").is_ok());
        assert!(jwks_uri("http://vendor.example/jwks.json").is_err());
        assert!(jwks_uri("https://u:p@vendor.example/").is_err());
        assert!(jwks_uri("ftp://x").is_err());
    }
}
