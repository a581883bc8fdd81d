//! One delivery attempt over HTTP: a POST of the signed body, through one shared client
//! (connection reuse, rustls), to an address the guard allowed.
//!
//! - The name in the URL is resolved by [`GuardedResolver`] at connect time and every
//!   address is checked ([`AddressPolicy`]); the connection goes to those addresses only, so
//!   a name that resolves differently between the check and the connect gains nothing. An IP
//!   literal is checked before the request.
//! - Redirects are never followed (a 3xx is a failure, `policy`).
//! - Each attempt has its own time-out (`webhooks.timeout_ms`, 15 s by default); the response
//!   body is read up to `webhooks.max_response_bytes` and dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::policy::Answer;
use super::sign::{Signers, signature_header};
use super::ssrf::AddressPolicy;

/// Looks a host name up: the system's resolver, or a test's.
pub(crate) trait Lookup: Send + Sync + 'static {
    /// The addresses of `host`.
    fn lookup(&self, host: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>>;
}

/// The system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Default)]
pub(crate) struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// A resolver for the HTTP client that refuses a name when any of its addresses is refused
/// by the policy, and otherwise gives exactly the addresses it checked.
pub(crate) struct GuardedResolver {
    lookup: Arc<dyn Lookup>,
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (lookup, policy) = (self.lookup.clone(), self.policy.clone());
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips = lookup.lookup(host.clone()).await?;
            if ips.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            for ip in &ips {
                policy
                    .check(*ip)
                    .map_err(|e| format!("{host} resolves to {e}"))?;
            }
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// How the sender is set up (from `[webhooks]`).
#[derive(Debug, Clone)]
pub(crate) struct SenderSettings {
    /// Per-attempt time-out.
    pub(crate) timeout: Duration,
    /// Response bytes read at most (the rest is dropped with the connection's reuse).
    pub(crate) max_response_bytes: usize,
    /// Extra trusted CAs (PEM), besides the built-in roots.
    pub(crate) ca_pem: Option<Vec<u8>>,
}

/// One attempt's request. No `Debug`: its headers may hold an API key.
pub(crate) struct Delivery<'a> {
    /// The endpoint's URL.
    pub(crate) url: &'a str,
    /// `webhook-id`.
    pub(crate) message_id: &'a str,
    /// The exact bytes sent and signed.
    pub(crate) body: Bytes,
    /// What signs it (the current secret first; two during a rotation's overlap; `v1a` keys
    /// when the endpoint has them).
    pub(crate) signers: &'a Signers<'a>,
    /// The endpoint's extra headers.
    pub(crate) headers: &'a [(String, String)],
    /// `Content-Type` of the body: `application/json` for event bodies; a FHIR
    /// Subscription's `channel.payload` for its notification Bundles.
    pub(crate) content_type: &'a str,
}

/// What an attempt gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempted {
    /// The answer (or none).
    pub(crate) answer: Answer,
    /// Request to response headers, when a request went out.
    pub(crate) latency: Option<Duration>,
    /// Why there was no answer (or what the status means), for the attempt record.
    pub(crate) error: Option<String>,
}

/// The HTTP sender.
#[derive(Clone)]
pub(crate) struct Sender {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    max_response_bytes: usize,
}

