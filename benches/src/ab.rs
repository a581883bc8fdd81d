//! A/B: two broker binaries (say the previous commit's and this one's) driven by the same
//! scenario in the same run, in interleaved pairs, compared on the scenario's headline measure
//! (the `max` phase's throughput: events delivered/s, acknowledged publishes/s for `durable`).
//!
//! Each run starts its own broker from the binary (fresh port, fresh data folder, the same
//! settings) through the scenario machinery of `run` and `all`, without baselines and without
//! the fixed loads. The order within a pair alternates (A B, B A, A B, ...) so a drift of the
//! machine over the run weighs on both sides alike. The report gives each side's median, the
//! median of the per-pair ratios B/A, their spread (min..max and the interquartile range), and
//! a verdict against a tolerance.

use std::path::PathBuf;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::ASCII_MARKDOWN};
use serde::Serialize;

use crate::load::LoadOptions;
use crate::payload::{Clock, PayloadKind};
use crate::report::Machine;
use crate::scenario::{self, BrokerTarget, Params, Scenario};
use crate::scopecast::LogKind;
use crate::system::SystemKind;

/// The runs compared when none are named: the three of issue 14.
pub(crate) const DEFAULT_RUNS: &str = "fanout-n1000-200B,fanout-n1-encounter,durable-p4-w256-1024B";

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Side {
    /// Its name in the table (`A`, `B`, or a commit).
    pub(crate) name: String,
    /// The broker binary.
    pub(crate) bin: PathBuf,
    /// Settings it runs with (`SCOPECAST_*` variables), besides the harness's.
    pub(crate) env: Vec<(String, String)>,
}

/// What `ab` runs.
#[derive(Debug, Clone)]
pub(crate) struct AbPlan {
    /// The baseline ("before").
    pub(crate) a: Side,
    /// The candidate ("after").
    pub(crate) b: Side,
    /// A/B pairs per run.
    pub(crate) pairs: usize,
    /// The runs (sizes and settings; the broker is set per run).
    pub(crate) runs: Vec<Params>,
    /// Within this many percent of A (either way) is "within".
    pub(crate) tolerance_pct: f64,
}

/// Which side a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Which {
    /// The baseline.
    A,
    /// The candidate.
    B,
}

/// The order of the two runs of pair `i` (0-based): A first in even pairs, B first in odd ones.
pub(crate) fn pair_order(i: usize) -> [Which; 2] {
    if i.is_multiple_of(2) {
        [Which::A, Which::B]
    } else {
        [Which::B, Which::A]
    }
}

/// Parses a run name of the harness (the `run` column of BENCHMARKS.md, e.g.
/// `fanout-n1000-200B`, `fanout-n1-encounter`, `durable-p4-w256-1024B`,
/// `topics-t1000-n1000-p4-1024B`, `wildcards-n1000-w50-1024B`, `connect-c32`, `tokens-c8`)
/// into the run's sizes, on top of `base`.
///
/// # Errors
/// The name is not one the harness gives a run with a throughput (`idle` has none).
pub(crate) fn parse_run(name: &str, base: &Params) -> anyhow::Result<Params> {
    let mut parts: Vec<&str> = name.split('-').collect();
    // `connect-fresh-cN`: the connect storm with a token per connection.
    let fresh = parts.len() > 2 && parts[0] == "connect" && parts[1] == "fresh";
    if fresh {
        parts.remove(1);
    }
    let (scenario, payload_last) = match parts.first().copied() {
        Some("fanout") => (Scenario::Fanout, true),
        Some("topics") => (Scenario::Topics, true),
        Some("wildcards") => (Scenario::Wildcards, true),
        Some("durable") => (Scenario::Durable, true),
        Some("connect") => (Scenario::Connect, false),
        Some("tokens") => (Scenario::Tokens, false),
        Some("idle") => bail!("run {name:?}: idle measures memory, not throughput; not for ab"),
        _ => bail!(
            "run {name:?}: expected a run name such as fanout-n1000-200B, fanout-n1-encounter, \
             durable-p4-w256-1024B, topics-t1000-n1000-p4-1024B, wildcards-n1000-w50-1024B, \
             connect-c32, connect-fresh-c32 or tokens-c8"
        ),
    };
    let mut p = Params {
        scenario,
        baselines: Vec::new(),
        fresh_tokens: fresh,
        ..base.clone()
    };
    // What `all` gives each scenario besides the sizes in the name.
    match scenario {
        Scenario::Durable => p.subscribers = 1,
        Scenario::Topics => p.publishers = 4,
        _ => p.publishers = 1,
    }
    let mut sizes = &parts[1..];
    if payload_last {
        let Some((payload, rest)) = sizes.split_last() else {
            bail!("run {name:?}: no payload at the end (200B, 1024B, encounter)");
        };
        p.payload = payload
            .parse::<PayloadKind>()
            .with_context(|| format!("run {name:?}"))?;
        sizes = rest;
    }
    for part in sizes {
        let (key, value) = part.split_at(part.chars().next().map_or(0, char::len_utf8));
        let n: usize = value
            .parse()
            .with_context(|| format!("run {name:?}: {part:?} is not a letter and a number"))?;
        match (scenario, key) {
            (Scenario::Fanout | Scenario::Topics | Scenario::Wildcards, "n") => p.subscribers = n,
            (Scenario::Topics, "t") => p.topics = n,
            (Scenario::Topics | Scenario::Durable, "p") => p.publishers = n,
            (Scenario::Wildcards, "w") => p.wildcard_pct = u32::try_from(n.min(100))?,
            (Scenario::Durable, "w") => p.load.window = u32::try_from(n.max(1))?,
            (Scenario::Connect | Scenario::Tokens, "c") => p.concurrency = n.max(1),
            _ => bail!(
                "run {name:?}: {part:?} is not a size of {}",
                scenario.name()
            ),
        }
    }
    // The name must be the one the harness gives these sizes: no size left at its default by
    // a typo, nothing dropped.
    if !p.label().eq_ignore_ascii_case(name) {
        bail!(
            "run {name:?}: read as {:?}; name every size the way the harness does",
            p.label()
        );
    }
    Ok(p)
}

