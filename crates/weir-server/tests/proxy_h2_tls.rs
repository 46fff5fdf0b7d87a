//! TLS for clients (`tls_cert`, `tls_key`): HTTP/2 and HTTP/1.1 by ALPN on real TLS over
//! loopback, with a CA and a server certificate made at test time. Over HTTP/2 a stream
//! the client does not read holds a bounded number of bytes in weir while another stream
//! on the same connection completes; past `max_streams` a stream gets 503, past the
//! connection's 100 streams REFUSED_STREAM; a stop ends the streams as over HTTP/1.1; a
//! stream its client gives no window is cut off at `client_stall_timeout`;
//! WebSockets upgrade over TLS with HTTP/1.1; the official OpenAI and Anthropic SDKs
//! stream over https.

mod common;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use h2::client::SendRequest;
use h2::RecvStream;
use http_body_util::{BodyExt, Full};
use hyper::http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use weir_server::serve::{RunningServer, ServeConfig, Server};

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki() -> Pki {
    let made = common::pki::test_ca();
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    let (ca, cert, key) = (
        write("ca.pem", &made.ca_pem),
        write("cert.pem", &made.cert_pem),
        write("key.pem", &made.key_pem),
    );
    Pki { dir, ca, cert, key }
}

impl Pki {
    /// The top-level configuration lines that turn TLS on.
    fn config(&self) -> String {
        format!("tls_cert = {:?}\ntls_key = {:?}\n", self.cert, self.key)
    }

    /// A client trusting the test CA, offering `alpn`.
    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).expect("CA file") {
            roots.add(cert.expect("CA PEM")).expect("CA root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// A TLS connection to `server` that agreed on `want` by ALPN.
    async fn connect(
        &self,
        server: &RunningServer,
        alpn: &[&[u8]],
        want: &[u8],
    ) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(server.local_addr())
            .await
            .expect("connect");
        let name = ServerName::IpAddress(server.local_addr().ip().into());
        let tls = self
            .connector(alpn)
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(want), "ALPN");
        tls
    }
}

/// One `llm_proxy` route (openai) at `path` forwarding to `upstream`.
fn route(path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "\n[[route]]\nkind = \"llm_proxy\"\npath = \"{path}\"\nprotocol = \"openai\"\n\
         upstream = \"{upstream}\"\nclient_keys = [\"key-1\"]\n{extra}\n"
    )
}

/// A `weir serve` in this process over TLS with `top` at the top level and `routes`.
async fn start_tls(pki: &Pki, top: &str, routes: &str) -> RunningServer {
    let toml = format!("listen = \"127.0.0.1:0\"\n{}{top}\n{routes}", pki.config());
    Server::new(ServeConfig::parse(&toml).expect("test config"))
        .expect("server")
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind")
}

/// An HTTP/2 connection over TLS to `server` whose streams open with `stream_window`
/// bytes of window and share `connection_window`.
async fn h2_connect(
    pki: &Pki,
    server: &RunningServer,
    stream_window: u32,
    connection_window: u32,
) -> (SendRequest<Bytes>, JoinHandle<()>, usize) {
    let tls = pki.connect(server, &[b"h2", b"http/1.1"], b"h2").await;
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(stream_window)
        .initial_connection_window_size(connection_window)
        .handshake::<_, Bytes>(tls)
        .await
        .expect("h2 handshake");
    // The server's SETTINGS arrive with the first frames it sends.
    let settled = tokio::time::timeout(
        DEADLINE,
        std::future::poll_fn(|cx| {
            let _ = std::pin::Pin::new(&mut conn).poll(cx);
            if conn.max_concurrent_send_streams() < usize::MAX {
                std::task::Poll::Ready(conn.max_concurrent_send_streams())
            } else {
                std::task::Poll::Pending
            }
        }),
    )
    .await;
    let max_streams = settled.unwrap_or(usize::MAX);
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver, max_streams)
}

/// POSTs a streaming chat request on `send`; the response's head.
async fn h2_post(send: &mut SendRequest<Bytes>, url: &str) -> Response<RecvStream> {
    let mut ready = send.clone().ready().await.expect("connection open");
    let request = Request::post(url)
        .header("authorization", "Bearer key-1")
        .header("content-type", "application/json")
        .body(())
        .expect("request");
    let (response, mut body) = ready.send_request(request, false).expect("stream");
    body.send_data(Bytes::from_static(BODY.as_bytes()), true)
        .expect("request body");
    *send = ready;
    tokio::time::timeout(DEADLINE, response)
        .await
        .expect("response head in time")
        .expect("response head")
}

