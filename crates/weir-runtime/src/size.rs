//! Sizes, rates and durations as people write them: `64KiB`, `2MB`, `1m`, `500`, `250ms`.

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
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (value, unit) = number_and_unit(t.strip_suffix("/s").unwrap_or(t))
        .ok_or_else(|| format!("`{text}` is not a size (e.g. 64KiB, 2MB, 1048576)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// As [`parse_size`], for a size that must fit in memory (`usize`) and not be zero.
pub fn parse_buffer(text: &str) -> Result<usize, String> {
    let n = parse_size(text)?;
    if n == 0 {
        return Err(format!("`{text}`: must be at least 1 byte"));
    }
    usize::try_from(n).map_err(|_| format!("`{text}` is too large"))
}

/// Parses a duration: a number with a unit, `ms`, `s`, `m` or `h` (e.g. `250ms`, `30s`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (value, unit) = number_and_unit(text.trim())
        .ok_or_else(|| format!("`{text}` is not a duration (e.g. 250ms, 30s, 5m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(format!("`{text}`: give a unit (ms, s, m, h)")),
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use ms, s, m, h)"
            ))
        }
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
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
        assert!(parse_duration("10").unwrap_err().contains("give a unit"));
        assert!(parse_duration("ten s")
            .unwrap_err()
            .contains("not a duration"));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("KiB").unwrap_err().contains("not a size"));
        assert!(parse_buffer("0").unwrap_err().contains("at least 1 byte"));
    }
}
