//! The automaton all detectors compile to, and the stepping of one stream of text through it.

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

use super::config::{error_chain, RedactConfig, RedactConfigError, Source, MIN_MAX_HOLD};
use super::detectors::{Detector, Run, LEAD, RUN_SLOTS};

/// Ceiling on the compiled automaton (the built-ins take about 200 KB), so that a
/// pathological custom regex fails quickly at build.
const DFA_SIZE_LIMIT: usize = 8 << 20;

/// What a pattern of the automaton stands for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Role {
    /// A detector's own pattern (its index in `detectors`).
    Match(u32),
    /// A run-bounded detector's text followed by more of its run, which keeps an attempt
    /// alive until [`Builtin::continues_run`](super::Builtin::continues_run) can judge it.
    Extends,
}

/// The detectors compiled into one anchored DFA, with the tables that start attempts.
pub(super) struct Compiled {
    pub(super) dfa: dense::DFA<Vec<u32>>,
    dead: StateID,
    /// By start class (which start state a look-behind selects) and byte, the state
    /// after the first byte of an attempt; `dead` where nothing can start (and inside a
    /// multi-byte char).
    spawn: Vec<[StateID; 256]>,
    /// The start class after each byte.
    class_after: [u8; 256],
    /// The start class at the start of a text.
    pub(super) text_start: usize,
    pub(super) detectors: Vec<Detector>,
    /// By pattern id.
    pub(super) roles: Vec<Role>,
    /// By run slot, the detector that uses it.
    pub(super) run_owner: [Option<u32>; RUN_SLOTS],
    pub(super) max_hold: u64,
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

fn is_continuation(b: u8) -> bool {
    (0x80..0xC0).contains(&b)
}

impl Compiled {
    pub(super) fn build(config: RedactConfig) -> Result<Compiled, RedactConfigError> {
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
        let mut extensions = Vec::new();
        let mut detectors: Vec<Detector> = Vec::with_capacity(config.detectors.len());
        let mut run_owner = [None; RUN_SLOTS];
        for spec in config.detectors {
            if spec.name.is_empty() {
                return Err(RedactConfigError::EmptyName);
            }
            if detectors.iter().any(|d| d.name == spec.name) {
                return Err(RedactConfigError::Duplicate(spec.name));
            }
            let index = u32::try_from(detectors.len())
                .map_err(|e| RedactConfigError::Compile(e.to_string()))?;
            let (pattern, mask, checksum, run) = match spec.source {
                Source::Builtin(b) => {
                    let run = b.run_slot().zip(b.run_extension()).map(|(slot, ext)| {
                        run_owner[slot] = Some(index);
                        extensions.push(ext);
                        Run { slot, builtin: b }
                    });
                    (b.pattern(), b.default_mask().to_owned(), b.checksum(), run)
                }
                Source::Custom(pattern) => {
                    // Built alone first so that an error names the pattern at fault.
                    if let Err(err) = builder.build(&pattern) {
                        return Err(RedactConfigError::BadPattern {
                            name: spec.name,
                            reason: error_chain(&err),
                        });
                    }
                    let mask = format!("[{}]", spec.name.to_uppercase());
                    (pattern, mask, None, None)
                }
            };
            patterns.push(pattern);
            detectors.push(Detector {
                name: spec.name,
                mask,
                checksum,
                run,
            });
        }
        for (name, mask) in config.masks {
            match detectors.iter_mut().find(|d| d.name == name) {
                Some(d) => d.mask = mask,
                None => return Err(RedactConfigError::MaskForUnknown(name)),
            }
        }
        let mut roles: Vec<Role> = (0..detectors.len() as u32).map(Role::Match).collect();
        for ext in extensions {
            patterns.push(ext);
            roles.push(Role::Extends);
        }
        let dfa = builder
            .build_many(&patterns)
            .map_err(|err| RedactConfigError::Compile(error_chain(&err)))?;
        let compile_error =
            |err: &dyn std::fmt::Display| RedactConfigError::Compile(err.to_string());
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
        Ok(Compiled {
            dfa,
            dead,
            spawn,
            class_after,
            text_start,
            detectors,
            roles,
            run_owner,
            max_hold: config.max_hold as u64,
        })
    }
}

/// Accepted matches of a run-bounded detector whose following bytes were not all seen
/// yet, at most: an address's or a card's ends are two bytes apart at least and their
/// look-ahead is at most six bytes; a phone number's ends are three apart at least (a
/// separator and two digits) and its look-ahead, the rest of a card, twenty.
const PENDING: usize = 8;

/// What an attempt knows of a run-bounded detector's matches, as lengths from its
/// start (such matches are short, so a few bytes keep an attempt small).
#[derive(Clone, Copy, Debug, Default)]
struct RunMark {
    /// The longest match seen not to be followed by more of its run; 0 where none (a
    /// match is never empty).
    stands: u16,
    /// Accepted matches still to be judged on the bytes after them, oldest first; 0
    /// where none.
    pending: [u16; PENDING],
}

impl RunMark {
    fn is_empty(&self) -> bool {
        self.stands == 0 && self.pending[0] == 0
    }

