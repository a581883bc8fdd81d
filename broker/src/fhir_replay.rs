//! `scopecast replay --fhir-bulk DIR`: turns a FHIR Bulk Data export (NDJSON, one resource per
//! line, files named `<ResourceType>.*.ndjson`) into one event per clinical happening, in order
//! of clinical time, the payload being the resource itself.
//!
//! | resource | topic | time |
//! |---|---|---|
//! | Encounter | `fhir.encounter.started` | `period.start` |
//! | Encounter (status finished) | `fhir.encounter.finished` | `period.end` |
//! | Condition | `fhir.condition.recorded` | `recordedDate`, else `onsetDateTime` |
//! | MedicationRequest | `fhir.medicationrequest.ordered` | `authoredOn` |
//! | Procedure | `fhir.procedure.performed` | `performedPeriod.start`, else `performedDateTime` |
//! | Immunization | `fhir.immunization.given` | `occurrenceDateTime` |
//! | AllergyIntolerance | `fhir.allergyintolerance.recorded` | `recordedDate` |
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
use scopecast_protocol::{RawJson, Timestamp};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;

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

/// A FHIR `dateTime`: full RFC 3339, or a partial date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) taken
/// at its first instant in UTC.
fn fhir_time(v: &Value) -> Option<Timestamp> {
    let s = v.as_str()?;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Timestamp::new(t).ok();
    }
    let mut parts = s.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next().map_or(Some(1), |m| m.parse().ok())?;
    let day: u8 = parts.next().map_or(Some(1), |d| d.parse().ok())?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    Timestamp::new(date.midnight().assume_utc()).ok()
}

/// The happenings of one resource: `(time, topic, suffix)`.
fn happenings(r: &Value) -> Result<Vec<(Timestamp, &'static str, &'static str)>, String> {
    let kind = r["resourceType"].as_str().unwrap_or("");
    let need = |t: Option<Timestamp>, field: &str| {
        t.ok_or_else(|| format!("{kind} without a usable {field}"))
    };
    Ok(match kind {
        "Encounter" => {
            let mut v = Vec::new();
            if let Some(start) = fhir_time(&r["period"]["start"]) {
                v.push((start, "fhir.encounter.started", "started"));
            }
            if r["status"] == "finished"
                && let Some(end) = fhir_time(&r["period"]["end"])
            {
                v.push((end, "fhir.encounter.finished", "finished"));
            }
            v
        }
        "Condition" => {
            vec![(
                need(
                    fhir_time(&r["recordedDate"]).or_else(|| fhir_time(&r["onsetDateTime"])),
                    "recordedDate",
                )?,
                "fhir.condition.recorded",
                "recorded",
            )]
        }
        "MedicationRequest" => vec![(
            need(fhir_time(&r["authoredOn"]), "authoredOn")?,
            "fhir.medicationrequest.ordered",
            "ordered",
        )],
        "Procedure" => vec![(
            need(
                fhir_time(&r["performedPeriod"]["start"])
                    .or_else(|| fhir_time(&r["performedDateTime"])),
                "performedPeriod.start",
            )?,
            "fhir.procedure.performed",
            "performed",
        )],
        "Immunization" => vec![(
            need(fhir_time(&r["occurrenceDateTime"]), "occurrenceDateTime")?,
            "fhir.immunization.given",
            "given",
        )],
        "AllergyIntolerance" => vec![(
            need(fhir_time(&r["recordedDate"]), "recordedDate")?,
            "fhir.allergyintolerance.recorded",
            "recorded",
        )],
        _ => Vec::new(),
    })
}

const EVENT_TYPES: [&str; 6] = [
    "Encounter",
    "Condition",
    "MedicationRequest",
    "Procedure",
    "Immunization",
    "AllergyIntolerance",
];

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
            if !EVENT_TYPES.contains(&kind.as_str()) {
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
            match happenings(&value) {
                Ok(hs) => {
                    for (time, topic, suffix) in hs {
                        let event_id: String = format!("{kind}-{id}-{suffix}")
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
        "published {} events in {secs:.1} s ({:.0} events/s): {published} new, {duplicates} duplicates already stored",
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fhir_times_full_and_partial() {
        assert_eq!(
            fhir_time(&json!("2014-05-18T01:06:23-04:00"))
                .unwrap()
                .to_string(),
            "2014-05-18T05:06:23Z"
        );
        assert_eq!(
            fhir_time(&json!("2019-03-04")).unwrap().to_string(),
            "2019-03-04T00:00:00Z"
        );
        assert_eq!(
            fhir_time(&json!("2019")).unwrap().to_string(),
            "2019-01-01T00:00:00Z"
        );
        assert!(fhir_time(&json!("yesterday")).is_none());
    }

    #[test]
    fn encounters_give_start_and_finish() {
        let r = json!({"resourceType": "Encounter", "status": "finished",
            "period": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T11:00:00Z"}});
        let h = happenings(&r).unwrap();
        assert_eq!(
            h.iter().map(|x| x.1).collect::<Vec<_>>(),
            ["fhir.encounter.started", "fhir.encounter.finished"]
        );
        let open = json!({"resourceType": "Encounter", "status": "in-progress", "period": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T11:00:00Z"}});
        assert_eq!(happenings(&open).unwrap().len(), 1);
        let proc = json!({"resourceType": "Procedure", "performedDateTime": "2020-02-02"});
        assert_eq!(happenings(&proc).unwrap()[0].1, "fhir.procedure.performed");
        assert!(happenings(&json!({"resourceType": "Condition"})).is_err());
    }
}
