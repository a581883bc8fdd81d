//! Smoke run of the load harness, so it cannot rot: a broker in this process (the `scopecast`
//! binary is not built for this package's tests), 5 subscribers, 1-second phases, the ceiling
//! baseline (and nats when nats-server is installed). The full run is not part of CI.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use scopecast_broker::{Config, LogMode};
use serde_json::Value;

const ADMIN_TOKEN: &str = "smoke-admin-token-0123456789abcdefghijklmnopqrstuvwxyz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_smoke_run_delivers_events_without_errors() {
    let data = tempfile::tempdir().expect("temporary folder");
    let mut config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        log: LogMode::Memory,
        data_dir: data.path().join("broker"),
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        shutdown_grace_ms: 1_000,
        ..Config::default()
    };
    config.limits.publish_rate_per_sec = 0;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let broker = tokio::spawn(scopecast_broker::run(listener, config, async move {
        let _ = stopped.await;
    }));

    let json = data.path().join("smoke.json");
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scopecast-bench"));
    cmd.args([
        "run",
        "--scenario",
        "fanout",
        "--subscribers",
        "5",
        "--payload",
        "200",
        "--seconds",
        "1",
        "--loads",
        "50",
        "--baselines",
        "ceiling,nats",
        "--broker-url",
    ])
    .arg(format!("http://{addr}"))
    // The broker runs in this process: its CPU and RSS are this process's.
    .args(["--broker-pid", &std::process::id().to_string()])
    .arg("--json")
    .arg(&json)
    .env("SCOPECAST_ADMIN_TOKEN", ADMIN_TOKEN);
    let output = tokio::time::timeout(
        Duration::from_secs(60),
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
        "harness failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("scopecast"), "table printed: {stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("JSON parses");
    let run = &report["runs"][0];
    assert_eq!(run["scenario"], "fanout");
    let systems = run["systems"].as_array().expect("systems");
    let names: Vec<&str> = systems
        .iter()
        .filter_map(|s| s["system"].as_str())
        .collect();
    assert!(names.contains(&"scopecast"), "{names:?}");
    assert!(names.contains(&"ceiling"), "{names:?}");
    for s in systems {
        assert!(s["failure"].is_null(), "{}: {}", s["system"], s["failure"]);
        let phases = s["phases"].as_array().expect("phases");
        assert_eq!(phases.len(), 2, "max and 50%: {s}");
        for p in phases {
            assert!(
                p["throughput_per_s"].as_f64().unwrap_or(0.0) > 0.0,
                "{}: nothing delivered: {p}",
                s["system"]
            );
            assert_eq!(p["errors"], 0, "{}: errors: {p}", s["system"]);
            assert!(p["latency"]["p50_us"].as_f64().is_some(), "latency: {p}");
        }
    }
    assert!(
        run["ratios"]["scopecast_over_ceiling"].as_f64().is_some(),
        "ratio: {}",
        run["ratios"]
    );
    assert!(json.with_extension("svg").is_file(), "plot written");
    eprintln!("smoke run took {took:?}");

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), broker).await;
}
