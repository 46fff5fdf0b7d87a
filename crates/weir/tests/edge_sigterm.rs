//! SIGTERM with streams open: `weir serve` exits 0 within `shutdown_grace`, and every
//! client sees its protocol's end: proxied streams the dialect's error event, topic
//! subscribers an `event: error`, each followed by the chunked body's clean end, none a
//! bare reset.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_server::mock_llm::{MockLlm, MockLlmConfig};

const PROXIED: usize = 300;
const SUBSCRIBERS: usize = 100;
const GRACE: Duration = Duration::from_secs(3);

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `request` and reads the response head and first bytes of its body.
async fn open_stream(addr: SocketAddr, request: String) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut head = [0u8; 512];
    let n = tcp.read(&mut head).await.expect("head");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    tcp
}

/// Everything until the server closes; an error (a reset) fails the test.
async fn rest_of(mut tcp: TcpStream) -> String {
    let mut rest = Vec::new();
    tokio::time::timeout(GRACE * 3, tcp.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("a clean close, not a reset");
    String::from_utf8_lossy(&rest).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sigterm_with_streams_open_exits_0_within_the_grace_and_every_client_is_told() {
    let mock = MockLlm::bind("127.0.0.1:0".parse().unwrap(), MockLlmConfig::default())
        .await
        .expect("mock");
    let dir = tempfile::tempdir().expect("dir");
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\nshutdown_grace = \"{}s\"\n\
             [[route]]\nkind = \"llm_proxy\"\npath = \"/v1/chat/completions\"\nprotocol = \"openai\"\n\
             upstream = \"{}\"\n\
             [[route]]\nkind = \"topic\"\npath = \"/topics/t\"\n",
            GRACE.as_secs(),
            mock.url("/v1/chat/completions?tokens=0&rate=5")
        ),
    )
    .expect("config");
    let mut serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weir serve"),
    );
    let started = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "weir did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let body = r#"{"model":"m","stream":true,"messages":[]}"#;
    let chat = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let subscribe = "GET /topics/t HTTP/1.1\r\nhost: weir\r\n\r\n".to_string();
    let mut proxied = Vec::new();
    for _ in 0..PROXIED {
        proxied.push(open_stream(addr, chat.clone()).await);
    }
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        subscribers.push(open_stream(addr, subscribe.clone()).await);
    }
    let proxied: Vec<_> = proxied
        .into_iter()
        .map(|t| tokio::spawn(rest_of(t)))
        .collect();
    let subscribers: Vec<_> = subscribers
        .into_iter()
        .map(|t| tokio::spawn(rest_of(t)))
        .collect();

    let stopping = Instant::now();
    // SAFETY: kill(2) with the pid of a child we have not reaped, and a valid signal.
    let sent = unsafe { libc::kill(serve.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM sent");

    for (kind, clients) in [("subscriber", subscribers), ("proxied stream", proxied)] {
        for client in clients {
            let rest = client.await.expect("reader");
            assert!(
                rest.contains("server_shutdown"),
                "a {kind} was told: {rest:.300}"
            );
            assert!(
                rest.ends_with("0\r\n\r\n"),
                "a {kind}'s body ended cleanly: {rest:.300}"
            );
        }
    }
    let status = loop {
        if let Some(status) = serve.0.try_wait().expect("wait") {
            break status;
        }
        assert!(stopping.elapsed() < GRACE * 2, "weir is still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = stopping.elapsed();
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
    assert!(
        took <= GRACE + Duration::from_millis(300),
        "gone within the grace: {took:?}"
    );
}