/// One broker run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AbRun {
    /// Pair number, from 1.
    pub(crate) pair: usize,
    /// Which binary.
    pub(crate) side: Which,
    /// The `max` phase's throughput (the run's unit); `None` when the run failed.
    pub(crate) value: Option<f64>,
    /// Errors counted in the `max` phase.
    pub(crate) errors: u64,
    /// Broker CPU over the `max` phase, percent of one core.
    pub(crate) broker_cpu_pct: Option<f64>,
    /// Harness CPU over the `max` phase, percent of one core.
    pub(crate) harness_cpu_pct: Option<f64>,
    /// Why the run has no value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failure: Option<String>,
}

/// Median, quartiles and range of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Spread {
    /// Values counted.
    pub(crate) count: usize,
    /// Median (the mean of the middle two for an even count).
    pub(crate) median: f64,
    /// First quartile (linear interpolation between order statistics).
    pub(crate) q1: f64,
    /// Third quartile.
    pub(crate) q3: f64,
    /// Smallest.
    pub(crate) min: f64,
    /// Largest.
    pub(crate) max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub(crate) fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let pos = q * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        Some(Spread {
            count: v.len(),
            median: at(0.5),
            q1: at(0.25),
            q3: at(0.75),
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// B against A for one run name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    /// The median ratio is within the tolerance.
    Within,
    /// B is faster by more than the tolerance.
    Faster,
    /// B is slower by more than the tolerance.
    Slower,
    /// No pair completed.
    Failed,
}

impl Verdict {
    /// The verdict for a median ratio B/A (higher is better) at `tolerance_pct`.
    pub(crate) fn of(median_ratio: Option<f64>, tolerance_pct: f64) -> Verdict {
        let t = tolerance_pct / 100.0;
        match median_ratio {
            None => Verdict::Failed,
            Some(r) if r < 1.0 - t => Verdict::Slower,
            Some(r) if r > 1.0 + t => Verdict::Faster,
            Some(_) => Verdict::Within,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Verdict::Within => "within",
            Verdict::Faster => "faster",
            Verdict::Slower => "slower",
            Verdict::Failed => "failed",
        }
    }
}

/// The comparison for one run name.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AbResult {
    /// The run name, e.g. `fanout-n1000-200B`.
    pub(crate) label: String,
    /// The scenario.
    pub(crate) scenario: String,
    /// What the values count (higher is better).
    pub(crate) unit: &'static str,
    /// Every broker run, in the order run.
    pub(crate) runs: Vec<AbRun>,
    /// A's values.
    pub(crate) a: Option<Spread>,
    /// B's values.
    pub(crate) b: Option<Spread>,
    /// B/A of every pair where both runs have a value, by pair.
    pub(crate) ratios: Vec<f64>,
    /// Their spread; `ratio.median` is the headline.
    pub(crate) ratio: Option<Spread>,
    /// Against the tolerance.
    pub(crate) verdict: Verdict,
}

