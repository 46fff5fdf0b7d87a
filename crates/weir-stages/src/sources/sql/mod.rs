//! Database cursors as sources: rows fetched a batch at a time, only when downstream has room.

pub mod params;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use params::{NamedQuery, Placeholder, QueryError};
#[cfg(feature = "postgres")]
pub use postgres::PostgresSource;
pub use rows::{Columns, RowBatch, Value};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqlitePool, SqliteSource};

/// Why an export could not start, or stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SqlError {
    /// The database refused a parameter's value (not a number, say): the client's fault.
    #[error("{0}")]
    BadParameter(String),
    /// No connection could be had (database down, pool exhausted past its wait).
    #[error("{0}")]
    Unavailable(String),
    /// The query failed.
    #[error("{0}")]
    Failed(String),
}

/// What a cursor needs besides its connection.
#[derive(Debug, Clone)]
pub struct CursorSettings {
    /// Rows per batch.
    pub batch_rows: usize,
    /// Bytes of batches that may wait for the encoder, until a pipeline sizes this queue
    /// from its own budget ([`weir_runtime::Source::read_ahead`]).
    pub buffer: usize,
}

/// Rows fetched by a source so far; shared so a route can report it while the export runs.
pub type FetchCounter = std::sync::Arc<std::sync::atomic::AtomicU64>;