/// Reads `body` to its end, giving the window back as it goes.
async fn h2_read_all(body: &mut RecvStream) -> String {
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, body.data())
        .await
        .expect("body stalled")
    {
        let chunk = chunk.expect("body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text).expect("utf-8")
}

fn assert_whole_openai_stream(body: &str, tokens: usize) {
    let events = parse_sse(body);
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    assert_eq!(openai_tokens(&events).len(), tokens, "{body}");
}

#[tokio::test]
async fn proxy_h2_an_http2_client_over_tls_gets_the_whole_sse_stream() {
    let pki = pki();
    let mock = start().await;
    let server = start_tls(
        &pki,
        "",
        &route(
            CHAT,
            &mock.url("/v1/chat/completions?tokens=300&seed=5"),
            "",
        ),
    )
    .await;
    assert!(server.url(CHAT).starts_with("https://"));
    let (mut send, _driver, max_streams) = h2_connect(&pki, &server, 65_535, 65_535).await;
    assert_eq!(max_streams, 100, "SETTINGS_MAX_CONCURRENT_STREAMS");
    let resp = h2_post(&mut send, &server.url(CHAT)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = h2_read_all(&mut resp.into_body()).await;
    assert_whole_openai_stream(&body, 300);

    // The same text as over plain HTTP/1.1 from a server without TLS.
    let plain = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?tokens=300&seed=5"),
        "",
        "",
    )
    .await;
    let resp = proxy_request(&client(), &plain.url(CHAT), false)
        .send()
        .await
        .expect("request");
    let (plain_body, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        openai_tokens(&parse_sse(&body)),
        openai_tokens(&parse_sse(&plain_body))
    );
}

#[tokio::test]
async fn proxy_h2_an_http1_client_over_tls_gets_the_whole_sse_stream() {
    let pki = pki();
    let mock = start().await;
    let server = start_tls(
        &pki,
        "",
        &route(CHAT, &mock.url("/v1/chat/completions?tokens=200"), ""),
    )
    .await;
    let tls = pki.connect(&server, &[b"http/1.1"], b"http/1.1").await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let request = Request::post(CHAT)
        .header("host", "localhost")
        .header("authorization", "Bearer key-1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .expect("request");
    let resp = send.send_request(request).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), hyper::Version::HTTP_11);
    let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .expect("in time")
        .expect("body")
        .to_bytes();
    assert_whole_openai_stream(std::str::from_utf8(&body).expect("utf-8"), 200);

    // A client offering no ALPN at all is served HTTP/1.1 too.
    let tls = pki.connector(&[]).connect(
        ServerName::IpAddress(server.local_addr().ip().into()),
        TcpStream::connect(server.local_addr())
            .await
            .expect("connect"),
    );
    let tls = tls.await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let health = Request::get("/healthz")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send.send_request(health).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Bytes of one upstream event of [`EndlessUpstream`].
const EVENT_LEN: usize = 1000;

/// An OpenAI upstream on loopback streaming numbered events without end, counting the
/// events its socket took; its kernel send buffer is small, so it stops soon when weir
/// stops reading.
struct EndlessUpstream {
    addr: SocketAddr,
    written: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl EndlessUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let written = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&written);
        let task = tokio::spawn(async move {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(4096);
            // The request: its head, then as many body bytes as it says.
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let body_start = loop {
                let Ok(n) = tcp.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&buf[..n]);
                if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            let head = String::from_utf8_lossy(&request[..body_start]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while request.len() < body_start + length {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for i in 0u64.. {
                let event = numbered_event(i);
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if tcp.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        EndlessUpstream {
            addr,
            written,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}{CHAT}", self.addr)
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl Drop for EndlessUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Event `i`: its number first in the token text, padded to [`EVENT_LEN`] bytes.
fn numbered_event(i: u64) -> String {
    let head = format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\
         \"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"#{i:08} "
    );
    let tail = "\"},\"finish_reason\":null}]}\n\n";
    let pad = EVENT_LEN - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad))
}

/// The number of the last whole event in `text`, if any.
fn last_event_number(text: &str) -> Option<u64> {
    let whole = &text[..text.rfind("\n\n")?];
    let at = whole.rfind("\"content\":\"#")? + "\"content\":\"#".len();
    whole.get(at..at + 8)?.parse().ok()
}

/// Bytes in the kernel queues (send and receive) of every loopback TCP socket with an
/// end at `addr`, from /proc/net/tcp.
fn kernel_queues(addr: SocketAddr) -> u64 {
    let IpAddr::V4(ip) = addr.ip() else {
        panic!("IPv4 only: {addr}");
    };
    // The kernel prints the address as the u32 it holds in network order.
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.get(1) == Some(&wanted.as_str()) || cols.get(2) == Some(&wanted.as_str())).then(
                || {
                    let (tx, rx) = cols[4].split_once(':').expect("tx:rx");
                    u64::from_str_radix(tx, 16).expect("hex")
                        + u64::from_str_radix(rx, 16).expect("hex")
                },
            )
        })
        .sum()
}

