//! The FHIR R4B endpoint at `/fhir` (FHIR.md): the CapabilityStatement, the
//! `SubscriptionTopic` catalogue, `Subscription` create / read / update / delete / search with
//! the application's own access token, and the operations `$get-ws-binding-token`, `$status`
//! and `$events`. Every answer is `application/fhir+json`; every refusal an
//! `OperationOutcome` with the status, issue code and message FHIR.md lists.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use scopecast_protocol::Timestamp;
use scopecast_protocol::fhir::notify::{
    FHIR_JSON, NotificationEvent, StatusInfo, binding_parameters, notification_bundle,
    operation_outcome, searchset,
};
use scopecast_protocol::fhir::subscription::{
    ChannelType, PayloadContent, SubscriptionSpec, parse_subscription,
};
use scopecast_protocol::fhir::topics::TopicDef;
use serde_json::{Value, json};

use super::{BINDING_TOKEN_S, Sub, denied_words, now_ms, now_s, pattern_of};
use crate::access::{Action, Denied};
use crate::auth::token::Principal;
use crate::registry::{RegistryError, StoredFhirSubscription};
use crate::state::Broker;

/// Largest Subscription or Parameters body, bytes.
const MAX_BODY: usize = 64 * 1024;
/// Most events one `$events` answer carries.
pub(crate) const MAX_EVENTS: u64 = 1000;

/// The `/fhir` router.
pub(crate) fn router() -> Router<Broker> {
    Router::new()
        .route("/metadata", get(metadata))
        .route("/SubscriptionTopic", get(list_topics))
        .route("/SubscriptionTopic/{id}", get(read_topic))
        .route("/Subscription", get(search).post(create))
        .route(
            "/Subscription/$get-ws-binding-token",
            get(binding_token_type).post(binding_token_type_post),
        )
        .route("/Subscription/{id}", get(read).put(update).delete(delete))
        .route(
            "/Subscription/{id}/$get-ws-binding-token",
            get(binding_token).post(binding_token_post),
        )
        .route("/Subscription/{id}/$status", get(status))
        .route("/Subscription/{id}/$events", get(events).post(events_post))
        .route("/ws", get(super::ws::upgrade))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// A FHIR answer: a status and a resource.
pub(crate) struct Fhir {
    status: StatusCode,
    body: Value,
    /// The body as text when it was written as text (a notification Bundle, whose resources
    /// are the published bytes): sent instead of `body`.
    text: Option<String>,
    headers: Vec<(header::HeaderName, String)>,
}

impl Fhir {
    fn ok(body: Value) -> Fhir {
        Fhir {
            status: StatusCode::OK,
            body,
            text: None,
            headers: Vec::new(),
        }
    }

    /// A refusal: `status`, an `OperationOutcome` with `code` and `message`.
    pub(crate) fn refuse(status: StatusCode, code: &str, message: &str) -> Fhir {
        Fhir {
            status,
            body: operation_outcome(code, message, None),
            text: None,
            headers: Vec::new(),
        }
    }

    fn at(mut self, expression: &str) -> Fhir {
        self.body["issue"][0]["expression"] = json!([expression]);
        self
    }

    fn header(mut self, name: header::HeaderName, value: String) -> Fhir {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for Fhir {
    fn into_response(self) -> Response {
        let body = self.text.unwrap_or_else(|| self.body.to_string());
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        resp
    }
}

type Answer = Result<Fhir, Fhir>;

fn not_found_sub(id: &str) -> Fhir {
    Fhir::refuse(
        StatusCode::NOT_FOUND,
        "not-found",
        &format!("Subscription/{id} is not known (or not yours)"),
    )
}

async fn not_found() -> Fhir {
    Fhir::refuse(
        StatusCode::NOT_FOUND,
        "not-supported",
        "this server supports only Subscription, SubscriptionTopic and metadata under /fhir (GET /fhir/metadata)",
    )
}

fn storage(e: &RegistryError) -> Fhir {
    tracing::warn!(error = %e, "FHIR: the registry could not be written or read");
    Fhir::refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the registry is unavailable; retry",
    )
}

/// The calling application, by its access token, refused as an `OperationOutcome`.
async fn caller(state: &Broker, headers: &HeaderMap, peer: SocketAddr) -> Result<Principal, Fhir> {
    let p = crate::http::auth::client(state, headers, peer)
        .await
        .map_err(|e| {
            let (status, message, challenge) = e.parts();
            let code = if status == StatusCode::UNAUTHORIZED {
                "login"
            } else {
                "forbidden"
            };
            let mut f = Fhir::refuse(status, code, message);
            if let Some(c) = challenge {
                f = f.header(header::WWW_AUTHENTICATE, c.to_owned());
            } else if status == StatusCode::UNAUTHORIZED {
                f = f.header(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"scopecast\"".to_owned(),
                );
            }
            f
        })?;
    if !state.access.active(&p) {
        return Err(inactive());
    }
    Ok(p)
}

fn inactive() -> Fhir {
    Fhir::refuse(
        StatusCode::FORBIDDEN,
        "forbidden",
        "the client ID is not active in this environment",
    )
}

/// A refusal of the access check: 403 `forbidden`, with `WWW-Authenticate: Bearer
/// error="insufficient_scope"` naming the scope (RFC 6750 section 3.1).
fn denied(d: &Denied) -> Fhir {
    match d {
        Denied::Inactive => inactive(),
        Denied::Scope { required_scope, .. } => Fhir::refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("insufficient_scope: {}", denied_words(d)),
        )
        .header(
            header::WWW_AUTHENTICATE,
            format!(
                "Bearer realm=\"scopecast\", error=\"insufficient_scope\", scope=\"{required_scope}\""
            ),
        ),
    }
}

fn json_body(body: &Bytes) -> Result<Value, Fhir> {
    serde_json::from_slice(body).map_err(|e| {
        Fhir::refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("the body is not JSON: {e}"),
        )
    })
}

