//! Validation and paper cuts, against a real broker: the scope grammar of application ceilings
//! (`POST` and `PATCH /admin/v1/applications`), token requests narrowing with every scope
//! family, and HTTP requests no library would send (an unencoded `>` in the URL, as curl sends
//! it; history query parameters of the wrong type), each answered in JSON with a `reason` and
//! a hint, never an empty body or a Rust type name.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use reqwest::Method;
use scopecast_protocol::SCOPE_FAMILIES;
use scopecast_tests::raw::{RawAnswer, http_exchange};
use scopecast_tests::{TestBroker, test_config};
use serde_json::json;

const GRANT: (&str, &str) = ("grant_type", "client_credentials");

/// What an unknown scope's refusal ends with: the families, each with an example.
fn families() -> String {
    format!("; scopes come from these families: {SCOPE_FAMILIES}")
}

/// The ceiling table: each scope value, and the canonical ceiling it is stored as, or the exact
/// message of its refusal (after `` `scope`: ``).
fn ceiling_rows() -> Vec<(&'static str, Result<&'static str, String>)> {
    vec![
        (
            "subscribe:adt.> publish:lab.result.final",
            Ok("subscribe:adt.> publish:lab.result.final"),
        ),
        ("webhook:manage", Ok("webhook:manage")),
        ("system/Encounter.rs", Ok("system/Encounter.rs")),
        ("system/*.read", Ok("system/*.read")),
        (
            " system/Patient.write system/Observation.cruds subscribe:adt.> ",
            Ok("system/Patient.write system/Observation.cruds subscribe:adt.>"),
        ),
        (
            "subscibe:adt.>",
            Err(format!(
                "unknown scope `subscibe:adt.>` (did you mean `subscribe:adt.>`?){}",
                families()
            )),
        ),
        (
            "read:x",
            Err(format!("unknown scope `read:x`{}", families())),
        ),
        (
            "subscribe:adt.> openid",
            Err(format!("unknown scope `openid`{}", families())),
        ),
        (
            "subscribe:adt.>,publish:lab.x",
            Err(
                "scope `subscribe:adt.>,publish:lab.x` contains a comma: scopes are separated by \
                 spaces, not commas (`subscribe:adt.> publish:lab.x`)"
                    .into(),
            ),
        ),
        (
            "subscribe:adt.>, publish:lab.x",
            Err(
                "scope `subscribe:adt.>,` contains a comma: scopes are separated by spaces, not \
                 commas (`subscribe:adt.> publish:lab.x`)"
                    .into(),
            ),
        ),
        (
            "system/encounter.r",
            Err(
                "scope `system/encounter.r`: `encounter` is not a FHIR resource type: write the \
                 name as FHIR spells it, an upper-case letter then up to 63 letters (e.g. \
                 `Encounter`), or `*` for every type"
                    .into(),
            ),
        ),
        (
            "system/Encounter.sr",
            Err(
                "scope `system/Encounter.sr`: permissions `sr` are out of order: SMART v2 writes \
                 each of c, r, u, d, s at most once, in that order (`rs`)"
                    .into(),
            ),
        ),
        (
            "system/Observation.rs?category=laboratory",
            Err(
                "scope `system/Observation.rs?category=laboratory`: SMART scope parameters \
                 (`?category=laboratory`) are not supported"
                    .into(),
            ),
        ),
        (
            "webhook:manage:x",
            Err(
                "scope `webhook:manage:x`: the webhook family has one scope, `webhook:manage`"
                    .into(),
            ),
        ),
        (
            "subscribe:Adt.x",
            Err(
                "scope token \"subscribe:Adt.x\": segment 1 has upper-case 'A' at byte 0; topics \
                 are lower case only and are not folded"
                    .into(),
            ),
        ),
        (
            "",
            Err("must grant at least one scope, e.g. subscribe:adt.>".into()),
        ),
    ]
}

