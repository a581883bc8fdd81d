//! The `SubscriptionTopic` catalogue (FHIR.md "Topics"): canonical topic URLs mapped to broker
//! topics, with the filters each allows. The broker does not evaluate a topic's trigger (it
//! computes no resource state transitions): the publisher's topic says what happened, and a
//! canonical names the broker topic that carries it.
//!
//! Built in: the Argonaut encounter pair that real programs use
//! (`http://argonautproject.org/encounters-ig/SubscriptionTopic/encounter-start` and
//! `encounter-end`), the backport IG's `http://hl7.org/SubscriptionTopic/admission`, and one
//! topic per resource event of [`super::RESOURCE_EVENTS`]
//! (`https://scopecast.dev/fhir/SubscriptionTopic/<resource>-<happening>`). Operators add more
//! in configuration (`[[fhir.topics]]`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::RESOURCE_EVENTS;

/// The namespace of Scopecast's own topic canonicals.
pub const SCOPECAST_TOPIC_BASE: &str = "https://scopecast.dev/fhir/SubscriptionTopic/";

/// How a filter compares its value with the focus resource (FHIR search parameter types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterKind {
    /// A `Reference` element: `Patient/123` (or `123`, a Patient id) equals the reference's
    /// `Type/id` (an absolute reference compares by its last two segments).
    Reference,
    /// A `code` element: the value equals the code.
    Token,
}

/// One filter a topic allows (`SubscriptionTopic.canFilterBy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicFilter {
    /// The search parameter name, e.g. `patient`.
    pub name: String,
    /// The element of the focus resource it reads, dotted (`subject`, `status`).
    pub path: String,
    /// How it compares.
    pub kind: FilterKind,
}

/// One topic of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDef {
    /// The resource id at `/fhir/SubscriptionTopic/{id}`: `[A-Za-z0-9-.]{1,64}`.
    pub id: String,
    /// The canonical URL a Subscription names in `criteria`.
    pub canonical: String,
    /// A human title.
    pub title: String,
    /// The broker topic whose events it carries, e.g. `fhir.encounter.started`.
    pub broker_topic: String,
    /// The focus resource type, e.g. `Encounter`.
    pub resource_type: String,
    /// The filters it allows.
    pub filters: Vec<TopicFilter>,
}

impl TopicDef {
    /// The filter named `name`.
    pub fn filter(&self, name: &str) -> Option<&TopicFilter> {
        self.filters.iter().find(|f| f.name == name)
    }

    /// The R4B `SubscriptionTopic` resource of this topic.
    pub fn resource(&self) -> Value {
        let filters: Vec<Value> = self
            .filters
            .iter()
            .map(|f| {
                json!({
                    "description": format!(
                        "{} of the {} ({} match on {})",
                        f.name,
                        self.resource_type,
                        match f.kind {
                            FilterKind::Reference => "reference",
                            FilterKind::Token => "token",
                        },
                        f.path
                    ),
                    "resource": self.resource_type,
                    "filterParameter": f.name,
                })
            })
            .collect();
        json!({
            "resourceType": "SubscriptionTopic",
            "id": self.id,
            "url": self.canonical,
            "title": self.title,
            "status": "active",
            "description": format!(
                "Carried by the broker topic `{}`: every event published there is a notification of this topic (the publisher's topic says what happened; the broker does not evaluate triggers).",
                self.broker_topic
            ),
            "extension": [{
                "url": BROKER_TOPIC_EXTENSION,
                "valueString": self.broker_topic,
            }],
            "resourceTrigger": [{
                "description": self.title,
                "resource": format!("http://hl7.org/fhir/StructureDefinition/{}", self.resource_type),
                "supportedInteraction": ["create", "update"],
            }],
            "canFilterBy": filters,
            "notificationShape": [{"resource": self.resource_type}],
        })
    }
}

/// The extension of a `SubscriptionTopic` naming its broker topic.
pub const BROKER_TOPIC_EXTENSION: &str =
    "https://scopecast.dev/fhir/StructureDefinition/broker-topic";

/// The element holding the patient of a resource type's events (`subject` or `patient`).
fn patient_path(resource_type: &str) -> &'static str {
    match resource_type {
        "Immunization" | "AllergyIntolerance" => "patient",
        _ => "subject",
    }
}

