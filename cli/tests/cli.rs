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

/// Starts `scopecast serve` with `args` and collects its stderr lines; returns the process,
/// its address and the lines seen so far (more arrive on the channel).
fn serve_collecting(
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    support::Served,
    std::sync::mpsc::Receiver<String>,
    Vec<String>,
) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("serve printed its address");
        let found = ["local=", "\"local\":\""].iter().find_map(|k| {
            line.split(k)
                .nth(1)
                .map(|rest| rest.split(['"', ' ']).next().unwrap_or("").to_owned())
        });
        seen.push(line);
        if let Some(a) = found {
            break a;
        }
    };
    (
        support::Served {
            child,
            url: format!("http://{addr}"),
        },
        rx,
        seen,
    )
}

#[cfg(unix)]
#[test]
fn every_data_file_is_private_even_in_a_folder_others_can_enter() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("state");
    // As systemd's StateDirectory= or a package would make it.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (served, _rx, seen) = serve_collecting(
        &["--log", "durable", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    let warned = seen
        .iter()
        .any(|l| l.contains("WARN") && l.contains("chmod 700"));
    assert!(
        warned,
        "no warning about the open folder:\n{}",
        seen.join("\n")
    );
    // A write, so the log and the registry have done real I/O.
    let out = Command::new(BIN)
        .args(["app", "create", "--name", "Private", "--vendor", "V"])
        .args(["--scope", "subscribe:a", "--json", "--url", &served.url])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        files.push(entry.file_name().to_string_lossy().into_owned());
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", entry.path().display());
    }
    for f in [
        "registry.sqlite",
        "events.redb",
        "signing-keys.json",
        "admin.token",
    ] {
        assert!(files.iter().any(|x| x == f), "{f} missing from {files:?}");
    }
    // A file left world-readable by hand (a restore with cp) is tightened at the next start.
    drop(served);
    let registry = data.join("registry.sqlite");
    std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_served, _rx, _) = serve_collecting(
        &["--log", "durable", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    assert_eq!(
        std::fs::metadata(&registry).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn log_format_json_writes_one_object_per_line_with_the_session_fields() {
    let data = tempfile::tempdir().unwrap();
    let (served, rx, seen) = serve_collecting(
        &[
            "--log",
            "memory",
            "--log-format",
            "json",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    for line in &seen {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    // A refused token request: its line carries the client ID and the peer as fields.
    let out = Command::new(BIN)
        .args(["token", "--client-id", "nobody", "--client-secret", "x"])
        .args(["--url", &served.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a log line for the refused token request");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        if v["fields"]["message"] == "token request refused" {
            assert_eq!(v["level"], "INFO");
            assert_eq!(v["fields"]["client_id"], "nobody");
            assert!(
                v["fields"]["peer"]
                    .as_str()
                    .unwrap()
                    .starts_with("127.0.0.1:")
            );
            break;
        }
    }
}

#[test]
fn credentials_and_sessions_through_the_cli() {
    let served = serve();
    let out = run(
        &served,
        &[
            "credential",
            "create",
            "--name",
            "grafana",
            "--role",
            "viewer",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let viewer = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        viewer.starts_with("scc_"),
        "stdout is the token alone: {viewer}"
    );
    let listed = json(&run(&served, &["credential", "list", "--json"]));
    let names: Vec<&str> = listed["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"grafana") && names.contains(&"admin"),
        "{names:?}"
    );
    assert!(!listed.to_string().contains(&viewer));

    // The viewer reads sessions; it may not create credentials.
    let as_viewer = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--url", &served.url, "--admin-token", &viewer])
            .output()
            .unwrap()
    };
    let sessions = as_viewer(&["sessions", "list", "--json"]);
    assert!(
        sessions.status.success(),
        "{}",
        String::from_utf8_lossy(&sessions.stderr)
    );
    let refused = as_viewer(&["credential", "create", "--name", "x", "--role", "admin"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("insufficient_role"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A live `sub`, listed, then closed by an operator: the SDK reconnects by itself.
    let app = json(&run(
        &served,
        &[
            "app",
            "create",
            "--name",
            "Watched",
            "--vendor",
            "V",
            "--scope",
            "subscribe:adt.>",
            "--json",
        ],
    ));
    let np = &app["clients"]["non_production"];
    let id = np["client_id"].as_str().unwrap().to_owned();
    let secret = np["client_secret"].as_str().unwrap().to_owned();
    json(&run(&served, &["app", "activate", &id, "--json"]));
    let mut sub = Command::new(BIN)
        .args(["sub", "adt.>", "--url", &served.url, "--client-id", &id])
        .args(["--client-secret", &secret])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = sub.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let session = loop {
        assert!(Instant::now() < deadline, "the sub never showed up");
        let list = json(&run(
            &served,
            &["sessions", "list", "--client-id", &id, "--json"],
        ));
        if let Some(s) = list["sessions"].as_array().unwrap().first()
            && !s["subscriptions"].as_array().unwrap().is_empty()
        {
            assert_eq!(s["application_name"], "Watched");
            break s["session"].as_str().unwrap().to_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let table = run(&served, &["sessions"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&session));
    let killed = run(&served, &["sessions", "kill", &session]);
    assert!(
        killed.status.success(),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let said = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(said.contains("4010"), "{said}");
    let again = rx.recv_timeout(Duration::from_secs(15)).unwrap();
    assert!(again.contains("reconnected"), "{again}");
    let _ = sub.kill();
    let _ = sub.wait();
}

#[test]
fn sub_says_at_once_on_stderr_when_a_token_refresh_fails() {
    let data = tempfile::tempdir().unwrap();
    // Tokens of 6 s: `token_expiring` comes after about 3 s.
    let (served, _rx, _) = serve_collecting(
        &[
            "--log",
            "memory",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[("SCOPECAST_OAUTH__TOKEN_LIFETIME_S", "6")],
    );
    let admin = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--url", &served.url, "--json"])
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let app: Value = serde_json::from_slice(
        &admin(&[
            "app",
            "create",
            "--name",
            "Refresher",
            "--vendor",
            "V",
            "--scope",
            "subscribe:adt.>",
        ])
        .stdout,
    )
    .unwrap();
    let np = &app["clients"]["non_production"];
    let id = np["client_id"].as_str().unwrap().to_owned();
    let secret = np["client_secret"].as_str().unwrap().to_owned();
    assert!(admin(&["app", "activate", &id]).status.success());
    let started = Instant::now();
    let mut sub = Command::new(BIN)
        .args(["sub", "adt.>", "--url", &served.url, "--client-id", &id])
        .args(["--client-secret", &secret])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = sub.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The secret the sub holds stops working: its next refresh is refused.
    std::thread::sleep(Duration::from_millis(500));
    assert!(admin(&["app", "rotate-secret", &id]).status.success());
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("sub said nothing about the failed refresh");
    assert!(line.contains("token refresh failed"), "{line}");
    assert!(line.contains("invalid_client"), "{line}");
    // Said when the refresh failed (after `token_expiring`, about 3 s in), well before the
    // token's end (6 s plus the 30 s leeway) closes the session.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let _ = sub.kill();
    let _ = sub.wait();
}
