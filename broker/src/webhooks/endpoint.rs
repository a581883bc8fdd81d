//! An endpoint's settings as the admin API and the engine see them: its id, the checks on its
//! URL and extra headers, and its secrets and headers sealed at rest with the key-encryption
//! key (AES-256-GCM, the endpoint's id as associated data: a sealed blob cannot be moved to
//! another endpoint).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::sign::{Secret, Signers, SigningKey};
use super::ssrf::AddressPolicy;
use crate::cluster::Kek;

/// Longest endpoint URL, bytes.
pub(crate) const MAX_URL_BYTES: usize = 2048;
/// Most extra headers per endpoint.
pub(crate) const MAX_HEADERS: usize = 16;
/// Longest extra header value, bytes.
pub(crate) const MAX_HEADER_VALUE_BYTES: usize = 1024;

/// Headers the broker sets itself, or that would change how the body is framed or read (a
/// `Content-Encoding` would make receivers verify other bytes than were signed), which an
/// endpoint's extra headers may not set. `proxy-*` and `webhook-*` are refused too.
const RESERVED_HEADERS: [&str; 12] = [
    "content-type",
    "content-length",
    "content-encoding",
    "host",
    "user-agent",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// A new endpoint id: `ep_` and 32 lowercase hex digits (no `.`, as `webhook-id` needs).
///
/// # Errors
/// The system's random source failed.
pub(crate) fn new_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
    let mut id = String::with_capacity(35);
    id.push_str("ep_");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    Ok(id)
}

/// Checks an endpoint URL as given at registration: absolute, `https` (or `http` when the
/// operator allows it), a host, no user name or password, no fragment, at most
/// [`MAX_URL_BYTES`]; an IP literal must pass the address guard (a name is checked at connect
/// time, and at registration by the caller that resolves it).
///
/// # Errors
/// A sentence naming the rule broken.
pub(crate) fn check_url(
    url: &str,
    allow_http: bool,
    policy: &AddressPolicy,
) -> Result<reqwest::Url, String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("the URL is longer than {MAX_URL_BYTES} bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not an absolute URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(
                "the URL must be https (webhooks.allow_http allows http, for tests)".to_owned(),
            );
        }
        other => return Err(format!("the URL's scheme must be https, not {other}")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the URL must not hold a user name or password (use a header)".to_owned());
    }
    if parsed.fragment().is_some() {
        return Err("the URL must not have a fragment".to_owned());
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| "the URL has no host".to_owned())?;
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        policy.check(ip)?;
    }
    Ok(parsed)
}

/// Checks an extra header: a token name (RFC 9110 5.1) that the broker does not set itself
/// (content type and length, host, user agent, connection headers, `webhook-*`), a value of
/// visible ASCII and spaces of at most [`MAX_HEADER_VALUE_BYTES`].
///
/// # Errors
/// A sentence naming the header and the rule.
pub(crate) fn check_header(name: &str, value: &str) -> Result<(), String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(tchar) {
        return Err(format!("header name {name:?} is not an HTTP token"));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str())
        || lower.starts_with("webhook-")
        || lower.starts_with("proxy-")
    {
        return Err(format!("header {name} is set by the broker"));
    }
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(format!(
            "header {name}: the value is longer than {MAX_HEADER_VALUE_BYTES} bytes"
        ));
    }
    if !value
        .chars()
        .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic())
    {
        return Err(format!("header {name}: the value must be visible ASCII"));
    }
    Ok(())
}

/// Checks an endpoint's extra headers: at most [`MAX_HEADERS`], each by [`check_header`], no
/// name twice.
///
/// # Errors
/// A sentence naming the header and the rule.
pub(crate) fn check_headers(headers: &[(String, String)]) -> Result<(), String> {
    if headers.len() > MAX_HEADERS {
        return Err(format!("at most {MAX_HEADERS} extra headers"));
    }
    for (i, (name, value)) in headers.iter().enumerate() {
        check_header(name, value)?;
        if headers[..i]
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            return Err(format!("header {name} is given twice"));
        }
    }
    Ok(())
}

/// What an endpoint keeps sealed: its signing secrets and keys and its extra headers (which
/// often hold an API key). Never logged: `Debug` names no value.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    /// The secret signing now.
    pub(crate) current: Secret,
    /// The secret before the last rotation, and until when (Unix ms) it signs too.
    pub(crate) previous: Option<(Secret, i64)>,
    /// The `v1a` (ed25519) key signing now, when the endpoint asked for `v1a`.
    pub(crate) ed25519: Option<SigningKey>,
    /// The `v1a` key before the last rotation: it signs until `previous`'s time.
    pub(crate) previous_ed25519: Option<SigningKey>,
    /// Extra headers sent with every delivery.
    pub(crate) headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("previous_until", &self.previous.as_ref().map(|p| p.1))
            .field("v1a", &self.ed25519.as_ref().map(SigningKey::public))
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct SealedForm {
    secret: String,
    previous: Option<(String, i64)>,
    headers: Vec<(String, String)>,
    /// Base64 seeds of the `v1a` keys (absent in forms sealed before `v1a` existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ed25519: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_ed25519: Option<String>,
}

