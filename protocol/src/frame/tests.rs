//! Decoding, encoding and round trips of every frame.

use super::*;
use crate::codes::{ErrorCode, Reason};
use crate::scope::ScopeSet;
use crate::timestamp::Timestamp;
use crate::topic::{Pattern, Topic};
use proptest::prelude::*;
use time::macros::datetime;

const MAX: usize = 1 << 20;

fn decode(text: &str) -> Result<ClientFrame, FrameError> {
    ClientFrame::decode(text, MAX)
}

fn refusal(text: &str) -> FrameError {
    decode(text).unwrap_err()
}

#[test]
fn decodes_every_client_frame() {
    assert_eq!(
        decode(r#"{"type":"auth","token":"abc"}"#).unwrap(),
        ClientFrame::Auth {
            token: "abc".into()
        }
    );
    let sub =
        decode(r#"{"type":"subscribe","id":"1","topic":"adt.>","since":{"seq":42}}"#).unwrap();
    assert_eq!(
        sub,
        ClientFrame::Subscribe {
            id: RequestId::new("1").unwrap(),
            topic: Pattern::new("adt.>").unwrap(),
            since: Some(Since::Seq(42)),
        }
    );
    let sub = decode(
        r#"{"type":"subscribe","id":"1","topic":"a","since":{"time":"2026-01-02T03:04:05Z"}}"#,
    )
    .unwrap();
    assert!(
        matches!(sub, ClientFrame::Subscribe { since: Some(Since::Time(t)), .. } if t.get() == datetime!(2026-01-02 03:04:05 UTC))
    );
    let publish = decode(
        r#"{"type":"publish","id":"p","topic":"lab.x","data":{"a":[1, 2]},"event_id":"e-1"}"#,
    )
    .unwrap();
    match publish {
        ClientFrame::Publish { data, event_id, .. } => {
            assert_eq!(data.get(), r#"{"a":[1, 2]}"#, "data is kept verbatim");
            assert_eq!(event_id.unwrap().as_str(), "e-1");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decode(r#"{"type":"ping","id":"x"}"#).unwrap(),
        ClientFrame::Ping { .. }
    ));
    assert!(matches!(
        decode(r#"{"type":"unsubscribe","id":"x","topic":"a.*"}"#).unwrap(),
        ClientFrame::Unsubscribe { .. }
    ));
}

#[test]
fn ignores_unknown_fields() {
    assert!(decode(r#"{"type":"ping","id":"x","future":{"deep":[1]}}"#).is_ok());
}

#[test]
fn refuses_with_precise_reasons() {
    let e = refusal(r#"{"type":"launch","id":"7"}"#);
    assert_eq!(
        (e.reason, e.id.as_ref().map(RequestId::as_str)),
        (Reason::UnknownType, Some("7"))
    );
    assert!(e.message.contains("launch"));

    let e = refusal(r#"{"type":"subscribe","id":"7"}"#);
    assert_eq!(e.reason, Reason::MissingField);
    assert!(e.message.contains("`topic`"), "{}", e.message);
    assert_eq!(e.id.unwrap().as_str(), "7");

    let e = refusal(r#"{"id":"7"}"#);
    assert_eq!(e.reason, Reason::MissingField);
    assert!(e.message.contains("`type`"));

    let e = refusal(r#"{"type":"subscribe","id":"7","topic":"Adt.x"}"#);
    assert_eq!(e.reason, Reason::InvalidTopic);
    assert_eq!(e.reason.code(), ErrorCode::BadRequest);
    assert!(e.message.contains("segment 1"), "{}", e.message);

    let e = refusal(r#"{"type":"publish","id":"7","topic":"adt.*","data":1}"#);
    assert_eq!(e.reason, Reason::InvalidTopic);

    let e = refusal(r#"{"type":"publish","id":"7","topic":"adt.x","data":null}"#);
    assert_eq!(e.reason, Reason::MissingField);
    assert!(e.message.contains("`data`"));

    let e = refusal(r#"{"type":"ping","id":"7""#);
    assert_eq!(e.reason, Reason::MalformedJson);
    assert!(e.message.contains("line 1 column"), "{}", e.message);

    let e = refusal(r#"[1,2]"#);
    assert_eq!(e.reason, Reason::MalformedJson);
}

#[test]
fn wrong_types_and_duplicate_keys_name_the_field() {
    let e = refusal(r#"{"type":"ping","id":5}"#);
    assert_eq!(e.reason, Reason::InvalidField);
    assert!(e.message.contains("`id`"), "{}", e.message);

    let e = refusal(r#"{"type":"ping","id":"a","id":"b"}"#);
    assert_eq!(e.reason, Reason::InvalidField);
    assert!(e.message.contains("duplicate field `id`"), "{}", e.message);

    let e = refusal(r#"{"type":"subscribe","id":"a","topic":"x","since":{"time":"yesterday"}}"#);
    assert_eq!(e.reason, Reason::InvalidField);
    assert!(e.message.contains("since"), "{}", e.message);

    let long = "x".repeat(65);
    let e = refusal(&format!(r#"{{"type":"ping","id":"{long}"}}"#));
    assert_eq!(e.reason, Reason::InvalidField);
    assert!(e.id.is_none());
}

#[test]
fn oversize_frames_are_refused_before_parsing() {
    let e = ClientFrame::decode(r#"{"type":"ping","id":"1"}"#, 10).unwrap_err();
    assert_eq!(e.reason, Reason::FrameTooLarge);
    assert_eq!(e.reason.code(), ErrorCode::TooLarge);
}

#[test]
fn deep_nesting_is_refused_not_a_crash() {
    let deep = format!(
        r#"{{"type":"publish","id":"1","topic":"a","data":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let e = refusal(&deep);
    assert_eq!(e.reason, Reason::InvalidField);
    assert!(e.message.contains("deeper than 64"), "{}", e.message);
    // Deep nesting in an unknown field is skipped in linear time, never recursed into.
    assert!(
        decode(&format!(
            r#"{{"type":"ping","id":"1","x":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        ))
        .is_ok()
    );
    // A deep `since` is refused by the parser's own recursion limit, naming the member.
    let e = refusal(&format!(
        r#"{{"type":"subscribe","id":"1","topic":"a","since":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    ));
    assert!(
        matches!(e.reason, Reason::MalformedJson | Reason::InvalidField),
        "{e:?}"
    );
    // Brackets inside strings do not count.
    let ok = format!(
        r#"{{"type":"publish","id":"1","topic":"a","data":"{}\\"}}"#,
        "[".repeat(100)
    );
    assert!(decode(&ok).is_ok(), "{ok}");
    let at_limit = format!(
        r#"{{"type":"publish","id":"1","topic":"a","data":{}{}}}"#,
        "[".repeat(64),
        "]".repeat(64)
    );
    assert!(decode(&at_limit).is_ok());
}

#[test]
fn event_frames_are_encoded_once_and_decode_back() {
    let topic = Topic::new("fhir.encounter.started").unwrap();
    let id = EventId::new("ev-\"1\"").unwrap();
    let time = Timestamp::new(datetime!(2026-11-29 10:00:00.123 UTC)).unwrap();
    let data = RawJson::from_string(r#"{"resourceType":"Encounter"}"#.into()).unwrap();
    let bytes = encode_event(7, &topic, &id, time, &data);
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.starts_with(r#"{"type":"event","seq":7,"topic":"fhir.encounter.started""#),
        "{text}"
    );
    match ServerFrame::decode(text).unwrap() {
        ServerFrame::Event(e) => {
            assert_eq!((e.seq, e.topic, e.id, e.time), (7, topic, id, time));
            assert_eq!(e.data.get(), data.get());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn error_frames_carry_the_required_scope() {
    let mut frame = ErrorFrame::new(
        RequestId::new("s1").ok(),
        Reason::InsufficientScope,
        "client x may not subscribe to adt.>".into(),
    );
    frame.required_scope = Some("subscribe:adt.>".into());
    let text = ServerFrame::Error(frame).encode();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["code"], "forbidden");
    assert_eq!(v["error"], "insufficient_scope");
    assert_eq!(v["id"], "s1");
    assert_eq!(v["required_scope"], "subscribe:adt.>");
}

#[test]
fn http_payloads_follow_the_publish_rules() {
    assert_eq!(
        RawJson::payload(" {\"a\":1} \n").unwrap().get(),
        "{\"a\":1}"
    );
    assert!(RawJson::payload("null").is_err());
    assert!(RawJson::payload("{").is_err());
    assert!(RawJson::payload("1 2").is_err());
    assert!(RawJson::payload("\"\\ud800\"").is_err());
    assert!(RawJson::payload(&format!("{}{}", "[".repeat(65), "]".repeat(65))).is_err());
}

#[test]
fn uuid_event_ids_are_hyphenated_lower_hex() {
    let id = EventId::from_uuid([0xab; 16]);
    assert_eq!(id.as_str(), "abababab-abab-abab-abab-abababababab");
    assert_eq!(EventId::new(id.as_str()).unwrap(), id);
}

#[test]
fn raw_json_debug_never_shows_the_payload() {
    let raw = RawJson::from_string(r#"{"name":"Jane"}"#.into()).unwrap();
    assert!(!format!("{raw:?}").contains("Jane"));
}

#[test]
fn members_a_frame_does_not_use_are_ignored_whatever_their_type() {
    assert!(
        decode(r#"{"type":"ping","id":"1","topic":5,"token":7,"event_id":[],"since":5}"#).is_ok()
    );
    assert!(decode(r#"{"type":"auth","token":"t","id":5}"#).is_ok());
    assert!(
        decode(r#"{"type":"unsubscribe","id":"1","topic":"a","since":"x","data":null}"#).is_ok()
    );
}

#[test]
fn type_errors_echo_the_id_and_name_the_member() {
    for (frame, member) in [
        (r#"{"type":"subscribe","id":"s1","topic":5}"#, "`topic`"),
        (
            r#"{"type":"subscribe","id":"s1","topic":"a","since":{"time":"yesterday"}}"#,
            "`since`",
        ),
        (
            r#"{"type":"subscribe","id":"s1","topic":"a","since":{"seq":-1}}"#,
            "`since`",
        ),
        (
            r#"{"type":"subscribe","id":"s1","topic":"a","since":5}"#,
            "`since`",
        ),
        (
            r#"{"type":"subscribe","id":"s1","topic":"a","since":{}}"#,
            "`since`",
        ),
        (
            r#"{"type":"publish","id":"s1","topic":"a","data":1,"event_id":5}"#,
            "`event_id`",
        ),
    ] {
        let e = refusal(frame);
        assert_eq!(e.reason, Reason::InvalidField, "{frame}: {e:?}");
        assert_eq!(e.id.as_ref().map(RequestId::as_str), Some("s1"), "{frame}");
        assert!(e.message.contains(member), "{frame}: {}", e.message);
    }
    let e = refusal(r#"{"type":"subscribe","id":"s1","topic":"a","topic":"b"}"#);
    assert_eq!(e.reason, Reason::InvalidField);
    assert_eq!(e.id.unwrap().as_str(), "s1");
    assert!(
        e.message.contains("duplicate field `topic`"),
        "{}",
        e.message
    );
}

#[test]
fn non_objects_and_empty_frames_are_malformed_with_a_reason() {
    for (text, hint) in [
        ("", "line 1 column 0"),
        ("  ", "line 1 column 2"),
        ("42", "a number"),
        ("[1]", "an array"),
        ("\u{feff}{}", "line 1 column 1"),
    ] {
        let e = refusal(text);
        assert_eq!(e.reason, Reason::MalformedJson, "{text:?}");
        assert!(e.message.contains(hint), "{text:?}: {}", e.message);
    }
}

#[test]
fn data_every_subscriber_can_parse() {
    for bad in [r#""\ud800""#, r#"{"\udc00":1}"#, "1e999", "[-1e400]"] {
        let frame = format!(r#"{{"type":"publish","id":"p","topic":"a","data":{bad}}}"#);
        let e = refusal(&frame);
        assert_eq!(e.reason, Reason::InvalidField, "{bad}: {e:?}");
        assert!(e.message.starts_with("`data`"), "{}", e.message);
    }
    let ok = r#"{"type":"publish","id":"p","topic":"a","data":{"s":"\ud83d\ude00","n":1.5e300}}"#;
    assert!(decode(ok).is_ok());
}

#[test]
fn empty_tokens_are_invalid_and_long_types_are_not_echoed_in_full() {
    let e = refusal(r#"{"type":"auth","token":""}"#);
    assert_eq!(e.reason, Reason::InvalidField);
    let long = "x".repeat(100_000);
    let e = refusal(&format!(r#"{{"type":"{long}","id":"1"}}"#));
    assert_eq!(e.reason, Reason::UnknownType);
    assert!(e.message.len() < 300, "{}", e.message.len());
}

#[test]
fn server_frame_decode_names_missing_members_and_keeps_unknown_reasons() {
    let e = ServerFrame::decode(r#"{"type":"pong"}"#).unwrap_err();
    assert_eq!(e.reason, Reason::MissingField, "{}", e.message);
    let frame = ServerFrame::decode(
        r#"{"type":"error","id":"x","code":"forbidden","error":"brand_new_reason","message":"m"}"#,
    )
    .unwrap();
    match frame {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden);
            assert_eq!(e.error, ErrorReason::Unknown("brand_new_reason".into()));
            assert_eq!(e.error.known(), None);
            assert_eq!(e.id.unwrap().as_str(), "x");
        }
        other => panic!("{other:?}"),
    }
}

// ---- property tests: every frame round-trips ----

fn arb_id() -> impl Strategy<Value = RequestId> {
    "[!-~]{1,64}".prop_map(|s| RequestId::new(&s).unwrap())
}

fn arb_event_id() -> impl Strategy<Value = EventId> {
    "[!-~]{1,128}".prop_map(|s| EventId::new(&s).unwrap())
}

fn arb_topic() -> impl Strategy<Value = Topic> {
    "[a-z0-9_-]{1,8}(\\.[a-z0-9_-]{1,8}){0,4}".prop_map(|s| Topic::new(&s).unwrap())
}

fn arb_pattern() -> impl Strategy<Value = Pattern> {
    "([a-z0-9_-]{1,8}|\\*)(\\.([a-z0-9_-]{1,8}|\\*)){0,3}(\\.>)?"
        .prop_map(|s| Pattern::new(&s).unwrap())
}

fn arb_time() -> impl Strategy<Value = Timestamp> {
    (0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| {
        Timestamp::new(
            time::OffsetDateTime::from_unix_timestamp(s).unwrap()
                + time::Duration::nanoseconds(n.into()),
        )
        .unwrap()
    })
}

fn arb_data() -> impl Strategy<Value = RawJson> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,5}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    value.prop_map(|v| RawJson::from_value(&v).unwrap())
}

fn arb_scope() -> impl Strategy<Value = ScopeSet> {
    prop::collection::vec(arb_pattern(), 0..3)
        .prop_map(|ps| ps.into_iter().map(crate::scope::Scope::Subscribe).collect())
}

fn arb_client_frame() -> impl Strategy<Value = ClientFrame> {
    let since = prop_oneof![
        any::<u64>().prop_map(Since::Seq),
        arb_time().prop_map(Since::Time),
    ];
    prop_oneof![
        "[!-~]{1,200}".prop_map(|token| ClientFrame::Auth { token }),
        (arb_id(), arb_pattern(), prop::option::of(since))
            .prop_map(|(id, topic, since)| ClientFrame::Subscribe { id, topic, since }),
        (arb_id(), arb_pattern()).prop_map(|(id, topic)| ClientFrame::Unsubscribe { id, topic }),
        (
            arb_id(),
            arb_topic(),
            arb_data(),
            prop::option::of(arb_event_id())
        )
            .prop_map(|(id, topic, data, event_id)| ClientFrame::Publish {
                id,
                topic,
                data,
                event_id
            }),
        arb_id().prop_map(|id| ClientFrame::Ping { id }),
    ]
}

fn arb_server_frame() -> impl Strategy<Value = ServerFrame> {
    let reason = prop::sample::select(Reason::ALL);
    prop_oneof![
        (
            arb_id(),
            "[a-z0-9-]{1,36}",
            arb_scope(),
            arb_time(),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(|(session, client_id, scope, expires_at, n, m)| {
                ServerFrame::Welcome(Welcome {
                    session: session.to_string(),
                    client_id,
                    scope,
                    expires_at,
                    heartbeat_ms: n,
                    limits: Limits {
                        max_frame_bytes: n,
                        max_subscriptions: m,
                        outbound_queue_bytes: n / 2,
                        publish_rate_per_sec: m / 2,
                    },
                    log_epoch: (m % 2 == 0).then(|| format!("epoch-{n}")),
                })
            }),
        (
            arb_id(),
            arb_pattern(),
            any::<u64>(),
            prop::option::of((any::<u64>(), any::<bool>()))
        )
            .prop_map(|(id, topic, head_seq, replay)| ServerFrame::Subscribed(
                Subscribed {
                    id,
                    topic,
                    head_seq,
                    replay: replay.map(|(from_seq, truncated)| Replay {
                        from_seq,
                        truncated
                    }),
                    log_epoch: (head_seq % 2 == 0).then(|| format!("epoch-{head_seq}")),
                }
            )),
        arb_id().prop_map(|id| ServerFrame::Unsubscribed(Unsubscribed { id })),
        (
            any::<u64>(),
            arb_topic(),
            arb_event_id(),
            arb_time(),
            arb_data()
        )
            .prop_map(|(seq, topic, id, time, data)| ServerFrame::Event(Event {
                seq,
                topic,
                id,
                time,
                data
            })),
        (arb_id(), any::<u64>(), arb_event_id(), any::<bool>()).prop_map(
            |(id, seq, event_id, duplicate)| {
                ServerFrame::Published(Published {
                    id,
                    seq,
                    event_id,
                    duplicate,
                })
            }
        ),
        any::<u64>()
            .prop_map(|expires_in_ms| ServerFrame::TokenExpiring(TokenExpiring { expires_in_ms })),
        arb_id().prop_map(|id| ServerFrame::Pong(Pong { id })),
        (
            prop::option::of(arb_id()),
            reason,
            "\\PC{0,40}",
            prop::option::of(arb_pattern()),
            prop::option::of(any::<u64>())
        )
            .prop_map(|(id, reason, message, topic, retry)| {
                let mut e = ErrorFrame::new(id, reason, message);
                e.required_scope = topic.as_ref().map(|t| format!("subscribe:{t}"));
                e.topic = topic;
                e.retry_after_ms = retry;
                ServerFrame::Error(e)
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// The one-pass reader never takes a frame the serde path would refuse or read
    /// otherwise: on every frame it accepts, both give the same frame or the same error.
    #[test]
    fn a_payload_read_in_one_pass_is_what_serde_reads(
        text in (arb_json(3), "[ \t\n\r]{0,2}").prop_map(|(v, w)| format!("{w}{v}{w}"))
    ) {
        if super::scan::data(text.trim()) {
            prop_assert_eq!(RawJson::payload(&text), RawJson::payload_by_serde(&text), "{}", text);
        }
    }

    #[test]
    fn the_one_pass_reader_agrees_with_serde(text in arb_frame_text()) {
        if super::scan::frame(&text).is_some() {
            let fast = ClientFrame::decode(&text, MAX);
            let slow = super::client::decode_by_serde(&text);
            prop_assert_eq!(fast, slow, "{}", text);
        }
    }
}

proptest! {
    #[test]
    fn client_frames_round_trip(frame in arb_client_frame()) {
        let text = frame.encode();
        prop_assert_eq!(ClientFrame::decode(&text, MAX).unwrap(), frame);
    }

    #[test]
    fn server_frames_round_trip(frame in arb_server_frame()) {
        let text = frame.encode();
        prop_assert_eq!(ServerFrame::decode(&text).unwrap(), frame);
    }

    #[test]
    fn decode_never_panics(text in "\\PC{0,200}") {
        let _ = ClientFrame::decode(&text, MAX);
        let _ = ServerFrame::decode(&text);
    }
}

#[test]
fn gap_frames_round_trip_with_and_without_a_subscription_id() {
    let all = ServerFrame::Gap(Gap {
        id: None,
        from_seq: 7,
        to_seq: 9,
    });
    assert_eq!(all.encode(), r#"{"type":"gap","from_seq":7,"to_seq":9}"#);
    assert_eq!(ServerFrame::decode(&all.encode()).unwrap(), all);
    let one =
        ServerFrame::decode(r#"{"type":"gap","id":"s1","from_seq":1,"to_seq":1200}"#).unwrap();
    match one {
        ServerFrame::Gap(g) => {
            assert_eq!(g.id.unwrap().as_str(), "s1");
            assert_eq!((g.from_seq, g.to_seq), (1, 1200));
        }
        other => panic!("{other:?}"),
    }
    let e = ServerFrame::decode(r#"{"type":"gap","from_seq":1}"#).unwrap_err();
    assert_eq!(e.reason, Reason::MissingField, "{}", e.message);
}

/// JSON text pieces with the forms the one-pass reader must judge as serde does: escapes and
/// surrogates, control characters, numbers at the edges, nesting.
fn arb_json(depth: u32) -> BoxedStrategy<String> {
    // Mostly pieces serde takes, so that whole frames get through to the comparison.
    let string = prop::collection::vec(
        prop_oneof![
            6 => Just("a".to_owned()),
            6 => Just("\\u00e9".to_owned()),
            6 => Just("\\ud83d\\ude00".to_owned()),
            6 => Just("\\n\\t\\\"\\\\\\/".to_owned()),
            6 => Just("é漢😀".to_owned()),
            6 => "[a-z ]{0,12}",
            1 => Just("\\ud800".to_owned()),
            1 => Just("\\udc00".to_owned()),
            1 => Just("\\ud800\\u0041".to_owned()),
            1 => Just("\\x".to_owned()),
            1 => Just("\\u12".to_owned()),
            1 => Just("\t".to_owned()),
            1 => Just("\u{1}".to_owned()),
        ],
        0..6,
    )
    .prop_map(|parts| format!("\"{}\"", parts.concat()));
    let number = prop_oneof![
        Just("0".to_owned()),
        Just("-0".to_owned()),
        Just("01".to_owned()),
        Just("1.".to_owned()),
        Just(".5".to_owned()),
        Just("1e400".to_owned()),
        Just("-1e400".to_owned()),
        Just("1e-400".to_owned()),
        Just("1.7976931348623157e308".to_owned()),
        Just("1.7976931348623159e308".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("1E+2".to_owned()),
        Just("1e".to_owned()),
        Just("0e99999".to_owned()),
        Just("-".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "[0-9]{1,30}(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,4})?",
    ];
    let leaf = prop_oneof![
        string.clone(),
        number,
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
        Just("nul".to_owned()),
    ]
    .boxed();
    if depth == 0 {
        return leaf;
    }
    let inner = arb_json(depth - 1);
    let ws = prop_oneof![Just(""), Just(" "), Just("\n\t"), Just("\u{b}")];
    prop_oneof![
        3 => leaf,
        1 => (prop::collection::vec((inner.clone(), ws.clone()), 0..4), any::<bool>()).prop_map(
            |(items, trailing)| {
                let body: Vec<String> = items.into_iter().map(|(v, w)| format!("{w}{v}{w}")).collect();
                format!("[{}{}]", body.join(","), if trailing { "," } else { "" })
            }
        ),
        1 => prop::collection::vec((string, inner, ws), 0..4).prop_map(|members| {
            let body: Vec<String> =
                members.into_iter().map(|(k, v, w)| format!("{k}{w}:{w}{v}")).collect();
            format!("{{{}}}", body.join(","))
        }),
    ]
    .boxed()
}

/// A client frame's text: mostly publish frames with unusual `data` and members, some with a
/// repeated member, cut short or with a stray byte, some deeply nested.
fn arb_frame_text() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        4 => Just("\"publish\"".to_owned()),
        1 => Just("\"subscribe\"".to_owned()),
        1 => arb_json(1),
    ];
    let extra = prop_oneof![
        Just("id"),
        Just("topic"),
        Just("data"),
        Just("event_id"),
        Just("since"),
        Just("token"),
        Just("other"),
        Just("x\\u0041"),
    ];
    let deep = (60usize..70).prop_map(|n| {
        format!(
            r#"{{"type":"publish","id":"p","topic":"a.b","data":{}1{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    });
    let frame = (
        kind,
        prop::option::weighted(0.9, arb_json(3)),
        prop::option::weighted(0.3, arb_json(1)),
        prop::option::weighted(0.2, (extra, arb_json(2))),
        any::<u8>(),
        0usize..60,
    )
        .prop_map(|(kind, data, event_id, extra, cut, at)| {
            let mut members = vec![
                format!("\"type\":{kind}"),
                "\"id\":\"p1\"".to_owned(),
                "\"topic\":\"lab.result\"".to_owned(),
            ];
            if let Some(data) = data {
                members.push(format!("\"data\" : {data}"));
            }
            if let Some(event_id) = event_id {
                members.push(format!("\"event_id\":{event_id}"));
            }
            if let Some((key, value)) = extra {
                members.push(format!("\"{key}\":{value}"));
            }
            let text = format!(" {{{}}}\n", members.join(","));
            match cut % 16 {
                0 => text.chars().take(at).collect(),
                1 => format!("{text}x"),
                _ => text,
            }
        });
    prop_oneof![8 => frame, 1 => deep]
}

/// Edges the one-pass check takes, each read by serde to the same payload: numbers at the
/// range's border and zero or long_fraction values with long exponents, nesting of exactly 64 in
/// objects and arrays; and just past them, refused by both.
#[test]
fn the_one_pass_check_and_serde_agree_at_the_edges() {
    let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(64), "}".repeat(64));
    let too_deep = format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65));
    let big_integer = format!("1{}", "0".repeat(308));
    // 10, written as a long fraction times a large exponent.
    let long_fraction = format!("0.{}1e9999", "0".repeat(9_997));
    for text in [
        "0e9999",
        "-0",
        "1e308",
        "-1e308",
        "1e-9999",
        "1.7976931348623157e300",
        big_integer.as_str(),
        long_fraction.as_str(),
        deep_objects.as_str(),
    ] {
        assert!(super::scan::data(text), "the pass takes {text:.40}");
        assert_eq!(
            RawJson::payload(text),
            RawJson::payload_by_serde(text),
            "{text:.40}"
        );
        assert!(RawJson::payload(text).is_ok(), "{text:.40}");
    }
    for text in ["1e400", "-1e309", too_deep.as_str()] {
        assert!(!super::scan::data(text), "{text:.40}");
        assert!(RawJson::payload(text).is_err(), "{text:.40}");
    }
}
