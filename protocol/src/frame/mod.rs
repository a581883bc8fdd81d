//! The frames of `scopecast.v1` (DESIGN section 5, PROTOCOL.md "Frames").
//!
//! Every frame is one JSON object in one WebSocket text message, with a `type`. Client frames
//! are decoded by [`ClientFrame::decode`], which turns every fault into a precise
//! [`FrameError`]; server frames are encoded with [`ServerFrame::encode`], except `event`
//! frames, which [`encode_event`] writes once into shared [`Bytes`] for every subscriber.
//! Event `data` stays raw JSON ([`RawJson`]): the broker never parses it again.

mod client;
mod event;
mod ids;
mod payload;
mod scan;
mod server;
#[cfg(test)]
mod tests;

use client::echo;
pub use client::{ClientFrame, FrameError, Since};
pub use event::{encode_event, encode_event_text, encode_webhook_body};
pub use ids::{
    EventId, InvalidId, MAX_DATA_DEPTH, MAX_EVENT_ID_BYTES, MAX_REQUEST_ID_BYTES, RequestId,
    SUBPROTOCOL,
};
pub use payload::RawJson;
use payload::check_data;
pub use server::{
    ErrorFrame, ErrorReason, Event, Gap, Limits, Pong, Published, Replay, ServerFrame, Subscribed,
    TokenExpiring, Unsubscribed, Welcome,
};
