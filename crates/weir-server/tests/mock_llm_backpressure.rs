//! The mock follows its reader: a reader that stops stops the generator (and the wait is
//! counted), a client that leaves is counted as aborted, and shutdown ends endless streams.

mod common;

use std::time::{Duration, Instant};

use common::{client, openai_tokens, parse_sse, read_all, start, wait_for, DEADLINE};
use weir_server::mock_llm::MockStats;

/// Waits until `tokens_sent` has not moved for `quiet`: the generator is paused.
async fn wait_until_paused(stats: impl Fn() -> MockStats, quiet: Duration) -> MockStats {
    let start = Instant::now();
    let mut last = stats();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = stats();
        assert!(start.elapsed() < DEADLINE, "generator never paused: {s:?}");
        if s.tokens_sent != last.tokens_sent {
            last = s;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return s;
        }
    }
}

#[tokio::test]
async fn a_reader_that_stops_pauses_the_generator_and_time_blocked_grows() {
    let mock = start().await;
    let mut resp = client()
        .get(mock.url("/v1/chat/completions?tokens=0&token_size=1024"))
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap().expect("the stream starts");
    // Stop reading: socket buffers fill, then hyper stops polling the body.
    let paused = wait_until_paused(|| mock.stats(), Duration::from_millis(500)).await;
    assert!(paused.tokens_sent > 0);
    assert_eq!(paused.streams_open, 1);

    let blocked = wait_for(
        || mock.stats(),
        "time blocked to grow while the reader is stopped",
        |s| s.time_blocked_ms >= paused.time_blocked_ms + 200.0,
    )
    .await;
    assert_eq!(
        blocked.tokens_sent, paused.tokens_sent,
        "nothing made while blocked"
    );

    let http: MockStats = client()
        .get(mock.url("/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(http.time_blocked_ms >= blocked.time_blocked_ms);
    assert_eq!(http.tokens_sent, paused.tokens_sent);

    // Read again: the generator resumes.
    while mock.stats().tokens_sent == paused.tokens_sent {
        let chunk = tokio::time::timeout(DEADLINE, resp.chunk()).await;
        chunk.expect("data keeps coming").unwrap().expect("endless");
    }
    drop(resp);
    let s = wait_for(
        || mock.stats(),
        "the dropped stream to close",
        |s| s.streams_open == 0,
    )
    .await;
    assert_eq!((s.streams_aborted, s.streams_finished), (1, 0));
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_counted_as_aborted() {
    let mock = start().await;
    let c = client();
    let mut fast = c
        .get(mock.url("/v1/chat/completions?tokens=0"))
        .send()
        .await
        .unwrap();
    let mut paced = c
        .get(mock.url("/v1/messages?tokens=1000&rate=20"))
        .send()
        .await
        .unwrap();
    fast.chunk().await.unwrap().unwrap();
    paced.chunk().await.unwrap().unwrap();
    assert_eq!(mock.stats().streams_open, 2);
    drop(fast);
    drop(paced);
    let s = wait_for(
        || mock.stats(),
        "both streams to close",
        |s| s.streams_open == 0,
    )
    .await;
    assert_eq!(
        (s.streams_started, s.streams_aborted, s.streams_finished),
        (2, 2, 0)
    );
}

#[tokio::test]
async fn rate_and_ttft_pace_the_stream() {
    let mock = start().await;
    let started = Instant::now();
    let mut resp = client()
        .get(mock.url("/v1/chat/completions?tokens=10&rate=50&ttft_ms=150"))
        .send()
        .await
        .unwrap();
    let mut body = Vec::new();
    let mut first_token_at = None;
    while let Some(c) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&c);
        if first_token_at.is_none()
            && !openai_tokens(&parse_sse(&String::from_utf8_lossy(&body))).is_empty()
        {
            first_token_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    assert_eq!(
        openai_tokens(&parse_sse(&String::from_utf8(body).unwrap())).len(),
        10
    );
    assert!(
        first_token_at.unwrap() >= Duration::from_millis(150),
        "{first_token_at:?}"
    );
    // 150 ms to the first token, then 9 more at 50/s: at least 330 ms.
    assert!(total >= Duration::from_millis(330), "{total:?}");
    assert!(total < DEADLINE);
}

#[tokio::test]
async fn shutdown_ends_endless_streams() {
    let mock = start().await;
    let mut resp = client()
        .get(mock.url("/v1/chat/completions?tokens=0&rate=100"))
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap().unwrap();
    let stats = mock.mock().clone();
    tokio::time::timeout(DEADLINE, mock.shutdown())
        .await
        .expect("shutdown does not wait on the endless stream")
        .unwrap();
    let (_, err) = read_all(resp).await;
    assert!(err.is_some(), "the cut stream is an error for its client");
    let s = stats.stats();
    assert_eq!((s.streams_open, s.streams_cancelled), (0, 1));
}