fn aad(endpoint_id: &str) -> String {
    format!("webhook:{endpoint_id}")
}

impl Keys {
    /// What signs at `now_ms`: the current secret (and `v1a` key), and the previous ones
    /// while the rotation's overlap lasts.
    pub(crate) fn signing(&self, now_ms: i64) -> Signers<'_> {
        let mut out = Signers {
            v1: vec![&self.current],
            v1a: self.ed25519.iter().collect(),
        };
        if let Some((old, until)) = &self.previous
            && *until > now_ms
        {
            out.v1.push(old);
            out.v1a.extend(self.previous_ed25519.iter());
        }
        out
    }

    /// Replaces the current secret with `new` (and the `v1a` key, when there is one, with
    /// `new_ed25519`); the old ones sign too until `until_ms`.
    pub(crate) fn rotate(&mut self, new: Secret, new_ed25519: Option<SigningKey>, until_ms: i64) {
        let old = std::mem::replace(&mut self.current, new);
        self.previous = Some((old, until_ms));
        self.previous_ed25519 = match (&mut self.ed25519, new_ed25519) {
            (Some(current), Some(new)) => Some(std::mem::replace(current, new)),
            _ => None,
        };
    }

    /// Turns `v1a` on (with `key`, when it is off) or off (dropping every `v1a` key).
    pub(crate) fn set_v1a(&mut self, key: Option<SigningKey>) {
        match key {
            Some(k) => {
                if self.ed25519.is_none() {
                    self.ed25519 = Some(k);
                }
            }
            None => {
                self.ed25519 = None;
                self.previous_ed25519 = None;
            }
        }
    }

    /// The keys sealed for endpoint `endpoint_id`.
    ///
    /// # Errors
    /// The random source failed.
    pub(crate) fn seal(&self, kek: &Kek, endpoint_id: &str) -> Result<Vec<u8>, String> {
        let form = SealedForm {
            secret: STANDARD.encode(self.current.bytes()),
            previous: self
                .previous
                .as_ref()
                .map(|(s, until)| (STANDARD.encode(s.bytes()), *until)),
            headers: self.headers.clone(),
            ed25519: self.ed25519.as_ref().map(|k| STANDARD.encode(k.seed())),
            previous_ed25519: self
                .previous_ed25519
                .as_ref()
                .map(|k| STANDARD.encode(k.seed())),
        };
        let plain = serde_json::to_vec(&form).map_err(|e| e.to_string())?;
        kek.seal(&aad(endpoint_id), &plain)
    }

    /// The keys of endpoint `endpoint_id` from their sealed form.
    ///
    /// # Errors
    /// Not sealed with this key for this endpoint, or not a sealed form.
    pub(crate) fn unseal(kek: &Kek, endpoint_id: &str, sealed: &[u8]) -> Result<Keys, String> {
        let plain = kek.unseal(&aad(endpoint_id), sealed)?;
        let form: SealedForm = serde_json::from_slice(&plain)
            .map_err(|_| format!("the sealed keys of {endpoint_id} are not readable"))?;
        let secret = |b64: &str| {
            STANDARD
                .decode(b64)
                .map_err(|_| format!("the sealed keys of {endpoint_id} are not readable"))
                .and_then(|b| Secret::from_bytes(b).map_err(str::to_owned))
        };
        let ed25519 = |b64: Option<String>| match b64 {
            None => Ok(None),
            Some(b64) => STANDARD
                .decode(b64)
                .map_err(|_| format!("the sealed keys of {endpoint_id} are not readable"))
                .and_then(|b| SigningKey::from_seed(&b).map_err(str::to_owned))
                .map(Some),
        };
        Ok(Keys {
            ed25519: ed25519(form.ed25519)?,
            previous_ed25519: ed25519(form.previous_ed25519)?,
            current: secret(&form.secret)?,
            previous: match form.previous {
                Some((s, until)) => Some((secret(&s)?, until)),
                None => None,
            },
            headers: form.headers,
        })
    }
}

