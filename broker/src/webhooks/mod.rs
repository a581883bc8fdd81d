//! Outgoing delivery (issue 17, WEBHOOKS.md): events pushed to an application's HTTPS endpoint
//! as Standard Webhooks, only while its client ID is active in this environment and its scope
//! covers the event.
//!
//! - [`endpoint`]: an endpoint's id, URL and header checks, and its secrets and headers
//!   sealed at rest.
//! - [`engine`]: the delivery engine: a worker per endpoint whose lease this node holds,
//!   tailing the log from the endpoint's cursor, the activation rule at every attempt.
//! - [`service`]: what the admin API and the application's API do with endpoints.
//! - [`policy`]: what an attempt's answer means, and when the next attempt goes.
//! - [`sign`]: the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers (`v1`,
//!   HMAC-SHA256) and the `whsec_` secrets.
//! - [`send`]: one attempt over HTTP, through the address guard, never following a
//!   redirect.
//! - [`ssrf`]: where a delivery may go: global unicast addresses, checked at registration and
//!   at connect time, and the operator's allow-list.

pub(crate) mod endpoint;
pub(crate) mod engine;
pub(crate) mod policy;
pub(crate) mod send;
pub(crate) mod service;
pub(crate) mod sign;
pub(crate) mod ssrf;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use engine::{EngineParts, SHUTDOWN_WAIT, Webhooks};
pub(crate) use policy::DEFAULT_SCHEDULE_MS;

use crate::cluster::Kek;
use crate::config::Config;

/// The single-node key-encryption key of webhook secrets, in the data folder.
pub(crate) const KEK_FILE: &str = "webhooks.kek";

/// The key-encryption key that seals endpoint secrets: the cluster's
/// (`cluster.key_encryption_key_file`) in cluster mode; else `<data_dir>/webhooks.kek`, made
/// on first start (32 random bytes, base64, mode 0600).
///
/// # Errors
/// A sentence naming the file when it cannot be made or read, or is readable by others.
pub(crate) fn kek(config: &Config) -> Result<Kek, String> {
    if let Some(path) = &config.cluster.key_encryption_key_file
        && config.cluster.enabled()
    {
        return Kek::load(path);
    }
    let path = config.data_dir.join(KEK_FILE);
    make_kek(&path)?;
    Kek::load_setting(&path, "the webhook key-encryption key")
}

fn make_kek(path: &Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    let text = Kek::generate()?;
    match crate::server::write_private(path, format!("{text}\n").as_bytes()) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "made the webhook key-encryption key (keep it with the data folder's backups)");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// What the webhook service is made of besides the broker's shared parts.
pub(crate) struct Kit {
    pub(crate) kek: Arc<Kek>,
    pub(crate) sender: send::Sender,
    pub(crate) policy: ssrf::AddressPolicy,
    pub(crate) lookup: Arc<dyn send::Lookup>,
}

/// The key-encryption key, and the HTTP sender of `config.webhooks` with the system's
/// resolver.
///
/// # Errors
/// The key cannot be made or read; the CA file cannot be read or is not PEM; an
/// allow-list entry is not a range.
pub(crate) fn kit(config: &Config) -> Result<Kit, String> {
    let (sender, policy) = sender(config)?;
    Ok(Kit {
        kek: Arc::new(kek(config)?),
        sender,
        policy,
        lookup: Arc::new(send::SystemLookup),
    })
}

fn sender(config: &Config) -> Result<(send::Sender, ssrf::AddressPolicy), String> {
    let w = &config.webhooks;
    let policy = ssrf::AddressPolicy::new(w.allowed_ranges()?);
    let ca_pem = match &w.ca_file {
        Some(p) => {
            Some(std::fs::read(p).map_err(|e| format!("webhooks.ca_file {}: {e}", p.display()))?)
        }
        None => None,
    };
    let sender = send::Sender::new(
        &send::SenderSettings {
            timeout: Duration::from_millis(w.timeout_ms),
            max_response_bytes: w.max_response_bytes,
            ca_pem,
        },
        policy.clone(),
        Arc::new(send::SystemLookup),
    )?;
    Ok((sender, policy))
}
