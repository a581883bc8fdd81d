//! Queries of the access audit (`GET /admin/v1/audit/access`): "which applications received
//! seq 123456?", "what did client X receive yesterday?", and the FHIR `AuditEvent` form (IHE
//! Basic Audit Log Patterns flavour, R4B).

use std::collections::HashMap;

use scopecast_protocol::admin::SessionView;
use scopecast_protocol::audit::{AccessRecord, SubscriptionRecord};
use scopecast_protocol::{Pattern, Timestamp, Topic};
use serde_json::{Value, json};

use crate::registry::{AccessFilter, RegistryError};
use crate::state::Broker;

/// Records a query answers at most.
pub(crate) const MAX_LIMIT: usize = 10_000;

/// Queries and verifications of the audit that may run at once on a node (each can read many
/// rows): more wait for none, they are refused with 503.
static HEAVY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A permit to run an audit query or a verification, or `None` when two already run.
pub(crate) fn permit() -> Option<tokio::sync::SemaphorePermit<'static>> {
    HEAVY.try_acquire().ok()
}

/// What a query asks; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccessQuery {
    /// Only this client ID.
    pub(crate) client_id: Option<String>,
    /// Only records of events on this topic (subscriptions whose pattern matches it, attempts
    /// of events on it).
    pub(crate) topic: Option<Topic>,
    /// Only records of this event: subscriptions that received it, attempts that carried it.
    pub(crate) seq: Option<u64>,
    /// Only records covering time at or after this.
    pub(crate) from: Option<Timestamp>,
    /// Only records that began at or before this.
    pub(crate) to: Option<Timestamp>,
    /// Only this kind (`subscription`, `refusal`, `webhook_attempt`).
    pub(crate) kind: Option<String>,
    /// At most this many (default 1,000, at most [`MAX_LIMIT`]).
    pub(crate) limit: usize,
    /// The newest records first (the console's list) instead of the oldest.
    pub(crate) newest_first: bool,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    /// The store failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The event log could not be read (to find the topic of `seq`).
    #[error("cannot read the event log: {0}")]
    Log(String),
}

