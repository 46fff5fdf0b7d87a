//! The export half of `weir demo`: a generated SQLite database behind an `sql_export`
//! route, for watching a slow download keep weir's memory flat.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rusqlite::Connection;

use super::Failure;

/// The route's path.
pub const PATH: &str = "/export/orders";

/// Writes `rows` deterministic orders to a new SQLite file, in one statement.
pub fn generate(db: &Path, rows: u64) -> Result<(), Failure> {
    let failed =
        |e: rusqlite::Error| Failure::Pipeline(format!("generating {}: {e}", db.display()));
    let conn = Connection::open(db).map_err(failed)?;
    conn.execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
         CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL,
                              created_at TIMESTAMP, note TEXT);",
    )
    .map_err(failed)?;
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO orders
         SELECT i, 'customer ' || (i % 10000), (i * 7919 % 100000) / 100.0, 1700000000 + i * 7,
                CASE WHEN i % 10 = 0 THEN NULL ELSE 'order ' || i || ', \"gift\"' END
         FROM n",
        [rows as i64],
    )
    .map_err(failed)?;
    Ok(())
}

/// The `[[route]]` table serving `db`.
pub fn route(db: &Path) -> String {
    format!(
        r#"
[[route]]
kind = "sql_export"
path = "{PATH}"
database = "sqlite://{}"
query = "SELECT id, customer, amount, created_at, note FROM orders WHERE amount >= :min_amount ORDER BY id"
"#,
        db.display()
    )
}

/// Prints the export's first lines, fetched through the server, and curl lines to try.
pub async fn show(listen: SocketAddr, rows: u64) -> Result<(), Failure> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{listen}{PATH}?min_amount=990&format=csv");
    let uri = uri
        .parse()
        .map_err(|e| Failure::Pipeline(format!("{uri}: {e}")))?;
    let response = client
        .get(uri)
        .await
        .map_err(|e| Failure::Pipeline(format!("calling the export: {e}")))?;
    let mut body = response.into_body();
    let mut head = Vec::new();
    // The first frames are enough for a few lines; dropping the body ends the export.
    while head.iter().filter(|&&b| b == b'\n').count() < 4 {
        match body.frame().await {
            Some(Ok(frame)) => head.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d)),
            Some(Err(e)) => return Err(Failure::Pipeline(format!("reading the export: {e}"))),
            None => break,
        }
    }
    println!("5. {rows} orders in SQLite behind {PATH}; the first lines of ?min_amount=990:\n");
    for line in String::from_utf8_lossy(&head).lines().take(4) {
        println!("     {line}");
    }
    println!("\n   Watch a slow download keep weir's memory flat (rows are read as the client takes them):");
    println!(
        "  curl -s --limit-rate 100k -H 'Accept-Encoding: gzip' 'http://{listen}{PATH}?min_amount=0' | zcat | head"
    );
    println!("  curl -s 'http://{listen}{PATH}?min_amount=999&format=ndjson' | head -3");
    Ok(())
}
