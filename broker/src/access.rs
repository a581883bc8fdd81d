//! The one access check and the one publish admission, shared by every front end (WebSocket
//! sessions, the HTTP APIs; next the webhook and FHIR front ends).
//!
//! [`Access::check`]: a request is allowed only when the token's scope allows it AND the
//! application's current grant (its scope ceiling, read from the registry now, not when the
//! token was issued) allows it AND the client ID is active in this environment (DESIGN
//! section 2, PROTOCOL.md section 2). It runs at subscribe, at every read of history, at every
//! re-check after a change, and at publish.
//!
//! [`Admission::submit`]: a publish passes the check, then the client's rate, then goes to the
//! event log; [`PendingAck`] resolves to the [`Ack`] or the [`PublishRefused`], which each
//! front end words in its own format.
//!
//! Refused credentials are counted and logged here, once ([`Access::refused`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use scopecast_protocol::{EventId, Pattern, RawJson, Scope, Topic};

use crate::auth::token::Principal;
use crate::log::{AppendFuture, EventLog, LogError, NewEvent};
use crate::metrics::{ClientStats, Metrics};
use crate::rate::RateLimiter;
use crate::registry::Registry;

/// What a principal asks to do.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action<'a> {
    /// Subscribe to a pattern, or read its history.
    Subscribe(&'a Pattern),
    /// Publish to a topic.
    Publish(&'a Topic),
    /// Manage its own webhook endpoints (`webhook:manage`).
    ManageWebhooks,
    /// Read FHIR resources of a type (a SMART system scope such as `system/Encounter.r`): a
    /// `full-resource` FHIR Subscription carries them.
    ReadResources(&'a Scope),
}

impl Action<'_> {
    /// The scope token that allows it.
    pub(crate) fn scope(&self) -> Scope {
        match self {
            Action::Subscribe(p) => Scope::subscribe(p),
            Action::Publish(t) => Scope::publish(t),
            Action::ManageWebhooks => Scope::WebhookManage,
            Action::ReadResources(s) => (*s).clone(),
        }
    }
}

/// Whose scope lacked the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whose {
    /// The access token's.
    Token,
    /// The application's current grant.
    Application,
}

impl Whose {
    /// For messages.
    pub(crate) fn words(self) -> &'static str {
        match self {
            Whose::Token => "the token's scope",
            Whose::Application => "the application's scope",
        }
    }
}

/// Why [`Access::check`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// The client ID is not active in this environment (or no longer registered).
    Inactive,
    /// A scope lacks `required_scope`.
    Scope {
        /// The scope token that would allow the request.
        required_scope: String,
        /// Whose scope lacks it.
        whose: Whose,
    },
}

/// The access check and the refusal counters. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Access {
    registry: Registry,
    metrics: Arc<Metrics>,
    audit: crate::audit::AccessAudit,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").finish_non_exhaustive()
    }
}

impl Access {
    pub(crate) fn new(
        registry: Registry,
        metrics: Arc<Metrics>,
        audit: crate::audit::AccessAudit,
    ) -> Access {
        Access {
            registry,
            metrics,
            audit,
        }
    }

    /// The access audit (records of who received what, refusals).
    pub(crate) fn audit(&self) -> &crate::audit::AccessAudit {
        &self.audit
    }

    /// Counts a refused subscribe (or FHIR Subscription, or history read) of `principal` in
    /// the access audit: `insufficient_scope` with the missing scope, or `client_inactive`.
    pub(crate) fn refused_subscribe(&self, principal: &Principal, denied: &Denied) {
        match denied {
            Denied::Inactive => {
                self.audit
                    .refusal(Some(&principal.client_id), false, "client_inactive", None)
            }
            Denied::Scope { required_scope, .. } => self.audit.refusal(
                Some(&principal.client_id),
                false,
                "insufficient_scope",
                Some(required_scope),
            ),
        }
    }

