//! Shared by the tests that run the real `scopecast` binary: start `serve` on port 0 and read
//! the address it prints; kill it when dropped.

// Each test binary uses the parts it needs.
#![allow(dead_code)]

pub(crate) mod console;
pub(crate) mod receiver;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_scopecast");

/// A running `scopecast serve`, killed when dropped.
pub(crate) struct Served {
    /// The process.
    pub(crate) child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `scopecast serve --listen 127.0.0.1:0 --log LOG --data-dir DATA` and waits for the
/// address it prints.
///
/// # Panics
/// When it does not start within 20 s.
pub(crate) fn serve(data: &Path, log: &str) -> Served {
    start(data, log, None, &[])
}

/// Like [`serve`], with `env` set for the broker (settings as `SCOPECAST_*` variables).
///
/// # Panics
/// When it does not start within 20 s.
pub(crate) fn serve_env(data: &Path, log: &str, env: &[(&str, &str)]) -> Served {
    start(data, log, None, env)
}

/// Like [`serve`] with the in-memory log, serving HTTPS with `cert_file` (a PEM chain) and
/// `key_file`; the URL is `https://localhost:PORT`.
///
/// # Panics
/// When it does not start within 20 s.
pub(crate) fn serve_tls(data: &Path, cert_file: &Path, key_file: &Path) -> Served {
    start(data, "memory", Some((cert_file, key_file)), &[])
}

fn start(data: &Path, log: &str, tls: Option<(&Path, &Path)>, env: &[(&str, &str)]) -> Served {
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            log,
            "--data-dir",
        ])
        .arg(data)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((cert, key)) = tls {
        command
            .env("SCOPECAST_TLS__CERT_FILE", cert)
            .env("SCOPECAST_TLS__KEY_FILE", key);
    }
    let mut child = command.spawn().expect("spawn scopecast serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("local=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("serve printed its address");
    let url = match tls {
        None => format!("http://{addr}"),
        Some(_) => {
            let port = addr.rsplit(':').next().unwrap_or_default();
            format!("https://localhost:{port}")
        }
    };
    Served { child, url }
}

/// Runs `command` and returns its output, or fails the test with its stderr.
///
/// # Panics
/// When it cannot run or exits unsuccessfully.
pub(crate) fn run_ok(command: &mut Command) -> std::process::Output {
    let out = command.output().expect("run the command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
