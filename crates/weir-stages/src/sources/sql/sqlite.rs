//! SQLite cursor: the statement steps on a blocking thread, batches cross a byte-budgeted channel.
//!
//! # Backpressure
//!
//! The thread sends each full batch over a [`channel`] whose capacity is the export's
//! buffer (a pipeline sets it to a share of its budget: [`Source::read_ahead`]); while the
//! channel is full it waits, and does not step the statement. So at most `buffer` bytes of
//! rows (plus the batch being filled) exist ahead of the encoder.
//!
//! # Cancel safety
//!
//! Dropping the source drops the channel's receiver, which fails the thread's next send,
//! and raises a flag that SQLite's progress handler checks while a statement steps (a
//! long sort, say), which interrupts it; the thread then drops the statement and gives
//! the connection back to its pool.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_runtime::channel::{channel, CapacityHandle, Receiver, Sender};
use weir_runtime::{BoxError, Source};

use super::rows::{push_timestamp, Columns, RowBatch, Value};
use super::{CursorSettings, FetchCounter, SqlError};

/// SQLite VM instructions between two checks of whether the source was dropped.
const PROGRESS_OPS: std::ffi::c_int = 10_000;

/// Connections to one SQLite file, at most `size` open at once, read-only.
#[derive(Clone)]
pub struct SqlitePool {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
    slots: Arc<Semaphore>,
    size: usize,
}

/// A connection lent by a [`SqlitePool`]; given back on drop.
pub struct PooledSqlite {
    conn: Option<Connection>,
    idle: Arc<Mutex<Vec<Connection>>>,
    _slot: OwnedSemaphorePermit,
}

impl SqlitePool {
    pub fn new(path: impl Into<PathBuf>, size: usize) -> Self {
        SqlitePool {
            path: path.into(),
            idle: Arc::new(Mutex::new(Vec::new())),
            slots: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file and prepares `sql` once, so a missing file or a bad query is
    /// reported when the server starts rather than on the first request.
    pub fn check(&self, sql: &str) -> Result<(), SqlError> {
        let conn = self.open()?;
        conn.prepare(sql)
            .map_err(|e| SqlError::Failed(format!("query: {e}")))?;
        Ok(())
    }

    /// Connections not lent out right now (idle or not yet opened).
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Lends a connection, waiting at most `wait` for one to be given back.
    pub async fn get(&self, wait: Duration) -> Result<PooledSqlite, SqlError> {
        let slot = tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| {
                SqlError::Unavailable(format!("all {} database connections are busy", self.size))
            })?
            .map_err(|_| SqlError::Unavailable("the connection pool is closed".into()))?;
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match reused {
            Some(c) => c,
            None => self.open()?,
        };
        Ok(PooledSqlite {
            conn: Some(conn),
            idle: Arc::clone(&self.idle),
            _slot: slot,
        })
    }

    fn open(&self) -> Result<Connection, SqlError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| {
            SqlError::Unavailable(format!("cannot open {}: {e}", self.path.display()))
        })?;
        // A writer holding the lock briefly should delay an export, not fail it.
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| SqlError::Unavailable(e.to_string()))?;
        Ok(conn)
    }
}

impl Drop for PooledSqlite {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}

/// Rows of one SQLite query, a batch at a time.
pub struct SqliteSource {
    rows: Receiver<RowBatch>,
    failure: Arc<Mutex<Option<SqlError>>>,
    /// Set on drop; SQLite's progress handler then stops the statement mid-step.
    abandoned: Arc<AtomicBool>,
    first: Option<RowBatch>,
}

