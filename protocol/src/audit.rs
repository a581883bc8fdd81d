//! The access audit's records (SECURITY.md "Access audit"): who received which events, under
//! which token, and who was refused. Shapes of `GET /admin/v1/audit/access` (JSON and NDJSON)
//! and of `GET /admin/v1/audit/verify`.
//!
//! A record is stored as its JSON text exactly as serialized here; the hash chain covers those
//! bytes. A subscription's record is written again (a new snapshot with the same `id`) at its
//! periodic checkpoints and at its end: queries answer with the newest snapshot of each.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// One record of the access audit, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccessRecord {
    /// A subscription's lifetime on one WebSocket connection.
    Subscription(SubscriptionRecord),
    /// Refused subscribes or credentials of one (client, reason, missing scope) in one minute.
    Refusal(RefusalRecord),
    /// One webhook delivery attempt (or a skip) of one event.
    WebhookAttempt(WebhookAttemptRecord),
}

impl AccessRecord {
    /// The record's id (the same for every snapshot of one subscription).
    pub fn id(&self) -> &str {
        match self {
            AccessRecord::Subscription(r) => &r.id,
            AccessRecord::Refusal(r) => &r.id,
            AccessRecord::WebhookAttempt(r) => &r.id,
        }
    }

    /// The client ID it concerns (`unknown` for a refusal of an unregistered one).
    pub fn client_id(&self) -> &str {
        match self {
            AccessRecord::Subscription(r) => &r.client_id,
            AccessRecord::Refusal(r) => &r.client_id,
            AccessRecord::WebhookAttempt(r) => &r.client_id,
        }
    }
}

/// A subscription's lifetime: from its grant to its end, with the events the connection wrote
/// to its socket meanwhile.
///
/// "Received" means written to the socket by the session: events dropped by a 4008 close are
/// not counted. The connection receives every event that matches `pattern` with a `seq` from
/// `from_seq` to `last_seq` (in `seq` order, each once); `count` and `first_seq` are the
/// connection's while this subscription lived (an event matching two subscriptions of one
/// connection is written, and counted, once: with several subscriptions on one connection,
/// each record's `count` is the connection's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// `sub_` and 32 hex digits.
    pub id: String,
    /// The OAuth2 client ID.
    pub client_id: String,
    /// Its application.
    pub application_id: String,
    /// The environment (`<kind>/<name>`).
    pub environment: String,
    /// The node that served it (`local` on a single node).
    pub node: String,
    /// The WebSocket session, as `welcome` named it (hex).
    pub session: String,
    /// The peer's address and port.
    pub source: String,
    /// The access token's `jti`, when it had one.
    pub token_jti: Option<String>,
    /// The access token's `iat`, when it had one.
    pub token_iat: Option<Timestamp>,
    /// The subscribed pattern.
    pub pattern: String,
    /// When the subscription was granted.
    pub granted_at: Timestamp,
    /// Every matching event from this `seq` on was delivered while it lived (its `head_seq`
    /// plus one, or where its replay began).
    pub from_seq: u64,
    /// The first event `seq` its pattern matched that was written to the connection while it
    /// lived, at or after `from_seq`.
    pub first_seq: Option<u64>,
    /// The last such `seq`.
    pub last_seq: Option<u64>,
    /// Events its pattern matched that were written to the connection while it lived. An
    /// event matching two subscriptions of one connection is written once and counted in
    /// both records ("who received seq N" names the connection once).
    pub count: u64,
    /// The connection's count of events written when it was granted, while the connection
    /// has this one subscription (`count` is then the connection's count since): lets a query
    /// bring a live record up to date from the session's counters. `u64::MAX` once the
    /// connection has held several subscriptions: each then counts itself, and a live record
    /// is as of its last snapshot.
    #[serde(default)]
    pub connection_delivered_at_grant: u64,
    /// When this snapshot was taken.
    pub checkpoint_at: Timestamp,
    /// When it ended (absent while it lives).
    pub ended_at: Option<Timestamp>,
    /// Why it ended: `unsubscribed`, `closed_by_client`, `closed_by_broker:<code>`,
    /// `disconnected`, `revoked` (a re-check), `node_stopped` (the node stopped without
    /// ending it; `ended_at` is its last checkpoint).
    pub end_reason: Option<String>,
}

/// Refusals of one (client ID, reason, missing scope) in one minute, counted.
///
/// Aggregated so that an unauthenticated caller cannot write rows at will: at most one record
/// per key and minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalRecord {
    /// `ref_` and 32 hex digits.
    pub id: String,
    /// The client ID, or `unknown` when the caller named none that is registered here.
    pub client_id: String,
    /// True when `client_id` was read from a credential that did not verify (a refused token
    /// names a client ID, but anyone can write any client ID into one); false when the client
    /// was authenticated and then refused (a subscribe outside its scope).
    #[serde(default)]
    pub claimed: bool,
    /// The environment (`<kind>/<name>`).
    pub environment: String,
    /// The node that refused.
    pub node: String,
    /// What refused it: `insufficient_scope`, `client_inactive`, or a token refusal such as
    /// `invalid_token`, `expired`, `bad_signature`.
    pub reason: String,
    /// The scope that would have allowed it (scope refusals).
    pub missing_scope: Option<String>,
    /// The minute (start) the refusals fell in.
    pub minute: Timestamp,
    /// How many.
    pub count: u64,
}

/// One webhook delivery attempt, or a skip (no request), of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAttemptRecord {
    /// `wha_` and 32 hex digits.
    pub id: String,
    /// The client ID the endpoint belongs to.
    pub client_id: String,
    /// The environment (`<kind>/<name>`).
    pub environment: String,
    /// The node that made it.
    pub node: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event's `seq`.
    pub seq: u64,
    /// The event's id.
    pub event_id: String,
    /// The event's topic.
    pub topic: String,
    /// 1 for the first attempt; 0 for a skip.
    pub attempt: u32,
    /// When.
    pub at: Timestamp,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// `delivered`, `failed`, `disabled`, `skipped_client_inactive`, `skipped_scope`.
    pub outcome: String,
}

/// `GET /admin/v1/audit/access` (JSON): the newest snapshot of each matching record, oldest
/// first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessList {
    /// The records.
    pub records: Vec<AccessRecord>,
    /// True when more matched than the limit allowed (narrow the query).
    pub truncated: bool,
}

/// The answer of `GET /admin/v1/audit/verify`: the hash chains checked against their signed
/// checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True when every chain verified.
    pub ok: bool,
    /// One entry per chain (one per writing node).
    pub chains: Vec<ChainReport>,
}

/// One chain's verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// The chain (the node that writes it).
    pub chain: String,
    /// Rows checked.
    pub rows: u64,
    /// The first and last row numbers kept (older ones were pruned by retention).
    pub first: Option<u64>,
    /// See `first`.
    pub last: Option<u64>,
    /// Signed checkpoints whose signature and hash matched.
    pub checkpoints: u64,
    /// Rows after the newest signed checkpoint (written since; signed at the next one).
    pub unsigned_tail: u64,
    /// What failed, one line each (empty when it verified).
    pub problems: Vec<String>,
}