/// `GET /fhir/metadata`: the CapabilityStatement.
async fn metadata(State(state): State<Broker>) -> Fhir {
    let f = &state.fhir;
    let topics: Vec<Value> = f
        .topics
        .iter()
        .map(|t| json!({"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical", "valueCanonical": t.canonical}))
        .collect();
    let op = |name: &str, def: &str| json!({"name": name, "definition": format!("http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/{def}")});
    Fhir::ok(json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": Timestamp::now().to_string(),
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server"],
        "software": {"name": "Scopecast", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Scopecast event broker: FHIR topic-based Subscriptions (Subscriptions R5 Backport IG STU 1.1 on R4B)", "url": f.base},
        "fhirVersion": "4.3.0",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "description": format!("OAuth2 client credentials at {}/oauth2/token; a Subscription needs subscribe:<broker topic> in the token and the application's grant, and full-resource content a SMART system read scope", state.public_url),
            },
            "resource": [
                {
                    "type": "Subscription",
                    "extension": topics,
                    "supportedProfile": [scopecast_protocol::fhir::subscription::SUBSCRIPTION_PROFILE],
                    "documentation": "Channels: websocket (bind with $get-ws-binding-token) and rest-hook. Payloads: empty, id-only, full-resource. Filters: those each SubscriptionTopic declares in canFilterBy, plain equality.",
                    "interaction": [
                        {"code": "read"}, {"code": "update"}, {"code": "delete"},
                        {"code": "create"}, {"code": "search-type"}
                    ],
                    "operation": [
                        op("status", "backport-subscription-status"),
                        op("events", "backport-subscription-events"),
                        op("get-ws-binding-token", "backport-subscription-get-ws-binding-token"),
                    ],
                },
                {
                    "type": "SubscriptionTopic",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                },
            ],
        }],
    }))
}

/// `GET /fhir/SubscriptionTopic`.
async fn list_topics(State(state): State<Broker>) -> Fhir {
    let f = &state.fhir;
    let items = f
        .topics
        .iter()
        .map(|t| {
            (
                format!("{}/SubscriptionTopic/{}", f.base, t.id),
                t.resource(),
            )
        })
        .collect();
    Fhir::ok(searchset(&format!("{}/SubscriptionTopic", f.base), items))
}

