//! The operator console in a real browser: `tests/python/console_browser.py` drives headless
//! Chromium (Debian `chromium` and `chromium-driver`, Python Selenium) against a broker started
//! here, with axe-core (npm, `tests/node`) checking every page. What it checks is listed at the
//! top of that script. Screenshots of each page are written to
//! `target/tmp/console-screenshots/`.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

mod support;

use support::BIN;
use support::console::Browserless;

#[test]
fn the_console_in_a_browser() {
    let data = tempfile::tempdir().unwrap();
    let served = support::serve(data.path(), "memory");
    let admin = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    let out = support::run_ok(
        Command::new(BIN)
            .args([
                "credential",
                "create",
                "--name",
                "ward-viewer",
                "--role",
                "viewer",
                "--json",
                "--url",
                &served.url,
            ])
            .env("SCOPECAST_DATA_DIR", data.path()),
    );
    let viewer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let viewer = viewer["token"].as_str().unwrap().to_owned();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let run = Command::new("python3")
        .arg(root.join("tests/python/console_browser.py"))
        .args(["--url", &served.url, "--admin-token", admin.trim()])
        .args(["--viewer-token", &viewer])
        .arg("--axe")
        .arg(root.join("tests/node/node_modules/axe-core/axe.min.js"))
        .arg("--out")
        .arg(&shots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{stdout}");
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("console: all checks passed"), "{stdout}");
    assert!(shots.join("02-overview.png").is_file());
}

#[test]
fn console_sessions_end_when_idle_and_at_their_absolute_lifetime() {
    let data = tempfile::tempdir().unwrap();
    let served = support::serve_env(
        data.path(),
        "memory",
        &[
            ("SCOPECAST_CONSOLE__IDLE_TIMEOUT_S", "2"),
            ("SCOPECAST_CONSOLE__ABSOLUTE_TIMEOUT_S", "4"),
        ],
    );
    let admin = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    // Idle: no request for longer than 2 s ends it.
    let idle = Browserless::sign_in(&served.url, admin.trim());
    assert_eq!(idle.get("/console/overview"), 200);
    std::thread::sleep(std::time::Duration::from_millis(2_600));
    assert_eq!(idle.get("/console/overview"), 303, "idle session refused");
    // Absolute: a session used every 400 ms still ends 4 s after sign-in.
    let busy = Browserless::sign_in(&served.url, admin.trim());
    let start = std::time::Instant::now();
    let mut last_ok = std::time::Duration::ZERO;
    while start.elapsed() < std::time::Duration::from_secs(6) {
        if busy.get("/console/overview") == 200 {
            last_ok = start.elapsed();
        }
        std::thread::sleep(std::time::Duration::from_millis(400));
    }
    assert!(
        last_ok >= std::time::Duration::from_millis(2_800),
        "kept alive by use past the idle time: {last_ok:?}"
    );
    assert!(
        last_ok < std::time::Duration::from_millis(4_300),
        "ended at its absolute lifetime: {last_ok:?}"
    );
    // A developer sees only its own applications, and no operator page.
    support::run_ok(
        Command::new(BIN)
            .args([
                "app",
                "create",
                "--name",
                "Not Theirs",
                "--vendor",
                "V",
                "--scope",
                "subscribe:lab.>",
                "--url",
                &served.url,
            ])
            .env("SCOPECAST_DATA_DIR", data.path()),
    );
    let out = support::run_ok(
        Command::new(BIN)
            .args([
                "credential",
                "create",
                "--name",
                "dev-one",
                "--role",
                "developer",
                "--json",
                "--url",
                &served.url,
            ])
            .env("SCOPECAST_DATA_DIR", data.path()),
    );
    let developer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dev = Browserless::sign_in(&served.url, developer["token"].as_str().unwrap());
    for page in [
        "/console/overview",
        "/console/live",
        "/console/live/events",
        "/console/audit",
        "/console/audit/export?format=ndjson",
        "/console/catalog",
    ] {
        assert_eq!(dev.get(page), 403, "{page}");
    }
    let apps = dev
        .http
        .get(format!("{}/console/apps", served.url))
        .header("cookie", &dev.cookie)
        .send()
        .unwrap();
    assert_eq!(apps.status(), 200);
    let html = apps.text().unwrap();
    assert!(
        html.contains("My applications") && !html.contains("Not Theirs"),
        "{html}"
    );

    // The catalog page names, for each record, the version a catalog hands out.
    let dev_cli = |args: &[&str]| -> serde_json::Value {
        let out = support::run_ok(
            Command::new(BIN)
                .args(args)
                .args(["--json", "--url", &served.url])
                .env_remove("SCOPECAST_ADMIN_TOKEN")
                .env("SCOPECAST_DEV_TOKEN", developer["token"].as_str().unwrap()),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let drafted = dev_cli(&[
        "dev",
        "app",
        "create",
        "--name",
        "Ward Board",
        "--vendor",
        "V",
        "--scope",
        "subscribe:adt.>",
    ]);
    let id = drafted["id"].as_str().unwrap().to_owned();
    let admin_again = Browserless::sign_in(&served.url, admin.trim());
    let catalog_row = || {
        let html = admin_again.response("/console/catalog").text().unwrap();
        let at = html.find("Ward Board").expect("the record is listed");
        html[at..at + html[at..].find("</tr>").unwrap()].to_owned()
    };
    assert!(catalog_row().contains("none yet"), "{}", catalog_row());
    dev_cli(&["dev", "app", "ready", &id]);
    assert!(catalog_row().contains("version 1"), "{}", catalog_row());
    dev_cli(&["dev", "app", "update", &id, "--vendor", "V2"]);
    assert!(
        catalog_row().contains("version 1 (version 2 is a draft)"),
        "{}",
        catalog_row()
    );

    // The audit's exports, as files.
    for (format, kind) in [
        ("fhir", "application/fhir+json"),
        ("ndjson", "application/x-ndjson"),
    ] {
        let r = admin_again
            .http
            .get(format!(
                "{}/console/audit/export?format={format}",
                served.url
            ))
            .header("cookie", &admin_again.cookie)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], kind);
        assert!(
            r.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment")
        );
        if format == "fhir" {
            let b: serde_json::Value = r.json().unwrap();
            assert_eq!(b["resourceType"], "Bundle");
        }
    }

    // A metrics credential may not sign in.
    let out = support::run_ok(
        Command::new(BIN)
            .args([
                "credential",
                "create",
                "--name",
                "prom",
                "--role",
                "metrics",
                "--json",
                "--url",
                &served.url,
            ])
            .env("SCOPECAST_DATA_DIR", data.path()),
    );
    let metrics: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let refused = http
        .post(format!("{}/console/login", served.url))
        .header("cookie", "scopecast_console_login=x")
        .form(&[
            ("credential", metrics["token"].as_str().unwrap()),
            ("csrf", "x"),
        ])
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .headers()
            .get("set-cookie")
            .is_none_or(|c| !c.to_str().unwrap().starts_with("scopecast_console="))
    );
}

