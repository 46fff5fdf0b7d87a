//! Sizes, rates and durations as people write them: `64KiB`, `2MB`, `1m`, `500`, `250ms`.

/// A size or a duration that could not be read; each message quotes the text given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}` is not a size (e.g. 64KiB, 2MB, 1048576)")]
    NotASize(String),
    #[error("`{text}`: unknown unit `{unit}` (use B, KB, MB, GB, KiB, MiB, GiB)")]
    UnknownSizeUnit { text: String, unit: String },
    #[error("`{0}` is out of range")]
    OutOfRange(String),
    #[error("`{0}`: must be at least 1 byte")]
    Zero(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("`{0}` is not a duration (e.g. 250ms, 30s, 5m)")]
    NotADuration(String),
    #[error("`{0}`: give a unit (ms, s, m, h)")]
    NoDurationUnit(String),
    #[error("`{text}`: unknown unit `{unit}` (use ms, s, m, h)")]
    UnknownDurationUnit { text: String, unit: String },
}

/// Splits `1.5MiB` into `1.5` and `MiB`; `None` when it does not start with a number.
fn number_and_unit(text: &str) -> Option<(f64, &str)> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit))
}

/// Parses a byte count: a number with an optional unit. `KB`/`MB`/`GB` are powers of
/// 1000; `KiB`/`MiB`/`GiB` and the bare letters `k`/`m`/`g` (as curl reads them) are
/// powers of 1024. Case does not matter; a trailing `/s` is allowed for rates.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let (value, unit) = number_and_unit(t.strip_suffix("/s").unwrap_or(t))
        .ok_or_else(|| SizeError::NotASize(text.into()))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(SizeError::UnknownSizeUnit {
                text: text.into(),
                unit: other.into(),
            })
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(SizeError::OutOfRange(text.into()));
    }
    Ok(bytes.round() as u64)
}

/// As [`parse_size`], for a size that must fit in memory (`usize`) and not be zero.
pub fn parse_buffer(text: &str) -> Result<usize, SizeError> {
    let n = parse_size(text)?;
    if n == 0 {
        return Err(SizeError::Zero(text.into()));
    }
    usize::try_from(n).map_err(|_| SizeError::TooLarge(text.into()))
}

/// Parses a duration: a number with a unit, `ms`, `s`, `m` or `h` (e.g. `250ms`, `30s`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, SizeError> {
    let (value, unit) =
        number_and_unit(text.trim()).ok_or_else(|| SizeError::NotADuration(text.into()))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(SizeError::NoDurationUnit(text.into())),
        other => {
            return Err(SizeError::UnknownDurationUnit {
                text: text.into(),
                unit: other.into(),
            })
        }
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| SizeError::OutOfRange(text.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("1.5m"), Ok(1_572_864));
        assert_eq!(parse_size("500"), Ok(500));
        assert_eq!(parse_size("1MB/s"), Ok(1_000_000));
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10")
            .unwrap_err()
            .to_string()
            .contains("give a unit"));
        assert!(parse_duration("ten s")
            .unwrap_err()
            .to_string()
            .contains("not a duration"));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_size("KiB")
            .unwrap_err()
            .to_string()
            .contains("not a size"));
        assert!(parse_buffer("0")
            .unwrap_err()
            .to_string()
            .contains("at least 1 byte"));
    }
}