/// `GET /fhir/SubscriptionTopic/{id}`.
async fn read_topic(State(state): State<Broker>, Path(id): Path<String>) -> Answer {
    state
        .fhir
        .topics
        .iter()
        .find(|t| t.id == id)
        .map(|t| Fhir::ok(t.resource()))
        .ok_or_else(|| {
            Fhir::refuse(
                StatusCode::NOT_FOUND,
                "not-found",
                &format!("SubscriptionTopic/{id} is not in this server's catalogue"),
            )
        })
}

/// The checks of creation and update: the spec reads, the client may receive its topic,
/// `full-resource` has its resource scope and an https broker.
fn admit(
    state: &Broker,
    principal: &Principal,
    resource: &Value,
) -> Result<(SubscriptionSpec, TopicDef), Fhir> {
    let (spec, topic) = parse_subscription(resource, &state.fhir.topics)
        .map_err(|r| Fhir::refuse(StatusCode::BAD_REQUEST, r.code, &r.message).at(&r.expression))?;
    let broker_topic = scopecast_protocol::Topic::new(&topic.broker_topic).map_err(|e| {
        Fhir::refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            &format!("topic {} maps to a bad broker topic: {e}", topic.canonical),
        )
    })?;
    state
        .access
        .check(principal, Action::Subscribe(&pattern_of(&broker_topic)))
        .map_err(|d| {
            state.access.refused_subscribe(principal, &d);
            denied(&d)
        })?;
    if spec.content == PayloadContent::FullResource {
        let read = format!("system/{}.rs", topic.resource_type);
        let scope = super::read_scope(&topic.resource_type).ok_or_else(|| {
            Fhir::refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                &format!("{read} does not read as a scope"),
            )
        })?;
        state
            .access
            .check(principal, Action::ReadResources(&scope))
            .map_err(|d| denied(&d))?;
        if !state.public_url.starts_with("https://") {
            return Err(Fhir::refuse(
                StatusCode::BAD_REQUEST,
                "not-supported",
                "full-resource content is only sent by a broker whose public URL is https (oauth.public_url; TLS may end at a load balancer): use id-only, or serve over https",
            )
            .at("Subscription.channel._payload"));
        }
    }
    if spec.channel == ChannelType::RestHook {
        if spec.heartbeat_s.is_some() {
            return Err(Fhir::refuse(
                StatusCode::BAD_REQUEST,
                "not-supported",
                "heartbeats are sent on websocket channels only; a rest-hook Subscription's health shows in $status",
            )
            .at("Subscription.channel.extension('backport-heartbeat-period')"));
        }
        let broker_timeout_s = state.config.webhooks.timeout_ms.div_ceil(1000);
        if let Some(t) = spec.timeout_s
            && t < broker_timeout_s
        {
            return Err(Fhir::refuse(
                StatusCode::BAD_REQUEST,
                "not-supported",
                &format!(
                    "backport-timeout {t} s is shorter than this broker's per-attempt time-out ({broker_timeout_s} s, webhooks.timeout_ms): ask for at least {broker_timeout_s} s"
                ),
            )
            .at("Subscription.channel.extension('backport-timeout')"));
        }
    }
    Ok((spec, topic.clone()))
}

