//! What a delivery attempt's answer means, and when the next attempt goes (Standard Webhooks
//! 1.0.0 "Delivery"; `../shared/research/interop.md` 3.1-3.2):
//!
//! - 2xx: delivered. 410 Gone: the endpoint is disabled at once.
//! - 3xx: a failure (redirects are never followed: a redirect to an internal address would
//!   defeat the address guard).
//! - 429, 502, 503 and 504 with `Retry-After` (delta-seconds or an HTTP-date): the next
//!   attempt waits at least that long (capped at the schedule's longest step or
//!   [`RETRY_AFTER_CAP`], whichever is longer: a receiver cannot park an endpoint for a year).
//! - anything else (other statuses, connect errors, time-outs): the next step of the schedule,
//!   with up to 20% random jitter either way; past its last step, the endpoint is disabled.

use std::time::{Duration, SystemTime};

/// The default schedule: the delay before each attempt after the first fails (Standard
/// Webhooks' example): immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
pub(crate) const DEFAULT_SCHEDULE_MS: [u64; 10] = [
    0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 50_400_000, 72_000_000,
    86_400_000,
];

/// The longest `Retry-After` honoured when the schedule's steps are all shorter.
pub(crate) const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The receiver answered with this status and, when it sent one, `Retry-After`.
    Status {
        /// The HTTP status.
        code: u16,
        /// The `Retry-After` header's value, as sent.
        retry_after: Option<String>,
    },
    /// No answer: the connection failed, was refused by the address guard, or timed out.
    NoAnswer,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Delivered: move on to the next event.
    Delivered,
    /// Try again after this long.
    Retry(Duration),
    /// Stop delivering to the endpoint: it answered 410, or the schedule is used up.
    Disable(DisableReason),
}

/// Why an endpoint was disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DisableReason {
    /// The receiver answered 410 Gone.
    Gone,
    /// Every attempt of the schedule failed.
    Exhausted,
}

impl DisableReason {
    /// The endpoint's `state_reason`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DisableReason::Gone => "the receiver answered 410 Gone",
            DisableReason::Exhausted => "every attempt of the retry schedule failed",
        }
    }
}

/// The retry schedule of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// The delay before attempt `i + 2` after attempt `i + 1` failed, ms.
    steps_ms: Vec<u64>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            steps_ms: DEFAULT_SCHEDULE_MS.to_vec(),
        }
    }
}

impl Schedule {
    /// A schedule of these delays, ms (`webhooks.retry_schedule_ms`; compressed in tests).
    pub(crate) fn new(steps_ms: Vec<u64>) -> Schedule {
        Schedule { steps_ms }
    }

    #[cfg(test)]
    /// Attempts in all: the first and one per step.
    pub(crate) fn attempts(&self) -> u32 {
        u32::try_from(self.steps_ms.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// What follows attempt number `attempt` (from 1) that ended with `answer`, at `now`;
    /// `jitter` is a number in [0, 1) that spreads the delay by up to 20% either way.
    pub(crate) fn next(&self, attempt: u32, answer: &Answer, now: SystemTime, jitter: f64) -> Next {
        let retry_after = match answer {
            Answer::Status { code, .. } if (200..300).contains(code) => return Next::Delivered,
            Answer::Status { code: 410, .. } => return Next::Disable(DisableReason::Gone),
            Answer::Status {
                code: 429 | 502 | 503 | 504,
                retry_after: Some(v),
            } => parse_retry_after(v, now),
            _ => None,
        };
        let Some(step) = self.steps_ms.get(attempt.saturating_sub(1) as usize) else {
            return Next::Disable(DisableReason::Exhausted);
        };
        let spread = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        let planned = Duration::from_millis((*step as f64 * spread) as u64);
        let longest = Duration::from_millis(self.steps_ms.iter().copied().max().unwrap_or(0))
            .max(RETRY_AFTER_CAP);
        Next::Retry(match retry_after {
            Some(asked) => asked.min(longest.max(planned)).max(planned),
            None => planned,
        })
    }
}

/// `Retry-After` (RFC 9110 section 10.2.3): delta-seconds or an HTTP-date, as a wait from
/// `now`; `None` when it is neither.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Answer {
        Answer::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn success_gone_and_the_schedule() {
        let s = Schedule::default();
        let now = SystemTime::now();
        assert_eq!(s.next(1, &status(200), now, 0.5), Next::Delivered);
        assert_eq!(s.next(3, &status(204), now, 0.5), Next::Delivered);
        assert_eq!(
            s.next(1, &status(410), now, 0.5),
            Next::Disable(DisableReason::Gone)
        );
        assert!(DisableReason::Gone.as_str().contains("410"));
        // Jitter 0.5 is the planned delay itself.
        assert_eq!(
            s.next(1, &status(500), now, 0.5),
            Next::Retry(Duration::ZERO)
        );
        assert_eq!(
            s.next(2, &Answer::NoAnswer, now, 0.5),
            Next::Retry(Duration::from_secs(5))
        );
        assert_eq!(
            s.next(3, &status(302), now, 0.5),
            Next::Retry(Duration::from_secs(300)),
            "a redirect is a failure"
        );
        assert_eq!(s.attempts(), 11);
        assert_eq!(
            s.next(11, &status(500), now, 0.5),
            Next::Disable(DisableReason::Exhausted)
        );
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        let s = Schedule::default();
        let now = SystemTime::now();
        let Next::Retry(low) = s.next(2, &status(500), now, 0.0) else {
            panic!("retry")
        };
        let Next::Retry(high) = s.next(2, &status(500), now, 0.999_999) else {
            panic!("retry")
        };
        assert_eq!(low, Duration::from_secs(4));
        assert!(high >= Duration::from_millis(5_999) && high <= Duration::from_secs(6));
    }

    #[test]
    fn retry_after_is_honoured_on_throttling_statuses_only() {
        let s = Schedule::new(vec![0, 100, 200]);
        let now = SystemTime::now();
        let throttled = |code| Answer::Status {
            code,
            retry_after: Some("2".to_owned()),
        };
        for code in [429, 502, 503, 504] {
            assert_eq!(
                s.next(1, &throttled(code), now, 0.5),
                Next::Retry(Duration::from_secs(2)),
                "{code}: honoured although the schedule's steps are shorter"
            );
        }
        let absurd = Answer::Status {
            code: 429,
            retry_after: Some("31536000".to_owned()),
        };
        assert_eq!(
            s.next(1, &absurd, now, 0.5),
            Next::Retry(RETRY_AFTER_CAP),
            "a year is capped"
        );
        let long = Schedule::new(vec![0, 60_000]);
        assert_eq!(
            long.next(1, &throttled(429), now, 0.5),
            Next::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            long.next(1, &throttled(500), now, 0.5),
            Next::Retry(Duration::ZERO),
            "a 500's Retry-After is not a throttle"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:57 GMT", now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past is now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
