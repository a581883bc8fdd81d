//! The accept loop: plain TCP or TLS (rustls), HTTP/1.1 with upgrades, handshake limits
//! (header bytes, header count, time to send the headers or finish TLS), and graceful
//! shutdown of plain HTTP connections. WebSocket sessions are tracked by the server.
//!
//! - `first_line`: reads a connection's first request line before hyper does, to answer a URL
//!   with an unencoded `>` (which hyper refuses with an empty body) in JSON, with a hint.

mod first_line;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::config::LimitsConfig;

/// A TLS configuration that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub(crate) struct TlsError(pub String);

/// Builds a TLS acceptor from PEM files: a certificate chain and its private key.
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub(crate) fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| TlsError(format!("{}: {e}", cert_file.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{}: no certificate", cert_file.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| TlsError(format!("{}: {e}", key_file.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Drives one HTTP connection; on shutdown, lets its in-flight request finish, then ends it.
macro_rules! drive {
    ($conn:expr, $cancel:expr, $peer:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = $cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %$peer, error = %e, "connection ended with an error");
        }
    }};
}

/// Serves `app` on `listener` until `cancel`, then lets in-flight HTTP requests (not upgraded
/// WebSockets, which the server tracks) finish, up to `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: &LimitsConfig,
    cancel: CancellationToken,
    grace: Duration,
) {
    let mut make: IntoMakeServiceWithConnectInfo<Router, SocketAddr> =
        app.into_make_service_with_connect_info();
    let head_limit = limits.max_header_bytes.max(8192);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.handshake_timeout_ms))
        .max_buf_size(head_limit)
        .max_headers(limits.max_headers);
    let handshake = Duration::from_millis(limits.handshake_timeout_ms);
    let conns = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let svc = match make.call(peer).await {
            Ok(svc) => svc,
            Err(infallible) => match infallible {},
        };
        let svc = TowerToHyperService::new(svc);
        let http = http.clone();
        let tls = tls.clone();
        let cancel = cancel.clone();
        conns.spawn(async move {
            // Before hyper: the first request line, within the handshake time, or nothing
            // (shutting down).
            macro_rules! screened {
                ($io:expr) => {
                    tokio::select! {
                        io = first_line::screen($io, head_limit, handshake, peer) => io,
                        () = cancel.cancelled() => None,
                    }
                };
            }
            match tls {
                None => {
                    let Some(io) = screened!(tcp) else { return };
                    drive!(
                        http.serve_connection(TokioIo::new(io), svc).with_upgrades(),
                        cancel,
                        peer
                    )
                }
                Some(acceptor) => match tokio::time::timeout(handshake, acceptor.accept(tcp)).await
                {
                    Ok(Ok(stream)) => {
                        let Some(io) = screened!(stream) else { return };
                        drive!(
                            http.serve_connection(TokioIo::new(io), svc).with_upgrades(),
                            cancel,
                            peer
                        )
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    conns.close();
    if tokio::time::timeout(grace, conns.wait()).await.is_err() {
        tracing::warn!("HTTP connections still open after the grace period");
    }
}