    /// Whether `principal` may do `action` now: its token's scope AND its application's
    /// current grant AND its client ID active in this environment.
    pub(crate) fn check(&self, principal: &Principal, action: Action<'_>) -> Result<(), Denied> {
        let Some(client) = self.registry.client(&principal.client_id) else {
            return Err(Denied::Inactive);
        };
        if !client.active || client.kind != principal.kind {
            return Err(Denied::Inactive);
        }
        let (in_token, in_grant) = match action {
            Action::Subscribe(p) => (
                principal.scope.allows_subscribe(p),
                client.ceiling.allows_subscribe(p),
            ),
            Action::Publish(t) => (
                principal.scope.allows_publish(t),
                client.ceiling.allows_publish(t),
            ),
            Action::ManageWebhooks => (
                principal.scope.covers(&Scope::WebhookManage),
                client.ceiling.covers(&Scope::WebhookManage),
            ),
            Action::ReadResources(s) => (principal.scope.covers(s), client.ceiling.covers(s)),
        };
        match (in_token, in_grant) {
            (true, true) => Ok(()),
            (false, _) => Err(Denied::Scope {
                required_scope: action.scope().to_string(),
                whose: Whose::Token,
            }),
            (true, false) => Err(Denied::Scope {
                required_scope: action.scope().to_string(),
                whose: Whose::Application,
            }),
        }
    }

    /// Whether an event on `topic` may be pushed to `client_id`'s webhook endpoints now
    /// (WEBHOOKS.md "The activation rule"): the client ID is registered, of this
    /// environment's kind (`environment`) and active, and its application's current grant
    /// allows `subscribe:<topic>`. Checked before every attempt, the first and each retry.
    /// No token takes part: the endpoint was registered for the client ID, within its scope.
    pub(crate) fn check_push(
        &self,
        client_id: &str,
        environment: crate::config::EnvironmentKind,
        topic: &Topic,
    ) -> Result<(), Denied> {
        let Some(client) = self.registry.client(client_id) else {
            return Err(Denied::Inactive);
        };
        if !client.active || client.kind != environment {
            return Err(Denied::Inactive);
        }
        let pattern = Pattern::from(topic.clone());
        if client.ceiling.allows_subscribe(&pattern) {
            Ok(())
        } else {
            Err(Denied::Scope {
                required_scope: Scope::subscribe(&pattern).to_string(),
                whose: Whose::Application,
            })
        }
    }

    /// Whether the application of `client_id` holds `scope` in its current grant (a SMART
    /// resource scope a `full-resource` FHIR Subscription needs at every delivery).
    pub(crate) fn grant_covers(&self, client_id: &str, scope: &Scope) -> bool {
        self.registry
            .client(client_id)
            .is_some_and(|c| c.ceiling.covers(scope))
    }

    /// True while the client ID may hold a session here (active, of this environment).
    pub(crate) fn active(&self, principal: &Principal) -> bool {
        self.registry
            .client(&principal.client_id)
            .is_some_and(|c| c.active && c.kind == principal.kind)
    }

    /// Counts and logs a refused connection or API call: `auth_failures_total` by reason,
    /// `refused_connections_total` by client ID and reason, and a line at `info` with the
    /// peer. The client ID is read from the (unverified) token only to label it, and only when
    /// it is registered here; otherwise it counts as `unknown`.
    pub(crate) fn refused(
        &self,
        token: Option<&str>,
        peer: SocketAddr,
        reason: &'static str,
        message: &str,
    ) {
        let claimed = token
            .and_then(|t| crate::auth::jwt::peek(t).ok())
            .and_then(|u| u.str_claim("client_id").map(str::to_owned));
        let label = claimed
            .as_deref()
            .filter(|id| self.registry.client(id).is_some())
            .unwrap_or(crate::metrics::UNKNOWN_CLIENT);
        self.metrics
            .auth_failures
            .with_label_values(&[reason])
            .inc();
        self.metrics
            .refused_connections
            .with_label_values(&[label, reason])
            .inc();
        tracing::info!(client_id = label, %peer, reason, message, "request refused");
        // The client ID comes from a credential that did not verify: claimed, not known.
        self.audit.refusal(Some(label), true, reason, None);
    }

    /// Counts a refused connection of a known client (too many connections).
    pub(crate) fn refused_client(&self, client_id: &str, peer: SocketAddr, reason: &'static str) {
        self.metrics
            .refused_connections
            .with_label_values(&[client_id, reason])
            .inc();
        tracing::info!(%client_id, %peer, reason, "connection refused");
        self.audit.refusal(Some(client_id), false, reason, None);
    }
}

/// A stored event's place, as the publisher is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack {
    /// Its `seq`.
    pub(crate) seq: u64,
    /// Its event id: the publisher's, or the UUID the log made.
    pub(crate) event_id: EventId,
    /// True when the event id was stored before: nothing was stored again, and the publish
    /// cost no rate.
    pub(crate) duplicate: bool,
}

