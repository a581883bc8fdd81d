//! Properties of `scopecast_broker::auth::jwt::peek`, the unverified split-and-decode of a
//! compact JWS that routes a token to its issuer and key before the signature is checked.
//!
//! The input is read twice:
//! - **as text**: the whole input, if UTF-8, is a token;
//! - **as structure**: the bytes drive a small generator of a JOSE header and a claims value
//!   (arbitrary JSON, biased towards `alg`, `kid`, `typ` and common claims), which are
//!   serialized, base64url-encoded and joined with a generated signature part. The expected
//!   outcome is computed from the generated values, not from the token text.
//!
//! Shared by `fuzz_targets/jwt_header.rs` and `broker/tests/fuzz_regressions.rs` (which
//! includes this file with `#[path]`).

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use scopecast_broker::auth::jwt::{MAX_TOKEN_BYTES, peek};
use serde_json::{Map, Value};

/// Checks every property below on `data`.
pub(crate) fn check(data: &[u8]) {
    if let Ok(token) = std::str::from_utf8(data) {
        check_text(token);
    }
    check_structured(data);
}

/// Any text: an accepted token has three parts and a signature, and is within the size
/// limit; its header is a JSON object whose `alg` is the one read, and its claims are what
/// its second part decodes to. A refusal is a
/// non-empty sentence that never repeats the token.
fn check_text(token: &str) {
    match peek(token) {
        Ok(u) => {
            assert!(token.len() <= MAX_TOKEN_BYTES);
            let parts: Vec<&str> = token.split('.').collect();
            assert_eq!(parts.len(), 3, "{token:?}");
            assert!(!parts[2].is_empty(), "{token:?} is unsigned");
            let header = URL_SAFE_NO_PAD
                .decode(parts[0])
                .expect("header is base64url");
            match serde_json::from_slice::<Value>(&header) {
                Ok(Value::Object(h)) => {
                    assert_eq!(h.get("alg").and_then(Value::as_str), Some(&*u.header.alg));
                }
                Ok(other) => panic!("accepted a header that is not a JSON object: {other}"),
                // A member `peek` skips may hold text that a full parse refuses.
                Err(_) => {}
            }
            let claims = URL_SAFE_NO_PAD
                .decode(parts[1])
                .expect("claims are base64url");
            let claims: Value = serde_json::from_slice(&claims).expect("claims are JSON");
            assert_eq!(claims, Value::Object(u.claims));
        }
        Err(msg) => check_refusal(token, &msg),
    }
}

fn check_refusal(token: &str, msg: &str) {
    assert!(!msg.is_empty());
    if token.len() >= 16 {
        assert!(
            !msg.contains(token),
            "the refusal {msg:?} repeats the token"
        );
    }
}

/// Reads the input front to back; past its end every byte is 0.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

const KEYS: [&str; 12] = [
    "alg",
    "kid",
    "typ",
    "iss",
    "sub",
    "aud",
    "exp",
    "scope",
    "client_id",
    "jti",
    "crit",
    "jku",
];

const STRINGS: [&str; 12] = [
    "ES256",
    "RS256",
    "none",
    "at+jwt",
    "JWT",
    "1",
    "",
    "\u{0}",
    "\u{e9}\u{1f600}",
    "\"\\/",
    "\u{feff}ES256",
    "https://broker.example/",
];

fn string(cur: &mut Cursor<'_>) -> String {
    let b = cur.byte();
    if b < 0x80 {
        return STRINGS[usize::from(b) % STRINGS.len()].to_owned();
    }
    let len = usize::from(cur.byte() % 24);
    String::from_utf8_lossy(cur.take(len)).into_owned()
}

fn key(cur: &mut Cursor<'_>) -> String {
    let b = cur.byte();
    if b < 0xc0 {
        KEYS[usize::from(b) % KEYS.len()].to_owned()
    } else {
        string(cur)
    }
}

/// Any JSON value but floats (which `serde_json` does not promise to round-trip exactly).
fn value(cur: &mut Cursor<'_>, depth: u8) -> Value {
    let tag = cur.byte() % if depth >= 3 { 6 } else { 8 };
    match tag {
        0 => Value::Null,
        1 => Value::Bool(cur.byte() & 1 == 1),
        2 => {
            let mut n = [0; 8];
            let src = cur.take(8);
            n[..src.len()].copy_from_slice(src);
            Value::from(i64::from_le_bytes(n))
        }
        3 => Value::from(u64::MAX - u64::from(cur.byte())),
        4 | 5 => Value::String(string(cur)),
        6 => Value::Array((0..cur.byte() % 4).map(|_| value(cur, depth + 1)).collect()),
        _ => Value::Object(object(cur, depth + 1)),
    }
}

