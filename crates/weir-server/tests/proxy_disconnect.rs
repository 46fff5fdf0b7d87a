//! A client that goes away takes its upstream connection with it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &str =
    "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
content-type: application/json\r\ncontent-length: 15\r\n\r\n{\"stream\":true}";

/// Opens a stream by hand, reads `until` bytes of it (0: not even the headers), hangs up.
async fn abort_after(addr: std::net::SocketAddr, until: usize) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(REQUEST.as_bytes()).await.unwrap();
    let mut got = 0;
    let mut buf = [0u8; 4096];
    while got < until {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "stream ended before the client left");
        got += n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_aborted_streams_leave_no_upstream_open() {
    let mock = start().await;
    let mid_stream = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?tokens=0&rate=200"),
        "",
        "",
    )
    .await;
    // The first token comes after a minute: these clients leave with only the headers.
    let before_first = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?tokens=0&ttft_ms=60000"),
        "",
        "",
    )
    .await;
    let mut slowest = Duration::ZERO;
    for batch in 0..20 {
        let (addr, until) = if batch % 2 == 0 {
            (mid_stream.local_addr(), 2000)
        } else {
            (before_first.local_addr(), 1)
        };
        let clients: Vec<_> = (0..50)
            .map(|_| tokio::spawn(abort_after(addr, until)))
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        let left = Instant::now();
        wait_for(
            || mock.stats(),
            "upstream streams closed",
            |s| s.streams_open == 0,
        )
        .await;
        slowest = slowest.max(left.elapsed());
    }
    let stats = mock.stats();
    assert_eq!(stats.streams_started, 1000);
    assert_eq!(stats.streams_aborted, 1000, "{stats:?}");
    for proxy in [&mid_stream, &before_first] {
        assert_eq!(proxy.admission().open_streams(), 0);
        assert_eq!(proxy.admission().budget().reserved(), 0);
    }
    eprintln!("slowest batch of 50 aborts fully closed upstream in {slowest:?}");
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");
}
