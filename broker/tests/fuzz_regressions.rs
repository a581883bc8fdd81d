//! Replays the committed fuzz corpus of the `jwt_header` target (`fuzz/corpus/jwt_header`)
//! through the very checks the fuzz target runs (`fuzz/checks/jwt_header.rs`, included with
//! `#[path]`), so CI exercises them on stable without cargo-fuzz; and keeps each crash the
//! fuzzer found as a named test.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use scopecast_broker::auth::jwt::peek;

#[path = "../../fuzz/checks/jwt_header.rs"]
mod jwt_header;

#[path = "../../fuzz/checks/replay.rs"]
mod corpus;

#[test]
fn jwt_header_corpus_passes_its_checks() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    corpus::replay(&fuzz, "jwt_header", jwt_header::check);
}

/// Found by `jwt_header`: a header that is a JSON array (`["56"]`) was read by position, its
/// first element taken as `alg`, although a JOSE header is a JSON object (RFC 7515 section 4).
#[test]
fn peek_refuses_a_header_that_is_a_json_array() {
    let token = "WyI1NiJd.e30.l";
    assert_eq!(
        URL_SAFE_NO_PAD.decode("WyI1NiJd").ok().as_deref(),
        Some(&b"[\"56\"]"[..])
    );
    let err = peek(token).expect_err("an array is not a JOSE header");
    assert!(err.contains("JSON object"), "{err}");
    jwt_header::check(token.as_bytes());
    let header = URL_SAFE_NO_PAD.encode(r#"["ES256","1","at+jwt"]"#);
    assert!(peek(&format!("{header}.e30.sig")).is_err());
}

/// The same crash as the fuzzer first met it, through the structured generator: the header
/// `["ES256"]` with claims `{"typ":null}`.
#[test]
fn generated_token_with_an_array_header_is_refused() {
    jwt_header::check(b"\x00\x00\x00\x14\x30\x2e\x35\x6c\x00\x49\x6e\x30\x2e\x2e");
}

/// The fix looks at the first byte of the header: JSON may put whitespace before the object.
#[test]
fn peek_still_reads_a_header_object_after_leading_whitespace() {
    let header = URL_SAFE_NO_PAD.encode(" \t\r\n{\"alg\":\"ES256\",\"kid\":\"k\"}");
    let claims = URL_SAFE_NO_PAD.encode(r#"{"iss":"x"}"#);
    let u = peek(&format!("{header}.{claims}.sig")).expect("a header object is read");
    assert_eq!(
        (u.header.alg.as_str(), u.header.kid.as_deref()),
        ("ES256", Some("k"))
    );
    assert_eq!(u.str_claim("iss"), Some("x"));
}