/// The newest snapshot of each matching record, oldest first, and whether more matched than
/// `limit`.
///
/// With `seq`: the event's topic is read from the log; a subscription received it when its
/// pattern matches that topic and `from_seq <= seq <= last_seq` (the session writes every
/// matching event in that range, in order); a webhook attempt when it carried that `seq` and
/// was `delivered`. An event no longer in the log is answered from the attempts alone, unless
/// `topic` names its topic. A connection is named once for `seq` (by its earliest subscription
/// that covers it: the event was written to it once).
///
/// # Errors
/// [`QueryError`].
pub(crate) async fn access(
    broker: &Broker,
    q: &AccessQuery,
) -> Result<(Vec<AccessRecord>, bool), QueryError> {
    let limit = q.limit.clamp(1, MAX_LIMIT);
    let mut topic = q.topic.clone();
    // Whether subscriptions can be judged for `seq`: only knowing the event's topic (from the
    // log, or given); else only the attempts that carried it answer.
    let mut judge_subscriptions = true;
    if let Some(seq) = q.seq {
        let found = broker
            .log
            .read_from(seq, 1)
            .await
            .map_err(|e| QueryError::Log(e.to_string()))?;
        match found.first().filter(|e| e.seq == seq) {
            Some(e) => {
                if topic.as_ref().is_some_and(|t| *t != e.topic) {
                    return Ok((Vec::new(), false));
                }
                topic = Some(e.topic.clone());
            }
            // Gone from the log (retention) and no topic given: a subscription's range alone
            // does not say whether the event matched it.
            None if topic.is_none() => judge_subscriptions = false,
            None => {}
        }
    }
    // The store filters what it can; the pattern match is done here, so it reads more.
    let fetch = if topic.is_some() {
        MAX_LIMIT * 5
    } else {
        limit + 1
    };
    let rows = broker
        .registry
        .access_audit_latest(&AccessFilter {
            kind: q.kind.clone(),
            client_id: q.client_id.clone(),
            from_ms: q.from.map(Timestamp::unix_ms),
            to_ms: q.to.map(Timestamp::unix_ms),
            seq: q.seq,
            limit: fetch,
            newest_first: q.newest_first,
            ..AccessFilter::default()
        })
        .await?;
    let store_truncated = rows.len() >= fetch;
    let live = if rows.iter().any(|r| r.live) {
        live_sessions(broker).await
    } else {
        HashMap::new()
    };
    let mut out = Vec::new();
    for row in rows {
        let Ok(mut record) = serde_json::from_str::<AccessRecord>(&row.body) else {
            continue;
        };
        if let AccessRecord::Subscription(s) = &mut record {
            bring_up_to_date(s, &live, broker.cluster.is_some());
        }
        let keep = match &record {
            AccessRecord::Subscription(s) => {
                topic
                    .as_ref()
                    .is_none_or(|t| Pattern::new(&s.pattern).is_ok_and(|p| p.matches(t)))
                    && q.seq.is_none_or(|n| {
                        judge_subscriptions
                            && s.count > 0
                            && s.from_seq <= n
                            && s.last_seq.is_some_and(|l| n <= l)
                    })
            }
            AccessRecord::Refusal(_) => topic.is_none() && q.seq.is_none(),
            AccessRecord::WebhookAttempt(w) => {
                topic.as_ref().is_none_or(|t| w.topic == t.as_str())
                    && (q.seq.is_none() || w.outcome == "delivered")
            }
        };
        if keep {
            out.push(record);
        }
    }
    if q.seq.is_some() {
        // An event is written once to a connection, whichever of its subscriptions matched:
        // the connection is named once, by its earliest subscription that covers the event.
        // A connection: its node, session number (which starts again at 1 when a node
        // starts), source address and client ID.
        let connection = |s: &SubscriptionRecord| {
            (
                s.node.clone(),
                s.session.clone(),
                s.source.clone(),
                s.client_id.clone(),
            )
        };
        let mut first = HashMap::new();
        for r in &out {
            if let AccessRecord::Subscription(s) = r {
                let at = first.entry(connection(s)).or_insert(s.granted_at);
                *at = (*at).min(s.granted_at);
            }
        }
        let mut named = std::collections::HashSet::new();
        out.retain(|r| match r {
            AccessRecord::Subscription(s) => {
                let key = connection(s);
                first.get(&key) == Some(&s.granted_at) && named.insert(key)
            }
            _ => true,
        });
    }
    let truncated = store_truncated || out.len() > limit;
    out.truncate(limit);
    Ok((out, truncated))
}

/// The live sessions of every node, by their admin id (`<node>:<hex>` in a cluster, `<hex>`
/// on one node).
async fn live_sessions(broker: &Broker) -> HashMap<String, SessionView> {
    let mut all = crate::http::sessions::local(broker, None);
    if broker.cluster.is_some() {
        all.extend(crate::cluster::remote_sessions(broker, None).await);
    }
    all.into_iter().map(|s| (s.session.clone(), s)).collect()
}

/// A live subscription's newest snapshot, brought up to now from its session's counters (the
/// snapshot is as old as its last checkpoint): the count since the grant and the last `seq`
/// written. Left as stored while the session replays (the snapshot's coverage is then the
/// replay's), or when the session is gone (the record ends at the next start of its node).
fn bring_up_to_date(
    s: &mut SubscriptionRecord,
    live: &HashMap<String, SessionView>,
    cluster: bool,
) {
    if s.ended_at.is_some() {
        return;
    }
    let key = if cluster {
        format!("{}:{}", s.node, s.session)
    } else {
        s.session.clone()
    };
    let Some(v) = live.get(&key) else { return };
    if v.replaying || v.client_id != s.client_id || !v.subscriptions.contains(&s.pattern) {
        return;
    }
    // The connection's counters are this record's only while it is the connection's one
    // subscription; a record that counts itself (`u64::MAX`) is as of its last snapshot.
    if s.connection_delivered_at_grant == u64::MAX || v.subscriptions.len() > 1 {
        return;
    }
    let count = v
        .events_delivered
        .saturating_sub(s.connection_delivered_at_grant);
    if count < s.count {
        return;
    }
    s.count = count;
    if count > 0 && v.last_seq_written >= s.from_seq {
        s.last_seq = Some(s.last_seq.unwrap_or(0).max(v.last_seq_written));
    }
    s.checkpoint_at = Timestamp::now();
}

