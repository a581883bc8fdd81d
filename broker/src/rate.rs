//! Publish rate limits per client ID: a token bucket refilled at `rate` per second, holding at
//! most one second's worth. Per node: in cluster mode each node enforces the configured rate
//! for the publishes it admits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Per-client token buckets. Keys are client IDs of verified principals only, so the map is
/// bounded by the registry.
#[derive(Clone)]
pub(crate) struct RateLimiter {
    rate: f64,
    buckets: Arc<DashMap<Arc<str>, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `per_sec` events per second per client; 0 allows everything.
    pub(crate) fn new(per_sec: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(per_sec),
            buckets: Arc::new(DashMap::new()),
        }
    }

    /// The rate, per second (0: no limit).
    pub(crate) fn per_sec(&self) -> u32 {
        self.rate as u32
    }

    /// Takes one token for `client_id`, or says how long until one is available.
    ///
    /// # Errors
    /// The wait before a token is available.
    pub(crate) fn take(&self, client_id: &Arc<str>) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut b = self
            .buckets
            .entry(client_id.clone())
            .or_insert((self.rate, now));
        let (tokens, last) = *b;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        if tokens >= 1.0 {
            *b = (tokens - 1.0, now);
            Ok(())
        } else {
            *b = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

impl RateLimiter {
    /// Gives back the token of a publish that stored nothing (a duplicate `event_id`), up to
    /// the bucket's size.
    pub(crate) fn refund(&self, client_id: &str) {
        if self.rate <= 0.0 {
            return;
        }
        if let Some(mut b) = self.buckets.get_mut(client_id) {
            b.0 = (b.0 + 1.0).min(self.rate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_of_one_second_then_refuses() {
        let r = RateLimiter::new(5);
        let c: Arc<str> = "c".into();
        for _ in 0..5 {
            r.take(&c).unwrap();
        }
        let wait = r.take(&c).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(RateLimiter::new(0).take(&c).is_ok());
    }

    #[test]
    fn a_refund_gives_one_token_back() {
        let r = RateLimiter::new(2);
        let c: Arc<str> = "c".into();
        r.take(&c).unwrap();
        r.take(&c).unwrap();
        assert!(r.take(&c).is_err());
        r.refund(&c);
        assert!(r.take(&c).is_ok(), "the refunded token is there");
        assert!(r.take(&c).is_err());
    }
}
