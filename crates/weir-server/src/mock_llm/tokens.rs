//! The text of a response, token by token: seeded words, with fake PII planted every N tokens.

use serde::Serialize;

use super::knobs::Knobs;
use super::pii::{fake_value, mix, split, PiiKind};

const WORDS: [&str; 48] = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "while",
    "streaming",
    "tokens",
    "through",
    "a",
    "proxy",
    "that",
    "must",
    "respect",
    "backpressure",
    "or",
    "its",
    "memory",
    "will",
    "grow",
    "without",
    "bound",
    "and",
    "every",
    "slow",
    "reader",
    "holds",
    "back",
    "producer",
    "so",
    "nothing",
    "piles",
    "up",
    "in",
    "heap",
    "buffers",
    "until",
    "the",
    "process",
    "dies",
    "of",
    "oom",
    "hours",
    "later",
    "quietly",
];

/// Keeps the PII values apart from the word choices drawn from the same seed.
const PII_SALT: u64 = 0x5049_495f_5345_4544;

/// One token and, if it carries planted PII, which part of which value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    pub pii: Option<PiiPart>,
}

/// A token's share of a planted value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PiiPart {
    /// Which plant of the stream (0, 1, ...).
    pub plant: u64,
    pub kind: PiiKind,
    /// This token's part, 0-based, of `parts`.
    pub part: usize,
    pub parts: usize,
}

/// A value planted in a stream, as [`planted`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlantedPii {
    pub kind: PiiKind,
    pub value: String,
    /// Index of the token holding its first part.
    pub first_token: u64,
    /// Tokens it spans: 1 when whole, 2 or 3 when split.
    pub parts: usize,
}

/// The endless, deterministic token sequence of one response.
///
/// Plant `k` (0-based) is of kind `PiiKind::ALL[k % 5]`; even plants come whole in one
/// token, odd ones split across 2 or 3 tokens. The first plant is token `pii_every - 1`.
#[derive(Clone, Debug)]
pub struct TokenGen {
    seed: u64,
    token_size: usize,
    pii_every: u64,
    index: u64,
    next_plant_at: u64,
    plants: u64,
    /// Parts still to send of the current plant, last part first.
    pending: Vec<String>,
    current: Option<PiiPart>,
}

impl TokenGen {
    pub fn new(knobs: &Knobs) -> Self {
        TokenGen {
            seed: knobs.seed,
            token_size: knobs.token_size.max(1),
            pii_every: knobs.pii_every,
            index: 0,
            next_plant_at: knobs.pii_every.saturating_sub(1),
            plants: 0,
            pending: Vec::new(),
            current: None,
        }
    }

    /// Index of the token the next call produces.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Writes the next token's text into `out` (cleared first) and says whether it carries PII.
    pub fn next_into(&mut self, out: &mut String) -> Option<PiiPart> {
        out.clear();
        let i = self.index;
        self.index += 1;
        if self.pending.is_empty() && self.pii_every > 0 && i == self.next_plant_at {
            self.start_plant(i);
        }
        if let (Some(part), Some(mut info)) = (self.pending.pop(), self.current) {
            info.part = info.parts - 1 - self.pending.len();
            if info.part == 0 {
                out.push(' ');
            }
            out.push_str(&part);
            return Some(info);
        }
        let h = mix(self.seed, i);
        let mut j = 0;
        while out.is_empty() || out.len() < self.token_size {
            let w = mix(h, j);
            out.push(' ');
            out.push_str(WORDS[(w % WORDS.len() as u64) as usize]);
            j += 1;
        }
        None
    }

    fn start_plant(&mut self, at: u64) {
        let k = self.plants;
        self.plants += 1;
        let kind = PiiKind::ALL[(k % PiiKind::ALL.len() as u64) as usize];
        let h = mix(self.seed ^ PII_SALT, k);
        let value = fake_value(kind, h);
        let parts = if k % 2 == 0 {
            1
        } else {
            2 + (mix(h, 7) % 2) as usize
        };
        let mut pieces = if parts == 1 {
            vec![value]
        } else {
            split(&value, parts, mix(h, 8))
        };
        pieces.reverse();
        self.pending = pieces;
        self.current = Some(PiiPart {
            plant: k,
            kind,
            part: 0,
            parts,
        });
        self.next_plant_at = at + self.pii_every.max(parts as u64);
    }
}

impl Iterator for TokenGen {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let mut text = String::new();
        let pii = self.next_into(&mut text);
        Some(Token { text, pii })
    }
}

/// The values planted in the first `tokens` tokens of a response made with `knobs`, in
/// order; a split value cut off by the end of the response is not listed.
pub fn planted(knobs: &Knobs, tokens: u64) -> Vec<PlantedPii> {
    let mut gen = TokenGen::new(knobs);
    let mut out = Vec::new();
    let mut value = String::new();
    let mut text = String::new();
    for i in 0..tokens {
        let Some(part) = gen.next_into(&mut text) else {
            continue;
        };
        if part.part == 0 {
            value.clear();
        }
        value.push_str(
            text.strip_prefix(' ')
                .filter(|_| part.part == 0)
                .unwrap_or(&text),
        );
        if part.part + 1 == part.parts {
            out.push(PlantedPii {
                kind: part.kind,
                value: value.clone(),
                first_token: i + 1 - part.parts as u64,
                parts: part.parts,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_llm::pii::luhn_valid;

    fn knobs(pii: u64, size: usize) -> Knobs {
        Knobs {
            pii_every: pii,
            token_size: size,
            ..Knobs::default()
        }
    }

    #[test]
    fn same_seed_same_text() {
        let a: Vec<Token> = TokenGen::new(&knobs(7, 4)).take(300).collect();
        let b: Vec<Token> = TokenGen::new(&knobs(7, 4)).take(300).collect();
        assert_eq!(a, b);
        let mut other = knobs(7, 4);
        other.seed = 43;
        let c: Vec<Token> = TokenGen::new(&other).take(300).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn token_size_is_approximate() {
        for size in [1, 4, 32, 1000] {
            for t in TokenGen::new(&knobs(0, size)).take(100) {
                assert!(
                    t.text.len() >= size && t.text.len() < size + 20,
                    "{size} {t:?}"
                );
            }
        }
    }

    #[test]
    fn plants_cycle_kinds_and_alternate_whole_and_split() {
        let k = knobs(10, 4);
        let plants = planted(&k, 405);
        assert_eq!(plants.len(), 40);
        for (n, p) in plants.iter().enumerate() {
            assert_eq!(p.kind, PiiKind::ALL[n % 5]);
            assert_eq!(p.first_token, 9 + 10 * n as u64);
            if n % 2 == 0 {
                assert_eq!(p.parts, 1);
            } else {
                assert!(p.parts == 2 || p.parts == 3);
            }
            if p.kind == PiiKind::CardNumber {
                assert!(luhn_valid(&p.value));
            }
        }
        let text: String = TokenGen::new(&k).take(405).map(|t| t.text).collect();
        for p in &plants {
            assert!(text.contains(&format!(" {}", p.value)), "{p:?}");
        }
    }

    #[test]
    fn plants_never_overlap_when_dense() {
        let k = knobs(1, 4);
        let tokens: Vec<Token> = TokenGen::new(&k).take(100).collect();
        assert!(tokens.iter().all(|t| t.pii.is_some()));
        let plants = planted(&k, 100);
        let joined: String = tokens.iter().map(|t| t.text.as_str()).collect();
        let expected: String = plants.iter().map(|p| format!(" {}", p.value)).collect();
        assert!(joined.starts_with(&expected));
    }
}
