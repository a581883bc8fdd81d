//! Request and response shapes of the admin API (`/admin/v1/...`, JSON), shared by the broker,
//! the CLI, the tests and the load harness, so the API is typed once.
//!
//! - Applications: [`NewApplication`], [`ApplicationPatch`], [`ApplicationView`] (with its two
//!   [`ClientView`]s), [`ApplicationList`], [`DeletedApplication`].
//! - Client IDs: [`ClientView`], [`ClientKeysView`], [`SetKeys`], [`Reason`],
//!   [`ClientIdHeader`], [`IssuedSecret`].
//! - The audit trail: [`AuditEntry`], [`AuditList`]. Signing keys: [`RotatedKey`].
//! - Credentials: [`Role`], [`NewCredential`], [`CredentialView`], [`IssuedCredential`].
//! - Live sessions: [`SessionView`], [`SessionList`].
//! - Webhook endpoints: [`NewWebhook`], [`WebhookPatch`], [`WebhookView`], [`WebhookList`],
//!   [`WebhookReplay`], [`WebhookAttemptView`], [`WebhookAttemptList`].
//!
//! Times are RFC 3339 strings in UTC (`2026-12-02T10:00:00.123Z`). Request shapes refuse
//! unknown fields, so a misspelt field is a 400 naming it, never silently ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /admin/v1/applications`: a new application; the broker makes its two client IDs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApplication {
    /// Its name, 1 to 128 characters.
    pub name: String,
    /// Who makes it (the developer or vendor), 1 to 128 characters.
    pub vendor: String,
    /// Free text, at most 2,000 characters.
    #[serde(default)]
    pub description: String,
    /// Its scope ceiling: space-separated scopes of the documented families
    /// (`subscribe:<pattern>`, `publish:<pattern>`, `webhook:manage`, SMART system scopes).
    pub scope: String,
}

/// `PATCH /admin/v1/applications/{id}`: the fields to change; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationPatch {
    /// A new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// A new description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A new scope ceiling; narrowing it ends the subscriptions it no longer covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The keys a client ID authenticates with at the token endpoint (`private_key_jwt`,
/// RFC 7523), as the API shows them: key ids, never key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientKeysView {
    /// No keys: the client authenticates with its secret.
    None,
    /// A registered JWK Set.
    Jwks {
        /// The `kid` of each key in the set.
        kids: Vec<String>,
    },
    /// A JWK Set fetched from the application's URL.
    JwksUri {
        /// The `https` URL.
        jwks_uri: String,
    },
}

/// One client ID of an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientView {
    /// The OAuth2 client ID (UUID).
    pub client_id: String,
    /// `production` or `non-production`: the environments it may be used in.
    pub kind: String,
    /// True while it is active in this environment; only an active client ID gets tokens,
    /// keeps its sessions and receives events.
    pub active: bool,
    /// True when it has a client secret (`client_secret_basic` / `client_secret_post`).
    pub has_secret: bool,
    /// True when requests may name it in the `Scopecast-Client-Id` header.
    pub client_id_header: bool,
    /// Its `private_key_jwt` keys.
    pub keys: ClientKeysView,
    /// When it last changed.
    pub updated_at: String,
    /// The client secret: only in the answer that made it (creation, rotation), shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The application it belongs to (in `GET /admin/v1/clients/{client_id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
    /// The application's name (in `GET /admin/v1/clients/{client_id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// This environment's grant (set at the first activation here); absent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_scope: Option<String>,
    /// What the client ID may do here now: the record's scope intersected with the grant.
    #[serde(default)]
    pub effective_scope: String,
    /// The record's scopes the grant does not include yet: they wait for
    /// `POST /admin/v1/clients/{client_id}/approve`. Empty when nothing waits.
    #[serde(default)]
    pub pending_scope: String,
}

