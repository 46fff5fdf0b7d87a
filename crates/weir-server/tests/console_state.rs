//! The console's state API over real HTTP on loopback: its figures agree with what the
//! test drives (a client that stopped reading shows slow with its queues full, a stalled
//! subscriber's buffer full, a finished stream gone within 2 s), `/_weir/events` streams
//! snapshots, and without a valid admin key nothing about streams or clients leaks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use weir_server::serve::{RunningServer, ServeConfig, Server};

async fn state(server: &RunningServer, key: Option<&str>) -> (u16, Value) {
    let mut request = client().get(server.url("/_weir/state"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("GET /_weir/state");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// Polls the state until `pick` finds what it looks for; panics with the last state at the deadline.
async fn until<T>(server: &RunningServer, what: &str, pick: impl Fn(&Value) -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        let (status, s) = state(server, None).await;
        assert_eq!(status, 200, "{s}");
        if let Some(found) = pick(&s) {
            return found;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: not seen within {DEADLINE:?}; last state: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn streams_of<'a>(s: &'a Value, route: &str) -> Vec<&'a Value> {
    s["streams"]["shown"]
        .as_array()
        .expect("streams.shown")
        .iter()
        .filter(|st| st["route"] == route)
        .collect()
}

/// A stream request written by hand on a socket whose receive buffer is small and which
/// is never read.
async fn stalled_client(addr: std::net::SocketAddr, request: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_state_shows_a_stalled_proxy_client_slow_with_its_send_queue_full() {
    let mock = start().await;
    let upstream = mock.url("/v1/chat/completions?tokens=0&token_size=200");
    let server = start_proxy("openai", &upstream, "send_buffer = \"32KiB\"", "").await;
    let request =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
content-type: application/json\r\ncontent-length: 15\r\n\r\n{\"stream\":true}";
    let tcp = stalled_client(server.local_addr(), request).await;
    let client_addr = tcp.local_addr().unwrap().to_string();
    let stream = until(&server, "the stalled stream, slow", |s| {
        streams_of(s, "/v1/chat/completions")
            .into_iter()
            .find(|st| st["slow"] == true && st["send_queue"].as_u64() >= Some(16 << 10))
            .cloned()
    })
    .await;
    assert_eq!(stream["client"], client_addr.as_str(), "{stream:#}");
    assert_eq!(stream["kind"], "llm_proxy");
    assert_eq!(stream["budget"], 64 << 10, "the route's buffer");
    // What the relay holds is counted: at least its fixed part, never past the budget.
    assert!(
        (256..=64 << 10).contains(&stream["buffered"].as_u64().unwrap_or(0)),
        "{stream:#}"
    );
    assert_eq!(stream["send_buffer"], 32 << 10);
    assert!(
        stream["send_queue"].as_u64() <= Some(32 << 10),
        "over send_buffer: {stream:#}"
    );
    assert!(
        stream["bytes_out"].as_u64() >= stream["send_queue"].as_u64(),
        "{stream:#}"
    );
    let (_, s) = state(&server, None).await;
    assert_eq!(s["streams"]["open"], 1);
    assert_eq!(s["streams"]["slow"], 1);
    let route = &s["routes"][0];
    assert_eq!(
        (&route["path"], &route["streams"], &route["slow"]),
        (
            &Value::from("/v1/chat/completions"),
            &Value::from(1),
            &Value::from(1)
        )
    );
    assert!(s["memory"]["reserved"].as_u64() >= Some(64 << 10), "{s:#}");
    assert!(s["rss"].as_u64() > Some(0));
    drop(tcp);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_state_shows_a_stalled_subscribers_buffer_full() {
    let toml = "listen = \"127.0.0.1:0\"\nsend_buffer = \"16KiB\"\n[[route]]\nkind = \"topic\"\n\
path = \"/topics/ticks\"\nbuffer = \"8KiB\"\npolicy = \"drop_oldest\"\n";
    let server = Server::new(ServeConfig::parse(toml).expect("config"))
        .expect("server")
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let tcp = stalled_client(
        server.local_addr(),
        "GET /topics/ticks HTTP/1.1\r\nhost: weir\r\naccept: application/x-ndjson\r\n\r\n",
    )
    .await;
    until(&server, "the subscriber", |s| {
        (s["topics"][0]["subscribers"] == 1).then_some(())
    })
    .await;
    let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(200));
    // Batches until the buffer shows full: the stalled client's kernel may take a little
    // more after a batch (its window opens as it settles), and the queue with it. The
    // stream and its topic come from one snapshot.
    let mut batches = 0;
    let (stream, topic) = loop {
        let response = client()
            .post(server.url("/topics/ticks"))
            .body(line.repeat(100))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 200);
        batches += 1;
        let (_, s) = state(&server, None).await;
        let full = streams_of(&s, "/topics/ticks")
            .into_iter()
            .find(|st| st["buffered"].as_u64() >= Some(7 << 10))
            .map(|st| (st.clone(), s["topics"][0].clone()));
        if let Some(full) = full {
            break full;
        }
        assert!(
            batches < 50,
            "the subscriber's buffer never showed full: {s:#}"
        );
    };
    assert_eq!(stream["budget"], 8 << 10, "{stream:#}");
    // The queue holds up to its buffer; one message more may wait in hyper.
    let frame = line.len() as u64;
    assert!(
        stream["buffered"].as_u64() <= Some((8 << 10) + frame),
        "{stream:#}"
    );
    assert_eq!(stream["slow"], true, "{stream:#}");
    assert_eq!(topic["published"], batches * 100, "{topic:#}");
    assert!(topic["dropped"].as_u64() > Some(0), "{topic:#}");
    let queued = topic["queued"].as_u64().expect("queued");
    assert!((7 << 10..=8 << 10).contains(&queued), "{topic:#}");
    drop(tcp);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_state_drops_a_finished_stream_within_2_s() {
    let mock = start().await;
    let upstream = mock.url("/v1/chat/completions?tokens=20&rate=20");
    let server = start_proxy("openai", &upstream, "", "").await;
    let response = proxy_request(&client(), &server.url("/v1/chat/completions"), false)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    let shown = until(&server, "the running stream", |s| {
        streams_of(s, "/v1/chat/completions")
            .first()
            .map(|st| (*st).clone())
    })
    .await;
    assert!(shown["age_s"].as_f64() < Some(2.0), "{shown:#}");
    let (body, err) = read_all(response).await;
    assert!(err.is_none(), "{err:?}");
    assert!(body.contains("[DONE]"));
    let ended = Instant::now();
    until(&server, "the finished stream gone", |s| {
        (s["streams"]["open"] == 0).then_some(())
    })
    .await;
    assert!(
        ended.elapsed() < Duration::from_secs(2),
        "gone only after {:?}",
        ended.elapsed()
    );
    let (_, s) = state(&server, None).await;
    assert_eq!(s["streams"]["shown"].as_array().map(Vec::len), Some(0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_state_without_a_valid_admin_key_is_401_and_says_nothing_of_streams() {
    let mock = start().await;
    let upstream = mock.url("/v1/chat/completions?tokens=0&rate=5");
    let server = start_proxy("openai", &upstream, "admin_keys = [\"adm-1\"]", "").await;
    let response = proxy_request(&client(), &server.url("/v1/chat/completions"), false)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    for key in [None, Some("adm-2"), Some("key-1"), Some("")] {
        for path in ["/_weir/state", "/_weir/events"] {
            let mut request = client().get(server.url(path));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let refused = request.send().await.expect("GET");
            assert_eq!(refused.status(), 401, "{path} with {key:?}");
            let body = refused.text().await.unwrap();
            let v: Value = serde_json::from_str(&body).expect("a JSON error");
            assert_eq!(v["error"]["type"], "unauthorized", "{body}");
            for leak in ["127.0.0.1", "chat/completions", "streams", "memory"] {
                assert!(
                    !body.contains(leak),
                    "{path} with {key:?} leaks {leak}: {body}"
                );
            }
        }
    }
    let (status, s) = state(&server, Some("adm-1")).await;
    assert_eq!(status, 200);
    assert_eq!(s["streams"]["open"], 1, "{s:#}");
    let by_header = client()
        .get(server.url("/_weir/state"))
        .header("x-api-key", "adm-1")
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 200);
    let page = client().get(server.url("/_weir/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "the page holds no data: served to all");
    assert!(page.text().await.unwrap().contains("weir console"));
    let bad = client()
        .get(server.url("/_weir/state?top=lots"))
        .bearer_auth("adm-1")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    drop(response);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_events_sends_a_snapshot_a_second_and_counts_itself() {
    let mock = start().await;
    let server = start_proxy("openai", &mock.url("/v1/chat/completions"), "", "").await;
    let mut events = client()
        .get(server.url("/_weir/events"))
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let started = Instant::now();
    let mut pending = String::new();
    let mut snapshots = Vec::new();
    while snapshots.len() < 3 {
        let chunk = tokio::time::timeout(DEADLINE, events.chunk())
            .await
            .expect("a snapshot within the deadline")
            .expect("read")
            .expect("not ended");
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let data = event.strip_prefix("data: ").expect("a data event");
            snapshots.push(serde_json::from_str::<Value>(data.trim_end()).expect("JSON"));
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "3 snapshots took {took:?}"
    );
    let me = streams_of(&snapshots[2], "/_weir/events");
    assert_eq!(me.len(), 1, "{:#}", snapshots[2]);
    assert_eq!(me[0]["kind"], "console");
    assert!(me[0]["bytes_out"].as_u64() > Some(0));
    assert!(
        snapshots[2]["memory"]["reserved"].as_u64() > Some(0),
        "the events stream reserves its bytes"
    );
    drop(events);
    until(&server, "the console stream gone", |s| {
        (s["streams"]["open"] == 0).then_some(())
    })
    .await;
    assert_eq!(server.admission().budget().reserved(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_events_client_that_stalls_is_cut_off_like_any_slow_client() {
    let toml = "listen = \"127.0.0.1:0\"\nsend_buffer = \"16KiB\"\n[[route]]\nkind = \"topic\"\n\
path = \"/topics/ticks\"\n";
    let server = Server::new(ServeConfig::parse(toml).expect("config"))
        .expect("server")
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    // 100 streams to show make each snapshot tens of KB: one fills a stalled client's queues.
    let mut subscribers = Vec::new();
    for _ in 0..100 {
        let sub = client()
            .get(server.url("/topics/ticks"))
            .send()
            .await
            .expect("subscribe");
        subscribers.push(sub);
    }
    let tcp = stalled_client(
        server.local_addr(),
        "GET /_weir/events?top=100 HTTP/1.1\r\nhost: weir\r\n\r\n",
    )
    .await;
    until(&server, "the console client, slow", |s| {
        streams_of(s, "/_weir/events")
            .first()
            .and_then(|st| (st["slow"] == true).then_some(()))
    })
    .await;
    let slow_at = Instant::now();
    let cut_within = weir_server::serve::console::STALL_LIMIT + DEADLINE;
    loop {
        let (_, s) = state(&server, None).await;
        if streams_of(&s, "/_weir/events").is_empty() {
            break;
        }
        assert!(
            slow_at.elapsed() < cut_within,
            "a stalled console client still open after {:?}",
            slow_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        server.admission().budget().reserved(),
        0,
        "its reservation is returned"
    );
    let (_, s) = state(&server, None).await;
    assert_eq!(s["streams"]["open"], 100, "the subscribers stay");
    drop((tcp, subscribers));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_state_counts_a_websocket_subscriber_and_drops_it_when_it_closes() {
    use futures::StreamExt;
    let toml = "listen = \"127.0.0.1:0\"\n[[route]]\nkind = \"topic\"\npath = \"/topics/ticks\"\n";
    let server = Server::new(ServeConfig::parse(toml).expect("config"))
        .expect("server")
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let url = format!("ws://{}/topics/ticks", server.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket");
    until(&server, "the WebSocket subscriber", |s| {
        (streams_of(s, "/topics/ticks").len() == 1).then_some(())
    })
    .await;
    let lines = "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n";
    let published = client()
        .post(server.url("/topics/ticks"))
        .body(lines)
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 200);
    for _ in 0..3 {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a message")
            .expect("open")
            .expect("read");
        assert!(message.is_text(), "{message:?}");
    }
    let sent = until(&server, "its bytes counted", |s| {
        streams_of(s, "/topics/ticks")
            .first()
            .and_then(|st| st["bytes_out"].as_u64())
            .filter(|&b| b >= 21)
    })
    .await;
    assert_eq!(sent, 21, "three 7-byte messages");
    ws.close(None).await.expect("close");
    let closed = Instant::now();
    until(&server, "the subscriber gone", |s| {
        (s["streams"]["open"] == 0).then_some(())
    })
    .await;
    assert!(closed.elapsed() < Duration::from_secs(2));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_state_counts_a_tail_readers_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    std::fs::write(&file, "one\ntwo\nthree\n").unwrap();
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n[[route]]\nkind = \"file_tail\"\npath = \"/logs\"\nfile = \"{}\"\n",
        file.display()
    );
    let server = Server::new(ServeConfig::parse(&toml).expect("config"))
        .expect("server")
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let mut reader = client()
        .get(server.url("/logs?from=start"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("tail");
    let mut got = 0;
    while got < 3 {
        let chunk = tokio::time::timeout(DEADLINE, reader.chunk())
            .await
            .expect("lines")
            .expect("read")
            .expect("open");
        got += chunk.iter().filter(|&&b| b == b'\n').count();
    }
    let stream = until(&server, "the reader's bytes", |s| {
        streams_of(s, "/logs")
            .first()
            .filter(|st| st["bytes_out"].as_u64() > Some(0))
            .map(|st| (*st).clone())
    })
    .await;
    assert_eq!(stream["kind"], "file_tail");
    assert_eq!(stream["budget"], 64 << 10, "the route's buffer");
    assert_eq!(stream["slow"], false, "{stream:#}");
    drop(reader);
    server.stop().await;
}
