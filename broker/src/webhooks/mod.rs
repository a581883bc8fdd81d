//! Outgoing delivery (issue 17, WEBHOOKS.md): events pushed to an application's HTTPS endpoint
//! as Standard Webhooks, only while its client ID is active in this environment and its scope
//! covers the event.
//!
//! - [`endpoint`]: an endpoint's id, URL and header checks, and its secrets and headers
//!   sealed at rest.
//! - [`policy`]: what an attempt's answer means, and when the next attempt goes.
//! - [`sign`]: the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers (`v1`,
//!   HMAC-SHA256) and the `whsec_` secrets.
//! - [`send`]: one attempt over HTTP, through the address guard, never following a
//!   redirect.
//! - [`ssrf`]: where a delivery may go: global unicast addresses, checked at registration and
//!   at connect time, and the operator's allow-list.

// The delivery engine that calls these lands in the next change of issue 17; until then they
// are exercised by their tests only.
#![cfg_attr(not(test), allow(dead_code))]

pub(crate) mod endpoint;
pub(crate) mod policy;
pub(crate) mod send;
pub(crate) mod sign;
pub(crate) mod ssrf;