/// An application's two client IDs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationClients {
    /// The client ID for production environments.
    pub production: ClientView,
    /// The client ID for test, training and development environments.
    pub non_production: ClientView,
}

impl ApplicationClients {
    /// Both client IDs, production first.
    pub fn both(&self) -> [&ClientView; 2] {
        [&self.production, &self.non_production]
    }
}

/// An application as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationView {
    /// Its id (UUID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its vendor.
    pub vendor: String,
    /// Its description.
    pub description: String,
    /// Its scope ceiling.
    pub scope: String,
    /// When it was registered.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// The record's version, from 1: every change makes the next one.
    #[serde(default = "first_version")]
    pub version: u64,
    /// Where the record comes from: absent when registered here; for an imported record, the
    /// `kid` of the catalog key that signed it (edit it in the catalog, not here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// When it was retired; its client IDs cannot be activated any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
    /// The developer account that registered it (in a catalog); absent when an admin did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// True when the current version is frozen, ready for production; false while it is a
    /// developer's draft (the catalog hands out the newest ready version).
    #[serde(default = "ready_default")]
    pub ready: bool,
    /// Its two client IDs.
    pub clients: ApplicationClients,
}

fn first_version() -> u64 {
    1
}

fn ready_default() -> bool {
    true
}

/// `POST /dev/v1/register` (self-registration, where the catalog allows it): a developer
/// account; the answer is an [`IssuedCredential`] with role `developer`, its token shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeveloper {
    /// The account's name, 1 to 128 characters: the owner of its applications.
    pub name: String,
}

/// `GET /catalog/v1/records`: the newest ready version of every application registered in
/// the catalog, each a signed record (JWS), for environments to sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordList {
    /// The signed records.
    pub records: Vec<String>,
}

/// The answer to `POST /admin/v1/catalog/sync`: what one pull of the catalog did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Applications new here.
    pub created: u32,
    /// Applications updated to a newer version.
    pub updated: u32,
    /// Records already held.
    pub unchanged: u32,
    /// Records refused, each with why.
    pub refused: Vec<String>,
}

/// An application record as it travels between a catalog and the environments: the claims
/// of a JWS (RFC 7515 compact serialisation, `alg` `ES256`, `typ` `scopecast-record+jwt`,
/// `kid` of the catalog's record-signing key; never its token-signing key). It holds no
/// secret and no secret's hash: each environment makes its own client secrets.
///
/// Exported by `GET /admin/v1/applications/{id}/record` ([`RecordDocument`]), imported by
/// `POST /admin/v1/records`. An environment accepts a record only when its signature verifies
/// with a catalog key pinned in its configuration (`catalog.trusted_keys_file`), its version is
/// newer than the one it holds (the same version again is accepted only byte for byte:
/// idempotent), and its client IDs are the ones it holds for that application (or unknown
/// there, for a new one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationRecord {
    /// The catalog that signed it (its public URL).
    pub iss: String,
    /// When it was signed, Unix seconds.
    pub iat: i64,
    /// The application's id (UUID), the same in every environment.
    pub application_id: String,
    /// The record's version, from 1.
    pub version: u64,
    /// Its name.
    pub name: String,
    /// Its vendor (developer).
    pub vendor: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// The scope it asks for: an environment grants at most this.
    pub scope: String,
    /// Its two client IDs with their public keys.
    pub clients: RecordClients,
    /// True once retired: every environment deactivates both client IDs.
    #[serde(default)]
    pub retired: bool,
}

/// The two client IDs of an [`ApplicationRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordClients {
    /// For production environments.
    pub production: RecordClient,
    /// For test, training and development environments.
    pub non_production: RecordClient,
}

/// One client ID of an [`ApplicationRecord`]: its id and its `private_key_jwt` public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordClient {
    /// The OAuth2 client ID (UUID).
    pub client_id: String,
    /// An inline JWK Set of public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// A JWK Set URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

