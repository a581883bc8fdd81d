//! Smoke run of `scopecast-bench ab`, so the A/B mode cannot rot: the same `scopecast` binary
//! as A and B, one pair, a tiny fan-out. It checks the report's shape, never its timings.
//!
//! The broker binary is the one next to this test's target folder (`target/debug/scopecast`):
//! `cargo test --workspace` builds it for the broker's own tests; when it is missing (e.g.
//! `cargo test -p scopecast-bench` on a fresh checkout) the test builds it with cargo.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `target/<profile>`: this test runs as `target/<profile>/deps/ab-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .to_path_buf()
}

/// The `scopecast` binary of this build, built first if it is not there.
fn broker_binary() -> PathBuf {
    let dir = profile_dir();
    let bin = dir.join("scopecast");
    if bin.is_file() {
        return bin;
    }
    let target = dir.parent().expect("target folder");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--bin", "scopecast", "--target-dir"])
        .arg(target)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build --bin scopecast");
    assert!(status.success(), "cargo build --bin scopecast: {status}");
    assert!(bin.is_file(), "{} built", bin.display());
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_with_one_binary_on_both_sides_reports_one_pair_per_run() {
    let bin = tokio::task::spawn_blocking(broker_binary)
        .await
        .expect("the broker binary");
    let out = tempfile::tempdir().expect("temporary folder");
    let json = out.path().join("ab.json");
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scopecast-bench"));
    cmd.args(["ab", "--a"])
        .arg(&bin)
        .arg("--b")
        .arg(&bin)
        .args([
            "--a-name",
            "old",
            "--b-name",
            "new",
            "--pairs",
            "1",
            "--runs",
            "fanout-n3-200B",
            "--seconds",
            "0.5",
            "--json",
        ])
        .arg(&json);
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("the harness finished in time")
    .expect("join")
    .expect("run the harness");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ab failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    // The Markdown table: a header naming both sides, one row for the run.
    assert!(stdout.contains("| run "), "table printed: {stdout}");
    assert!(stdout.contains("new/old median"), "ratio column: {stdout}");
    assert!(
        stdout.contains("| fanout-n3-200B "),
        "the run's row: {stdout}"
    );

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("JSON parses");
    assert_eq!(report["pairs"], 1);
    assert_eq!(report["a"]["name"], "old");
    assert_eq!(report["b"]["name"], "new");
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r["label"], "fanout-n3-200B");
    assert_eq!(r["scenario"], "fanout");
    let runs = r["runs"].as_array().expect("runs");
    let sides: Vec<&str> = runs.iter().filter_map(|x| x["side"].as_str()).collect();
    assert_eq!(sides, ["A", "B"], "pair 1 runs A first");
    for x in runs {
        assert!(x["failure"].is_null(), "run failed: {x}");
        assert!(x["value"].as_f64().unwrap_or(0.0) > 0.0, "no value: {x}");
    }
    assert_eq!(r["ratios"].as_array().map(Vec::len), Some(1), "{r}");
    for key in ["median", "min", "max", "q1", "q3"] {
        assert!(r["ratio"][key].as_f64().is_some(), "ratio.{key}: {r}");
    }
    assert!(r["a"]["median"].as_f64().is_some() && r["b"]["median"].as_f64().is_some());
    let verdict = r["verdict"].as_str().expect("verdict");
    assert!(
        ["within", "faster", "slower"].contains(&verdict),
        "{verdict}"
    );
    eprintln!("ab smoke run took {took:?}");
}
