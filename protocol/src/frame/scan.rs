//! One pass over a client frame's text that both checks it and finds its members: the
//! publish path's reader (a 1.7 KB FHIR resource was walked twice before, once by serde's
//! envelope scan and once by the `data` check: 20% of the broker's CPU at N = 1,
//! BENCHMARKS.md "Performance, round two").
//!
//! It accepts a strict subset of what the serde path ([`super::ClientFrame::decode`]'s
//! fallback) accepts, with the same members: JSON by RFC 8259, a top-level object whose known
//! members appear once and are not `null`, member names without escapes, `data` by
//! [`super::check_data`]'s rules (nesting at most [`MAX_DATA_DEPTH`], no lone surrogate
//! escapes, numbers that fit an f64), every other value nesting at most
//! [`MAX_DATA_DEPTH`] and free of lone surrogates too. Anything else, valid or not, answers
//! `None`, and the serde path decides and words the error: the two cannot disagree on a frame
//! this reader accepts (a differential property test pins it).

use super::MAX_DATA_DEPTH;

/// A frame's known members, each as its raw JSON text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Members<'a> {
    pub kind: Option<&'a str>,
    pub id: Option<&'a str>,
    pub token: Option<&'a str>,
    pub topic: Option<&'a str>,
    pub since: Option<&'a str>,
    pub data: Option<&'a str>,
    pub event_id: Option<&'a str>,
}