/// `GET /admin/v1/applications/{id}/record` (answer) and `POST /admin/v1/records` (request): a
/// signed application record, JWS compact serialisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordDocument {
    /// The JWS.
    pub record: String,
}

/// The answer to `POST /admin/v1/records`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// `created` (new here), `updated` (a newer version) or `unchanged` (this version was
    /// imported before).
    pub outcome: String,
    /// The application as it is here now.
    pub application: ApplicationView,
}

/// `PUT /admin/v1/clients/{client_id}/grant`: this environment's grant for a client ID, at most
/// the record's scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Space-separated scopes, each covered by the record's scope.
    pub scope: String,
    /// Why (kept in the audit trail).
    pub reason: String,
}

/// `GET /admin/v1/applications`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationList {
    /// Every application, by name.
    pub applications: Vec<ApplicationView>,
}

/// The answer to `DELETE /admin/v1/applications/{id}`: what was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedApplication {
    /// The application's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its client IDs, now unknown to the broker.
    pub client_ids: Vec<String>,
}

/// `PUT /admin/v1/clients/{client_id}/keys`: a JWK Set, a JWK Set URL, or neither (`{}`)
/// to remove the keys. Both at once is a 400.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetKeys {
    /// A JWK Set (`{"keys": [...]}`, RFC 7517 section 5): public keys only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// An `https` URL serving the JWK Set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

/// The body of activation and deactivation (`POST .../activate`, `.../deactivate`) and the
/// query of application deletion: why, for the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Free text; may be empty.
    #[serde(default)]
    pub reason: String,
}

/// `PUT /admin/v1/clients/{client_id}/client-id-header`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIdHeader {
    /// Whether requests may name the client ID in the `Scopecast-Client-Id` header.
    pub enabled: bool,
}

/// A new client secret (`POST /admin/v1/clients/{client_id}/rotate-secret`), shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedSecret {
    /// The client ID.
    pub client_id: String,
    /// `production` or `non-production`.
    pub kind: String,
    /// The secret; only its argon2id hash is stored.
    pub client_secret: String,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its id.
    pub id: String,
    /// When it happened.
    pub at: String,
    /// The credential's name that made the change (`bootstrap` for the first start).
    pub actor: String,
    /// What was done, e.g. `client.activate`, `application.update`.
    pub action: String,
    /// The application concerned, if any.
    pub application_id: Option<String>,
    /// The client ID concerned, if any.
    pub client_id: Option<String>,
    /// The environment (`<kind>/<name>`) of the deployment that wrote it; absent on entries
    /// written before environments were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The change's details (the fields before and after, the reason).
    pub detail: Value,
}

/// `GET /admin/v1/audit`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditList {
    /// The entries.
    pub entries: Vec<AuditEntry>,
}

/// The answer to `POST /admin/v1/keys/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotatedKey {
    /// The new signing key's `kid`; the old key stays published until its tokens expire.
    pub kid: String,
}

/// What a credential of the one credential store may do (SECURITY.md, "Credentials").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything the admin API offers: register and change applications, activate client IDs,
    /// manage credentials, close sessions, rotate keys.
    Admin,
    /// Read-only: every `GET` of the admin API and `/metrics`; no change.
    Viewer,
    /// A developer of a catalog: manages only their own applications (developer API).
    Developer,
    /// `GET /metrics` only: the credential a Prometheus server scrapes with.
    Metrics,
}

impl Role {
    /// Every role, in the order the docs list them.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Viewer, Role::Developer, Role::Metrics];

    /// The spelling used in the API, the CLI and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Metrics => "metrics",
        }
    }

    /// True when this role may read the admin API (`GET`).
    pub const fn can_read_admin(self) -> bool {
        matches!(self, Role::Admin | Role::Viewer)
    }

    /// True when this role may change anything through the admin API.
    pub const fn can_write_admin(self) -> bool {
        matches!(self, Role::Admin)
    }

    /// True when this role may scrape `GET /metrics`.
    pub const fn can_scrape_metrics(self) -> bool {
        matches!(self, Role::Admin | Role::Viewer | Role::Metrics)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: one of admin, viewer, developer, metrics"))
    }
}

