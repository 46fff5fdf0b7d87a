//! Incremental gzip decoding into caller-sized buffers, with limits on how far output may outgrow input.

use flate2::{Decompress, DecompressError, FlushDecompress, Status};

/// Output below this size never trips the ratio limit: small inputs expand a lot legitimately.
pub const RATIO_GRACE: u64 = 1 << 20;
pub const DEFAULT_MAX_RATIO: u64 = 1000;

/// How much output a [`GunzipDecoder`] may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GunzipLimits {
    /// Largest allowed output / input, checked once the output exceeds [`RATIO_GRACE`].
    pub max_ratio: u64,
    /// Largest allowed total output in bytes; `None` for no limit.
    pub max_output: Option<u64>,
}

impl Default for GunzipLimits {
    fn default() -> Self {
        GunzipLimits {
            max_ratio: DEFAULT_MAX_RATIO,
            max_output: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    #[error(
        "gunzip: output exceeds {max_ratio}x the input ({} from {}); raise the limit with gunzip:ratio=N",
        human(*.produced), human(*.consumed)
    )]
    RatioExceeded {
        max_ratio: u64,
        produced: u64,
        consumed: u64,
    },
    #[error(
        "gunzip: output exceeds the limit of {} ({} produced); raise the limit with gunzip:max=SIZE",
        human(*.max_output), human(*.produced)
    )]
    OutputExceeded { max_output: u64, produced: u64 },
    #[error("gunzip: corrupt gzip data at compressed byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("gunzip: data after the gzip member ending at compressed byte {offset} is not gzip (trailing garbage)")]
    TrailingGarbage { offset: u64 },
    #[error("gunzip: input ends in the middle of a gzip member (after {consumed} compressed bytes); the data is truncated")]
    Truncated { consumed: u64 },
    #[error("gunzip: the input is not gzip data (it does not start with the gzip magic number)")]
    NotGzip,
    #[error("gunzip: the input is empty, not gzip data")]
    Empty,
    #[error("gunzip: max_ratio must be at least 1")]
    ZeroRatio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside a member (or waiting for the first one).
    Member,
    /// A member has ended; the next byte starts another member or zero padding.
    AfterMember,
    /// Zero bytes after the last member, which gzip ignores; only more zeros may follow.
    Padding,
}

/// Decodes one or more concatenated gzip members, as `gunzip` does, never writing more
/// than the room left in the caller's buffer.
pub struct GunzipDecoder {
    inflate: Decompress,
    limits: GunzipLimits,
    state: State,
    /// Compressed bytes consumed before the current member.
    member_start: u64,
    consumed: u64,
    produced: u64,
}

impl GunzipDecoder {
    pub fn new(limits: GunzipLimits) -> Result<Self, GunzipError> {
        if limits.max_ratio == 0 {
            return Err(GunzipError::ZeroRatio);
        }
        Ok(GunzipDecoder {
            inflate: Decompress::new_gzip(15),
            limits,
            state: State::Member,
            member_start: 0,
            consumed: 0,
            produced: 0,
        })
    }

