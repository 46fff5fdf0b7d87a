//! `sql_export` over SQLite, end to end over loopback HTTP: formats, types, parameters,
//! gzip, admission, backpressure, disconnects and failures mid-export.

mod export_support;

use std::time::Duration;

use export_support::*;
use rusqlite::Connection;

const QUERY: &str = "SELECT id, name, amount, at, data FROM t WHERE id >= :min_id ORDER BY id";

/// A database with the awkward values an export must not mangle, plus `rows` plain ones.
fn database(rows: i64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("t.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, amount REAL, at TIMESTAMP, data BLOB);
         INSERT INTO t VALUES (1, 'comma, \"quote\"' || char(10) || 'newline', 1.5, 0, x'00ff10');
         INSERT INTO t VALUES (2, '', NULL, 1714566600, NULL);
         INSERT INTO t VALUES (3, NULL, -0.25, NULL, x'');",
    )
    .unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 3 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO t SELECT i, 'customer ' || (i % 1000), i * 0.5, 1700000000 + i, NULL
         FROM n WHERE i > 3",
        [rows + 3],
    )
    .unwrap();
    dir
}

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("t.db").display())
}

#[tokio::test]
async fn csv_and_ndjson_render_every_type_exactly() {
    let db = database(0);
    let server = start_export(&url(&db), QUERY, "").await;
    let client = client();
    let csv = client
        .get(server.url("/export?min_id=1&format=csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert_eq!(
        csv.headers()["content-type"],
        "text/csv; charset=utf-8; header=present"
    );
    assert_eq!(
        csv.text().await.unwrap(),
        "id,name,amount,at,data\r\n\
         1,\"comma, \"\"quote\"\"\nnewline\",1.5,1970-01-01T00:00:00Z,AP8Q\r\n\
         2,\"\",,2024-05-01T12:30:00Z,\r\n\
         3,,-0.25,,\"\"\r\n"
    );
    let ndjson = client
        .get(server.url("/export?min_id=1"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let text = ndjson.text().await.unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            serde_json::json!({"id": 1, "name": "comma, \"quote\"\nnewline", "amount": 1.5,
                               "at": "1970-01-01T00:00:00Z", "data": "AP8Q"}),
            serde_json::json!({"id": 2, "name": "", "amount": null,
                               "at": "2024-05-01T12:30:00Z", "data": null}),
            serde_json::json!({"id": 3, "name": null, "amount": -0.25, "at": null, "data": ""}),
        ]
    );
}

#[tokio::test]
async fn parameters_are_bound_and_checked() {
    let db = database(10);
    let query = "SELECT id, name FROM t WHERE name = :name OR id = :id";
    let server = start_export(&url(&db), query, "").await;
    let client = client();
    let injection = client
        .get(server.url("/export?name=x%27%20OR%20%271%27%3D%271&id=0%20OR%201%3D1"))
        .send()
        .await
        .unwrap();
    assert_eq!(injection.status(), 200);
    assert_eq!(
        injection.text().await.unwrap(),
        "id,name\r\n",
        "the injection matched rows"
    );
    let bound = client
        .get(server.url("/export?name=customer%205&id=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bound.text().await.unwrap(),
        "id,name\r\n2,\"\"\r\n5,customer 5\r\n"
    );

    let missing = client
        .get(server.url("/export?name=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let message = missing.text().await.unwrap();
    assert!(message.contains("missing parameter `id`"), "{message}");
    let unknown = client
        .get(server.url("/export?name=a&id=1&limit=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    let message = unknown.text().await.unwrap();
    assert!(
        message.contains("unknown parameter `limit`") && message.contains("`name`, `id`"),
        "{message}"
    );
    let bad_format = client
        .get(server.url("/export?name=a&id=1&format=xml"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_format.status(), 400);
    let not_acceptable = client
        .get(server.url("/export?name=a&id=1"))
        .header("accept", "application/pdf")
        .send()
        .await
        .unwrap();
    assert_eq!(not_acceptable.status(), 406);
}

#[tokio::test]
async fn gzip_when_asked_at_the_configured_level() {
    let db = database(20_000);
    let server = start_export(&url(&db), QUERY, "gzip_level = 6").await;
    let client = client();
    let plain = client
        .get(server.url("/export?min_id=1&format=ndjson"))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    let gz = client
        .get(server.url("/export?min_id=1&format=ndjson"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let gz = gz.bytes().await.unwrap();
    assert!(
        gz.len() * 4 < plain.len(),
        "{} gzip'd bytes for {}",
        gz.len(),
        plain.len()
    );
    assert_eq!(gunzip(&gz), plain);
    assert_eq!(plain.iter().filter(|&&b| b == b'\n').count(), 20_003);
}

#[tokio::test]
async fn past_max_exports_a_request_gets_503_with_retry_after() {
    let db = database(300_000);
    let server = start_export(&url(&db), QUERY, "max_exports = 1").await;
    let mut held = raw_get(server.local_addr(), "/export?min_id=1", "").await;
    read_some(&mut held, 1000).await;
    let refused = client()
        .get(server.url("/export?min_id=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    drop(held);
    let route = server.export("/export").unwrap();
    poll_until(DEADLINE, "the slot to be freed", || async {
        (route.running_exports() == 0).then_some(())
    })
    .await;
    let again = client()
        .get(server.url("/export?min_id=299000"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn a_client_that_stops_reading_stops_the_cursor_and_leaving_frees_it() {
    let rows = 300_000;
    let db = database(rows);
    let server = start_export(&url(&db), QUERY, "batch_rows = 500").await;
    let route = server.export("/export").unwrap();
    let mut tcp = raw_get(server.local_addr(), "/export?min_id=1", "").await;
    read_some(&mut tcp, 1000).await;
    // Everything between the cursor and the client is bounded: the export's buffers
    // (256 KiB), the server's send buffer and the client's receive buffer (each doubled
    // by the kernel), hyper's write buffer, the batch in hand. ~40 bytes a row.
    let in_flight_bytes = 256 * 1024 + 2 * 64 * 1024 + 2 * 16 * 1024 + 512 * 1024;
    let bound = (in_flight_bytes / 30 + 2 * 500) as u64;
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        peak = peak.max(route.rows_fetched());
    }
    assert!(peak > 0, "nothing was fetched");
    assert!(
        peak <= bound,
        "{peak} rows fetched for a client that read 1000 bytes (bound {bound})"
    );
    assert_eq!(route.busy_connections(), 1);
    drop(tcp);
    poll_until(
        Duration::from_millis(100),
        "the connection to be back in the pool",
        || async { (route.busy_connections() == 0).then_some(()) },
    )
    .await;
    assert_eq!(route.running_exports(), 0);
    assert!(route.rows_fetched() < rows as u64 / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_buffer_is_split_by_the_runtime_over_every_channel_and_the_cursor() {
    let db = database(300_000);
    let server = start_export(&url(&db), QUERY, "batch_rows = 100\nbuffer = \"64KiB\"").await;
    let mut tcp = raw_get(
        server.local_addr(),
        "/export?min_id=1",
        "accept-encoding: gzip\r\n",
    )
    .await;
    read_some(&mut tcp, 1000).await;
    let state_url = server.url("/_weir/state");
    let stages = poll_until(
        DEADLINE,
        "the export's stages, the cursor's queue full",
        || {
            let state_url = state_url.clone();
            async move {
                let state: serde_json::Value = client()
                    .get(state_url)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let stream = state["streams"]["shown"]
                    .as_array()?
                    .iter()
                    .find(|s| s["route"] == "/export")?;
                let stages = stream["stages"].as_array()?.clone();
                (stages.len() == 4 && stages[0]["buffered"].as_u64()? > 0).then_some(stages)
            }
        },
    )
    .await;
    let budgets: Vec<u64> = stages
        .iter()
        .map(|s| s["budget"].as_u64().unwrap())
        .collect();
    // cursor (its read-ahead queue), csv, gzip, client: one total, split evenly.
    assert_eq!(budgets.iter().sum::<u64>(), 64 << 10, "{stages:#?}");
    assert!(budgets.iter().all(|&b| b == 16 << 10), "{budgets:?}");
    drop(tcp);
    server.stop().await;
}

#[tokio::test]
async fn a_query_failing_after_the_first_rows_truncates_the_transfer() {
    let db = database(50_000);
    // abs() of the smallest integer overflows: an error on row 40000, after many batches.
    let query =
        "SELECT id, CASE WHEN id = 40000 THEN abs(-9223372036854775807 - 1) ELSE id END AS v \
                 FROM t WHERE id >= :min_id ORDER BY id";
    let server = start_export(&url(&db), query, "batch_rows = 100").await;
    let mut tcp = raw_get(server.local_addr(), "/export?min_id=1", "").await;
    let raw = read_to_close(&mut tcp).await;
    assert_truncated_after(&raw, "\r\n50,50\r\n");
    let (body, error) = {
        let resp = client()
            .get(server.url("/export?min_id=1"))
            .send()
            .await
            .unwrap();
        let mut resp = resp;
        let mut body = Vec::new();
        let mut error = None;
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        (body, error)
    };
    assert!(
        error.is_some(),
        "the client saw a complete body of {} bytes",
        body.len()
    );
}

#[tokio::test]
async fn a_bad_query_or_database_stops_the_server_at_start() {
    let db = database(0);
    let toml = |database: &str, query: &str| {
        format!(
            "[[route]]\nkind = \"sql_export\"\npath = \"/e\"\ndatabase = \"{database}\"\nquery = \"{query}\"\n"
        )
    };
    let config = ServeConfigParse::parse(&toml(&url(&db), "SELECT nope FROM t"));
    let err = weir_server::serve::Server::new(config)
        .err()
        .expect("a bad query was accepted")
        .to_string();
    assert!(err.contains("route /e") && err.contains("nope"), "{err}");
    let config = ServeConfigParse::parse(&toml("sqlite:///nonexistent/x.db", "SELECT 1"));
    let err = weir_server::serve::Server::new(config)
        .err()
        .expect("a missing file was accepted")
        .to_string();
    assert!(err.contains("/nonexistent/x.db"), "{err}");
}

struct ServeConfigParse;

impl ServeConfigParse {
    fn parse(toml: &str) -> weir_server::serve::ServeConfig {
        weir_server::serve::ServeConfig::parse(toml).expect("test config")
    }
}

#[tokio::test]
async fn metrics_count_exports_by_outcome_and_bytes_sent() {
    let db = database(1000);
    let path = "/export/metered";
    let server = start_export_at(path, &url(&db), QUERY, "").await;
    let client = client();
    let body = client
        .get(server.url(&format!("{path}?min_id=1")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let refused = client.get(server.url(path)).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |series: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let route = format!("route=\"{path}\"");
    assert_eq!(
        line(&format!(
            "weir_exports_total{{{route},outcome=\"completed\"}}"
        )),
        1
    );
    assert_eq!(
        line(&format!(
            "weir_exports_total{{{route},outcome=\"rejected\"}}"
        )),
        1
    );
    assert_eq!(
        line(&format!("weir_exports_total{{{route},outcome=\"failed\"}}")),
        0
    );
    assert_eq!(
        line(&format!("weir_export_bytes_total{{{route}}}")),
        body.len() as u64
    );
}

#[tokio::test]
async fn a_client_leaving_before_the_first_row_interrupts_the_statement() {
    let db = database(20_000);
    // 400 million row pairs: seconds of stepping before the first (only) row.
    let query = "SELECT count(*) AS n FROM t a, t b WHERE a.id >= :min_id";
    let server = start_export(&url(&db), query, "").await;
    let route = server.export("/export").unwrap();
    let tcp = raw_get(server.local_addr(), "/export?min_id=1", "").await;
    poll_until(DEADLINE, "the statement to start", || async {
        (route.busy_connections() == 1).then_some(())
    })
    .await;
    drop(tcp);
    poll_until(
        Duration::from_millis(100),
        "the interrupted statement to give its connection back",
        || async { (route.busy_connections() == 0).then_some(()) },
    )
    .await;
    assert_eq!(route.running_exports(), 0);
}
