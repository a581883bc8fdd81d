//! Validation and paper cuts, against a real broker: the scope grammar of application ceilings
//! (`POST` and `PATCH /admin/v1/applications`) and token requests narrowing with every scope
//! family.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use reqwest::Method;
use scopecast_protocol::SCOPE_FAMILIES;
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
