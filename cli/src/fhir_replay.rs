//! `scopecast replay --fhir-bulk DIR`: turns a FHIR Bulk Data export (NDJSON, one resource per
//! line, files named `<ResourceType>.*.ndjson`) into one event per clinical happening, in order
//! of clinical time, the payload being the resource itself.
//!
//! The resource-to-topic table is `scopecast_protocol::fhir` (shared with the FHIR front
//! ends).
//!
//! Other resource types are reference data: counted as skipped. Event ids are
//! `<ResourceType>-<id>-<happening>`, so running a replay twice publishes nothing twice
//! (within the broker's idempotency window).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use scopecast_client::{Client, PublishError};
use scopecast_protocol::{RawJson, Timestamp, fhir};
use serde_json::Value;

/// One event to publish.
#[derive(Debug)]
pub(crate) struct Happening {
    pub(crate) time: Timestamp,
    pub(crate) topic: &'static str,
    pub(crate) event_id: String,
    pub(crate) resource: RawJson,
}

/// What reading the export found.
#[derive(Debug, Default)]
pub(crate) struct Reading {
    pub(crate) happenings: Vec<Happening>,
    /// Resources of types that are not events (reference data), by type.
    pub(crate) skipped: BTreeMap<String, u64>,
    /// `file:line: what` for each malformed line.
    pub(crate) errors: Vec<String>,
}

/// Reads every `*.ndjson` file of `dir` and sorts the happenings by clinical time (stable:
/// ties keep file order).
pub(crate) fn read_export(dir: &Path) -> anyhow::Result<Reading> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!(
            "no .ndjson files in {} (a FHIR Bulk Data export has <ResourceType>.*.ndjson files)",
            dir.display()
        );
    }
    let mut out = Reading::default();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        let kind = name.split('.').next().unwrap_or("").to_owned();
        let reader = BufReader::new(
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?,
        );
        for (n, line) in reader.lines().enumerate() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    out.errors.push(format!("{name}:{}: {e}", n + 1));
                    continue;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            if !fhir::is_event_type(&kind) {
                *out.skipped.entry(kind.clone()).or_default() += 1;
                continue;
            }
            let value: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => {
                    out.errors.push(format!("{name}:{}: not JSON: {e}", n + 1));
                    continue;
                }
            };
            let id = value["id"].as_str().unwrap_or("").to_owned();
            let resource = match RawJson::payload(&line) {
                Ok(r) => r,
                Err(e) => {
                    out.errors.push(format!("{name}:{}: {e}", n + 1));
                    continue;
                }
            };
            match fhir::happenings(&value) {
                Ok(hs) => {
                    for (time, event) in hs {
                        let topic = event.topic;
                        let event_id: String = format!("{kind}-{id}-{}", event.happening)
                            .chars()
                            .filter(|c| c.is_ascii_graphic())
                            .take(128)
                            .collect();
                        out.happenings.push(Happening {
                            time,
                            topic,
                            event_id,
                            resource: resource.clone(),
                        });
                    }
                }
                Err(e) => out.errors.push(format!("{name}:{}: {e}", n + 1)),
            }
        }
    }
    out.happenings.sort_by_key(|h| h.time);
    Ok(out)
}

/// How fast to publish.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// As fast as the broker allows.
    Fast,
    /// At most this many events per second.
    Rate(f64),
    /// Clinical time divided by this factor.
    Speedup(f64),
}

/// Publishes the happenings in order; prints a summary.
pub(crate) async fn publish(client: &Client, reading: Reading, pace: Pace) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let total = reading.happenings.len() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} {eta}")
        {
            b.set_style(style);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    for e in &reading.errors {
        bar.suspend(|| eprintln!("skipped malformed line {e}"));
    }
    let started = Instant::now();
    let mut by_topic: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failed = 0u64;
    let mut duplicates = 0u64;
    let mut prev: Option<Timestamp> = None;
    for (i, h) in reading.happenings.iter().enumerate() {
        match pace {
            Pace::Fast => {}
            Pace::Rate(r) => {
                let due = started + Duration::from_secs_f64(i as f64 / r);
                tokio::time::sleep_until(due.into()).await;
            }
            Pace::Speedup(x) => {
                if let Some(p) = prev {
                    let gap_ns = (h.time.unix_nanos() - p.unix_nanos()).max(0) as f64 / x;
                    tokio::time::sleep(Duration::from_nanos(gap_ns as u64)).await;
                }
                prev = Some(h.time);
            }
        }
        loop {
            match client
                .publish_acked(h.topic, h.resource.clone(), Some(&h.event_id))
                .await
            {
                Ok(ack) => {
                    if ack.duplicate {
                        duplicates += 1;
                    } else {
                        *by_topic.entry(h.topic).or_default() += 1;
                    }
                    break;
                }
                Err(PublishError::RateLimited { retry_after_ms }) => {
                    tokio::time::sleep(Duration::from_millis(retry_after_ms.max(1))).await;
                }
                // Retrying with the same event id is safe: a stored event is not stored twice.
                Err(PublishError::Disconnected | PublishError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("{} {}: {e}", h.topic, h.event_id));
                    if matches!(e, PublishError::Forbidden { .. } | PublishError::Closed) {
                        bar.finish_and_clear();
                        anyhow::bail!("stopping: {e}");
                    }
                    break;
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let published: u64 = by_topic.values().sum();
    println!(
        "published {} events in {secs:.1} s ({:.0} events/s): {published} new, {duplicates} duplicates already stored within the broker's idempotency window",
        published + duplicates,
        (published + duplicates) as f64 / secs.max(1e-9)
    );
    for (topic, n) in &by_topic {
        println!("  {topic:<36} {n}");
    }
    let skipped: u64 = reading.skipped.values().sum();
    println!(
        "skipped {skipped} reference resources ({})",
        reading
            .skipped
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "malformed lines: {}, failed publishes: {failed}",
        reading.errors.len()
    );
    Ok(())
}
