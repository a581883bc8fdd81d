//! The FHIR resources the broker writes (FHIR.md): R4B notification Bundles (Subscriptions
//! Backport IG STU 1.1, `backport-subscription-notification`), `OperationOutcome`s,
//! `Parameters`, search-set Bundles.
//!
//! A notification is a `Bundle` of type `history` whose first entry is a `SubscriptionStatus`
//! with `request` `GET {base}/Subscription/{id}/$status` and `response` `200`; its counters are
//! JSON strings (R4B types `eventsSinceSubscriptionStart` and `eventNumber` as `string`).
//! Payload content as the IG's payloads page says: `empty` (the status only, no `topic`, no
//! `focus`), `id-only` (`focus` references, and an entry per focus with `fullUrl` and
//! `request` but no `resource`), `full-resource` (the focus resources, byte for byte as
//! published).

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::subscription::PayloadContent;
use crate::Timestamp;

/// The notification Bundle profile.
pub const NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification";

/// The media type of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The SubscriptionStatus part of a notification.
#[derive(Debug, Clone, Copy)]
pub struct StatusInfo<'a> {
    /// The FHIR base URL, e.g. `https://broker.example/fhir`.
    pub base: &'a str,
    /// The Subscription's id.
    pub subscription_id: &'a str,
    /// Its topic canonical.
    pub topic: &'a str,
    /// `requested`, `active`, `error` or `off`.
    pub status: &'a str,
    /// `handshake`, `heartbeat`, `event-notification`, `query-status` or `query-event`.
    pub kind: &'a str,
    /// Matching events since the Subscription began.
    pub events_since_start: u64,
    /// The payload content.
    pub content: PayloadContent,
    /// Why it is `error` or `off`.
    pub error: Option<&'a str>,
}

/// One event of a notification.
#[derive(Debug, Clone, Copy)]
pub struct NotificationEvent<'a> {
    /// Its event number (n-th matching event of the Subscription).
    pub number: u64,
    /// When the broker accepted it.
    pub timestamp: Timestamp,
    /// The focus resource, exactly as published.
    pub resource: &'a RawValue,
    /// Its `resourceType`.
    pub resource_type: &'a str,
    /// Its `id`, when it has one.
    pub resource_id: Option<&'a str>,
    /// The broker's event id (names the focus when the resource has no `id`).
    pub event_id: &'a str,
}

impl NotificationEvent<'_> {
    /// The focus' URL: `{base}/{Type}/{id}`, or `urn:scopecast:event:{event id}` for a
    /// resource without an `id`.
    pub fn focus_url(&self, base: &str) -> String {
        match self.resource_id {
            Some(id) => format!("{base}/{}/{id}", self.resource_type),
            None => format!("urn:scopecast:event:{}", self.event_id),
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum EntryResource<'a> {
    Value(Value),
    Raw(&'a RawValue),
}

#[derive(Serialize)]
struct Entry<'a> {
    #[serde(rename = "fullUrl")]
    full_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<EntryResource<'a>>,
    request: Value,
    response: Value,
}

#[derive(Serialize)]
struct Bundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    id: &'a str,
    meta: Value,
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    entry: Vec<Entry<'a>>,
}

