//! The `scopecast` CLI against a broker whose certificate comes from a hospital's own CA (a root,
//! an intermediate, and a server certificate for `localhost`, made here): without the CA every
//! kind of command fails saying how to trust it; with `--cacert`, `SCOPECAST_CACERT` or the
//! system store (`SSL_CERT_FILE`) they work; a broker serving the CA certificate itself gets a
//! hint to serve a server certificate.

// A test that cannot go on should stop at once, with the value it choked on.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;

mod support;

use support::{BIN, Served};

/// How long one CLI command may take before the test fails instead of hanging.
const COMMAND_WAIT: Duration = Duration::from_secs(30);

const UNKNOWN_ISSUER_HINT: &str =
    "the broker's certificate is signed by a CA this client does not trust: pass --cacert FILE";
const CA_AS_SERVER_HINT: &str = "the broker presents a CA certificate as its server certificate: configure the broker's tls.cert_file with a server (end-entity) certificate";

/// The hospital's PKI as PEM files.
struct Pki {
    root: PathBuf,
    root_key: PathBuf,
    /// The server certificate, then the intermediate.
    chain: PathBuf,
    key: PathBuf,
    dir: tempfile::TempDir,
}

fn ca(name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(constraints);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let root_key = KeyPair::generate().unwrap();
    let root = ca("Hospital Root CA", BasicConstraints::Unconstrained)
        .self_signed(&root_key)
        .unwrap();
    let issuing_key = KeyPair::generate().unwrap();
    let issuing = ca("Hospital Issuing CA", BasicConstraints::Constrained(0))
        .signed_by(&issuing_key, &root, &root_key)
        .unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server.is_ca = IsCa::ExplicitNoCa;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server
        .signed_by(&server_key, &issuing, &issuing_key)
        .unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        root: write("root.pem", root.pem()),
        root_key: write("root-key.pem", root_key.serialize_pem()),
        chain: write("chain.pem", format!("{}{}", server.pem(), issuing.pem())),
        key: write("server-key.pem", server_key.serialize_pem()),
        dir,
    }
}

/// `scopecast serve` with TLS and its data folder.
struct Broker {
    served: Served,
    data: tempfile::TempDir,
}

fn serve(cert: &Path, key: &Path) -> Broker {
    let data = tempfile::tempdir().unwrap();
    Broker {
        served: support::serve_tls(data.path(), cert, key),
        data,
    }
}

