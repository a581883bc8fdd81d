//! What a measurement phase counts: deliveries and their latency (hdrhistogram), errors and
//! slow-consumer closes, connected subscribers; and the CPU time and RSS of a process, read
//! from `/proc`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::payload::{Clock, sent_at};

/// Histogram shards: subscriber tasks record into `shard % SHARDS`, so two worker threads
/// rarely wait for the same lock.
const SHARDS: usize = 32;

/// Largest latency recorded, in ns (100 s); longer ones are clamped to it.
const MAX_LATENCY_NS: u64 = 100_000_000_000;

/// Errors kept word for word for the report; the rest are only counted.
const KEPT_ERRORS: usize = 8;

struct Shard {
    histogram: Histogram<u64>,
    delivered: u64,
}

/// Shared by every subscriber (or publisher) task of one system: counts what arrives while
/// recording is on.
pub(crate) struct Recorder {
    clock: Clock,
    recording: AtomicBool,
    shards: Box<[Mutex<Shard>]>,
    /// Deliveries since the start, recording or not: the publisher's end-to-end window reads it.
    delivered_total: AtomicU64,
    /// Subscriber connections that are up (connected, subscribed).
    pub(crate) connected: AtomicUsize,
    slow_consumer: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    error_samples: Mutex<Vec<String>>,
}

impl Recorder {
    /// A recorder on `clock`, not recording.
    pub(crate) fn new(clock: Clock) -> Recorder {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    histogram: new_histogram(),
                    delivered: 0,
                })
            })
            .collect();
        Recorder {
            clock,
            recording: AtomicBool::new(false),
            shards,
            delivered_total: AtomicU64::new(0),
            connected: AtomicUsize::new(0),
            slow_consumer: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            error_samples: Mutex::new(Vec::new()),
        }
    }

    /// The clock senders stamp with.
    pub(crate) fn clock(&self) -> Clock {
        self.clock
    }

    /// One frame arrived at subscriber `shard`: counts it and, when it carries a send time,
    /// its latency.
    pub(crate) fn delivered(&self, shard: usize, frame: &[u8]) {
        self.delivered_total.fetch_add(1, Ordering::Relaxed);
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let now = self.clock.now_ns();
        let latency = sent_at(frame).map(|t| now.saturating_sub(t));
        self.record(shard, latency);
    }

    /// Counts one completion (an acknowledgement, a connect, a token) that took `latency_ns`.
    pub(crate) fn completed(&self, shard: usize, latency_ns: u64) {
        self.delivered_total.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) {
            self.record(shard, Some(latency_ns));
        }
    }

    fn record(&self, shard: usize, latency_ns: Option<u64>) {
        let mut s = match self.shards[shard % SHARDS].lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        s.delivered += 1;
        if let Some(ns) = latency_ns {
            s.histogram.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
        }
    }

    /// Deliveries since the start.
    pub(crate) fn delivered_total(&self) -> u64 {
        self.delivered_total.load(Ordering::Relaxed)
    }

    /// Counts a connection closed by the server as a slow consumer.
    pub(crate) fn slow_consumer(&self) {
        self.slow_consumer.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reconnection of a subscriber.
    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error, keeping the first few messages.
    pub(crate) fn error(&self, what: impl std::fmt::Display) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if (n as usize) < KEPT_ERRORS {
            let mut kept = match self.error_samples.lock() {
                Ok(k) => k,
                Err(poisoned) => poisoned.into_inner(),
            };
            kept.push(what.to_string());
        }
    }

    /// Errors so far.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Clears the phase counters and starts recording.
    pub(crate) fn start(&self) {
        for shard in self.shards.iter() {
            let mut s = match shard.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            s.histogram.reset();
            s.delivered = 0;
        }
        self.slow_consumer.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        self.reconnects.store(0, Ordering::Relaxed);
        match self.error_samples.lock() {
            Ok(mut k) => k.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Stops recording and returns what the phase counted.
    pub(crate) fn stop(&self) -> Counted {
        self.recording.store(false, Ordering::Relaxed);
        let mut histogram = new_histogram();
        let mut delivered = 0;
        for shard in self.shards.iter() {
            let s = match shard.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            delivered += s.delivered;
            // Same bounds on both sides: adding cannot fail.
            let _ = histogram.add(&s.histogram);
        }
        let error_samples = match self.error_samples.lock() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        Counted {
            delivered,
            latency: Latency::of(&histogram),
            slow_consumer: self.slow_consumer.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            error_samples,
        }
    }

    /// Waits until deliveries stop for `quiet`, at most `limit`.
    pub(crate) async fn settle(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = self.delivered_total();
        let mut still_since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.delivered_total();
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() >= quiet {
                return;
            }
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // Valid constant bounds: 1 ns to 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// What one phase counted.
#[derive(Debug, Clone)]
pub(crate) struct Counted {
    /// Deliveries (or completions) while recording.
    pub(crate) delivered: u64,
    /// Their latency, when any carried a time.
    pub(crate) latency: Option<Latency>,
    /// Connections the server closed as slow consumers.
    pub(crate) slow_consumer: u64,
    /// Errors.
    pub(crate) errors: u64,
    /// Subscriber reconnections.
    pub(crate) reconnects: u64,
    /// The first few error messages.
    pub(crate) error_samples: Vec<String>,
}

/// A latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Latency {
    /// Samples.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Largest.
    pub(crate) max_us: f64,
    /// Mean.
    pub(crate) mean_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Latency> {
        let us = |ns: u64| ns as f64 / 1_000.0;
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1_000.0,
        })
    }
}

