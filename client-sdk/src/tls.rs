//! Which certificate authorities the SDK trusts for `https://` and `wss://`, and what a refused
//! broker certificate means for the person running the client.
//!
//! One [`TlsConfig`] gives one rustls `ClientConfig`, used by every connection made with it: the
//! WebSocket, the history reads (`GET /v1/events`) and the token endpoint. It trusts the
//! bundled Mozilla roots (webpki-roots), the system trust store (which honours `SSL_CERT_FILE`
//! and `SSL_CERT_DIR`), and any CA certificates added, such as a hospital's own CA.
//!
//! A connection that fails because the broker's certificate was refused carries a
//! [`CertificateError`] that says what to do, when the reason is one a user can fix.

use std::error::Error as StdError;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

/// The CA certificates a client trusts, turned into one rustls `ClientConfig` at first use.
///
/// [`TlsConfig::new`] trusts the bundled Mozilla roots and the system trust store;
/// [`TlsConfig::add_root_certificates`] adds an organisation's own CA. Give it to
/// [`ConnectOptions::tls`](crate::ConnectOptions::tls) (the connection's token source uses it
/// too, unless it has its own from [`TokenSource::with_tls`](crate::TokenSource::with_tls)).
///
/// Cheap to clone; clones share the built `ClientConfig`, so the system store is read once per
/// `TlsConfig`, when the first connection needs it.
///
/// # Examples
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use scopecast_client::{ConnectOptions, TlsConfig, TokenSource};
/// let url = "https://scopecast.hospital.example";
/// let tls = TlsConfig::new().add_root_certificates("/etc/hospital/ca.pem")?;
/// let tokens = TokenSource::client_secret(url, "CLIENT_ID", "SECRET");
/// let client = ConnectOptions::new()
///     .tls(tls)
///     .token_source(tokens)
///     .connect(url)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct TlsConfig {
    /// CA certificates added to the bundled and system roots.
    added: Vec<TrustAnchor<'static>>,
    /// Built by the first connection that needs it; shared by clones. Adding a CA makes a new
    /// `TlsConfig` with an empty one.
    built: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("added_roots", &self.added.len())
            .finish()
    }
}

/// Why a [`TlsConfig`] could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The CA file could not be read, or its PEM is malformed.
    #[error("reading CA certificates from {origin}: {source}")]
    Pem {
        /// The file, or `PEM data`.
        origin: String,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The PEM holds no `CERTIFICATE` block (a key file, a DER file...).
    #[error(
        "{origin}: no PEM CERTIFICATE block (a CA certificate looks like -----BEGIN CERTIFICATE-----)"
    )]
    NoCertificate {
        /// The file, or `PEM data`.
        origin: String,
    },
    /// A `CERTIFICATE` block is not a certificate that can be trusted.
    #[error("{origin}: certificate {index} cannot be used as a CA: {source}")]
    BadCertificate {
        /// The file, or `PEM data`.
        origin: String,
        /// Which certificate, from 1.
        index: usize,
        /// Why.
        #[source]
        source: webpki::Error,
    },
    /// rustls refused the configuration (a crypto provider without the default protocols).
    #[error("setting up TLS: {0}")]
    Setup(#[source] rustls::Error),
    /// The HTTP client could not take the TLS configuration.
    #[error("setting up the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

impl TlsConfig {
    /// Trusts the bundled Mozilla roots (webpki-roots) and the system trust store: the OS bundle
    /// (e.g. `/etc/ssl/certs`), or the files named by `SSL_CERT_FILE` / `SSL_CERT_DIR` when set.
    /// Certificates of the system store that cannot be read are skipped.
    pub fn new() -> TlsConfig {
        TlsConfig::default()
    }

    /// Also trusts the CA certificates in the PEM file at `path` (one or more
    /// `-----BEGIN CERTIFICATE-----` blocks: a root, or a root and its intermediates).
    ///
    /// # Errors
    /// [`TlsError::Pem`] when the file cannot be read or its PEM is malformed,
    /// [`TlsError::NoCertificate`] when it holds no certificate, [`TlsError::BadCertificate`]
    /// when one cannot be parsed.
    ///
    /// # Examples
    /// ```no_run
    /// # fn example() -> Result<(), scopecast_client::TlsError> {
    /// let tls = scopecast_client::TlsConfig::new().add_root_certificates("/etc/hospital/ca.pem")?;
    /// # Ok(()) }
    /// ```
    pub fn add_root_certificates(self, path: impl AsRef<Path>) -> Result<TlsConfig, TlsError> {
        let origin = path.as_ref().display().to_string();
        let pem = |source| TlsError::Pem {
            origin: origin.clone(),
            source,
        };
        let certs = CertificateDer::pem_file_iter(path.as_ref())
            .map_err(pem)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem)?;
        self.add(certs, &origin)
    }

    /// Also trusts the CA certificates in `pem` (one or more `-----BEGIN CERTIFICATE-----`
    /// blocks), for a CA built into the application.
    ///
    /// # Errors
    /// [`TlsError::Pem`] when the PEM is malformed, [`TlsError::NoCertificate`] when it holds
    /// no certificate, [`TlsError::BadCertificate`] when one cannot be parsed.
    ///
    /// # Examples
    /// ```no_run
    /// # fn example() -> Result<(), scopecast_client::TlsError> {
    /// const HOSPITAL_CA: &[u8] = b"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n";
    /// let tls = scopecast_client::TlsConfig::new().add_root_certificates_pem(HOSPITAL_CA)?;
    /// # Ok(()) }
    /// ```
    pub fn add_root_certificates_pem(self, pem: &[u8]) -> Result<TlsConfig, TlsError> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|source| TlsError::Pem {
                origin: "PEM data".to_owned(),
                source,
            })?;
        self.add(certs, "PEM data")
    }

    fn add(
        mut self,
        certs: Vec<CertificateDer<'static>>,
        origin: &str,
    ) -> Result<TlsConfig, TlsError> {
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                origin: origin.to_owned(),
            });
        }
        for (i, der) in certs.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(der).map_err(|source| {
                TlsError::BadCertificate {
                    origin: origin.to_owned(),
                    index: i + 1,
                    source,
                }
            })?;
            self.added.push(anchor.to_owned());
        }
        self.built = Arc::default();
        Ok(self)
    }

    /// The rustls `ClientConfig` every connection made with this `TlsConfig` uses (built at
    /// the first call; later calls and clones get the same one). For an HTTP client of your
    /// own that should trust the same CAs, e.g. reqwest's `use_preconfigured_tls`.
    ///
    /// # Errors
    /// [`TlsError::Setup`] when rustls refuses the configuration.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        if let Some(config) = self.built.get() {
            return Ok(config.clone());
        }
        let config = Arc::new(self.build()?);
        // Two first uses at once may both build; they build the same thing.
        Ok(self.built.get_or_init(|| config).clone())
    }

    fn build(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots: RootCertStore = webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();
        // Unreadable files and certificates of the system store are skipped: one bad entry in
        // /etc/ssl/certs must not stop every connection.
        let system = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(system.certs);
        roots.extend(self.added.iter().cloned());
        // Explicitly ring, the provider the rest of the workspace uses, rather than the process
        // default, which panics when an application enables two providers.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// An HTTP client with this trust and a request time-out.
    pub(crate) fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, TlsError> {
        let config = self.client_config()?;
        reqwest::Client::builder()
            .use_preconfigured_tls(rustls::ClientConfig::clone(&config))
            .timeout(timeout)
            .build()
            .map_err(TlsError::Http)
    }
}

