//! Slow request bodies hold no stream slot: a flood of clients that send their headers and
//! then a trickle of body sits beside honest requests that all get through, and each slow
//! one is answered 408 at `body_timeout`, leaving no slot, budget or descriptor behind. The
//! bodies being read together hold no more than `request_body_budget`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW: usize = 200;

/// `n` connections that sent `head` and stop there, in the middle of their bodies.
async fn begun_bodies(addr: std::net::SocketAddr, head: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        conns.push(tcp);
    }
    conns
}

/// What the server answered before closing the connection.
async fn answer(mut tcp: TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_slow_bodies_beside_honest_streams_all_honest_get_through() {
    let mock = start().await;
    let proxy = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?tokens=20"),
        "max_streams = 4\nbody_timeout = \"1s\"",
        "",
    )
    .await;
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
                content-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"model\": ";
    let slow = begun_bodies(proxy.local_addr(), head, SLOW).await;
    let flood_started = Instant::now();

    // Twice the slots, four at a time: each must be admitted while the flood waits.
    for _ in 0..2 {
        let honest = (0..4).map(|_| async {
            let resp = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "an honest stream is admitted");
            let (body, err) = read_all(resp).await;
            assert!(err.is_none(), "{err:?}");
            assert_eq!(openai_tokens(&parse_sse(&body)).len(), 20);
        });
        futures::future::join_all(honest).await;
    }
    assert!(
        flood_started.elapsed() < Duration::from_secs(1),
        "the honest streams ran while the slow bodies were still being waited for"
    );

    // Each slow connection is two descriptors here: the client's and the server's.
    let fds_with_flood = open_descriptors();
    for tcp in slow {
        let answer = answer(tcp).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
    }
    assert!(
        flood_started.elapsed() >= Duration::from_secs(1),
        "not before body_timeout"
    );
    assert_eq!(proxy.admission().open_streams(), 0);
    assert_eq!(proxy.admission().budget().reserved(), 0);
    assert_eq!(
        mock.stats().requests,
        8,
        "only the honest requests went upstream"
    );
    // The server closed its side of every slow connection.
    let deadline = Instant::now() + DEADLINE;
    let wanted = fds_with_flood - 2 * SLOW;
    while open_descriptors() > wanted {
        assert!(
            Instant::now() < deadline,
            "descriptors left open: {} > {wanted}",
            open_descriptors()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bodies being read share `request_body_budget`: past it a request is refused at once with
/// 503 and `Retry-After`, and once the bodies that held it are gone, requests get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_large_bodies_past_the_request_body_budget_are_refused_at_once() {
    let mock = start().await;
    let proxy = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?tokens=3"),
        "body_timeout = \"1s\"\nmax_request_body = \"64KiB\"\nrequest_body_budget = \"256KiB\"",
        "",
    )
    .await;
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
                content-type: application/json\r\ncontent-length: 65536\r\n\r\n{\"model\": ";
    // Four bodies of the largest size, declared and begun: the whole budget.
    let large = begun_bodies(proxy.local_addr(), head, 4).await;
    let refused_at = Instant::now();
    let refused = loop {
        let resp = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
            .send()
            .await
            .unwrap();
        // The four may not all have been read up to their body yet.
        if resp.status() != 200 || refused_at.elapsed() > Duration::from_millis(500) {
            break resp;
        }
    };
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let text = refused.text().await.unwrap();
    assert!(text.contains("overloaded"), "{text}");
    assert!(
        text.contains("request_body_budget (262144 bytes)"),
        "{text}"
    );
    assert!(
        refused_at.elapsed() < Duration::from_secs(1),
        "refused before the large bodies timed out"
    );
    for tcp in large {
        let answer = answer(tcp).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let resp = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the budget came back with the bodies");
    let (body, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(openai_tokens(&parse_sse(&body)).len(), 3);
}
