//! The README's worked example of environments, through the real binary: a catalog where a
//! developer registers an application and marks it ready, a test environment that imports it
//! from a file, a production environment that syncs it, each activating its own client ID.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod support;

use support::BIN;

fn cli(url: &str, data: Option<&Path>, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .args(["--url", url])
        .env_remove("SCOPECAST_ADMIN_TOKEN")
        .env_remove("SCOPECAST_DEV_TOKEN");
    if let Some(d) = data {
        c.env("SCOPECAST_DATA_DIR", d);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

#[test]
fn a_developer_registers_once_and_two_environments_activate_their_own_client_id() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let files = tempfile::tempdir().unwrap();
    let (cat_dir, test_dir, prod_dir) = (dirs[0].path(), dirs[1].path(), dirs[2].path());
    let catalog = support::serve_env(
        cat_dir,
        "memory",
        &[
            ("SCOPECAST_ENVIRONMENT_NAME", "catalog"),
            ("SCOPECAST_CATALOG__SELF_REGISTRATION", "true"),
        ],
    );
    let c = catalog.url.as_str();

    // The catalog's record-signing keys, pinned by both environments.
    let keys = files.path().join("catalog-keys.json");
    ok(&cli(
        c,
        None,
        &["catalog", "keys", "--out", keys.to_str().unwrap()],
        &[],
    ));
    // A viewer credential of the catalog for production's sync.
    let viewer = json(&cli(
        c,
        Some(cat_dir),
        &[
            "credential",
            "create",
            "--name",
            "prod-sync",
            "--role",
            "viewer",
            "--json",
        ],
        &[],
    ));
    let token_file = files.path().join("catalog.token");
    std::fs::write(&token_file, viewer["token"].as_str().unwrap()).unwrap();

    // A developer registers (self-registration is on here), creates the app, marks it ready.
    let dev = json(&cli(
        c,
        None,
        &["dev", "register", "--name", "acme", "--json"],
        &[],
    ));
    let dev_token = dev["token"].as_str().unwrap().to_owned();
    let as_dev = [("SCOPECAST_DEV_TOKEN", dev_token.as_str())];
    let app = json(&cli(
        c,
        None,
        &[
            "dev",
            "app",
            "create",
            "--name",
            "Bed board",
            "--vendor",
            "Acme",
            "--scope",
            "subscribe:adt.>",
            "--json",
        ],
        &as_dev,
    ));
    assert_eq!(app["ready"], false);
    let id = app["id"].as_str().unwrap().to_owned();
    let np = app["clients"]["non_production"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = app["clients"]["production"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed = ok(&cli(c, None, &["dev", "app", "list"], &as_dev));
    assert!(listed.contains("(draft)"), "{listed}");
    let ready = json(&cli(
        c,
        None,
        &["dev", "app", "ready", &id, "--json"],
        &as_dev,
    ));
    assert_eq!(ready["ready"], true);
    // Without a credential the developer API says what to do.
    let no_token = cli(c, None, &["dev", "app", "list"], &[]);
    assert!(!no_token.status.success());
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("SCOPECAST_DEV_TOKEN"));

    // The catalog's admin exports the ready version to a file.
    let record = files.path().join("bedboard.record");
    ok(&cli(
        c,
        Some(cat_dir),
        &["app", "export", &id, "--out", record.to_str().unwrap()],
        &[],
    ));

    // The test environment imports the file and activates the non-production client ID: the
    // secret is made here and shown once.
    let test = support::serve_env(
        test_dir,
        "memory",
        &[
            ("SCOPECAST_ENVIRONMENT_NAME", "test"),
            (
                "SCOPECAST_CATALOG__TRUSTED_KEYS_FILE",
                keys.to_str().unwrap(),
            ),
        ],
    );
    let t = test.url.as_str();
    let imported = ok(&cli(
        t,
        Some(test_dir),
        &["app", "import", record.to_str().unwrap()],
        &[],
    ));
    assert!(imported.contains("created: version 1"), "{imported}");
    let wrong = cli(t, Some(test_dir), &["app", "activate", &p], &[]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains(&np),
        "the refusal names the right client ID: {}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let activated = json(&cli(
        t,
        Some(test_dir),
        &["app", "activate", &np, "--reason", "pilot", "--json"],
        &[],
    ));
    let secret = activated["client_secret"].as_str().unwrap().to_owned();
    let token = ok(&cli(
        t,
        None,
        &["token", "--client-id", &np, "--client-secret", &secret],
        &[],
    ));
    assert!(token.trim().starts_with("ey"), "{token}");

    // Production syncs from the catalog and activates the production client ID.
    let prod = support::serve_env(
        prod_dir,
        "memory",
        &[
            ("SCOPECAST_ENVIRONMENT", "production"),
            ("SCOPECAST_ENVIRONMENT_NAME", "main"),
            (
                "SCOPECAST_CATALOG__TRUSTED_KEYS_FILE",
                keys.to_str().unwrap(),
            ),
            ("SCOPECAST_CATALOG__URL", c),
            (
                "SCOPECAST_CATALOG__TOKEN_FILE",
                token_file.to_str().unwrap(),
            ),
            ("SCOPECAST_CATALOG__SYNC_INTERVAL_S", "0"),
        ],
    );
    let pr = prod.url.as_str();
    let synced = ok(&cli(pr, Some(prod_dir), &["app", "sync"], &[]));
    assert!(synced.contains("created 1"), "{synced}");
    let shown = json(&cli(
        pr,
        Some(prod_dir),
        &["app", "show", &id, "--json"],
        &[],
    ));
    assert_eq!(shown["clients"]["production"]["client_id"], p.as_str());
    let activated = json(&cli(
        pr,
        Some(prod_dir),
        &["app", "activate", &p, "--reason", "go-live", "--json"],
        &[],
    ));
    assert!(activated["client_secret"].is_string());
    // The test environment's token is refused in production.
    let history = reqwest_free_get(pr, &token);
    assert!(history.contains("401"), "{history}");

    // Narrowing the grant in the test environment through set-scope on the client ID.
    let narrowed = json(&cli(
        t,
        Some(test_dir),
        &[
            "app",
            "set-scope",
            &np,
            "subscribe:adt.a01",
            "--reason",
            "one feed",
            "--json",
        ],
        &[],
    ));
    assert_eq!(narrowed["effective_scope"], "subscribe:adt.a01");
    drop((catalog, test, prod));
}

/// `GET /v1/events?topic=adt.>` with a bearer token, over a raw TCP socket (the tests of this
/// package use no HTTP client): the status line.
fn reqwest_free_get(base: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /v1/events?topic=adt.%3E HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines().next().unwrap_or_default().to_owned()
}
