//! Fake PII values (e-mail, phone, card number, IPv4, API key), each a pure function of a seed.

use serde::Serialize;

/// The kinds of PII the mock plants, in the order it cycles through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    CardNumber,
    Ipv4,
    ApiKey,
}

impl PiiKind {
    pub const ALL: [PiiKind; 5] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::CardNumber,
        PiiKind::Ipv4,
        PiiKind::ApiKey,
    ];
}

/// SplitMix64's finaliser. Hand-written rather than a `rand` generator because token `i`
/// must be a pure function of `(seed, i)` that no crate upgrade can change: tests and
/// benchmarks recompute what a stream carried.
pub(crate) fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed
        .wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const FIRST: [&str; 8] = [
    "john", "jane", "maria", "wei", "olga", "ahmed", "lucia", "kenji",
];
const LAST: [&str; 8] = [
    "doe", "roe", "silva", "zhang", "petrova", "hassan", "rossi", "sato",
];
const DOMAINS: [&str; 3] = ["example.com", "example.org", "example.net"];
const AREA: [&str; 5] = ["212", "312", "415", "617", "202"];
/// Documentation-only address blocks (RFC 5737), so a planted address routes nowhere.
const NETS: [&str; 3] = ["192.0.2", "198.51.100", "203.0.113"];
const KEY_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A fake value of `kind`, determined by `h`. Phones use the fictional 555-01xx block,
/// addresses the documentation ranges, card numbers pass the Luhn check.
pub fn fake_value(kind: PiiKind, h: u64) -> String {
    let pick = |n: usize, shift: u32| ((h >> shift) as usize) % n;
    match kind {
        PiiKind::Email => format!(
            "{}.{}{}@{}",
            FIRST[pick(FIRST.len(), 0)],
            LAST[pick(LAST.len(), 8)],
            (h >> 16) % 100,
            DOMAINS[pick(DOMAINS.len(), 24)]
        ),
        PiiKind::Phone => {
            let area = AREA[pick(AREA.len(), 0)];
            let line = (h >> 8) % 100;
            if h & (1 << 40) == 0 {
                format!("({area}) 555-01{line:02}")
            } else {
                format!("{area}-555-01{line:02}")
            }
        }
        PiiKind::CardNumber => {
            let mut digits = vec![4u8];
            let mut r = h;
            for _ in 0..14 {
                digits.push((r % 10) as u8);
                r /= 10;
            }
            digits.push(luhn_check_digit(&digits));
            let mut s = String::with_capacity(19);
            for (k, d) in digits.iter().enumerate() {
                if k > 0 && k % 4 == 0 && h & (1 << 41) == 0 {
                    s.push(' ');
                }
                s.push(char::from(b'0' + d));
            }
            s
        }
        PiiKind::Ipv4 => format!("{}.{}", NETS[pick(NETS.len(), 0)], 1 + (h >> 8) % 254),
        PiiKind::ApiKey => {
            let mut s = String::from("sk-");
            for k in 0..40u64 {
                let r = mix(h, k);
                s.push(char::from(KEY_CHARS[(r % KEY_CHARS.len() as u64) as usize]));
            }
            s
        }
    }
}

/// The digit that makes `digits` followed by it pass the Luhn check.
pub fn luhn_check_digit(digits: &[u8]) -> u8 {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &d)| {
            let d = u32::from(d);
            if k % 2 == 0 {
                let dd = d * 2;
                if dd > 9 {
                    dd - 9
                } else {
                    dd
                }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// Whether the digits of `s` (other characters ignored) pass the Luhn check.
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    match digits.split_last() {
        Some((&last, body)) => !body.is_empty() && luhn_check_digit(body) == last,
        None => false,
    }
}

/// Cuts `value` into `parts` non-empty pieces at positions chosen by `h`.
pub(crate) fn split(value: &str, parts: usize, h: u64) -> Vec<String> {
    let len = value.len();
    let cuts: Vec<usize> = match parts {
        2 => vec![1 + (h as usize) % (len - 1)],
        _ => {
            let half = len / 2;
            let a = 1 + (h as usize) % (half - 1).max(1);
            let b = half + ((h >> 16) as usize) % (len - half - 1).max(1);
            vec![a, b]
        }
    };
    let mut out = Vec::with_capacity(parts);
    let mut from = 0;
    for c in cuts {
        out.push(value[from..c].to_string());
        from = c;
    }
    out.push(value[from..].to_string());
    out
}

impl std::fmt::Display for PiiKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::CardNumber => "card_number",
            PiiKind::Ipv4 => "ipv4",
            PiiKind::ApiKey => "api_key",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_numbers() {
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("4111 1111 1111 1112"));
    }

    #[test]
    fn values_have_their_shape() {
        for h in 0..200u64 {
            let h = mix(7, h);
            assert!(fake_value(PiiKind::Email, h).contains("@example."));
            assert!(fake_value(PiiKind::Phone, h).contains("555-01"));
            let card = fake_value(PiiKind::CardNumber, h);
            assert!(luhn_valid(&card), "{card}");
            assert_eq!(card.bytes().filter(u8::is_ascii_digit).count(), 16);
            let ip = fake_value(PiiKind::Ipv4, h);
            assert_eq!(ip.split('.').count(), 4, "{ip}");
            assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
            let key = fake_value(PiiKind::ApiKey, h);
            assert!(key.starts_with("sk-") && key.len() == 43);
        }
    }

    #[test]
    fn split_covers_the_value() {
        for h in 0..500u64 {
            for kind in PiiKind::ALL {
                let v = fake_value(kind, mix(1, h));
                for parts in [2, 3] {
                    let p = split(&v, parts, mix(2, h));
                    assert_eq!(p.len(), parts);
                    assert!(p.iter().all(|s| !s.is_empty()), "{v} {p:?}");
                    assert_eq!(p.concat(), v);
                }
            }
        }
    }
}
