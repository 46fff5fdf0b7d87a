//! The built-in detectors: what each matches, the checksum it must pass, and where its run ends.
//!
//! # Runs
//!
//! A phone number, a card number or an IPv4 address is not redacted when it is a part of
//! a longer run of the same shape: `16.0.9.6.14` (a section number) holds no address,
//! `1234-5678-9012-3456-7890` (an order id) no card, `ID 2024-415-555-0100` no phone.
//! The run is checked on both sides of a match: before it, on the [`LEAD`] bytes in
//! front of it ([`Builtin::starts_run`]); after it, on the few bytes that follow
//! ([`Builtin::continues_run`]), which a second pattern compiled beside the detector's
//! own ([`Builtin::run_extension`]) keeps the match attempt alive, and the text held,
//! long enough to see.
//!
//! A phone number also ends where a card number begins: an international number takes up
//! to four digit groups after its area code, and those could be the first groups of a
//! card right after it (`+1 415 555 0100 4111 1111 1111 1111`). A phone match whose last
//! groups start a card that goes on past it is not taken ([`ends_inside_card`]); a
//! shorter one, which leaves the card whole, is.

/// Bytes before a match that [`Builtin::starts_run`] looks at (`0` where the text has none).
pub(crate) const LEAD: usize = 6;

/// The most bytes of a card number that can follow a phone match whose last group is the
/// card's first (4 digits): the rest of the longest layout, 4-4-4-4-3, and the byte after
/// it that must not be a word character.
const CARD_AFTER_PHONE: usize = 19 + 1;

/// The longest card number, separators included (4-4-4-4-3).
const CARD_SPAN: usize = 23;

/// Detectors bounded by their run, each with a fixed slot in a match attempt.
pub(crate) const RUN_SLOTS: usize = 3;

/// A built-in detector. `phone`, `card` and `ipv4` match only a whole run of their
/// shape: digits joined by `.` (an address) or `-` (a card, a phone number) that go on
/// before or after a candidate make it a part of a longer id, version or section number,
/// which is left as text. Spaces do not join runs: they also separate numbers in prose.
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