/// `records` as NDJSON, one per line; a last line `{"truncated":true}` when the limit cut it.
pub(crate) fn ndjson(records: &[AccessRecord], truncated: bool) -> String {
    let mut body = String::new();
    for r in records {
        if let Ok(line) = serde_json::to_string(r) {
            body.push_str(&line);
            body.push('\n');
        }
    }
    if truncated {
        body.push_str("{\"truncated\":true}\n");
    }
    body
}

/// `records` as a FHIR R4B `Bundle` of type `collection` of `AuditEvent`s ([`audit_event`]);
/// when the limit cut the answer (`truncated`), the Bundle carries the `SUBSETTED` tag
/// (`http://terminology.hl7.org/CodeSystem/v3-ObservationValue`), FHIR's mark for a resource
/// that is not whole.
pub(crate) fn fhir_bundle(records: &[AccessRecord], base: &str, truncated: bool) -> Value {
    let entries: Vec<Value> = records
        .iter()
        .map(|r| json!({ "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": audit_event(r, base) }))
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": Timestamp::now().to_string(),
    });
    if truncated {
        bundle["meta"] = json!({"tag": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "SUBSETTED",
            "display": "subsetted: more records matched than the limit",
        }]});
    }
    if !entries.is_empty() {
        bundle["entry"] = json!(entries);
    }
    bundle
}

/// DICOM (DCM) and audit code systems the `AuditEvent`s use.
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const BALP: &str = "https://profiles.ihe.net/ITI/BALP";

/// A record as an R4B `AuditEvent` (IHE BALP flavour): a subscription's deliveries and a
/// webhook attempt as DICOM "Transmit"/"Export" (110106) of events to the application (the
/// recipient agent, identified by its client ID), a refusal as a "Security Alert" (110113)
/// with outcome 4 (minor failure). `base` is the broker's public URL (the observer's
/// identifier).
pub(crate) fn audit_event(record: &AccessRecord, base: &str) -> Value {
    let observer = json!({ "display": format!("Scopecast broker {base}"), "identifier": { "system": "urn:ietf:rfc:3986", "value": base } });
    match record {
        AccessRecord::Subscription(s) => subscription_event(s, observer),
        AccessRecord::Refusal(r) => {
            let mut entity = vec![json!({
                "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
                "what": { "display": "access refusal" },
                "detail": [
                    { "type": "reason", "valueString": r.reason },
                    { "type": "count", "valueString": r.count.to_string() },
                    { "type": "environment", "valueString": r.environment },
                    { "type": "client_id_verified", "valueString": (!r.claimed).to_string() },
                ],
            })];
            if let Some(scope) = &r.missing_scope
                && let Some(d) = entity[0]["detail"].as_array_mut()
            {
                d.push(json!({ "type": "missing_scope", "valueString": scope }));
            }
            json!({
                "resourceType": "AuditEvent",
                "id": fhir_id(&r.id),
                "meta": { "profile": [format!("{BALP}/StructureDefinition/IHE.BasicAudit.SecurityAlert")] },
                "type": { "system": DCM, "code": "110113", "display": "Security Alert" },
                "subtype": [{ "system": "urn:scopecast:refusal", "code": r.reason }],
                "action": "E",
                "period": { "start": r.minute.to_string(), "end": end_of_minute(r.minute) },
                "recorded": end_of_minute(r.minute),
                "outcome": "4",
                "outcomeDesc": format!("{} refusal(s): {}", r.count, r.reason),
                "agent": [client_agent(&r.client_id, None, true)],
                "source": { "observer": observer, "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server" }] },
                "entity": entity,
            })
        }
        AccessRecord::WebhookAttempt(w) => {
            let ok = w.outcome == "delivered";
            let mut detail = vec![
                json!({ "type": "endpoint", "valueString": w.endpoint_id }),
                json!({ "type": "topic", "valueString": w.topic }),
                json!({ "type": "seq", "valueString": w.seq.to_string() }),
                json!({ "type": "attempt", "valueString": w.attempt.to_string() }),
                json!({ "type": "environment", "valueString": w.environment }),
            ];
            if let Some(s) = w.status {
                detail.push(json!({ "type": "http_status", "valueString": s.to_string() }));
            }
            json!({
                "resourceType": "AuditEvent",
                "id": fhir_id(&w.id),
                "type": { "system": DCM, "code": "110106", "display": "Export" },
                "subtype": [{ "system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation" }],
                "action": "E",
                "recorded": w.at.to_string(),
                "outcome": if ok { "0" } else { "4" },
                "outcomeDesc": w.outcome,
                "agent": [client_agent(&w.client_id, None, false)],
                "source": { "observer": observer, "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server" }] },
                "entity": [{
                    "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
                    "what": { "identifier": { "system": "urn:scopecast:event", "value": w.event_id } },
                    "detail": detail,
                }],
            })
        }
    }
}

