//! Redacts PII and secrets from text arriving in pieces, holding back only what may become a match.

use std::fmt;
use std::sync::Arc;

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};
use weir_runtime::error_chain;

/// The held-back tail cap when none is given, in bytes.
pub const DEFAULT_MAX_HOLD: usize = 256;

/// The smallest accepted cap: longer than any card or IBAN candidate (43 bytes).
pub const MIN_MAX_HOLD: usize = 64;

/// Ceiling on the compiled automaton (the built-ins take about 200 KB), so that a
/// pathological custom regex fails quickly at build.
const DFA_SIZE_LIMIT: usize = 8 << 20;

/// A built-in detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Email,
    Phone,
    Card,
    Iban,
    Ipv4,
    Secret,
}

const OCTET: &str = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";

impl Builtin {
    pub const ALL: [Builtin; 6] = [
        Builtin::Email,
        Builtin::Phone,
        Builtin::Card,
        Builtin::Iban,
        Builtin::Ipv4,
        Builtin::Secret,
    ];

    /// The name used in configuration: `email`, `phone`, `card`, `iban`, `ipv4`, `secret`.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Email => "email",
            Builtin::Phone => "phone",
            Builtin::Card => "card",
            Builtin::Iban => "iban",
            Builtin::Ipv4 => "ipv4",
            Builtin::Secret => "secret",
        }
    }

    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The default replacement: `[EMAIL]`, `[PHONE]`, and so on.
    pub fn default_mask(self) -> &'static str {
        match self {
            Builtin::Email => "[EMAIL]",
            Builtin::Phone => "[PHONE]",
            Builtin::Card => "[CARD]",
            Builtin::Iban => "[IBAN]",
            Builtin::Ipv4 => "[IPV4]",
            Builtin::Secret => "[SECRET]",
        }
    }

    /// The regex this detector compiles to.
    pub fn pattern(self) -> String {
        match self {
            Builtin::Email => {
                r"(?-u:\b)[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}".into()
            }
            Builtin::Phone => concat!(
                r"(?:",
                // International: +CC, an optional area code in brackets, then groups.
                r"\+[1-9][0-9]{0,2}[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,4})(?:[ .-]?[0-9]{2,5}){2,4}",
                // North American: (415) 555-0100, 415-555-0100, 415.555.0100.
                r"|\([2-9][0-9]{2}\)[ .-]?[2-9][0-9]{2}[ .-][0-9]{4}",
                r"|(?-u:\b)[2-9][0-9]{2}[ .-][2-9][0-9]{2}[ .-][0-9]{4}",
                // National with a trunk 0: 020 7946 0958, 0161 496 0000, 06 12 34 56 78.
                r"|(?-u:\b)0[1-9][0-9]{1,3}[ .-][0-9]{3,4}[ .-]?[0-9]{3,4}",
                r"|(?-u:\b)0[1-9](?:[ .-][0-9]{2}){4}",
                r")(?-u:\b)",
            )
            .into(),
            Builtin::Card => concat!(
                r"(?-u:\b)(?:[0-9]{13,19}",
                r"|[0-9]{4}(?:[ -][0-9]{4}){2}[ -][0-9]{1,4}",
                r"|[0-9]{4}(?:[ -][0-9]{4}){3}[ -][0-9]{1,3}",
                r"|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4,5}",
                r")(?-u:\b)",
            )
            .into(),
            Builtin::Iban => {
                r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?-u:\b)".into()
            }
            Builtin::Ipv4 => format!(r"(?-u:\b)(?:{OCTET}\.){{3}}{OCTET}(?-u:\b)"),
            Builtin::Secret => concat!(
                r"(?-u:\b)(?:sk-[A-Za-z0-9_-]{20,}",
                r"|AKIA[0-9A-Z]{16}(?-u:\b)",
                r"|gh[pousr]_[A-Za-z0-9]{36,}",
                r"|github_pat_[A-Za-z0-9_]{22,}",
                r"|xox[baprs]-[A-Za-z0-9-]{10,}",
                r"|(?i:bearer)[ \t]+[A-Za-z0-9._~+/-]{16,}=*",
                r")",
            )
            .into(),
        }
    }

    fn validator(self) -> Option<fn(&[u8]) -> bool> {
        match self {
            Builtin::Card => Some(luhn_valid),
            Builtin::Iban => Some(iban_valid),
            _ => None,
        }
    }
}

/// Luhn checksum over the digits, separators skipped.
fn luhn_valid(candidate: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut count = 0usize;
    for &b in candidate.iter().rev().filter(|b| b.is_ascii_digit()) {
        let d = u32::from(b - b'0');
        sum += if count % 2 == 1 {
            let twice = d * 2;
            if twice > 9 {
                twice - 9
            } else {
                twice
            }
        } else {
            d
        };
        count += 1;
    }
    (13..=19).contains(&count) && sum % 10 == 0
}