fn filters_for(resource_type: &str) -> Vec<TopicFilter> {
    let mut out = vec![TopicFilter {
        name: "patient".to_owned(),
        path: patient_path(resource_type).to_owned(),
        kind: FilterKind::Reference,
    }];
    if resource_type != "AllergyIntolerance" && resource_type != "Condition" {
        out.push(TopicFilter {
            name: "status".to_owned(),
            path: "status".to_owned(),
            kind: FilterKind::Token,
        });
    }
    out
}

/// The built-in topics, in catalogue order.
pub fn builtin_topics() -> Vec<TopicDef> {
    let encounter = |id: &str, canonical: &str, title: &str, topic: &str| TopicDef {
        id: id.to_owned(),
        canonical: canonical.to_owned(),
        title: title.to_owned(),
        broker_topic: topic.to_owned(),
        resource_type: "Encounter".to_owned(),
        filters: filters_for("Encounter"),
    };
    let mut out = vec![
        encounter(
            "encounter-start",
            "http://argonautproject.org/encounters-ig/SubscriptionTopic/encounter-start",
            "Encounter start (Argonaut)",
            "fhir.encounter.started",
        ),
        encounter(
            "encounter-end",
            "http://argonautproject.org/encounters-ig/SubscriptionTopic/encounter-end",
            "Encounter end (Argonaut)",
            "fhir.encounter.finished",
        ),
        encounter(
            "admission",
            "http://hl7.org/SubscriptionTopic/admission",
            "Admission (Subscriptions Backport IG)",
            "fhir.encounter.started",
        ),
    ];
    for e in RESOURCE_EVENTS {
        let id = format!("{}-{}", e.resource_type.to_ascii_lowercase(), e.happening);
        out.push(TopicDef {
            canonical: format!("{SCOPECAST_TOPIC_BASE}{id}"),
            title: format!("{} {}", e.resource_type, e.happening),
            id,
            broker_topic: e.topic.to_owned(),
            resource_type: e.resource_type.to_owned(),
            filters: filters_for(e.resource_type),
        });
    }
    out
}

/// Whether `resource` passes the filter `f` with `value` (FHIR.md "Filters").
pub fn filter_matches(f: &TopicFilter, value: &str, resource: &Value) -> bool {
    let element = f.path.split('.').fold(resource, |v, key| &v[key]);
    match f.kind {
        FilterKind::Reference => {
            let Some(reference) = element["reference"].as_str() else {
                return false;
            };
            // The last `n` segments of a reference (`Type/id` of an absolute URL).
            let tail = |s: &str, n: usize| -> String {
                let parts: Vec<&str> = s.trim_end_matches('/').split('/').collect();
                parts[parts.len().saturating_sub(n)..].join("/")
            };
            let wanted = if value.contains('/') {
                tail(value, 2)
            } else {
                format!("Patient/{value}")
            };
            tail(reference, 2) == wanted
        }
        FilterKind::Token => element.as_str() == Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_maps_the_encounter_pair_and_every_resource_event() {
        let topics = builtin_topics();
        let start = topics
            .iter()
            .find(|t| t.canonical.ends_with("encounter-start"))
            .unwrap();
        assert_eq!(start.broker_topic, "fhir.encounter.started");
        assert_eq!(topics.len(), 3 + RESOURCE_EVENTS.len());
        let ids: std::collections::HashSet<_> = topics.iter().map(|t| &t.id).collect();
        assert_eq!(ids.len(), topics.len(), "ids are unique");
    }

    #[test]
    fn reference_and_token_filters() {
        let t = &builtin_topics()[0];
        let p = t.filter("patient").unwrap();
        let e = json!({"subject": {"reference": "Patient/123"}, "status": "in-progress"});
        assert!(filter_matches(p, "Patient/123", &e));
        assert!(filter_matches(p, "123", &e));
        assert!(filter_matches(
            p,
            "https://ehr.example/fhir/Patient/123",
            &e
        ));
        assert!(!filter_matches(p, "Patient/1234", &e));
        assert!(!filter_matches(p, "Group/123", &e));
        let abs = json!({"subject": {"reference": "https://x.example/fhir/Patient/123"}});
        assert!(filter_matches(p, "Patient/123", &abs));
        assert!(!filter_matches(
            p,
            "Patient/123",
            &json!({"subject": "Patient/123"})
        ));
        let s = t.filter("status").unwrap();
        assert!(filter_matches(s, "in-progress", &e));
        assert!(!filter_matches(s, "finished", &e));
    }
}
