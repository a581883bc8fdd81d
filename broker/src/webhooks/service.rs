//! What the admin API and the application's own API (`webhook:manage`) do with endpoints
//! (WEBHOOKS.md "Endpoints"): every change is checked here, written with an audit entry, and
//! reaches the delivery engine of every node as a registry change.

use std::collections::BTreeMap;

use scopecast_protocol::Pattern;
use scopecast_protocol::Timestamp;
use scopecast_protocol::admin::{NewWebhook, WebhookAttemptView, WebhookPatch, WebhookView};

use super::endpoint::{self, Keys};
use super::engine::{Inner, Webhooks};
use super::sign::{Secret, SigningKey};
use crate::registry::validate::invalid;
use crate::registry::{RegistryError, StoredWebhook, WebhookAttempt, WebhookState};

/// Most topic patterns per endpoint.
pub(crate) const MAX_TOPICS: usize = 32;
/// Largest `max_in_flight`.
pub(crate) const MAX_IN_FLIGHT: u32 = 64;
/// Largest `max_batch`.
pub(crate) const MAX_BATCH: u32 = 100;

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn rfc3339(ms: i64) -> String {
    Timestamp::from_unix_ms(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The API's view of `w`; `secret` only where it is shown once.
pub(crate) fn view(inner: &Inner, w: &StoredWebhook, secret: Option<&Secret>) -> WebhookView {
    let keys = Keys::unseal(&inner.kek, &w.id, &w.sealed).ok();
    let now = now_ms();
    WebhookView {
        id: w.id.clone(),
        client_id: w.client_id.clone(),
        url: w.url.clone(),
        topics: w.topics.clone(),
        header_names: keys
            .as_ref()
            .map(|k| k.headers.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default(),
        state: w.state.as_str().to_owned(),
        state_reason: w.state_reason.clone(),
        cursor: w.cursor,
        max_in_flight: w.max_in_flight,
        max_batch: w.max_batch,
        created_at: rfc3339(w.created_at_ms),
        updated_at: rfc3339(w.updated_at_ms),
        version: w.version,
        delivering_node: w
            .lease
            .as_ref()
            .filter(|(_, until)| *until > now)
            .map(|(holder, _)| holder.clone()),
        previous_secret_until: keys
            .as_ref()
            .and_then(|k| k.previous.as_ref())
            .filter(|(_, until)| *until > now)
            .map(|(_, until)| rfc3339(*until)),
        public_key: keys
            .as_ref()
            .and_then(|k| k.ed25519.as_ref())
            .map(SigningKey::public),
        secret: secret.map(Secret::reveal),
    }
}

/// An attempt record as the API shows it.
pub(crate) fn attempt_view(a: &WebhookAttempt) -> WebhookAttemptView {
    WebhookAttemptView {
        id: a.id,
        seq: a.seq,
        event_id: a.event_id.clone(),
        attempt: a.attempt,
        at: rfc3339(a.at_ms),
        status: a.status,
        error: a.error.clone(),
        latency_ms: a.latency_ms,
        outcome: a.outcome.clone(),
    }
}

fn bad(field: &str, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid(invalid(field, message))
}

fn internal(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Internal(e.to_string())
}

/// A new `v1a` key pair.
fn new_signing_key() -> Result<SigningKey, RegistryError> {
    SigningKey::generate().map_err(|_| internal("the random source failed"))
}

impl Webhooks {
    /// Checks a URL as registration does: the rules of [`endpoint::check_url`], and every
    /// address its host resolves to now must pass the address guard (the guard checks again
    /// at every connect).
    async fn check_url(&self, url: &str) -> Result<String, RegistryError> {
        let parsed = endpoint::check_url(url, self.settings.allow_http, &self.policy)
            .map_err(|m| bad("url", m))?;
        let host = parsed
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.parse::<std::net::IpAddr>().is_err() {
            let ips = self
                .lookup
                .lookup(host.clone())
                .await
                .map_err(|e| bad("url", format!("{host} does not resolve: {e}")))?;
            if ips.is_empty() {
                return Err(bad("url", format!("{host} has no address")));
            }
            for ip in ips {
                self.policy
                    .check(ip)
                    .map_err(|m| bad("url", format!("{host} resolves to {m}")))?;
            }
        }
        Ok(parsed.to_string())
    }

    /// Checks topic patterns against the client's current scope (containment, as for
    /// subscriptions): each must be allowed by `subscribe:<pattern>`.
    fn check_topics(
        &self,
        client_id: &str,
        topics: &[String],
    ) -> Result<Vec<String>, RegistryError> {
        if topics.is_empty() {
            return Err(bad("topics", "give at least one topic pattern, e.g. lab.>"));
        }
        if topics.len() > MAX_TOPICS {
            return Err(bad("topics", format!("at most {MAX_TOPICS} patterns")));
        }
        let client = self
            .registry
            .client(client_id)
            .ok_or(RegistryError::NotFound {
                what: "client",
                id: client_id.to_owned(),
            })?;
        let mut out = Vec::with_capacity(topics.len());
        for (i, t) in topics.iter().enumerate() {
            let field = format!("topics[{i}]");
            let p: Pattern = t
                .parse()
                .map_err(|e| bad(&field, format!("`{t}` is not a topic pattern: {e}")))?;
            if !client.ceiling.allows_subscribe(&p) {
                return Err(bad(
                    &field,
                    format!(
                        "`{t}` is outside the client's scope: it needs subscribe:{t} (insufficient_scope)"
                    ),
                ));
            }
            if !out.contains(&p.to_string()) {
                out.push(p.to_string());
            }
        }
        Ok(out)
    }

    fn check_headers(
        headers: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let list: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        endpoint::check_headers(&list).map_err(|m| bad("headers", m))?;
        Ok(list)
    }

    fn check_limits(max_in_flight: u32, max_batch: u32) -> Result<(), RegistryError> {
        if !(1..=MAX_IN_FLIGHT).contains(&max_in_flight) {
            return Err(bad(
                "max_in_flight",
                format!("must be 1 to {MAX_IN_FLIGHT}"),
            ));
        }
        if !(1..=MAX_BATCH).contains(&max_batch) {
            return Err(bad("max_batch", format!("must be 1 to {MAX_BATCH}")));
        }
        Ok(())
    }

    /// Registers an endpoint for `client_id`; its signing secret is returned once. Deliveries
    /// start with the events stored from now on.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] naming the field, [`RegistryError::NotFound`] for an
    /// unknown client ID, [`RegistryError::Conflict`] past `max_endpoints_per_client`, or a
    /// storage failure.
    pub(crate) async fn create(
        &self,
        client_id: &str,
        new: NewWebhook,
        actor: &str,
    ) -> Result<(StoredWebhook, Secret), RegistryError> {
        let client_id = crate::registry::validate::uuid_id("client_id", client_id)?;
        if let Some(c) = self.registry.client(&client_id)
            && c.kind != self.environment
        {
            return Err(RegistryError::Conflict(format!(
                "client ID {client_id} is a {} client ID; this environment is {}: register the endpoint for the application's {} client ID",
                c.kind.as_str(),
                self.environment.as_str(),
                self.environment.as_str()
            )));
        }
        let topics = self.check_topics(&client_id, &new.topics)?;
        let url = self.check_url(&new.url).await?;
        let headers = Self::check_headers(&new.headers)?;
        let (max_in_flight, max_batch) =
            (new.max_in_flight.unwrap_or(1), new.max_batch.unwrap_or(1));
        Self::check_limits(max_in_flight, max_batch)?;
        self.check_room(&client_id).await?;
        let id = endpoint::new_id().map_err(internal)?;
        let secret = Secret::generate().map_err(|_| internal("the random source failed"))?;
        let keys = Keys {
            current: secret.clone(),
            previous: None,
            ed25519: if new.v1a {
                Some(new_signing_key()?)
            } else {
                None
            },
            previous_ed25519: None,
            headers,
        };
        let now = now_ms();
        let w = StoredWebhook {
            sealed: keys.seal(&self.kek, &id).map_err(internal)?,
            id,
            client_id: client_id.clone(),
            url,
            topics,
            state: WebhookState::Active,
            state_reason: None,
            cursor: self.log.fresh_bounds().await.last,
            cursor_epoch: self.log.epoch().to_owned(),
            replay_through: 0,
            fhir_subscription_id: None,
            max_in_flight,
            max_batch,
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
            lease: None,
        };
        self.registry
            .create_webhook(
                &w,
                actor,
                serde_json::json!({
                    "endpoint_id": w.id, "url": w.url, "topics": w.topics,
                    "header_names": new.headers.keys().collect::<Vec<_>>(),
                }),
            )
            .await?;
        Ok((w, secret))
    }

    /// Refuses a new endpoint for `client_id` past `max_endpoints_per_client` (the endpoints of
    /// rest-hook FHIR Subscriptions count).
    ///
    /// # Errors
    /// [`RegistryError::Conflict`], or a storage failure.
    async fn check_room(&self, client_id: &str) -> Result<(), RegistryError> {
        let existing = self
            .registry
            .webhooks()
            .await?
            .iter()
            .filter(|w| w.client_id == client_id)
            .count();
        if existing >= self.settings.max_endpoints_per_client {
            return Err(RegistryError::Conflict(format!(
                "the client ID has {existing} webhook endpoints (rest-hook FHIR Subscriptions count), the most webhooks.max_endpoints_per_client allows"
            )));
        }
        Ok(())
    }

    /// Registers the endpoint that delivers the rest-hook FHIR Subscription `subscription_id`
    /// of `client_id` (FHIR.md "Rest-hook channel"): `url` checked as any endpoint's, the
    /// broker topic `topic`, `headers` (from `channel.header`) sent with every request. It
    /// starts `paused` (until the Subscription's handshake is answered 2xx) with its cursor at
    /// `cursor` of the log `epoch` (the Subscription's start); its signing secret is returned
    /// once.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] naming `url` or a header, [`RegistryError::Conflict`] past
    /// `max_endpoints_per_client`, or a storage failure.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create_for_fhir(
        &self,
        client_id: &str,
        url: &str,
        topic: &str,
        headers: &BTreeMap<String, String>,
        subscription_id: &str,
        cursor: u64,
        epoch: &str,
    ) -> Result<(StoredWebhook, Secret), RegistryError> {
        let url = self.check_url(url).await?;
        let headers = Self::check_headers(headers)?;
        self.check_room(client_id).await?;
        let id = endpoint::new_id().map_err(internal)?;
        let secret = Secret::generate().map_err(|_| internal("the random source failed"))?;
        let keys = Keys {
            current: secret.clone(),
            previous: None,
            ed25519: None,
            previous_ed25519: None,
            headers,
        };
        let now = now_ms();
        let w = StoredWebhook {
            sealed: keys.seal(&self.kek, &id).map_err(internal)?,
            id,
            client_id: client_id.to_owned(),
            url,
            topics: vec![topic.to_owned()],
            state: WebhookState::Paused,
            state_reason: Some("waiting for the FHIR Subscription's handshake".to_owned()),
            cursor,
            cursor_epoch: epoch.to_owned(),
            replay_through: 0,
            max_in_flight: 1,
            max_batch: 1,
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
            lease: None,
            fhir_subscription_id: Some(subscription_id.to_owned()),
        };
        self.registry
            .create_webhook(
                &w,
                client_id,
                serde_json::json!({
                    "endpoint_id": w.id, "url": w.url, "topics": w.topics,
                    "fhir_subscription_id": subscription_id,
                    "header_names": headers_names(&keys.headers),
                }),
            )
            .await?;
        Ok((w, secret))
    }

    /// The endpoint `id`.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], or a storage failure.
    pub(crate) async fn get(&self, id: &str) -> Result<StoredWebhook, RegistryError> {
        self.registry.webhook(id).await
    }

    /// Every endpoint, or those of `client_id`.
    ///
    /// # Errors
    /// A storage failure.
    pub(crate) async fn list(
        &self,
        client_id: Option<&str>,
    ) -> Result<Vec<StoredWebhook>, RegistryError> {
        let mut all = self.registry.webhooks().await?;
        if let Some(c) = client_id {
            all.retain(|w| w.client_id == c);
        }
        Ok(all)
    }

    /// Writes a change made by `change` to the endpoint `id` (read, changed, compare-and-set;
    /// read again when another write came first).
    async fn change<F>(
        &self,
        id: &str,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
        mut change: F,
    ) -> Result<StoredWebhook, RegistryError>
    where
        F: FnMut(&mut StoredWebhook) -> Result<(), RegistryError>,
    {
        for _ in 0..5 {
            let mut w = self.registry.webhook(id).await?;
            change(&mut w)?;
            w.updated_at_ms = now_ms();
            if self
                .registry
                .update_webhook(&w, actor, action, detail.clone())
                .await?
            {
                return self.registry.webhook(id).await;
            }
        }
        Err(RegistryError::Conflict(format!(
            "webhook endpoint {id} is being changed by someone else; try again"
        )))
    }

    /// Changes URL, topics, headers or limits.
    ///
    /// # Errors
    /// As [`Webhooks::create`].
    pub(crate) async fn update(
        &self,
        id: &str,
        patch: WebhookPatch,
        actor: &str,
    ) -> Result<StoredWebhook, RegistryError> {
        let current = self.registry.webhook(id).await?;
        let url = match &patch.url {
            Some(u) => Some(self.check_url(u).await?),
            None => None,
        };
        let topics = match &patch.topics {
            Some(t) => Some(self.check_topics(&current.client_id, t)?),
            None => None,
        };
        let headers = match &patch.headers {
            Some(h) => Some(Self::check_headers(h)?),
            None => None,
        };
        Self::check_limits(
            patch.max_in_flight.unwrap_or(current.max_in_flight),
            patch.max_batch.unwrap_or(current.max_batch),
        )?;
        let detail = serde_json::json!({
            "endpoint_id": id,
            "url": patch.url,
            "topics": patch.topics,
            "header_names": patch.headers.as_ref().map(|h| h.keys().collect::<Vec<_>>()),
            "max_in_flight": patch.max_in_flight,
            "max_batch": patch.max_batch,
            "v1a": patch.v1a,
        });
        // A key made here is used only when `v1a` is off now (`Keys::set_v1a`).
        let v1a = match patch.v1a {
            Some(true) => Some(Some(new_signing_key()?)),
            Some(false) => Some(None),
            None => None,
        };
        let kek = self.kek.clone();
        self.change(id, actor, "webhook.update", detail, |w| {
            if let Some(u) = &url {
                w.url = u.clone();
            }
            if let Some(t) = &topics {
                w.topics = t.clone();
            }
            if headers.is_some() || v1a.is_some() {
                let mut keys = Keys::unseal(&kek, &w.id, &w.sealed).map_err(internal)?;
                if let Some(h) = &headers {
                    keys.headers = h.clone();
                }
                if let Some(on) = &v1a {
                    keys.set_v1a(on.clone());
                }
                w.sealed = keys.seal(&kek, &w.id).map_err(internal)?;
            }
            if let Some(n) = patch.max_in_flight {
                w.max_in_flight = n;
            }
            if let Some(n) = patch.max_batch {
                w.max_batch = n;
            }
            Ok(())
        })
        .await
    }

    /// Pauses (an admin action only) or resumes an endpoint; resuming also re-enables a
    /// disabled one, from its cursor (the event that disabled it first).
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], or a storage failure.
    pub(crate) async fn set_paused(
        &self,
        id: &str,
        paused: bool,
        reason: &str,
        actor: &str,
    ) -> Result<StoredWebhook, RegistryError> {
        let reason = crate::registry::validate::note("reason", reason)?;
        let action = if paused {
            "webhook.pause"
        } else {
            "webhook.resume"
        };
        let detail = serde_json::json!({"endpoint_id": id, "reason": reason});
        let changed = self
            .change(id, actor, action, detail, |w| {
                if paused {
                    w.state = WebhookState::Paused;
                    w.state_reason = Some(if reason.is_empty() {
                        "paused by an admin".to_owned()
                    } else {
                        reason.clone()
                    });
                } else {
                    w.state = WebhookState::Active;
                    w.state_reason = None;
                }
                Ok(())
            })
            .await?;
        if paused {
            // Nothing starts on this node after the answer (other nodes stop as the change
            // reaches them: WEBHOOKS.md section 9).
            self.stop_local(id);
        }
        Ok(changed)
    }

    /// A new signing secret (returned once); the previous one signs too for
    /// `webhooks.rotation_overlap_s`.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], or a storage failure.
    pub(crate) async fn rotate_secret(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<(StoredWebhook, Secret), RegistryError> {
        let secret = Secret::generate().map_err(|_| internal("the random source failed"))?;
        let ed25519 = new_signing_key()?;
        let overlap_ms = i64::try_from(self.settings.rotation_overlap_s.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let until = now_ms().saturating_add(overlap_ms);
        let kek = self.kek.clone();
        let detail = serde_json::json!({"endpoint_id": id, "previous_until": rfc3339(until)});
        let new = secret.clone();
        let w = self
            .change(id, actor, "webhook.rotate_secret", detail, |w| {
                let mut keys = Keys::unseal(&kek, &w.id, &w.sealed).map_err(internal)?;
                let new_ed25519 = keys.ed25519.is_some().then(|| ed25519.clone());
                keys.rotate(new.clone(), new_ed25519, until);
                w.sealed = keys.seal(&kek, &w.id).map_err(internal)?;
                Ok(())
            })
            .await?;
        Ok((w, secret))
    }

    /// Deletes an endpoint and its attempt records; deliveries stop.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], or a storage failure.
    pub(crate) async fn delete(&self, id: &str, actor: &str) -> Result<(), RegistryError> {
        let w = self.registry.webhook(id).await?;
        self.registry.delete_webhook(&w, actor).await
    }

    /// Delivers again from `since_seq` on (at least the log's first retained event).
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] for a `since_seq` of 0 or past the log's end,
    /// [`RegistryError::NotFound`], or a storage failure.
    pub(crate) async fn replay(
        &self,
        id: &str,
        since_seq: u64,
        actor: &str,
    ) -> Result<StoredWebhook, RegistryError> {
        let bounds = self.log.fresh_bounds().await;
        if since_seq == 0 || since_seq > bounds.last + 1 {
            return Err(bad(
                "since_seq",
                format!("must be 1 to {} (the log's next seq)", bounds.last + 1),
            ));
        }
        let w = self.registry.webhook(id).await?;
        let from = since_seq.max(bounds.first);
        self.registry
            .replay_webhook(&w, self.log.epoch(), from - 1, bounds.last, actor)
            .await?;
        self.registry.webhook(id).await
    }

    /// An endpoint's attempts, newest first.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], or a storage failure.
    pub(crate) async fn attempts(
        &self,
        id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<WebhookAttempt>, RegistryError> {
        self.registry.webhook(id).await?;
        self.registry.webhook_attempts(id, before, limit).await
    }
}

fn headers_names(headers: &[(String, String)]) -> Vec<&str> {
    headers.iter().map(|(n, _)| n.as_str()).collect()
}
