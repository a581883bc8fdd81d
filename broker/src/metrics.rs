//! Prometheus metrics (`GET /metrics`). No label ever takes a value a client chose: outcomes
//! and reasons are fixed sets, and client IDs are registered by an admin (DESIGN section 9).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The label value for a client ID that is not registered here (or not known yet): client IDs
/// become labels only once an admin registered them, so a caller cannot add series at will.
pub(crate) const UNKNOWN_CLIENT: &str = "unknown";

/// Counters one client ID's sessions and publishes add to; read into the per-client metrics
/// when `/metrics` is scraped (no metric lookup on the delivery path).
#[derive(Debug, Default)]
pub(crate) struct ClientStats {
    /// Events written to the client's sockets.
    pub delivered: AtomicU64,
    /// Events the client published that were stored (duplicates not counted).
    pub published: AtomicU64,
}

/// Every metric the broker exports. Cheap to share behind an `Arc`.
pub(crate) struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Open WebSocket connections by client ID.
    pub client_connections: IntGaugeVec,
    /// Live subscriptions.
    pub subscriptions: IntGauge,
    /// Subscribe requests by outcome (`ok`, `forbidden`, `invalid`, `limit`).
    pub subscribe_results: IntCounterVec,
    /// Events accepted and sequenced.
    pub events_published: IntCounter,
    /// Event frames queued to sessions (one per session per event).
    pub events_delivered: IntCounter,
    /// Sessions closed with 4008.
    pub slow_consumer_closes: IntCounter,
    /// Access audit records written to the registry store.
    pub audit_records: IntCounter,
    /// Access audit records dropped because the writer was behind.
    pub audit_dropped: IntCounter,
    /// Token and credential refusals by reason (a fixed set).
    pub auth_failures: IntCounterVec,
    /// Publishes refused for rate.
    pub publish_rate_limited: IntCounter,
    /// Seconds from the broker accepting an event to writing it to a subscriber's socket,
    /// observed for the oldest event of each write batch.
    pub publish_to_deliver: Histogram,
    /// Token requests by client ID (registered ones, else `unknown`) and outcome.
    pub token_requests: IntCounterVec,
    /// Refused WebSocket connections and HTTP API calls by client ID (registered ones, else
    /// `unknown`) and reason (a fixed set: the token refusal labels, `too_many_connections`,
    /// `token_in_url`).
    pub refused_connections: IntCounterVec,
    /// HTTP requests by route template (never the raw path) and status code.
    pub http_requests: IntCounterVec,
    /// The event log: oldest retained `seq`.
    pub log_first_seq: IntGauge,
    /// The event log: newest stored `seq`.
    pub log_last_seq: IntGauge,
    /// The event log: bytes of stored events.
    pub log_bytes: IntGauge,
    /// The event log's retention settings (`limit` = `max_events`, `max_bytes`, `max_age_s`;
    /// 0 = no limit).
    pub log_retention: IntGaugeVec,
    /// 1 while the event log accepts writes, 0 while it refuses them.
    pub log_writable: IntGauge,
    client_delivered: IntCounterVec,
    client_published: IntCounterVec,
    clients: DashMap<Arc<str>, Arc<ClientStats>>,
    /// Serialises scrapes: the per-client counters are brought up to date during a render.
    render_lock: parking_lot::Mutex<()>,
    /// `scopecast_environment_info`.
    environment_info: IntGaugeVec,
    /// Events the log holds that this node's fan-out has not offered yet (tailed logs).
    pub fanout_lag_events: IntGauge,
    /// Connections each event was delivered to, recently (a moving average over the fan-out's
    /// batches, 1/8 weight to the newest): what decides whether writes are coalesced
    /// (`limits.write_coalesce_min_fanout`).
    pub fanout_width: IntGauge,
    /// Times the fan-out gave up a stalled or ended tail and tailed again.
    pub fanout_restarts: IntCounter,
    /// 1 for each reason acknowledged events are less durable than they could be
    /// (`replicas_1`, `lazy_fsync`, `server_before_2_11`); none set: not degraded.
    pub log_durability_degraded: IntGaugeVec,
    /// Webhook attempts and skips by client ID and outcome (`delivered`, `failed`,
    /// `skipped_client_inactive`, `skipped_scope`, ...).
    pub webhook_attempts: IntCounterVec,
    /// Events a webhook endpoint delivered to by this node is behind the log, by client ID
    /// and endpoint.
    pub webhook_lag_events: IntGaugeVec,
    /// Seconds between the oldest event a webhook endpoint has not had delivered and now, by
    /// client ID and endpoint (0 when caught up).
    pub webhook_lag_seconds: IntGaugeVec,
    /// Webhook endpoints disabled by the broker (410, or failing past the retry window), by
    /// client ID.
    pub webhooks_disabled: IntCounterVec,
    /// FHIR Subscriptions stored, by client ID and status (`requested`, `active`, `error`,
    /// `off`), as this node last loaded them.
    pub fhir_subscriptions: IntGaugeVec,
    /// FHIR notifications sent by this node, by client ID, channel (`websocket`, `rest-hook`)
    /// and type (`handshake`, `heartbeat`, `event-notification`).
    pub fhir_notifications: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// Only if a metric definition here is invalid (names and labels are constants; the unit
    /// test below builds them all).
    #[cfg(test)]
    pub(crate) fn new() -> Result<Metrics, prometheus::Error> {
        Metrics::for_node(None)
    }

    /// As [`Metrics::new`], with a `node` label on every series when `node` is given (cluster
    /// mode: which node a series comes from).
    ///
    /// # Errors
    /// As [`Metrics::new`].
    pub(crate) fn for_node(node: Option<&str>) -> Result<Metrics, prometheus::Error> {
        let labels =
            node.map(|n| std::collections::HashMap::from([("node".to_owned(), n.to_owned())]));
        let registry = Registry::new_custom(Some("scopecast".into()), labels)?;
        let fanout_lag_events = IntGauge::new(
            "fanout_lag_events",
            "Events in the log this node's fan-out has not offered yet",
        )?;
        let fanout_width = IntGauge::new(
            "fanout_width",
            "Connections each event was delivered to recently (moving average)",
        )?;
        let fanout_restarts = IntCounter::new(
            "fanout_restarts_total",
            "Times the fan-out tailed the log again after a stalled or ended tail",
        )?;
        let log_durability_degraded = IntGaugeVec::new(
            Opts::new(
                "event_log_durability_degraded",
                "1 per reason acknowledged events are less durable than they could be",
            ),
            &["reason"],
        )?;
        let webhook_attempts = IntCounterVec::new(
            Opts::new(
                "webhook_attempts_total",
                "Webhook delivery attempts and skips by client ID and outcome",
            ),
            &["client_id", "outcome"],
        )?;
        let webhook_lag_events = IntGaugeVec::new(
            Opts::new(
                "webhook_lag_events",
                "Events the log holds past a webhook endpoint's last delivery by this node (all topics), set after each delivery and every second",
            ),
            &["client_id", "endpoint"],
        )?;
        let webhook_lag_seconds = IntGaugeVec::new(
            Opts::new(
                "webhook_lag_seconds",
                "Seconds a webhook endpoint's oldest waiting event has waited, at most: now minus the later of the last delivered event's time and when events were first seen waiting (0 when caught up); set after each delivery and every second",
            ),
            &["client_id", "endpoint"],
        )?;
        let fhir_subscriptions = IntGaugeVec::new(
            Opts::new(
                "fhir_subscriptions",
                "FHIR Subscriptions stored, by client ID and status",
            ),
            &["client_id", "status"],
        )?;
        let fhir_notifications = IntCounterVec::new(
            Opts::new(
                "fhir_notifications_total",
                "FHIR notifications sent by this node, by client ID, channel and type",
            ),
            &["client_id", "channel", "type"],
        )?;
        let webhooks_disabled = IntCounterVec::new(
            Opts::new(
                "webhooks_disabled_total",
                "Webhook endpoints the broker disabled (410, or failing past the retry window)",
            ),
            &["client_id"],
        )?;
        let connections = IntGauge::new("connections", "Open WebSocket connections")?;
        let client_connections = IntGaugeVec::new(
            Opts::new(
                "client_connections",
                "Open WebSocket connections by client ID",
            ),
            &["client_id"],
        )?;
        let subscriptions = IntGauge::new("subscriptions", "Live subscriptions")?;
        let subscribe_results = IntCounterVec::new(
            Opts::new("subscribe_results_total", "Subscribe requests by outcome"),
            &["outcome"],
        )?;
        let events_published =
            IntCounter::new("events_published_total", "Events accepted and sequenced")?;
        let events_delivered =
            IntCounter::new("events_delivered_total", "Event frames queued to sessions")?;
        let slow_consumer_closes =
            IntCounter::new("slow_consumer_closes_total", "Sessions closed with 4008")?;
        let audit_records = IntCounter::new(
            "audit_records_total",
            "Access audit records written to the registry store",
        )?;
        let audit_dropped = IntCounter::new(
            "audit_dropped_total",
            "Access audit records dropped because the writer was behind",
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Token and credential refusals by reason",
            ),
            &["reason"],
        )?;
        let publish_rate_limited =
            IntCounter::new("publish_rate_limited_total", "Publishes refused for rate")?;
        let publish_to_deliver = Histogram::with_opts(
            HistogramOpts::new(
                "publish_to_deliver_seconds",
                "From accepting an event to writing it to a socket",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
        )?;
        let token_requests = IntCounterVec::new(
            Opts::new(
                "token_requests_total",
                "Token endpoint requests by client ID and outcome",
            ),
            &["client_id", "outcome"],
        )?;
        let refused_connections = IntCounterVec::new(
            Opts::new(
                "refused_connections_total",
                "Refused WebSocket upgrades and HTTP API calls by client ID and reason",
            ),
            &["client_id", "reason"],
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route template and status",
            ),
            &["route", "status"],
        )?;
        let log_first_seq = IntGauge::new("event_log_first_seq", "Oldest retained seq")?;
        let log_last_seq = IntGauge::new("event_log_last_seq", "Newest stored seq")?;
        let log_bytes = IntGauge::new("event_log_bytes", "Bytes of stored events")?;
        let log_retention = IntGaugeVec::new(
            Opts::new(
                "event_log_retention",
                "Retention settings of the event log (0: no limit)",
            ),
            &["limit"],
        )?;
        let log_writable = IntGauge::new(
            "event_log_writable",
            "1 while the event log accepts writes, 0 while it refuses them",
        )?;
        log_writable.set(1);
        let client_delivered = IntCounterVec::new(
            Opts::new(
                "client_events_delivered_total",
                "Events written to the sockets of a client ID's sessions",
            ),
            &["client_id"],
        )?;
        let client_published = IntCounterVec::new(
            Opts::new(
                "client_events_published_total",
                "Events a client ID published that were stored",
            ),
            &["client_id"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "The broker's version (always 1)"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let environment_info = IntGaugeVec::new(
            Opts::new(
                "environment_info",
                "This deployment's environment (always 1): env is <kind>/<name>",
            ),
            &["env", "kind", "name"],
        )?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for c in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(token_requests.clone()),
            Box::new(refused_connections.clone()),
            Box::new(http_requests.clone()),
            Box::new(log_first_seq.clone()),
            Box::new(log_last_seq.clone()),
            Box::new(log_bytes.clone()),
            Box::new(log_retention.clone()),
            Box::new(log_writable.clone()),
            Box::new(client_delivered.clone()),
            Box::new(client_published.clone()),
            Box::new(build_info),
            Box::new(environment_info.clone()),
            Box::new(client_connections.clone()),
            Box::new(subscriptions.clone()),
            Box::new(subscribe_results.clone()),
            Box::new(events_published.clone()),
            Box::new(events_delivered.clone()),
            Box::new(slow_consumer_closes.clone()),
            Box::new(audit_records.clone()),
            Box::new(audit_dropped.clone()),
            Box::new(auth_failures.clone()),
            Box::new(publish_rate_limited.clone()),
            Box::new(publish_to_deliver.clone()),
            Box::new(fanout_lag_events.clone()),
            Box::new(fanout_width.clone()),
            Box::new(fanout_restarts.clone()),
            Box::new(log_durability_degraded.clone()),
            Box::new(webhook_attempts.clone()),
            Box::new(webhook_lag_events.clone()),
            Box::new(webhook_lag_seconds.clone()),
            Box::new(webhooks_disabled.clone()),
            Box::new(fhir_subscriptions.clone()),
            Box::new(fhir_notifications.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            connections,
            client_connections,
            subscriptions,
            subscribe_results,
            events_published,
            events_delivered,
            slow_consumer_closes,
            audit_records,
            audit_dropped,
            auth_failures,
            publish_rate_limited,
            publish_to_deliver,
            token_requests,
            refused_connections,
            http_requests,
            log_first_seq,
            log_last_seq,
            log_bytes,
            log_retention,
            log_writable,
            client_delivered,
            client_published,
            environment_info,
            fanout_lag_events,
            fanout_width,
            fanout_restarts,
            log_durability_degraded,
            webhook_attempts,
            webhook_lag_events,
            webhook_lag_seconds,
            webhooks_disabled,
            fhir_subscriptions,
            fhir_notifications,
            clients: DashMap::new(),
            render_lock: parking_lot::Mutex::new(()),
        })
    }

    /// Sets `scopecast_environment_info{env, kind, name} 1` (once, at start).
    pub(crate) fn set_environment(&self, kind: &str, name: &str) {
        self.environment_info
            .with_label_values(&[&format!("{kind}/{name}"), kind, name])
            .set(1);
    }

    /// The counters of `client_id` (a verified, registered client ID: the caller makes sure of
    /// that, so the label set stays bounded by the registry).
    pub(crate) fn client(&self, client_id: &str) -> Arc<ClientStats> {
        if let Some(s) = self.clients.get(client_id) {
            return s.clone();
        }
        self.clients
            .entry(Arc::from(client_id))
            .or_default()
            .clone()
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render(&self) -> String {
        let _one_at_a_time = self.render_lock.lock();
        for entry in self.clients.iter() {
            let (id, stats) = (entry.key(), entry.value());
            for (vec, now) in [
                (
                    &self.client_delivered,
                    stats.delivered.load(Ordering::Relaxed),
                ),
                (
                    &self.client_published,
                    stats.published.load(Ordering::Relaxed),
                ),
            ] {
                let c = vec.with_label_values(&[&**id]);
                c.inc_by(now.saturating_sub(c.get()));
            }
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_the_prefix() {
        let m = Metrics::new().unwrap();
        m.subscribe_results.with_label_values(&["ok"]).inc();
        m.auth_failures.with_label_values(&["expired"]).inc();
        m.publish_to_deliver.observe(0.001);
        let text = m.render();
        for name in [
            "scopecast_connections",
            "scopecast_subscribe_results_total",
            "scopecast_publish_to_deliver_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
