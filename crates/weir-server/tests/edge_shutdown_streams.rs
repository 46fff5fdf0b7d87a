//! A stop with streams open: live streams (a tail, a topic, a WebSocket) end at once with
//! their protocol's error event or close code; a proxied stream that ends within the grace
//! ends cleanly; one still running when the grace is over ends with the dialect's error
//! event; and the server is gone within the grace.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use weir_server::serve::{ServeConfig, Server};

/// Reads `resp` until `done` holds for what came, within `limit`.
async fn read_until(
    resp: &mut reqwest::Response,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut text = String::new();
    let deadline = Instant::now() + limit;
    while !done(&text) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("stream ended or stalled ({other:?}) with: {text}"),
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_shutdown_ends_every_stream_in_its_protocol_within_the_grace() {
    let mock = start().await;
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").expect("log");
    let toml = format!(
        "shutdown_grace = \"2s\"\n\
         [[route]]\nkind = \"llm_proxy\"\npath = \"/v1/chat/completions\"\nprotocol = \"openai\"\n\
         upstream = \"{}\"\n\
         [[route]]\nkind = \"llm_proxy\"\npath = \"/short\"\nprotocol = \"openai\"\n\
         upstream = \"{}\"\n\
         [[route]]\nkind = \"file_tail\"\npath = \"/logs\"\nfile = \"{}\"\n\
         [[route]]\nkind = \"topic\"\npath = \"/topics/t\"\n",
        mock.url("/v1/chat/completions?tokens=0&rate=20"),
        mock.url("/v1/chat/completions?tokens=5&rate=10"),
        log.display()
    );
    let server = Server::new(ServeConfig::parse(&toml).expect("config"))
        .expect("server")
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let chat = |path: &str| {
        client()
            .post(server.url(path))
            .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
    };
    let mut long = chat("/v1/chat/completions").await.unwrap();
    assert_eq!(long.status(), 200);
    let first = read_until(&mut long, DEADLINE, |t| t.contains("\n\n")).await;

    let mut tail = client().get(server.url("/logs")).send().await.unwrap();
    let mut topic = client().get(server.url("/topics/t")).send().await.unwrap();
    let ws_url = server.url("/topics/t").replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("upgrade");
    // Both are live: a line and a message reach them.
    std::fs::write(&log, "hello\n").expect("append");
    read_until(&mut tail, DEADLINE, |t| t.contains("data: hello")).await;
    let published = client()
        .post(server.url("/topics/t"))
        .body("{\"n\":1}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    read_until(&mut topic, DEADLINE, |t| t.contains("data: {\"n\":1}")).await;

    let short = chat("/short").await.unwrap();
    assert_eq!(short.status(), 200);
    let admission = server.admission().clone();
    let stopping = Instant::now();
    let stopped = tokio::spawn(server.stop());

    for (name, stream) in [("tail", &mut tail), ("topic", &mut topic)] {
        let text = read_until(stream, Duration::from_secs(1), |t| {
            t.contains("server_shutdown")
        })
        .await;
        assert!(text.contains("event: error\ndata: "), "{name}: {text}");
        assert!(
            stream.chunk().await.expect("a clean end").is_none(),
            "{name} ends"
        );
    }
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1001));
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "live streams end at once"
    );

    let (body, err) = read_all(short).await;
    assert!(err.is_none(), "{err:?}");
    let events = parse_sse(&body);
    assert_eq!(
        openai_tokens(&events).len(),
        5,
        "a stream that ends within the grace ends whole"
    );
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));

    let rest = read_until(&mut long, Duration::from_secs(3), |t| {
        t.contains("server_shutdown")
    })
    .await;
    let events = parse_sse(&format!("{first}{rest}"));
    let last = events.last().expect("events").json();
    assert_eq!(last["error"]["code"], "server_shutdown", "{last}");
    assert!(long
        .chunk()
        .await
        .expect("a clean end after the error event")
        .is_none());

    stopped.await.expect("stopped");
    let took = stopping.elapsed();
    assert!(
        took <= Duration::from_millis(2_300),
        "gone within the grace: {took:?}"
    );
    assert_eq!(admission.open_streams(), 0);
    assert_eq!(admission.budget().reserved(), 0);
}
