//! Appends one line per record to a file, acking records only once they are on disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use weir_runtime::{AckToken, BoxError, Sink};

use crate::record::{LineFormat, Record};

/// Written lines are fsync'd, and their records acked, when this many bytes wait or when
/// no record is waiting upstream: batches under load, prompt when idle.
const SYNC_EVERY: usize = 1 << 20;

/// Why the file could not be opened or written; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum AppendFileError {
    #[error("cannot open {} for appending: {error}", path.display())]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("writing to {}: {error}", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("writing to {}: {error}", path.display())]
    Interrupted {
        path: PathBuf,
        error: tokio::task::JoinError,
    },
}

/// A file opened for appending; records are acked after `sync_data`.
pub struct AppendFile {
    file: std::fs::File,
    path: PathBuf,
    format: LineFormat,
    pending: Vec<u8>,
    unsynced: Vec<AckToken>,
}

impl AppendFile {
    pub fn open(path: impl AsRef<Path>, format: LineFormat) -> Result<Self, AppendFileError> {
        let path = path.as_ref().to_path_buf();
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(error) => return Err(AppendFileError::Open { path, error }),
        };
        Ok(AppendFile {
            file,
            path,
            format,
            pending: Vec::new(),
            unsynced: Vec::new(),
        })
    }

    async fn sync(&mut self) -> Result<(), AppendFileError> {
        if self.unsynced.is_empty() && self.pending.is_empty() {
            return Ok(());
        }
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |error| AppendFileError::Write { path, error }
        };
        let mut file = self.file.try_clone().map_err(write_error(&self.path))?;
        let lines = std::mem::take(&mut self.pending);
        let failed = write_error(&self.path);
        let written = tokio::task::spawn_blocking(move || {
            file.write_all(&lines)
                .and_then(|()| file.sync_data())
                .map(|()| lines)
                .map_err(failed)
        })
        .await
        .map_err(|error| AppendFileError::Interrupted {
            path: self.path.clone(),
            error,
        })??;
        // Keep the allocation for the next batch.
        self.pending = written;
        self.pending.clear();
        self.unsynced.drain(..).for_each(AckToken::ack);
        Ok(())
    }
}

impl Sink for AppendFile {
    type Item = Record;

    async fn write(&mut self, record: Record) -> Result<(), BoxError> {
        record.append_line(self.format, &mut self.pending);
        self.unsynced.push(record.ack);
        if self.pending.len() >= SYNC_EVERY {
            self.sync().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        Ok(self.sync().await?)
    }

    async fn finish(&mut self) -> Result<(), BoxError> {
        Ok(self.sync().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use weir_runtime::Ledger;

    #[tokio::test]
    async fn acks_only_after_the_sync_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        std::fs::write(&path, "old\n").unwrap();
        let ledger = Ledger::new();
        let mut sink = AppendFile::open(&path, LineFormat::Value).unwrap();
        for (i, v) in ["a", "b"].into_iter().enumerate() {
            let r = Record::of_value(
                Bytes::from_static(v.as_bytes()),
                ledger.track(&0u8, i as i64),
            );
            sink.write(r).await.unwrap();
        }
        assert_eq!(ledger.pending(), 2, "acked before the sync");
        sink.flush().await.unwrap();
        assert_eq!(ledger.pending(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\na\nb\n");
    }
}