/// `POST /fhir/Subscription`.
async fn create(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let principal = caller(&state, &headers, peer).await?;
    let mut resource = json_body(&body)?;
    let (spec, topic) = admit(&state, &principal, &resource)?;
    let f = &state.fhir;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let bounds = state.log.fresh_bounds().await;
    if let Some(o) = resource.as_object_mut() {
        o.remove("id");
        o.remove("meta");
        o.remove("error");
    }
    redact_headers(&mut resource);
    let existing = f.subs_of(&principal.client_id).len();
    if existing >= state.config.fhir.max_subscriptions_per_client {
        return Err(Fhir::refuse(
            StatusCode::BAD_REQUEST,
            "too-costly",
            &format!(
                "the client ID has {existing} Subscriptions, the most fhir.max_subscriptions_per_client allows: delete one"
            ),
        ));
    }
    let rest_hook = spec.channel == ChannelType::RestHook;
    let mut secret = None;
    if rest_hook {
        let endpoint = spec.endpoint.as_deref().unwrap_or("");
        let (_, s) = state
            .webhooks
            .create_for_fhir(
                &principal.client_id,
                endpoint,
                &topic.broker_topic,
                &header_map(&spec.headers),
                &id,
                bounds.last,
                state.log.epoch(),
            )
            .await
            .map_err(|e| endpoint_refused(&e))?;
        secret = Some(s);
    }
    let now = now_ms();
    let stored = StoredFhirSubscription {
        id: id.clone(),
        client_id: principal.client_id.clone(),
        resource: resource.to_string(),
        status: if rest_hook { "requested" } else { "active" }.to_owned(),
        error: None,
        epoch: state.log.epoch().to_owned(),
        start_seq: bounds.last,
        count: 0,
        count_seq: bounds.last,
        created_at_ms: now,
        updated_at_ms: now,
        version: 1,
    };
    let created = state
        .registry
        .create_fhir_subscription(
            &stored,
            &principal.client_id,
            json!({
                "subscription_id": id,
                "topic": spec.criteria,
                "broker_topic": topic.broker_topic,
                "channel": spec.channel.as_str(),
                "content": spec.content.as_str(),
            }),
        )
        .await;
    if let Err(e) = created {
        // Its endpoint goes too: nothing is left half made.
        if let Ok(Some(w)) = f.endpoint_of(&id).await {
            let _ = state.webhooks.delete(&w.id, &principal.client_id).await;
        }
        return Err(storage(&e));
    }
    f.refresh().await.map_err(|e| storage(&e))?;
    let mut body = f.resource_of(&stored);
    if let Some(secret) = secret {
        // The signing secret of its Standard Webhooks signatures: shown once, here.
        let ext = body["channel"]["extension"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut ext = ext;
        ext.push(json!({"url": SIGNING_SECRET_URL, "valueString": secret.reveal()}));
        body["channel"]["extension"] = Value::Array(ext);
        let f = f.clone();
        tokio::spawn(async move { f.handshake(&id).await });
    }
    let mut answer = Fhir::ok(body);
    answer.status = StatusCode::CREATED;
    Ok(answer
        .header(
            header::LOCATION,
            format!("{}/Subscription/{}/_history/1", f.base, stored.id),
        )
        .header(header::CACHE_CONTROL, "no-store".to_owned()))
}

/// The extension carrying a rest-hook Subscription's `whsec_` signing secret (in the creation
/// answer only).
pub(crate) const SIGNING_SECRET_URL: &str =
    "https://scopecast.dev/fhir/StructureDefinition/webhook-signing-secret";

/// The value every `channel.header` shows once stored: the values live sealed with the
/// rest-hook endpoint (they may be API keys), the resource keeps the names.
pub(crate) const REDACTED: &str = "[sealed]";

/// Replaces the value of each `channel.header` line with [`REDACTED`].
fn redact_headers(resource: &mut Value) {
    // (`get_mut`, not indexing: indexing would add `"header": null` where there is none.)
    if let Some(lines) = resource
        .get_mut("channel")
        .and_then(|c| c.get_mut("header"))
        .and_then(Value::as_array_mut)
    {
        for line in lines {
            if let Some((name, _)) = line.as_str().and_then(|l| l.split_once(':')) {
                *line = Value::String(format!("{}: {REDACTED}", name.trim()));
            }
        }
    }
}

/// The header names of `channel.header` lines, lower case.
fn header_names(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.trim().to_ascii_lowercase())
        .collect()
}

/// `channel.header` lines (`Name: value`) as a map.
fn header_map(lines: &[String]) -> std::collections::BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A refused rest-hook endpoint (its URL or a header), as an OperationOutcome.
fn endpoint_refused(e: &RegistryError) -> Fhir {
    match e {
        RegistryError::Invalid(i) => Fhir::refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("rest-hook channel: {i}"),
        )
        .at("Subscription.channel.endpoint"),
        RegistryError::Conflict(m) => Fhir::refuse(StatusCode::BAD_REQUEST, "too-costly", m),
        other => storage(other),
    }
}

/// The caller's Subscription `id` (404 when it is not theirs: no one learns that another's
/// exists).
fn owned(state: &Broker, principal: &Principal, id: &str) -> Result<Arc<Sub>, Fhir> {
    state
        .fhir
        .sub(id)
        .filter(|s| s.stored.client_id == principal.client_id)
        .ok_or_else(|| not_found_sub(id))
}