impl Sender {
    /// A sender whose connections go where `policy` allows, with names resolved by `lookup`.
    ///
    /// # Errors
    /// The CA file is not PEM, or the TLS set-up failed.
    pub(crate) fn new(
        settings: &SenderSettings,
        policy: AddressPolicy,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Sender, String> {
        let policy = Arc::new(policy);
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment (HTTPS_PROXY ...) would resolve the name itself,
            // past the address guard.
            .no_proxy()
            .user_agent(concat!(
                "scopecast/",
                env!("CARGO_PKG_VERSION"),
                " (webhooks)"
            ))
            .dns_resolver(Arc::new(GuardedResolver {
                lookup,
                policy: policy.clone(),
            }));
        if let Some(pem) = &settings.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("webhooks.ca_file: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("the webhook HTTP client: {e}"))?;
        Ok(Sender {
            client,
            policy,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    /// Makes one attempt, signed now.
    pub(crate) async fn send(&self, d: &Delivery<'_>) -> Attempted {
        let no_answer = |error: String| Attempted {
            answer: Answer::NoAnswer,
            latency: None,
            error: Some(error),
        };
        // An IP literal does not go through the resolver: check it here.
        let url = match reqwest::Url::parse(d.url) {
            Ok(u) => u,
            Err(e) => return no_answer(format!("the endpoint's URL: {e}")),
        };
        let literal = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        if let Some(ip) = literal
            && let Err(e) = self.policy.check(ip)
        {
            return no_answer(e);
        }
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let mut req = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, d.content_type)
            .header("webhook-id", d.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature_header(d.signers, d.message_id, timestamp, &d.body),
            );
        for (name, value) in d.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let started = Instant::now();
        let response = match req.body(d.body.clone()).send().await {
            Ok(r) => r,
            Err(e) => return no_answer(describe(&e)),
        };
        let latency = started.elapsed();
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read what the receiver says, up to the cap, and drop it.
        let mut response = response;
        let mut read = 0usize;
        while read < self.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        Attempted {
            answer: Answer::Status { code, retry_after },
            latency: Some(latency),
            error: (!(200..300).contains(&code)).then(|| format!("HTTP {code}")),
        }
    }
}

/// A transport error as one line for the attempt record (the source chain says what
/// happened: a refused address, a time-out, a TLS failure).
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    // A test that cannot go on should stop at once, with the value it choked on.
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::webhooks::sign::Secret;

    /// A receiver on `ip`: answers each request with `answer` after `delay`; keeps what it got.
    struct Receiver {
        addr: SocketAddr,
        got: Arc<Mutex<Vec<String>>>,
        connections: Arc<AtomicUsize>,
    }

    async fn receiver(ip: &str, answer: &'static str, delay: Duration) -> Receiver {
        receiver_on(ip, 0, answer, delay).await
    }

    /// [`receiver`] on `port` (0: any).
    async fn receiver_on(ip: &str, port: u16, answer: &'static str, delay: Duration) -> Receiver {
        let listener = TcpListener::bind((ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (g, c) = (got.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let g = g.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut have = 0;
                    // Read the head and the body (Content-Length).
                    loop {
                        let n = s.read(&mut buf[have..]).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        have += n;
                        let text = String::from_utf8_lossy(&buf[..have]).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len: usize = text
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap_or(0);
                            if have >= end + 4 + len {
                                g.lock().unwrap().push(text);
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(delay).await;
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        Receiver {
            addr,
            got,
            connections,
        }
    }

    fn sender(allow: &[&str], timeout: Duration, lookup: Arc<dyn Lookup>) -> Sender {
        Sender::new(
            &SenderSettings {
                timeout,
                max_response_bytes: 1024,
                ca_pem: None,
            },
            AddressPolicy::new(allow.iter().map(|a| a.parse().unwrap()).collect()),
            lookup,
        )
        .unwrap()
    }

    const OK: &str = "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";

    fn delivery<'a>(url: &'a str, signers: &'a Signers<'a>) -> Delivery<'a> {
        Delivery {
            url,
            message_id: "msg_ep_1_7",
            body: Bytes::from_static(b"{\"id\":\"e\",\"seq\":7}"),
            signers,
            headers: &[],
            content_type: "application/json",
        }
    }

    fn v1(secret: &Secret) -> Signers<'_> {
        Signers {
            v1: vec![secret],
            v1a: vec![],
        }
    }

    #[tokio::test]
    async fn a_delivery_is_signed_over_the_exact_bytes_sent() {
        let r = receiver("127.0.0.1", OK, Duration::ZERO).await;
        let s = sender(
            &["127.0.0.1/32"],
            Duration::from_secs(5),
            Arc::new(SystemLookup),
        );
        let secret = Secret::generate().unwrap();
        let url = format!("http://{}/hook", r.addr);
        let headers = vec![("x-api-key".to_owned(), "k-1".to_owned())];
        let signers = v1(&secret);
        let mut d = delivery(&url, &signers);
        d.headers = &headers;
        let got = s.send(&d).await;
        assert_eq!(
            got.answer,
            Answer::Status {
                code: 204,
                retry_after: None
            }
        );
        assert_eq!(got.error, None);
        let request = r.got.lock().unwrap()[0].clone();
        let header = |name: &str| {
            request
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                })
                .unwrap()
        };
        assert_eq!(header("webhook-id"), "msg_ep_1_7");
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("x-api-key"), "k-1");
        let ts: i64 = header("webhook-timestamp").parse().unwrap();
        let body = request.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(body, "{\"id\":\"e\",\"seq\":7}");
        assert_eq!(
            header("webhook-signature"),
            format!("v1,{}", secret.sign_v1("msg_ep_1_7", ts, body.as_bytes()))
        );
    }

    #[tokio::test]
    async fn a_private_address_is_refused_without_a_connection() {
        let r = receiver("127.0.0.1", OK, Duration::ZERO).await;
        let s = sender(&[], Duration::from_secs(5), Arc::new(SystemLookup));
        let secret = Secret::generate().unwrap();
        for url in [
            format!("http://{}/hook", r.addr),
            format!("http://localhost:{}/hook", r.addr.port()),
        ] {
            let got = s.send(&delivery(&url, &v1(&secret))).await;
            assert_eq!(got.answer, Answer::NoAnswer, "{url}");
            let e = got.error.unwrap();
            assert!(e.contains("loopback"), "{url}: {e}");
        }
        assert_eq!(r.connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let target = receiver("127.0.0.1", OK, Duration::ZERO).await;
        let location: &'static str = Box::leak(
            format!(
                "HTTP/1.1 302 Found\r\nlocation: http://{}/\r\ncontent-length: 0\r\n\r\n",
                target.addr
            )
            .into_boxed_str(),
        );
        let r = receiver("127.0.0.1", location, Duration::ZERO).await;
        let s = sender(
            &["127.0.0.1/32"],
            Duration::from_secs(5),
            Arc::new(SystemLookup),
        );
        let secret = Secret::generate().unwrap();
        let url = format!("http://{}/hook", r.addr);
        let got = s.send(&delivery(&url, &v1(&secret))).await;
        assert!(matches!(got.answer, Answer::Status { code: 302, .. }));
        assert_eq!(
            target.connections.load(Ordering::SeqCst),
            0,
            "Location not fetched"
        );
    }

    #[tokio::test]
    async fn a_slow_receiver_times_out_and_retry_after_is_read() {
        let slow = receiver("127.0.0.1", OK, Duration::from_secs(3)).await;
        let s = sender(
            &["127.0.0.1/32"],
            Duration::from_millis(500),
            Arc::new(SystemLookup),
        );
        let secret = Secret::generate().unwrap();
        let url = format!("http://{}/hook", slow.addr);
        let got = s.send(&delivery(&url, &v1(&secret))).await;
        assert_eq!(got.answer, Answer::NoAnswer);
        assert!(got.error.unwrap().contains("timed out"));
        let busy = receiver(
            "127.0.0.1",
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let url = format!("http://{}/hook", busy.addr);
        let got = s.send(&delivery(&url, &v1(&secret))).await;
        assert_eq!(
            got.answer,
            Answer::Status {
                code: 429,
                retry_after: Some("2".to_owned())
            }
        );
    }

    /// Answers `ip` for every name.
    struct Fixed(IpAddr);

    impl Lookup for Fixed {
        fn lookup(&self, _: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
            let ip = self.0;
            Box::pin(async move { Ok(vec![ip]) })
        }
    }

    /// At connect time, a name resolving into each refused class is refused before any
    /// connection, the rule named; the same name resolving to a permitted address is reached.
    #[tokio::test]
    async fn every_refused_class_is_refused_at_connect_time() {
        let r = receiver("127.0.0.1", OK, Duration::ZERO).await;
        let secret = Secret::generate().unwrap();
        let url = format!("http://receiver.test:{}/hook", r.addr.port());
        for (ip, rule) in [
            ("127.0.0.1", "loopback"),
            ("0.1.2.3", "0.0.0.0/8"),
            ("10.1.2.3", "10.0.0.0/8"),
            ("172.20.0.5", "172.16.0.0/12"),
            ("192.168.1.20", "192.168.0.0/16"),
            ("169.254.169.254", "link-local"),
            ("100.100.1.1", "100.64.0.0/10"),
            ("198.19.0.1", "198.18.0.0/15"),
            ("250.1.2.3", "240.0.0.0/4"),
            ("239.1.2.3", "multicast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::ffff:127.0.0.1", "IPv4-mapped"),
            ("64:ff9b::a00:1", "NAT64"),
            ("2002:a00:1::1", "6to4"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let s = sender(&[], Duration::from_secs(5), Arc::new(Fixed(ip)));
            let got = s.send(&delivery(&url, &v1(&secret))).await;
            assert_eq!(got.answer, Answer::NoAnswer, "{ip}");
            let e = got.error.unwrap();
            assert!(e.contains(rule), "{ip}: {e}");
        }
        assert_eq!(r.connections.load(Ordering::SeqCst), 0);
        // The same sender set-up with the address allowed reaches it: the refusals above were
        // the policy's, not a broken resolver's.
        let s = sender(
            &["127.0.0.1/32"],
            Duration::from_secs(5),
            Arc::new(Fixed("127.0.0.1".parse().unwrap())),
        );
        let got = s.send(&delivery(&url, &v1(&secret))).await;
        assert!(
            matches!(got.answer, Answer::Status { code: 204, .. }),
            "{got:?}"
        );
        assert_eq!(r.connections.load(Ordering::SeqCst), 1);
    }

    /// Answers `first` the first time and 127.0.0.1 after (DNS rebinding).
    struct Rebinding {
        first: IpAddr,
        calls: AtomicUsize,
    }

    impl Lookup for Rebinding {
        fn lookup(&self, _: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let first = self.first;
            Box::pin(async move {
                Ok(vec![if n == 0 {
                    first
                } else {
                    "127.0.0.1".parse().unwrap()
                }])
            })
        }
    }

    /// An HTTP server inside network namespace `netns` on `host`, answering every POST with
    /// 204 and closing the connection; stopped when dropped.
    struct NamespacedServer {
        child: std::process::Child,
        port: u16,
    }

    impl Drop for NamespacedServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn namespaced_server(netns: &str, host: &str) -> NamespacedServer {
        use std::io::BufRead;
        const SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
    def log_message(self, *args):
        pass
s = http.server.HTTPServer((sys.argv[1], 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-c", SERVER, host])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap();
        NamespacedServer { child, port }
    }

    /// The permitted address lives in a network namespace the test makes; the name answers
    /// it first, then 127.0.0.1 (refused) once the first connection is closed: the second
    /// connection is refused when it is made, and nothing reaches loopback.
    #[tokio::test]
    async fn a_name_that_rebinds_to_a_refused_address_is_refused_at_connect_time() {
        let part = scopecast_testkit::Partition::new();
        let allowed = namespaced_server(&part.netns, &part.inside);
        let inside: IpAddr = part.inside.parse().unwrap();
        // On loopback at the URL's port: a connection that went there would be counted.
        let loopback = receiver_on("127.0.0.1", allowed.port, OK, Duration::ZERO).await;
        let s = sender(
            &[&format!("{inside}/32")],
            Duration::from_secs(5),
            Arc::new(Rebinding {
                first: inside,
                calls: AtomicUsize::new(0),
            }),
        );
        let secret = Secret::generate().unwrap();
        let url = format!("http://receiver.test:{}/hook", allowed.port);
        let first = s.send(&delivery(&url, &v1(&secret))).await;
        assert!(
            matches!(first.answer, Answer::Status { code: 204, .. }),
            "{first:?}"
        );
        let second = s.send(&delivery(&url, &v1(&secret))).await;
        assert_eq!(second.answer, Answer::NoAnswer, "{second:?}");
        let e = second.error.unwrap();
        assert!(e.contains("127.0.0.1 is refused"), "{e}");
        assert_eq!(loopback.connections.load(Ordering::SeqCst), 0);
    }
}