    /// Judges the pending matches whose look-ahead lies before `known` (all of them if
    /// `all`) on the bytes after them: a match stands unless its run goes on.
    fn judge(
        &mut self,
        run: Run,
        text: &Text<'_>,
        start: u64,
        known: u64,
        all: bool,
        scratch: &mut Vec<u8>,
    ) {
        let lookahead = run.builtin.run_lookahead() as u64;
        let mut kept = 0;
        for k in 0..PENDING {
            let len = self.pending[k];
            if len == 0 {
                break;
            }
            let end = start + u64::from(len);
            if !all && end + lookahead > known {
                self.pending[kept] = len;
                kept += 1;
                continue;
            }
            scratch.clear();
            text.copy_bytes(start, (end + lookahead).min(known), scratch);
            let (candidate, after) = scratch.split_at(usize::from(len));
            if !run.builtin.continues_run(candidate, after) {
                self.stands = self.stands.max(len);
            }
        }
        self.pending[kept..].fill(0);
    }

    /// Notes an accepted match of `len` bytes, the bytes before `known` seen.
    fn push(
        &mut self,
        run: Run,
        text: &Text<'_>,
        start: u64,
        len: u16,
        known: u64,
        scratch: &mut Vec<u8>,
    ) {
        self.judge(run, text, start, known, false, scratch);
        if self.pending[PENDING - 1] != 0 {
            self.judge(run, text, start, known, true, scratch);
        }
        if let Some(slot) = self.pending.iter_mut().find(|l| **l == 0) {
            *slot = len;
        }
    }
}

/// One anchored run of the DFA from `start`.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    start: u64,
    state: StateID,
    live: bool,
    /// Longest accepted match so far of a detector not bounded by its run: (end, detector).
    best: Option<(u64, u32)>,
    /// By run slot.
    runs: [RunMark; RUN_SLOTS],
    /// Set when this attempt extends a match already masked up to `start`: only matches
    /// of this detector count, and they add to that mask.
    extends: Option<u32>,
    /// `state` is the state after the byte before this position (for an extension, the
    /// DFA ran ahead of the bytes being re-read).
    resume_at: u64,
}

impl Attempt {
    fn new(start: u64, state: StateID, extends: Option<u32>, resume_at: u64) -> Attempt {
        Attempt {
            start,
            state,
            live: true,
            best: None,
            runs: [RunMark::default(); RUN_SLOTS],
            extends,
            resume_at,
        }
    }

    fn has_candidate(&self) -> bool {
        self.best.is_some() || self.runs.iter().any(|r| !r.is_empty())
    }

    /// The match this attempt stands for, the bytes before `known` seen: the longest
    /// accepted one, for a run-bounded detector one its run does not go on from (ties:
    /// the detector configured first).
    fn choice(
        &self,
        c: &Compiled,
        text: &Text<'_>,
        known: u64,
        scratch: &mut Vec<u8>,
    ) -> Option<(u64, u32)> {
        let mut choice = self.best;
        for (mark, owner) in self.runs.iter().zip(c.run_owner) {
            let Some(d) = owner else {
                continue;
            };
            let Some(run) = c.detectors[d as usize].run else {
                continue;
            };
            let mut mark = *mark;
            mark.judge(run, text, self.start, known, true, scratch);
            if mark.stands != 0 {
                let end = self.start + u64::from(mark.stands);
                if choice.is_none_or(|(e, p)| end > e || (end == e && d < p)) {
                    choice = Some((end, d));
                }
            }
        }
        choice
    }
}

