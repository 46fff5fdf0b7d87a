//! Redacts PII and secrets from a text byte stream, correctly when a match is split across chunks.

use bytes::Bytes;
use weir_runtime::{BoxError, Emit, Transform};

use crate::codec::redact::{RedactConfig, RedactConfigError, RedactStream, Redactor};

/// Decodes UTF-8 across chunk boundaries: a char split between chunks is reassembled,
/// invalid bytes become U+FFFD exactly as `String::from_utf8_lossy` does on the whole.
#[derive(Default)]
struct Utf8Lossy {
    partial: Vec<u8>,
}

impl Utf8Lossy {
    fn decode(&mut self, chunk: &[u8], out: &mut String) {
        let joined;
        let bytes = if self.partial.is_empty() {
            chunk
        } else {
            self.partial.extend_from_slice(chunk);
            joined = std::mem::take(&mut self.partial);
            &joined[..]
        };
        let mut pieces = bytes.utf8_chunks().peekable();
        while let Some(piece) = pieces.next() {
            out.push_str(piece.valid());
            let invalid = piece.invalid();
            if invalid.is_empty() {
                continue;
            }
            let truncated = std::str::from_utf8(invalid).is_err_and(|e| e.error_len().is_none());
            if pieces.peek().is_none() && truncated {
                self.partial.extend_from_slice(invalid);
            } else {
                out.push(char::REPLACEMENT_CHARACTER);
            }
        }
    }

    fn finish(&mut self, out: &mut String) {
        if !self.partial.is_empty() {
            self.partial.clear();
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
}

/// Emits, per input chunk, the redacted text that chunk makes safe to release (nothing
/// when it releases nothing); text that could still grow into a match is held, up to
/// the redactor's `max_hold`, and flushed at the end. Input is UTF-8 text; invalid
/// bytes are replaced by U+FFFD.
pub struct Redact {
    stream: RedactStream,
    utf8: Utf8Lossy,
    text: String,
}

impl Redact {
    /// Built-in detectors by name (`"email"`, `"phone"`, `"card"`, `"iban"`, `"ipv4"`,
    /// `"secret"`) plus custom `(name, regex)` detectors, with default masks and cap.
    pub fn new(kinds: &[&str], custom: &[(&str, &str)]) -> Result<Redact, RedactConfigError> {
        let config = custom
            .iter()
            .fold(RedactConfig::kinds(kinds), |config, (name, pattern)| {
                config.custom(name, pattern)
            });
        Ok(Redact::from_redactor(&Redactor::new(config)?))
    }

    pub fn from_redactor(redactor: &Redactor) -> Redact {
        Redact {
            stream: redactor.stream(),
            utf8: Utf8Lossy::default(),
            text: String::new(),
        }
    }

    /// Redactions so far per detector.
    pub fn counts(&self) -> impl Iterator<Item = (&str, u64)> {
        self.stream.counts()
    }

    fn feed(&mut self, chunk: &[u8]) -> String {
        self.text.clear();
        self.utf8.decode(chunk, &mut self.text);
        self.stream.push(&self.text)
    }

    fn flush(&mut self) -> String {
        self.text.clear();
        self.utf8.finish(&mut self.text);
        let mut out = self.stream.push(&self.text);
        out.push_str(&self.stream.finish());
        out
    }
}

impl Transform for Redact {
    type In = Bytes;
    type Out = Bytes;

    async fn apply(&mut self, item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        let released = self.feed(&item);
        if !released.is_empty() {
            out.send(Bytes::from(released)).await?;
        }
        Ok(())
    }

    async fn finish(&mut self, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        let rest = self.flush();
        if !rest.is_empty() {
            out.send(Bytes::from(rest)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;

    use super::*;
    use crate::test_support::{run_transform, Chunks};

    static REDACTOR: LazyLock<Redactor> =
        LazyLock::new(|| Redactor::new(RedactConfig::all_builtins()).unwrap());

    fn feed_all(stage: &mut Redact, chunks: &[&[u8]]) -> Vec<String> {
        let mut out: Vec<String> = chunks.iter().map(|c| stage.feed(c)).collect();
        out.push(stage.flush());
        out
    }

    #[tokio::test]
    async fn pipeline_redacts_across_chunks() {
        let chunks = Chunks::new([
            "Hi, I am jo",
            "hn@exam",
            "ple.com, card 4111 ",
            "1111 1111 1111",
            " ok",
        ]);
        let redact = Redact::new(&["email", "card"], &[]).unwrap();
        let (ran, sink) = run_transform("redact", redact, chunks).await;
        let report = ran.unwrap();
        let items: Vec<String> = sink.strings();
        assert_eq!(items, ["Hi, I am ", "[EMAIL], card ", "[CARD] ", "ok"]);
        assert_eq!(report.stages[1].items_in, 5);
    }

    #[test]
    fn a_char_split_across_chunks_is_reassembled() {
        let mut stage = Redact::from_redactor(&REDACTOR);
        let text = "é 日本 🙂 jo@example.com";
        let bytes = text.as_bytes();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(feed_all(&mut stage, &chunks).concat(), "é 日本 🙂 [EMAIL]");
    }

    #[test]
    fn invalid_bytes_become_replacement_chars() {
        let mut stage = Redact::from_redactor(&REDACTOR);
        let out = feed_all(&mut stage, &[b"ok \xff", b"\xe6\x97", b" end \xe6"]).concat();
        assert_eq!(out, "ok \u{fffd}\u{fffd} end \u{fffd}");
    }

    #[test]
    fn nothing_is_emitted_while_everything_is_held() {
        let mut stage = Redact::new(&["email"], &[("ticket", "T-[0-9]{4}")]).unwrap();
        assert_eq!(stage.feed(b"jo"), "");
        assert_eq!(stage.feed(b"@x.io T-12"), "[EMAIL] ");
        assert_eq!(stage.flush(), "T-12");
        assert!(Redact::new(&["email"], &[("ticket", "T-[0-9")]).is_err());
    }

    fn bytes_text() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            proptest::sample::select(
                &[
                    "jo@example.com",
                    "+1 415 555 0100",
                    "4111 1111 1111 1111",
                    "GB82 WEST 1234 5698 7654 32",
                    "10.0.0.1",
                    "AKIAIOSFODNN7EXAMPLE",
                    "naïve",
                    "日本語",
                    "🙂",
                    "hello",
                    " ",
                    ", ",
                    "\n",
                ][..]
            )
            .prop_map(|s| s.as_bytes().to_vec()),
            proptest::collection::vec(any::<u8>(), 1..3),
        ];
        proptest::collection::vec(piece, 0..20).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn any_byte_split_redacts_like_the_whole(
            bytes in bytes_text(),
            mut cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            for c in &mut cuts {
                *c %= bytes.len() + 1;
            }
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[at..c]);
                at = c;
            }
            let mut stage = Redact::from_redactor(&REDACTOR);
            let out = feed_all(&mut stage, &chunks).concat();
            prop_assert_eq!(out, REDACTOR.redact_all(&String::from_utf8_lossy(&bytes)));
        }
    }
}
