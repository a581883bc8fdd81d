//! Request and response shapes of the admin API (`/admin/v1/...`, JSON), shared by the broker,
//! the CLI, the tests and the load harness, so the API is typed once.
//!
//! - Credentials: [`Role`], [`NewCredential`], [`CredentialView`], [`IssuedCredential`].
//! - Live sessions: [`SessionView`], [`SessionList`].

use serde::{Deserialize, Serialize};

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
}

/// `GET /admin/v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    /// Live sessions, oldest first.
    pub sessions: Vec<SessionView>,
}
