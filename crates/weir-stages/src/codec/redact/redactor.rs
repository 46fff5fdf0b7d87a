//! The public redactor and its per-stream state.

use std::fmt;
use std::sync::Arc;

use super::config::{RedactConfig, RedactConfigError};
use super::matcher::{Compiled, Matcher};

/// The compiled detectors, built once from a [`RedactConfig`] (built-in detectors by
/// name, custom regexes, masks, a hold-back cap); clones share the automaton. Each
/// stream of text gets its own [`RedactStream`]: [`RedactStream::push`] takes the next piece and
/// returns the text that is now safe to release (possibly empty), and
/// [`RedactStream::finish`] flushes what is still held. [`Redactor::redact_all`]
/// redacts a whole text at once and is the reference: for every way of cutting a text
/// into pieces, the pushes' outputs followed by `finish()` concatenate to exactly
/// `redact_all(text)`.
///
/// # Matching rule
///
/// All detectors are compiled into one anchored DFA and run from every position (a
/// position inside a multi-byte char starts nothing). Matches are leftmost-longest: the
/// earliest start at which some detector has a complete, *accepted* match wins, and there
/// the longest accepted match (ties: the detector configured first); matching resumes at
/// its end. "Accepted" means the detector's checksum holds, if it has one (Luhn for
/// `card`, ISO 7064 mod-97 for `iban`), and, for `phone`, `card` and `ipv4`, that the
/// match is not a part of a longer run of the same shape (`16.0.9.6.14` holds no
/// address; see [`Builtin`](super::Builtin) for the runs). A candidate that is not
/// accepted is left as text, and a shorter accepted match at the same start, or a match
/// starting later, is used instead. Empty matches are ignored.
///
/// # Hold-back
///
/// After each piece, everything before the earliest position where a match attempt is
/// still alive (text from there could still grow into a match, or into the longer run
/// that would void one) or a found match still waits for a longer one is released; the
/// rest is held. So `"Hello "` is released at once, `"Hello"` is held (it could become
/// `Hello@example.com`), in `"contact me at jo"` only `"jo"` is held, and `"at 1.2.3.4"`
/// holds the address until the next character shows it is not `1.2.3.4.5`.
///
/// The held tail is capped at `max_hold` bytes (default
/// [`DEFAULT_MAX_HOLD`](super::DEFAULT_MAX_HOLD), at least
/// [`MIN_MAX_HOLD`](super::MIN_MAX_HOLD)). When an attempt would span more than that, it
/// is settled on the spot: if it has already seen an accepted match, that match is
/// redacted, and if the attempt is still alive and its detector has no checksum, the
/// text that keeps extending that match (a long bearer token, say) is dropped into the
/// same mask; otherwise the attempt is abandoned and its text is released as it is
/// (attempts that started later inside it and reached the same DFA state are tracked as
/// one with it, and are abandoned with it). The cap applies at a byte position, not at a
/// piece boundary, so it is part of the output's definition: `redact_all` applies it
/// too, and the equivalence above holds for every input. No built-in detector with a
/// checksum or a run, with the run's extension, can span `MIN_MAX_HOLD` bytes, so the
/// cap never cuts a card, an IBAN, a phone number or an address.
///
/// # Cost
///
/// Each byte is stepped once through the DFA per live attempt (usually zero to two:
/// built-in detectors start only at a word boundary or at `+`/`(`), with no rescans of
/// held text except the bytes between a match's end and the point where its attempt
/// died, which are re-read once after the match is redacted.
#[derive(Clone)]
pub struct Redactor {
    pub(super) inner: Arc<Compiled>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("detectors", &self.names().collect::<Vec<_>>())
            .field("max_hold", &self.inner.max_hold)
            .finish()
    }
}

impl Redactor {
    pub fn new(config: RedactConfig) -> Result<Redactor, RedactConfigError> {
        Ok(Redactor {
            inner: Arc::new(Compiled::build(config)?),
        })
    }

    /// A new stream: per-stream state is a few small buffers.
    pub fn stream(&self) -> RedactStream {
        RedactStream {
            inner: Arc::clone(&self.inner),
            held: String::new(),
            matcher: Matcher::new(&self.inner),
        }
    }

    /// The whole text redacted at once: the reference for streaming output.
    pub fn redact_all(&self, text: &str) -> String {
        let mut stream = self.stream();
        let mut out = stream.push(text);
        out.push_str(&stream.finish());
        out
    }

    /// Detector names, in configuration order (the order of [`RedactStream::counts`]).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.detectors.iter().map(|d| d.name.as_str())
    }

    /// Bytes taken by the compiled automaton.
    pub fn memory_usage(&self) -> usize {
        self.inner.dfa.memory_usage()
    }
}

/// Redaction state for one stream of text; see [`Redactor`] for what it releases when.
pub struct RedactStream {
    inner: Arc<Compiled>,
    /// Unreleased text, starting where the matcher last released.
    held: String,
    matcher: Matcher,
}

impl fmt::Debug for RedactStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactStream")
            .field("held", &self.held)
            .field("attempts", &self.matcher.attempts())
            .field("counts", &self.matcher.counts)
            .finish()
    }
}

impl RedactStream {
    /// Takes the next piece of text and returns what is now safe to release (maybe
    /// nothing).
    pub fn push(&mut self, text: &str) -> String {
        let mut out = String::new();
        self.push_into(text, &mut out);
        out
    }

    /// As [`push`](Self::push), appending to `out`.
    pub fn push_into(&mut self, text: &str, out: &mut String) {
        self.matcher
            .run(&self.inner, &mut self.held, text, false, out);
    }

    /// Ends the text: returns everything still held, redacted. The stream can then
    /// take a new text (counts carry on).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.finish_into(&mut out);
        out
    }

    /// As [`finish`](Self::finish), appending to `out`.
    pub fn finish_into(&mut self, out: &mut String) {
        self.matcher.run(&self.inner, &mut self.held, "", true, out);
        self.matcher.restart(&self.inner);
    }

    /// Redactions so far per detector, in configuration order.
    pub fn counts(&self) -> impl Iterator<Item = (&str, u64)> {
        self.inner
            .detectors
            .iter()
            .zip(&self.matcher.counts)
            .map(|(d, &n)| (d.name.as_str(), n))
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Frees the buffers that hold nothing now (a stream waiting on its reader keeps
    /// only what it must).
    pub fn release_spare(&mut self) {
        if self.held.is_empty() {
            self.held = String::new();
        }
        self.matcher.release_spare();
    }
}