fn subscription_event(s: &SubscriptionRecord, observer: Value) -> Value {
    let mut detail = vec![
        json!({ "type": "pattern", "valueString": s.pattern }),
        json!({ "type": "from_seq", "valueString": s.from_seq.to_string() }),
        json!({ "type": "count", "valueString": s.count.to_string() }),
        json!({ "type": "session", "valueString": s.session }),
        json!({ "type": "node", "valueString": s.node }),
        json!({ "type": "environment", "valueString": s.environment }),
    ];
    if let Some(f) = s.first_seq {
        detail.push(json!({ "type": "first_seq", "valueString": f.to_string() }));
    }
    if let Some(l) = s.last_seq {
        detail.push(json!({ "type": "last_seq", "valueString": l.to_string() }));
    }
    if let Some(r) = &s.end_reason {
        detail.push(json!({ "type": "end_reason", "valueString": r }));
    }
    if let Some(i) = s.token_iat {
        detail.push(json!({ "type": "token_iat", "valueString": i.to_string() }));
    }
    let mut period = json!({ "start": s.granted_at.to_string() });
    if let Some(e) = s.ended_at {
        period["end"] = json!(e.to_string());
    }
    json!({
        "resourceType": "AuditEvent",
        "id": fhir_id(&s.id),
        "type": { "system": DCM, "code": "110106", "display": "Export" },
        "subtype": [{ "system": "urn:scopecast:audit", "code": "subscription", "display": "Events delivered over a subscription" }],
        "action": "E",
        "period": period,
        "recorded": s.checkpoint_at.to_string(),
        "outcome": "0",
        "agent": [client_agent(&s.client_id, Some(&s.source), false)],
        "source": { "observer": observer, "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server" }] },
        "entity": [{
            "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
            "what": { "identifier": { "system": "urn:scopecast:topic-pattern", "value": s.pattern } },
            "detail": detail,
        }, {
            "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "13", "display": "Security Resource" },
            "what": { "identifier": { "system": "urn:ietf:params:oauth:jwt-id", "value": s.token_jti.clone().unwrap_or_else(|| "none".into()) } },
        }],
    })
}

fn client_agent(client_id: &str, source: Option<&str>, requestor: bool) -> Value {
    let mut a = json!({
        "type": { "coding": [if requestor {
            json!({ "system": PARTICIPATION, "code": "AUT", "display": "author (originator)" })
        } else {
            json!({ "system": PARTICIPATION, "code": "IRCP", "display": "information recipient" })
        }] },
        "who": { "identifier": { "system": "urn:scopecast:client-id", "value": client_id } },
        "requestor": requestor,
    });
    if let Some(src) = source {
        let host = src.rsplit_once(':').map_or(src, |(h, _)| h);
        a["network"] = json!({ "address": host.trim_matches(['[', ']']), "type": "2" });
    }
    a
}

/// A FHIR id (`[A-Za-z0-9\-\.]{1,64}`) of a record id (`sub_…` has an underscore).
fn fhir_id(id: &str) -> String {
    id.replace('_', "-").chars().take(64).collect()
}

fn end_of_minute(m: Timestamp) -> String {
    Timestamp::from_unix_ms(m.unix_ms() + 59_999).map_or_else(|_| m.to_string(), |t| t.to_string())
}
