//! An organisation's own PKI, made by the test: a root CA, an intermediate CA signed by the root,
//! and a server certificate for `localhost` signed by the intermediate, as PEM files.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// The PEM files of a made-up hospital PKI, in a temporary folder removed on drop.
pub struct InternalPki {
    /// The root CA certificate: what a client is given to trust.
    pub root_pem: String,
    /// `root.pem`: the root CA certificate.
    pub root_file: PathBuf,
    /// `root-key.pem`: the root CA's private key (for a broker misconfigured to serve the CA).
    pub root_key_file: PathBuf,
    /// `chain.pem`: the server certificate, then the intermediate CA (a broker's `cert_file`).
    pub chain_file: PathBuf,
    /// `server-key.pem`: the server certificate's private key (a broker's `key_file`).
    pub key_file: PathBuf,
    /// Owns the files.
    _dir: TempDir,
}

fn ca_params(name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(constraints);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "St. Elsewhere Hospital");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl InternalPki {
    /// Makes the three certificates and writes them.
    ///
    /// # Panics
    /// When a key or certificate cannot be made or written: a test cannot go on.
    pub fn new() -> InternalPki {
        let dir = tempfile::tempdir().expect("temporary folder");
        let root_key = KeyPair::generate().expect("root key");
        let root = ca_params("St. Elsewhere Root CA", BasicConstraints::Unconstrained)
            .self_signed(&root_key)
            .expect("root CA");
        let intermediate_key = KeyPair::generate().expect("intermediate key");
        let intermediate = ca_params("St. Elsewhere Issuing CA", BasicConstraints::Constrained(0))
            .signed_by(&intermediate_key, &root, &root_key)
            .expect("intermediate CA");
        let server_key = KeyPair::generate().expect("server key");
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).expect("server");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.is_ca = IsCa::ExplicitNoCa;
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server
            .signed_by(&server_key, &intermediate, &intermediate_key)
            .expect("server certificate");

        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        InternalPki {
            root_pem: root.pem(),
            root_file: write("root.pem", &root.pem()),
            root_key_file: write("root-key.pem", &root_key.serialize_pem()),
            chain_file: write(
                "chain.pem",
                &format!("{}{}", server.pem(), intermediate.pem()),
            ),
            key_file: write("server-key.pem", &server_key.serialize_pem()),
            _dir: dir,
        }
    }
}

impl Default for InternalPki {
    fn default() -> InternalPki {
        InternalPki::new()
    }
}