impl AbResult {
    /// Summarises `runs` (of `pairs` pairs).
    fn new(params: &Params, runs: Vec<AbRun>, pairs: usize, tolerance_pct: f64) -> AbResult {
        let values = |side: Which| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.side == side)
                .filter_map(|r| r.value)
                .collect()
        };
        let value = |pair: usize, side: Which| {
            runs.iter()
                .find(|r| r.pair == pair && r.side == side)
                .and_then(|r| r.value)
        };
        let ratios: Vec<f64> = (1..=pairs)
            .filter_map(|i| match (value(i, Which::A), value(i, Which::B)) {
                (Some(a), Some(b)) if a > 0.0 => Some(b / a),
                _ => None,
            })
            .collect();
        let ratio = Spread::of(&ratios);
        AbResult {
            label: params.label(),
            scenario: params.scenario.name().to_owned(),
            unit: params.scenario.unit(),
            a: Spread::of(&values(Which::A)),
            b: Spread::of(&values(Which::B)),
            verdict: Verdict::of(ratio.map(|r| r.median), tolerance_pct),
            ratio,
            ratios,
            runs,
        }
    }
}

/// The whole output of `ab`.
#[derive(Debug, Serialize)]
pub(crate) struct AbReport {
    /// The command line that produced it.
    pub(crate) command: String,
    /// When it started (UTC, RFC 3339).
    pub(crate) date: String,
    /// What it ran on.
    pub(crate) machine: Machine,
    /// The baseline.
    pub(crate) a: Side,
    /// The candidate.
    pub(crate) b: Side,
    /// Pairs per run name.
    pub(crate) pairs: usize,
    /// The verdict's tolerance, percent.
    pub(crate) tolerance_pct: f64,
    /// Length of each `max` phase, s.
    pub(crate) seconds: f64,
    /// One per run name.
    pub(crate) results: Vec<AbResult>,
}

/// Runs the plan: for each run name, `pairs` interleaved pairs of broker runs.
pub(crate) async fn run(plan: &AbPlan, command: String, date: String) -> AbReport {
    let clock = Clock::new();
    let mut results = Vec::new();
    for params in &plan.runs {
        let label = params.label();
        let mut runs = Vec::with_capacity(plan.pairs * 2);
        for i in 0..plan.pairs {
            for side in pair_order(i) {
                let s = match side {
                    Which::A => &plan.a,
                    Which::B => &plan.b,
                };
                let p = Params {
                    broker: BrokerTarget::Start(s.bin.clone()),
                    broker_env: s.env.clone(),
                    ..params.clone()
                };
                let run = one(&p, clock, i + 1, side).await;
                eprintln!(
                    "[{label}] pair {} {side:?}: {}",
                    i + 1,
                    match (run.value, &run.failure) {
                        (Some(v), _) => format!("{v:.0} {}", params.scenario.unit()),
                        (None, Some(f)) => format!("failed: {f}"),
                        (None, None) => "failed".to_owned(),
                    }
                );
                runs.push(run);
            }
        }
        results.push(AbResult::new(params, runs, plan.pairs, plan.tolerance_pct));
    }
    AbReport {
        command,
        date,
        machine: Machine::read(),
        a: plan.a.clone(),
        b: plan.b.clone(),
        pairs: plan.pairs,
        tolerance_pct: plan.tolerance_pct,
        seconds: plan.runs.first().map_or(0.0, |p| p.load.seconds),
        results,
    }
}

/// One broker run through the scenario machinery: its `max` phase.
async fn one(params: &Params, clock: Clock, pair: usize, side: Which) -> AbRun {
    let report = scenario::run(params, clock).await;
    let mut run = AbRun {
        pair,
        side,
        value: None,
        errors: 0,
        broker_cpu_pct: None,
        harness_cpu_pct: None,
        failure: None,
    };
    let Some(s) = report
        .systems
        .iter()
        .find(|s| s.system == SystemKind::Scopecast)
    else {
        run.failure = Some("the broker did not run".to_owned());
        return run;
    };
    match s.phases.iter().find(|p| p.phase == "max") {
        Some(max) => {
            run.value = Some(max.throughput_per_s);
            run.errors = max.errors;
            run.broker_cpu_pct = max.server.map(|u| u.cpu_pct);
            run.harness_cpu_pct = max.harness_cpu_pct;
        }
        None => run.failure = Some("no max phase".to_owned()),
    }
    // A failure after the max phase (e.g. the broker exiting) keeps the value but is said.
    if let Some(f) = &s.failure {
        run.failure = Some(f.clone());
    }
    run
}