/// `GET /fhir/Subscription/{id}`.
async fn read(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let principal = caller(&state, &headers, peer).await?;
    let s = owned(&state, &principal, &id)?;
    Ok(Fhir::ok(shown(&state, &s).await))
}

/// The resource as the client sees it, with its effective status.
async fn shown(state: &Broker, s: &Sub) -> Value {
    let mut row = s.stored.clone();
    (row.status, row.error) = state.fhir.effective_status(s).await;
    state.fhir.resource_of(&row)
}

/// `GET /fhir/Subscription`: the caller's Subscriptions.
async fn search(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Answer {
    let principal = caller(&state, &headers, peer).await?;
    let f = &state.fhir;
    // The webhook endpoints are read once for every rest-hook Subscription's status.
    let endpoints = state.registry.webhooks().await.map_err(|e| storage(&e))?;
    let items = f
        .subs_of(&principal.client_id)
        .iter()
        .map(|s| {
            let mut row = s.stored.clone();
            (row.status, row.error) = super::effective_status_in(s, &endpoints);
            (
                format!("{}/Subscription/{}", f.base, s.stored.id),
                f.resource_of(&row),
            )
        })
        .collect();
    Ok(Fhir::ok(searchset(
        &format!("{}/Subscription", f.base),
        items,
    )))
}

/// `PUT /fhir/Subscription/{id}`: changes the channel, payload, heartbeat, status (`off` stops
/// it; `requested` or `active` starts it again after the checks of creation). The topic and
/// filters cannot change (the event numbers count them): create a new Subscription.
async fn update(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let principal = caller(&state, &headers, peer).await?;
    let current = owned(&state, &principal, &id)?;
    let mut resource = json_body(&body)?;
    if let Some(body_id) = resource["id"].as_str()
        && body_id != id
    {
        return Err(Fhir::refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("the body's id {body_id} is not the URL's {id}"),
        )
        .at("Subscription.id"));
    }
    let (spec, _) = admit(&state, &principal, &resource)?;
    if spec.channel != current.spec.channel
        || spec.endpoint != current.spec.endpoint
        || header_names(&spec.headers) != header_names(&current.spec.headers)
        || spec.mime != current.spec.mime
    {
        return Err(Fhir::refuse(
            StatusCode::BAD_REQUEST,
            "not-supported",
            "a Subscription's channel type, endpoint, headers and payload type cannot change: create a new Subscription",
        )
        .at("Subscription.channel"));
    }
    if spec.criteria != current.spec.criteria || spec.filters != current.spec.filters {
        return Err(Fhir::refuse(
            StatusCode::BAD_REQUEST,
            "not-supported",
            "a Subscription's topic and filters cannot change (its event numbers count them): create a new Subscription",
        )
        .at("Subscription.criteria"));
    }
    let status = match resource["status"].as_str() {
        Some("off") => "off",
        Some("requested" | "active") => "active",
        Some(other) => {
            return Err(Fhir::refuse(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("status {other:?} cannot be set: use requested (or active) to start it, off to stop it"),
            )
            .at("Subscription.status"));
        }
        None => {
            return Err(Fhir::refuse(
                StatusCode::BAD_REQUEST,
                "required",
                "Subscription.status is required",
            )
            .at("Subscription.status"));
        }
    };
    if let Some(o) = resource.as_object_mut() {
        o.remove("id");
        o.remove("meta");
        o.remove("error");
    }
    redact_headers(&mut resource);
    let rest_hook = spec.channel == ChannelType::RestHook;
    // A rest-hook Subscription started again goes through its handshake first.
    let status = if rest_hook && status == "active" {
        "requested"
    } else {
        status
    };
    let mut row = current.stored.clone();
    row.resource = resource.to_string();
    row.status = status.to_owned();
    row.error = (status == "off").then(|| "turned off by the client".to_owned());
    row.updated_at_ms = now_ms();
    let written = state
        .registry
        .update_fhir_subscription(
            &row,
            &principal.client_id,
            "fhir.subscription.update",
            json!({"subscription_id": id, "status": status}),
        )
        .await
        .map_err(|e| storage(&e))?;
    if !written {
        return Err(Fhir::refuse(
            StatusCode::CONFLICT,
            "conflict",
            "the Subscription changed meanwhile: read it again",
        ));
    }
    state.fhir.refresh().await.map_err(|e| storage(&e))?;
    if rest_hook {
        if status == "off" {
            state
                .fhir
                .pause_endpoint(&id, "the FHIR Subscription was turned off")
                .await;
        } else {
            // Nothing is delivered until the new handshake is answered.
            state
                .fhir
                .pause_endpoint(&id, "waiting for the FHIR Subscription's handshake")
                .await;
            let f = state.fhir.clone();
            let sid = id.clone();
            tokio::spawn(async move { f.handshake(&sid).await });
        }
    }
    let now = state.fhir.sub(&id).ok_or_else(|| not_found_sub(&id))?;
    Ok(Fhir::ok(state.fhir.resource_of(&now.stored)))
}