/// Reads `text` as a client frame in one pass; `None` when the serde path must decide.
pub(super) fn frame(text: &str) -> Option<Members<'_>> {
    let mut r = Reader {
        b: text.as_bytes(),
        i: 0,
    };
    let mut m = Members::default();
    r.ws();
    r.eat(b'{')?;
    r.ws();
    if r.peek()? == b'}' {
        r.i += 1;
    } else {
        loop {
            let key = r.plain_key()?;
            r.ws();
            r.eat(b':')?;
            r.ws();
            let start = r.i;
            let is_data = key == b"data";
            r.value(0, is_data)?;
            let value = &text[start..r.i];
            let slot = match key {
                b"type" => Some(&mut m.kind),
                b"id" => Some(&mut m.id),
                b"token" => Some(&mut m.token),
                b"topic" => Some(&mut m.topic),
                b"since" => Some(&mut m.since),
                b"data" => Some(&mut m.data),
                b"event_id" => Some(&mut m.event_id),
                // Unknown members are skipped, repeated or not, as serde skips them.
                _ => None,
            };
            if let Some(slot) = slot {
                // A repeated known member is an error, and `null` reads as absent: serde
                // words both.
                if slot.is_some() || value == "null" {
                    return None;
                }
                *slot = Some(value);
            }
            r.ws();
            match r.next()? {
                b',' => r.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    r.ws();
    (r.i == r.b.len()).then_some(m)
}

/// True when `text` (without surrounding whitespace) is one JSON value by
/// [`super::check_data`]'s rules, read in one pass; false when serde must decide.
pub(super) fn data(text: &str) -> bool {
    let mut r = Reader {
        b: text.as_bytes(),
        i: 0,
    };
    r.value(0, true).is_some() && r.i == r.b.len()
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// A member name without escapes, as bytes.
    fn plain_key(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        self.skip_plain();
        if self.next()? != b'"' {
            return None;
        }
        let b = self.b;
        Some(&b[start..self.i - 1])
    }

    /// Skips bytes that need no look inside a string: not `"`, `\` or a control character.
    /// Eight at a time while it can (the same test as serde_json's).
    fn skip_plain(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let quote = w ^ (ONES * u64::from(b'"'));
            let slash = w ^ (ONES * u64::from(b'\\'));
            // A zero byte in `x` sets its high bit in `x - ONES & !x`; a byte below 0x20
            // sets it in `w - 0x20 * ONES & !w`.
            let found = (quote.wrapping_sub(ONES) & !quote)
                | (slash.wrapping_sub(ONES) & !slash)
                | (w.wrapping_sub(ONES * 0x20) & !w);
            let found = found & HIGHS;
            if found != 0 {
                self.i += (found.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
        while let Some(c) = self.peek() {
            if c == b'"' || c == b'\\' || c < 0x20 {
                return;
            }
            self.i += 1;
        }
    }

    /// A string, its opening quote next: escapes checked, lone surrogates refused.
    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.skip_plain();
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let u = self.hex4()?;
                        if (0xDC00..0xE000).contains(&u) {
                            return None;
                        }
                        if (0xD800..0xDC00).contains(&u) {
                            self.eat(b'\\')?;
                            self.eat(b'u')?;
                            if !(0xDC00..0xE000).contains(&self.hex4()?) {
                                return None;
                            }
                        }
                    }
                    _ => return None,
                },
                // A control character.
                _ => return None,
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut u = 0;
        for &d in digits {
            u = u * 16 + char::from(d).to_digit(16)?;
        }
        self.i += 4;
        Some(u)
    }

    /// One value; `depth` containers enclose it (within this member). `data` adds the number
    /// range check.
    fn value(&mut self, depth: usize, data: bool) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' => self.container(depth, data, b'}'),
            b'[' => self.container(depth, data, b']'),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(data),
            _ => None,
        }
    }

    /// An object (`close` is `}`: members `"name": value`) or an array (`]`: values), its
    /// opening bracket next; `depth` containers enclose it.
    fn container(&mut self, depth: usize, data: bool, close: u8) -> Option<()> {
        if depth >= MAX_DATA_DEPTH {
            return None;
        }
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            if close == b'}' {
                self.string()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
            }
            self.value(depth + 1, data)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? != word {
            return None;
        }
        self.i += word.len();
        Some(())
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    /// A number by RFC 8259's grammar. In `data`, one that is not a short integer must
    /// parse to an f64 well inside the finite range (serde refuses an infinite one; the
    /// border is left to it).
    fn number(&mut self, data: bool) -> Option<()> {
        let start = self.i;
        if self.peek()? == b'-' {
            self.i += 1;
        }
        let int_digits = match self.peek()? {
            b'0' => {
                self.i += 1;
                1
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        };
        let mut plain = int_digits <= 18;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
            plain = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            match self.digits() {
                0 => return None,
                // Exponents this long are left to serde's own rules.
                n if n > 4 => return None,
                _ => {}
            }
            plain = false;
        }
        // `0` then a digit (`01`) is not a number; the caller would see the digit anyway.
        if data && !plain {
            let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
            let v: f64 = text.parse().ok()?;
            if !v.is_finite() || v.abs() > 1e308 {
                return None;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_members_of_a_publish_frame() {
        let m = frame(
            r#" {"type":"publish","id":"p1","topic":"lab.result","data":{"a":[1,2.5e3,"\u00e9\ud83d\ude00"]},"x":[null,true]} "#,
        )
        .expect("read");
        assert_eq!(m.kind, Some(r#""publish""#));
        assert_eq!(m.id, Some(r#""p1""#));
        assert_eq!(m.topic, Some(r#""lab.result""#));
        assert_eq!(m.data, Some(r#"{"a":[1,2.5e3,"\u00e9\ud83d\ude00"]}"#));
        assert_eq!(m.token, None);
        // Unknown members are skipped, repeated or `null`, as serde skips them.
        let m = frame(r#"{"type":"ping","id":"p","x":1,"x":null}"#).expect("read");
        assert_eq!((m.kind, m.id), (Some(r#""ping""#), Some(r#""p""#)));
    }

    #[test]
    fn leaves_to_serde_what_it_does_not_take() {
        for text in [
            r#"{"type":"publish","type":"ping"}"#,
            r#"{"id":null}"#,
            r#"{"ty\u0070e":"ping"}"#,
            r#"{"data":"\ud800"}"#,
            r#"{"data":"\udc00x"}"#,
            r#"{"data":1e400}"#,
            r#"{"data":01}"#,
            r#"{"data":1.}"#,
            r#"{"data":"a	b"}"#,
            r#"{"data":[1,]}"#,
            r#"{"data":{"a":1,}}"#,
            r#"{"data":tru}"#,
            r#"{"data":1} x"#,
            r#"[1]"#,
            r#"{"data":1e00001}"#,
            "",
        ] {
            assert_eq!(frame(text), None, "{text}");
        }
        let deep = format!("{{\"data\":{}{}}}", "[".repeat(65), "]".repeat(65));
        assert_eq!(frame(&deep), None);
        let fits = format!("{{\"data\":{}{}}}", "[".repeat(64), "]".repeat(64));
        assert!(frame(&fits).is_some());
    }
}
