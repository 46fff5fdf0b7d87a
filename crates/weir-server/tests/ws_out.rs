//! WebSocket out over real sockets: a frame per line of a tail, a frame per message of a
//! topic with drops told in-band, and a subscriber that never reads held to its gate while
//! the others go on.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use weir_server::serve::{RunningServer, ServeConfig, Server};

async fn serve(toml: &str) -> RunningServer {
    let config = ServeConfig::parse(toml).expect("test config");
    Server::new(config)
        .expect("server")
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind")
}

fn ws_url(server: &RunningServer, path: &str) -> String {
    server.url(path).replacen("http://", "ws://", 1)
}

async fn next_text<S>(ws: &mut S) -> String
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("open")
            .expect("frame");
        match m {
            Message::Text(t) => return t.to_string(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn ws_tail_sends_one_text_frame_per_line() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("app.log");
    std::fs::write(&file, "one\ntwo\n").expect("write");
    let server = serve(&format!(
        "[[route]]\nkind = \"file_tail\"\npath = \"/logs\"\nfile = \"{}\"\n",
        file.display()
    ))
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&server, "/logs?from=start"))
        .await
        .expect("upgrade");
    assert_eq!(next_text(&mut ws).await, "one");
    assert_eq!(next_text(&mut ws).await, "two");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .expect("open");
    writeln!(f, "three").expect("append");
    assert_eq!(next_text(&mut ws).await, "three");
}

#[tokio::test]
async fn ws_topic_delivers_in_order_and_a_client_that_never_reads_is_held_to_its_gate() {
    const N: u32 = 20_000;
    let server = serve(
        "[[route]]\nkind = \"topic\"\npath = \"/t\"\npolicy = \"drop_newest\"\nbuffer = \"4KiB\"\n",
    )
    .await;
    // One subscriber never reads a frame; the other reads everything.
    let (idle, _) = tokio_tungstenite::connect_async(ws_url(&server, "/t"))
        .await
        .expect("upgrade");
    let (mut reader, _) = tokio_tungstenite::connect_async(ws_url(&server, "/t"))
        .await
        .expect("upgrade");
    let body: String = (0..N)
        .map(|i| format!("{{\"id\":{i},\"pad\":\"{}\"}}\n", "x".repeat(100)))
        .collect();
    let publisher = {
        let url = server.url("/t");
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .body(body)
                .send()
                .await
                .expect("POST")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        })
    };
    let (mut ids, mut dropped) = (Vec::new(), 0u64);
    while (ids.len() as u64 + dropped) < N as u64 {
        let v: serde_json::Value =
            serde_json::from_str(&next_text(&mut reader).await).expect("json");
        if let Some(id) = v["id"].as_u64() {
            ids.push(id);
        } else if let Some(n) = v["dropped"].as_u64() {
            dropped += n;
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "order kept");
    assert_eq!(ids.len() as u64 + dropped, N as u64);
    // The publisher was never held up by the subscriber that reads nothing.
    let answer = tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .expect("the publisher finishes")
        .expect("task");
    assert_eq!(answer["published"], N);
    drop(idle);
}
