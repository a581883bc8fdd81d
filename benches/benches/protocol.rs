//! Micro-benchmarks of the protocol pieces on the publish path: topic parsing, pattern
//! matching, scope checks and `event` frame encoding.
//!
//! Run: `cargo bench -p scopecast-bench --bench protocol`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use scopecast_protocol::{
    ClientFrame, EventId, Pattern, RawJson, RawValue, ScopeSet, Timestamp, Topic, encode_event,
};

fn topic_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_parse");
    for text in [
        "adt.patient.admitted",
        "fhir.encounter.started.ward-7.bed-12.unit_a",
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(text.len()), text, |b, t| {
            b.iter(|| Topic::new(black_box(t)))
        });
    }
    group.finish();
}

/// 1,000 patterns: a mix of exact topics, `*` and `>` patterns, as a broker would hold.
fn thousand_patterns() -> Vec<Pattern> {
    (0..1_000)
        .map(|i| {
            let text = match i % 4 {
                0 => format!("fhir.encounter.site-{i}"),
                1 => format!("fhir.*.site-{i}"),
                2 => format!("adt.patient-{i}.>"),
                _ => format!("lab.result.final.u{i}"),
            };
            Pattern::new(&text).expect("valid pattern")
        })
        .collect()
}

fn pattern_match(c: &mut Criterion) {
    let patterns = thousand_patterns();
    let topics = [
        Topic::new("fhir.encounter.site-500").expect("valid"),
        Topic::new("adt.patient-2.admitted.icu").expect("valid"),
        Topic::new("nothing.matches.this").expect("valid"),
    ];
    let mut group = c.benchmark_group("pattern_match_1000");
    group.throughput(Throughput::Elements(patterns.len() as u64));
    for topic in &topics {
        group.bench_with_input(BenchmarkId::from_parameter(topic), topic, |b, t| {
            b.iter(|| patterns.iter().filter(|p| p.matches(black_box(t))).count())
        });
    }
    group.finish();
}

fn scope_check(c: &mut Criterion) {
    let scope = ScopeSet::parse(
        "openid subscribe:adt.patient.* subscribe:lab.result.> subscribe:fhir.encounter.> \
         publish:fhir.> system/Patient.read",
    )
    .expect("valid scope");
    let allowed = Pattern::new("fhir.encounter.*.ward-7").expect("valid");
    let refused = Pattern::new("fhir.>").expect("valid");
    let topic = Topic::new("fhir.condition.recorded").expect("valid");
    let mut group = c.benchmark_group("scope_check");
    group.bench_function("subscribe_allowed", |b| {
        b.iter(|| scope.allows_subscribe(black_box(&allowed)))
    });
    group.bench_function("subscribe_refused", |b| {
        b.iter(|| scope.check_subscribe(black_box(&refused)))
    });
    group.bench_function("publish_allowed", |b| {
        b.iter(|| scope.allows_publish(black_box(&topic)))
    });
    group.bench_function("parse", |b| {
        b.iter(|| ScopeSet::parse(black_box("subscribe:adt.> publish:lab.* openid")))
    });
    group.finish();
}

/// A JSON object of about `size` bytes.
fn payload(size: usize) -> Box<RawValue> {
    let filler = "x".repeat(size.saturating_sub(40));
    RawValue::from_string(format!(
        r#"{{"resourceType":"Encounter","text":"{filler}"}}"#
    ))
    .expect("valid JSON")
}

fn event_encode(c: &mut Criterion) {
    let topic = Topic::new("fhir.encounter.started").expect("valid");
    let id = EventId::new("3f6c1e0a-9b1d-4c1e-8f43-2a9e5c7d1b20").expect("valid");
    let time = Timestamp::now();
    let mut group = c.benchmark_group("event_encode");
    for size in scopecast_bench::PAYLOAD_SIZES {
        let data = RawJson::from(payload(size));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| {
            b.iter(|| encode_event(black_box(42), &topic, &id, time, d))
        });
    }
    group.finish();
}

fn frame_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_frame_decode");
    for size in scopecast_bench::PAYLOAD_SIZES {
        let frame = format!(
            r#"{{"type":"publish","id":"p1","topic":"fhir.encounter.started","data":{}}}"#,
            payload(size).get()
        );
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new("publish", size), &frame, |b, f| {
            b.iter(|| ClientFrame::decode(black_box(f), 1 << 20))
        });
    }
    // The real FHIR Encounter the harness publishes (about 1.7 KB, escapes and nesting):
    // the one-pass reader against the serde path it replaced (envelope, then `data` check),
    // which is still the fallback (an escaped member name sends a frame there).
    let encounter =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/encounter.json"))
            .expect("benches/data/encounter.json");
    let fast = format!(
        r#"{{"type":"publish","id":"p1","topic":"fhir.encounter.started","data":{}}}"#,
        encounter.trim()
    );
    let serde_path = fast.replacen(r#""type""#, r#""\u0074ype""#, 1);
    group.throughput(Throughput::Bytes(fast.len() as u64));
    group.bench_with_input(BenchmarkId::new("publish", "encounter"), &fast, |b, f| {
        b.iter(|| ClientFrame::decode(black_box(f), 1 << 20))
    });
    group.bench_with_input(
        BenchmarkId::new("publish-serde-path", "encounter"),
        &serde_path,
        |b, f| b.iter(|| ClientFrame::decode(black_box(f), 1 << 20)),
    );
    group.finish();
}

criterion_group!(
    benches,
    topic_parse,
    pattern_match,
    scope_check,
    event_encode,
    frame_decode
);
criterion_main!(benches);
