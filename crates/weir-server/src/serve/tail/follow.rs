//! Follows a file the way `tail -F` does, each reader at its own offset: the file is the
//! buffer, so a reader holds only what it has just read.
//!
//! # Rotation
//!
//! At the end of the file the reader looks at the path again: another file there (renamed
//! away and created anew) means the old one, read to its end through the open descriptor,
//! is done, and the new one is read from its start; a file shorter than the offset was
//! truncated and is read again from 0; no file means waiting for one. Wake-ups come from
//! inotify on the file's directory (one watch per route, shared by its readers).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// Where a reader starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// New lines only.
    End,
    /// The current file from its first byte.
    Beginning,
    /// The last `n` lines of the current file, then new ones.
    LastLines(usize),
    /// Right after a position a reader was given (`Last-Event-ID`), if that file is still
    /// the one at the path; the current file's start otherwise.
    After { inode: u64, offset: u64 },
}

/// What one read gave.
pub enum Read {
    /// Bytes were appended to the buffer, read from `inode` at `offset`.
    Data { inode: u64, offset: u64 },
    /// Nothing new for `idle`: the caller may send a keep-alive.
    Idle,
}

/// A reader's place in the followed file.
pub struct Follower {
    path: PathBuf,
    file: Option<(File, u64)>,
    offset: u64,
    changes: watch::Receiver<u64>,
}

/// How far back `LastLines` looks, at most, for the lines it wants.
const TAIL_WINDOW: u64 = 16 << 20;

impl Follower {
    /// Opens `path` at `start`. A missing file is waited for; any other error (no permission,
    /// a directory) is returned.
    pub fn open(path: &Path, start: Start, changes: watch::Receiver<u64>) -> io::Result<Self> {
        let mut f = Follower {
            path: path.to_path_buf(),
            file: None,
            offset: 0,
            changes,
        };
        let Some((file, inode, len)) = open_file(path)? else {
            return Ok(f);
        };
        f.offset = match start {
            Start::End => len,
            Start::Beginning => 0,
            Start::After {
                inode: wanted,
                offset,
            } if wanted == inode && offset <= len => offset,
            Start::After { .. } => 0,
            Start::LastLines(n) => start_of_last_lines(&file, len, n)?,
        };
        f.file = Some((file, inode));
        Ok(f)
    }

    /// Whether the file did not exist when the follower was opened, and still does not.
    pub fn waiting_for_file(&self) -> bool {
        self.file.is_none()
    }

    /// Appends up to `max` bytes that follow to `buf`, waiting for them at the end of the
    /// file; `Idle` after `idle` without any.
    pub async fn read(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        idle: Duration,
    ) -> io::Result<Read> {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            // Marked before looking, so a change made while we look is not missed.
            self.changes.borrow_and_update();
            if self.file.is_none() {
                if let Some((file, inode, _)) = open_file(&self.path)? {
                    self.file = Some((file, inode));
                    self.offset = 0;
                }
            }
            if let Some((file, inode)) = &self.file {
                let start = buf.len();
                buf.resize(start + max, 0);
                let n = file.read_at(&mut buf[start..], self.offset);
                buf.truncate(start + *n.as_ref().unwrap_or(&0));
                let n = n?;
                if n > 0 {
                    let offset = self.offset;
                    self.offset += n as u64;
                    return Ok(Read::Data {
                        inode: *inode,
                        offset,
                    });
                }
                let inode = *inode;
                match std::fs::metadata(&self.path) {
                    // Rotated, or removed: the old file has been read to its end.
                    Ok(m) if m.ino() != inode => {
                        self.file = None;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.file = None;
                        continue;
                    }
                    Ok(m) if m.len() < self.offset => {
                        self.offset = 0;
                        continue;
                    }
                    _ => {}
                }
            }
            let waited = tokio::time::timeout_at(deadline, self.changes.changed()).await;
            match waited {
                Err(_) => return Ok(Read::Idle),
                Ok(Err(_)) => {
                    return Err(io::Error::other("the file watcher stopped"));
                }
                Ok(Ok(())) => {}
            }
        }
    }
}

/// The file at `path` with its inode and length, `None` if there is none.
fn open_file(path: &Path) -> io::Result<Option<(File, u64, u64)>> {
    match File::open(path) {
        Ok(file) => {
            let m = file.metadata()?;
            if m.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is a directory",
                    path.display()
                )));
            }
            Ok(Some((file, m.ino(), m.len())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The offset where the last `n` lines of the first `len` bytes start, read backwards in
/// blocks (never more than `TAIL_WINDOW` back).
fn start_of_last_lines(file: &File, len: u64, n: usize) -> io::Result<u64> {
    if n == 0 || len == 0 {
        return Ok(len);
    }
    let mut block = vec![0u8; 64 << 10];
    let mut end = len;
    // A final newline ends the last line; it does not start another.
    let mut newlines_wanted = n + 1;
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        newlines_wanted -= 1;
    }
    let floor = len.saturating_sub(TAIL_WINDOW);
    while end > floor {
        let start = end.saturating_sub(block.len() as u64).max(floor);
        let chunk = &mut block[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            if *b == b'\n' {
                newlines_wanted -= 1;
                if newlines_wanted == 0 {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        end = start;
    }
    Ok(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_lines(text: &str, n: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, text).unwrap();
        let f = File::open(&p).unwrap();
        let at = start_of_last_lines(&f, text.len() as u64, n).unwrap();
        text[at as usize..].to_string()
    }

    #[test]
    fn last_lines_with_and_without_a_final_newline() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(last_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(last_lines("a\nb\n", 0), "");
    }
}