/// Why a publish was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublishRefused {
    /// The access check refused.
    Denied(Denied),
    /// Over the client's publish rate; retry after this long.
    RateLimited {
        /// When a publish is allowed again.
        retry_after: Duration,
        /// The rate, per second.
        per_sec: u32,
    },
    /// The log cannot store events now; nothing was stored.
    Unavailable(String),
    /// The outcome is unknown: retry with the same event id.
    Unknown(String),
    /// The event id was stored with another topic or payload.
    Conflict,
}

/// Admits publishes. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Admission {
    access: Access,
    log: Arc<dyn EventLog>,
    metrics: Arc<Metrics>,
    rate: RateLimiter,
    /// False from a failed append until the log takes writes again (`/readyz`).
    writable: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").finish_non_exhaustive()
    }
}

impl Admission {
    pub(crate) fn new(
        access: Access,
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
        rate_per_sec: u32,
    ) -> Admission {
        Admission {
            access,
            log,
            metrics,
            rate: RateLimiter::new(rate_per_sec),
            writable: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Checks the publish of `data` to `topic` by `principal` and hands it to the log, in
    /// order with the caller's earlier submissions. Waits only while the log's intake is full.
    ///
    /// # Errors
    /// [`PublishRefused::Denied`] or [`PublishRefused::RateLimited`] at once; the log's
    /// refusals come through the returned [`PendingAck`].
    pub(crate) async fn submit(
        &self,
        principal: &Principal,
        topic: Topic,
        data: RawJson,
        event_id: Option<EventId>,
    ) -> Result<PendingAck, PublishRefused> {
        self.access
            .check(principal, Action::Publish(&topic))
            .map_err(PublishRefused::Denied)?;
        let client_id: Arc<str> = principal.client_id.as_str().into();
        if let Err(wait) = self.rate.take(&client_id) {
            self.metrics.publish_rate_limited.inc();
            return Err(PublishRefused::RateLimited {
                retry_after: wait,
                per_sec: self.rate.per_sec(),
            });
        }
        let future = self
            .log
            .submit(vec![NewEvent {
                topic,
                data,
                event_id,
            }])
            .await;
        Ok(PendingAck {
            future,
            stats: self.metrics.client(&client_id),
            client_id,
            rate: self.rate.clone(),
            writable: self.writable.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// False from a failed append until the log takes writes again.
    pub(crate) fn log_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Marks the log as taking writes again (a probe passed).
    pub(crate) fn set_log_writable(&self) {
        if !self.writable.swap(true, Ordering::AcqRel) {
            self.metrics.log_writable.set(1);
            tracing::info!("event log takes writes again");
        }
    }
}

/// A submitted publish, resolving to its [`Ack`] or why it was not stored. A duplicate gives
/// its rate token back; a stored event counts for its client.
pub(crate) struct PendingAck {
    future: AppendFuture,
    client_id: Arc<str>,
    stats: Arc<ClientStats>,
    rate: RateLimiter,
    writable: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAck")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Future for PendingAck {
    type Output = Result<Ack, PublishRefused>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut results = match self.future.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        let result = results
            .pop()
            .unwrap_or_else(|| Err(LogError::Unavailable("the log gave no answer".to_owned())));
        Poll::Ready(match result {
            Ok(a) => {
                if a.duplicate {
                    self.rate.refund(&self.client_id);
                } else {
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                }
                if !self.writable.load(Ordering::Acquire)
                    && !self.writable.swap(true, Ordering::AcqRel)
                {
                    self.metrics.log_writable.set(1);
                }
                Ok(Ack {
                    seq: a.seq,
                    event_id: a.event_id,
                    duplicate: a.duplicate,
                })
            }
            Err(LogError::Unavailable(m)) => {
                self.writable.store(false, Ordering::Release);
                self.metrics.log_writable.set(0);
                Err(PublishRefused::Unavailable(m))
            }
            Err(LogError::Unknown(m)) => {
                // No answer in time (a log whose store lost its quorum): not ready until a
                // probe succeeds again.
                self.writable.store(false, Ordering::Release);
                self.metrics.log_writable.set(0);
                Err(PublishRefused::Unknown(m))
            }
            Err(LogError::Conflict { .. }) => Err(PublishRefused::Conflict),
        })
    }
}