    /// Decodes from `input` into the spare capacity of `output` (which never grows) and
    /// returns how many input bytes were used. Stops when the input is used up or
    /// `output` is full; when it is full, call again (with the rest of the input, possibly
    /// none) after draining it, as the decoder may hold more output.
    pub fn decode(&mut self, input: &[u8], output: &mut Vec<u8>) -> Result<usize, GunzipError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Member => {
                    let in_before = self.inflate.total_in();
                    let out_before = output.len();
                    let result = self
                        .inflate
                        .decompress_vec(rest, output, FlushDecompress::None);
                    let taken = (self.inflate.total_in() - in_before) as usize;
                    used += taken;
                    self.consumed += taken as u64;
                    self.produced += (output.len() - out_before) as u64;
                    let status = result.map_err(|e| self.corrupt(e))?;
                    self.check_limits()?;
                    if status != Status::StreamEnd {
                        return Ok(used);
                    }
                    self.state = State::AfterMember;
                }
                State::AfterMember | State::Padding => {
                    let Some(&first) = rest.first() else {
                        return Ok(used);
                    };
                    if self.state == State::AfterMember && first != 0 {
                        if first != 0x1f {
                            return Err(GunzipError::TrailingGarbage {
                                offset: self.consumed,
                            });
                        }
                        self.inflate = Decompress::new_gzip(15);
                        self.member_start = self.consumed;
                        self.state = State::Member;
                        continue;
                    }
                    let zeros = rest.iter().take_while(|&&b| b == 0).count();
                    used += zeros;
                    self.consumed += zeros as u64;
                    self.state = State::Padding;
                    if zeros < rest.len() {
                        return Err(GunzipError::TrailingGarbage {
                            offset: self.member_start + self.inflate.total_in(),
                        });
                    }
                }
            }
        }
    }

    /// Checks that the input ended where gzip data may end.
    pub fn finish(&self) -> Result<(), GunzipError> {
        match self.state {
            State::Member if self.consumed == 0 => Err(GunzipError::Empty),
            State::Member => Err(GunzipError::Truncated {
                consumed: self.consumed,
            }),
            State::AfterMember | State::Padding => Ok(()),
        }
    }

    /// Compressed bytes used so far, padding included.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Uncompressed bytes written so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    fn corrupt(&self, error: DecompressError) -> GunzipError {
        // A wrong magic number: not gzip at all, or after a member what gzip calls trailing garbage.
        if self.inflate.total_in() <= 2 {
            return if self.member_start == 0 {
                GunzipError::NotGzip
            } else {
                GunzipError::TrailingGarbage {
                    offset: self.member_start,
                }
            };
        }
        GunzipError::Corrupt {
            offset: self.consumed,
            reason: error
                .message()
                .map_or_else(|| error.to_string(), str::to_owned),
        }
    }

    fn check_limits(&self) -> Result<(), GunzipError> {
        if let Some(max_output) = self.limits.max_output {
            if self.produced > max_output {
                return Err(GunzipError::OutputExceeded {
                    max_output,
                    produced: self.produced,
                });
            }
        }
        if self.produced > RATIO_GRACE
            && self.produced > self.consumed.saturating_mul(self.limits.max_ratio)
        {
            return Err(GunzipError::RatioExceeded {
                max_ratio: self.limits.max_ratio,
                produced: self.produced,
                consumed: self.consumed,
            });
        }
        Ok(())
    }
}

