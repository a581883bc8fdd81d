//! An R4B `Subscription` as the Subscriptions Backport IG STU 1.1 profile has it
//! (`backport-subscription`), read into what the broker honours ([`SubscriptionSpec`]), with
//! the exact refusal of what it does not ([`Refusal`]).
//!
//! - the topic canonical in `criteria`;
//! - filters in `_criteria.extension[backport-filter-criteria].valueString`, each
//!   `Type?name=value(&name=value)*` (FHIR search syntax; modifiers are not supported);
//! - `channel.type` `websocket` or `rest-hook` (with `channel.endpoint`, `channel.header`);
//! - `channel.payload` (MIME type, `application/fhir+json` or `application/json`) with
//!   `channel._payload.extension[backport-payload-content].valueCode` `empty`, `id-only` or
//!   `full-resource`;
//! - `channel.extension` `backport-heartbeat-period`, `backport-timeout` (seconds) and
//!   `backport-max-count`.

use serde_json::Value;

use super::topics::TopicDef;

/// The backport IG's StructureDefinition base.
pub const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

/// `backport-filter-criteria` (on `Subscription._criteria`).
pub const FILTER_CRITERIA_URL: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
/// `backport-payload-content` (on `Subscription.channel._payload`).
pub const PAYLOAD_CONTENT_URL: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
/// `backport-heartbeat-period` (on `Subscription.channel`), seconds.
pub const HEARTBEAT_URL: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
/// `backport-timeout` (on `Subscription.channel`), seconds.
pub const TIMEOUT_URL: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout";
/// `backport-max-count` (on `Subscription.channel`).
pub const MAX_COUNT_URL: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count";
/// The Subscription profile.
pub const SUBSCRIPTION_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";

/// The shortest heartbeat period honoured, seconds.
pub const MIN_HEARTBEAT_S: u64 = 1;
/// The longest heartbeat period honoured, seconds (a day).
pub const MAX_HEARTBEAT_S: u64 = 86_400;
/// The most filters one Subscription may carry.
pub const MAX_FILTERS: usize = 8;

/// `channel.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelType {
    /// `websocket`: bound with a token from `$get-ws-binding-token`.
    Websocket,
    /// `rest-hook`: POSTed to `channel.endpoint`.
    RestHook,
}

impl ChannelType {
    /// Its FHIR code.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::Websocket => "websocket",
            ChannelType::RestHook => "rest-hook",
        }
    }
}

/// The payload content of a notification (backport IG, payloads page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadContent {
    /// Only the `SubscriptionStatus`.
    Empty,
    /// The status with `focus` references, and an entry per focus without its resource.
    IdOnly,
    /// The status, and the focus resources themselves.
    FullResource,
}

impl PayloadContent {
    /// Its FHIR code.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadContent::Empty => "empty",
            PayloadContent::IdOnly => "id-only",
            PayloadContent::FullResource => "full-resource",
        }
    }

    /// The content coded `s`.
    pub fn parse(s: &str) -> Option<PayloadContent> {
        match s {
            "empty" => Some(PayloadContent::Empty),
            "id-only" => Some(PayloadContent::IdOnly),
            "full-resource" => Some(PayloadContent::FullResource),
            _ => None,
        }
    }
}

/// One filter of a Subscription: `name=value` on the topic's focus resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterCriterion {
    /// The filter (search parameter) name, one the topic declares.
    pub name: String,
    /// The value compared.
    pub value: String,
}

/// What a Subscription asks for, as the broker honours it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// The topic canonical (`criteria`).
    pub criteria: String,
    /// Its filters (all must match).
    pub filters: Vec<FilterCriterion>,
    /// The channel.
    pub channel: ChannelType,
    /// `channel.endpoint` (rest-hook).
    pub endpoint: Option<String>,
    /// `channel.payload`: the MIME type of notifications.
    pub mime: String,
    /// The payload content.
    pub content: PayloadContent,
    /// `channel.header`: `Name: value` lines (rest-hook).
    pub headers: Vec<String>,
    /// Heartbeat period, seconds.
    pub heartbeat_s: Option<u64>,
    /// Timeout of one rest-hook attempt, seconds.
    pub timeout_s: Option<u64>,
    /// Most events per notification.
    pub max_count: Option<u64>,
}