/// `POST /admin/v1/credentials`: a new named credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    /// Who or what it belongs to (a person, `prometheus`, ...): 1 to 64 characters, unique
    /// among credentials that are not revoked. The audit trail names it as the actor.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// A credential as the API shows it: never its secret, never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialView {
    /// Its id (UUID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was made, RFC 3339.
    pub created_at: String,
    /// Which credential made it (`bootstrap` for the first admin credential).
    pub created_by: String,
    /// When it was revoked, RFC 3339; absent while it is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Which credential revoked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// `store` (made through the API) or `config` (the `admin_token` setting; not revocable
    /// through the API).
    pub source: String,
}

/// `GET /admin/v1/credentials`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialList {
    /// Every credential, valid ones first, then by name.
    pub credentials: Vec<CredentialView>,
}

/// The answer to [`NewCredential`]: the credential and its bearer token, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCredential {
    /// The stored credential.
    #[serde(flatten)]
    pub credential: CredentialView,
    /// The bearer token (`scc_` and 43 characters); only its SHA-256 is stored.
    pub token: String,
}

/// One live WebSocket session (`GET /admin/v1/sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// The session id, as in its `welcome` frame and the broker's log.
    pub session: String,
    /// The OAuth2 client ID it authenticated as.
    pub client_id: String,
    /// The application that client ID belongs to.
    pub application_id: String,
    /// The application's name.
    pub application_name: String,
    /// The peer's address (`ip:port`; a proxy's, behind one).
    pub peer: String,
    /// When the session was authenticated, RFC 3339.
    pub connected_since: String,
    /// Its live subscriptions' patterns.
    pub subscriptions: Vec<String>,
    /// Events written to its socket.
    pub events_delivered: u64,
    /// Events it published that the broker stored.
    pub events_published: u64,
    /// Bytes waiting in its outbound queue now.
    pub outbox_bytes: u64,
    /// The `seq` of the last event written to its socket (0 before the first).
    #[serde(default)]
    pub last_seq_written: u64,
    /// True while a replay runs on it (its subscriptions' records are then brought up to
    /// date by their checkpoints only).
    #[serde(default)]
    pub replaying: bool,
    /// In cluster mode, the broker node that holds it (its `cluster.node_name`); the
    /// `session` id is then `<node>:<id>`, unique across the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `GET /admin/v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    /// Live sessions, oldest first.
    pub sessions: Vec<SessionView>,
}

/// `POST /admin/v1/clients/{client_id}/webhooks`: a new webhook endpoint (WEBHOOKS.md).
/// `Debug` shows header names only (their values are often API keys).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where events are POSTed: an absolute `https` URL (`http` only where the operator
    /// allows it), at most 2,048 bytes, no user name, password or fragment.
    pub url: String,
    /// Topic patterns to deliver (`fhir.encounter.>`), each inside the client's scope
    /// (`subscribe:<pattern>` containment, as for subscriptions); at least one.
    pub topics: Vec<String>,
    /// Extra headers sent with every delivery (an API key the receiver checks), sealed at
    /// rest and never shown again (only their names); at most 16.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Requests in flight at once, 1 to 64 (default 1: in `seq` order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Events per request, 1 to 100 (default 1: one event per request; above 1 the body is
    /// a JSON array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
    /// Also sign with `v1a` (ed25519, Standard Webhooks): the broker makes a key pair for the
    /// endpoint and shows its public key (`public_key`); default false (`v1` only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub v1a: bool,
}

/// `PATCH /admin/v1/webhooks/{id}`: the fields to change; absent fields stay. `headers`
/// replaces every extra header. `Debug` shows header names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    /// A new URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// New topic patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// New extra headers (all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// New `max_in_flight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// New `max_batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
    /// `v1a` signatures on (a key pair is made when there is none) or off (its keys dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v1a: Option<bool>,
}

