//! The first request line of a connection, read before hyper sees it, so that a URL with a
//! character that must be percent-encoded gets a JSON answer with a hint.
//!
//! `curl 'http://h/v1/events?topic=adt.>'` sends the `>` as it is. httparse takes it, but the
//! `http` crate's URI parser (WHATWG query and path sets) refuses `<`, `>` and `"` in a query and
//! `<`, `>` and a backquote in a path, and hyper then answers `400` with an empty body before
//! any handler runs: nothing in axum can reach that answer. So the listener reads the first
//! request line itself; when its target is refused only because of those characters, it answers
//! `{"error":"bad_request","reason":"invalid_uri","message":...}` naming the character and the
//! encoded form, and closes. Any other line is replayed to hyper untouched ([`Replay`]).
//!
//! Only the first request of a connection is looked at: telling where a later request on a
//! kept-alive connection begins would mean parsing HTTP bodies here. Clients that reuse
//! connections (browsers, reqwest, Python `requests`, the SDK) encode these characters anyway.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Uri;
use scopecast_protocol::{ErrorCode, Reason};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Characters the URI parser refuses unencoded that httparse lets through (outside them, a
/// refused target is left to hyper).
const MUST_ENCODE: [u8; 4] = [b'<', b'>', b'"', b'`'];

/// Longest request target quoted back, encoded, in the message.
const MAX_QUOTED_TARGET: usize = 512;

/// How long the refusal waits for the client to close after the answer, so that closing does
/// not reset the connection (and lose the answer) while request bytes are still arriving.
const DRAIN: Duration = Duration::from_secs(1);

/// Most bytes read and dropped while draining.
const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// A connection whose first bytes were read already: they are read again first.
pub(super) struct Replay<IO> {
    /// The bytes read before hyper took over; emptied once replayed.
    head: Vec<u8>,
    /// How much of `head` was replayed.
    pos: usize,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replay<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.pos);
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.head.len() {
                this.head = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replay<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Reads the first request line of `io` (up to `limit` bytes, within `wait`). Returns the
/// connection for hyper, with what was read replayed first; or `None` when the connection is
/// done: it timed out, failed, or had an unencoded character and was answered here.
pub(super) async fn screen<IO>(
    mut io: IO,
    limit: usize,
    wait: Duration,
    peer: std::net::SocketAddr,
) -> Option<Replay<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    let read = async {
        while !head.contains(&b'\n') && head.len() < limit {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, io::Error>(())
    };
    match tokio::time::timeout(wait, read).await {
        Ok(Ok(())) => {}
        // Hyper's own header time-out would end the connection the same way, unanswered.
        Ok(Err(_)) | Err(_) => return None,
    }
    let Some(message) = refusal(&head) else {
        return Some(Replay { head, pos: 0, io });
    };
    tracing::debug!(%peer, reason = Reason::InvalidUri.as_str(), "request refused: {message}");
    let body = serde_json::json!({
        "error": ErrorCode::BadRequest.as_str(),
        "reason": Reason::InvalidUri.as_str(),
        "message": message,
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(wait, async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
    // Read what is left of the request until the client closes, so that closing does not
    // reset the connection before the client has read the answer.
    let _ = tokio::time::timeout(DRAIN, async {
        let mut drained = 0;
        while drained < MAX_DRAIN_BYTES {
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    None
}

/// The message for a request line whose target is refused only for characters that must be
/// percent-encoded; `None` for any other line (hyper takes it from there).
fn refusal(head: &[u8]) -> Option<String> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let mut parts = line.split(|&b| b == b' ');
    let (_method, target) = (parts.next()?, parts.next()?);
    if !target.starts_with(b"/") || Uri::try_from(target).is_ok() {
        return None;
    }
    let mut encoded = Vec::with_capacity(target.len() + 8);
    let mut found: Vec<u8> = Vec::new();
    for &b in target {
        if MUST_ENCODE.contains(&b) {
            encoded.extend_from_slice(format!("%{b:02X}").as_bytes());
            if !found.contains(&b) {
                found.push(b);
            }
        } else {
            encoded.push(b);
        }
    }
    if found.is_empty() || Uri::try_from(encoded.as_slice()).is_err() {
        return None;
    }
    let target = String::from_utf8_lossy(target);
    let encoded = String::from_utf8_lossy(&encoded);
    let chars: Vec<String> = found
        .iter()
        .map(|&b| match b {
            b'`' => format!("backquote (%{b:02X})"),
            _ => format!("`{}` (%{b:02X})", char::from(b)),
        })
        .collect();
    let mut message = format!(
        "the URL has an unencoded {}: percent-encode it",
        chars.join(", ")
    );
    if encoded.len() <= MAX_QUOTED_TARGET {
        message.push_str(&format!(", as in {encoded}"));
    }
    if let Some(hint) = curl_hint(&target) {
        message.push_str(&format!("; {hint}"));
    }
    Some(message)
}

/// With curl, `-G --data-urlencode` encodes a query parameter: named for the first one that
/// holds a character to encode.
fn curl_hint(target: &str) -> Option<String> {
    let (path, query) = target.split_once('?')?;
    let param = query
        .split('&')
        .find(|p| p.bytes().any(|b| MUST_ENCODE.contains(&b)))?;
    if param.len() > MAX_QUOTED_TARGET || param.contains('\'') {
        return None;
    }
    Some(format!(
        "with curl, let it encode the query: curl -G --data-urlencode '{param}' <broker>{path}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_what_encoding_would_fix() {
        let msg = refusal(b"GET /v1/events?topic=adt.> HTTP/1.1\r\nHost: x\r\n").unwrap();
        assert_eq!(
            msg,
            "the URL has an unencoded `>` (%3E): percent-encode it, as in \
             /v1/events?topic=adt.%3E; with curl, let it encode the query: curl -G \
             --data-urlencode 'topic=adt.>' <broker>/v1/events"
        );
        let msg = refusal(b"GET /v1/events?topic=\"a\"&x=<b> HTTP/1.1\r\n").unwrap();
        assert!(msg.contains("`\"` (%22), `<` (%3C), `>` (%3E)"), "{msg}");
        assert!(msg.contains("'topic=\"a\"'"), "{msg}");
        let msg = refusal(b"GET /a`b HTTP/1.1\n").unwrap();
        assert!(msg.contains("unencoded backquote (%60)"), "{msg}");
        assert!(!msg.contains("curl"), "{msg}");

        for fine in [
            &b"GET /v1/events?topic=adt.%3E HTTP/1.1\r\n"[..],
            b"GET /healthz HTTP/1.1\r\n",
            b"GET /v1/events?topic=adt.> HTTP/1.1",
            b"GET http://h/v1/events?topic=adt.> HTTP/1.1\r\n",
            b"\r\n",
            b"GARBAGE\r\n",
        ] {
            assert_eq!(refusal(fine), None, "{}", String::from_utf8_lossy(fine));
        }
    }

    #[tokio::test]
    async fn replays_what_it_read() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        drop(client);
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let mut io = screen(server, 8192, Duration::from_secs(1), peer)
            .await
            .unwrap();
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[tokio::test]
    async fn answers_json_and_closes() {
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(b"GET /v1/events?topic=adt.> HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let screened = tokio::spawn(screen(server, 8192, Duration::from_secs(1), peer));
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        drop(client);
        assert!(screened.await.unwrap().is_none());
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "bad_request");
        assert_eq!(body["reason"], "invalid_uri");
        assert!(body["message"].as_str().unwrap().contains("topic=adt.%3E"));
    }
}