impl AbReport {
    /// The comparison as a Markdown table, with each run name's pair ratios below.
    pub(crate) fn table(&self) -> String {
        let mut t = Table::new();
        let (a, b) = (&self.a.name, &self.b.name);
        t.load_preset(ASCII_MARKDOWN).set_header(vec![
            "run".to_owned(),
            "measure (max phase)".to_owned(),
            format!("{a} median"),
            format!("{b} median"),
            format!("{b}/{a} median"),
            format!("{b}/{a} min..max"),
            format!("{b}/{a} IQR"),
            "pairs".to_owned(),
            "errors".to_owned(),
            format!("verdict (±{}%)", self.tolerance_pct),
        ]);
        let num = |s: Option<Spread>| s.map_or("-".to_owned(), |s| si(s.median));
        for r in &self.results {
            let ratio = r.ratio;
            t.add_row(vec![
                r.label.clone(),
                r.unit.to_owned(),
                num(r.a),
                num(r.b),
                ratio.map_or("-".to_owned(), |s| format!("{:.3}", s.median)),
                ratio.map_or("-".to_owned(), |s| format!("{:.3}..{:.3}", s.min, s.max)),
                ratio.map_or("-".to_owned(), |s| format!("{:.3}..{:.3}", s.q1, s.q3)),
                format!("{}/{}", r.ratios.len(), self.pairs),
                r.runs.iter().map(|x| x.errors).sum::<u64>().to_string(),
                r.verdict.name().to_owned(),
            ]);
        }
        let env = |s: &Side| {
            s.env
                .iter()
                .map(|(k, v)| format!(" {k}={v}"))
                .collect::<String>()
        };
        let mut out = format!(
            "### A/B: {a} = {}{}, {b} = {}{} ({} pairs, {} s max phases)\n\n{t}\n\n",
            self.a.bin.display(),
            env(&self.a),
            self.b.bin.display(),
            env(&self.b),
            self.pairs,
            self.seconds,
        );
        for r in &self.results {
            let pairs: Vec<String> = (1..=self.pairs)
                .map(|i| {
                    let v = |side| {
                        r.runs
                            .iter()
                            .find(|x| x.pair == i && x.side == side)
                            .and_then(|x| x.value)
                            .map_or("failed".to_owned(), si)
                    };
                    let first = match pair_order(i - 1)[0] {
                        Which::A => a,
                        Which::B => b,
                    };
                    format!("{} / {} ({first} first)", v(Which::A), v(Which::B))
                })
                .collect();
            out.push_str(&format!(
                "- {} per pair, {a} / {b}: {}\n",
                r.label,
                pairs.join("; ")
            ));
            for x in r.runs.iter().filter(|x| x.failure.is_some()) {
                let side = match x.side {
                    Which::A => a,
                    Which::B => b,
                };
                out.push_str(&format!(
                    "  - pair {} {side}: {}\n",
                    x.pair,
                    x.failure.as_deref().unwrap_or_default()
                ));
            }
        }
        out
    }
}