/// ISO 13616 check: the first four characters moved to the end, letters as 10..35,
/// the whole number mod 97 must be 1.
fn iban_valid(candidate: &[u8]) -> bool {
    let chars = || candidate.iter().copied().filter(|&b| b != b' ');
    if !(15..=34).contains(&chars().count()) {
        return false;
    }
    let mut rem = 0u32;
    for c in chars().skip(4).chain(chars().take(4)) {
        rem = match c {
            b'0'..=b'9' => (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

/// What a detector matches.
#[derive(Clone, Debug)]
enum Source {
    Builtin(Builtin),
    Custom(String),
}

#[derive(Clone, Debug)]
struct DetectorSpec {
    name: String,
    source: Source,
}

/// Which detectors to run, their masks, and the hold-back cap.
#[derive(Clone, Debug)]
pub struct RedactConfig {
    detectors: Vec<DetectorSpec>,
    unknown: Vec<String>,
    masks: Vec<(String, String)>,
    max_hold: usize,
}

impl Default for RedactConfig {
    fn default() -> Self {
        RedactConfig::new()
    }
}

impl RedactConfig {
    /// No detectors yet; add some with [`kind`](Self::kind) or [`custom`](Self::custom).
    pub fn new() -> Self {
        RedactConfig {
            detectors: Vec::new(),
            unknown: Vec::new(),
            masks: Vec::new(),
            max_hold: DEFAULT_MAX_HOLD,
        }
    }

    /// Every built-in detector, in the order of [`Builtin::ALL`].
    pub fn all_builtins() -> Self {
        Builtin::ALL
            .into_iter()
            .fold(RedactConfig::new(), RedactConfig::builtin)
    }

    /// Built-in detectors by name (`"email"`, `"card"`, …); an unknown name is reported
    /// by [`Redactor::new`].
    pub fn kinds(names: &[&str]) -> Self {
        names
            .iter()
            .fold(RedactConfig::new(), |config, name| config.kind(name))
    }

    /// Adds the built-in detector of that name; an unknown name is reported by
    /// [`Redactor::new`].
    pub fn kind(mut self, name: &str) -> Self {
        match Builtin::from_name(name) {
            Some(builtin) => self.builtin(builtin),
            None => {
                self.unknown.push(name.to_owned());
                self
            }
        }
    }

    pub fn builtin(mut self, builtin: Builtin) -> Self {
        self.detectors.push(DetectorSpec {
            name: builtin.name().to_owned(),
            source: Source::Builtin(builtin),
        });
        self
    }

    /// Adds a detector for a regex (regex-automata syntax, no look-around except `^`,
    /// `$` and ASCII `(?-u:\b)`); its mask defaults to the name uppercased in brackets.
    pub fn custom(mut self, name: &str, pattern: &str) -> Self {
        self.detectors.push(DetectorSpec {
            name: name.to_owned(),
            source: Source::Custom(pattern.to_owned()),
        });
        self
    }

    /// Replaces the mask of the detector of that name.
    pub fn mask(mut self, name: &str, mask: &str) -> Self {
        self.masks.push((name.to_owned(), mask.to_owned()));
        self
    }

    /// Caps the held-back tail at `bytes` (at least [`MIN_MAX_HOLD`]).
    pub fn max_hold(mut self, bytes: usize) -> Self {
        self.max_hold = bytes;
        self
    }
}

/// A configuration that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RedactConfigError {
    #[error("unknown detector {0:?} (built-ins: email, phone, card, iban, ipv4, secret)")]
    UnknownKind(String),
    #[error("detector {0:?} is configured twice")]
    Duplicate(String),
    #[error("a custom detector needs a non-empty name")]
    EmptyName,
    #[error("mask given for {0:?}, which is not a configured detector")]
    MaskForUnknown(String),
    #[error("no detectors configured")]
    NoDetectors,
    #[error("max_hold of {0} bytes is below the minimum of {MIN_MAX_HOLD}")]
    HoldTooSmall(usize),
    #[error("custom pattern {name:?} is invalid: {reason}")]
    BadPattern { name: String, reason: String },
    #[error("the detectors together do not compile: {0}")]
    Compile(String),
}

struct Detector {
    name: String,
    mask: String,
    validator: Option<fn(&[u8]) -> bool>,
}

struct Compiled {
    dfa: dense::DFA<Vec<u32>>,
    dead: StateID,
    /// By start class (which start state a look-behind selects) and byte, the state
    /// after the first byte of an attempt; `dead` where nothing can start (and inside a
    /// multi-byte char).
    spawn: Vec<[StateID; 256]>,
    /// The start class after each byte.
    class_after: [u8; 256],
    /// The start class at the start of a text.
    text_start: usize,
    detectors: Vec<Detector>,
    max_hold: u64,
}

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
/// earliest start at which some detector has a complete, *valid* match wins, and there
/// the longest valid match (ties: the detector configured first); matching resumes at
/// its end. "Valid" means the detector's checksum holds, if it has one (Luhn for
/// `card`, ISO 7064 mod-97 for `iban`): a candidate that fails it is left as text, and
/// a shorter valid match at the same start, or a match starting later, is used instead.
/// Empty matches are ignored.
///
/// # Hold-back
///
/// After each piece, everything before the earliest position where a match attempt is
/// still alive (text from there could still grow into a match) or a found match still
/// waits for a longer one is released; the rest is held. So `"Hello "` is released at
/// once, `"Hello"` is held (it could become `Hello@example.com`), and in
/// `"contact me at jo"` only `"jo"` is held.
///
/// The held tail is capped at `max_hold` bytes (default [`DEFAULT_MAX_HOLD`], at least
/// [`MIN_MAX_HOLD`]). When an attempt would span more than that, it is settled on the
/// spot: if it has already seen a valid match, that match is redacted, and if the
/// attempt is still alive and its detector has no checksum, the text that keeps
/// extending that match (a long bearer token, say) is dropped into the same mask;
/// otherwise the attempt is abandoned and its text is released as it is (attempts
/// that started later inside it and reached the same DFA state are tracked as one with
/// it, and are abandoned with it). The cap applies at a byte position, not at a piece
/// boundary, so it is part of the output's definition: `redact_all` applies it too,
/// and the equivalence above holds for every input. No built-in detector with a
/// checksum can span `MIN_MAX_HOLD` bytes, so the cap never cuts a card or IBAN.
///
/// # Cost
///
/// Each byte is stepped once through the DFA per live attempt (usually zero to two:
/// built-in detectors start only at a word boundary or at `+`/`(`), with no rescans of
/// held text except the bytes between a match's end and the point where its attempt
/// died, which are re-read once after the match is redacted.
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Compiled>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field(
                "detectors",
                &self
                    .inner
                    .detectors
                    .iter()
                    .map(|d| &d.name)
                    .collect::<Vec<_>>(),
            )
            .field("max_hold", &self.inner.max_hold)
            .finish()
    }
}

fn dfa_builder() -> dense::Builder {
    let mut builder = dense::Builder::new();
    builder.configure(
        dense::Config::new()
            .match_kind(MatchKind::All)
            .start_kind(StartKind::Anchored)
            .accelerate(false)
            .dfa_size_limit(Some(DFA_SIZE_LIMIT))
            .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
    );
    builder
}

impl Redactor {
    pub fn new(config: RedactConfig) -> Result<Redactor, RedactConfigError> {
        if let Some(name) = config.unknown.into_iter().next() {
            return Err(RedactConfigError::UnknownKind(name));
        }
        if config.detectors.is_empty() {
            return Err(RedactConfigError::NoDetectors);
        }
        if config.max_hold < MIN_MAX_HOLD {
            return Err(RedactConfigError::HoldTooSmall(config.max_hold));
        }
        let builder = dfa_builder();
        let mut patterns = Vec::with_capacity(config.detectors.len());
        let mut detectors: Vec<Detector> = Vec::with_capacity(config.detectors.len());
        for spec in config.detectors {
            if spec.name.is_empty() {
                return Err(RedactConfigError::EmptyName);
            }
            if detectors.iter().any(|d| d.name == spec.name) {
                return Err(RedactConfigError::Duplicate(spec.name));
            }
            let (pattern, mask, validator) = match spec.source {
                Source::Builtin(b) => (b.pattern(), b.default_mask().to_owned(), b.validator()),
                Source::Custom(pattern) => {
                    // Built alone first so that an error names the pattern at fault.
                    if let Err(err) = builder.build(&pattern) {
                        return Err(RedactConfigError::BadPattern {
                            name: spec.name,
                            reason: error_chain(&err),
                        });
                    }
                    (pattern, format!("[{}]", spec.name.to_uppercase()), None)
                }
            };
            patterns.push(pattern);
            detectors.push(Detector {
                name: spec.name,
                mask,
                validator,
            });
        }
        for (name, mask) in config.masks {
            match detectors.iter_mut().find(|d| d.name == name) {
                Some(d) => d.mask = mask,
                None => return Err(RedactConfigError::MaskForUnknown(name)),
            }
        }
        let dfa = builder
            .build_many(&patterns)
            .map_err(|err| RedactConfigError::Compile(error_chain(&err)))?;
        let compile_error = |err: &dyn fmt::Display| RedactConfigError::Compile(err.to_string());
        // The dense DFA's dead state is always 0; checked rather than assumed.
        let dead = StateID::ZERO;
        if !dfa.is_dead_state(dead) {
            return Err(compile_error(&"the automaton has no dead state at 0"));
        }
        let mut classes: Vec<StateID> = Vec::new();
        let mut class_of = |look_behind: Option<u8>| -> Result<u8, RedactConfigError> {
            let config = start::Config::new()
                .anchored(Anchored::Yes)
                .look_behind(look_behind);
            let id = dfa.start_state(&config).map_err(|e| compile_error(&e))?;
            let k = classes.iter().position(|&d| d == id).unwrap_or_else(|| {
                classes.push(id);
                classes.len() - 1
            });
            u8::try_from(k).map_err(|e| compile_error(&e))
        };
        let text_start = usize::from(class_of(None)?);
        let mut class_after = [0u8; 256];
        for (b, class) in (0..=u8::MAX).zip(class_after.iter_mut()) {
            *class = class_of(Some(b))?;
        }
        let spawn = classes
            .iter()
            .map(|&id| {
                std::array::from_fn(|b| {
                    let b = b as u8;
                    let next = dfa.next_state(id, b);
                    if is_continuation(b) {
                        dead
                    } else {
                        next
                    }
                })
            })
            .collect();
        Ok(Redactor {
            inner: Arc::new(Compiled {
                dfa,
                dead,
                spawn,
                class_after,
                text_start,
                detectors,
                max_hold: config.max_hold as u64,
            }),
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

/// One anchored run of the DFA from `start`.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    start: u64,
    state: StateID,
    live: bool,
    /// Longest valid match so far: (end, detector).
    best: Option<(u64, u32)>,
    /// Set when this attempt extends a match already masked up to `start`: only matches
    /// of this detector count, and they add to that mask.
    extends: Option<u32>,
    /// `state` is the state after the byte before this position (for an extension, the
    /// DFA ran ahead of the bytes being re-read).
    resume_at: u64,
}

/// The text a push can see: the held tail followed by the new piece.
struct Text<'a> {
    held: &'a str,
    at: u64,
    input: &'a str,
}

impl Text<'_> {
    fn split(&self) -> u64 {
        self.at + self.held.len() as u64
    }

    fn end(&self) -> u64 {
        self.split() + self.input.len() as u64
    }

    #[inline]
    fn byte(&self, i: u64) -> u8 {
        let split = self.split();
        if i < split {
            self.held.as_bytes()[(i - self.at) as usize]
        } else {
            self.input.as_bytes()[(i - split) as usize]
        }
    }

    /// The two parts of `[from, to)`: one in the held text, one in the input.
    fn parts(&self, from: u64, to: u64) -> [(&str, usize, usize); 2] {
        let split = self.split();
        let held = (from < split).then(|| {
            (
                (from - self.at) as usize,
                (to.min(split) - self.at) as usize,
            )
        });
        let input =
            (to > split).then(|| ((from.max(split) - split) as usize, (to - split) as usize));
        [
            (self.held, held.map_or(0, |h| h.0), held.map_or(0, |h| h.1)),
            (
                self.input,
                input.map_or(0, |h| h.0),
                input.map_or(0, |h| h.1),
            ),
        ]
    }

    fn copy(&self, from: u64, to: u64, out: &mut String) {
        for (part, a, b) in self.parts(from, to) {
            // Cuts fall on char boundaries by construction (attempts start only there).
            match part.get(a..b) {
                Some(piece) => out.push_str(piece),
                None => out.push_str(&String::from_utf8_lossy(&part.as_bytes()[a..b])),
            }
        }
    }

    fn copy_bytes(&self, from: u64, to: u64, out: &mut Vec<u8>) {
        for (part, a, b) in self.parts(from, to) {
            out.extend_from_slice(&part.as_bytes()[a..b]);
        }
    }
}

fn is_continuation(b: u8) -> bool {
    (0x80..0xC0).contains(&b)
}

/// Redaction state for one stream of text; see [`Redactor`] for what it releases when.
pub struct RedactStream {
    inner: Arc<Compiled>,
    /// Unreleased text, starting at absolute offset `matcher.held_at`.
    held: String,
    matcher: Matcher,
}

impl fmt::Debug for RedactStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactStream")
            .field("held", &self.held)
            .field("attempts", &self.matcher.attempts.len())
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
        self.matcher
            .run(&self.inner, &mut self.held, "", true, &mut out);
        self.matcher.prev = self.inner.text_start;
        out
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
}

/// The stepping state of a stream, apart from the automaton and the held text so that
/// both can be borrowed while it changes.
struct Matcher {
    held_at: u64,
    /// Everything before this offset has been released or masked.
    emitted: u64,
    /// Next byte to step the attempts over.
    cursor: u64,
    /// The start class selected by the byte before `cursor`.
    prev: usize,
    /// Ordered by start.
    attempts: Vec<Attempt>,
    counts: Vec<u64>,
    scratch: Vec<u8>,
}

impl Matcher {
    fn new(c: &Compiled) -> Matcher {
        Matcher {
            held_at: 0,
            emitted: 0,
            cursor: 0,
            prev: c.text_start,
            attempts: Vec::new(),
            counts: vec![0; c.detectors.len()],
            scratch: Vec::new(),
        }
    }

    fn run(&mut self, c: &Compiled, held: &mut String, input: &str, eoi: bool, out: &mut String) {
        let text = Text {
            held,
            at: self.held_at,
            input,
        };
        let end = text.end();
        loop {
            self.scan(c, &text, out);
            if !eoi || self.step_eoi(c, &text, out) {
                break;
            }
        }
        let release_to = self.attempts.first().map_or(end, |a| a.start.min(end));
        text.copy(self.emitted, release_to, out);
        self.emitted = release_to;
        let keep_from = (release_to - self.held_at) as usize;
        if keep_from >= held.len() {
            let from = keep_from - held.len();
            held.clear();
            held.push_str(input.get(from..).unwrap_or_default());
        } else {
            held.drain(..keep_from);
            held.push_str(input);
        }
        self.held_at = release_to;
    }

    fn scan(&mut self, c: &Compiled, text: &Text<'_>, out: &mut String) {
        let (split, end) = (text.split(), text.end());
        while self.cursor < end {
            if self.lone_is_plain() {
                if self.cursor < split {
                    self.skim(c, text.held.as_bytes(), text.at);
                }
                if self.cursor >= split && self.lone_is_plain() {
                    self.skim(c, text.input.as_bytes(), split);
                }
                if self.cursor == end {
                    break;
                }
            }
            self.step(c, text, out);
        }
    }

    /// True when at most one attempt exists and it has nothing to decide yet.
    fn lone_is_plain(&self) -> bool {
        match self.attempts[..] {
            [] => true,
            [a] => a.live && a.best.is_none() && a.extends.is_none() && a.resume_at <= self.cursor,
            _ => false,
        }
    }

    /// The common case, kept in registers: at most one attempt, which either keeps
    /// going or dies without a match. Stops, before the byte, at anything else (a match
    /// state, a second attempt, the cap) for [`step`](Self::step) to handle, so both
    /// paths give the same result. `bytes` holds the text from offset `base`.
    fn skim(&mut self, c: &Compiled, bytes: &[u8], base: u64) {
        let (dfa, dead) = (&c.dfa, c.dead);
        let max_hold = c.max_hold as usize;
        let (mut start, mut state) = self
            .attempts
            .pop()
            .map_or((0, dead), |a| (a.start, a.state));
        // The index at which the lone attempt would pass the cap.
        let mut deadline = (start + c.max_hold).saturating_sub(base) as usize;
        let mut prev = self.prev;
        let mut i = (self.cursor - base) as usize;
        while let Some(&b) = bytes.get(i) {
            let mut next = dead;
            if state != dead {
                next = dfa.next_state(state, b);
                if next != dead && (dfa.is_special_state(next) || i >= deadline) {
                    break;
                }
            }
            let spawned = c.spawn[prev][usize::from(b)];
            if spawned != dead {
                if next != dead || dfa.is_special_state(spawned) {
                    break;
                }
                next = spawned;
                start = base + i as u64;
                deadline = i + max_hold;
            }
            state = next;
            prev = usize::from(c.class_after[usize::from(b)]);
            i += 1;
        }
        self.cursor = base + i as u64;
        self.prev = prev;
        if state != dead {
            self.attempts.push(Attempt {
                start,
                state,
                live: true,
                best: None,
                extends: None,
                resume_at: self.cursor,
            });
        }
    }

    /// Steps every attempt over the byte at the cursor and starts one there if some
    /// detector can start (only at char boundaries), then settles.
    fn step(&mut self, c: &Compiled, text: &Text<'_>, out: &mut String) {
        let dfa = &c.dfa;
        let at = self.cursor;
        let b = text.byte(at);
        let boundary = !is_continuation(b);
        let mut event = false;
        for a in self.attempts.iter_mut() {
            if !a.live || a.resume_at > at {
                continue;
            }
            let next = dfa.next_state(a.state, b);
            a.state = next;
            if dfa.is_special_state(next) {
                event = true;
                if dfa.is_match_state(next) {
                    if boundary {
                        record(c, a, next, at, text, &mut self.scratch);
                    }
                } else {
                    a.live = false;
                }
            }
        }
        let spawned = c.spawn[self.prev][usize::from(b)];
        if spawned != c.dead {
            self.attempts.push(Attempt {
                start: at,
                state: spawned,
                live: true,
                best: None,
                extends: None,
                resume_at: at + 1,
            });
        }
        if self.attempts.len() > 1 {
            self.merge();
        }
        self.cursor = at + 1;
        self.prev = usize::from(c.class_after[usize::from(b)]);
        let over_cap = self
            .attempts
            .first()
            .is_some_and(|a| self.cursor - a.start > c.max_hold);
        if event || over_cap {
            self.settle(c, text, out);
        }
    }

    /// Two attempts in the same state have the same future: keep the earlier one. A
    /// later one that already holds a match stays, dead, as a fallback.
    ///
    /// Checksummed detectors never meet here: their patterns count the characters
    /// they consume and start at a boundary, so two live ones from different starts
    /// are always in different states.
    fn merge(&mut self) {
        let mut j = 1;
        while j < self.attempts.len() {
            let (earlier, rest) = self.attempts.split_at(j);
            let b = &rest[0];
            let twin = b.live
                && b.extends.is_none()
                && earlier
                    .iter()
                    .any(|a| a.state == b.state && a.live && a.extends.is_none());
            if !twin {
                j += 1;
            } else if b.best.is_some() {
                self.attempts[j].live = false;
                j += 1;
            } else {
                self.attempts.remove(j);
            }
        }
    }

    /// Resolves the front of the attempt list: a dead attempt with a match is
    /// redacted, one without is dropped, and one over the cap is settled early.
    fn settle(&mut self, c: &Compiled, text: &Text<'_>, out: &mut String) {
        while let Some(first) = self.attempts.first().copied() {
            let over_cap = self.cursor - first.start > c.max_hold;
            if first.live && !over_cap {
                return;
            }
            match first.best {
                Some((end, detector)) => {
                    self.commit(c, first, end, detector, text, out);
                    return;
                }
                None => {
                    self.attempts.remove(0);
                }
            }
        }
    }

    /// Masks `[first.start, end)` and restarts matching at `end`, re-reading the bytes
    /// after it.
    fn commit(
        &mut self,
        c: &Compiled,
        first: Attempt,
        end: u64,
        detector: u32,
        text: &Text<'_>,
        out: &mut String,
    ) {
        let d = detector as usize;
        if first.extends.is_none() {
            text.copy(self.emitted, first.start, out);
            out.push_str(&c.detectors[d].mask);
            self.counts[d] += 1;
        }
        self.emitted = end;
        self.attempts.clear();
        if first.live && c.detectors[d].validator.is_none() {
            self.attempts.push(Attempt {
                start: end,
                state: first.state,
                live: true,
                best: None,
                extends: Some(detector),
                resume_at: self.cursor,
            });
        }
        self.prev = usize::from(c.class_after[usize::from(text.byte(end - 1))]);
        self.cursor = end;
    }

    /// The end of the text: final matches, then everything resolves. Returns false if
    /// a redaction rewound the cursor and bytes must be re-read.
    fn step_eoi(&mut self, c: &Compiled, text: &Text<'_>, out: &mut String) -> bool {
        let dfa = &c.dfa;
        let at = self.cursor;
        for a in self.attempts.iter_mut().filter(|a| a.live) {
            let next = dfa.next_eoi_state(a.state);
            if dfa.is_match_state(next) {
                record(c, a, next, at, text, &mut self.scratch);
            }
            a.live = false;
        }
        self.settle(c, text, out);
        self.cursor == at && self.attempts.is_empty()
    }
}

/// Notes a match of `a` ending at `end` if it beats the one it has.
fn record(
    c: &Compiled,
    a: &mut Attempt,
    state: StateID,
    end: u64,
    text: &Text<'_>,
    scratch: &mut Vec<u8>,
) {
    let dfa = &c.dfa;
    let mut found: Option<u32> = None;
    for i in 0..dfa.match_len(state) {
        let p = dfa.match_pattern(state, i).as_u32();
        if found.is_some_and(|f| f <= p) {
            continue;
        }
        let ok = match a.extends {
            Some(kind) => kind == p,
            None => match c.detectors[p as usize].validator {
                None => true,
                Some(valid) => {
                    scratch.clear();
                    text.copy_bytes(a.start, end, scratch);
                    valid(scratch)
                }
            },
        };
        if ok {
            found = Some(p);
        }
    }
    if let Some(p) = found {
        a.best = Some((end, p));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;
    use proptest::prelude::*;

    static ALL: LazyLock<Redactor> =
        LazyLock::new(|| Redactor::new(RedactConfig::all_builtins()).unwrap());
    static SMALL_CAP: LazyLock<Redactor> =
        LazyLock::new(|| Redactor::new(RedactConfig::all_builtins().max_hold(64)).unwrap());

    static CUSTOM: LazyLock<Redactor> = LazyLock::new(|| {
        let config = RedactConfig::new()
            .custom("xa", "xa")
            .custom("ab", "a+b")
            .custom("line", r"(?m)^k=[a-c]+$")
            .custom("word", r"(?-u:\b)cab(?-u:\b)")
            .custom("end", r"c\z");
        Redactor::new(config).unwrap()
    });

    fn all() -> Redactor {
        ALL.clone()
    }

    fn redacts(r: &Redactor, text: &str, expected: &str) {
        assert_eq!(r.redact_all(text), expected, "input {text:?}");
    }

    fn untouched(r: &Redactor, text: &str) {
        assert_eq!(r.redact_all(text), text);
    }

    fn pushed(r: &Redactor, pieces: &[&str]) -> Vec<String> {
        let mut stream = r.stream();
        let mut out: Vec<String> = pieces.iter().map(|p| stream.push(p)).collect();
        out.push(stream.finish());
        out
    }

    /// Leftmost-longest valid matches, found by brute force over every span.
    fn naive(r: &Redactor, text: &str) -> String {
        let c = &*r.inner;
        let bytes = text.as_bytes();
        let (mut out, mut emitted, mut from) = (String::new(), 0, 0);
        'search: while from < bytes.len() {
            for s in (from..bytes.len()).filter(|&s| text.is_char_boundary(s)) {
                let look_behind = s.checked_sub(1).map(|p| bytes[p]);
                let config = start::Config::new()
                    .anchored(Anchored::Yes)
                    .look_behind(look_behind);
                let mut state = c.dfa.start_state(&config).unwrap();
                let mut best = None;
                for e in s + 1..=bytes.len() {
                    state = c.dfa.next_state(state, bytes[e - 1]);
                    if c.dfa.is_dead_state(state) {
                        break;
                    }
                    let peek = match bytes.get(e) {
                        Some(&b) => c.dfa.next_state(state, b),
                        None => c.dfa.next_eoi_state(state),
                    };
                    if !c.dfa.is_match_state(peek) || !text.is_char_boundary(e) {
                        continue;
                    }
                    let mut ids: Vec<usize> = (0..c.dfa.match_len(peek))
                        .map(|i| c.dfa.match_pattern(peek, i).as_usize())
                        .collect();
                    ids.sort_unstable();
                    if let Some(&p) = ids
                        .iter()
                        .find(|&&p| c.detectors[p].validator.is_none_or(|v| v(&bytes[s..e])))
                    {
                        best = Some((e, p));
                    }
                }
                if let Some((e, p)) = best {
                    out.push_str(&text[emitted..s]);
                    out.push_str(&c.detectors[p].mask);
                    emitted = e;
                    from = e;
                    continue 'search;
                }
            }
            break;
        }
        out.push_str(&text[emitted..]);
        out
    }

    #[test]
    fn email() {
        let r = all();
        redacts(&r, "mail jo@example.com now", "mail [EMAIL] now");
        redacts(&r, "<john.smith+tag@mail.example.co.uk>.", "<[EMAIL]>.");
        redacts(&r, "(a_b%c@sub-domain.example.org)", "([EMAIL])");
        untouched(&r, "user@localhost, @handle, a@b.c, name@ example.com");
    }

    #[test]
    fn phone() {
        let r = all();
        for number in [
            "+1 415 555 0100",
            "+14155550100",
            "+1 (415) 555-0100",
            "+44 20 7946 0958",
            "+44 (0)20 7946 0958",
            "+33 1 23 45 67 89",
            "(415) 555-0100",
            "415-555-0100",
            "415.555.0100",
            "020 7946 0958",
            "0161 496 0000",
            "06 12 34 56 78",
        ] {
            redacts(
                &r,
                &format!("call {number}, thanks"),
                "call [PHONE], thanks",
            );
        }
        untouched(
            &r,
            "order 12345 of 2024-01-15 at 10:30, id 4155550100, v1.2, +12, 555-0100",
        );
    }

    #[test]
    fn card_is_luhn_checked() {
        let r = all();
        for card in [
            "4111 1111 1111 1111",
            "4111111111111111",
            "5555-5555-5555-4444",
            "3782 822463 10005",
            "6011000990139424",
        ] {
            redacts(&r, &format!("pay {card} now"), "pay [CARD] now");
        }
        untouched(&r, "pay 4111 1111 1111 1112 now");
        untouched(&r, "pay 4111111111111112 now");
        // Too short and too long for a card, even when the checksum happens to hold.
        untouched(&r, "id 411111111111 and 41111111111111111111 end");
    }

    #[test]
    fn iban_is_mod97_checked() {
        let r = all();
        for iban in [
            "GB82 WEST 1234 5698 7654 32",
            "GB82WEST12345698765432",
            "DE89 3704 0044 0532 0130 00",
            "FR14 2004 1010 0505 0001 3M02 606",
            "NO9386011117947",
        ] {
            redacts(&r, &format!("to {iban}, ref"), "to [IBAN], ref");
        }
        untouched(&r, "to GB82 WEST 1234 5698 7654 33, ref");
        untouched(&r, "to DE89370400440532013001 ok");
    }

    #[test]
    fn ipv4_octets_are_bytes() {
        let r = all();
        redacts(
            &r,
            "from 192.168.1.1 and 255.255.255.255.",
            "from [IPV4] and [IPV4].",
        );
        redacts(&r, "8.8.8.8:53", "[IPV4]:53");
        untouched(&r, "256.1.1.1 1.2.3.999 1.2.3 300.300.300.300 01.02.03.04");
    }

    #[test]
    fn secret() {
        let r = all();
        for secret in [
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
            "sk-abcdefghijklmnopqrstuvwxyz",
            "AKIAIOSFODNN7EXAMPLE",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "xoxb-123456789012-abcdefghij",
        ] {
            redacts(&r, &format!("key: {secret} end"), "key: [SECRET] end");
        }
        untouched(
            &r,
            "sk-short task-abcdefghijklmnopqrstuvwxyz the Bearer token AKIAshort ghp_short",
        );
    }

    #[test]
    fn custom_detectors_and_masks() {
        let config = RedactConfig::kinds(&["email"])
            .custom("employee_id", r"EMP-[0-9]{6}")
            .custom("café", r"café #[0-9]+")
            .mask("email", "<email>");
        let r = Redactor::new(config).unwrap();
        redacts(
            &r,
            "EMP-123456 wrote jo@example.com from café #12",
            "[EMPLOYEE_ID] wrote <email> from [CAFÉ]",
        );
        untouched(&r, "EMP-12345 4111111111111111");
        let names: Vec<&str> = r.names().collect();
        assert_eq!(names, ["email", "employee_id", "café"]);
    }

    #[test]
    fn configuration_errors_name_the_culprit() {
        let err = Redactor::new(RedactConfig::new().custom("ticket", "T-[0-9")).unwrap_err();
        assert!(matches!(&err, RedactConfigError::BadPattern { name, .. } if name == "ticket"));
        assert!(err.to_string().contains("\"ticket\""), "{err}");
        // DFAs cannot do Unicode word boundaries; the error says which pattern.
        let err = Redactor::new(RedactConfig::new().custom("word", r"\bx\b")).unwrap_err();
        assert!(err.to_string().contains("\"word\""), "{err}");
        let err = Redactor::new(RedactConfig::kinds(&["email", "ssn"])).unwrap_err();
        assert!(matches!(err, RedactConfigError::UnknownKind(k) if k == "ssn"));
        let err = Redactor::new(RedactConfig::kinds(&["card", "card"])).unwrap_err();
        assert!(matches!(err, RedactConfigError::Duplicate(_)));
        let err = Redactor::new(RedactConfig::kinds(&["card"]).mask("iban", "x")).unwrap_err();
        assert!(matches!(err, RedactConfigError::MaskForUnknown(_)));
        let err = Redactor::new(RedactConfig::all_builtins().max_hold(10)).unwrap_err();
        assert!(matches!(err, RedactConfigError::HoldTooSmall(10)));
        assert!(matches!(
            Redactor::new(RedactConfig::new()),
            Err(RedactConfigError::NoDetectors)
        ));
    }

    #[test]
    fn counts_per_detector() {
        let r = all();
        let mut stream = r.stream();
        stream.push("a@b.io, c@d.io, 10.0.0.1, 4111 1111 ");
        stream.push("1111 1111");
        stream.finish();
        let counts: Vec<(&str, u64)> = stream.counts().collect();
        assert_eq!(
            counts,
            [
                ("email", 2),
                ("phone", 0),
                ("card", 1),
                ("iban", 0),
                ("ipv4", 1),
                ("secret", 0)
            ]
        );
    }

    #[test]
    fn text_that_cannot_start_a_match_is_released_at_once() {
        let r = all();
        assert_eq!(
            pushed(&r, &["Hello ", "world. "]),
            ["Hello ", "world. ", ""]
        );
        // "Hello" could still become Hello@example.com.
        assert_eq!(pushed(&r, &["Hello", " there"]), ["", "Hello ", "there"]);
    }

    #[test]
    fn only_the_live_tail_is_held_and_released_once_impossible() {
        let r = all();
        let mut stream = r.stream();
        assert_eq!(stream.push("contact me at jo"), "contact me at ");
        assert_eq!(stream.held(), 2);
        assert_eq!(stream.push("hn"), "");
        // "thanks" could still be the local part of an address.
        assert_eq!(stream.push(", thanks"), "john, ");
        assert_eq!(stream.push("!"), "thanks!");
        assert_eq!(stream.held(), 0);
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn a_match_split_over_many_tokens_is_one_mask() {
        let r = all();
        let text =
            "mail jo@example.com, card 4111 1111 1111 1111, key sk-abcdefghijklmnopqrstuvwxyz!";
        let tokens: Vec<&str> = (0..text.len())
            .step_by(3)
            .map(|i| &text[i..(i + 3).min(text.len())])
            .collect();
        let out = pushed(&r, &tokens).concat();
        assert_eq!(out, "mail [EMAIL], card [CARD], key [SECRET]!");
        assert_eq!(out, r.redact_all(text));
    }

    #[test]
    fn a_failed_checksum_falls_back_to_a_shorter_or_later_match() {
        let r = all();
        // The 19-digit reading fails Luhn; the 16-digit one holds.
        redacts(&r, "4111 1111 1111 1111 123 x", "[CARD] 123 x");
        // The card fails Luhn, but its last three groups read as a phone number.
        redacts(&r, "4111 415 555 0100", "4111 [PHONE]");
    }

    #[test]
    fn leftmost_then_longest_wins() {
        let r = all();
        // The phone starts at "+", before any email local part could.
        redacts(&r, "+1 415 555 0100@", "[PHONE]@");
        // The email starts before the IPv4 inside it, so it covers it.
        redacts(&r, "x1.2.3.4@example.com", "[EMAIL]");
        // At one start, the longest valid match: a 4-4-4-4 card, not the phone inside.
        redacts(&r, "4111 1111 1111 1111", "[CARD]");
    }

    #[test]
    fn matching_resumes_right_after_a_match() {
        // "xa" wins at 0; the "a+b" attempt from 2 had merged with the one from 1 and
        // must come back when matching restarts at 2.
        redacts(&CUSTOM, "xaab", "[XA][AB]");
        redacts(&CUSTOM, "k=ab\nk=ab", "[LINE]\n[LINE]");
        redacts(&CUSTOM, "cab cabc", "[WORD] c[AB][END]");
    }

    #[test]
    fn multibyte_text_is_never_cut() {
        let r = all();
        redacts(
            &r,
            "日本 jo@example.com 語é 8.8.8.8é",
            "日本 [EMAIL] 語é [IPV4]é",
        );
        untouched(&r, "jo@exämple.com");
        let out = pushed(&r, &["日", "本jo@ex", "ample.c", "om 🙂"]).concat();
        assert_eq!(out, "日本[EMAIL] 🙂");
    }

    #[test]
    fn a_run_longer_than_the_cap_is_released_as_it_is() {
        let r = SMALL_CAP.clone();
        let run = "a".repeat(200);
        let mut stream = r.stream();
        let mut out = String::new();
        for chunk in run.as_bytes().chunks(4) {
            out.push_str(&stream.push(std::str::from_utf8(chunk).unwrap()));
            assert!(stream.held() <= 64, "held {}", stream.held());
        }
        out.push_str(&stream.finish());
        assert_eq!(out, run);
    }

    #[test]
    fn a_secret_longer_than_the_cap_is_masked_whole() {
        let r = SMALL_CAP.clone();
        let token = format!("Bearer {} done", "x".repeat(500));
        let mut stream = r.stream();
        let mut out = String::new();
        for chunk in token.as_bytes().chunks(5) {
            out.push_str(&stream.push(std::str::from_utf8(chunk).unwrap()));
            assert!(stream.held() <= 64);
        }
        out.push_str(&stream.finish());
        assert_eq!(out, "[SECRET] done");
        assert_eq!(out, r.redact_all(&token));
        assert_eq!(
            stream.counts().find(|c| c.0 == "secret"),
            Some(("secret", 1))
        );
    }

    #[test]
    fn agrees_with_brute_force_on_samples() {
        let r = all();
        for text in [
            "4111 415 555 0100",
            "a.b@c.de.fg@hi.jk",
            "ab@cd.ef@gh.ij 1.2.3.4.5 GB82 WEST 1234 5698 7654 32 OK",
            "+44 (0)20 7946 0958 4111111111111111 12",
        ] {
            assert_eq!(r.redact_all(text), naive(&r, text), "{text:?}");
        }
    }

    const SAMPLES: &[&str] = &[
        "jo@example.com",
        "john.smith+tag@mail.example.co.uk",
        "a_b%c@sub-domain.example.org",
        "+1 415 555 0100",
        "(415) 555-0100",
        "020 7946 0958",
        "+44 20 7946 0958",
        "+33 1 23 45 67 89",
        "06 12 34 56 78",
        "4111 1111 1111 1111",
        "4111111111111111",
        "5555-5555-5555-4444",
        "3782 822463 10005",
        "GB82 WEST 1234 5698 7654 32",
        "DE89370400440532013000",
        "FR14 2004 1010 0505 0001 3M02 606",
        "192.168.1.1",
        "10.0.0.255",
        "8.8.8.8",
        "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "AKIAIOSFODNN7EXAMPLE",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "xoxb-123456789012-abcdefghij",
    ];
    const WORDS: &[&str] = &[
        "hello",
        "Hello",
        "the",
        "naïve",
        "日本語",
        "12",
        "2024",
        "ok",
        "x",
        "🙂",
        "data",
        "at",
        "v1.2",
    ];
    const SEPARATORS: &[&str] = &[" ", ", ", ". ", "; ", " (", ") ", "\n", " — ", ": "];

    fn planted_text() -> impl Strategy<Value = (String, Vec<&'static str>)> {
        let piece = prop_oneof![
            3 => proptest::sample::select(WORDS).prop_map(|w| (w, false)),
            1 => proptest::sample::select(SAMPLES).prop_map(|s| (s, true)),
        ];
        proptest::collection::vec((piece, proptest::sample::select(SEPARATORS)), 1..16).prop_map(
            |parts| {
                let mut text = String::new();
                let mut planted = Vec::new();
                for ((piece, is_sample), sep) in parts {
                    text.push_str(piece);
                    text.push_str(sep);
                    if is_sample {
                        planted.push(piece);
                    }
                }
                (text, planted)
            },
        )
    }

    fn stream_with_cuts(r: &Redactor, text: &str, cuts: &[usize]) -> String {
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|&c| c % (text.len() + 1))
            .filter(|&c| text.is_char_boundary(c))
            .collect();
        points.sort_unstable();
        let mut stream = r.stream();
        let (mut out, mut at) = (String::new(), 0);
        for c in points.into_iter().chain([text.len()]) {
            out.push_str(&stream.push(&text[at..c]));
            at = c;
        }
        out.push_str(&stream.finish());
        out
    }

    proptest! {
        #[test]
        fn any_split_of_planted_text_redacts_like_the_whole(
            (text, planted) in planted_text(),
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let r = all();
            let whole = r.redact_all(&text);
            prop_assert_eq!(&stream_with_cuts(&r, &text, &cuts), &whole);
            for sample in planted {
                prop_assert!(!whole.contains(sample), "{:?} leaked in {:?}", sample, whole);
            }
            prop_assert_eq!(whole, naive(&r, &text));
        }

        #[test]
        fn any_split_of_dense_text_redacts_like_the_whole(
            text in "[a-cA-C0-3@._+() -]{0,120}|[0-9 .-]{0,80}|[A-Z0-9 ]{0,80}",
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
            small_cap in any::<bool>(),
        ) {
            let r = if small_cap { SMALL_CAP.clone() } else { all() };
            let whole = r.redact_all(&text);
            prop_assert_eq!(&stream_with_cuts(&r, &text, &cuts), &whole);
            if !small_cap || text.len() <= MIN_MAX_HOLD {
                prop_assert_eq!(whole, naive(&r, &text));
            }
        }

        #[test]
        fn any_split_with_custom_patterns_redacts_like_the_whole(
            text in "[xabck= \n]{0,60}",
            cuts in proptest::collection::vec(any::<usize>(), 0..30),
        ) {
            let whole = CUSTOM.redact_all(&text);
            prop_assert_eq!(&stream_with_cuts(&CUSTOM, &text, &cuts), &whole);
            prop_assert_eq!(whole, naive(&CUSTOM, &text));
        }

        #[test]
        fn long_runs_under_a_small_cap_redact_like_the_whole(
            pieces in proptest::collection::vec(
                prop_oneof![
                    Just("x".repeat(40)), Just("@ex.com".to_owned()), Just("Bearer ".to_owned()),
                    Just(" ".to_owned()), Just("4111111111111111".to_owned()), Just("é".to_owned()),
                ],
                0..20,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let text = pieces.concat();
            let r = SMALL_CAP.clone();
            let whole = r.redact_all(&text);
            prop_assert_eq!(stream_with_cuts(&r, &text, &cuts), whole);
        }
    }
}