/// The broker's public URL is https (TLS ending at a load balancer): the console's cookies are
/// `Secure` though this request came over plain HTTP, and a form posted from that origin is
/// taken while another origin is refused. Every console answer carries the strict CSP.
#[test]
fn behind_an_https_public_url_cookies_are_secure_and_every_page_has_the_csp() {
    let data = tempfile::tempdir().unwrap();
    let served = support::serve_env(
        data.path(),
        "memory",
        // The scheme in capitals (a URL's scheme is case-insensitive, RFC 3986 section 3.1)
        // and the default port named (an Origin never names it).
        &[(
            "SCOPECAST_OAUTH__PUBLIC_URL",
            "HTTPS://console.hospital.example:443",
        )],
    );
    let admin = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    let user = Browserless::sign_in(&served.url, admin.trim());
    for set_cookie in &user.set_cookies {
        assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    }
    let session = user.response("/console/overview");
    assert_eq!(session.status(), 200);
    let html = session.text().unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();

    // The CSP on pages, the sign-in page, an error page and the static files.
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
               connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    for path in [
        "/console/overview",
        "/console/apps",
        "/console/audit",
        "/console/live",
        "/console/catalog",
        "/console/apps/not-an-application",
        "/console/login",
    ] {
        let r = user.response(path);
        assert_eq!(
            r.headers()
                .get("content-security-policy")
                .map(|v| v.to_str().unwrap()),
            Some(csp),
            "{path} ({})",
            r.status()
        );
    }

    // A form from another origin is refused; from the public URL's origin it is taken.
    let post = |origin: &str| {
        user.http
            .post(format!("{}/console/logout", served.url))
            .header("cookie", &user.cookie)
            .header("origin", origin)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post("https://attacker.example"), 403);
    assert_eq!(user.get("/console/overview"), 200, "still signed in");
    assert_eq!(post("https://console.hospital.example"), 303);
    assert_eq!(user.get("/console/overview"), 303, "signed out");
}
