//! Standard Webhooks 1.0.0 signing (`standard-webhooks/standard-webhooks`,
//! `spec/standard-webhooks.md`): the `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` headers of an outgoing delivery, and the secrets they are made with.
//!
//! - The signed content is `webhook-id + "." + webhook-timestamp + "." + body`, the body being
//!   exactly the bytes sent.
//! - `v1` is HMAC-SHA256 with a secret of 24 to 64 random bytes, shown as `whsec_<base64>`;
//!   the header is a space-separated list of `v1,<base64 MAC>`, one per secret in force (two
//!   during a rotation's overlap), so a receiver holding either secret verifies.
//! - `v1a` is ed25519 over the same content, with a key pair per endpoint whose public key is
//!   shown as `whpk_<base64 of 32 bytes>` (the secret half never leaves the broker); an
//!   endpoint that asks for it gets `v1a,<base64 signature>` after its `v1` entries. Libraries
//!   that only know `v1` skip `v1a` entries.
//! - The id and the timestamp never contain `.` (the separator).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

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

/// The prefix of a `v1a` public key's text form.
pub(crate) const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// A `v1a` (ed25519) signing key: the 32-byte seed and the key pair made from it. Never
/// logged: `Debug` shows the public key only.
#[derive(Clone)]
pub(crate) struct SigningKey {
    seed: [u8; 32],
    pair: Arc<Ed25519KeyPair>,
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.seed == other.seed
    }
}

impl Eq for SigningKey {}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public())
    }
}

impl SigningKey {
    /// A new key pair from 32 bytes of the system's CSPRNG.
    ///
    /// # Errors
    /// The system's random source failed.
    pub(crate) fn generate() -> Result<SigningKey, ring::error::Unspecified> {
        let mut seed = [0u8; 32];
        SystemRandom::new().fill(&mut seed)?;
        SigningKey::from_seed(&seed).map_err(|_| ring::error::Unspecified)
    }

    /// The key pair of a 32-byte seed (RFC 8032 5.1.5 private key).
    ///
    /// # Errors
    /// Not 32 bytes.
    pub(crate) fn from_seed(seed: &[u8]) -> Result<SigningKey, &'static str> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| "an ed25519 signing key is 32 bytes")?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| "an ed25519 signing key is 32 bytes")?;
        Ok(SigningKey {
            seed,
            pair: Arc::new(pair),
        })
    }

    /// Its seed (to be sealed at rest).
    pub(crate) fn seed(&self) -> &[u8] {
        &self.seed
    }

    /// The public key's text form, `whpk_<base64>`: shown to anyone who may see the endpoint.
    pub(crate) fn public(&self) -> String {
        format!(
            "{PUBLIC_KEY_PREFIX}{}",
            STANDARD.encode(self.pair.public_key().as_ref())
        )
    }

    /// The `v1a` signature of one delivery: base64 of the ed25519 signature of
    /// `id.timestamp.body`.
    pub(crate) fn sign_v1a(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let mut content = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
        content.extend_from_slice(id.as_bytes());
        content.push(b'.');
        content.extend_from_slice(timestamp.as_bytes());
        content.push(b'.');
        content.extend_from_slice(body);
        STANDARD.encode(self.pair.sign(&content).as_ref())
    }
}

/// What signs one delivery: the `v1` secrets in force (the current one first; two during a
/// rotation's overlap) and the `v1a` keys in force (none unless the endpoint asked for them).
#[derive(Debug, Default)]
pub(crate) struct Signers<'a> {
    /// `v1` secrets.
    pub(crate) v1: Vec<&'a Secret>,
    /// `v1a` keys.
    pub(crate) v1a: Vec<&'a SigningKey>,
}

/// The `webhook-signature` header value: `v1,<mac>` for each `v1` secret, then
/// `v1a,<signature>` for each `v1a` key, separated by spaces.
pub(crate) fn signature_header(
    signers: &Signers<'_>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    signers
        .v1
        .iter()
        .map(|s| format!("v1,{}", s.sign_v1(id, timestamp, body)))
        .chain(
            signers
                .v1a
                .iter()
                .map(|k| format!("v1a,{}", k.sign_v1a(id, timestamp, body))),
        )
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
            &Signers {
                v1: vec![&secret],
                v1a: vec![],
            },
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
        let header = signature_header(
            &Signers {
                v1: vec![&new, &old],
                v1a: vec![],
            },
            "msg_e_1",
            1,
            b"{}",
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], format!("v1,{}", new.sign_v1("msg_e_1", 1, b"{}")));
        assert_eq!(parts[1], format!("v1,{}", old.sign_v1("msg_e_1", 1, b"{}")));
        assert_ne!(parts[0], parts[1]);
    }

    /// RFC 8032 7.1 TEST 2 (one-byte message 0x72), through the key pair made from its seed;
    /// the `v1a` entry follows the `v1` one and verifies against the shown public key.
    #[test]
    fn v1a_signs_with_ed25519_as_rfc_8032_does() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
                .collect()
        };
        let key = SigningKey::from_seed(&hex(
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        ))
        .expect("seed");
        assert_eq!(
            key.public(),
            format!(
                "whpk_{}",
                STANDARD.encode(hex(
                    "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
                ))
            )
        );
        let rfc = key.pair.sign(&[0x72]);
        assert_eq!(
            rfc.as_ref(),
            hex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00").as_slice()
        );
        let secret = Secret::generate().expect("random");
        let header = signature_header(
            &Signers {
                v1: vec![&secret],
                v1a: vec![&key],
            },
            "msg_e_1",
            7,
            b"{}",
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts[0].starts_with("v1,"));
        let sig = STANDARD
            .decode(parts[1].strip_prefix("v1a,").expect("v1a"))
            .expect("base64");
        let public = STANDARD
            .decode(key.public().strip_prefix("whpk_").expect("prefix"))
            .expect("base64");
        let verify = |content: &[u8]| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
                .verify(content, &sig)
                .is_ok()
        };
        assert!(verify(b"msg_e_1.7.{}"));
        assert!(!verify(b"msg_e_1.7.{} "));
        assert!(SigningKey::from_seed(&[0; 31]).is_err());
        assert!(!format!("{key:?}").contains(&STANDARD.encode(key.seed())));
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
