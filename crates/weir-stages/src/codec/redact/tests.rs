use std::sync::LazyLock;

use proptest::prelude::*;
use regex_automata::dfa::Automaton;
use regex_automata::util::start;
use regex_automata::Anchored;

use super::detectors::{LEAD, RUN_SLOTS};
use super::matcher::Role;
use super::*;

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

/// Leftmost-longest accepted matches, found by brute force over every span: at each
/// start, every end the automaton reports, each pattern's role applied as the
/// [`Redactor`] documents it.
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
            let before: [u8; LEAD] =
                std::array::from_fn(|k| (s + k).checked_sub(LEAD).map_or(0, |i| bytes[i]));
            let mut state = c.dfa.start_state(&config).unwrap();
            let mut best: Option<(usize, usize)> = None;
            let mut runs: [Option<usize>; RUN_SLOTS] = [None; RUN_SLOTS];
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
                let mut plain = None;
                for id in ids {
                    let Role::Match(p) = c.roles[id] else {
                        continue;
                    };
                    let d = &c.detectors[p as usize];
                    if !d.accepts(&before, &bytes[s..e]) {
                        continue;
                    }
                    match d.run {
                        Some(run) => {
                            let to = (e + run.builtin.run_lookahead()).min(bytes.len());
                            if !run.builtin.continues_run(&bytes[s..e], &bytes[e..to]) {
                                runs[run.slot] = Some(e);
                            }
                        }
                        None => plain = plain.or(Some((e, p as usize))),
                    }
                }
                best = plain.or(best);
            }
            for (end, owner) in runs.into_iter().zip(c.run_owner) {
                if let (Some(e), Some(p)) = (end, owner) {
                    let p = p as usize;
                    if best.is_none_or(|(be, bp)| e > be || (e == be && p < bp)) {
                        best = Some((e, p));
                    }
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
    let text = "mail jo@example.com, card 4111 1111 1111 1111, key sk-abcdefghijklmnopqrstuvwxyz!";
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
    "1.2.3.4.5",
    "16.0.9.6.14",
    "1234-5678-9012-3456-7890",
    "2024-01-15",
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

/// Every kind, in sentences, at the start and end of a text, next to punctuation, next
/// to runs that are not of its shape.
const TRUE_POSITIVES: &[(&str, &str)] = &[
    ("jo@example.com", "[EMAIL]"),
    ("mail jo@example.com.", "mail [EMAIL]."),
    ("(a_b%c@sub-domain.example.org);", "([EMAIL]);"),
    ("call +1 415 555 0100", "call [PHONE]"),
    ("+44 20 7946 0958, then", "[PHONE], then"),
    ("call 020 7946 0958 24/7", "call [PHONE] 24/7"),
    ("call 1-800-555-0199 now", "call 1-[PHONE] now"),
    ("2024-01-15 415-555-0100", "2024-01-15 [PHONE]"),
    ("(415) 555-0100 4111 1111 1111 1111", "[PHONE] [CARD]"),
    ("+1 415 555 0100 4111 1111 1111 1111", "[PHONE] [CARD]"),
    ("+44 20 7946 0958 192.168.1.1", "[PHONE] [IPV4]"),
    ("tel:415.555.0100.", "tel:[PHONE]."),
    ("4111 1111 1111 1111", "[CARD]"),
    ("card 4111 1111 1111 1111 2027", "card [CARD] 2027"),
    ("4111 1111 1111 1111 4111 1111 1111 1111", "[CARD] [CARD]"),
    (
        "card 4111-1111-1111-1111, exp 12/27",
        "card [CARD], exp 12/27",
    ),
    ("pay 4111111111111111.", "pay [CARD]."),
    ("order 12-4111111111111111", "order 12-[CARD]"),
    ("to GB82 WEST 1234 5698 7654 32", "to [IBAN]"),
    ("DE89370400440532013000!", "[IBAN]!"),
    ("192.168.1.1", "[IPV4]"),
    ("from 10.0.0.1.", "from [IPV4]."),
    ("dns 8.8.8.8:53, 1.1.1.1/32", "dns [IPV4]:53, [IPV4]/32"),
    ("hosts 10.0.0.1, 10.0.0.2", "hosts [IPV4], [IPV4]"),
    ("range 10.0.0.1-10.0.0.9", "range [IPV4]-[IPV4]"),
    ("ip=10.0.0.1...", "ip=[IPV4]..."),
    ("sk-abcdefghijklmnopqrstuvwxyz", "[SECRET]"),
    ("key: AKIAIOSFODNN7EXAMPLE.", "key: [SECRET]."),
    (
        "Authorization: Bearer abcdefghijklmnop1234",
        "Authorization: [SECRET]",
    ),
];

/// Text with runs of dot- and dash-separated numbers, ids and hashes: nothing to mask.
const FALSE_POSITIVE_BAIT: &[&str] = &[
    "version 1.2.3.4.5 released",
    "1.2.3.4.5",
    "OID 1.3.6.1.4.1.311.21.7",
    "see section 16.0.9.6.14",
    "16.0.9.6.14",
    "build 10.0.19041.1.2, kernel 5.15.0.91.101",
    "order 12345678901234567890 shipped",
    "order 41111111111111111111",
    "ref 1234-5678-9012-3456-7890",
    "ref 4111-1111-1111-1111-1234",
    "ref 1234-4111-1111-1111-1111",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "at 2024-01-15T10:30:00.123Z and 2024-01-15 10:30:00",
    "ts 1700000000129 and 1700000000",
    "ID 2024-415-555-0100",
    "ID 415-555-0100-22",
    "ID 12.415.555.0100",
    "ref 020-7946-0958-12",
    "id 4155550100 and 415555010012",
    "sha d41d8cd98f00b204e9800998ecf8427e",
    "sha256 E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    "v1.2.3.4-rc1.5",
];

/// Every single cut, and every pair of cuts of texts up to 48 bytes.
fn assert_every_split_redacts_like_the_whole(r: &Redactor, text: &str) {
    let whole = r.redact_all(text);
    let cuts: Vec<usize> = (0..=text.len())
        .filter(|&c| text.is_char_boundary(c))
        .collect();
    for &c in &cuts {
        assert_eq!(
            stream_with_cuts(r, text, &[c]),
            whole,
            "{text:?} cut at {c}"
        );
    }
    if text.len() <= 48 {
        for (i, &a) in cuts.iter().enumerate() {
            for &b in &cuts[i..] {
                let out = stream_with_cuts(r, text, &[a, b]);
                assert_eq!(out, whole, "{text:?} cut at {a} and {b}");
            }
        }
    }
}

#[test]
fn true_positives_are_masked_at_every_split() {
    let r = all();
    for &(text, expected) in TRUE_POSITIVES {
        redacts(&r, text, expected);
        assert_eq!(naive(&r, text), expected, "{text:?}");
        assert_every_split_redacts_like_the_whole(&r, text);
    }
}

#[test]
fn false_positive_bait_is_untouched_at_every_split() {
    let r = all();
    for &text in FALSE_POSITIVE_BAIT {
        untouched(&r, text);
        assert_eq!(naive(&r, text), text);
        assert_every_split_redacts_like_the_whole(&r, text);
        // Bait next to a real address still leaves the bait alone.
        let mixed = format!("{text} from 10.0.0.1");
        redacts(&r, &mixed, &format!("{text} from [IPV4]"));
        assert_every_split_redacts_like_the_whole(&r, &mixed);
    }
}

#[test]
fn a_run_is_held_until_its_next_character_decides() {
    let r = all();
    assert_eq!(
        pushed(&r, &["at 1.2.3.4", ".", "5 ", "and 1.2.3.4", ". "]),
        ["at ", "", "", "1.2.3.4.5 and ", "[IPV4]. ", ""]
    );
    // "16." is released before "0.9.6.14" is judged, and still looked behind at.
    assert_eq!(
        pushed(&r, &["section 16.", "0.", "9.6.14 "]),
        ["section ", "", "16.", "0.9.6.14 "]
    );
}

#[test]
fn a_new_text_after_finish_does_not_look_behind_into_the_old_one() {
    let r = all();
    let mut stream = r.stream();
    assert_eq!(stream.push("16."), "");
    assert_eq!(stream.finish(), "16.");
    assert_eq!(stream.push("10.0.0.1"), "");
    assert_eq!(stream.finish(), "[IPV4]");
}

#[test]
fn the_hold_back_stays_within_the_cap_on_long_runs() {
    let r = SMALL_CAP.clone();
    let run = "16.0.9.6.14.1234-5678-9012-3456-".repeat(40);
    let mut stream = r.stream();
    let mut out = String::new();
    for (i, _) in run.char_indices() {
        out.push_str(&stream.push(&run[i..i + 1]));
        assert!(stream.held() <= MIN_MAX_HOLD, "held {}", stream.held());
    }
    out.push_str(&stream.finish());
    assert_eq!(out, r.redact_all(&run));
    assert_eq!(out, run);
}

/// An international number takes up to four digit groups after its area code, so the
/// groups of a card right after it could complete it: the phone must end where the card
/// begins, whichever detector is configured first, at every split.
#[test]
fn a_phone_never_takes_the_first_groups_of_a_card_after_it() {
    let phone_and_card = Redactor::new(RedactConfig::kinds(&["phone", "card"])).unwrap();
    let card_and_phone = Redactor::new(RedactConfig::kinds(&["card", "phone"])).unwrap();
    for r in [all(), phone_and_card, card_and_phone] {
        for (text, expected) in [
            ("+1 415 555 0100 4111 1111 1111 1111", "[PHONE] [CARD]"),
            (
                "call +1 415 555 0100 4111 1111 1111 1111 now",
                "call [PHONE] [CARD] now",
            ),
            ("+44 20 7946 0958 5555-5555-5555-4444.", "[PHONE] [CARD]."),
            ("+1 415 555 0100 3782 822463 10005", "[PHONE] [CARD]"),
            ("+33 1 23 45 67 89 4111 1111 1111 1111", "[PHONE] [CARD]"),
            ("+1 (415) 555 0100 4111-1111-1111-1111", "[PHONE] [CARD]"),
            ("+14155550100 6011 0009 9013 9424", "[PHONE] [CARD]"),
        ] {
            redacts(&r, text, expected);
            assert_eq!(naive(&r, text), expected, "{text:?}");
            assert_every_split_redacts_like_the_whole(&r, text);
        }
    }
}

const PHONES: &[&str] = &[
    "+1 415 555 0100",
    "+14155550100",
    "+1 (415) 555-0100",
    "+44 20 7946 0958",
    "+44 (0)20 7946 0958",
    "+33 1 23 45 67 89",
    "(415) 555-0100",
    "415-555-0100",
    "020 7946 0958",
];
const CARDS: &[&str] = &[
    "4111 1111 1111 1111",
    "4111111111111111",
    "5555-5555-5555-4444",
    "3782 822463 10005",
    "6011 0009 9013 9424",
];

proptest! {
    #[test]
    fn a_card_after_a_phone_is_masked_whole_at_any_split(
        phone in proptest::sample::select(PHONES),
        card in proptest::sample::select(CARDS),
        after in proptest::sample::select(&[" ", ".", "", " now", ", 12/27", "\n"][..]),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let r = all();
        let text = format!("call {phone} {card}{after}");
        let whole = r.redact_all(&text);
        prop_assert_eq!(&whole, &format!("call [PHONE] [CARD]{after}"));
        prop_assert_eq!(&stream_with_cuts(&r, &text, &cuts), &whole);
        prop_assert_eq!(whole, naive(&r, &text));
    }

    #[test]
    fn any_split_of_phone_and_card_shaped_text_redacts_like_the_whole(
        text in "[0-9 +()-]{0,80}|(\\+[1-9]{1,2} )?([0-9]{2,4} ){2,8}[0-9]{1,4}",
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let r = all();
        let whole = r.redact_all(&text);
        prop_assert_eq!(&stream_with_cuts(&r, &text, &cuts), &whole);
        prop_assert_eq!(whole, naive(&r, &text));
    }
}