/// A throughput for a table: 2.61 M, 109.9 k, 105.
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// The sizes every run name starts from (those of `all`), with `load` and `log`.
pub(crate) fn base_params(load: LoadOptions, log: LogKind) -> Params {
    Params {
        scenario: Scenario::Fanout,
        subscribers: 1,
        payload: PayloadKind::Bytes(200),
        topics: 1000,
        publishers: 1,
        wildcard_pct: 50,
        connections: Vec::new(),
        per_process: 5000,
        concurrency: 32,
        load,
        baselines: Vec::new(),
        broker: BrokerTarget::Start(PathBuf::new()),
        broker_env: Vec::new(),
        log,
        cluster_parts: crate::cluster::Part::ALL.to_vec(),
        fresh_tokens: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Params {
        base_params(
            LoadOptions {
                seconds: 3.0,
                loads: Vec::new(),
                rates: Vec::new(),
                window: 256,
                inflight: 500,
                source_ips: 4,
            },
            LogKind::Memory,
        )
    }

    #[test]
    fn run_names_of_the_harness_parse_to_their_sizes() {
        let p = parse_run("fanout-n1000-200B", &base()).expect("fanout");
        assert_eq!(p.scenario, Scenario::Fanout);
        assert_eq!((p.subscribers, p.publishers), (1000, 1));
        assert_eq!(p.payload, PayloadKind::Bytes(200));

        let p = parse_run("fanout-n1-encounter", &base()).expect("encounter");
        assert_eq!((p.subscribers, p.payload), (1, PayloadKind::Encounter));

        let p = parse_run("durable-p4-w256-1024B", &base()).expect("durable");
        assert_eq!(p.scenario, Scenario::Durable);
        assert_eq!((p.subscribers, p.publishers, p.load.window), (1, 4, 256));
        assert_eq!(p.payload, PayloadKind::Bytes(1024));

        let p = parse_run("topics-t1000-n1000-p4-1024B", &base()).expect("topics");
        assert_eq!((p.topics, p.subscribers, p.publishers), (1000, 1000, 4));
        let p = parse_run("wildcards-n1000-w50-1024B", &base()).expect("wildcards");
        assert_eq!((p.subscribers, p.wildcard_pct), (1000, 50));
        let p = parse_run("connect-c32", &base()).expect("connect");
        assert_eq!((p.scenario, p.concurrency), (Scenario::Connect, 32));
        assert!(!p.fresh_tokens);
        let p = parse_run("connect-fresh-c16", &base()).expect("connect with fresh tokens");
        assert_eq!(
            (p.scenario, p.concurrency, p.fresh_tokens),
            (Scenario::Connect, 16, true)
        );
        assert!(parse_run("fanout-n5-200b", &base()).is_ok(), "any case");
    }

    #[test]
    fn run_names_that_are_not_the_harness_s_are_refused() {
        for bad in [
            "fanout",
            "fanout-n1000",
            "fanout-1000-200B",
            "fanout-n1000-w5-200B",
            "durable-p4-1024B",
            "idle-1000",
            "bogus-n1-200B",
            "fanout-n1000-3B",
        ] {
            assert!(parse_run(bad, &base()).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn pairs_alternate_which_side_goes_first() {
        assert_eq!(pair_order(0), [Which::A, Which::B]);
        assert_eq!(pair_order(1), [Which::B, Which::A]);
        assert_eq!(pair_order(4), [Which::A, Which::B]);
    }

    #[test]
    fn spread_gives_median_quartiles_and_range() {
        let s = Spread::of(&[1.04, 0.96, 1.0, 1.10, 0.98]).expect("values");
        assert_eq!(s.count, 5);
        assert!((s.median - 1.0).abs() < 1e-12);
        assert!((s.q1 - 0.98).abs() < 1e-12 && (s.q3 - 1.04).abs() < 1e-12);
        assert_eq!((s.min, s.max), (0.96, 1.10));
        let even = Spread::of(&[2.0, 1.0, 4.0, 3.0]).expect("values");
        assert!((even.median - 2.5).abs() < 1e-12);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn verdict_compares_the_median_ratio_with_the_tolerance() {
        assert_eq!(Verdict::of(Some(0.96), 5.0), Verdict::Within);
        assert_eq!(Verdict::of(Some(1.05), 5.0), Verdict::Within);
        assert_eq!(Verdict::of(Some(0.94), 5.0), Verdict::Slower);
        assert_eq!(Verdict::of(Some(1.06), 5.0), Verdict::Faster);
        assert_eq!(Verdict::of(None, 5.0), Verdict::Failed);
    }

    #[test]
    fn ratios_pair_each_a_with_its_own_b_and_skip_failed_pairs() {
        let run = |pair, side, value: Option<f64>| AbRun {
            pair,
            side,
            value,
            errors: 0,
            broker_cpu_pct: None,
            harness_cpu_pct: None,
            failure: value.is_none().then(|| "x".to_owned()),
        };
        let runs = vec![
            run(1, Which::A, Some(100.0)),
            run(1, Which::B, Some(90.0)),
            run(2, Which::B, Some(220.0)),
            run(2, Which::A, Some(200.0)),
            run(3, Which::A, None),
            run(3, Which::B, Some(50.0)),
        ];
        let r = AbResult::new(&base(), runs, 3, 5.0);
        assert_eq!(r.ratios.len(), 2);
        assert!((r.ratios[0] - 0.9).abs() < 1e-12 && (r.ratios[1] - 1.1).abs() < 1e-12);
        assert_eq!(r.a.map(|s| s.count), Some(2));
        assert_eq!(r.b.map(|s| s.count), Some(3));
        assert_eq!(r.verdict, Verdict::Within);
    }
}