impl SqliteSource {
    /// Starts `sql` (numbered `?N` parameters, bound as text from `params`) and waits for
    /// its first batch, so that a query that fails at once fails before any response.
    pub async fn start(
        mut conn: PooledSqlite,
        sql: String,
        params: Vec<String>,
        settings: CursorSettings,
        fetched: FetchCounter,
    ) -> Result<Self, SqlError> {
        let (tx, rx) = channel(settings.buffer);
        let failure = Arc::new(Mutex::new(None));
        let abandoned = Arc::new(AtomicBool::new(false));
        let thread_failure = Arc::clone(&failure);
        let stop = Arc::clone(&abandoned);
        tokio::task::spawn_blocking(move || {
            if let Some(c) = conn.conn.as_mut() {
                // Checked every few thousand VM steps, also before the first row: unlike
                // sqlite3_interrupt, it cannot miss a statement that has not started yet.
                let _ =
                    c.progress_handler(PROGRESS_OPS, Some(move || stop.load(Ordering::Relaxed)));
                let mut cursor = Cursor {
                    tx,
                    batch_rows: settings.batch_rows.max(1),
                    fetched,
                };
                // The failure is stored before the channel closes, so the source sees it.
                if let Err(Stop::Failed(e)) = cursor.run(c, &sql, &params) {
                    *thread_failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(e);
                }
                drop(cursor);
                let _ = c.progress_handler(0, None::<fn() -> bool>);
            }
            drop(conn);
        });
        let mut source = SqliteSource {
            rows: rx,
            failure,
            abandoned,
            first: None,
        };
        source.first = Some(source.fetch().await?.ok_or_else(|| {
            SqlError::Failed("the query ended without describing its columns".into())
        })?);
        Ok(source)
    }

    async fn fetch(&mut self) -> Result<Option<RowBatch>, SqlError> {
        match self.rows.recv().await {
            Some(batch) => Ok(Some(batch)),
            None => match self
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                Some(e) => Err(e),
                None => Ok(None),
            },
        }
    }
}

impl Source for SqliteSource {
    type Item = RowBatch;

    async fn next(&mut self) -> Result<Option<RowBatch>, BoxError> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        Ok(self.fetch().await?)
    }

    fn read_ahead(&self) -> Option<CapacityHandle> {
        Some(self.rows.capacity_handle())
    }
}

impl Drop for SqliteSource {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

enum Stop {
    /// The source was dropped: nobody wants the rows any more.
    Abandoned,
    Failed(SqlError),
}

impl From<rusqlite::Error> for Stop {
    fn from(e: rusqlite::Error) -> Self {
        Stop::Failed(SqlError::Failed(e.to_string()))
    }
}

struct Cursor {
    tx: Sender<RowBatch>,
    batch_rows: usize,
    fetched: FetchCounter,
}

impl Cursor {
    fn run(&mut self, conn: &Connection, sql: &str, params: &[String]) -> Result<(), Stop> {
        let mut stmt = conn.prepare(sql)?;
        if stmt.parameter_count() != params.len() {
            return Err(Stop::Failed(SqlError::Failed(format!(
                "the query has {} parameters, {} are named (`:name`) in it",
                stmt.parameter_count(),
                params.len()
            ))));
        }
        for (i, value) in params.iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, value.as_str())?;
        }
        let columns: Columns = stmt.column_names().map(String::from).collect();
        let timestamps: Vec<bool> = stmt
            .columns()
            .map(|c| c.decl_type().is_some_and(is_timestamp_type))
            .collect();
        let width = columns.len();
        let mut rows = stmt.raw_query();
        let mut batch = RowBatch::new(Arc::clone(&columns), self.batch_rows);
        let mut sent = false;
        while let Some(row) = rows.next()? {
            for (i, &timestamp) in timestamps.iter().enumerate().take(width) {
                batch.push(value(row.get_ref(i)?, timestamp));
            }
            if batch.len() == self.batch_rows {
                let full = std::mem::replace(
                    &mut batch,
                    RowBatch::new(Arc::clone(&columns), self.batch_rows),
                );
                self.send(full)?;
                sent = true;
            }
        }
        if !batch.is_empty() || !sent {
            self.send(batch)?;
        }
        Ok(())
    }

    fn send(&mut self, batch: RowBatch) -> Result<(), Stop> {
        let rows = batch.len() as u64;
        futures::executor::block_on(self.tx.send(batch)).map_err(|_| Stop::Abandoned)?;
        self.fetched.fetch_add(rows, Ordering::Relaxed);
        Ok(())
    }
}