/// `DELETE /fhir/Subscription/{id}`: 204; its bound sockets are told.
async fn delete(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Fhir> {
    let principal = caller(&state, &headers, peer).await?;
    let s = owned(&state, &principal, &id)?;
    if s.spec.channel == ChannelType::RestHook
        && let Some(w) = state.fhir.endpoint_of(&id).await.map_err(|e| storage(&e))?
    {
        match state.webhooks.delete(&w.id, &principal.client_id).await {
            Ok(()) | Err(RegistryError::NotFound { .. }) => {}
            Err(e) => return Err(storage(&e)),
        }
    }
    match state
        .registry
        .delete_fhir_subscription(&s.stored, &principal.client_id)
        .await
    {
        Ok(()) | Err(RegistryError::NotFound { .. }) => {}
        Err(e) => return Err(storage(&e)),
    }
    state.fhir.refresh().await.map_err(|e| storage(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The ids named by `id` parameters of a `Parameters` body.
fn ids_of_parameters(v: &Value) -> Vec<String> {
    v["parameter"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["name"] == "id")
                .filter_map(|p| {
                    p.get("valueId")
                        .or_else(|| p.get("valueString"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Mints a binding token for `ids` (each the caller's, websocket, active, allowed).
fn mint(state: &Broker, principal: &Principal, ids: &[String]) -> Answer {
    let f = &state.fhir;
    for id in ids {
        let s = owned(state, principal, id)?;
        if s.spec.channel != ChannelType::Websocket {
            return Err(Fhir::refuse(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!(
                    "Subscription/{id} has a {} channel: only websocket Subscriptions are bound",
                    s.spec.channel.as_str()
                ),
            ));
        }
        state
            .access
            .check(principal, Action::Subscribe(&pattern_of(&s.broker_topic)))
            .map_err(|d| denied(&d))?;
        if s.spec.content == PayloadContent::FullResource {
            let scope = super::read_scope(&s.topic.resource_type).ok_or_else(|| {
                Fhir::refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    "no read scope",
                )
            })?;
            state
                .access
                .check(principal, Action::ReadResources(&scope))
                .map_err(|d| denied(&d))?;
        }
        if s.stored.status != "active" {
            return Err(Fhir::refuse(
                StatusCode::BAD_REQUEST,
                "processing",
                &format!(
                    "Subscription/{id} is {} ({}): update it with status requested to start it again",
                    s.stored.status,
                    s.stored.error.as_deref().unwrap_or("no reason given")
                ),
            ));
        }
    }
    let expires = (now_s() + BINDING_TOKEN_S).min(principal.expires_at.unix_seconds());
    let token = f
        .mint_binding_token(&principal.client_id, ids, expires)
        .map_err(|e| Fhir::refuse(StatusCode::INTERNAL_SERVER_ERROR, "exception", &e))?;
    let expiration = Timestamp::from_unix_seconds(expires).unwrap_or_else(|_| Timestamp::now());
    Ok(
        Fhir::ok(binding_parameters(&token, expiration, ids, &f.ws_url))
            .header(header::CACHE_CONTROL, "no-store".to_owned()),
    )
}

/// `GET /fhir/Subscription/{id}/$get-ws-binding-token`.
async fn binding_token(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let principal = caller(&state, &headers, peer).await?;
    mint(&state, &principal, &[id])
}

/// `POST /fhir/Subscription/{id}/$get-ws-binding-token` (its `id` parameters are ignored at
/// instance level).
async fn binding_token_post(
    state: State<Broker>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    id: Path<String>,
) -> Answer {
    binding_token(state, peer, headers, id).await
}

#[derive(serde::Deserialize)]
struct IdQuery {
    #[serde(default)]
    id: Option<String>,
}

/// The ids of a type-level call, or every active websocket Subscription of the caller.
fn type_level_ids(
    state: &Broker,
    principal: &Principal,
    ids: Vec<String>,
) -> Result<Vec<String>, Fhir> {
    if !ids.is_empty() {
        return Ok(ids);
    }
    let all: Vec<String> = state
        .fhir
        .subs_of(&principal.client_id)
        .iter()
        .filter(|s| s.spec.channel == ChannelType::Websocket && s.stored.status == "active")
        .map(|s| s.stored.id.clone())
        .collect();
    if all.is_empty() {
        return Err(Fhir::refuse(
            StatusCode::BAD_REQUEST,
            "not-found",
            "you have no active websocket Subscription to bind",
        ));
    }
    Ok(all)
}

/// `GET /fhir/Subscription/$get-ws-binding-token[?id=a,b]`.
async fn binding_token_type(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<IdQuery>,
) -> Answer {
    let principal = caller(&state, &headers, peer).await?;
    let ids =
        q.id.map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
    let ids = type_level_ids(&state, &principal, ids)?;
    mint(&state, &principal, &ids)
}

/// `POST /fhir/Subscription/$get-ws-binding-token` with a `Parameters` body (`id` 0..*).
async fn binding_token_type_post(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let principal = caller(&state, &headers, peer).await?;
    let ids = if body.is_empty() {
        Vec::new()
    } else {
        ids_of_parameters(&json_body(&body)?)
    };
    let ids = type_level_ids(&state, &principal, ids)?;
    mint(&state, &principal, &ids)
}

/// The status part of a Subscription's notification of `kind`.
pub(crate) fn status_info<'a>(
    base: &'a str,
    s: &'a Sub,
    kind: &'a str,
    count: u64,
    content: PayloadContent,
) -> StatusInfo<'a> {
    StatusInfo {
        base,
        subscription_id: &s.stored.id,
        topic: &s.spec.criteria,
        status: &s.stored.status,
        kind,
        events_since_start: count,
        content,
        error: s.stored.error.as_deref(),
    }
}

/// `GET /fhir/Subscription/{id}/$status`: a Bundle of type `history` with a `query-status`
/// SubscriptionStatus.
async fn status(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let principal = caller(&state, &headers, peer).await?;
    let s = owned(&state, &principal, &id)?;
    let f = &state.fhir;
    let count = f.count(&id).ok_or_else(counting)?;
    let (status, error) = f.effective_status(&s).await;
    let mut info = status_info(&f.base, &s, "query-status", count, s.spec.content);
    info.status = &status;
    info.error = error.as_deref();
    Ok(raw_bundle(notification_bundle(
        &info,
        &[],
        &uuid::Uuid::new_v4().to_string(),
        &uuid::Uuid::new_v4().to_string(),
        Timestamp::now(),
    )))
}

/// 503 while the numbering has not counted a Subscription yet.
fn counting() -> Fhir {
    Fhir::refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the Subscription's event numbers are being counted from the log; retry in a moment",
    )
    .header(header::RETRY_AFTER, "1".to_owned())
}

/// A notification Bundle as written (its resources byte for byte as published).
fn raw_bundle(text: String) -> Fhir {
    Fhir {
        status: StatusCode::OK,
        body: Value::Null,
        text: Some(text),
        headers: Vec::new(),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct EventsQuery {
    events_since_number: Option<String>,
    events_until_number: Option<String>,
    content: Option<String>,
}

/// `GET /fhir/Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=`.
async fn events(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let q = query
        .map(|Query(q)| q)
        .map_err(|e| Fhir::refuse(StatusCode::BAD_REQUEST, "invalid", &e.body_text()))?;
    events_of(&state, peer, &headers, &id, q).await
}

/// `POST /fhir/Subscription/{id}/$events` with a `Parameters` body.
async fn events_post(
    State(state): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let mut q = EventsQuery::default();
    if !body.is_empty() {
        let v = json_body(&body)?;
        for p in v["parameter"].as_array().into_iter().flatten() {
            let value = [
                "valueInteger64",
                "valueString",
                "valueCode",
                "valueInteger",
                "valueUnsignedInt",
            ]
            .iter()
            .find_map(|k| p.get(*k))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
            match p["name"].as_str() {
                Some("eventsSinceNumber") => q.events_since_number = value,
                Some("eventsUntilNumber") => q.events_until_number = value,
                Some("content") => q.content = value,
                _ => {}
            }
        }
    }
    events_of(&state, peer, &headers, &id, q).await
}

async fn events_of(
    state: &Broker,
    peer: SocketAddr,
    headers: &HeaderMap,
    id: &str,
    q: EventsQuery,
) -> Answer {
    let principal = caller(state, headers, peer).await?;
    let s = owned(state, &principal, id)?;
    state
        .access
        .check(&principal, Action::Subscribe(&pattern_of(&s.broker_topic)))
        .map_err(|d| denied(&d))?;
    let number = |v: Option<String>, name: &str| -> Result<Option<u64>, Fhir> {
        v.map(|t| {
            t.parse::<u64>().map_err(|_| {
                Fhir::refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    &format!("{name} must be a whole number, got {t:?}"),
                )
            })
        })
        .transpose()
    };
    let f = &state.fhir;
    let count = f.count(id).ok_or_else(counting)?;
    let since = number(q.events_since_number, "eventsSinceNumber")?
        .unwrap_or(1)
        .max(1);
    // Without an upper bound: the next MAX_EVENTS from `since` (the client asks again from
    // the last number it got).
    let until = number(q.events_until_number, "eventsUntilNumber")?
        .unwrap_or_else(|| count.min(since.saturating_add(MAX_EVENTS - 1)));
    if until >= since && until - since >= MAX_EVENTS {
        return Err(Fhir::refuse(
            StatusCode::BAD_REQUEST,
            "too-costly",
            &format!(
                "at most {MAX_EVENTS} events per $events call: narrow eventsSinceNumber..eventsUntilNumber"
            ),
        ));
    }
    let content = match q.content.as_deref() {
        None => s.spec.content,
        Some(c) => PayloadContent::parse(c).ok_or_else(|| {
            Fhir::refuse(
                StatusCode::BAD_REQUEST,
                "invalid",
                "content must be empty, id-only or full-resource",
            )
        })?,
    };
    if content == PayloadContent::FullResource {
        let mut probe = serde_json::from_str::<Value>(&s.stored.resource).unwrap_or(Value::Null);
        probe["channel"]["_payload"] = json!({"extension": [{"url": scopecast_protocol::fhir::subscription::PAYLOAD_CONTENT_URL, "valueCode": "full-resource"}]});
        admit(state, &principal, &probe)?;
    }
    let found = if until < since {
        Vec::new()
    } else {
        f.events(&s, since, until, MAX_EVENTS as usize)
            .await
            .map_err(|e| Fhir::refuse(StatusCode::GONE, "not-found", &e))?
    };
    let resources: Vec<Value> = found
        .iter()
        .map(|(_, e)| serde_json::from_str(e.data.get()).unwrap_or(Value::Null))
        .collect();
    let list: Vec<NotificationEvent<'_>> = found
        .iter()
        .zip(&resources)
        .map(|((n, e), r)| notification_event(*n, e, r, &s.topic))
        .collect();
    let info = status_info(&f.base, &s, "query-event", count, content);
    Ok(raw_bundle(notification_bundle(
        &info,
        &list,
        &uuid::Uuid::new_v4().to_string(),
        &uuid::Uuid::new_v4().to_string(),
        Timestamp::now(),
    )))
}

/// The notification entry of event `e`, numbered `number`, whose payload parsed is `resource`.
pub(crate) fn notification_event<'a>(
    number: u64,
    e: &'a crate::log::StoredEvent,
    resource: &'a Value,
    topic: &'a TopicDef,
) -> NotificationEvent<'a> {
    NotificationEvent {
        number,
        timestamp: e.time,
        resource: e.data.to_raw(),
        resource_type: resource["resourceType"]
            .as_str()
            .unwrap_or(topic.resource_type.as_str()),
        resource_id: resource["id"].as_str(),
        event_id: e.event_id.as_str(),
    }
}