#[tokio::test]
async fn ceiling_scopes_are_checked_against_the_closed_list_of_families() {
    let broker = TestBroker::start(test_config()).await;
    let app = broker.create_app("Patch target", "subscribe:a").await;
    for (i, (scope, expect)) in ceiling_rows().into_iter().enumerate() {
        let created = broker
            .admin(
                Method::POST,
                "/applications",
                Some(json!({"name": format!("App {i}"), "vendor": "V", "scope": scope})),
            )
            .await;
        let patched = broker
            .admin(
                Method::PATCH,
                &format!("/applications/{}", app.id),
                Some(json!({"scope": scope})),
            )
            .await;
        match &expect {
            Ok(stored) => {
                assert_eq!(created.status, 201, "{scope:?}: {:?}", created.body);
                assert_eq!(created.body["scope"], *stored, "{scope:?}");
                assert_eq!(patched.status, 200, "{scope:?}: {:?}", patched.body);
                assert_eq!(patched.body["scope"], *stored, "{scope:?}");
            }
            Err(message) => {
                for (what, a) in [("POST", &created), ("PATCH", &patched)] {
                    assert_eq!(a.status, 400, "{what} {scope:?}: {:?}", a.body);
                    assert_eq!(a.body["error"], "bad_request", "{what} {scope:?}");
                    assert_eq!(a.body["field"], "scope", "{what} {scope:?}");
                    assert_eq!(
                        a.body["message"].as_str().unwrap(),
                        format!("`scope`: {message}"),
                        "{what} {scope:?}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn token_requests_narrow_with_smart_and_webhook_scopes() {
    let broker = TestBroker::start(test_config()).await;
    let ceiling = "subscribe:adt.> system/*.read webhook:manage";
    let client = broker.active_client("Backend", ceiling).await;
    let basic = Some((client.client_id.as_str(), client.secret.as_str()));

    for requested in [
        "system/Encounter.r",
        "system/Encounter.read system/*.rs",
        "system/Patient.s webhook:manage subscribe:adt.x",
    ] {
        let a = broker
            .token_request(&[GRANT, ("scope", requested)], basic)
            .await;
        assert_eq!(a.status, 200, "{requested}: {:?}", a.body);
        assert_eq!(a.body["scope"], requested);
        let claims = TestBroker::claims_of(a.body["access_token"].as_str().unwrap());
        assert_eq!(claims["scope"], requested);
    }
    let whole = broker.token_request(&[GRANT], basic).await;
    assert_eq!(whole.body["scope"], ceiling, "{:?}", whole.body);

    let refused: Vec<(&str, String)> = vec![
        (
            "system/Patient.c",
            format!("`system/Patient.c` is beyond the application's scope ({ceiling})"),
        ),
        (
            "system/*.cruds",
            format!("`system/*.cruds` is beyond the application's scope ({ceiling})"),
        ),
        (
            "subscribe:adt.>,system/*.read",
            "scope `subscribe:adt.>,system/*.read` contains a comma: scopes are separated by \
             spaces, not commas (`subscribe:adt.> system/*.read`)"
                .into(),
        ),
        (
            "system/Encounter.r,system/Patient.r",
            "scope `system/Encounter.r,system/Patient.r` contains a comma: scopes are separated \
             by spaces, not commas (`system/Encounter.r system/Patient.r`)"
                .into(),
        ),
        (
            "subscibe:adt.>",
            format!(
                "unknown scope `subscibe:adt.>` (did you mean `subscribe:adt.>`?){}",
                families()
            ),
        ),
        (
            "system/encounter.r",
            "scope `system/encounter.r`: `encounter` is not a FHIR resource type: write the name \
             as FHIR spells it, an upper-case letter then up to 63 letters (e.g. `Encounter`), \
             or `*` for every type"
                .into(),
        ),
    ];
    for (requested, description) in refused {
        let a = broker
            .token_request(&[GRANT, ("scope", requested)], basic)
            .await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (400, Some("invalid_scope")),
            "{requested}: {:?}",
            a.body
        );
        assert_eq!(
            a.body["error_description"], description,
            "{requested}: {:?}",
            a.body
        );
    }
}

/// True when a text carries a Rust type name or a parser's internals.
fn leaks_rust(text: &str) -> bool {
    [
        "u64",
        "usize",
        "ParseIntError",
        "invalid digit",
        "Failed to deserialize",
        "serde",
    ]
    .iter()
    .any(|leak| text.contains(leak))
}

/// A one-shot request for `target` with `Connection: close` and an optional bearer token.
fn get(target: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {target} HTTP/1.1\r\nHost: broker\r\n{auth}Connection: close\r\n\r\n")
}

fn assert_json_refusal(a: &RawAnswer, what: &str, status: u16, reason: &str) -> String {
    assert_eq!(a.status, status, "{what}: {} {}", a.head, a.body);
    assert!(
        a.head.contains("content-type: application/json"),
        "{what}: {}",
        a.head
    );
    let body = a.json();
    assert_eq!(body["error"], "bad_request", "{what}: {}", a.body);
    assert_eq!(body["reason"], reason, "{what}: {}", a.body);
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.is_empty(), "{what}: {}", a.body);
    assert!(!leaks_rust(&a.body), "{what}: {}", a.body);
    message
}

#[tokio::test]
async fn an_unencoded_gt_in_the_url_gets_json_with_the_encoded_form() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker
        .active_client("Reader", "subscribe:adt.> publish:adt.>")
        .await;
    let token = broker.token(&client, None).await;

    // As `curl 'http://broker/v1/events?topic=adt.>'` sends it; hyper alone would answer 400
    // with an empty body.
    let a = http_exchange(&broker, &get("/v1/events?topic=adt.>", Some(&token))).await;
    let message = assert_json_refusal(&a, "raw >", 400, "invalid_uri");
    assert_eq!(
        message,
        "the URL has an unencoded `>` (%3E): percent-encode it, as in \
         /v1/events?topic=adt.%3E; with curl, let it encode the query: curl -G \
         --data-urlencode 'topic=adt.>' <broker>/v1/events"
    );
    assert!(a.head.contains("connection: close"), "{}", a.head);

    // `<` and `"` too, and a `>` in a path (a publish with a body, read and dropped).
    let a = http_exchange(&broker, &get("/v1/events?topic=\"adt\"&x=<y>", None)).await;
    let message = assert_json_refusal(&a, "raw < and \"", 400, "invalid_uri");
    assert!(
        message.contains("`\"` (%22), `<` (%3C), `>` (%3E)"),
        "{message}"
    );
    let publish = "POST /v1/events/adt.> HTTP/1.1\r\nHost: broker\r\nContent-Type: \
                   application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let a = http_exchange(&broker, publish).await;
    let message = assert_json_refusal(&a, "raw > in a path", 400, "invalid_uri");
    assert!(message.contains("/v1/events/adt.%3E"), "{message}");
    assert!(!message.contains("curl"), "{message}");

    // Encoded, the same read works.
    let a = http_exchange(&broker, &get("/v1/events?topic=adt.%3E", Some(&token))).await;
    assert_eq!(a.status, 200, "{} {}", a.head, a.body);
    assert_eq!(a.json()["next_since"], 0, "{}", a.body);

    // Only the first request of a connection is looked at (PROTOCOL.md section 6): a raw `>`
    // on a kept-alive connection gets hyper's own 400, and the connection ends.
    let pipelined = format!(
        "GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n{}",
        get("/v1/events?topic=adt.>", Some(&token))
    );
    let a = http_exchange(&broker, &pipelined).await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert!(a.body.contains("HTTP/1.1 400 Bad Request"), "{}", a.body);

    // The broker still serves.
    let a = http_exchange(&broker, &get("/healthz", None)).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn history_query_parameters_are_refused_in_plain_words() {
    let broker = TestBroker::start(test_config()).await;
    let client = broker.active_client("Reader", "subscribe:adt.>").await;
    let token = broker.token(&client, None).await;
    let since = |got: &str| {
        format!("`since` must be a whole number ≥ 0, the seq after which to read (got `{got}`)")
    };
    let limit = |got: &str| {
        format!(
            "`limit` must be a whole number from 1 to 1000, the most events to return (got \
             `{got}`)"
        )
    };
    let rows: Vec<(&str, &str, String)> =
        vec![
        ("/v1/events?topic=adt.%3E&since=abc", "invalid_field", since("abc")),
        ("/v1/events?topic=adt.%3E&since=-1", "invalid_field", since("-1")),
        ("/v1/events?topic=adt.%3E&since=1.5", "invalid_field", since("1.5")),
        ("/v1/events?topic=adt.%3E&since=", "invalid_field", since("")),
        ("/v1/events?topic=adt.%3E&since=%2B5", "invalid_field", since("+5")),
        (
            "/v1/events?topic=adt.%3E&since=18446744073709551616",
            "invalid_field",
            since("18446744073709551616"),
        ),
        ("/v1/events?topic=adt.%3E&limit=x", "invalid_field", limit("x")),
        ("/v1/events?topic=adt.%3E&limit=0", "invalid_field", limit("0")),
        ("/v1/events?topic=adt.%3E&limit=1001", "invalid_field", limit("1001")),
        ("/v1/events?topic=adt.%3E&limit=-5", "invalid_field", limit("-5")),
        (
            "/v1/events?topic=adt.%3E&since=1&since=2",
            "invalid_field",
            "query parameter `since` is given twice".into(),
        ),
        (
            "/v1/events?topic=adt.%3E&sinse=5",
            "invalid_field",
            "unknown query parameter `sinse`: GET /v1/events takes `topic`, `since` and `limit`"
                .into(),
        ),
        (
            "/v1/events?since=5",
            "missing_field",
            "query parameter `topic` is required: the pattern to read, percent-encoded \
             (`?topic=adt.%3E` for `adt.>`)"
                .into(),
        ),
        (
            "/v1/events?topic=Adt.x",
            "invalid_topic",
            "invalid topic: segment 1 has upper-case 'A' at byte 0; topics are lower case only \
             and are not folded"
                .into(),
        ),
    ];
    for (target, reason, message) in rows {
        // With and without a token: parameters are checked first.
        for token in [Some(token.as_str()), None] {
            let a = http_exchange(&broker, &get(target, token)).await;
            let got = assert_json_refusal(&a, target, 400, reason);
            assert_eq!(got, message, "{target}");
        }
    }

    // Well-typed parameters are read.
    let a = http_exchange(
        &broker,
        &get("/v1/events?topic=adt.%3E&since=0&limit=1000", Some(&token)),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);

    // A non-upgrade GET of the stream endpoint says so, in JSON too.
    let a = http_exchange(&broker, &get("/v1/stream", None)).await;
    let message = assert_json_refusal(&a, "plain GET /v1/stream", 400, "upgrade_required");
    assert!(message.contains("GET /v1/events"), "{message}");
}
