//! Cuts a byte stream at line ends, so that every piece holds whole lines only.

use bytes::{Bytes, BytesMut};

/// A line longer than the limit.
#[derive(Debug, thiserror::Error)]
#[error("line {line} is longer than the limit of {limit} bytes")]
pub struct LineTooLong {
    /// 1-based number of the offending line.
    pub line: u64,
    pub limit: usize,
}

/// Regroups arbitrary chunks into pieces that end at a line feed.
///
/// Holds back at most one partial line, itself capped at `max_line` bytes, so memory is
/// bounded whatever the input.
pub struct LineSplitter {
    max_line: usize,
    partial: BytesMut,
    /// Lines completed so far.
    lines: u64,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            max_line,
            partial: BytesMut::new(),
            lines: 0,
        }
    }

    /// Lines completed so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Takes a chunk; returns the whole lines it completes (with their line feeds), or
    /// `None` when it completes none.
    pub fn push(&mut self, chunk: Bytes) -> Result<Option<Bytes>, LineTooLong> {
        let mut start = 0;
        let mut last_end = None;
        for nl in memchr::memchr_iter(b'\n', &chunk) {
            let len = nl - start + if start == 0 { self.partial.len() } else { 0 };
            if len > self.max_line {
                return Err(self.too_long());
            }
            self.lines += 1;
            start = nl + 1;
            last_end = Some(nl + 1);
        }
        let tail = chunk.len() - start + if start == 0 { self.partial.len() } else { 0 };
        if tail > self.max_line {
            return Err(self.too_long());
        }
        let Some(end) = last_end else {
            self.partial.extend_from_slice(&chunk);
            return Ok(None);
        };
        let whole = if self.partial.is_empty() {
            chunk.slice(..end)
        } else {
            self.partial.extend_from_slice(&chunk[..end]);
            self.partial.split().freeze()
        };
        self.partial.extend_from_slice(&chunk[end..]);
        Ok(Some(whole))
    }

    /// At the end of the input: the last line if it had no line feed.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.partial.is_empty() {
            return None;
        }
        self.lines += 1;
        Some(self.partial.split().freeze())
    }

    fn too_long(&self) -> LineTooLong {
        LineTooLong {
            line: self.lines + 1,
            limit: self.max_line,
        }
    }
}

/// Whole lines, each without its line feed (the last may lack one).
pub fn split_lines(mut text: Bytes) -> Vec<Bytes> {
    let mut lines = Vec::new();
    while let Some(end) = memchr::memchr(b'\n', &text) {
        let line = text.split_to(end + 1);
        lines.push(line.slice(..end));
    }
    if !text.is_empty() {
        lines.push(text);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_all(input: &[u8], cuts: &[usize], max: usize) -> Result<Vec<Bytes>, LineTooLong> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            let c = c.clamp(at, input.len());
            if let Some(b) = s.push(Bytes::copy_from_slice(&input[at..c]))? {
                out.push(b);
            }
            at = c;
        }
        out.extend(s.finish());
        Ok(out)
    }

    #[test]
    fn pieces_end_at_line_feeds() {
        let out = split_all(b"ab\ncd\nef", &[1, 4], 10).unwrap();
        assert_eq!(
            out,
            vec![Bytes::from("ab\n"), Bytes::from("cd\n"), Bytes::from("ef")]
        );
    }

    #[test]
    fn a_line_over_the_limit_is_named() {
        let err = split_all(b"ok\ntoo long line\n", &[5], 8).unwrap_err();
        assert_eq!((err.line, err.limit), (2, 8));
        let err = split_all(b"ok\nno end in sight", &[4, 9], 8).unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes() {
        assert!(split_all(b"1234567\n12345678", &[3], 8).is_ok());
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_bytes_in_whole_lines(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'x')], 0..200),
            mut cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            cuts.sort_unstable();
            let out = split_all(&input, &cuts, 1000).unwrap();
            let joined: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
            prop_assert_eq!(&joined, &input);
            for piece in &out[..out.len().saturating_sub(1)] {
                prop_assert_eq!(piece.last(), Some(&b'\n'));
            }
        }
    }
}
