//! Results: one [`RunReport`] per scenario run, each with a [`SystemReport`] per system and
//! the ratios; printed as a table and written as JSON.

use comfy_table::{Table, presets::ASCII_MARKDOWN};
use serde::Serialize;

use crate::stats::{Latency, ProcUsage};
use crate::system::SystemKind;

/// The whole output of one harness command.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// The command line that produced it.
    pub(crate) command: String,
    /// When it started (UTC, RFC 3339).
    pub(crate) date: String,
    /// What it ran on.
    pub(crate) machine: Machine,
    /// One per scenario run.
    pub(crate) runs: Vec<RunReport>,
}

/// The machine.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    /// Logical CPUs.
    pub(crate) cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// MemTotal, GiB.
    pub(crate) memory_gib: f64,
    /// `uname -r`-like kernel release.
    pub(crate) kernel: String,
    /// The harness's soft RLIMIT_NOFILE (the broker raises its own to the hard limit).
    pub(crate) open_files_limit: String,
}

impl Machine {
    /// Reads /proc.
    pub(crate) fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_files_limit = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| {
                l.split_whitespace()
                    .skip(3)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel,
            open_files_limit,
        }
    }
}

/// One scenario at one size, against every system.
#[derive(Debug, Serialize)]
pub(crate) struct RunReport {
    /// `fanout`, `topics`, `wildcards`, `connect`, `idle`, `tokens`, `durable`.
    pub(crate) scenario: String,
    /// A short name of scenario and size, e.g. `fanout-n1000-200B`.
    pub(crate) label: String,
    /// What `throughput_per_s` counts.
    pub(crate) unit: &'static str,
    /// The sizes.
    pub(crate) params: serde_json::Value,
    /// One per system.
    pub(crate) systems: Vec<SystemReport>,
    /// Scopecast against the baselines.
    pub(crate) ratios: Ratios,
    /// Baselines left out, and why.
    pub(crate) skipped: Vec<String>,
    /// The latency-versus-load plot, when written.
    pub(crate) plot: Option<String>,
    /// The `cluster` scenario's ratios and failover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster: Option<crate::cluster::ClusterSummary>,
    /// The `webhooks` scenario's rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) webhooks: Option<crate::webhooks::WebhookSummary>,
}

/// One system's results.
#[derive(Debug, Serialize)]
pub(crate) struct SystemReport {
    /// Which.
    pub(crate) system: SystemKind,
    /// How it was set up, where a run has several set-ups of one system (`cluster`:
    /// `single-redb-fsync`, `cluster-r1`, `cluster-r3`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) config: Option<String>,
    /// Its version, when known.
    pub(crate) version: Option<String>,
    /// Measured phases: `max` first, then the fixed loads.
    pub(crate) phases: Vec<PhaseReport>,
    /// Idle connections (scenario `idle`).
    pub(crate) idle: Vec<IdleLevel>,
    /// Why it stopped early, if it did.
    pub(crate) failure: Option<String>,
}

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseReport {
    /// `max` (as fast as the system goes) or the offered load in percent of it (`25%`).
    pub(crate) phase: String,
    /// Length of the measurement, s.
    pub(crate) seconds: f64,
    /// Publish rate asked for, events/s (`None`: as fast as possible).
    pub(crate) offered_per_s: Option<f64>,
    /// Publish rate reached, events/s (publish scenarios).
    pub(crate) published_per_s: Option<f64>,
    /// The scenario's measure (see the run's `unit`).
    pub(crate) throughput_per_s: f64,
    /// Publish-to-deliver latency (connect, token or acknowledgement latency in those
    /// scenarios).
    pub(crate) latency: Option<Latency>,
    /// Publish-to-acknowledgement latency (Scopecast).
    pub(crate) ack_latency: Option<Latency>,
    /// Publish-to-deliver latency where `latency` is the acknowledgement's (`durable`,
    /// `cluster`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deliver_latency: Option<Latency>,
    /// The server process over the phase.
    pub(crate) server: Option<ProcUsage>,
    /// The harness's own CPU over the phase (it shares the machine).
    pub(crate) harness_cpu_pct: Option<f64>,
    /// Errors (refused requests, unexpected closes, failed connects).
    pub(crate) errors: u64,
    /// Connections the server closed as slow consumers.
    pub(crate) slow_consumer_closes: u64,
    /// Subscriber reconnections.
    pub(crate) reconnects: u64,
    /// The first few errors, word for word.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) error_samples: Vec<String>,
    /// The broker's own publish-to-deliver histogram over the phase (Scopecast only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) broker_deliver: Option<crate::broker_metrics::BrokerLatency>,
}

/// Memory of idle authenticated connections at one level.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleLevel {
    /// Connections held.
    pub(crate) connections: usize,
    /// Connections that were up when measured.
    pub(crate) connected: usize,
    /// Server RSS, bytes.
    pub(crate) rss_bytes: u64,
    /// RSS added per connection since the level before (or since no connection, for the
    /// first level), bytes.
    pub(crate) rss_per_connection: f64,
    /// RSS added per connection since no connection (before the token requests): the
    /// average over every connection held, fixed start-up costs included, bytes. The
    /// headline figure.
    pub(crate) rss_per_connection_overall: f64,
    /// Server open file descriptors.
    pub(crate) open_files: Option<usize>,
    /// Client processes used.
    pub(crate) processes: usize,
}

