//! A one-pass reader of the JSON an upstream event carries, for the few fields a dialect
//! acts on: what it skips it validates as strictly as serde_json does, and it gives up
//! (`None`) wherever it would not read the event the way serde does (an escaped key, deep
//! nesting, a value of an unusual type), for the dialect to read that event with serde.
//! Most of a token's cost in the proxy was serde's generic walk over fields it skips.

use std::ops::Range;

/// Deeper nesting is left to serde (whose own limit is 128).
const MAX_DEPTH: u32 = 64;

pub struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

/// An object's key as it stands between its quotes; `escaped` keys are not compared.
pub struct Key<'a> {
    pub raw: &'a [u8],
    pub escaped: bool,
}

impl<'a> Reader<'a> {
    pub fn new(s: &'a str) -> Self {
        Reader {
            s: s.as_bytes(),
            i: 0,
        }
    }

    /// A reader of `s` from byte `at`.
    pub fn at(s: &'a str, at: usize) -> Self {
        Reader {
            s: s.as_bytes(),
            i: at,
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte that is not whitespace, not taken.
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// The whole input was one value: only whitespace follows.
    pub fn end(mut self) -> Option<()> {
        self.ws();
        (self.i == self.s.len()).then_some(())
    }

    /// A string: its span, quotes included, and whether it has escapes.
    pub fn string(&mut self) -> Option<(Range<usize>, bool)> {
        self.eat(b'"')?;
        let start = self.i - 1;
        let mut escaped = false;
        loop {
            self.i = plain_run_end(self.s, self.i);
            match *self.s.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some((start..self.i, escaped));
                }
                b'\\' => self.i += 1,
                _ => return None,
            }
            escaped = true;
            match *self.s.get(self.i)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                b'u' => {
                    let hex = self.s.get(self.i + 1..self.i + 5)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.i += 5;
                }
                _ => return None,
            }
        }
    }

    /// An object, handing each key to `field` with the reader at its value, which `field`
    /// must read.
    pub fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, Key<'a>) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let (span, escaped) = self.string()?;
            self.eat(b':')?;
            let raw = &self.s[span.start + 1..span.end - 1];
            field(self, Key { raw, escaped })?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array, handing each item's position to `item` with the reader at it, which
    /// `item` must read.
    pub fn array(&mut self, mut item: impl FnMut(&mut Self, usize) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        let mut n = 0;
        loop {
            item(self, n)?;
            n += 1;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Any value, validated and passed over; its span.
    pub fn skip(&mut self, depth: u32) -> Option<Range<usize>> {
        if depth > MAX_DEPTH {
            return None;
        }
        let first = self.peek()?;
        let start = self.i;
        match first {
            b'"' => {
                self.string()?;
            }
            b'{' => self.object(|r, _| r.skip(depth + 1).map(drop))?,
            b'[' => self.array(|r, _| r.skip(depth + 1).map(drop))?,
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        }
        Some(start..self.i)
    }

    /// `null` is next (taken), or another value (not taken).
    pub fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(true);
        }
        Some(false)
    }

    /// A number with only digits (no sign, fraction or exponent) that fits a u64.
    pub fn unsigned(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        self.number()?;
        let digits = &self.s[start..self.i];
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        digits.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        let end = self.i + word.len();
        (self.s.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        self.ws();
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match *self.s.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let from = self.i;
        self.digits();
        (self.i > from).then_some(())
    }
}

/// Where the run of string bytes needing no attention that starts at `i` ends: at a quote,
/// a backslash, a control character, or the end. Eight bytes at a time: strings are most
/// of an event's bytes.
fn plain_run_end(s: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// High bit set in each byte of `x` that is zero (exact up to the first such byte).
    fn zeros(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGHS
    }
    while let Some(word) = s.get(i..i + 8) {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let v = u64::from_le_bytes(bytes);
        let quote = zeros(v ^ (ONES * u64::from(b'"')));
        let backslash = zeros(v ^ (ONES * u64::from(b'\\')));
        // Bytes under 0x20 (bytes of 0x80 and over never are: `!v` clears their high bit).
        let control = v.wrapping_sub(ONES * 0x20) & !v & HIGHS;
        let found = quote | backslash | control;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while s
        .get(i)
        .is_some_and(|&b| b != b'"' && b != b'\\' && b >= 0x20)
    {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    fn valid(text: &str) -> Option<Range<usize>> {
        let mut r = Reader::new(text);
        let span = r.skip(0)?;
        r.end()?;
        Some(span)
    }

    #[test]
    fn what_it_accepts_serde_accepts_too() {
        let cases = [
            r#"{"a":[1,-0.5e+3,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9"],"b":{}}"#,
            " [ ] ",
            "0",
            "-0",
            "1E9",
            r#""\uD800""#,
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            r#""a"#,
            "\"tab\there\"",
            r#""\x""#,
            r#""\u12G4""#,
            "[1,]",
            "[1 2]",
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            "{1:2}",
            "tru",
            "nul",
            "[] x",
            "",
            "  ",
        ];
        for text in cases {
            let ours = valid(text).is_some();
            let serde = serde_json::from_str::<IgnoredAny>(text).is_ok();
            assert!(!ours || serde, "accepted, serde does not: {text:?}");
            assert_eq!(ours, serde, "{text:?}");
        }
    }

    #[test]
    fn a_skipped_value_gives_its_span() {
        let text = r#" {"a": [1, "two"] } "#;
        assert_eq!(valid(text), Some(1..19));
        let mut r = Reader::new(r#"{"k" : "v" , "n": 12}"#);
        let mut seen = Vec::new();
        r.object(|r, key| {
            let span = r.skip(0)?;
            seen.push((String::from_utf8_lossy(key.raw).into_owned(), span));
            Some(())
        })
        .expect("an object");
        assert_eq!(seen, [("k".to_string(), 7..10), ("n".to_string(), 18..20)]);
    }

    #[test]
    fn a_run_of_plain_string_bytes_ends_at_the_first_byte_needing_attention() {
        for len in 0..20 {
            for stop in [b'"', b'\\', 0x00, 0x1f] {
                for filler in [b'a', 0x20, 0x7f, 0x80, 0xff, b'!', b'#', b'[', b']'] {
                    let mut s = vec![filler; len];
                    assert_eq!(plain_run_end(&s, 0), len, "no stop, filler {filler:#x}");
                    for at in 0..len {
                        s[at] = stop;
                        assert_eq!(plain_run_end(&s, 0), at, "{stop:#x} at {at} of {len}");
                        s[at] = filler;
                    }
                }
            }
        }
    }

    #[test]
    fn nesting_past_the_limit_is_left_to_serde() {
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(valid(&deep).is_none());
        assert!(serde_json::from_str::<IgnoredAny>(&deep).is_ok());
    }

    #[test]
    fn unsigned_reads_plain_integers_only() {
        for (text, wanted) in [
            ("7", Some(7)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("-1", None),
            ("1.0", None),
            ("1e2", None),
        ] {
            assert_eq!(Reader::new(text).unsigned(), wanted, "{text}");
        }
    }
}
