//! The WebSocket under a session: the only code that knows WebSocket message types. It turns
//! what the socket yields into [`Incoming`], writes queued frames (feed all, flush once),
//! sends pings and close frames, and maps transport faults to close codes (PROTOCOL.md
//! section 7). The session loop works over any [`Socket`], so unit tests drive it with
//! in-memory channels.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream};
use scopecast_protocol::{CloseCode, ServerFrame, encode_event_text};

use super::outbox::{Outbox, Queued};
use crate::log::{Encodings, Format, StoredEvent};

/// A WebSocket as a session uses it: axum messages in and out.
pub(crate) trait Socket:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

impl<S> Socket for S where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send
{
}

/// How long a close frame may wait for a peer that does not read before the connection is
/// simply dropped.
pub(super) const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest close reason, in bytes (RFC 6455 section 5.5: control payloads are at most 125).
const MAX_CLOSE_REASON: usize = 120;

/// What a session gets from its socket.
#[derive(Debug)]
pub(super) enum Incoming {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message (not part of `scopecast.v1`).
    Binary,
    /// A ping or a pong: the peer is alive.
    Control,
    /// The peer's close frame, with its code (1005 when it carried none); the reply is
    /// queued, and [`flush`] sends it.
    Close(u16),
    /// A transport fault the peer must hear about, with the close code it gets.
    Fault(CloseCode, &'static str),
    /// The connection is gone (dropped without a close frame, or closed).
    Gone,
}

/// Reads what the socket yielded.
pub(super) fn incoming(msg: Option<Result<Message, axum::Error>>) -> Incoming {
    match msg {
        None => Incoming::Gone,
        Some(Err(e)) => match close_for(&e) {
            Some((code, why)) => Incoming::Fault(code, why),
            None => Incoming::Gone,
        },
        Some(Ok(Message::Text(t))) => Incoming::Text(t),
        Some(Ok(Message::Binary(_))) => Incoming::Binary,
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Control,
        Some(Ok(Message::Close(frame))) => Incoming::Close(frame.map_or(1005, |f| f.code)),
    }
}

/// A server frame as WebSocket text.
pub(crate) fn text(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(frame.encode())
}

/// The `scopecast.v1` `event` frame of `e`: made once per event (cached in `encodings`, the
/// fan-out's for this event) and shared by every session it goes to.
pub(crate) fn event_text(e: &StoredEvent, encodings: &Encodings) -> Utf8Bytes {
    let make = || {
        Utf8Bytes::from(encode_event_text(
            e.seq,
            &e.topic,
            &e.event_id,
            e.time,
            &e.data,
        ))
    };
    match encodings.get_or_make(Format::ScopecastV1, make) {
        Some(text) => text.clone(),
        None => make(),
    }
}

fn close_message(code: CloseCode, reason: &str) -> Message {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code: code.as_u16(),
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

/// The close code for a transport-level read failure (PROTOCOL.md section 7).
fn close_for(err: &axum::Error) -> Option<(CloseCode, &'static str)> {
    use tungstenite::error::{CapacityError, Error as WsError};
    let inner = err.to_string();
    let boxed: &(dyn std::error::Error + 'static) = err;
    let ws = std::iter::successors(Some(boxed), |e| e.source())
        .find_map(|e| e.downcast_ref::<WsError>());
    match ws {
        Some(WsError::Utf8(_)) => {
            Some((CloseCode::InvalidPayload, "invalid UTF-8 in a text message"))
        }
        Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
            Some((CloseCode::MessageTooBig, "message over max_frame_bytes"))
        }
        Some(WsError::Capacity(_)) => {
            Some((CloseCode::MessageTooBig, "frame over max_frame_bytes"))
        }
        // A peer that drops TCP without a close frame disconnected abruptly: no protocol
        // error to answer, nobody to answer it to.
        Some(WsError::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => None,
        Some(WsError::Protocol(_)) => Some((CloseCode::ProtocolError, "WebSocket protocol error")),
        Some(WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_)) => None,
        _ if inner.contains("UTF-8") || inner.contains("utf-8") => {
            Some((CloseCode::InvalidPayload, "invalid UTF-8 in a text message"))
        }
        _ => None,
    }
}

/// Sends a close frame with `code` (bounded by [`CLOSE_WRITE_TIMEOUT`]).
pub(super) async fn close<S: Socket>(socket: &mut S, code: CloseCode, reason: &str) {
    let _ = tokio::time::timeout(
        CLOSE_WRITE_TIMEOUT,
        socket.send(close_message(code, reason)),
    )
    .await;
}

/// Sends an optional frame, then a close frame: the session ends before it began.
pub(super) async fn refuse<S: Socket>(
    socket: &mut S,
    frame: Option<&ServerFrame>,
    code: CloseCode,
    reason: &str,
) {
    if let Some(f) = frame {
        let _ = socket.feed(Message::Text(text(f))).await;
    }
    close(socket, code, reason).await;
}

/// Sends what the WebSocket layer queued (the reply to a peer's close frame).
pub(super) async fn flush<S: Socket>(socket: &mut S) {
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, socket.flush()).await;
}

/// Sends a WebSocket ping; false when the socket is gone or stalled.
pub(super) async fn ping<S: Socket>(socket: &mut S) -> bool {
    matches!(
        tokio::time::timeout(
            CLOSE_WRITE_TIMEOUT,
            socket.send(Message::Ping(axum::body::Bytes::new())),
        )
        .await,
        Ok(Ok(()))
    )
}

/// What [`write_all`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wrote {
    /// Every frame was written and flushed.
    All,
    /// A dropping close (4008, 4003, 4002) was decided while the write stalled on a peer that
    /// does not read: abandoned, and nothing of it counts as delivered.
    Aborted,
    /// The socket failed.
    Failed,
}

/// Writes `frames`, then flushes once. Abandons a write stalled on a peer that does not read
/// when a dropping close (4008, 4003, 4002) is decided on `outbox` meanwhile.
pub(super) async fn write_all<S: Socket>(
    socket: &mut S,
    frames: VecDeque<Queued>,
    outbox: &Outbox,
) -> Wrote {
    tokio::select! {
        r = async {
            for q in frames {
                socket.feed(Message::Text(q.text)).await?;
            }
            socket.flush().await
        } => if r.is_ok() { Wrote::All } else { Wrote::Failed },
        () = outbox.aborted() => Wrote::Aborted,
    }
}