/// Waits until the upstream has taken no event for 500 ms; its count then.
async fn upstream_paused(upstream: &EndlessUpstream) -> u64 {
    let start = Instant::now();
    let mut last = upstream.written();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = upstream.written();
        if now == last && now > 0 {
            return now;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the upstream never paused: {now} events taken"
        );
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_h2_an_unread_stream_holds_bounded_bytes_while_another_on_the_connection_completes() {
    const STREAM_WINDOW: u32 = 16 * 1024;
    const RECEIVE_BUFFER: u64 = 8 * 1024;
    let pki = pki();
    let endless = EndlessUpstream::start().await;
    let mock = start().await;
    let limits = format!("receive_buffer = {RECEIVE_BUFFER}");
    let routes = route("/endless", &endless.url(), &limits)
        + &route(CHAT, &mock.url("/v1/chat/completions?tokens=2000"), "");
    let server = start_tls(&pki, "", &routes).await;
    // A small window per stream, room on the connection for both.
    let (mut send, _driver, _) = h2_connect(&pki, &server, STREAM_WINDOW, 1 << 20).await;

    let unread = h2_post(&mut send, &server.url("/endless")).await;
    assert_eq!(unread.status(), StatusCode::OK);
    let mut unread = unread.into_body();
    let taken = upstream_paused(&endless).await;

    // The other stream on the same connection flows to its end meanwhile.
    let other = h2_post(&mut send, &server.url(CHAT)).await;
    assert_eq!(other.status(), StatusCode::OK);
    let body = h2_read_all(&mut other.into_body()).await;
    assert_whole_openai_stream(&body, 2000);
    assert_eq!(endless.written(), taken, "the unread stream stayed paused");

    // What reached the client of the unread stream: read, but the window not given back.
    let mut received = String::new();
    while let Ok(Some(chunk)) =
        tokio::time::timeout(Duration::from_millis(300), unread.data()).await
    {
        received.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    assert!(
        received.len() <= STREAM_WINDOW as usize,
        "{} bytes past a {STREAM_WINDOW}-byte window",
        received.len()
    );
    let delivered = last_event_number(&received).map_or(0, |n| n + 1);
    let in_kernels = kernel_queues(endless.addr) + kernel_queues(server.local_addr());
    let in_flight = (taken - delivered) * EVENT_LEN as u64;
    let held = in_flight.saturating_sub(in_kernels);
    // Once the window is spent the body is not polled: weir holds what hyper's HTTP/2 send
    // buffer took (8 KiB) and at most one upstream read (what the upstream socket's
    // receive buffer, doubled by Linux, had queued), give or take an event at each end.
    let bound = 8 * 1024 + 2 * RECEIVE_BUFFER + 2 * EVENT_LEN as u64;
    eprintln!(
        "upstream took {taken} events; the client got {delivered} ({} B); \
         {in_kernels} B in kernel queues; weir holds about {held} B (bound {bound} B)",
        received.len()
    );
    assert!(
        held <= bound,
        "weir holds {held} B for an unread stream (bound {bound} B)"
    );

    // Given its window back, the stream resumes where it stopped.
    let _ = unread.flow_control().release_capacity(received.len());
    let mut more = String::new();
    while last_event_number(&more).is_none_or(|n| n < taken + 10) {
        let chunk = tokio::time::timeout(DEADLINE, unread.data())
            .await
            .expect("the stream resumes")
            .unwrap_or_else(|| panic!("ended after {received}{more}"))
            .expect("chunk");
        let _ = unread.flow_control().release_capacity(chunk.len());
        more.push_str(&String::from_utf8_lossy(&chunk));
    }
    let resumed = format!("{received}{more}");
    let events = parse_sse(&resumed[..resumed.rfind("\n\n").expect("events") + 2]);
    for (i, event) in events.iter().enumerate() {
        assert!(
            event.data.contains(&format!("\"#{i:08} ")),
            "event {i} out of order"
        );
    }
}

#[tokio::test]
async fn proxy_h2_streams_past_max_streams_on_one_connection_get_503() {
    let pki = pki();
    let mock = start().await;
    let server = start_tls(
        &pki,
        "max_streams = 2",
        &route(CHAT, &mock.url("/v1/chat/completions?tokens=0&rate=20"), ""),
    )
    .await;
    let (mut send, _driver, _) = h2_connect(&pki, &server, 65_535, 1 << 20).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let resp = h2_post(&mut send, &server.url(CHAT)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        open.push(resp.into_body());
    }
    for _ in 0..8 {
        let resp = h2_post(&mut send, &server.url(CHAT)).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key("retry-after"));
        let body = h2_read_all(&mut resp.into_body()).await;
        assert!(body.contains("error"), "{body}");
    }
    assert_eq!(server.admission().open_streams(), 2);
    // The admitted streams still flow.
    for body in &mut open {
        let chunk = tokio::time::timeout(DEADLINE, body.data())
            .await
            .expect("in time")
            .expect("open")
            .expect("chunk");
        assert!(!chunk.is_empty());
    }
    drop(open);
    let start = Instant::now();
    while server.admission().open_streams() > 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "reset streams released their slots"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_h2_a_stop_ends_http2_streams_as_over_http1_within_the_grace() {
    let pki = pki();
    let mock = start().await;
    let routes = route(CHAT, &mock.url("/v1/chat/completions?tokens=0&rate=20"), "")
        + &route(
            "/short",
            &mock.url("/v1/chat/completions?tokens=5&rate=10"),
            "",
        );
    let server = start_tls(&pki, "shutdown_grace = \"2s\"", &routes).await;
    let (mut send, driver, _) = h2_connect(&pki, &server, 65_535, 1 << 20).await;
    let mut long = h2_post(&mut send, &server.url(CHAT)).await.into_body();
    let first = tokio::time::timeout(DEADLINE, long.data())
        .await
        .expect("in time")
        .expect("open")
        .expect("chunk");
    let short = h2_post(&mut send, &server.url("/short")).await;
    assert_eq!(short.status(), StatusCode::OK);
    let admission = server.admission().clone();
    let stopping = Instant::now();
    let stopped = tokio::spawn(server.stop());

    let body = h2_read_all(&mut short.into_body()).await;
    assert_whole_openai_stream(&body, 5);
    let rest = h2_read_all(&mut long).await;
    let text = format!("{}{rest}", String::from_utf8_lossy(&first));
    let last = parse_sse(&text).last().expect("events").json();
    assert_eq!(last["error"]["code"], "server_shutdown", "{last}");

    stopped.await.expect("stopped");
    let took = stopping.elapsed();
    assert!(
        took <= Duration::from_millis(2_300),
        "gone within the grace: {took:?}"
    );
    assert_eq!(admission.open_streams(), 0);
    // GOAWAY, then the connection closed: the client's connection task ends.
    tokio::time::timeout(DEADLINE, driver)
        .await
        .expect("the connection closed")
        .expect("driver");
}

#[tokio::test]
async fn proxy_h2_silent_clients_are_dropped_after_header_timeout_without_holding_up_others() {
    let pki = pki();
    let mock = start().await;
    let server = start_tls(
        &pki,
        "header_timeout = \"500ms\"",
        &route(CHAT, &mock.url("/v1/chat/completions?tokens=3"), ""),
    )
    .await;
    // Connects and never starts the handshake.
    let mut silent = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    // Speaks HTTP/2 and never opens a stream.
    let (_idle, idle_driver, _) = h2_connect(&pki, &server, 65_535, 65_535).await;
    let (mut send, _driver, _) = h2_connect(&pki, &server, 65_535, 65_535).await;
    let resp = h2_post(&mut send, &server.url(CHAT)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_whole_openai_stream(&h2_read_all(&mut resp.into_body()).await, 3);
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut byte))
        .await
        .expect("closed within header_timeout");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    tokio::time::timeout(Duration::from_secs(3), idle_driver)
        .await
        .expect("a connection that opens no stream is closed after header_timeout")
        .expect("driver");
}

#[test]
fn proxy_h2_tls_cert_and_key_come_together_and_bad_files_are_named() {
    let pki = pki();
    let routes = route(CHAT, "http://127.0.0.1:1/v1/chat/completions", "");
    let only_cert = format!("tls_cert = {:?}\n{routes}", pki.cert);
    let err = ServeConfig::parse(&only_cert).unwrap_err().to_string();
    assert!(err.contains("tls_cert is set without tls_key"), "{err}");
    let only_key = format!("tls_key = {:?}\n{routes}", pki.key);
    let err = ServeConfig::parse(&only_key).unwrap_err().to_string();
    assert!(err.contains("tls_key is set without tls_cert"), "{err}");

    // The files are read where `weir serve` (and --check-config) builds the server.
    let missing = pki.dir.path().join("missing.pem");
    let other = pki.dir.path().join("other-key.pem");
    std::fs::write(
        &other,
        rcgen::KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    for (cert, key, named, why) in [
        (&missing, &pki.key, &missing, "cannot read"),
        (&pki.cert, &pki.ca, &pki.ca, "no private key"),
        (&pki.key, &pki.key, &pki.key, "no PEM certificate"),
        (&pki.cert, &other, &other, "not the key of the certificate"),
    ] {
        let toml = format!("tls_cert = {cert:?}\ntls_key = {key:?}\n{routes}");
        let config = ServeConfig::parse(&toml).expect("the file itself parses");
        let Err(err) = Server::new(config) else {
            panic!("{} / {} accepted", cert.display(), key.display());
        };
        let err = err.to_string();
        assert!(
            err.contains(&named.display().to_string()) && err.contains(why),
            "{err}"
        );
    }
}

/// Whether python3 has the official SDKs (`scripts/test` installs them); without them
/// the test fails, unless `WEIR_SKIP_SDK=1` says to skip it (loudly).
fn sdks_available() -> bool {
    let found = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u, sys; \
             sys.exit(not all(u.find_spec(m) for m in ('openai', 'anthropic')))",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var("WEIR_SKIP_SDK").as_deref() == Ok("1") {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n******** SKIPPED: python3 with the openai and anthropic packages is missing \
             and WEIR_SKIP_SDK=1 ********\n"
        );
        return false;
    }
    assert!(
        found,
        "python3 with the openai and anthropic packages (tests/sdk/requirements.txt) is \
         missing: scripts/test installs them; set WEIR_SKIP_SDK=1 to skip this test"
    );
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_h2_the_official_sdks_stream_through_weir_over_https() {
    if !sdks_available() {
        return;
    }
    const KNOBS: &str = "tokens=50&seed=3";
    let pki = pki();
    let mock = start().await;
    let mut routes = route(CHAT, &mock.url(&format!("{CHAT}?{KNOBS}")), "");
    routes.push_str(
        &route(
            "/v1/messages",
            &mock.url(&format!("/v1/messages?{KNOBS}")),
            "",
        )
        .replace("\"openai\"", "\"anthropic\""),
    );
    let server = start_tls(&pki, "", &routes).await;
    let script_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk");
    let mut python = std::process::Command::new("python3");
    python
        .arg("tls_sdk.py")
        .current_dir(script_dir)
        .env("WEIR_URL", server.url(""))
        .env("MOCK_URL", mock.url(""))
        .env("WEIR_KEY", "key-1")
        .env("WEIR_KNOBS", KNOBS)
        .env("WEIR_FAULT_AFTER", "10")
        .env("WEIR_CA", &pki.ca)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    // The SDKs' timeouts (30 s a call, no retries) bound the script.
    let out = tokio::task::spawn_blocking(move || python.output())
        .await
        .expect("joined")
        .expect("python3 runs");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "tls_sdk.py failed ({}):\n{output}",
        out.status
    );
    eprintln!("tls_sdk.py passed:\n{output}");
}