fn object(cur: &mut Cursor<'_>, depth: u8) -> Map<String, Value> {
    let mut map = Map::new();
    for _ in 0..cur.byte() % 4 {
        let k = key(cur);
        map.insert(k, value(cur, depth));
    }
    map
}

/// A header: `alg`, `kid` and `typ` each absent, a string, or any other value, plus a few
/// other members (which may replace them).
fn header(cur: &mut Cursor<'_>) -> Value {
    let mut map = Map::new();
    for name in ["alg", "kid", "typ"] {
        match cur.byte() % 4 {
            0 => {}
            1 => {
                map.insert(name.to_owned(), value(cur, 1));
            }
            _ => {
                map.insert(name.to_owned(), Value::String(string(cur)));
            }
        }
    }
    map.extend(object(cur, 1));
    if cur.byte().is_multiple_of(16) {
        value(cur, 0)
    } else {
        Value::Object(map)
    }
}

/// Claims: usually an object, sometimes padded past the size limit, sometimes not an object.
fn claims(cur: &mut Cursor<'_>) -> Value {
    let mut map = object(cur, 0);
    match cur.byte() % 16 {
        0 => value(cur, 0),
        1 => {
            let len = usize::from(cur.byte()) * 40;
            map.insert("pad".to_owned(), Value::String("p".repeat(len)));
            Value::Object(map)
        }
        _ => Value::Object(map),
    }
}

/// A signature part: base64url characters, sometimes empty, sometimes with a `.`.
fn signature(cur: &mut Cursor<'_>) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    (0..cur.byte() % 8)
        .map(|_| char::from(ALPHABET[usize::from(cur.byte()) % ALPHABET.len()]))
        .collect()
}

/// True when `v` is absent, `null` or a string: what `Option<String>` reads.
fn optional_string(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null | Value::String(_)))
}

/// A generated token is accepted exactly when it should be, and then reads as generated.
fn check_structured(data: &[u8]) {
    let mut cur = Cursor(data);
    let header = header(&mut cur);
    let claims = claims(&mut cur);
    let sig = signature(&mut cur);
    let encoding = cur.byte() % 8;
    let h_json = serde_json::to_vec(&header).expect("a JSON value serializes");
    let c_json = serde_json::to_vec(&claims).expect("a JSON value serializes");
    // Mostly what an issuer writes; sometimes padded base64url, which JWS forbids.
    let (h, c) = if encoding == 0 {
        (URL_SAFE.encode(&h_json), URL_SAFE.encode(&c_json))
    } else {
        (
            URL_SAFE_NO_PAD.encode(&h_json),
            URL_SAFE_NO_PAD.encode(&c_json),
        )
    };
    let token = format!("{h}.{c}.{sig}");

    let padded = encoding == 0 && (h.ends_with('=') || c.ends_with('='));
    let h_obj = header.as_object();
    let well_formed = token.len() <= MAX_TOKEN_BYTES
        && !sig.is_empty()
        && !sig.contains('.')
        && !padded
        && h_obj.is_some_and(|m| {
            m.get("alg").is_some_and(Value::is_string)
                && optional_string(m.get("kid"))
                && optional_string(m.get("typ"))
        })
        && claims.is_object();

    match peek(&token) {
        Ok(u) => {
            assert!(
                well_formed,
                "accepted a malformed token: {header} {claims} {sig:?}"
            );
            let m = h_obj.expect("checked above");
            let field = |name: &str| m.get(name).and_then(Value::as_str);
            assert_eq!(Some(&*u.header.alg), field("alg"));
            assert_eq!(u.header.kid.as_deref(), field("kid"));
            assert_eq!(u.header.typ.as_deref(), field("typ"));
            assert_eq!(Value::Object(u.claims), claims);
        }
        Err(msg) => {
            assert!(
                !well_formed,
                "refused a well-formed token ({msg}): {header} {claims}"
            );
            check_refusal(&token, &msg);
        }
    }
}