/// A broker certificate this client refused, for a reason the person running it can fix; the
/// message says how. Found in a transport error's source chain by [`CertificateError::find`];
/// its source is rustls's own error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The broker's certificate chain ends at a CA this client does not trust, typically an
    /// organisation's own CA.
    #[error(
        "the broker's certificate is signed by a CA this client does not trust: pass --cacert \
         FILE (SDK: ConnectOptions::add_root_certificates) with your organisation's CA \
         certificate, or add it to the system trust store"
    )]
    UnknownIssuer(#[source] rustls::Error),
    /// The broker presents a CA certificate (basicConstraints `CA:TRUE`) as its own.
    #[error(
        "the broker presents a CA certificate as its server certificate: configure the \
         broker's tls.cert_file with a server (end-entity) certificate signed by that CA, and \
         give the CA to the client with --cacert FILE (SDK: \
         ConnectOptions::add_root_certificates)"
    )]
    CaUsedAsEndEntity(#[source] rustls::Error),
}

impl CertificateError {
    /// Looks through `error` and its sources (reqwest, tungstenite, hyper and I/O errors) for
    /// a rustls certificate error this type explains.
    pub fn find(error: &(dyn StdError + 'static)) -> Option<CertificateError> {
        let rustls = find_rustls(error)?;
        match rustls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                Some(CertificateError::UnknownIssuer(rustls.clone()))
            }
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))
                if matches!(
                    other.0.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                ) =>
            {
                Some(CertificateError::CaUsedAsEndEntity(rustls.clone()))
            }
            _ => None,
        }
    }
}

/// The first `rustls::Error` in `error`'s chain. An `io::Error` wrapping another error reports
/// that error's source as its own, skipping the wrapped error, so each one is opened here.
fn find_rustls<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(found) = find_rustls(inner)
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn every_certificate_of_a_pem_is_added_and_bad_pem_is_refused() {
        let pem = ca_pem();
        let two = format!("{pem}{}", ca_pem());
        let tls = TlsConfig::new()
            .add_root_certificates_pem(two.as_bytes())
            .unwrap();
        assert_eq!(tls.added.len(), 2);
        let config = tls.client_config().unwrap();
        // Clones share the built config.
        let clone = tls.clone();
        assert!(Arc::ptr_eq(&config, &clone.client_config().unwrap()));
        clone.http_client(Duration::from_secs(1)).unwrap();
        // Adding one more makes a new config.
        let more = tls.add_root_certificates_pem(pem.as_bytes()).unwrap();
        assert_eq!(more.added.len(), 3);
        assert!(!Arc::ptr_eq(&config, &more.client_config().unwrap()));

        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(matches!(
            TlsConfig::new().add_root_certificates_pem(key.as_bytes()),
            Err(TlsError::NoCertificate { .. })
        ));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            TlsConfig::new().add_root_certificates_pem(garbage.as_bytes()),
            Err(TlsError::BadCertificate { index: 1, .. })
        ));
        let missing = TlsConfig::new()
            .add_root_certificates("/nonexistent/ca.pem")
            .unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/ca.pem"),
            "{missing}"
        );
    }

    #[test]
    fn certificate_errors_are_found_inside_io_errors() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        assert!(matches!(
            CertificateError::find(&io),
            Some(CertificateError::UnknownIssuer(_))
        ));
        let ca = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity)),
        ));
        let ws = tokio_tungstenite::tungstenite::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            ca,
        ));
        let found = CertificateError::find(&ws).unwrap();
        assert!(matches!(found, CertificateError::CaUsedAsEndEntity(_)));
        assert!(found.to_string().contains("tls.cert_file"));
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        assert!(CertificateError::find(&expired).is_none());
    }
}
