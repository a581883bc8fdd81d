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
        "record-signing-keys.json",
        "webhooks.kek",
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

/// Reads a child's stream line by line on a thread; the lines arrive on the channel.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// The first line on `rx` within `wait` that `want` accepts; the lines before it are skipped.
fn wait_for(
    rx: &std::sync::mpsc::Receiver<String>,
    wait: Duration,
    want: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + wait;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if want(&line) {
            return Some(line);
        }
    }
    None
}

#[test]
fn sub_goes_on_when_one_subscription_ends_and_closes_properly_when_none_is_left() {
    let data = tempfile::tempdir().unwrap();
    let (served, broker_log, _) = serve_collecting(
        &[
            "--log",
            "memory",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    let admin = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--url", &served.url])
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("SCOPECAST_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let app: Value = serde_json::from_slice(
        &admin(&[
            "app",
            "create",
            "--name",
            "Two patterns",
            "--vendor",
            "V",
            "--scope",
            "subscribe:adt.> subscribe:fhir.encounter.> publish:adt.>",
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    let app_id = app["id"].as_str().unwrap().to_owned();
    let np = &app["clients"]["non_production"];
    let id = np["client_id"].as_str().unwrap().to_owned();
    let secret = np["client_secret"].as_str().unwrap().to_owned();
    admin(&["app", "activate", &id]);
    let mut sub = Command::new(BIN)
        .args(["sub", "adt.>", "fhir.encounter.>", "--url", &served.url])
        .args(["--client-id", &id, "--client-secret", &secret])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines_of(sub.stdout.take().unwrap());
    let stderr = lines_of(sub.stderr.take().unwrap());
    // Both subscriptions are live (the bare `sessions --client-id` form lists).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "the sub never subscribed twice");
        let list: Value =
            serde_json::from_slice(&admin(&["sessions", "--client-id", &id, "--json"]).stdout)
                .unwrap();
        if list["sessions"][0]["subscriptions"]
            .as_array()
            .is_some_and(|s| s.len() == 2)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The scope no longer covers fhir.encounter.>: that subscription ends, said on stderr.
    admin(&["app", "set-scope", &app_id, "subscribe:adt.> publish:adt.>"]);
    let said = wait_for(&stderr, Duration::from_secs(10), |l| l.contains("ended"))
        .expect("sub said nothing about the ended subscription");
    assert!(
        said.contains("fhir.encounter.>") && said.contains("subscribe:fhir.encounter.>"),
        "{said}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(sub.try_wait().unwrap().is_none(), "sub stopped: {said}");
    // adt.> goes on.
    let out = Command::new(BIN)
        .args(["pub", "adt.x", r#"{"still":"here"}"#, "--url", &served.url])
        .args(["--client-id", &id, "--client-secret", &secret])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .recv_timeout(Duration::from_secs(10))
        .expect("the adt.> subscription printed nothing");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["topic"], "adt.x");

    // No subscription left: sub ends with status 1, after a proper close frame.
    admin(&["app", "set-scope", &app_id, "publish:adt.>"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = sub.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sub still runs with no subscription"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let said = wait_for(&stderr, Duration::from_secs(5), |l| {
        l.contains("no subscription is left")
    })
    .expect("sub did not say why it stopped");
    assert!(said.contains("adt.>"), "{said}");
    let closed = wait_for(&broker_log, Duration::from_secs(10), |l| {
        l.contains("session closed")
    })
    .expect("the broker logged no session end");
    assert!(
        closed.contains("closed_by=\"client\"") || closed.contains("closed_by=client"),
        "{closed}"
    );
    assert!(!closed.contains("abrupt"), "{closed}");
}

#[test]
fn admin_commands_use_admin_url_and_the_public_port_says_where_the_admin_api_went() {
    let data = tempfile::tempdir().unwrap();
    let (served, broker_log, _) = serve_collecting(
        &[
            "--log",
            "memory",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    let admin_addr = wait_for(&broker_log, Duration::from_secs(10), |l| {
        l.contains("admin_local=")
    })
    .expect("the admin listener's address")
    .split("admin_local=")
    .nth(1)
    .unwrap()
    .split_whitespace()
    .next()
    .unwrap()
    .to_owned();
    let admin_url = format!("http://{admin_addr}");
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(BIN)
            .args(args)
            .args(["--url", &served.url])
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("SCOPECAST_ADMIN_TOKEN")
            .env_remove("SCOPECAST_ADMIN_URL")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    // On the public URL alone: a 404 that says what to do.
    let out = cli(&["app", "list"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404"), "{err}");
    assert!(err.contains("separate admin listener"), "{err}");
    assert!(
        err.contains("point --admin-url (SCOPECAST_ADMIN_URL) at it"),
        "{err}"
    );
    // The public port's answers, in the broker's JSON error shape, without the admin address.
    let http = reqwest::blocking::Client::new();
    for path in ["/admin/v1/applications", "/metrics", "/admin"] {
        let r = http.get(format!("{}{path}", served.url)).send().unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().unwrap();
        assert_eq!(body["error"], "not_found", "{body}");
        assert_eq!(body["reason"], "not_found", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("separate admin listener"), "{message}");
        assert!(!message.contains(&admin_addr), "{message}");
    }
    // --admin-url, or SCOPECAST_ADMIN_URL, reaches it; --url stays the public one.
    let listed = json(&cli(
        &["app", "list", "--json", "--admin-url", &admin_url],
        &[],
    ));
    assert!(listed["applications"].is_array());
    let created = json(&cli(
        &[
            "app",
            "create",
            "--name",
            "Split",
            "--vendor",
            "V",
            "--scope",
            "subscribe:adt.>",
            "--json",
        ],
        &[("SCOPECAST_ADMIN_URL", &admin_url)],
    ));
    let client_id = created["clients"]["non_production"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for args in [
        vec!["credential", "list", "--json"],
        vec!["sessions", "--json"],
        vec!["app", "activate", &client_id, "--json"],
    ] {
        let out = cli(&args, &[("SCOPECAST_ADMIN_URL", &admin_url)]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A missing application is not taken for a missing endpoint: no hint there.
    let out = cli(
        &["app", "show", "00000000-0000-4000-8000-000000000000"],
        &[("SCOPECAST_ADMIN_URL", &admin_url)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("--admin-url"), "{err}");
}

#[test]
fn set_keys_takes_an_openssl_pem_public_key_and_a_wrong_key_counts_under_the_client_id() {
    let served = serve();
    let created = json(&run(
        &served,
        &[
            "app",
            "create",
            "--name",
            "Openssl",
            "--vendor",
            "V",
            "--scope",
            "subscribe:adt.>",
            "--json",
        ],
    ));
    let client_id = created["clients"]["non_production"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    json(&run(&served, &["app", "activate", &client_id, "--json"]));
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("ossl-private.pem");
    let public = dir.path().join("ossl-public.pem");
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "genpkey".as_ref(),
        "-algorithm".as_ref(),
        "EC".as_ref(),
        "-pkeyopt".as_ref(),
        "ec_paramgen_curve:P-256".as_ref(),
        "-out".as_ref(),
        private.as_os_str(),
    ]);
    openssl(&[
        "pkey".as_ref(),
        "-in".as_ref(),
        private.as_os_str(),
        "-pubout".as_ref(),
        "-out".as_ref(),
        public.as_os_str(),
    ]);
    let set = json(&run(
        &served,
        &[
            "app",
            "set-keys",
            &client_id,
            "--jwks",
            public.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(set["keys"]["type"], "jwks", "{set}");
    // The kid is the key's thumbprint, which `token` uses without --kid.
    let token = |key: &std::path::Path| {
        run(
            &served,
            &[
                "token",
                "--client-id",
                &client_id,
                "--private-key",
                key.to_str().unwrap(),
            ],
        )
    };
    let out = token(&private);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A private key is refused as --jwks, saying how to get the public one.
    let out = run(
        &served,
        &[
            "app",
            "set-keys",
            &client_id,
            "--jwks",
            private.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-pubout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An assertion signed by another key: refused, and counted under this client ID.
    let other = dir.path().join("other.pem");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = token(&other);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_client"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin_token = std::fs::read_to_string(served.data_dir.path().join("admin.token")).unwrap();
    let metrics = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", served.url))
        .bearer_auth(admin_token.trim())
        .send()
        .unwrap()
        .text()
        .unwrap();
    let counted = |client: &str| {
        metrics.lines().any(|l| {
            l.starts_with("scopecast_token_requests_total")
                && l.contains(&format!("client_id=\"{client}\""))
                && l.contains("outcome=\"invalid_client\"")
        })
    };
    assert!(counted(&client_id), "{metrics}");
    assert!(!counted("unknown"), "{metrics}");
}

#[test]
fn each_command_help_lists_its_own_flags() {
    let help = |cmd: &str| {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let sub = help("sub");
    assert!(!sub.contains("--json"), "{sub}");
    assert!(!sub.contains("token` only"), "{sub}");
    assert!(help("token").contains("--json"));
    for admin in ["app", "credential", "sessions", "keys", "backup"] {
        let h = help(admin);
        assert!(h.contains("--admin-url"), "{admin}: {h}");
        assert!(h.contains("SCOPECAST_ADMIN_URL"), "{admin}: {h}");
    }
    assert!(help("sessions").contains("--client-id"));
}

#[test]
fn a_bad_environment_variable_is_named_in_full() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--log", "memory", "--data-dir"])
        .arg(data.path())
        .env("SCOPECAST_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SCOPECAST_LISTEN"), "{err}");
    assert!(!err.contains("\"LISTEN\""), "{err}");
}

#[test]
fn app_show_of_a_deleted_client_id_says_no_application_has_it() {
    let served = serve();
    let created = json(&run(
        &served,
        &[
            "app",
            "create",
            "--name",
            "Gone",
            "--vendor",
            "V",
            "--scope",
            "subscribe:adt.>",
            "--json",
        ],
    ));
    let app_id = created["id"].as_str().unwrap().to_owned();
    let client_id = created["clients"]["non_production"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    json(&run(&served, &["app", "activate", &client_id, "--json"]));
    json(&run(&served, &["app", "deactivate", &client_id, "--json"]));
    json(&run(&served, &["app", "delete", &app_id, "--json"]));
    let out = run(&served, &["app", "show", &client_id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("no application has the client ID {client_id}")),
        "{err}"
    );
    assert!(
        !err.contains(&format!("application {client_id} not found")),
        "{err}"
    );
}