/// The grouped layouts of a card number (4-4-4-x, 4-4-4-4-x, 4-6-5) with `sep` between groups.
fn card_groups(sep: &str) -> String {
    format!(
        "[0-9]{{4}}(?:{sep}[0-9]{{4}}){{2}}{sep}[0-9]{{1,4}}\
         |[0-9]{{4}}(?:{sep}[0-9]{{4}}){{3}}{sep}[0-9]{{1,3}}\
         |[0-9]{{4}}{sep}[0-9]{{6}}{sep}[0-9]{{4,5}}"
    )
}

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
            Builtin::Card => format!(
                r"(?-u:\b)(?:[0-9]{{13,19}}|{})(?-u:\b)",
                card_groups("[ -]")
            ),
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

    /// The checksum a match must pass: Luhn for `card`, ISO 7064 mod-97 for `iban`.
    pub(crate) fn checksum(self) -> Option<fn(&[u8]) -> bool> {
        match self {
            Builtin::Card => Some(card_valid),
            Builtin::Iban => Some(iban_valid),
            _ => None,
        }
    }

    /// The slot of a detector bounded by its run. IBANs (mod-97 and word boundaries),
    /// e-mail addresses and secrets (prefixed tokens) need no run rule.
    pub(crate) fn run_slot(self) -> Option<usize> {
        match self {
            Builtin::Phone => Some(0),
            Builtin::Card => Some(1),
            Builtin::Ipv4 => Some(2),
            _ => None,
        }
    }

    /// The regex for a match followed by more of its run (what
    /// [`continues_run`](Self::continues_run) checks): another `.digit` after an
    /// address, another `-` and 4-digit group after a card grouped by `-`, another
    /// `.digit` or `-digit` after a phone number, or the rest of a card its last groups
    /// may have begun. Runs are joined by `.` or `-` only: a space between digit groups
    /// also separates numbers in prose (a card and its expiry year, two cards in a row,
    /// `call 020 7946 0958 24/7`), and a leak costs more than a masked id.
    pub(crate) fn run_extension(self) -> Option<String> {
        match self {
            Builtin::Phone => Some(format!(
                r"(?:{})(?:[.-][0-9]|[ -][0-9][0-9 -]{{0,{}}})",
                self.pattern(),
                CARD_AFTER_PHONE - 2
            )),
            Builtin::Card => Some(format!(
                r"(?-u:\b)(?:{})-[0-9]{{4}}(?-u:\b)",
                card_groups("-")
            )),
            Builtin::Ipv4 => Some(format!(r"(?:{})\.[0-9]", self.pattern())),
            _ => None,
        }
    }

    /// Bytes after a match that [`continues_run`](Self::continues_run) looks at.
    pub(crate) fn run_lookahead(self) -> usize {
        match self {
            Builtin::Card => 6,
            Builtin::Phone => CARD_AFTER_PHONE,
            _ => 2,
        }
    }

    /// True when the bytes `after` a match `candidate` go on with its run (see
    /// [`run_extension`](Self::run_extension)); `after` holds up to
    /// [`run_lookahead`](Self::run_lookahead) bytes, fewer only at the end of the text.
    pub(crate) fn continues_run(self, candidate: &[u8], after: &[u8]) -> bool {
        match (self, after) {
            (Builtin::Ipv4, [b'.', d, ..]) => d.is_ascii_digit(),
            (Builtin::Phone, [b'.' | b'-', d, ..]) if d.is_ascii_digit() => true,
            (Builtin::Phone, _) => ends_inside_card(candidate, after),
            (Builtin::Card, [b'-', group @ ..]) => {
                let dashed = candidate.iter().find(|b| !b.is_ascii_digit()) == Some(&b'-');
                let (digits, next) = group.split_at(group.len().min(4));
                dashed
                    && digits.len() == 4
                    && digits.iter().all(u8::is_ascii_digit)
                    && next.first().is_none_or(|&b| !is_word(b))
            }
            _ => false,
        }
    }

    /// True when `candidate` starts its run, judged by the [`LEAD`] bytes `before` it:
    /// an address is not preceded by `digit.`, a card grouped by `-` not by a 4-digit
    /// group and `-`, a phone number starting with a digit not by `digits-` or
    /// `digits.` (a lone digit there is a country code: `1-800-555-0199`).
    pub(crate) fn starts_run(self, before: &[u8; LEAD], candidate: &[u8]) -> bool {
        let [.., b2, b1] = *before;
        match self {
            Builtin::Ipv4 => !(b1 == b'.' && b2.is_ascii_digit()),
            Builtin::Card => {
                let [b6, b5, b4, b3, ..] = *before;
                let dashed = candidate.iter().find(|b| !b.is_ascii_digit()) == Some(&b'-');
                !(dashed
                    && b1 == b'-'
                    && [b5, b4, b3, b2].iter().all(u8::is_ascii_digit)
                    && !is_word(b6))
            }
            Builtin::Phone => {
                let b3 = before[LEAD - 3];
                !(candidate.first().is_some_and(u8::is_ascii_digit)
                    && matches!(b1, b'.' | b'-')
                    && b2.is_ascii_digit()
                    && b3.is_ascii_digit())
            }
            _ => true,
        }
    }
}

/// A byte of an ASCII word, as `(?-u:\b)` sees it.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// True when a card number, as the `card` detector takes it (layout, word boundaries,
/// checksum), starts at a digit group of `candidate` and ends in `after`.
fn ends_inside_card(candidate: &[u8], after: &[u8]) -> bool {
    let mut buf = [0u8; CARD_SPAN + CARD_AFTER_PHONE];
    // A card that ends past the candidate starts in its last CARD_SPAN bytes.
    let from = candidate.len().saturating_sub(CARD_SPAN);
    (from..candidate.len()).any(|g| {
        let starts_group = candidate[g].is_ascii_digit() && (g == 0 || !is_word(candidate[g - 1]));
        if !starts_group {
            return false;
        }
        let head = &candidate[g..];
        let tail = &after[..after.len().min(buf.len() - head.len())];
        buf[..head.len()].copy_from_slice(head);
        buf[head.len()..head.len() + tail.len()].copy_from_slice(tail);
        let text = &buf[..head.len() + tail.len()];
        card_ends(text).any(|end| end > head.len() && card_valid(&text[..end]))
    })
}