/// The `SubscriptionStatus` resource of `info` with `events` (their `notificationEvent`s).
pub fn subscription_status(
    info: &StatusInfo<'_>,
    status_id: &str,
    events: &[NotificationEvent<'_>],
) -> Value {
    let mut status = json!({
        "resourceType": "SubscriptionStatus",
        "id": status_id,
        "status": info.status,
        "type": info.kind,
        "eventsSinceSubscriptionStart": info.events_since_start.to_string(),
        "subscription": {"reference": format!("{}/Subscription/{}", info.base, info.subscription_id)},
    });
    if info.content != PayloadContent::Empty {
        status["topic"] = json!(info.topic);
    }
    if let Some(e) = info.error {
        // `error`: the endpoint did not take a notification; `off`: the client may no longer
        // receive it (or stopped it).
        let code = if info.status == "error" {
            "no-response"
        } else {
            "unauthorized"
        };
        status["error"] = json!([{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscription-error", "code": code}],
            "text": e,
        }]);
    }
    if !events.is_empty() {
        let list: Vec<Value> = events
            .iter()
            .map(|e| {
                let mut n = json!({
                    "eventNumber": e.number.to_string(),
                    "timestamp": e.timestamp.to_string(),
                });
                if info.content != PayloadContent::Empty {
                    n["focus"] = json!({"reference": e.focus_url(info.base)});
                }
                n
            })
            .collect();
        status["notificationEvent"] = Value::Array(list);
    }
    status
}

/// A notification Bundle (JSON text): the status of `info`, then for `id-only` and
/// `full-resource` one entry per event's focus. `bundle_id` and `status_id` are fresh UUIDs
/// (the status entry's `fullUrl` is `urn:uuid:{status_id}`); `now` its `timestamp`.
pub fn notification_bundle(
    info: &StatusInfo<'_>,
    events: &[NotificationEvent<'_>],
    bundle_id: &str,
    status_id: &str,
    now: Timestamp,
) -> String {
    let mut entry = vec![Entry {
        full_url: format!("urn:uuid:{status_id}"),
        resource: Some(EntryResource::Value(subscription_status(
            info, status_id, events,
        ))),
        request: json!({"method": "GET", "url": format!("{}/Subscription/{}/$status", info.base, info.subscription_id)}),
        response: json!({"status": "200"}),
    }];
    if info.content != PayloadContent::Empty {
        for e in events {
            entry.push(Entry {
                full_url: e.focus_url(info.base),
                resource: (info.content == PayloadContent::FullResource)
                    .then_some(EntryResource::Raw(e.resource)),
                request: json!({"method": "POST", "url": e.resource_type}),
                response: json!({"status": "201"}),
            });
        }
    }
    let bundle = Bundle {
        resource_type: "Bundle",
        id: bundle_id,
        meta: json!({"profile": [NOTIFICATION_PROFILE]}),
        kind: "history",
        timestamp: now.to_string(),
        entry,
    };
    serde_json::to_string(&bundle).unwrap_or_default()
}

/// An `OperationOutcome` with one `error` issue: `code` (an IssueType code such as
/// `forbidden`, `not-supported`, `invalid`, `not-found`, `security`, `expired`), the message in
/// `diagnostics`, and the element at fault in `expression`.
pub fn operation_outcome(code: &str, diagnostics: &str, expression: Option<&str>) -> Value {
    let mut issue = json!({"severity": "error", "code": code, "diagnostics": diagnostics});
    if let Some(e) = expression {
        issue["expression"] = json!([e]);
    }
    json!({"resourceType": "OperationOutcome", "issue": [issue]})
}

/// The `Parameters` of `$get-ws-binding-token`: `token`, `expiration`, a `subscription` per
/// bound id, `websocket-url`.
pub fn binding_parameters(
    token: &str,
    expiration: Timestamp,
    subscriptions: &[String],
    websocket_url: &str,
) -> Value {
    let mut p = vec![
        json!({"name": "token", "valueString": token}),
        json!({"name": "expiration", "valueDateTime": expiration.to_string()}),
    ];
    for s in subscriptions {
        p.push(json!({"name": "subscription", "valueString": s}));
    }
    p.push(json!({"name": "websocket-url", "valueUrl": websocket_url}));
    json!({"resourceType": "Parameters", "parameter": p})
}

/// A `searchset` Bundle of `resources` (each with its `fullUrl`).
pub fn searchset(self_url: &str, resources: Vec<(String, Value)>) -> Value {
    let total = resources.len();
    let entry: Vec<Value> = resources
        .into_iter()
        .map(|(url, r)| json!({"fullUrl": url, "resource": r, "search": {"mode": "match"}}))
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": self_url}],
        "entry": entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(content: PayloadContent, kind: &'static str) -> StatusInfo<'static> {
        StatusInfo {
            base: "https://b.example/fhir",
            subscription_id: "s1",
            topic: "http://hl7.org/SubscriptionTopic/admission",
            status: "active",
            kind,
            events_since_start: 2,
            content,
            error: None,
        }
    }

    #[test]
    fn full_resource_keeps_the_payload_bytes_and_counts_as_strings() {
        let raw = RawValue::from_string(
            r#"{"resourceType":"Encounter","id":"e1","length":{"value":1.50}}"#.to_owned(),
        )
        .unwrap();
        let e = NotificationEvent {
            number: 2,
            timestamp: Timestamp::from_unix_seconds(0).unwrap(),
            resource: &raw,
            resource_type: "Encounter",
            resource_id: Some("e1"),
            event_id: "x",
        };
        let text = notification_bundle(
            &info(PayloadContent::FullResource, "event-notification"),
            &[e],
            "b1",
            "st1",
            Timestamp::from_unix_seconds(0).unwrap(),
        );
        assert!(text.contains(r#""value":1.50"#), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "history");
        let st = &v["entry"][0]["resource"];
        assert_eq!(st["eventsSinceSubscriptionStart"], "2");
        assert_eq!(st["notificationEvent"][0]["eventNumber"], "2");
        assert_eq!(
            st["notificationEvent"][0]["focus"]["reference"],
            v["entry"][1]["fullUrl"]
        );
        assert_eq!(
            v["entry"][0]["request"]["url"],
            "https://b.example/fhir/Subscription/s1/$status"
        );
    }

    #[test]
    fn id_only_and_empty_payloads() {
        let raw =
            RawValue::from_string(r#"{"resourceType":"Encounter","id":"e1"}"#.to_owned()).unwrap();
        let e = NotificationEvent {
            number: 1,
            timestamp: Timestamp::from_unix_seconds(0).unwrap(),
            resource: &raw,
            resource_type: "Encounter",
            resource_id: Some("e1"),
            event_id: "x",
        };
        let now = Timestamp::from_unix_seconds(0).unwrap();
        let id_only: Value = serde_json::from_str(&notification_bundle(
            &info(PayloadContent::IdOnly, "event-notification"),
            &[e],
            "b",
            "s",
            now,
        ))
        .unwrap();
        assert!(id_only["entry"][1].get("resource").is_none());
        assert_eq!(
            id_only["entry"][1]["fullUrl"],
            "https://b.example/fhir/Encounter/e1"
        );
        let empty: Value = serde_json::from_str(&notification_bundle(
            &info(PayloadContent::Empty, "event-notification"),
            &[e],
            "b",
            "s",
            now,
        ))
        .unwrap();
        assert_eq!(empty["entry"].as_array().unwrap().len(), 1);
        let st = &empty["entry"][0]["resource"];
        assert!(st.get("topic").is_none());
        assert!(st["notificationEvent"][0].get("focus").is_none());
    }
}
