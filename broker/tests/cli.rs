//! The `scopecast` binary end to end: `serve` on port 0 in a temporary data folder, then the
//! admin and token subcommands against it, then SIGTERM.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::BIN;

/// A running broker with its own temporary data folder.
struct Served {
    inner: support::Served,
    data_dir: tempfile::TempDir,
}

impl std::ops::Deref for Served {
    type Target = support::Served;
    fn deref(&self) -> &support::Served {
        &self.inner
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut support::Served {
        &mut self.inner
    }
}

fn serve() -> Served {
    let data_dir = tempfile::tempdir().unwrap();
    Served {
        inner: support::serve(data_dir.path(), "memory"),
        data_dir,
    }
}

fn run(served: &Served, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--url", &served.url])
        .env("SCOPECAST_DATA_DIR", served.data_dir.path())
        .env_remove("SCOPECAST_ADMIN_TOKEN")
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn first_start_creates_a_private_admin_credential_and_signing_key() {
    let served = serve();
    let token = served.data_dir.path().join("admin.token");
    let keys = served.data_dir.path().join("signing-keys.json");
    assert!(token.is_file() && keys.is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [&token, &keys] {
            assert_eq!(
                std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                f.display()
            );
        }
    }
}

#[test]
fn app_lifecycle_and_token_through_the_cli() {
    let served = serve();
    let created = json(&run(
        &served,
        &[
            "app",
            "create",
            "--name",
            "Bed Board",
            "--vendor",
            "Acme",
            "--scope",
            "subscribe:adt.>",
            "--json",
        ],
    ));
    let np = &created["clients"]["non_production"];
    let client_id = np["client_id"].as_str().unwrap().to_owned();
    let secret = np["client_secret"].as_str().unwrap().to_owned();
    assert!(created["clients"]["production"]["client_secret"].is_string());

    // Inactive: the token command fails and says why.
    let out = run(
        &served,
        &[
            "token",
            "--client-id",
            &client_id,
            "--client-secret",
            &secret,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized_client"));

    json(&run(
        &served,
        &["app", "activate", &client_id, "--reason", "pilot", "--json"],
    ));
    let out = run(
        &served,
        &[
            "token",
            "--client-id",
            &client_id,
            "--client-secret",
            &secret,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        token.trim().split('.').count(),
        3,
        "stdout is the token alone"
    );

    let listed = json(&run(&served, &["app", "list", "--json"]));
    assert_eq!(listed["applications"].as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&secret),
        "a secret in `app list`"
    );
    let shown = json(&run(&served, &["app", "show", &client_id, "--json"]));
    assert_eq!(shown["name"], "Bed Board");

    let scoped = json(&run(
        &served,
        &[
            "app",
            "set-scope",
            shown["id"].as_str().unwrap(),
            "subscribe:adt.x",
            "--json",
        ],
    ));
    assert_eq!(scoped["scope"], "subscribe:adt.x");
    let rotated = json(&run(
        &served,
        &["app", "rotate-secret", &client_id, "--json"],
    ));
    assert_ne!(rotated["client_secret"], secret.as_str());
    let kid = json(&run(&served, &["keys", "rotate", "--json"]));
    assert!(kid["kid"].is_string());

    let table = run(&served, &["app", "list"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("Bed Board"));

    let bad = run(
        &served,
        &[
            "app",
            "create",
            "--name",
            "",
            "--vendor",
            "Acme",
            "--scope",
            "subscribe:a",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("name"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn keygen_then_private_key_jwt_through_the_cli() {
    let served = serve();
    let created = json(&run(
        &served,
        &[
            "app",
            "create",
            "--name",
            "JWT app",
            "--vendor",
            "Acme",
            "--scope",
            "subscribe:fhir.>",
            "--json",
        ],
    ));
    let client_id = created["clients"]["non_production"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    json(&run(&served, &["app", "activate", &client_id, "--json"]));
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("client.pem");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&pem)
        .args(["--kid", "my-key-1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &out.stdout).unwrap();
    let set: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(set["keys"][0]["kid"], "my-key-1");
    assert!(set["keys"][0].get("d").is_none());
    // keygen never overwrites.
    assert!(
        !Command::new(BIN)
            .args(["keygen", "--out"])
            .arg(&pem)
            .output()
            .unwrap()
            .status
            .success()
    );

    json(&run(
        &served,
        &[
            "app",
            "set-keys",
            &client_id,
            "--jwks",
            jwks.to_str().unwrap(),
            "--json",
        ],
    ));
    let out = run(
        &served,
        &[
            "token",
            "--client-id",
            &client_id,
            "--private-key",
            pem.to_str().unwrap(),
            "--kid",
            "my-key-1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .split('.')
            .count(),
        3
    );
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_broker_gracefully() {
    let mut served = serve();
    let pid = served.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn secrets_that_start_with_a_hyphen_are_values_not_flags() {
    // base64url secrets start with `-` one time in 64.
    let out = Command::new(BIN)
        .args([
            "token",
            "--client-id",
            "x",
            "--client-secret",
            "-Wabc",
            "--url",
            "http://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("unexpected argument"), "{err}");
}

#[test]
fn sub_prints_ndjson_once_per_event_and_pub_prints_seqs() {
    let served = serve();
    let app = json(&run(
        &served,
        &[
            "app",
            "create",
            "--name",
            "Both",
            "--vendor",
            "V",
            "--scope",
            "subscribe:adt.> publish:adt.>",
            "--json",
        ],
    ));
    let np = &app["clients"]["non_production"];
    let (id, secret) = (
        np["client_id"].as_str().unwrap().to_owned(),
        np["client_secret"].as_str().unwrap().to_owned(),
    );
    json(&run(&served, &["app", "activate", &id, "--json"]));
    let mut sub = Command::new(BIN)
        .args([
            "sub",
            "adt.>",
            "adt.x",
            "--url",
            &served.url,
            "--client-id",
            &id,
            "--client-secret",
            &secret,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let publish = |topic: &str, data: &str| {
        let out = Command::new(BIN)
            .args([
                "pub",
                topic,
                data,
                "--url",
                &served.url,
                "--client-id",
                &id,
                "--client-secret",
                &secret,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let s1 = publish("adt.x", r#"{"a": 1}"#);
    let s2 = publish("adt.y", r#"{"b":2}"#);
    let stdout = sub.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let l1: Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    let l2: Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert_eq!(
        (l1["seq"].as_u64(), l2["seq"].as_u64()),
        (Some(s1), Some(s2))
    );
    assert_eq!(l1["topic"], "adt.x");
    assert_eq!(l1["data"], serde_json::json!({"a": 1}));
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "an event printed twice"
    );
    let _ = sub.kill();
    let _ = sub.wait();
}

#[test]
fn pub_ndjson_publishes_each_line_and_prints_its_seq() {
    let served = serve();
    let app = json(&run(
        &served,
        &[
            "app",
            "create",
            "--name",
            "Batch",
            "--vendor",
            "V",
            "--scope",
            "publish:lab.>",
            "--json",
        ],
    ));
    let np = &app["clients"]["non_production"];
    let (id, secret) = (
        np["client_id"].as_str().unwrap().to_owned(),
        np["client_secret"].as_str().unwrap().to_owned(),
    );
    json(&run(&served, &["app", "activate", &id, "--json"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(
        &file,
        "{\"topic\":\"lab.a\",\"data\":{\"v\": 1.50}}\n\n{\"topic\":\"lab.b\",\"data\":[2]}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["pub", "--ndjson"])
        .arg(&file)
        .args([
            "--url",
            &served.url,
            "--client-id",
            &id,
            "--client-secret",
            &secret,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seqs: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
}
