//! Writes items to a file, or standard output.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use weir_runtime::{BoxError, Sink};

/// A file (or standard output) written item by item; the next item is taken only when
/// the previous one has been written.
pub struct FileSink {
    writer: Writer,
    label: String,
}

enum Writer {
    // Regular files and character devices (/dev/null) take plain syscalls: they do not
    // block on a reader, and a blocking-pool hop per chunk costs more than the write.
    Direct(std::fs::File),
    Async(Box<dyn AsyncWrite + Send + Unpin>),
}

/// A sink that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot create {path}: {source}")]
pub struct CreateError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileSink {
    /// Creates (or truncates) `path` for writing.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, CreateError> {
        use std::os::unix::fs::FileTypeExt;
        let path = path.as_ref();
        let err = |source| CreateError {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(err)?;
        let kind = file.metadata().map_err(err)?.file_type();
        let writer = if kind.is_file() || kind.is_char_device() {
            Writer::Direct(file)
        } else {
            Writer::Async(Box::new(tokio::fs::File::from_std(file)))
        };
        Ok(FileSink {
            writer,
            label: path.display().to_string(),
        })
    }

    /// Writes to standard output.
    pub fn stdout() -> Self {
        FileSink {
            writer: Writer::Async(Box::new(tokio::io::stdout())),
            label: "stdout".to_string(),
        }
    }

    fn describe(&self, e: std::io::Error) -> BoxError {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            format!("writing to {}: the reader closed the pipe", self.label).into()
        } else {
            format!("writing to {}: {e}", self.label).into()
        }
    }
}

impl Sink for FileSink {
    type Item = Bytes;

    async fn write(&mut self, item: Bytes) -> Result<(), BoxError> {
        let r = match &mut self.writer {
            Writer::Direct(f) => f.write_all(&item),
            Writer::Async(w) => w.write_all(&item).await,
        };
        r.map_err(|e| self.describe(e))
    }

    async fn finish(&mut self) -> Result<(), BoxError> {
        let r = match &mut self.writer {
            Writer::Direct(f) => f.flush(),
            Writer::Async(w) => w.flush().await,
        };
        r.map_err(|e| self.describe(e))
    }
}