/// Declared types whose integers are Unix seconds, exported as RFC 3339.
fn is_timestamp_type(decl: &str) -> bool {
    let decl = decl.to_ascii_uppercase();
    decl.contains("TIMESTAMP") || decl.contains("DATETIME")
}

fn value(v: ValueRef<'_>, timestamp: bool) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(secs) if timestamp => match secs.checked_mul(1_000_000) {
            Some(micros) => {
                let mut text = String::with_capacity(20);
                push_timestamp(&mut text, micros, true);
                Value::Text(text)
            }
            None => Value::Int(secs),
        },
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(f) => Value::Float(f),
        // SQLite does not check that text is UTF-8; an invalid byte becomes U+FFFD.
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use weir_runtime::Weighted as _;

    use super::*;

    fn database(rows: i64) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let conn = Connection::open(file.path()).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER, name TEXT, at TIMESTAMP, data BLOB, x REAL);",
        )
        .unwrap();
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO t SELECT i, 'name ' || i, 1700000000 + i, x'00ff', i / 2.0 FROM n",
            [rows],
        )
        .unwrap();
        file
    }

    fn settings(batch_rows: usize, buffer: usize) -> CursorSettings {
        CursorSettings { batch_rows, buffer }
    }

    #[tokio::test]
    async fn rows_come_typed_in_batches_with_parameters_bound() {
        let db = database(250);
        let pool = SqlitePool::new(db.path(), 1);
        let fetched = FetchCounter::default();
        let conn = pool.get(Duration::from_secs(1)).await.unwrap();
        let sql = "SELECT id, name, at, data, x FROM t WHERE id > ?1 ORDER BY id";
        let mut source = SqliteSource::start(
            conn,
            sql.into(),
            vec!["10".into()],
            settings(100, 1 << 20),
            Arc::clone(&fetched),
        )
        .await
        .unwrap();
        let mut sizes = Vec::new();
        let mut first_row = None;
        while let Some(batch) = source.next().await.unwrap() {
            first_row.get_or_insert_with(|| batch.rows().next().unwrap().to_vec());
            sizes.push(batch.len());
        }
        assert_eq!(sizes, [100, 100, 40]);
        assert_eq!(fetched.load(Ordering::Relaxed), 240);
        assert_eq!(
            first_row.unwrap(),
            [
                Value::Int(11),
                Value::Text("name 11".into()),
                Value::Text("2023-11-14T22:13:31Z".into()),
                Value::Bytes(vec![0, 255]),
                Value::Float(5.5),
            ]
        );
    }

    #[tokio::test]
    async fn the_cursor_waits_for_room_and_a_dropped_source_frees_the_connection() {
        let db = database(100_000);
        let pool = SqlitePool::new(db.path(), 1);
        let fetched = FetchCounter::default();
        let conn = pool.get(Duration::from_secs(1)).await.unwrap();
        let buffer = 64 << 10;
        let mut source = SqliteSource::start(
            conn,
            "SELECT id, name FROM t".into(),
            Vec::new(),
            settings(100, buffer),
            Arc::clone(&fetched),
        )
        .await
        .unwrap();
        let batch = source.next().await.unwrap().unwrap();
        let batch_weight = batch.weight() as u64;
        // While nothing more is taken, the thread may fill the channel and hold one
        // batch it waits to send, and no more: watch it for a while.
        let bound = ((buffer as u64).div_ceil(batch_weight) + 2) * 100;
        let mut peak = 0;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            peak = peak.max(fetched.load(Ordering::Relaxed));
        }
        assert!(
            peak > 100,
            "the cursor did not read ahead into its buffer at all"
        );
        assert!(peak <= bound, "fetched {peak} rows, at most {bound} fit");
        assert_eq!(pool.available(), 0);
        drop(source);
        let freed = tokio::time::timeout(Duration::from_millis(100), async {
            while pool.available() != 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(
            freed.is_ok(),
            "the connection was not given back within 100 ms"
        );
    }
}
