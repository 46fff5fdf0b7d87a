//! `sql_export` over a real PostgreSQL (started by `scripts/pg-cluster`, URL in
//! `WEIR_TEST_PG_URL`, table `orders` loaded): types, parameters, backpressure seen from
//! the server side, disconnects and failures mid-export.

mod export_support;

use std::time::Duration;

use export_support::*;
use tokio_postgres::NoTls;

/// The cluster's URL, or `None` (with a loud message) when the tests cannot run;
/// with `WEIR_REQUIRE_PG=1` (CI) a missing cluster fails instead.
fn pg_url() -> Option<String> {
    match std::env::var("WEIR_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("WEIR_REQUIRE_PG").as_deref() == Ok("1") => {
            panic!("WEIR_REQUIRE_PG=1 but WEIR_TEST_PG_URL is not set: start scripts/pg-cluster")
        }
        _ => {
            eprintln!(
                "\n***** SKIPPED: PostgreSQL export tests need WEIR_TEST_PG_URL \
                 (eval \"$(scripts/pg-cluster start)\") *****\n"
            );
            None
        }
    }
}

/// The route's URL, tagged so this test finds its own backends in pg_stat_activity.
fn tagged(url: &str, app: &str) -> String {
    format!("{url}?application_name={app}")
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// `(state, query)` of the backends whose application_name is `app`.
async fn backends(admin: &tokio_postgres::Client, app: &str) -> Vec<(String, String)> {
    admin
        .query(
            "SELECT coalesce(state, ''), query FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn every_type_is_rendered_exactly() {
    let Some(url) = pg_url() else { return };
    let admin = connect(&url).await;
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS export_types;
             CREATE TABLE export_types AS SELECT * FROM (VALUES
               (1, 12345678901234567890.123456789012345678::numeric, timestamptz '2024-05-01 12:30:00.25+02',
                timestamp '1999-12-31 23:59:59', date '0044-03-15', '\\x00ff10'::bytea, true,
                'comma, \"quote\"' || chr(10) || 'newline', 1.5::float8, '{\"a\": [1, 2]}'::jsonb,
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, (-9223372036854775807 - 1)::int8),
               (2, -0.0001, 'infinity', NULL, NULL, ''::bytea, false, '', 'NaN', 'null', NULL, 0),
               (3, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
             ) AS v(id, n, tz, ts, d, b, ok, txt, f, j, u, big);",
        )
        .await
        .unwrap();
    let server = start_export(
        &url,
        "SELECT id, n, n::text AS n_text, tz, ts, d, b, ok, txt, f, j, u, big \
         FROM export_types WHERE id >= :min ORDER BY id",
        "",
    )
    .await;
    let ndjson = client()
        .get(server.url("/export?min=1&format=ndjson"))
        .send()
        .await
        .unwrap();
    assert_eq!(ndjson.status(), 200);
    let text = ndjson.text().await.unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for row in &rows {
        assert_eq!(
            row["n"], row["n_text"],
            "numeric differs from PostgreSQL's own text"
        );
    }
    assert_eq!(
        rows[0],
        serde_json::json!({
            "id": 1, "n": "12345678901234567890.123456789012345678",
            "n_text": "12345678901234567890.123456789012345678",
            "tz": "2024-05-01T10:30:00.25Z", "ts": "1999-12-31T23:59:59", "d": "0044-03-15",
            "b": "AP8Q", "ok": true, "txt": "comma, \"quote\"\nnewline", "f": 1.5,
            "j": {"a": [1, 2]}, "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "big": i64::MIN
        })
    );
    assert_eq!(rows[1]["n"], "-0.0001");
    assert_eq!(rows[1]["tz"], "infinity");
    assert_eq!(rows[1]["f"], "NaN");
    assert_eq!(rows[1]["j"], serde_json::Value::Null);
    assert_eq!(rows[2]["n"], "NaN");
    let csv = client()
        .get(server.url("/export?min=2&format=csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv,
        "id,n,n_text,tz,ts,d,b,ok,txt,f,j,u,big\r\n\
         2,-0.0001,-0.0001,infinity,,,\"\",false,\"\",NaN,null,,0\r\n\
         3,NaN,NaN,,,,,,,,,,\r\n"
    );
}

#[tokio::test]
async fn parameters_are_parsed_by_postgres_as_the_type_it_infers() {
    let Some(url) = pg_url() else { return };
    let server = start_export(
        &url,
        "SELECT id, amount FROM orders WHERE id <= :max_id AND amount >= :min_amount ORDER BY id",
        "",
    )
    .await;
    let admin = connect(&url).await;
    let expected: i64 = admin
        .query_one(
            "SELECT count(*) FROM orders WHERE id <= 20000 AND amount >= 9000.5",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let body = client()
        .get(server.url("/export?max_id=20000&min_amount=9000.5"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.lines().count() as i64, expected + 1);
    let injection = client()
        .get(server.url("/export?max_id=1%20OR%201%3D1&min_amount=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(injection.status(), 400);
    let message = injection.text().await.unwrap();
    assert!(message.contains("invalid input syntax"), "{message}");
}

#[tokio::test]
async fn a_slow_client_holds_the_portal_open_and_leaving_releases_it() {
    let Some(url) = pg_url() else { return };
    let app = "weir_test_slow_client";
    let server = start_export(&tagged(&url, app), "SELECT * FROM orders ORDER BY id", "").await;
    let route = server.export("/export").unwrap();
    let admin = connect(&url).await;
    let mut tcp = raw_get(server.local_addr(), "/export", "").await;
    read_some(&mut tcp, 1000).await;
    // Rows are ~80 bytes as CSV; the export's buffers, both kernels' socket buffers and
    // hyper's write buffer hold about 1 MiB of them: far from 10 million.
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        peak = peak.max(route.rows_fetched());
    }
    assert!(
        peak > 0 && peak <= 40_000,
        "{peak} rows fetched for a client that read 1000 bytes"
    );
    let waiting = backends(&admin, app).await;
    assert!(
        waiting
            .iter()
            .any(|(state, query)| state == "idle in transaction" && query.contains("FROM orders")),
        "the backend does not wait on the client with the query open: {waiting:?}"
    );
    drop(tcp);
    poll_until(
        Duration::from_millis(100),
        "the connection to be back in the pool",
        || async { (route.busy_connections() == 0).then_some(()) },
    )
    .await;
    let gone = poll_until(DEADLINE, "the query to leave pg_stat_activity", || async {
        let b = backends(&admin, app).await;
        b.iter().all(|(state, _)| state == "idle").then_some(b)
    })
    .await;
    assert!(
        !gone.is_empty(),
        "the pooled connection itself should stay open"
    );
}

#[tokio::test]
async fn a_killed_backend_or_a_late_query_error_truncates_the_transfer() {
    let Some(url) = pg_url() else { return };
    let app = "weir_test_killed";
    let server = start_export(&tagged(&url, app), "SELECT * FROM orders ORDER BY id", "").await;
    let admin = connect(&url).await;
    let mut tcp = raw_get(server.local_addr(), "/export", "").await;
    read_some(&mut tcp, 10_000).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1) k",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let rest = read_to_close(&mut tcp).await;
    assert!(
        !chunked_complete(&rest),
        "a killed export ended like a complete file"
    );

    let failing = start_export(
        &url,
        "SELECT id, 1 / (id - 5000) AS inverse FROM orders WHERE id <= :max_id ORDER BY id",
        "batch_rows = 100",
    )
    .await;
    let mut tcp = raw_get(failing.local_addr(), "/export?max_id=100000", "").await;
    let raw = read_to_close(&mut tcp).await;
    assert_truncated_after(&raw, "\r\n50,0\r\n");
}

#[tokio::test]
async fn an_unexportable_column_is_named_before_any_row() {
    let Some(url) = pg_url() else { return };
    let server = start_export(
        &url,
        "SELECT id, created_at - timestamptz '2024-01-01' AS age FROM orders WHERE id <= :n",
        "",
    )
    .await;
    let response = client()
        .get(server.url("/export?n=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let message = response.text().await.unwrap();
    assert!(
        message.contains("column `age` has type interval") && message.contains("age::text"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_with_retry_after() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let server = start_export(
        "postgres://weir@127.0.0.1:1/none",
        "SELECT 1 AS one",
        "pool_wait = \"1s\"",
    )
    .await;
    let response = client().get(server.url("/export")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let message = response.text().await.unwrap();
    assert!(message.contains("no database connection"), "{message}");
    for internal in ["127.0.0.1", "os error", "refused"] {
        assert!(
            !message.contains(internal),
            "{internal:?} leaked: {message}"
        );
    }
}

#[tokio::test]
async fn a_client_leaving_before_the_first_row_cancels_the_query() {
    let Some(url) = pg_url() else { return };
    let app = "weir_test_cancel";
    let server = start_export(
        &tagged(&url, app),
        "SELECT 1 AS one FROM pg_sleep(:seconds)",
        "",
    )
    .await;
    let route = server.export("/export").unwrap();
    let admin = connect(&url).await;
    let tcp = raw_get(server.local_addr(), "/export?seconds=30", "").await;
    poll_until(DEADLINE, "the query to run", || async {
        let b = backends(&admin, app).await;
        b.iter()
            .any(|(state, query)| state == "active" && query.contains("pg_sleep"))
            .then_some(())
    })
    .await;
    drop(tcp);
    poll_until(
        Duration::from_millis(100),
        "the connection to leave the pool's busy ones",
        || async { (route.busy_connections() == 0).then_some(()) },
    )
    .await;
    poll_until(
        Duration::from_secs(2),
        "the sleeping query to be cancelled",
        || async {
            let b = backends(&admin, app).await;
            (!b.iter().any(|(state, _)| state == "active")).then_some(())
        },
    )
    .await;
    let again = client()
        .get(server.url("/export?seconds=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await.unwrap(), "one\r\n1\r\n");
}