#[cfg(test)]
mod tests {
    // A test that cannot go on should stop at once, with the value it choked on.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn kek() -> Kek {
        Kek::parse(&Kek::generate().unwrap()).unwrap()
    }

    #[test]
    fn ids_are_distinct_and_hold_no_dot() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("ep_") && a.len() == 35 && !a.contains('.'));
    }

    #[test]
    fn urls_are_checked() {
        let p = AddressPolicy::default();
        assert!(check_url("https://hooks.example.org/in?x=1", false, &p).is_ok());
        for (url, why) in [
            ("http://hooks.example.org/", "must be https"),
            ("ftp://hooks.example.org/", "scheme must be https"),
            (
                "https://user:pw@hooks.example.org/",
                "user name or password",
            ),
            ("https://hooks.example.org/#frag", "fragment"),
            ("https://127.0.0.1/", "loopback"),
            ("https://[::ffff:10.0.0.1]/", "IPv4-mapped"),
            ("https://169.254.169.254/latest", "link-local"),
            ("/relative", "absolute"),
        ] {
            let e = check_url(url, false, &p).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
        assert!(check_url("http://hooks.example.org/", true, &p).is_ok());
        let long = format!("https://h.example/{}", "a".repeat(MAX_URL_BYTES));
        assert!(check_url(&long, false, &p).is_err());
        let local = AddressPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(check_url("http://127.0.0.1:8080/hook", true, &local).is_ok());
    }

    #[test]
    fn headers_are_checked() {
        assert!(check_header("X-Api-Key", "k 1").is_ok());
        for (name, value) in [
            ("Content-Type", "text/plain"),
            ("webhook-signature", "v1,x"),
            ("Host", "evil"),
            ("bad name", "x"),
            ("X-Ok", "line\r\nInjected: 1"),
        ] {
            assert!(check_header(name, value).is_err(), "{name}");
        }
        assert!(check_header("X-Long", &"a".repeat(MAX_HEADER_VALUE_BYTES + 1)).is_err());
        let h = |n: &str| (n.to_owned(), "v".to_owned());
        assert!(check_headers(&[h("X-A"), h("X-B")]).is_ok());
        assert!(
            check_headers(&[h("X-A"), h("x-a")])
                .unwrap_err()
                .contains("twice")
        );
        let many: Vec<_> = (0..=MAX_HEADERS).map(|i| h(&format!("X-{i}"))).collect();
        assert!(check_headers(&many).is_err());
    }

    #[test]
    fn keys_seal_for_one_endpoint_and_rotate_with_an_overlap() {
        let k = kek();
        let mut keys = Keys {
            current: Secret::generate().unwrap(),
            previous: None,
            ed25519: None,
            previous_ed25519: None,
            headers: vec![("X-Api-Key".into(), "secret-key".into())],
        };
        let sealed = keys.seal(&k, "ep_a").unwrap();
        assert!(
            !sealed.windows(10).any(|w| w == b"secret-key"),
            "sealed, not plain"
        );
        assert_eq!(Keys::unseal(&k, "ep_a", &sealed).unwrap(), keys);
        assert!(
            Keys::unseal(&k, "ep_b", &sealed).is_err(),
            "another endpoint's"
        );
        assert!(
            Keys::unseal(&kek(), "ep_a", &sealed).is_err(),
            "another key's"
        );
        let old = keys.current.clone();
        keys.rotate(Secret::generate().unwrap(), None, 1_000);
        assert_eq!(keys.signing(999).v1, vec![&keys.current, &old]);
        assert_eq!(keys.signing(1_000).v1, vec![&keys.current]);
        assert!(keys.signing(999).v1a.is_empty());
        let again = Keys::unseal(&k, "ep_a", &keys.seal(&k, "ep_a").unwrap()).unwrap();
        assert_eq!(again, keys);
        // v1a on: its key signs after the secrets, rotates with them and is sealed too.
        keys.set_v1a(Some(SigningKey::generate().unwrap()));
        let first = keys.ed25519.clone().unwrap();
        keys.set_v1a(Some(SigningKey::generate().unwrap()));
        assert_eq!(
            keys.ed25519.as_ref(),
            Some(&first),
            "turning it on twice keeps the key"
        );
        let sealed = keys.seal(&k, "ep_a").unwrap();
        assert!(
            !sealed.windows(8).any(|w| w == &first.seed()[..8]),
            "sealed, not plain"
        );
        assert_eq!(Keys::unseal(&k, "ep_a", &sealed).unwrap(), keys);
        keys.rotate(
            Secret::generate().unwrap(),
            Some(SigningKey::generate().unwrap()),
            2_000,
        );
        assert_eq!(keys.signing(1_999).v1a.len(), 2);
        assert_eq!(keys.signing(1_999).v1a[1], &first);
        assert_eq!(keys.signing(2_000).v1a.len(), 1);
        assert_ne!(keys.signing(2_000).v1a[0], &first);
        keys.set_v1a(None);
        assert!(keys.signing(1_999).v1a.is_empty());
        let shown = format!("{keys:?}");
        assert!(!shown.contains("secret-key") && shown.contains("X-Api-Key"));
    }
}
