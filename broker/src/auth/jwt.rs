//! Reading a JWT's header and claims before its signature is checked, only to route it: which
//! issuer, which key, which algorithm. Nothing read here is trusted until `jsonwebtoken`
//! has verified the signature with a key we chose.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Most bytes in a token or client assertion we will look at (PROTOCOL.md section 9).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The JOSE header members we use (RFC 7515 section 4.1).
#[derive(Debug, Clone, Deserialize)]
pub struct JoseHeader {
    /// `alg`: compared with the algorithm pinned to the key, never trusted alone.
    pub alg: String,
    /// `kid`: selects the key.
    #[serde(default)]
    pub kid: Option<String>,
    /// `typ`: `at+jwt` for RFC 9068 access tokens.
    #[serde(default)]
    pub typ: Option<String>,
}

/// A token split and decoded, unverified.
#[derive(Debug)]
pub struct Unverified {
    /// The header.
    pub header: JoseHeader,
    /// The claims.
    pub claims: Map<String, Value>,
}

impl Unverified {
    /// A string claim.
    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

/// Splits a compact JWS and decodes its header and claims without verifying anything.
///
/// # Errors
/// A sentence saying what is malformed.
pub fn peek(token: &str) -> Result<Unverified, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "token is {} bytes; the limit is {MAX_TOKEN_BYTES}",
            token.len()
        ));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("a JWT has three base64url parts separated by dots".to_owned());
    };
    if s.is_empty() {
        return Err("the token is unsigned".to_owned());
    }
    let header = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| "the JWT header is not base64url".to_owned())?;
    let bad_header = || "the JWT header must be a JSON object with a string `alg`".to_owned();
    // A derived `Deserialize` also reads a JSON array, by position (`["ES256"]`); a JOSE header
    // is an object (RFC 7515 section 4), and a JSON text starting with `{` can only be one.
    if header.trim_ascii_start().first() != Some(&b'{') {
        return Err(bad_header());
    }
    let header: JoseHeader = serde_json::from_slice(&header).map_err(|_| bad_header())?;
    let claims = URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| "the JWT claims are not base64url".to_owned())?;
    let claims: Map<String, Value> = serde_json::from_slice(&claims)
        .map_err(|_| "the JWT claims must be a JSON object".to_owned())?;
    Ok(Unverified { header, claims })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn splits_and_decodes() {
        let t = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"ES256","kid":"k","typ":"at+jwt"}"#),
            b64(r#"{"iss":"x"}"#)
        );
        let u = peek(&t).unwrap();
        assert_eq!(u.header.alg, "ES256");
        assert_eq!(u.header.kid.as_deref(), Some("k"));
        assert_eq!(u.str_claim("iss"), Some("x"));
    }

    #[test]
    fn refuses_malformed_tokens() {
        assert!(peek("a.b").is_err());
        assert!(peek("a.b.c.d").is_err());
        let unsigned = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert!(peek(&unsigned).unwrap_err().contains("unsigned"));
        assert!(peek(&format!("{}.{}.s", b64("[]"), b64("{}"))).is_err());
        assert!(peek(&"a".repeat(9000)).unwrap_err().contains("limit"));
    }
}
