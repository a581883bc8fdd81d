//! Scopecast client SDK for subscribers and publishers.
//!
//! Modules:
//! - [`protocol`]: the wire types of `scopecast.v1` (frames, topics, patterns, scopes, error and
//!   close codes), re-exported so applications need one dependency.
//!
//! The connection, subscription and token-source API is modelled on async-nats: see
//! `protocol/PROTOCOL.md` for the wire rules it follows.

pub use scopecast_protocol as protocol;
pub use scopecast_protocol::{CloseCode, ErrorCode, Pattern, Reason, Retry, ScopeSet, Topic};