/// Runs `scopecast ARGS --url URL` with the admin credential of `broker`, no trust from the
/// test's own environment, and `env` added; fails the test after [`COMMAND_WAIT`].
fn run(broker: &Broker, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .args(["--url", &broker.served.url])
        .env("SCOPECAST_DATA_DIR", broker.data.path())
        .env_remove("SCOPECAST_ADMIN_TOKEN")
        .env_remove("SCOPECAST_CACERT")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + COMMAND_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("scopecast {args:?} did not finish in {COMMAND_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failed_with(out: &Output, hint: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert!(stderr.contains(hint), "no hint {hint:?} in: {stderr}");
}

/// Registers an application with `scope` and activates its non-production client; returns its
/// client ID and secret.
fn active_client(broker: &Broker, cacert: &Path, name: &str, scope: &str) -> (String, String) {
    let trust = [("SCOPECAST_CACERT", cacert)];
    let created: Value = serde_json::from_str(&succeeded(&run(
        broker,
        &[
            "app", "create", "--name", name, "--vendor", "Acme", "--scope", scope, "--json",
        ],
        &trust,
    )))
    .unwrap();
    let client = &created["clients"]["non_production"];
    let id = client["client_id"].as_str().unwrap().to_owned();
    succeeded(&run(broker, &["app", "activate", &id, "--json"], &trust));
    (id, client["client_secret"].as_str().unwrap().to_owned())
}

#[test]
fn without_the_hospital_ca_admin_token_and_stream_commands_say_to_pass_cacert() {
    let pki = pki();
    let broker = serve(&pki.chain, &pki.key);
    let (id, secret) = active_client(&broker, &pki.root, "Ward Board", "publish:adt.>");
    let root = pki.root.to_str().unwrap();
    let token = succeeded(&run(
        &broker,
        &[
            "token",
            "--client-id",
            &id,
            "--client-secret",
            &secret,
            "--cacert",
            root,
        ],
        &[],
    ));

    // The admin API (the CLI's own HTTP client).
    failed_with(&run(&broker, &["app", "list"], &[]), UNKNOWN_ISSUER_HINT);
    // The token endpoint (the SDK's token source).
    failed_with(
        &run(
            &broker,
            &["token", "--client-id", &id, "--client-secret", &secret],
            &[],
        ),
        UNKNOWN_ISSUER_HINT,
    );
    // The WebSocket (a ready token, so the first TLS handshake is the stream's).
    failed_with(
        &run(
            &broker,
            &["pub", "adt.patient.admitted", "{}", "--token", token.trim()],
            &[],
        ),
        UNKNOWN_ISSUER_HINT,
    );

    // A CA file that is missing or holds no certificate is named.
    let missing = pki.dir.path().join("missing.pem");
    failed_with(
        &run(
            &broker,
            &["app", "list", "--cacert", missing.to_str().unwrap()],
            &[],
        ),
        "reading CA certificates from",
    );
    failed_with(
        &run(
            &broker,
            &["app", "list", "--cacert", pki.key.to_str().unwrap()],
            &[],
        ),
        "no PEM CERTIFICATE block",
    );
}

#[test]
fn the_hospital_ca_from_cacert_scopecast_cacert_or_ssl_cert_file_is_trusted_everywhere() {
    let pki = pki();
    let broker = serve(&pki.chain, &pki.key);
    let root = pki.root.to_str().unwrap();
    let (id, secret) = active_client(&broker, &pki.root, "ADT Feed", "publish:adt.>");

    let listed = succeeded(&run(
        &broker,
        &["app", "list", "--json", "--cacert", root],
        &[],
    ));
    assert!(listed.contains("ADT Feed"), "{listed}");
    let credentials = [
        "--client-id",
        id.as_str(),
        "--client-secret",
        secret.as_str(),
    ];
    for (args, env) in [
        (vec!["--cacert", root], vec![]),
        (vec![], vec![("SCOPECAST_CACERT", pki.root.as_path())]),
        // The system store: rustls-native-certs reads SSL_CERT_FILE instead of the OS bundle.
        (vec![], vec![("SSL_CERT_FILE", pki.root.as_path())]),
    ] {
        let token = succeeded(&run(
            &broker,
            &[&["token"][..], &credentials, &args].concat(),
            &env,
        ));
        assert_eq!(token.trim().split('.').count(), 3, "{token}");
        // Token endpoint and WebSocket in one command.
        let seq = succeeded(&run(
            &broker,
            &[
                &["pub", "adt.patient.admitted", r#"{"ward":7}"#][..],
                &credentials,
                &args,
            ]
            .concat(),
            &env,
        ));
        assert!(seq.trim().parse::<u64>().is_ok(), "{seq}");
        succeeded(&run(&broker, &[&["app", "list"][..], &args].concat(), &env));
    }
}

#[test]
fn a_broker_serving_its_ca_certificate_gets_a_hint_to_serve_a_server_certificate() {
    let pki = pki();
    let broker = serve(&pki.root, &pki.root_key);
    let root = pki.root.to_str().unwrap();
    failed_with(
        &run(&broker, &["app", "list", "--cacert", root], &[]),
        CA_AS_SERVER_HINT,
    );
    failed_with(
        &run(
            &broker,
            &[
                "token",
                "--client-id",
                "x",
                "--client-secret",
                "y",
                "--cacert",
                root,
            ],
            &[],
        ),
        CA_AS_SERVER_HINT,
    );
}
