//! Standard Webhooks 1.0.0 signing (`standard-webhooks/standard-webhooks`,
//! `spec/standard-webhooks.md`): the `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` headers of an outgoing delivery, and the secrets they are made with.
//!
//! - The signed content is `webhook-id + "." + webhook-timestamp + "." + body`, the body being
//!   exactly the bytes sent.
//! - `v1` is HMAC-SHA256 with a secret of 24 to 64 random bytes, shown as `whsec_<base64>`;
//!   the header is a space-separated list of `v1,<base64 MAC>`, one per secret in force (two
//!   during a rotation's overlap), so a receiver holding either secret verifies.
//! - The id and the timestamp never contain `.` (the separator).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix of a `v1` secret's text form.
pub(crate) const SECRET_PREFIX: &str = "whsec_";

/// Bytes of a secret the broker makes (Standard Webhooks allows 24 to 64).
const NEW_SECRET_BYTES: usize = 32;

/// A `v1` signing secret: 24 to 64 bytes. Never logged: `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A new random secret (32 bytes from the system's CSPRNG).
    ///
    /// # Errors
    /// The system's random source failed.
    pub(crate) fn generate() -> Result<Secret, ring::error::Unspecified> {
        let mut bytes = vec![0u8; NEW_SECRET_BYTES];
        SystemRandom::new().fill(&mut bytes)?;
        Ok(Secret(bytes))
    }

    #[cfg(test)]
    /// A secret from its text form: `whsec_` and the standard base64 of 24 to 64 bytes (the
    /// prefix may be left out, as the reference libraries allow).
    ///
    /// # Errors
    /// A sentence saying what is wrong (never echoing the text).
    pub(crate) fn parse(text: &str) -> Result<Secret, &'static str> {
        let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| "a webhook secret is `whsec_` and standard base64")?;
        Secret::from_bytes(bytes)
    }

    /// A secret from its raw bytes.
    ///
    /// # Errors
    /// Fewer than 24 or more than 64 bytes.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<Secret, &'static str> {
        if !(24..=64).contains(&bytes.len()) {
            return Err("a webhook secret is 24 to 64 bytes (Standard Webhooks)");
        }
        Ok(Secret(bytes))
    }

    /// Its raw bytes (to be sealed at rest).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its text form, `whsec_<base64>`: shown once, to the endpoint's owner.
    pub(crate) fn reveal(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// The `v1` signature of one delivery: base64 of HMAC-SHA256 over
    /// `id.timestamp.body`.
    pub(crate) fn sign_v1(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        STANDARD.encode(ctx.sign().as_ref())
    }
}

/// The `webhook-signature` header value: `v1,<mac>` for each of `secrets` (the current one
/// first), separated by spaces.
pub(crate) fn signature_header(
    secrets: &[&Secret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| format!("v1,{}", s.sign_v1(id, timestamp, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `webhook-id` of the delivery of events `first..=last` of the event log `epoch`
/// ([`crate::log::EventLog::epoch`]) to endpoint `endpoint`: `msg_<endpoint>_<log>_<first>`,
/// and `_<last>` after it for a batch of more than one, where `<log>` is 8 hex digits of the
/// SHA-256 of the epoch (a `seq` of another log, e.g. a new stream, is another message). The
/// same for every attempt (a receiver de-duplicates on it), made by the broker (never the
/// publisher's `event_id`, which the publisher chooses). Endpoint ids are made by the broker
/// too and hold no `.`.
pub(crate) fn message_id(endpoint: &str, epoch: &str, first: u64, last: u64) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(epoch.as_bytes());
    let log: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    if first == last {
        format!("msg_{endpoint}_{log}_{first}")
    } else {
        format!("msg_{endpoint}_{log}_{first}_{last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries (and what PyPI's
    /// `standardwebhooks` 1.1.0 signs with those inputs).
    #[test]
    fn the_reference_example_signs_alike() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let header = signature_header(
            &[&secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let (old, new) = (
            Secret::generate().expect("random"),
            Secret::generate().expect("random"),
        );
        let header = signature_header(&[&new, &old], "msg_e_1", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], format!("v1,{}", new.sign_v1("msg_e_1", 1, b"{}")));
        assert_eq!(parts[1], format!("v1,{}", old.sign_v1("msg_e_1", 1, b"{}")));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn one_byte_more_is_another_signature() {
        let s = Secret::generate().expect("random");
        assert_ne!(
            s.sign_v1("msg_e_1", 5, b"{\"a\":1}"),
            s.sign_v1("msg_e_1", 5, b"{\"a\":1} ")
        );
        assert_ne!(
            s.sign_v1("msg_e_1", 5, b"{}"),
            s.sign_v1("msg_e_1", 6, b"{}")
        );
    }

    #[test]
    fn secrets_round_trip_and_sizes_are_checked() {
        let s = Secret::generate().expect("random");
        let text = s.reveal();
        assert!(text.starts_with("whsec_"));
        assert_eq!(Secret::parse(&text).expect("parse"), s);
        assert_eq!(Secret::from_bytes(s.bytes().to_vec()).expect("bytes"), s);
        assert!(Secret::from_bytes(vec![0; 23]).is_err());
        assert!(Secret::from_bytes(vec![0; 65]).is_err());
        assert!(Secret::from_bytes(vec![0; 24]).is_ok());
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn message_ids_hold_no_separator_and_name_the_log() {
        let id = message_id("ep_7f", "jetstream:SCOPECAST_EVENTS:17", 42, 42);
        assert!(id.starts_with("msg_ep_7f_") && id.ends_with("_42"), "{id}");
        assert_eq!(id.len(), "msg_ep_7f_".len() + 8 + "_42".len());
        assert!(!id.contains('.'));
        assert_eq!(
            id,
            message_id("ep_7f", "jetstream:SCOPECAST_EVENTS:17", 42, 42),
            "stable"
        );
        assert_ne!(
            id,
            message_id("ep_7f", "jetstream:SCOPECAST_EVENTS:18", 42, 42)
        );
        assert!(message_id("ep_7f", "redb:1", 42, 44).ends_with("_42_44"));
    }
}