/// The text a push can see: the held tail followed by the new piece.
struct Text<'a> {
    held: &'a str,
    at: u64,
    input: &'a str,
    /// The bytes before `at` (`0` before the start of the text).
    recent: [u8; LEAD],
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

    /// The [`LEAD`] bytes before `pos` (at least `at`), `0` before the start of the text.
    fn before(&self, pos: u64) -> [u8; LEAD] {
        std::array::from_fn(|k| {
            let back = (LEAD - k) as u64;
            match pos.checked_sub(back) {
                Some(i) if i >= self.at => self.byte(i),
                Some(i) => {
                    let gap = (self.at - i) as usize;
                    LEAD.checked_sub(gap).map_or(0, |k| self.recent[k])
                }
                None => 0,
            }
        })
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

/// The stepping state of a stream, apart from the automaton and the held text so that
/// both can be borrowed while it changes.
pub(super) struct Matcher {
    held_at: u64,
    /// Everything before this offset has been released or masked.
    emitted: u64,
    /// Next byte to step the attempts over.
    cursor: u64,
    /// The start class selected by the byte before `cursor`.
    prev: usize,
    /// The bytes before `held_at`, for the run rules of matches at its start.
    recent: [u8; LEAD],
    /// Ordered by start.
    attempts: Vec<Attempt>,
    pub(super) counts: Vec<u64>,
    scratch: Vec<u8>,
}

impl Matcher {
    pub(super) fn release_spare(&mut self) {
        if self.attempts.is_empty() {
            self.attempts = Vec::new();
        }
        self.scratch = Vec::new();
    }

    pub(super) fn new(c: &Compiled) -> Matcher {
        Matcher {
            held_at: 0,
            emitted: 0,
            cursor: 0,
            prev: c.text_start,
            recent: [0; LEAD],
            attempts: Vec::new(),
            counts: vec![0; c.detectors.len()],
            scratch: Vec::new(),
        }
    }

    pub(super) fn attempts(&self) -> usize {
        self.attempts.len()
    }

    /// Starts a new text: nothing before it is looked behind at.
    pub(super) fn restart(&mut self, c: &Compiled) {
        self.prev = c.text_start;
        self.recent = [0; LEAD];
    }

    /// Steps over `input` (after the `held` tail), appends what is safe to release to
    /// `out`, and keeps in `held` the tail that may still become a match; at the end of
    /// the text (`eoi`), resolves everything.
    pub(super) fn run(
        &mut self,
        c: &Compiled,
        held: &mut String,
        input: &str,
        eoi: bool,
        out: &mut String,
    ) {
        let text = Text {
            held,
            at: self.held_at,
            input,
            recent: self.recent,
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
        self.recent = text.before(release_to);
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
            [a] => {
                a.live && !a.has_candidate() && a.extends.is_none() && a.resume_at <= self.cursor
            }
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
            self.attempts
                .push(Attempt::new(start, state, None, self.cursor));
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
            self.attempts.push(Attempt::new(at, spawned, None, at + 1));
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
    /// Checksummed and run-bounded detectors never meet here: their patterns count the
    /// characters they consume and start at a boundary, so two live ones from
    /// different starts are always in different states.
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
            } else if b.has_candidate() {
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
            match first.choice(c, text, self.cursor, &mut self.scratch) {
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
        if first.live && c.detectors[d].checksum.is_none() {
            self.attempts
                .push(Attempt::new(end, first.state, Some(detector), self.cursor));
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

/// Notes the matches of `a` ending at `end` that are accepted (checksum, start of their
/// run) and beat the one it has; a run-bounded detector's wait for the bytes after them.
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
        let Role::Match(p) = c.roles[dfa.match_pattern(state, i).as_usize()] else {
            continue;
        };
        if let Some(kind) = a.extends {
            if kind == p {
                found = Some(p);
            }
            continue;
        }
        let detector = &c.detectors[p as usize];
        if detector.run.is_none() && found.is_some_and(|f| f <= p) {
            continue;
        }
        if detector.checksum.is_some() || detector.run.is_some() {
            scratch.clear();
            text.copy_bytes(a.start, end, scratch);
            if !detector.accepts(&text.before(a.start), scratch) {
                continue;
            }
        }
        match detector.run {
            Some(run) => {
                // Longer than any run-bounded pattern can match; never the case.
                let Ok(len) = u16::try_from(end - a.start) else {
                    continue;
                };
                let known = (end + 1).min(text.end());
                a.runs[run.slot].push(run, text, a.start, len, known, scratch);
            }
            None => found = Some(p),
        }
    }
    if let Some(p) = found {
        a.best = Some((end, p));
    }
}
