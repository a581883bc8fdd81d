//! Prometheus metrics (`GET /metrics`). No label ever takes a value a client chose: outcomes
//! and reasons are fixed sets, and client IDs are registered by an admin (DESIGN section 9).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the broker exports. Cheap to share behind an `Arc`.
pub struct Metrics {
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
    /// Token and credential refusals by reason (a fixed set).
    pub auth_failures: IntCounterVec,
    /// Publishes refused for rate.
    pub publish_rate_limited: IntCounter,
    /// Seconds from the broker accepting an event to writing it to a subscriber's socket,
    /// observed for the oldest event of each write batch.
    pub publish_to_deliver: Histogram,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// Only if a metric definition here is invalid (names and labels are constants; the unit
    /// test below builds them all).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("scopecast".into()), None)?;
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
        for c in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(client_connections.clone()),
            Box::new(subscriptions.clone()),
            Box::new(subscribe_results.clone()),
            Box::new(events_published.clone()),
            Box::new(events_delivered.clone()),
            Box::new(slow_consumer_closes.clone()),
            Box::new(auth_failures.clone()),
            Box::new(publish_rate_limited.clone()),
            Box::new(publish_to_deliver.clone()),
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
            auth_failures,
            publish_rate_limited,
            publish_to_deliver,
        })
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
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
