//! The broker's own view of latency: its `publish_to_deliver_seconds` histogram (from
//! accepting an event to writing it to a subscriber's socket, observed once per written
//! batch, for the batch's oldest event), read from `/metrics` before and after a phase.
//!
//! The harness's publish-to-deliver latency also counts the time an event waits for the
//! harness's own reader to be scheduled; on a 2-core machine shared by both, that wait
//! dominates. The difference of the two histograms shows how much of it is the broker's.

use serde::Serialize;

/// Cumulative bucket counts: `(upper bound in seconds, events at or under it)`, ascending,
/// `+Inf` last.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Buckets(Vec<(f64, u64)>);

/// The broker's publish-to-deliver quantiles over one phase, as bucket upper bounds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BrokerLatency {
    /// Batches written in the phase.
    pub(crate) batches: u64,
    /// The bucket bound at or under which half of them were written, ms (`None`: past the
    /// largest finite bucket, or no batch).
    pub(crate) p50_le_ms: Option<f64>,
    /// The same for 99%.
    pub(crate) p99_le_ms: Option<f64>,
}

const METRIC: &str = "publish_to_deliver_seconds_bucket{le=\"";

impl Buckets {
    /// Parses the histogram out of a Prometheus text exposition; `None` when it is absent.
    pub(crate) fn parse(text: &str) -> Option<Buckets> {
        let mut out = Vec::new();
        for line in text.lines() {
            let Some(start) = line.find(METRIC) else {
                continue;
            };
            let rest = &line[start + METRIC.len()..];
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = rest.trim().parse::<f64>().ok()? as u64;
            out.push((le, count));
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        (!out.is_empty()).then_some(Buckets(out))
    }

    /// Reads `base/metrics` with a credential that may (`metrics`, `viewer` or `admin`);
    /// `None` when it cannot.
    pub(crate) async fn scrape(http: &reqwest::Client, base: &str, token: &str) -> Option<Buckets> {
        let text = http
            .get(format!("{base}/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Buckets::parse(&text)
    }

    /// What was observed between `before` and `self`.
    pub(crate) fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let was = before
                        .0
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0, |&(_, c)| c);
                    (le, n.saturating_sub(was))
                })
                .collect(),
        )
    }

    /// The smallest bucket bound, in seconds, with at least `q` of the observations at or
    /// under it; `None` without observations.
    pub(crate) fn quantile_le(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        self.0.iter().find(|(_, n)| *n >= want).map(|&(le, _)| le)
    }

    /// The phase's summary.
    pub(crate) fn summary(&self) -> BrokerLatency {
        let ms = |q: f64| {
            self.quantile_le(q)
                .filter(|s| s.is_finite())
                .map(|s| s * 1000.0)
        };
        BrokerLatency {
            batches: self.0.last().map_or(0, |&(_, n)| n),
            p50_le_ms: ms(0.5),
            p99_le_ms: ms(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP scopecast_publish_to_deliver_seconds x\n\
        scopecast_publish_to_deliver_seconds_bucket{le=\"0.001\"} 10\n\
        scopecast_publish_to_deliver_seconds_bucket{le=\"0.005\"} 10\n\
        scopecast_publish_to_deliver_seconds_bucket{le=\"0.01\"} 10\n\
        scopecast_publish_to_deliver_seconds_bucket{le=\"+Inf\"} 10\n\
        scopecast_publish_to_deliver_seconds_sum 0.001\n";
    const AFTER: &str = "scopecast_publish_to_deliver_seconds_bucket{le=\"0.001\"} 60\n\
        scopecast_publish_to_deliver_seconds_bucket{le=\"0.005\"} 108\n\
        scopecast_publish_to_deliver_seconds_bucket{le=\"0.01\"} 109\n\
        scopecast_publish_to_deliver_seconds_bucket{le=\"+Inf\"} 110\n";

    #[test]
    fn quantiles_are_the_bucket_bounds_of_the_phase_alone() {
        let before = Buckets::parse(BEFORE).expect("before");
        let after = Buckets::parse(AFTER).expect("after");
        let phase = after.since(&before);
        // 100 in the phase: 50 under 1 ms, 48 more under 5 ms, 1 under 10 ms, 1 beyond.
        let s = phase.summary();
        assert_eq!(s.batches, 100);
        assert_eq!(s.p50_le_ms, Some(1.0));
        assert_eq!(s.p99_le_ms, Some(10.0));
        assert_eq!(phase.quantile_le(0.98), Some(0.005));
        assert_eq!(phase.quantile_le(1.0), Some(f64::INFINITY));
    }

    #[test]
    fn no_histogram_or_no_observations_gives_nothing() {
        assert_eq!(Buckets::parse("other_metric 1\n"), None);
        let b = Buckets::parse(BEFORE).expect("parse");
        let none = b.since(&b).summary();
        assert_eq!(none.batches, 0);
        assert_eq!(none.p50_le_ms, None);
    }
}