#[tokio::test]
async fn proxy_h2_streams_past_the_connection_limit_are_refused_with_refused_stream() {
    const SENT: usize = 110;
    let pki = pki();
    let server = start_tls(
        &pki,
        "",
        &route(CHAT, "http://127.0.0.1:1/v1/chat/completions", ""),
    )
    .await;
    let tls = pki.connect(&server, &[b"h2"], b"h2").await;
    let (mut send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    // Opened before the server's SETTINGS are read, as a client ignoring them would: each
    // stream's request body is left open, so that every stream stays open in weir.
    let mut responses = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..SENT {
        let request = Request::post(server.url(CHAT))
            .header("authorization", "Bearer key-1")
            .body(())
            .expect("request");
        let (response, body) = send.send_request(request, false).expect("stream");
        responses.push(response);
        bodies.push(body);
    }
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    // The first 100 wait for their bodies; the rest are refused at once.
    let mut refused = 0;
    for response in responses.drain(100..) {
        let err = tokio::time::timeout(DEADLINE, response)
            .await
            .expect("refused in time")
            .expect_err("past the connection's streams");
        assert_eq!(err.reason(), Some(h2::Reason::REFUSED_STREAM), "{err}");
        refused += 1;
    }
    assert_eq!(refused, SENT - 100);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut responses[99])
            .await
            .is_err(),
        "the 100th stream is open, waiting for its request body"
    );
    // The connection itself stays up: a stream opened once some are free is answered.
    drop(responses);
    drop(bodies);
    let health = Request::get(server.url("/healthz"))
        .body(())
        .expect("request");
    let mut send = send.ready().await.expect("connection up");
    let (response, _) = send.send_request(health, true).expect("stream");
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("in time")
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    driver.abort();
}

