//! Reads a file, or standard input, in chunks.

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
        })
    }

    /// Reads standard input.
    pub fn stdin() -> Self {
        FileSource {
            reader: Reader::Async(Box::new(tokio::io::stdin())),
            label: "stdin".to_string(),
            chunk: DEFAULT_CHUNK,
        }
    }

    /// Sets the largest chunk read at once (at least 1 byte).
    pub fn with_chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(1);
        self
    }

    /// The size of the input, when it is a regular file.
    pub fn size(&self) -> Option<u64> {
        match &self.reader {
            Reader::Regular(f) => f.metadata().ok().map(|m| m.len()),
            Reader::Async(_) => None,
        }
    }
}

impl Source for FileSource {
    type Item = Bytes;

    async fn next(&mut self) -> Result<Option<Bytes>, BoxError> {
        let chunk = match &mut self.reader {
            Reader::Regular(file) => {
                // One read(2) into uninitialised capacity: std's read_to_end would
                // split it into growing reads, and zeroing first costs a pass over memory.
                let mut buf = Vec::with_capacity(self.chunk);
                loop {
                    match rustix::io::read(&*file, rustix::buffer::spare_capacity(&mut buf)) {
                        Err(rustix::io::Errno::INTR) => continue,
                        r => break r.map(|_| Bytes::from(buf)).map_err(std::io::Error::from),
                    }
                }
            }
            Reader::Async(reader) => {
                let mut buf = BytesMut::with_capacity(self.chunk);
                (&mut **reader)
                    .take(self.chunk as u64)
                    .read_buf(&mut buf)
                    .await
                    .map(|_| buf.freeze())
            }
        }
        .map_err(|e| format!("reading {}: {e}", self.label))?;
        Ok((!chunk.is_empty()).then_some(chunk))
    }
}