/// CPU time and memory of one process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcSample {
    at: Instant,
    cpu_ticks: u64,
    /// Resident set size, in bytes.
    pub(crate) rss_bytes: u64,
}

/// Usage of a process over a phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ProcUsage {
    /// CPU used, in percent of one core (200 is both cores of a 2-core machine).
    pub(crate) cpu_pct: f64,
    /// RSS at the end of the phase, in bytes.
    pub(crate) rss_bytes: u64,
}

impl ProcSample {
    /// Reads the process now; `None` when it is gone or `/proc` is unreadable.
    pub(crate) fn read(pid: u32) -> Option<ProcSample> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces: count fields after its closing paren.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after `state`.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(ProcSample {
            at,
            cpu_ticks: utime + stime,
            rss_bytes: rss_kib * 1024,
        })
    }

    /// Usage between `self` and a later sample.
    pub(crate) fn usage_until(&self, later: &ProcSample) -> ProcUsage {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let cpu_s = later.cpu_ticks.saturating_sub(self.cpu_ticks) as f64 / clock_ticks();
        ProcUsage {
            cpu_pct: 100.0 * cpu_s / secs,
            rss_bytes: later.rss_bytes,
        }
    }
}

/// Samples of several processes that count as one system (the nodes of a cluster).
#[derive(Debug, Clone)]
pub(crate) struct GroupSample(Vec<ProcSample>);

impl GroupSample {
    /// Reads every process of `pids` now; `None` when any is gone (or `pids` is empty).
    pub(crate) fn read(pids: &[u32]) -> Option<GroupSample> {
        if pids.is_empty() {
            return None;
        }
        pids.iter()
            .map(|p| ProcSample::read(*p))
            .collect::<Option<Vec<_>>>()
            .map(GroupSample)
    }

    /// Their usage together between `self` and a later sample of the same processes: CPU
    /// and RSS summed.
    pub(crate) fn usage_until(&self, later: &GroupSample) -> ProcUsage {
        self.0.iter().zip(&later.0).fold(
            ProcUsage {
                cpu_pct: 0.0,
                rss_bytes: 0,
            },
            |sum, (a, b)| {
                let u = a.usage_until(b);
                ProcUsage {
                    cpu_pct: sum.cpu_pct + u.cpu_pct,
                    rss_bytes: sum.rss_bytes + u.rss_bytes,
                }
            },
        )
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Open file descriptors of a process.
pub(crate) fn open_files(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_counts_only_while_recording() {
        let clock = Clock::new();
        let r = Recorder::new(clock);
        r.delivered(0, br#"{"t":1}"#);
        r.start();
        r.delivered(1, br#"{"type":"event","data":{"t":1}}"#);
        r.delivered(2, b"no time");
        r.error("x");
        let c = r.stop();
        assert_eq!(c.delivered, 2);
        assert_eq!(c.latency.map(|l| l.count), Some(1));
        assert_eq!(c.errors, 1);
        assert_eq!(r.delivered_total(), 3);
    }

    #[test]
    fn own_process_is_readable_from_proc() {
        let a = ProcSample::read(std::process::id()).expect("/proc/self");
        let b = ProcSample::read(std::process::id()).expect("/proc/self");
        assert!(a.rss_bytes > 0);
        assert!(a.usage_until(&b).cpu_pct >= 0.0);
    }
}