/// The ends of the card layouts (as [`Builtin::Card`]'s pattern has them) that start at
/// `text[0]` and are followed by no word character.
fn card_ends(text: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let boundary = |end: usize| text.get(end).is_none_or(|&b| !is_word(b));
    let digits_from = |at: usize| {
        text.get(at..).map_or(0, |rest| {
            rest.iter().take_while(|b| b.is_ascii_digit()).count()
        })
    };
    let run = digits_from(0);
    let contiguous = ((13..=19).contains(&run) && boundary(run)).then_some(run);
    // Each layout: the lengths of the groups before the last, and the last's range.
    const LAYOUTS: [(&[usize], usize, usize); 3] =
        [(&[4, 4, 4], 1, 4), (&[4, 4, 4, 4], 1, 3), (&[4, 6], 4, 5)];
    let grouped = LAYOUTS.into_iter().filter_map(move |(groups, min, max)| {
        let mut at = 0;
        for &len in groups {
            if digits_from(at) != len || !matches!(text.get(at + len), Some(b' ' | b'-')) {
                return None;
            }
            at += len + 1;
        }
        let last = digits_from(at);
        ((min..=max).contains(&last) && boundary(at + last)).then_some(at + last)
    });
    contiguous.into_iter().chain(grouped)
}

/// A payment card: first digit 2 to 6 (the industries that issue payment cards, which
/// keeps out millisecond timestamps and most ids), 13 to 19 digits, Luhn checksum.
fn card_valid(candidate: &[u8]) -> bool {
    let mut digits = candidate.iter().filter(|b| b.is_ascii_digit());
    digits
        .next()
        .is_some_and(|first| (b'2'..=b'6').contains(first))
        && luhn_valid(candidate)
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

/// A configured detector, as the matcher uses it.
#[derive(Debug)]
pub(crate) struct Detector {
    pub(crate) name: String,
    pub(crate) mask: String,
    pub(crate) checksum: Option<fn(&[u8]) -> bool>,
    /// Set for a detector bounded by its run.
    pub(crate) run: Option<Run>,
}

/// Where a run-bounded detector keeps its marks, and its check on the text before a match.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    pub(crate) slot: usize,
    pub(crate) builtin: Builtin,
}