/// Decimal size with one decimal, as in "1.2 GB".
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{gzip_flate2, system_gzip};

    /// Feeds `input` in `chunk`-byte pieces through a `buffer`-byte output buffer.
    fn decode_all(
        limits: GunzipLimits,
        input: &[u8],
        chunk: usize,
        buffer: usize,
    ) -> Result<Vec<u8>, GunzipError> {
        let mut decoder = GunzipDecoder::new(limits)?;
        let mut out = Vec::new();
        for mut piece in input.chunks(chunk) {
            loop {
                let mut buf = Vec::with_capacity(buffer);
                let used = decoder.decode(piece, &mut buf)?;
                piece = &piece[used..];
                assert!(buf.len() <= buffer);
                let full = buf.len() == buf.capacity();
                out.extend_from_slice(&buf);
                if piece.is_empty() && !full {
                    break;
                }
            }
        }
        decoder.finish()?;
        Ok(out)
    }

    fn text(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| b"the quick brown fox jumps over the lazy dog\n"[i % 44] ^ (i / 997) as u8)
            .collect()
    }

    #[test]
    fn decodes_in_any_chunking_and_buffer_size() {
        let data = text(200_000);
        let gz = system_gzip(&["-c"], &data);
        for (chunk, buffer) in [(1, 1), (7, 100), (4096, 65536), (gz.len(), 1000)] {
            let out = decode_all(GunzipLimits::default(), &gz, chunk, buffer).unwrap();
            assert_eq!(out, data, "chunk {chunk}, buffer {buffer}");
        }
    }

    #[test]
    fn decodes_concatenated_members() {
        let mut gz = system_gzip(&["-c"], b"first\n");
        gz.extend(gzip_flate2(b""));
        gz.extend(gzip_flate2(&text(100_000)));
        let mut expected = b"first\n".to_vec();
        expected.extend(text(100_000));
        for chunk in [1, 3, 1000, gz.len()] {
            let out = decode_all(GunzipLimits::default(), &gz, chunk, 4096).unwrap();
            assert_eq!(out, expected, "chunk {chunk}");
        }
    }

    #[test]
    fn ignores_zero_padding_but_not_garbage() {
        let mut gz = gzip_flate2(b"payload");
        gz.extend([0u8; 512]);
        assert_eq!(
            decode_all(GunzipLimits::default(), &gz, 100, 64).unwrap(),
            b"payload"
        );

        let mut garbage = gzip_flate2(b"payload");
        let end = garbage.len();
        garbage.extend(b"junk");
        let err = decode_all(GunzipLimits::default(), &garbage, 1000, 64).unwrap_err();
        assert!(
            matches!(err, GunzipError::TrailingGarbage { offset } if offset == end as u64),
            "{err}"
        );

        let mut zeros_then_garbage = gzip_flate2(b"payload");
        zeros_then_garbage.extend([0, 0, 0x1f, 0x8b]);
        let err = decode_all(GunzipLimits::default(), &zeros_then_garbage, 1000, 64).unwrap_err();
        assert!(matches!(err, GunzipError::TrailingGarbage { .. }), "{err}");

        let mut bad_magic = gzip_flate2(b"payload");
        bad_magic.extend([0x1f, 0x00, 0, 0]);
        let err = decode_all(GunzipLimits::default(), &bad_magic, 1000, 64).unwrap_err();
        assert!(matches!(err, GunzipError::TrailingGarbage { .. }), "{err}");
    }

    #[test]
    fn truncated_input_fails_at_finish() {
        let gz = gzip_flate2(&text(50_000));
        for cut in [1, 5, 10, gz.len() / 2, gz.len() - 1] {
            let err = decode_all(GunzipLimits::default(), &gz[..cut], 1000, 4096).unwrap_err();
            assert!(
                matches!(err, GunzipError::Truncated { .. }),
                "cut {cut}: {err}"
            );
            assert!(err.to_string().contains("truncated"), "{err}");
        }
        let err = decode_all(GunzipLimits::default(), b"", 1000, 4096).unwrap_err();
        assert!(matches!(err, GunzipError::Empty), "{err}");
    }

    #[test]
    fn corrupt_input_names_the_offset() {
        let mut gz = gzip_flate2(&text(50_000));
        let len = gz.len();
        gz[len - 6] ^= 0xff; // inside the CRC-32
        let err = decode_all(GunzipLimits::default(), &gz, 1000, 4096).unwrap_err();
        let GunzipError::Corrupt { offset, .. } = &err else {
            panic!("expected corrupt, got {err}");
        };
        assert!(*offset > (len - 10) as u64, "{err}");
        assert!(err.to_string().contains("at compressed byte"), "{err}");

        let err = decode_all(GunzipLimits::default(), b"not gzip at all", 1000, 4096).unwrap_err();
        assert!(matches!(err, GunzipError::NotGzip), "{err}");
    }

    #[test]
    fn ratio_limit_stops_a_bomb_within_one_buffer() {
        let gz = gzip_flate2(&vec![0u8; 10_000_000]);
        let limits = GunzipLimits {
            max_ratio: 100,
            max_output: None,
        };
        let mut decoder = GunzipDecoder::new(limits).unwrap();
        let mut input = &gz[..];
        let err = loop {
            let mut buf = Vec::with_capacity(65536);
            match decoder.decode(input, &mut buf) {
                Ok(used) => input = &input[used..],
                Err(e) => break e,
            }
        };
        assert!(matches!(err, GunzipError::RatioExceeded { .. }), "{err}");
        assert!(decoder.produced() <= RATIO_GRACE + 65536);
        let message = err.to_string();
        assert!(
            message.starts_with("gunzip: output exceeds 100x the input ("),
            "{message}"
        );
        assert!(
            message.ends_with("raise the limit with gunzip:ratio=N"),
            "{message}"
        );
        // Below the grace size the same ratio passes.
        let small = gzip_flate2(&vec![0u8; 500_000]);
        assert_eq!(
            decode_all(limits, &small, 1 << 20, 65536).unwrap().len(),
            500_000
        );
    }

    #[test]
    fn output_limit_is_exact() {
        let data = text(100_000);
        let gz = gzip_flate2(&data);
        let at = |max| GunzipLimits {
            max_ratio: DEFAULT_MAX_RATIO,
            max_output: Some(max),
        };
        assert_eq!(decode_all(at(100_000), &gz, 1000, 4096).unwrap(), data);
        let err = decode_all(at(99_999), &gz, 1000, 4096).unwrap_err();
        assert!(
            matches!(
                err,
                GunzipError::OutputExceeded {
                    max_output: 99_999,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("gunzip:max=SIZE"), "{err}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_100_000), "1.1 MB");
        assert_eq!(human(1_234_567_890), "1.2 GB");
        assert_eq!(human(999_999), "1.0 MB");
    }
}