/// A webhook endpoint as the API shows it: never a secret or a header value, except the
/// signing secret once, in the answer that made it (create, rotate). `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookView {
    /// Its id: `ep_` and 32 hex digits.
    pub id: String,
    /// The client ID it delivers to.
    pub client_id: String,
    /// Where events go.
    pub url: String,
    /// The topic patterns it receives.
    pub topics: Vec<String>,
    /// The names of its extra headers.
    pub header_names: Vec<String>,
    /// `active`, `paused` (by an admin) or `disabled` (410, or failing past the retry
    /// schedule).
    pub state: String,
    /// Why it is paused or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// The last `seq` delivered or skipped: deliveries go on after it.
    pub cursor: u64,
    /// Requests in flight at once.
    pub max_in_flight: u32,
    /// Events per request.
    pub max_batch: u32,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Writes so far, from 1.
    pub version: i64,
    /// The broker node delivering to it now (cluster mode), while its lease lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivering_node: Option<String>,
    /// Until when the previous signing secret still signs (after a rotation), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<String>,
    /// The `v1a` public key (`whpk_` and the base64 of 32 bytes), when the endpoint is signed
    /// with `v1a`: public, shown every time; a rotation makes a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The signing secret (`whsec_` and base64): only in the answer of create and
    /// rotate-secret; stored sealed, never shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `GET /admin/v1/clients/{client_id}/webhooks`, `GET /admin/v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookList {
    /// Endpoints, oldest first.
    pub webhooks: Vec<WebhookView>,
}

/// `POST /admin/v1/webhooks/{id}/replay`: deliver again from `since_seq` on (the events a
/// disabled endpoint missed, or the ones skipped while its client ID was inactive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookReplay {
    /// The first `seq` to deliver again (at least 1).
    pub since_seq: u64,
}

/// One delivery attempt, or a skip (`GET /admin/v1/webhooks/{id}/deliveries`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAttemptView {
    /// Its record id (pass as `before` for the next page).
    pub id: i64,
    /// The event's `seq`.
    pub seq: u64,
    /// The event's id (empty for a retention skip).
    pub event_id: String,
    /// 1 for the first attempt; 0 for a skip.
    pub attempt: u32,
    /// When, RFC 3339.
    pub at: String,
    /// The receiver's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong, when something did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Request to response, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    /// `delivered`, `failed`, `disabled`, `skipped_client_inactive`, `skipped_scope`,
    /// `skipped_retention`, `skipped_log_replaced`.
    pub outcome: String,
}

/// `GET /admin/v1/webhooks/{id}/deliveries?limit=&before=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAttemptList {
    /// Newest first.
    pub attempts: Vec<WebhookAttemptView>,
}

impl std::fmt::Debug for NewWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewWebhook")
            .field("url", &self.url)
            .field("topics", &self.topics)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("max_in_flight", &self.max_in_flight)
            .field("max_batch", &self.max_batch)
            .field("v1a", &self.v1a)
            .finish()
    }
}

impl std::fmt::Debug for WebhookPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookPatch")
            .field("url", &self.url)
            .field("topics", &self.topics)
            .field(
                "headers",
                &self.headers.as_ref().map(|h| h.keys().collect::<Vec<_>>()),
            )
            .field("max_in_flight", &self.max_in_flight)
            .field("max_batch", &self.max_batch)
            .field("v1a", &self.v1a)
            .finish()
    }
}

impl std::fmt::Debug for WebhookView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookView")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("url", &self.url)
            .field("topics", &self.topics)
            .field("header_names", &self.header_names)
            .field("state", &self.state)
            .field("cursor", &self.cursor)
            .field("version", &self.version)
            .field("public_key", &self.public_key)
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}