impl Detector {
    /// True when `candidate` (whose [`LEAD`] preceding bytes are `before`) passes the
    /// checksum and, for a run-bounded detector, starts its run.
    pub(crate) fn accepts(&self, before: &[u8; LEAD], candidate: &[u8]) -> bool {
        self.checksum.is_none_or(|valid| valid(candidate))
            && self
                .run
                .is_none_or(|run| run.builtin.starts_run(before, candidate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_slots_are_distinct_and_in_range() {
        let slots: Vec<usize> = Builtin::ALL.iter().filter_map(|b| b.run_slot()).collect();
        assert_eq!(slots, [0, 1, 2]);
        assert!(slots.iter().all(|&s| s < RUN_SLOTS));
        for b in Builtin::ALL {
            assert_eq!(b.run_slot().is_some(), b.run_extension().is_some(), "{b:?}");
        }
    }

    #[test]
    fn checksums() {
        assert!(card_valid(b"4111 1111 1111 1111"));
        assert!(!card_valid(b"4111 1111 1111 1112"));
        // Luhn holds, but no payment card starts with 1.
        assert!(luhn_valid(b"1700000000129"));
        assert!(!card_valid(b"1700000000129"));
        assert!(iban_valid(b"GB82 WEST 1234 5698 7654 32"));
        assert!(!iban_valid(b"GB82 WEST 1234 5698 7654 33"));
    }

    #[test]
    fn the_text_before_a_match_decides_whether_it_starts_its_run() {
        let before = |s: &[u8]| -> [u8; LEAD] {
            let mut out = [0; LEAD];
            out[LEAD - s.len()..].copy_from_slice(s);
            out
        };
        assert!(!Builtin::Ipv4.starts_run(&before(b"16."), b"0.9.6.14"));
        assert!(Builtin::Ipv4.starts_run(&before(b"v."), b"1.2.3.4"));
        assert!(Builtin::Ipv4.starts_run(&before(b""), b"1.2.3.4"));
        assert!(!Builtin::Card.starts_run(&before(b" 1234-"), b"5678-9012-3456-7890"));
        assert!(!Builtin::Card.starts_run(&before(b"1234-"), b"5678-9012-3456-7890"));
        assert!(Builtin::Card.starts_run(&before(b"12345-"), b"5678-9012-3456-7890"));
        assert!(Builtin::Card.starts_run(&before(b"1234-"), b"5678 9012 3456 7890"));
        assert!(Builtin::Card.starts_run(&before(b"1234 "), b"5678 9012 3456 7890"));
        assert!(Builtin::Card.starts_run(&before(b"1234-"), b"4111111111111111"));
        assert!(!Builtin::Phone.starts_run(&before(b"ID 12-"), b"415-555-0100"));
        assert!(Builtin::Phone.starts_run(&before(b" 1-"), b"800-555-0199"));
        assert!(Builtin::Phone.starts_run(&before(b"12-"), b"(415) 555-0100"));
        assert!(Builtin::Email.starts_run(&before(b"1."), b"a@b.io"));
    }

    #[test]
    fn the_text_after_a_match_decides_whether_its_run_goes_on() {
        assert!(Builtin::Ipv4.continues_run(b"16.0.9.6", b".1"));
        assert!(!Builtin::Ipv4.continues_run(b"1.2.3.4", b". "));
        assert!(!Builtin::Ipv4.continues_run(b"1.2.3.4", b"."));
        assert!(Builtin::Phone.continues_run(b"415-555-0100", b"-2"));
        assert!(!Builtin::Phone.continues_run(b"415 555 0100", b" 2"));
        let card = b"4111-1111-1111-1111";
        assert!(Builtin::Card.continues_run(card, b"-2027 "));
        assert!(Builtin::Card.continues_run(card, b"-2027"));
        assert!(!Builtin::Card.continues_run(card, b"-20271"));
        assert!(!Builtin::Card.continues_run(card, b"-202"));
        assert!(!Builtin::Card.continues_run(b"4111111111111111", b"-2027 "));
        assert!(!Builtin::Card.continues_run(b"4111 1111 1111 1111", b" 2027 "));
    }

    #[test]
    fn a_phone_ending_inside_a_card_goes_on_with_the_card() {
        let phone = b"+1 415 555 0100 4111 1111";
        assert!(Builtin::Phone.continues_run(phone, b" 1111 1111"));
        assert!(Builtin::Phone.continues_run(phone, b" 1111 1111 now"));
        assert!(Builtin::Phone.continues_run(b"+1 415 555 0100 4111", b" 1111 1111 1111."));
        assert!(Builtin::Phone.continues_run(b"+1 415 555 0100 3782", b" 822463 10005"));
        // The card's checksum fails, or the run goes on as a word: no card.
        assert!(!Builtin::Phone.continues_run(phone, b" 1111 1112"));
        assert!(!Builtin::Phone.continues_run(phone, b" 1111 1111x"));
        // A whole card after the phone: the phone holds none of it.
        assert!(!Builtin::Phone.continues_run(b"+1 415 555 0100", b" 4111 1111 1111 1111"));
        assert!(!Builtin::Phone.continues_run(b"020 7946 0958", b" 24/7"));
    }

    #[test]
    fn card_layouts_end_where_the_card_pattern_does() {
        let ends = |t: &[u8]| card_ends(t).collect::<Vec<_>>();
        assert_eq!(ends(b"4111 1111 1111 1111 "), [19]);
        assert_eq!(ends(b"4111 1111 1111 1111 111"), [19, 23]);
        assert_eq!(ends(b"4111-1111-1111-1111"), [19]);
        assert_eq!(ends(b"3782 822463 10005."), [17]);
        assert_eq!(ends(b"4111111111111111 "), [16]);
        assert!(ends(b"4111 1111 1111 11111").is_empty());
        assert!(ends(b"4111 1111 1111 1111a").is_empty());
        assert!(ends(b"41111 1111 1111 1111").is_empty());
    }
}
