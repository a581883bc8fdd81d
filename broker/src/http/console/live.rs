//! `GET /console/live/events`: a server-sent events stream, one `data:` JSON object per second,
//! for the overview's charts and the live view:
//!
//! ```json
//! {"t": 1764844800000, "publish_rate": 812.0, "deliver_rate": 2436.0, "p50_ms": 0.4,
//!  "p99_ms": 2.1, "connections": 3, "subscriptions": 4,
//!  "clients": [{"client_id": "...", "application": "Clinic Board", "connections": 1,
//!               "subscriptions": 1, "delivered": 7001, "deliver_rate": 812.0}]}
//! ```
//!
//! Rates are per second over the last tick: publishes from the event log's newest `seq` (the
//! whole cluster's), deliveries from the sessions' counters (every node's, in cluster mode),
//! latency quantiles from this node's `publish_to_deliver_seconds` histogram. The stream
//! re-checks the console session every 10 s (without counting as use: an open tab does not
//! keep a session from going idle) and ends when it is gone (signed out, expired, credential
//! revoked). At most 32 streams are open per node at once (503 beyond).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{reader, session};

/// Live streams open at once on this node at most: each reads every node's sessions once a
/// second.
const MAX_STREAMS: usize = 32;

static STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One open stream, counted while it lives.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        use std::sync::atomic::Ordering;
        let mut n = STREAMS.load(Ordering::Relaxed);
        loop {
            if n >= MAX_STREAMS {
                return None;
            }
            match STREAMS.compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Slot),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
use crate::state::Broker;

/// What one tick remembers of the last.
#[derive(Default)]
struct Last {
    at: Option<tokio::time::Instant>,
    head: u64,
    delivered: HashMap<String, u64>,
    buckets: Vec<(f64, u64)>,
}

/// `GET /console/live/events`.
pub(crate) async fn events(State(state): State<Broker>, headers: HeaderMap) -> Response {
    if let Err(r) = reader(&state, &headers).await {
        return r.into_response();
    }
    let Some(slot) = Slot::take() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "10")],
            "too many live views are open on this node",
        )
            .into_response();
    };
    let stream = futures_util::stream::unfold(
        (state, headers, Last::default(), 0u32, slot),
        |(state, headers, mut last, n, slot)| async move {
            if n > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if n % 10 == 9 && session(&state, &headers, false).await.is_none() {
                return None;
            }
            let data = tick(&state, &mut last).await;
            let event: Result<Event, Infallible> = Ok(Event::default().data(data.to_string()));
            Some((event, (state, headers, last, n + 1, slot)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn tick(state: &Broker, last: &mut Last) -> serde_json::Value {
    let now = tokio::time::Instant::now();
    let secs = last
        .at
        .map(|a| now.duration_since(a).as_secs_f64())
        .filter(|s| *s > 0.0);
    let head = state.fanout.head_seq();
    let publish_rate = match secs {
        Some(s) => head.saturating_sub(last.head) as f64 / s,
        None => 0.0,
    };
    let sessions = super::pages::all_sessions(state).await.sessions;
    let mut clients: BTreeMap<String, (String, u64, u64, u64, f64)> = BTreeMap::new();
    let mut delivered_now = HashMap::new();
    let mut total_rate = 0.0;
    let mut subscriptions = 0;
    for s in &sessions {
        let before = last.delivered.get(&s.session).copied();
        let delta = match before {
            Some(b) => s.events_delivered.saturating_sub(b),
            None if last.at.is_some() => s.events_delivered,
            None => 0,
        };
        let rate = secs.map_or(0.0, |sec| delta as f64 / sec);
        total_rate += rate;
        subscriptions += s.subscriptions.len() as u64;
        delivered_now.insert(s.session.clone(), s.events_delivered);
        let e = clients
            .entry(s.client_id.clone())
            .or_insert_with(|| (s.application_name.clone(), 0, 0, 0, 0.0));
        e.1 += 1;
        e.2 += s.subscriptions.len() as u64;
        e.3 += s.events_delivered;
        e.4 += rate;
    }
    let buckets = buckets(state);
    let (p50, p99) = quantiles(&last.buckets, &buckets);
    last.at = Some(now);
    last.head = head;
    last.delivered = delivered_now;
    last.buckets = buckets;
    json!({
        "t": scopecast_protocol::Timestamp::now().unix_ms(),
        "publish_rate": round(publish_rate),
        "deliver_rate": round(total_rate),
        "p50_ms": p50.map(round),
        "p99_ms": p99.map(round),
        "connections": sessions.len(),
        "subscriptions": subscriptions,
        "clients": clients.into_iter().map(|(id, (app, conns, subs, delivered, rate))| json!({
            "client_id": id, "application": app, "connections": conns, "subscriptions": subs,
            "delivered": delivered, "deliver_rate": round(rate),
        })).collect::<Vec<_>>(),
    })
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The latency histogram's cumulative buckets: (upper bound in ms, count).
fn buckets(state: &Broker) -> Vec<(f64, u64)> {
    use prometheus::core::Collector as _;
    state
        .metrics
        .publish_to_deliver
        .collect()
        .first()
        .and_then(|f| f.get_metric().first().map(|m| m.get_histogram().clone()))
        .map(|h| {
            h.get_bucket()
                .iter()
                .map(|b| (b.upper_bound() * 1000.0, b.cumulative_count()))
                .collect()
        })
        .unwrap_or_default()
}

/// p50 and p99 (ms, the bucket's upper bound) of the observations between two snapshots.
fn quantiles(before: &[(f64, u64)], now: &[(f64, u64)]) -> (Option<f64>, Option<f64>) {
    let delta: Vec<(f64, u64)> = now
        .iter()
        .enumerate()
        .map(|(i, (le, c))| (*le, c.saturating_sub(before.get(i).map_or(0, |b| b.1))))
        .collect();
    let total = delta.last().map_or(0, |d| d.1);
    if total == 0 {
        return (None, None);
    }
    let q = |p: f64| {
        let want = (total as f64 * p).ceil() as u64;
        delta.iter().find(|(_, c)| *c >= want).map(|(le, _)| *le)
    };
    (q(0.5), q(0.99))
}

#[cfg(test)]
mod tests {
    use super::quantiles;

    #[test]
    fn quantiles_of_the_observations_between_two_snapshots() {
        let before = [(1.0, 10), (5.0, 10), (10.0, 10)];
        let now = [(1.0, 60), (5.0, 108), (10.0, 110)];
        // 100 new: 50 under 1 ms, 48 under 5, 2 under 10.
        assert_eq!(quantiles(&before, &now), (Some(1.0), Some(10.0)));
        assert_eq!(quantiles(&now, &now), (None, None));
    }
}
