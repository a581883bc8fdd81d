//! Scopecast benchmarks.
//!
//! - `benches/protocol.rs`: criterion micro-benchmarks of the protocol pieces on the publish
//!   path (topic parse, pattern match against 1,000 patterns, scope check, `event` frame
//!   encode for 256 B and 4 KiB payloads, client frame decode).
//!   Run: `cargo bench -p scopecast-bench`.
//!
//! This library holds what the benchmarks share.

/// Payload sizes, in bytes, that the micro-benchmarks encode: a small ADT-style event and a
/// typical FHIR resource.
pub const PAYLOAD_SIZES: [usize; 2] = [256, 4096];
