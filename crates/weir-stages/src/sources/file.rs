//! Reads a file, or standard input, in chunks.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use weir_runtime::{BoxError, Source};

/// The size of the chunks read when none is given: 64 KiB.
pub const DEFAULT_CHUNK: usize = 64 * 1024;

/// A file (or standard input) read chunk by chunk, each chunk read only when the
/// previous one has been taken downstream.
pub struct FileSource {
    reader: Reader,
    label: String,
    chunk: usize,
    buf: BytesMut,
}

enum Reader {
    // Regular files are read with plain syscalls: a page-cache read takes microseconds,
    // less than a hop to the blocking pool, and the fd closes the moment we are dropped.
    Regular(std::fs::File),
    Async(Box<dyn AsyncRead + Send + Unpin>),
}

/// A source that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {path}: {source}")]
pub struct OpenError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileSource {
    /// Opens `path` for reading.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let err = |source| OpenError {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        if meta.is_dir() {
            return Err(err(std::io::Error::other("is a directory")));
        }
        let reader = if meta.is_file() {
            Reader::Regular(file)
        } else {
            Reader::Async(Box::new(tokio::fs::File::from_std(file)))
        };
        Ok(FileSource {
            reader,
            label: path.display().to_string(),
            chunk: DEFAULT_CHUNK,
            buf: BytesMut::new(),
        })
    }

    /// Reads standard input.
    pub fn stdin() -> Self {
        FileSource {
            reader: Reader::Async(Box::new(tokio::io::stdin())),
            label: "stdin".to_string(),
            chunk: DEFAULT_CHUNK,
            buf: BytesMut::new(),
        }
    }

    /// Sets the largest chunk read at once (at least 1 byte).
    pub fn with_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(1);
        self
    }

    /// The size of the input, when it is a regular file.
    pub fn len(&self) -> Option<u64> {
        match &self.reader {
            Reader::Regular(f) => f.metadata().ok().map(|m| m.len()),
            Reader::Async(_) => None,
        }
    }
}

impl Source for FileSource {
    type Item = Bytes;

    async fn next(&mut self) -> Result<Option<Bytes>, BoxError> {
        self.buf.reserve(self.chunk);
        let n = match &mut self.reader {
            Reader::Regular(file) => {
                self.buf.resize(self.chunk, 0);
                let read = read_retrying(file, &mut self.buf[..]);
                self.buf.truncate(read.as_ref().map_or(0, |n| *n));
                read
            }
            Reader::Async(reader) => {
                let mut limited = (&mut **reader).take(self.chunk as u64);
                limited.read_buf(&mut self.buf).await
            }
        }
        .map_err(|e| format!("reading {}: {e}", self.label))?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(self.buf.split().freeze()))
    }
}

fn read_retrying(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
