//! Scopecast client SDK for subscribers and publishers.
//!
//! Modules:
//! - [`client`]: [`connect`], [`ConnectOptions`], [`Client`] (subscribe, publish),
//!   [`Subscription`] (a `Stream` of [`Item`]s); reconnects and resumes by `seq`.
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

pub mod client;
pub mod tls;
pub mod token;

pub use client::{
    Client, ClientEvent, ConnectError, ConnectOptions, ConnectionState, Item, PublishError,
    SubscribeError, Subscription, connect,
};
pub use scopecast_protocol as protocol;
pub use scopecast_protocol::{
    CloseCode, ErrorCode, Pattern, Published, Reason, Retry, ScopeSet, Topic,
};
pub use tls::{CertificateError, TlsConfig, TlsError};
pub use token::{AccessToken, PrivateKey, TokenError, TokenSource};