/// Scopecast divided by each baseline, on the scenario's headline measure.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Ratios {
    /// What is divided: max throughput, or RSS per idle connection.
    pub(crate) measure: String,
    /// Scopecast / NATS.
    pub(crate) scopecast_over_nats: Option<f64>,
    /// Scopecast / ceiling.
    pub(crate) scopecast_over_ceiling: Option<f64>,
}

impl SystemReport {
    /// Its name in tables and plots: the system, and its set-up when there is one.
    pub(crate) fn label(&self) -> String {
        match &self.config {
            Some(c) => format!("{} {c}", self.system.name()),
            None => self.system.name().to_owned(),
        }
    }
}

impl RunReport {
    /// Fills in the ratios from the systems' results.
    pub(crate) fn compute_ratios(&mut self) {
        let headline = |kind: SystemKind| -> Option<f64> {
            let s = self.systems.iter().find(|s| s.system == kind)?;
            if let Some(last) = s.idle.last() {
                return Some(last.rss_per_connection_overall);
            }
            s.phases
                .iter()
                .find(|p| p.phase == "max")
                .map(|p| p.throughput_per_s)
        };
        let ours = headline(SystemKind::Scopecast);
        let ratio = |other: Option<f64>| match (ours, other) {
            (Some(a), Some(b)) if b > 0.0 => Some((a / b * 1000.0).round() / 1000.0),
            _ => None,
        };
        let idle = self.systems.iter().any(|s| !s.idle.is_empty());
        self.ratios = Ratios {
            measure: if idle {
                "RSS added per idle connection since none, at the largest level (lower is better)"
                    .to_owned()
            } else {
                format!("max {} (higher is better)", self.unit)
            },
            scopecast_over_nats: ratio(headline(SystemKind::Nats)),
            scopecast_over_ceiling: ratio(headline(SystemKind::Ceiling)),
        };
    }

    /// The run as a Markdown table, with its ratios below.
    pub(crate) fn table(&self) -> String {
        let mut out = format!("### {} ({})\n\n", self.label, self.unit);
        if self.systems.iter().any(|s| !s.idle.is_empty()) {
            let mut t = Table::new();
            t.load_preset(ASCII_MARKDOWN).set_header(vec![
                "system",
                "connections",
                "up",
                "server RSS MiB",
                "RSS/conn since previous level KiB",
                "RSS/conn since none KiB",
                "server fds",
                "client procs",
            ]);
            for s in &self.systems {
                for l in &s.idle {
                    t.add_row(vec![
                        s.label(),
                        l.connections.to_string(),
                        l.connected.to_string(),
                        format!("{:.1}", l.rss_bytes as f64 / 1048576.0),
                        format!("{:.1}", l.rss_per_connection / 1024.0),
                        format!("{:.1}", l.rss_per_connection_overall / 1024.0),
                        l.open_files.map_or("-".to_owned(), |n| n.to_string()),
                        l.processes.to_string(),
                    ]);
                }
            }
            out.push_str(&t.to_string());
        } else {
            let mut t = Table::new();
            t.load_preset(ASCII_MARKDOWN).set_header(vec![
                "system",
                "load",
                "offered/s",
                "published/s",
                "throughput/s",
                "p50 us",
                "p99 us",
                "p99.9 us",
                "max us",
                "server CPU %",
                "server RSS MiB",
                "harness CPU %",
                "errors",
                "slow closes",
                "broker p50 / p99 <= ms",
            ]);
            let num = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
            for s in &self.systems {
                for p in &s.phases {
                    let l = p.latency;
                    t.add_row(vec![
                        s.label(),
                        p.phase.clone(),
                        num(p.offered_per_s),
                        num(p.published_per_s),
                        format!("{:.0}", p.throughput_per_s),
                        num(l.map(|l| l.p50_us)),
                        num(l.map(|l| l.p99_us)),
                        num(l.map(|l| l.p999_us)),
                        num(l.map(|l| l.max_us)),
                        num(p.server.map(|u| u.cpu_pct)),
                        p.server.map_or("-".to_owned(), |u| {
                            format!("{:.1}", u.rss_bytes as f64 / 1048576.0)
                        }),
                        num(p.harness_cpu_pct),
                        p.errors.to_string(),
                        p.slow_consumer_closes.to_string(),
                        p.broker_deliver.as_ref().filter(|b| b.batches > 0).map_or(
                            "-".to_owned(),
                            |b| {
                                let le = |v: Option<f64>| {
                                    v.map_or(">2500".to_owned(), |v| format!("{v}"))
                                };
                                format!("{} / {}", le(b.p50_le_ms), le(b.p99_le_ms))
                            },
                        ),
                    ]);
                }
            }
            out.push_str(&t.to_string());
        }
        out.push('\n');
        if let Some(c) = &self.cluster {
            out.push_str(&c.table());
        } else if let Some(w) = &self.webhooks {
            out.push_str(&w.table());
        } else {
            let r = &self.ratios;
            let show = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.3}"));
            out.push_str(&format!(
                "\nratios ({}): scopecast/nats {}, scopecast/ceiling {}\n",
                r.measure,
                show(r.scopecast_over_nats),
                show(r.scopecast_over_ceiling)
            ));
        }
        for s in &self.systems {
            if let Some(f) = &s.failure {
                out.push_str(&format!("{} failed: {f}\n", s.label()));
            }
        }
        for s in &self.skipped {
            out.push_str(&format!("skipped: {s}\n"));
        }
        if let Some(p) = &self.plot {
            out.push_str(&format!("plot: {p}\n"));
        }
        out
    }
}
