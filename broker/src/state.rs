//! [`Broker`]: the broker-wide services every front end uses (HTTP handlers, WebSocket
//! sessions, and next the webhook and FHIR front ends), in one cheap-clone handle, as
//! mini-redis's `Db` is. `server.rs` builds it and runs the parts; nothing here knows HTTP or
//! WebSocket.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{Access, Admission};
use crate::auth::client_auth::ClientAuthenticator;
use crate::auth::token::{TokenIssuer, TokenVerifier};
use crate::config::Config;
use crate::fanout::Fanout;
use crate::log::{EventLog, History};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::SessionTable;

/// The broker's services. Cheap to clone (one `Arc`); derefs to [`Services`].
#[derive(Clone)]
pub(crate) struct Broker(Arc<Services>);

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("environment", &self.config.environment)
            .finish_non_exhaustive()
    }
}

/// What [`Broker`] holds. Each field lives as long as the broker; the tasks that run them
/// (fan-out, registry follower, log writer) are owned by `server::run_on`.
pub(crate) struct Services {
    /// The configuration it runs with.
    pub(crate) config: Config,
    /// False once shutdown has begun; `/readyz` reports it so load balancers drain us first.
    pub(crate) ready: AtomicBool,
    /// Applications, client IDs, credentials, audit.
    pub(crate) registry: Registry,
    /// Signs access tokens; holds the signing keys.
    pub(crate) issuer: TokenIssuer,
    /// Verifies access tokens into principals.
    pub(crate) verifier: TokenVerifier,
    /// Authenticates clients at the token endpoint.
    pub(crate) client_auth: ClientAuthenticator,
    /// The event log.
    pub(crate) log: Arc<dyn EventLog>,
    /// Reads stored events by pattern (replay, `GET /v1/events`).
    pub(crate) history: History,
    /// The topic index and the task that offers the log's events to local sessions.
    pub(crate) fanout: Fanout,
    /// The one access check, and the refusals it counts.
    pub(crate) access: Access,
    /// The one publish admission (scope, ceiling, rate, log).
    pub(crate) admission: Admission,
    /// Prometheus metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Live sessions by client ID.
    pub(crate) sessions: SessionTable,
    /// Every WebSocket session task, so shutdown can wait for them.
    pub(crate) session_tasks: TaskTracker,
    /// Cancelled when the broker shuts down: sessions close with 1001.
    pub(crate) shutdown: CancellationToken,
    /// One permit: a backup holds it until its stream is written, so two never run at once.
    pub(crate) backups: Arc<tokio::sync::Semaphore>,
    /// Signs the application records this deployment exports (as a catalog).
    pub(crate) records: crate::catalog::RecordSigner,
    /// The catalog keys this environment pins, to verify records it imports.
    pub(crate) trusted: crate::catalog::TrustedCatalogs,
    /// This deployment's public URL: the `iss` of the records it signs.
    pub(crate) public_url: String,
    /// Cluster mode's parts (`None` on a single node).
    pub(crate) cluster: Option<ClusterState>,
    /// Outgoing delivery: webhook endpoints and their delivery engine.
    pub(crate) webhooks: crate::webhooks::Webhooks,
    /// FHIR Subscriptions: the topic catalogue, numbering, bound sockets.
    pub(crate) fhir: crate::fhir::Fhir,
    /// The next session id.
    next_session: AtomicU64,
}

/// What a node of a cluster holds besides the shared log and registry.
pub(crate) struct ClusterState {
    /// This node's name (metrics label, session list, logs).
    pub(crate) node: String,
    /// What the JetStream servers promise (read at start).
    pub(crate) durability: crate::cluster::Durability,
    /// The shared token-signing key set (the issuer's ring).
    pub(crate) tokens: crate::cluster::SharedRing,
    /// The shared record-signing key set.
    pub(crate) records: crate::cluster::SharedRing,
    /// The connection to NATS (for `/readyz`: which server, connected or not).
    pub(crate) nats: async_nats::Client,
}

impl Deref for Broker {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The parts [`Broker::new`] takes.
pub(crate) struct Parts {
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    pub(crate) issuer: TokenIssuer,
    pub(crate) verifier: TokenVerifier,
    pub(crate) client_auth: ClientAuthenticator,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) fanout: Fanout,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) records: crate::catalog::RecordSigner,
    pub(crate) trusted: crate::catalog::TrustedCatalogs,
    pub(crate) public_url: String,
    pub(crate) cluster: Option<ClusterState>,
    pub(crate) webhooks: crate::webhooks::Kit,
    /// The access audit's handle (its writer runs beside the broker).
    pub(crate) audit: crate::audit::AccessAudit,
}

impl Broker {
    /// Assembles the services around `parts`.
    pub(crate) fn new(parts: Parts) -> Broker {
        let Parts {
            config,
            registry,
            issuer,
            verifier,
            client_auth,
            log,
            fanout,
            metrics,
            records,
            trusted,
            public_url,
            cluster,
            webhooks,
            audit,
        } = parts;
        let access = Access::new(registry.clone(), metrics.clone(), audit);
        let kek = webhooks.kek.clone();
        let webhooks = crate::webhooks::Webhooks::new(crate::webhooks::EngineParts {
            registry: registry.clone(),
            log: log.clone(),
            access: access.clone(),
            environment: config.environment,
            kek: webhooks.kek,
            sender: webhooks.sender,
            policy: webhooks.policy,
            lookup: webhooks.lookup,
            settings: config.webhooks.clone(),
            metrics: metrics.clone(),
            holder: cluster
                .as_ref()
                .map_or_else(|| "local".to_owned(), |c| c.node.clone()),
        });
        let fhir = crate::fhir::Fhir::new(crate::fhir::FhirParts {
            registry: registry.clone(),
            log: log.clone(),
            access: access.clone(),
            environment: config.environment,
            metrics: metrics.clone(),
            kek,
            topics: config.fhir.topics(),
            public_url: public_url.clone(),
            webhooks: webhooks.clone(),
        });
        webhooks.set_fhir(&fhir);
        let admission = Admission::new(
            access.clone(),
            log.clone(),
            metrics.clone(),
            config.limits.publish_rate_per_sec,
        );
        Broker(Arc::new(Services {
            ready: AtomicBool::new(true),
            history: History::new(log.clone()),
            registry,
            issuer,
            verifier,
            client_auth,
            log,
            fanout,
            access,
            admission,
            metrics,
            sessions: SessionTable::default(),
            session_tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            backups: Arc::new(tokio::sync::Semaphore::new(1)),
            records,
            trusted,
            public_url,
            cluster,
            webhooks,
            fhir,
            next_session: AtomicU64::new(1),
            config,
        }))
    }

    /// True until shutdown begins.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A new session id.
    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}