/// Why a Subscription is refused: the `OperationOutcome` issue code, the message, and the
/// FHIRPath expression of the element at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `invalid`, `required`, `value` or `not-supported`.
    pub code: &'static str,
    /// What is wrong, and what would be right.
    pub message: String,
    /// The element, e.g. `Subscription.channel.type`.
    pub expression: String,
}

fn refuse(code: &'static str, expression: &str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
        expression: expression.to_owned(),
    }
}

fn extension<'a>(element: &'a Value, url: &str) -> Option<&'a Value> {
    element["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == url)
}

fn seconds(channel: &Value, url: &str, name: &str) -> Result<Option<u64>, Refusal> {
    let Some(ext) = extension(channel, url) else {
        return Ok(None);
    };
    let v = ext
        .get("valueUnsignedInt")
        .or_else(|| ext.get("valuePositiveInt"))
        .or_else(|| ext.get("valueInteger"));
    match v.and_then(Value::as_u64) {
        Some(n) => Ok(Some(n)),
        None => Err(refuse(
            "invalid",
            &format!("Subscription.channel.extension('{url}')"),
            format!("{name} must be a valueUnsignedInt (a whole number of seconds or events)"),
        )),
    }
}

/// Reads `resource` (a JSON `Subscription`) against the topic catalogue `topics`: the spec,
/// and the topic it names.
///
/// # Errors
/// A [`Refusal`]: `required`/`invalid` for a malformed resource (no `criteria`, no `channel.type`,
/// an unknown payload content); `not-supported` for what the broker will not honour (an unknown
/// topic, a filter the topic does not declare, a modifier, another channel type, another MIME
/// type, a heartbeat out of range).
pub fn parse_subscription<'t>(
    resource: &Value,
    topics: &'t [TopicDef],
) -> Result<(SubscriptionSpec, &'t TopicDef), Refusal> {
    if resource["resourceType"] != "Subscription" {
        return Err(refuse(
            "invalid",
            "Subscription.resourceType",
            "the body must be a Subscription resource (resourceType \"Subscription\")",
        ));
    }
    for (field, path) in [("reason", "Subscription.reason")] {
        if !resource[field].is_string() {
            return Err(refuse(
                "required",
                path,
                format!("{path} is required (a string)"),
            ));
        }
    }
    if !resource["end"].is_null() {
        return Err(refuse(
            "not-supported",
            "Subscription.end",
            "Subscription.end is not supported: delete the Subscription (or set status off) when it should stop",
        ));
    }
    let Some(criteria) = resource["criteria"].as_str() else {
        return Err(refuse(
            "required",
            "Subscription.criteria",
            "Subscription.criteria is required: the canonical URL of a SubscriptionTopic (GET /fhir/SubscriptionTopic lists them)",
        ));
    };
    let Some(topic) = topics.iter().find(|t| t.canonical == criteria) else {
        return Err(refuse(
            "not-supported",
            "Subscription.criteria",
            format!(
                "topic {criteria} is not supported by this server; GET /fhir/SubscriptionTopic lists the supported topics"
            ),
        ));
    };
    let mut filters = Vec::new();
    if let Some(exts) = resource["_criteria"]["extension"].as_array() {
        for ext in exts {
            if ext["url"] != FILTER_CRITERIA_URL {
                continue;
            }
            let Some(text) = ext["valueString"].as_str() else {
                return Err(refuse(
                    "invalid",
                    "Subscription._criteria.extension",
                    "backport-filter-criteria must carry a valueString such as Encounter?patient=Patient/123",
                ));
            };
            filters.extend(parse_filter(text, topic)?);
        }
    }
    if filters.len() > MAX_FILTERS {
        return Err(refuse(
            "not-supported",
            "Subscription._criteria",
            format!("at most {MAX_FILTERS} filters per Subscription"),
        ));
    }
    let channel = &resource["channel"];
    let channel_type = match channel["type"].as_str() {
        Some("websocket") => ChannelType::Websocket,
        Some("rest-hook") => ChannelType::RestHook,
        Some(other) => {
            return Err(refuse(
                "not-supported",
                "Subscription.channel.type",
                format!("channel type {other:?} is not supported: use websocket or rest-hook"),
            ));
        }
        None => {
            return Err(refuse(
                "required",
                "Subscription.channel.type",
                "Subscription.channel.type is required (websocket or rest-hook)",
            ));
        }
    };
    let mime = channel["payload"]
        .as_str()
        .unwrap_or("application/fhir+json")
        .to_owned();
    let base_mime = mime.split(';').next().unwrap_or("").trim();
    if base_mime != "application/fhir+json" && base_mime != "application/json" {
        return Err(refuse(
            "not-supported",
            "Subscription.channel.payload",
            format!(
                "payload type {mime:?} is not supported: use application/fhir+json (or application/json)"
            ),
        ));
    }
    let content = match extension(&channel["_payload"], PAYLOAD_CONTENT_URL) {
        None => PayloadContent::IdOnly,
        Some(ext) => match ext["valueCode"].as_str().and_then(PayloadContent::parse) {
            Some(c) => c,
            None => {
                return Err(refuse(
                    "invalid",
                    "Subscription.channel._payload.extension",
                    "backport-payload-content must be a valueCode: empty, id-only or full-resource",
                ));
            }
        },
    };
    let endpoint = channel["endpoint"].as_str().map(str::to_owned);
    if channel_type == ChannelType::RestHook && endpoint.is_none() {
        return Err(refuse(
            "required",
            "Subscription.channel.endpoint",
            "a rest-hook channel needs channel.endpoint (the https URL notifications are POSTed to)",
        ));
    }
    let headers = match &channel["header"] {
        Value::Null => Vec::new(),
        Value::Array(items) => {
            let mut out = Vec::new();
            for h in items {
                match h.as_str() {
                    Some(s) if s.contains(':') => out.push(s.to_owned()),
                    _ => {
                        return Err(refuse(
                            "invalid",
                            "Subscription.channel.header",
                            "each channel.header must be a string `Name: value`",
                        ));
                    }
                }
            }
            out
        }
        _ => {
            return Err(refuse(
                "invalid",
                "Subscription.channel.header",
                "channel.header must be an array of strings `Name: value`",
            ));
        }
    };
    let heartbeat_s = seconds(channel, HEARTBEAT_URL, "backport-heartbeat-period")?;
    if let Some(h) = heartbeat_s
        && !(MIN_HEARTBEAT_S..=MAX_HEARTBEAT_S).contains(&h)
    {
        return Err(refuse(
            "not-supported",
            "Subscription.channel.extension('backport-heartbeat-period')",
            format!(
                "heartbeat period {h} s is not supported: {MIN_HEARTBEAT_S} to {MAX_HEARTBEAT_S} s"
            ),
        ));
    }
    let timeout_s = seconds(channel, TIMEOUT_URL, "backport-timeout")?;
    if timeout_s == Some(0) {
        return Err(refuse(
            "not-supported",
            "Subscription.channel.extension('backport-timeout')",
            "a timeout of 0 s is not supported",
        ));
    }
    let max_count = seconds(channel, MAX_COUNT_URL, "backport-max-count")?;
    if max_count == Some(0) {
        return Err(refuse(
            "not-supported",
            "Subscription.channel.extension('backport-max-count')",
            "backport-max-count must be at least 1",
        ));
    }
    Ok((
        SubscriptionSpec {
            criteria: criteria.to_owned(),
            filters,
            channel: channel_type,
            endpoint,
            mime,
            content,
            headers,
            heartbeat_s,
            timeout_s,
            max_count,
        },
        topic,
    ))
}

