//! Event payloads that carry their send time, and the cheap read of that time on arrival.
//!
//! Every payload is a JSON object whose first member is `"t": <ns since the harness epoch>`;
//! the rest pads it to the wanted size (or is a real FHIR Encounter). Receivers find `"t":`
//! in the frame bytes and parse the digits after it, without decoding the frame.

use std::time::Instant;

use anyhow::{Context, bail};

/// A real FHIR R4 Encounter (Synthea, synthetic patient), about 1.7 KB.
const ENCOUNTER: &str = include_str!("../data/encounter.json");

/// The key every payload starts with.
const TIME_KEY: &[u8] = b"\"t\":";

/// Digits a send time takes in a payload, for sizing the padding (ns since the epoch stay
/// under 10^15 for 11 days of running).
const TIME_DIGITS: usize = 15;

/// The shared clock: nanoseconds since one `Instant`, the same for the publishers and the
/// subscribers of this process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub(crate) fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the epoch.
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Which payload a scenario publishes (`--payload 200`, `--payload 1024`, `--payload encounter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PayloadKind {
    /// A padded object of about this many bytes.
    Bytes(usize),
    /// The FHIR Encounter with the time member in front.
    Encounter,
}

impl PayloadKind {
    /// Its name in tables, JSON and file names.
    pub(crate) fn label(&self) -> String {
        match self {
            PayloadKind::Bytes(n) => format!("{n}B"),
            PayloadKind::Encounter => "encounter".to_owned(),
        }
    }
}

impl std::str::FromStr for PayloadKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<PayloadKind> {
        if s.eq_ignore_ascii_case("encounter") || s.eq_ignore_ascii_case("fhir") {
            return Ok(PayloadKind::Encounter);
        }
        let n = match s.strip_suffix(['k', 'K']) {
            Some(kib) => kib.parse::<usize>().map(|k| k * 1024),
            None => s.trim_end_matches(['b', 'B']).parse::<usize>(),
        }
        .with_context(|| {
            format!("payload {s:?}: a size in bytes (200, 1024, 1k) or `encounter`")
        })?;
        if !(32..=512 * 1024).contains(&n) {
            bail!("payload {s:?}: the size must be 32 bytes to 512 KiB");
        }
        Ok(PayloadKind::Bytes(n))
    }
}

/// A payload with a hole for the send time: `head` + time digits + `tail` is the JSON data.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    tail: String,
    /// The data's size with a send time of [`TIME_DIGITS`] digits.
    pub(crate) size: usize,
}

impl Payload {
    /// The payload of that kind.
    pub(crate) fn new(kind: &PayloadKind) -> Payload {
        let tail = match kind {
            PayloadKind::Encounter => {
                // `{"resourceType":...}` becomes `{"t":N,"resourceType":...}`.
                let body = ENCOUNTER.trim().trim_start_matches('{');
                format!(",{body}")
            }
            PayloadKind::Bytes(n) => {
                // `{"t":N,"pad":"xxx"}`: the fixed part is 4 + 15 + 10 bytes.
                let fixed = TIME_KEY.len() + 1 + TIME_DIGITS + ",\"pad\":\"\"}".len();
                let pad = n.saturating_sub(fixed);
                format!(",\"pad\":\"{}\"}}", "x".repeat(pad))
            }
        };
        let size = 1 + TIME_KEY.len() + TIME_DIGITS + tail.len();
        Payload { tail, size }
    }

    /// Appends the JSON data with send time `t_ns` to `out`.
    pub(crate) fn write(&self, out: &mut String, t_ns: u64) {
        out.push_str("{\"t\":");
        out.push_str(itoa::Buffer::new().format(t_ns));
        out.push_str(&self.tail);
    }

    /// The JSON data with send time `t_ns`.
    pub(crate) fn data(&self, t_ns: u64) -> String {
        let mut s = String::with_capacity(self.size + 8);
        self.write(&mut s, t_ns);
        s
    }
}

/// The send time carried by a frame (`"t":` followed by digits), if it has one.
pub(crate) fn sent_at(frame: &[u8]) -> Option<u64> {
    let at = frame.windows(TIME_KEY.len()).position(|w| w == TIME_KEY)? + TIME_KEY.len();
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .take(19);
    let mut v: u64 = 0;
    let mut any = false;
    for b in digits {
        v = v * 10 + u64::from(b - b'0');
        any = true;
    }
    any.then_some(v)
}

/// A scopecast `publish` frame for `topic` with send time `t_ns`; the request id is the send
/// time too, so the `published` acknowledgement tells the publish-to-ack latency.
pub(crate) fn publish_frame(payload: &Payload, topic: &str, t_ns: u64) -> String {
    let mut s = String::with_capacity(payload.size + topic.len() + 64);
    s.push_str("{\"type\":\"publish\",\"id\":\"");
    s.push_str(itoa::Buffer::new().format(t_ns));
    s.push_str("\",\"topic\":\"");
    s.push_str(topic);
    s.push_str("\",\"data\":");
    payload.write(&mut s, t_ns);
    s.push('}');
    s
}

/// The bytes the broker would deliver for this event: the ceiling server forwards them as
/// they are, so every subscriber reads a frame of the same shape and size from all systems.
pub(crate) fn event_frame(payload: &Payload, topic: &str, t_ns: u64) -> String {
    let mut s = String::with_capacity(payload.size + topic.len() + 128);
    s.push_str("{\"type\":\"event\",\"seq\":1,\"topic\":\"");
    s.push_str(topic);
    s.push_str(
        "\",\"id\":\"0190f5a4-7c2e-7b7a-9a3e-3c1d2b4a5f60\",\"time\":\"2026-11-29T10:00:00.123456Z\",\"data\":",
    );
    payload.write(&mut s, t_ns);
    s.push('}');
    s
}

/// The send time in a `published` acknowledgement (its `id`), if it is one.
pub(crate) fn acked_at(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"id\":\"";
    if !frame.starts_with(b"{\"type\":\"published\"") {
        return None;
    }
    let at = frame.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    std::str::from_utf8(&frame[at..])
        .ok()?
        .split('"')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sizes_are_close_to_the_asked_size_and_valid_json() {
        for kind in [
            PayloadKind::Bytes(200),
            PayloadKind::Bytes(1024),
            PayloadKind::Encounter,
        ] {
            let p = Payload::new(&kind);
            let data = p.data(123_456_789_012_345);
            assert_eq!(data.len(), p.size, "{kind:?}");
            let v: serde_json::Value = serde_json::from_str(&data).expect("valid JSON");
            assert_eq!(v["t"], 123_456_789_012_345_u64);
            if let PayloadKind::Bytes(n) = kind {
                assert_eq!(data.len(), n);
            } else {
                assert_eq!(v["resourceType"], "Encounter");
                assert!((1500..2000).contains(&data.len()), "{}", data.len());
            }
        }
    }

    #[test]
    fn send_time_is_read_back_from_every_frame_shape() {
        let p = Payload::new(&PayloadKind::Encounter);
        let event = event_frame(&p, "fhir.encounter.started", 42);
        assert_eq!(sent_at(event.as_bytes()), Some(42));
        serde_json::from_str::<serde_json::Value>(&event).expect("event frame is JSON");
        let publish = publish_frame(&p, "fhir.encounter.started", 7);
        serde_json::from_str::<serde_json::Value>(&publish).expect("publish frame is JSON");
        assert_eq!(sent_at(publish.as_bytes()), Some(7));
        assert_eq!(sent_at(b"{\"type\":\"welcome\"}"), None);
        let ack = br#"{"type":"published","id":"991","seq":3,"event_id":"x"}"#;
        assert_eq!(acked_at(ack), Some(991));
        assert_eq!(acked_at(br#"{"type":"error","id":"991"}"#), None);
    }

    #[test]
    fn payload_kinds_parse() {
        assert_eq!(
            "200".parse::<PayloadKind>().expect("200"),
            PayloadKind::Bytes(200)
        );
        assert_eq!(
            "1k".parse::<PayloadKind>().expect("1k"),
            PayloadKind::Bytes(1024)
        );
        assert_eq!(
            "encounter".parse::<PayloadKind>().expect("encounter"),
            PayloadKind::Encounter
        );
        assert!("7".parse::<PayloadKind>().is_err());
    }
}
