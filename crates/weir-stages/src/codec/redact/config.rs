//! Which detectors a redactor runs, their masks and its hold-back cap.

use super::detectors::Builtin;

/// The held-back tail cap when none is given, in bytes.
pub const DEFAULT_MAX_HOLD: usize = 256;

/// The smallest accepted cap: longer than any card or IBAN candidate (43 bytes).
pub const MIN_MAX_HOLD: usize = 64;

/// What a detector matches.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    Builtin(Builtin),
    Custom(String),
}

#[derive(Clone, Debug)]
pub(crate) struct DetectorSpec {
    pub(crate) name: String,
    pub(crate) source: Source,
}

/// Which detectors to run, their masks, and the hold-back cap.
#[derive(Clone, Debug)]
pub struct RedactConfig {
    pub(crate) detectors: Vec<DetectorSpec>,
    pub(crate) unknown: Vec<String>,
    pub(crate) masks: Vec<(String, String)>,
    pub(crate) max_hold: usize,
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
    /// by [`Redactor::new`](super::Redactor::new).
    pub fn kinds(names: &[&str]) -> Self {
        names
            .iter()
            .fold(RedactConfig::new(), |config, name| config.kind(name))
    }

    /// Adds the built-in detector of that name; an unknown name is reported by
    /// [`Redactor::new`](super::Redactor::new).
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

/// An error with its sources, `outer: inner: innermost`: regex-automata's build errors
/// keep the reason (a syntax error's position, a size limit) in their source.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
