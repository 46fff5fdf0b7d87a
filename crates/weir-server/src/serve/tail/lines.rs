//! Cuts what a follower reads into lines and writes each as an SSE event or an NDJSON
//! object, with the token that resumes right after it.

use memchr::memchr;

/// How lines reach the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `id: TOKEN` and `data: LINE` per event.
    Sse,
    /// `{"line": LINE, "id": TOKEN}` per line.
    Ndjson,
    /// The line and a newline (one WebSocket frame each).
    Lines,
}

/// A line in the making: bytes of the current line (at most `max_line` of them) and the
/// filters applied when it ends.
pub struct LineWriter {
    format: Format,
    max_line: usize,
    grep: Option<Vec<u8>>,
    line: Vec<u8>,
    /// Bytes of the current line past `max_line`, dropped.
    cut: usize,
}

/// A resume token: the file's inode and the offset just after the line.
pub fn token(inode: u64, offset: u64) -> String {
    format!("{inode}-{offset}")
}

/// Reads a token back.
pub fn parse_token(text: &str) -> Option<(u64, u64)> {
    let (inode, offset) = text.trim().split_once('-')?;
    Some((inode.parse().ok()?, offset.parse().ok()?))
}

impl LineWriter {
    pub fn new(format: Format, max_line: usize, grep: Option<Vec<u8>>) -> Self {
        LineWriter {
            format,
            max_line,
            grep,
            line: Vec::new(),
            cut: 0,
        }
    }

    /// Takes `data`, read from `inode` at `offset`; writes every line it completes to `out`.
    pub fn push(&mut self, data: &[u8], inode: u64, offset: u64, out: &mut Vec<u8>) {
        let mut rest = data;
        let mut at = offset;
        while let Some(end) = memchr(b'\n', rest) {
            self.take(&rest[..end]);
            at += end as u64 + 1;
            self.finish_line(&token(inode, at), out);
            rest = &rest[end + 1..];
        }
        self.take(rest);
    }

    /// A new file starts: a line left unfinished in the old one is dropped.
    pub fn reset(&mut self) {
        self.line.clear();
        self.cut = 0;
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = self.max_line.saturating_sub(self.line.len());
        let kept = bytes.len().min(room);
        self.line.extend_from_slice(&bytes[..kept]);
        self.cut += bytes.len() - kept;
    }

    fn finish_line(&mut self, id: &str, out: &mut Vec<u8>) {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let keep = match &self.grep {
            Some(g) => memchr::memmem::find(&self.line, g).is_some(),
            None => true,
        };
        if keep {
            let mut text = String::from_utf8_lossy(&self.line).into_owned();
            if self.cut > 0 {
                text.push_str(&format!(
                    " [cut: line over {} bytes, {} more dropped]",
                    self.max_line, self.cut
                ));
            }
            match self.format {
                Format::Sse => {
                    out.extend_from_slice(b"id: ");
                    out.extend_from_slice(id.as_bytes());
                    out.extend_from_slice(b"\ndata: ");
                    // A lone CR would end the field for an SSE parser.
                    out.extend_from_slice(text.replace('\r', " ").as_bytes());
                    out.extend_from_slice(b"\n\n");
                }
                Format::Lines => {
                    out.extend_from_slice(text.as_bytes());
                    out.push(b'\n');
                }
                Format::Ndjson => {
                    let obj = serde_json::json!({ "line": text, "id": id });
                    let _ = serde_json::to_writer(&mut *out, &obj);
                    out.push(b'\n');
                }
            }
        }
        self.line.clear();
        self.cut = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_across_reads_get_the_offset_after_them() {
        let mut w = LineWriter::new(Format::Ndjson, 100, None);
        let mut out = Vec::new();
        w.push(b"ab", 7, 0, &mut out);
        assert!(out.is_empty());
        w.push(b"c\nd\n", 7, 2, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"id\":\"7-4\",\"line\":\"abc\"}\n{\"id\":\"7-6\",\"line\":\"d\"}\n"
        );
        assert_eq!(parse_token("7-6"), Some((7, 6)));
    }

    #[test]
    fn long_lines_are_cut_and_grep_filters() {
        let mut w = LineWriter::new(Format::Sse, 4, Some(b"ab".to_vec()));
        let mut out = Vec::new();
        w.push(b"abcdefgh\nxyz\nab\r\n", 1, 0, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "id: 1-9\ndata: abcd [cut: line over 4 bytes, 4 more dropped]\n\nid: 1-17\ndata: ab\n\n"
        );
    }
}
