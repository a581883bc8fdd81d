//! FHIR resources as clinical events: which resource types are events, the broker topic each
//! happening is published on, and the clinical time it happened. Shared by the CLI's FHIR Bulk
//! Data replay (`scopecast replay --fhir-bulk`) and the FHIR front ends (the
//! `SubscriptionTopic` catalogue names these topics).
//!
//! | resource | happening | topic | time |
//! |---|---|---|---|
//! | Encounter | `started` | `fhir.encounter.started` | `period.start` |
//! | Encounter (status finished) | `finished` | `fhir.encounter.finished` | `period.end` |
//! | Condition | `recorded` | `fhir.condition.recorded` | `recordedDate`, else `onsetDateTime` |
//! | MedicationRequest | `ordered` | `fhir.medicationrequest.ordered` | `authoredOn` |
//! | Procedure | `performed` | `fhir.procedure.performed` | `performedPeriod.start`, else `performedDateTime` |
//! | Immunization | `given` | `fhir.immunization.given` | `occurrenceDateTime` |
//! | AllergyIntolerance | `recorded` | `fhir.allergyintolerance.recorded` | `recordedDate` |
//!
//! Other resource types are reference data, not events. The mapping reads the resource's
//! fields as FHIR R4/R4B define them; it does not compute state transitions beyond
//! "an Encounter whose status is `finished` has finished".

pub mod notify;
pub mod subscription;
pub mod topics;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;

use crate::Timestamp;

/// One kind of clinical happening: a resource type, what happened to it, and its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceEvent {
    /// The FHIR resource type, e.g. `Encounter`.
    pub resource_type: &'static str,
    /// What happened, lower case, e.g. `started`; the last segment of [`topic`](Self::topic)
    /// and the suffix of the replay's event ids.
    pub happening: &'static str,
    /// The broker topic, e.g. `fhir.encounter.started`.
    pub topic: &'static str,
    /// The resource fields giving the clinical time, in order of preference (FHIRPath-like
    /// dotted paths).
    pub time_fields: &'static [&'static str],
}

/// Every resource event the mapping knows, in the table's order.
pub const RESOURCE_EVENTS: &[ResourceEvent] = &[
    ResourceEvent {
        resource_type: "Encounter",
        happening: "started",
        topic: "fhir.encounter.started",
        time_fields: &["period.start"],
    },
    ResourceEvent {
        resource_type: "Encounter",
        happening: "finished",
        topic: "fhir.encounter.finished",
        time_fields: &["period.end"],
    },
    ResourceEvent {
        resource_type: "Condition",
        happening: "recorded",
        topic: "fhir.condition.recorded",
        time_fields: &["recordedDate", "onsetDateTime"],
    },
    ResourceEvent {
        resource_type: "MedicationRequest",
        happening: "ordered",
        topic: "fhir.medicationrequest.ordered",
        time_fields: &["authoredOn"],
    },
    ResourceEvent {
        resource_type: "Procedure",
        happening: "performed",
        topic: "fhir.procedure.performed",
        time_fields: &["performedPeriod.start", "performedDateTime"],
    },
    ResourceEvent {
        resource_type: "Immunization",
        happening: "given",
        topic: "fhir.immunization.given",
        time_fields: &["occurrenceDateTime"],
    },
    ResourceEvent {
        resource_type: "AllergyIntolerance",
        happening: "recorded",
        topic: "fhir.allergyintolerance.recorded",
        time_fields: &["recordedDate"],
    },
];

/// True when resources of `resource_type` are events (some row of [`RESOURCE_EVENTS`]).
pub fn is_event_type(resource_type: &str) -> bool {
    RESOURCE_EVENTS
        .iter()
        .any(|e| e.resource_type == resource_type)
}

/// A FHIR `dateTime` (`"2014-05-18T01:06:23-04:00"`, or a partial date `YYYY`, `YYYY-MM`,
/// `YYYY-MM-DD` taken at its first instant in UTC); `None` when `v` is not one.
pub fn fhir_time(v: &Value) -> Option<Timestamp> {
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

fn field<'a>(resource: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(resource, |v, key| &v[key])
}

/// The happenings of one resource with their clinical times, in the table's order.
///
/// An Encounter gives `started` when it has a `period.start` and also `finished` when its
/// status is `finished` and it has a `period.end`; it gives none when it has neither. Every
/// other event type gives exactly one happening.
///
/// # Errors
/// A message naming the field when a resource of an event type (other than Encounter) has no
/// usable time, e.g. `"Condition without a usable recordedDate"`.
pub fn happenings(resource: &Value) -> Result<Vec<(Timestamp, &'static ResourceEvent)>, String> {
    let kind = resource["resourceType"].as_str().unwrap_or("");
    let mut out = Vec::new();
    for event in RESOURCE_EVENTS.iter().filter(|e| e.resource_type == kind) {
        let time = event
            .time_fields
            .iter()
            .find_map(|f| fhir_time(field(resource, f)));
        if kind == "Encounter" {
            let applies = event.happening != "finished" || resource["status"] == "finished";
            if let (true, Some(t)) = (applies, time) {
                out.push((t, event));
            }
            continue;
        }
        match time {
            Some(t) => out.push((t, event)),
            None => {
                return Err(format!(
                    "{kind} without a usable {}",
                    event.time_fields.first().copied().unwrap_or("time")
                ));
            }
        }
    }
    Ok(out)
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
            h.iter().map(|x| x.1.topic).collect::<Vec<_>>(),
            ["fhir.encounter.started", "fhir.encounter.finished"]
        );
        let open = json!({"resourceType": "Encounter", "status": "in-progress", "period": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T11:00:00Z"}});
        assert_eq!(happenings(&open).unwrap().len(), 1);
        let proc = json!({"resourceType": "Procedure", "performedDateTime": "2020-02-02"});
        assert_eq!(
            happenings(&proc).unwrap()[0].1.topic,
            "fhir.procedure.performed"
        );
        let cond = json!({"resourceType": "Condition", "onsetDateTime": "2020-02-02"});
        assert_eq!(happenings(&cond).unwrap()[0].1.happening, "recorded");
        assert_eq!(
            happenings(&json!({"resourceType": "Condition"})).unwrap_err(),
            "Condition without a usable recordedDate"
        );
        assert!(
            happenings(&json!({"resourceType": "Patient"}))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn every_topic_is_valid_and_ends_with_its_happening() {
        for e in RESOURCE_EVENTS {
            let topic = crate::Topic::new(e.topic).unwrap();
            assert!(topic.as_str().ends_with(e.happening), "{e:?}");
            assert!(is_event_type(e.resource_type));
        }
        assert!(!is_event_type("Patient"));
    }
}