/// Reads one `backport-filter-criteria` value, `Type?name=value(&name=value)*`.
fn parse_filter(text: &str, topic: &TopicDef) -> Result<Vec<FilterCriterion>, Refusal> {
    let expression = "Subscription._criteria.extension('backport-filter-criteria')";
    let Some((ty, query)) = text.split_once('?') else {
        return Err(refuse(
            "invalid",
            expression,
            format!(
                "filter {text:?} must read {}?name=value (FHIR search syntax)",
                topic.resource_type
            ),
        ));
    };
    if ty != topic.resource_type {
        return Err(refuse(
            "not-supported",
            expression,
            format!(
                "filter {text:?} is on {ty}, but topic {} is about {}",
                topic.canonical, topic.resource_type
            ),
        ));
    }
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(refuse(
                "invalid",
                expression,
                format!("filter part {pair:?} must read name=value"),
            ));
        };
        let allowed = || {
            topic
                .filters
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if name.contains(':') {
            return Err(refuse(
                "not-supported",
                expression,
                format!(
                    "filter modifier in {name:?} is not supported; topic {} allows plain {}",
                    topic.canonical,
                    allowed()
                ),
            ));
        }
        if topic.filter(name).is_none() {
            return Err(refuse(
                "not-supported",
                expression,
                format!(
                    "filter {name:?} is not supported by topic {}; it allows: {}",
                    topic.canonical,
                    allowed()
                ),
            ));
        }
        if value.is_empty() || value.contains(',') {
            return Err(refuse(
                "not-supported",
                expression,
                format!("filter {name}: one value is supported, got {value:?}"),
            ));
        }
        out.push(FilterCriterion {
            name: name.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::topics::builtin_topics;
    use super::*;
    use serde_json::json;

    fn sub(extra: Value) -> Value {
        let mut v = json!({
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "test",
            "criteria": "http://argonautproject.org/encounters-ig/SubscriptionTopic/encounter-start",
            "_criteria": {"extension": [{"url": FILTER_CRITERIA_URL, "valueString": "Encounter?patient=Patient/123"}]},
            "channel": {"type": "websocket", "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": "id-only"}]},
                "extension": [{"url": HEARTBEAT_URL, "valueUnsignedInt": 20}]}
        });
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    }

    #[test]
    fn a_backport_subscription_reads_into_its_spec() {
        let topics = builtin_topics();
        let (s, t) = parse_subscription(&sub(json!({})), &topics).unwrap();
        assert_eq!(t.broker_topic, "fhir.encounter.started");
        assert_eq!(s.filters[0].value, "Patient/123");
        assert_eq!(s.content, PayloadContent::IdOnly);
        assert_eq!(s.heartbeat_s, Some(20));
    }

    #[test]
    fn refusals_name_the_element_and_the_code() {
        let topics = builtin_topics();
        let bad_filter = sub(
            json!({"_criteria": {"extension": [{"url": FILTER_CRITERIA_URL, "valueString": "Encounter?location=Location/1"}]}}),
        );
        let r = parse_subscription(&bad_filter, &topics).unwrap_err();
        assert_eq!(r.code, "not-supported");
        assert!(r.message.contains("\"location\""), "{}", r.message);
        let modifier = sub(
            json!({"_criteria": {"extension": [{"url": FILTER_CRITERIA_URL, "valueString": "Encounter?patient:in=Group/1"}]}}),
        );
        assert_eq!(
            parse_subscription(&modifier, &topics).unwrap_err().code,
            "not-supported"
        );
        let topic = sub(json!({"criteria": "http://example.org/nope"}));
        assert_eq!(
            parse_subscription(&topic, &topics).unwrap_err().code,
            "not-supported"
        );
        let email = sub(json!({"channel": {"type": "email"}}));
        assert_eq!(
            parse_subscription(&email, &topics).unwrap_err().expression,
            "Subscription.channel.type"
        );
        let no_reason = {
            let mut v = sub(json!({}));
            v.as_object_mut().unwrap().remove("reason");
            v
        };
        assert_eq!(
            parse_subscription(&no_reason, &topics).unwrap_err().code,
            "required"
        );
    }
}
