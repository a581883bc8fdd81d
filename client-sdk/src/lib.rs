//! Scopecast client SDK for subscribers and publishers.
//!
//! Modules (laid out as async-nats's):
//! - `options`: [`ConnectOptions`] and [`connect`]; [`ClientEvent`]s told to a callback.
//! - `client`: [`Client`] (subscribe, publish, close), [`Subscription`] (a `Stream` of
//!   [`Item`]s), [`ConnectionState`].
//! - `error`: [`ConnectError`], [`SubscribeError`], [`PublishError`].
//! - `connection`: the task that owns the WebSocket: reconnects and resumes by `seq`; it is
//!   generic over `dial::Dial`, so tests drive it over channels.
//! - `dial`: opening an authenticated WebSocket to the broker.
//! - `history`: catch-up from `GET /v1/events` for readers that fell behind.
//! - [`token`]: [`TokenSource`], OAuth2 client credentials with a client secret or a private
//!   key (`private_key_jwt`), cached and refreshed before expiry.
//! - [`tls`]: [`TlsConfig`], the CAs trusted for `https://` and `wss://` (bundled roots, the
//!   system store, an organisation's own CA), one rustls config for every connection; and
//!   [`CertificateError`], a refused broker certificate explained.
//! - [`protocol`]: the wire types of `scopecast.v1` (frames, topics, patterns, scopes, error and
//!   close codes), re-exported so applications need one dependency.
//!
//! The connection and subscription API is modelled on async-nats; see `protocol/PROTOCOL.md`
//! for the wire rules it follows.

mod client;
mod connection;
mod dial;
mod error;
mod history;
mod options;
pub mod tls;
pub mod token;

pub use client::{Client, ConnectionState, Item, Subscription};
pub use error::{ConnectError, PublishError, SubscribeError};
pub use options::{ClientEvent, ConnectOptions, connect};
pub use scopecast_protocol as protocol;
pub use scopecast_protocol::{
    CloseCode, ErrorCode, Pattern, Published, Reason, Retry, ScopeSet, Topic,
};
pub use tls::{CertificateError, TlsConfig, TlsError};
pub use token::{AccessToken, PrivateKey, TokenError, TokenSource};
