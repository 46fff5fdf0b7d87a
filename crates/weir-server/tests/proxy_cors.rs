//! CORS over loopback HTTP: preflights of listed and unlisted origins, the echoed origin on
//! streams and refusals, routes without `cors_origins` unchanged, and `sql_export` routes.

mod common;
mod export_support;

use std::time::{Duration, Instant};

use common::*;
use reqwest::header::HeaderMap;
use reqwest::Method;

const PAGE: &str = "http://localhost:5173";
const ROUTE: &str = "/v1/chat/completions";

type RunningMock = weir_server::mock_llm::RunningMockLlm;
type RunningServer = weir_server::serve::RunningServer;

/// A mock upstream and a proxy route listing [`PAGE`] and one more origin.
async fn cors_proxy(upstream_query: &str, server_extra: &str) -> (RunningMock, RunningServer) {
    let mock = start().await;
    let proxy = start_proxy(
        "openai",
        &mock.url(&format!("{ROUTE}?{upstream_query}")),
        server_extra,
        &format!("cors_origins = [\"{PAGE}\", \"https://app.example.com\"]"),
    )
    .await;
    (mock, proxy)
}

/// A browser's preflight of a JSON POST with an API key, from `origin`.
async fn preflight(url: &str, origin: &str) -> reqwest::Response {
    client()
        .request(Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

fn cors_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn varies_by_origin(headers: &HeaderMap) -> bool {
    headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin"))
}

#[tokio::test]
async fn a_listed_origins_preflight_gets_204_without_a_key_and_starts_no_stream() {
    // One stream slot, held by an endless stream: a preflight counted as a stream would get 503.
    let (mock, proxy) = cors_proxy("tokens=0&rate=50", "max_streams = 1").await;
    let held = proxy_request(&client(), &proxy.url(ROUTE), false)
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);

    let resp = preflight(&proxy.url(ROUTE), PAGE).await;
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], PAGE);
    assert!(varies_by_origin(h), "{h:?}");
    assert_eq!(h["access-control-allow-methods"], "POST");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    for name in [
        "authorization",
        "x-api-key",
        "content-type",
        "anthropic-version",
        "anthropic-beta",
        "accept",
    ] {
        assert!(allowed.split(", ").any(|a| a == name), "{name}: {allowed}");
    }
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(proxy.admission().open_streams(), 1);
    assert_eq!(
        mock.stats().requests,
        1,
        "the preflight reached no upstream"
    );
}

#[tokio::test]
async fn origins_compare_as_browsers_write_them_and_a_star_takes_any() {
    let (_mock, proxy) = cors_proxy("tokens=1", "").await;
    let resp = preflight(&proxy.url(ROUTE), "https://APP.example.com").await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://APP.example.com"
    );

    let mock = start().await;
    let open = start_proxy("openai", &mock.url(ROUTE), "", "cors_origins = [\"*\"]").await;
    let resp = preflight(&open.url(ROUTE), "http://anything.test:1234").await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "http://anything.test:1234"
    );
}

#[tokio::test]
async fn unlisted_or_absent_origins_get_no_cors_headers() {
    let (mock, proxy) = cors_proxy("tokens=5", "").await;
    for origin in ["http://evil.test", "http://localhost:5174", "null"] {
        let resp = preflight(&proxy.url(ROUTE), origin).await;
        assert_eq!(resp.status(), 403, "{origin}");
        assert_eq!(
            cors_headers(resp.headers()),
            Vec::<String>::new(),
            "{origin}"
        );
    }
    let no_origin = client()
        .request(Method::OPTIONS, proxy.url(ROUTE))
        .send()
        .await
        .unwrap();
    assert_eq!(no_origin.status(), 403);
    assert!(cors_headers(no_origin.headers()).is_empty());

    for origin in [Some("http://evil.test"), None] {
        let mut req = proxy_request(&client(), &proxy.url(ROUTE), false);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(cors_headers(resp.headers()).is_empty(), "{origin:?}");
        let (body, err) = read_all(resp).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(openai_tokens(&parse_sse(&body)).len(), 5);
    }
    assert_eq!(
        mock.stats().streams_started,
        2,
        "preflights reached no upstream"
    );
}

#[tokio::test]
async fn a_stream_to_a_listed_origin_carries_it_and_still_streams() {
    // Endless and paced: only a body passed on chunk by chunk gives the test its first token.
    let (mock, proxy) = cors_proxy("tokens=0&rate=50", "").await;
    let started = Instant::now();
    let mut resp = proxy_request(&client(), &proxy.url(ROUTE), false)
        .header("origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["access-control-allow-origin"], PAGE);
    assert!(varies_by_origin(h), "{h:?}");
    let mut body = String::new();
    while openai_tokens_in(&body) < 3 {
        let chunk = tokio::time::timeout(DEADLINE, resp.chunk())
            .await
            .expect("a chunk within the deadline")
            .unwrap()
            .expect("the endless stream goes on");
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        mock.stats().streams_open,
        1,
        "the upstream is still streaming"
    );
}

/// Tokens in the whole events of a partial OpenAI stream.
fn openai_tokens_in(partial: &str) -> usize {
    let whole = &partial[..partial.rfind("\n\n").map_or(0, |end| end + 2)];
    openai_tokens(&parse_sse(whole)).len()
}

#[tokio::test]
async fn refusals_to_a_listed_origin_carry_it_so_the_page_can_read_them() {
    let (_mock, proxy) = cors_proxy("tokens=0&rate=50", "max_streams = 1").await;
    let unauthorised = client()
        .post(proxy.url(ROUTE))
        .header("origin", PAGE)
        .header("authorization", "Bearer nope")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);
    assert_eq!(unauthorised.headers()["access-control-allow-origin"], PAGE);

    let _held = proxy_request(&client(), &proxy.url(ROUTE), false)
        .send()
        .await
        .unwrap();
    let busy = proxy_request(&client(), &proxy.url(ROUTE), false)
        .header("origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["access-control-allow-origin"], PAGE);

    let wrong_method = client()
        .get(proxy.url(ROUTE))
        .header("origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["access-control-allow-origin"], PAGE);
}

#[tokio::test]
async fn routes_without_cors_origins_answer_as_before() {
    let mock = start().await;
    let proxy = start_proxy("openai", &mock.url(&format!("{ROUTE}?tokens=2")), "", "").await;
    let resp = preflight(&proxy.url(ROUTE), PAGE).await;
    assert_eq!(resp.status(), 405);
    assert!(cors_headers(resp.headers()).is_empty());
    assert!(!varies_by_origin(resp.headers()));
    let resp = proxy_request(&client(), &proxy.url(ROUTE), false)
        .header("origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(cors_headers(resp.headers()).is_empty());
}

#[tokio::test]
async fn an_export_route_allows_get_and_head_and_echoes_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (id INTEGER); INSERT INTO t VALUES (1), (2);")
        .unwrap();
    let server = export_support::start_export(
        &format!("sqlite://{}", db.display()),
        "SELECT id FROM t ORDER BY id",
        &format!("cors_origins = [\"{PAGE}\"]"),
    )
    .await;
    let resp = client()
        .request(Method::OPTIONS, server.url("/export"))
        .header("origin", PAGE)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["access-control-allow-methods"], "GET, HEAD");
    assert_eq!(resp.headers()["access-control-allow-origin"], PAGE);

    let resp = client()
        .get(server.url("/export?format=csv"))
        .header("origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], PAGE);
    assert!(varies_by_origin(resp.headers()), "{:?}", resp.headers());
    assert_eq!(resp.text().await.unwrap(), "id\r\n1\r\n2\r\n");
}