/// An I/O object whose reads stop for good once `paused` is set: a client that stops
/// reading its socket.
struct Pausable<T> {
    inner: T,
    paused: Arc<AtomicBool>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Pausable<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.paused.load(Ordering::Relaxed) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Pausable<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_h2_a_client_with_a_huge_window_that_stops_reading_its_socket_holds_bounded_bytes() {
    const RECEIVE_BUFFER: u64 = 8 * 1024;
    let pki = pki();
    let endless = EndlessUpstream::start().await;
    let routes = route(
        "/endless",
        &endless.url(),
        &format!("receive_buffer = {RECEIVE_BUFFER}"),
    );
    let server = start_tls(&pki, "send_buffer = \"16KiB\"", &routes).await;

    // The windows let weir send a mebibyte; the socket is what stops it.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let tcp = socket.connect(server.local_addr()).await.expect("connect");
    let paused = Arc::new(AtomicBool::new(false));
    let tcp = Pausable {
        inner: tcp,
        paused: Arc::clone(&paused),
    };
    let tls = pki
        .connector(&[b"h2"])
        .connect(ServerName::IpAddress(server.local_addr().ip().into()), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(tls)
        .await
        .expect("h2 handshake");
    let _driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = h2_post(&mut send, &server.url("/endless")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(DEADLINE, body.data())
        .await
        .expect("in time")
        .expect("open")
        .expect("chunk");
    paused.store(true, Ordering::Relaxed);
    let taken = upstream_paused(&endless).await;

    // What the client took before it stopped, its buffered frames included.
    let mut received = String::from_utf8_lossy(&first).into_owned();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_millis(300), body.data()).await
    {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let delivered = last_event_number(&received).map_or(0, |n| n + 1);
    let in_kernels = kernel_queues(endless.addr) + kernel_queues(server.local_addr());
    let in_flight = (taken - delivered) * EVENT_LEN as u64;
    let held = in_flight.saturating_sub(in_kernels);
    // hyper's HTTP/2 send buffer for the stream (8 KiB) and its frame being written (16
    // KiB), one TLS record in rustls, one upstream read (the upstream socket's receive
    // buffer, doubled by Linux) and the client's own unread TLS read (16 KiB), an event
    // at each end. hyper's default send buffer (400 KiB) would be far past it.
    let bound = 8 * 1024
        + 16 * 1024
        + (16 * 1024 + 256)
        + 2 * RECEIVE_BUFFER
        + 16 * 1024
        + 2 * EVENT_LEN as u64;
    eprintln!(
        "upstream took {taken} events; the client got {delivered}; {in_kernels} B in kernel \
         queues; weir holds about {held} B (bound {bound} B)"
    );
    assert!(
        held <= bound,
        "weir holds {held} B for a client that stopped reading (bound {bound} B)"
    );
}

#[tokio::test]
async fn proxy_h2_websockets_work_over_tls_with_http1_and_publishes_over_http2() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let pki = pki();
    let server = start_tls(&pki, "", "[[route]]\nkind = \"topic\"\npath = \"/t\"\n").await;
    let tls = pki.connect(&server, &[b"http/1.1"], b"http/1.1").await;
    let (mut ws, answer) = tokio_tungstenite::client_async("wss://localhost/t", tls)
        .await
        .expect("upgrade over TLS");
    assert_eq!(answer.status(), StatusCode::SWITCHING_PROTOCOLS);

    let (send, _driver, _) = h2_connect(&pki, &server, 65_535, 65_535).await;
    let mut send = send.ready().await.expect("connection open");
    let request = Request::post(server.url("/t")).body(()).expect("request");
    let (response, mut body) = send.send_request(request, false).expect("stream");
    body.send_data(Bytes::from_static(b"{\"n\":1}\n"), true)
        .expect("body");
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("in time")
        .expect("published");
    assert_eq!(response.status(), StatusCode::OK);

    let text = loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = frame {
            break t.to_string();
        }
    };
    assert_eq!(text, "{\"n\":1}");
}

/// A stream its client gives no window is cut off at `client_stall_timeout`, as a client
/// that reads nothing is over HTTP/1.1: over HTTP/2 nothing is sent, so its socket never
/// fills. Its slot is let go; the connection and its other streams go on; once the client
/// gives the stream window, it is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_h2_a_stream_given_no_window_is_cut_off_at_the_stall_timeout() {
    let pki = pki();
    let mock = start().await;
    let upstream = mock.url("/v1/chat/completions?tokens=0&rate=50");
    let server = start_tls(
        &pki,
        "",
        &route(CHAT, &upstream, "client_stall_timeout = \"1s\""),
    )
    .await;
    let tls = pki.connect(&server, &[b"h2", b"http/1.1"], b"h2").await;
    let (mut send, mut conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls)
        .await
        .expect("h2 handshake");
    // The connection's task, which gives every stream a window when told to.
    let (open, opened) = tokio::sync::oneshot::channel::<u32>();
    let mut opened = Some(opened);
    let driver = tokio::spawn(std::future::poll_fn(move |cx| {
        if let Some(told) = opened.as_mut() {
            if let std::task::Poll::Ready(window) = std::pin::Pin::new(told).poll(cx) {
                opened = None;
                conn.set_initial_window_size(window.expect("told"))
                    .expect("SETTINGS");
            }
        }
        std::pin::Pin::new(&mut conn).poll(cx)
    }));
    let response = h2_post(&mut send, &server.url(CHAT)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.admission().open_streams(), 1);
    let started = Instant::now();
    while server.admission().open_streams() > 0 {
        assert!(started.elapsed() < DEADLINE, "the stream kept its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "cut off before the stall timeout: {waited:?}"
    );
    // A response's head needs no window: the connection still serves a new stream.
    let next = tokio::time::timeout(DEADLINE, h2_post(&mut send, &server.url(CHAT)))
        .await
        .expect("the connection took no new stream");
    assert_eq!(next.status(), StatusCode::OK);
    assert!(!driver.is_finished(), "the connection was closed");
    open.send(65_535).expect("the connection's task");
    let mut body = response.into_body();
    let read = tokio::time::timeout(DEADLINE, body.data())
        .await
        .expect("the cut stream was not reset once it had window");
    let err = read.expect("an end").expect_err("data from a cut stream");
    assert_eq!(err.reason(), Some(h2::Reason::INTERNAL_ERROR), "{err}");
}
