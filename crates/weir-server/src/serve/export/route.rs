//! A configured `sql_export` route: its query, its connection pool, its export slots.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::NoTls;
use weir_runtime::channel::CapacityHandle;
use weir_runtime::{error_chain, BoxError, Source};
use weir_stages::sources::sql::{
    CursorSettings, FetchCounter, NamedQuery, Placeholder, PostgresSource, QueryError, RowBatch,
    SqlError, SqlitePool, SqliteSource,
};

use super::metrics::ExportMetrics;
use crate::serve::admission::Admission;
use crate::serve::config::{DatabaseUrl, DatabaseUrlError, SqlExportRoute};

/// How long opening a PostgreSQL connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A `sql_export` route that cannot serve, naming its path.
#[derive(Debug, thiserror::Error)]
#[error("route {path}: {problem}")]
pub struct ExportRouteError {
    pub path: String,
    pub problem: RouteProblem,
}

/// Why a `sql_export` route cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum RouteProblem {
    #[error("query: {0}")]
    Query(QueryError),
    /// The configuration's own message on the `database` URL.
    #[error(transparent)]
    DatabaseUrl(DatabaseUrlError),
    /// The SQLite file could not be opened or the query not prepared.
    #[error("{0}")]
    Sqlite(SqlError),
    #[error("database URL: {0}")]
    PostgresUrl(tokio_postgres::Error),
    #[error("connection pool: {0}")]
    Pool(deadpool_postgres::BuildError),
}

enum Database {
    Sqlite(SqlitePool),
    Postgres(Pool),
}

/// A configured `sql_export` route, shared by its requests.
pub struct ExportRoute {
    pub(super) config: SqlExportRoute,
    pub(super) query: NamedQuery,
    sql: String,
    database: Database,
    exports: Arc<Semaphore>,
    pub(super) admission: Admission,
    pub(super) metrics: Arc<ExportMetrics>,
    fetched: FetchCounter,
}

impl ExportRoute {
    /// Builds the pool; a SQLite file is opened and the query prepared now, so that a
    /// missing file or a bad query stops the server at start. PostgreSQL is connected
    /// to on the first request (it may start after weir).
    pub fn new(config: SqlExportRoute, admission: Admission) -> Result<Self, ExportRouteError> {
        let at = |problem| ExportRouteError {
            path: config.path.clone(),
            problem,
        };
        let query = NamedQuery::parse(&config.query).map_err(|e| at(RouteProblem::Query(e)))?;
        let url =
            DatabaseUrl::parse(&config.database).map_err(|e| at(RouteProblem::DatabaseUrl(e)))?;
        let (database, sql) = match url {
            DatabaseUrl::Sqlite(path) => {
                let sql = query.to_sql(Placeholder::Question);
                let pool = SqlitePool::new(path, config.pool_size);
                pool.check(&sql).map_err(|e| at(RouteProblem::Sqlite(e)))?;
                (Database::Sqlite(pool), sql)
            }
            DatabaseUrl::Postgres(url) => {
                let mut pg: tokio_postgres::Config =
                    url.parse().map_err(|e| at(RouteProblem::PostgresUrl(e)))?;
                pg.connect_timeout(CONNECT_TIMEOUT);
                if pg.get_application_name().is_none() {
                    pg.application_name("weir");
                }
                let manager = Manager::from_config(
                    pg,
                    NoTls,
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                let pool = Pool::builder(manager)
                    .max_size(config.pool_size)
                    .wait_timeout(Some(config.pool_wait))
                    .create_timeout(Some(CONNECT_TIMEOUT))
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| at(RouteProblem::Pool(e)))?;
                (Database::Postgres(pool), query.to_sql(Placeholder::Dollar))
            }
        };
        Ok(ExportRoute {
            exports: Arc::new(Semaphore::new(config.max_exports())),
            metrics: Arc::new(ExportMetrics::new(&config.path)),
            config,
            query,
            sql,
            database,
            admission,
            fetched: FetchCounter::default(),
        })
    }

    pub fn config(&self) -> &SqlExportRoute {
        &self.config
    }

    /// Rows fetched from the database by all this route's exports so far.
    pub fn rows_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Connections lent to running exports right now.
    pub fn busy_connections(&self) -> usize {
        match &self.database {
            Database::Sqlite(pool) => pool.size() - pool.available(),
            Database::Postgres(pool) => {
                let status = pool.status();
                status.size - status.available
            }
        }
    }

    /// Exports running right now.
    pub fn running_exports(&self) -> usize {
        self.config.max_exports() - self.exports.available_permits()
    }

    /// One of the route's export slots, or `None` when all are taken (503).
    pub(super) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.exports).try_acquire_owned().ok()
    }

    /// Gets a connection, starts the query and waits for its first batch.
    pub(super) async fn start(&self, params: Vec<String>) -> Result<RowSource, SqlError> {
        let settings = CursorSettings {
            batch_rows: self.config.batch_rows,
            // One batch at a time until the pipeline gives the cursor its share of `buffer`.
            buffer: 0,
        };
        let fetched = Arc::clone(&self.fetched);
        match &self.database {
            Database::Sqlite(pool) => {
                let conn = pool.get(self.config.pool_wait).await?;
                let source =
                    SqliteSource::start(conn, self.sql.clone(), params, settings, fetched).await?;
                Ok(RowSource::Sqlite(source))
            }
            Database::Postgres(pool) => {
                let client = pool.get().await.map_err(|e| {
                    SqlError::Unavailable(format!("no database connection: {}", error_chain(&e)))
                })?;
                let source =
                    PostgresSource::start(client, self.sql.clone(), params, settings, fetched)
                        .await?;
                Ok(RowSource::Postgres(source))
            }
        }
    }
}

/// Either database's cursor, as one pipeline source.
pub(super) enum RowSource {
    Sqlite(SqliteSource),
    Postgres(PostgresSource),
}

impl Source for RowSource {
    type Item = RowBatch;

    async fn next(&mut self) -> Result<Option<RowBatch>, BoxError> {
        match self {
            RowSource::Sqlite(s) => s.next().await,
            RowSource::Postgres(s) => s.next().await,
        }
    }

    fn read_ahead(&self) -> Option<CapacityHandle> {
        match self {
            RowSource::Sqlite(s) => s.read_ahead(),
            RowSource::Postgres(s) => s.read_ahead(),
        }
    }
}
