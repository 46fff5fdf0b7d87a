//! `https://` upstreams: real TLS on loopback, with a CA and a server certificate made
//! at test time and a TLS terminator in front of the mock LLM.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use weir_server::serve::{ServeConfig, Server};

const KINDS: [&str; 6] = ["email", "phone", "card", "iban", "ipv4", "secret"];
const QUERY: &str = "/v1/chat/completions?tokens=300&pii=7&seed=11";

/// A test CA (PEM) and a server certificate it signed for 127.0.0.1 and localhost.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let made = common::pki::test_ca();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![made.cert], made.key)
        .expect("server TLS config");
    Pki {
        ca_pem: made.ca_pem,
        server: Arc::new(server),
    }
}

/// Terminates TLS on a loopback port and relays the plaintext to `backend`.
struct TlsFront {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsFront {
    async fn start(server: Arc<rustls::ServerConfig>, backend: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let acceptor = TlsAcceptor::from(server);
        let handshakes = Arc::new(AtomicUsize::new(0));
        let done = Arc::clone(&handshakes);
        let task = tokio::spawn(async move {
            // Dropped with the task: aborts every relay still running.
            let mut relays = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, done) = (acceptor.clone(), Arc::clone(&done));
                relays.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    done.fetch_add(1, Ordering::Relaxed);
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            addr,
            handshakes,
            task,
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("https://{}{}", self.addr, path_and_query)
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn write_ca(pki: &Pki) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &pki.ca_pem).expect("write CA");
    file
}

/// The concatenated token text of a complete OpenAI stream through the proxy at `proxy`.
async fn streamed_text(proxy: &weir_server::serve::RunningServer) -> String {
    let resp = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let (body, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    let events = parse_sse(&body);
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    openai_tokens(&events).concat()
}

#[tokio::test]
async fn a_stream_from_an_https_upstream_arrives_complete_and_redacted() {
    let pki = pki();
    let ca = write_ca(&pki);
    let mock = start().await;
    let front = TlsFront::start(Arc::clone(&pki.server), mock.local_addr()).await;
    let redact = format!("redact = {KINDS:?}");
    let over_tls = start_proxy(
        "openai",
        &front.url(QUERY),
        "",
        &format!("{redact}\nupstream_ca = {:?}", ca.path()),
    )
    .await;
    let over_http = start_proxy("openai", &mock.url(QUERY), "", &redact).await;

    let through_tls = streamed_text(&over_tls).await;
    assert!(front.handshakes() >= 1, "the stream went through TLS");
    assert_eq!(through_tls, streamed_text(&over_http).await);

    let knobs = weir_server::mock_llm::Knobs {
        pii_every: 7,
        seed: 11,
        ..Default::default()
    };
    let planted = weir_server::mock_llm::planted(&knobs, 300);
    assert!(planted.len() >= 20, "{}", planted.len());
    for p in &planted {
        assert!(!through_tls.contains(&p.value), "{p:?} leaked");
    }
    assert!(through_tls.contains("[EMAIL]"), "{through_tls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_that_offers_h2_by_alpn_carries_many_streams_on_one_connection() {
    let pki = pki();
    let ca = write_ca(&pki);
    let mock = start().await;
    let mut h2_only = (*pki.server).clone();
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    // The mock serves h2c on its port: the front relays the HTTP/2 bytes to it.
    let front = TlsFront::start(Arc::new(h2_only), mock.local_addr()).await;
    let proxy = start_proxy(
        "openai",
        &front.url("/v1/chat/completions?tokens=50&seed=4"),
        "",
        &format!("upstream_ca = {:?}\nupstream_connections = 1", ca.path()),
    )
    .await;
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let url = proxy.url("/v1/chat/completions");
        streams.spawn(async move {
            let (body, err) =
                read_all(proxy_request(&client(), &url, false).send().await.unwrap()).await;
            assert!(err.is_none(), "{err:?}");
            openai_tokens(&parse_sse(&body)).len()
        });
    }
    while let Some(tokens) = streams.join_next().await {
        assert_eq!(tokens.expect("stream"), 50);
    }
    // One connection made to learn the protocol, then every stream on it.
    assert_eq!(front.handshakes(), 1);
    assert_eq!(mock.stats().connections_accepted, 1);
}

/// Bytes in the kernel receive queues of loopback TCP sockets whose peer is `peer`,
/// from /proc/net/tcp; `None` if there is no such socket.
fn receive_queue_to(peer: SocketAddr) -> Option<u64> {
    let IpAddr::V4(ip) = peer.ip() else {
        panic!("IPv4 only: {peer}");
    };
    // The kernel prints the address as the u32 it holds in network order.
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        peer.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let queues: Vec<u64> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.get(2) == Some(&wanted.as_str())).then(|| {
                let (_, rx) = cols[4].split_once(':').expect("tx:rx");
                u64::from_str_radix(rx, 16).expect("hex queue")
            })
        })
        .collect();
    (!queues.is_empty()).then(|| queues.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_pauses_an_https_upstream_within_receive_buffer() {
    let pki = pki();
    let ca = write_ca(&pki);
    let mock = start().await;
    let front = TlsFront::start(Arc::clone(&pki.server), mock.local_addr()).await;
    let receive_buffer = 8 << 10;
    let proxy = start_proxy(
        "openai",
        &front.url("/v1/chat/completions?tokens=0&token_size=1000"),
        "",
        &format!(
            "receive_buffer = {receive_buffer}\nupstream_ca = {:?}",
            ca.path()
        ),
    )
    .await;

    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut tcp = socket.connect(proxy.local_addr()).await.expect("connect");
    let body = r#"{"model":"m","stream":true,"messages":[]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut head = [0u8; 1024];
    let n = tcp.read(&mut head).await.expect("response head");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );

    // The client reads no more: once every buffer on the way is full, the endless
    // upstream's writes block and no token gets out while it stays blocked.
    let start = Instant::now();
    let mut last = mock.stats();
    let paused = loop {
        let next = wait_for(
            || mock.stats(),
            "the upstream's writes to block",
            |s| s.time_blocked_ms > last.time_blocked_ms + 300.0,
        )
        .await;
        if next.tokens_sent == last.tokens_sent {
            break next;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "upstream never paused: {next:?}"
        );
        last = next;
    };
    assert!(paused.tokens_sent > 0, "{paused:?}");
    // weir's TLS socket to the upstream parks at most its SO_RCVBUF (doubled by Linux).
    let queued = receive_queue_to(front.addr).expect("weir's socket to the upstream");
    eprintln!(
        "upstream paused at {} tokens ({} bytes); weir's TLS socket to it holds {queued} B",
        paused.tokens_sent, paused.bytes_sent
    );
    assert!(
        queued > 0 && queued <= 2 * receive_buffer,
        "{queued} bytes queued on weir's upstream socket (receive_buffer {receive_buffer})"
    );
    // One to learn by ALPN that the upstream speaks HTTP/1.1, one for the stream.
    assert_eq!(front.handshakes(), 2);
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_a_502_before_any_stream() {
    let pki = pki();
    let mock = start().await;
    let front = TlsFront::start(Arc::clone(&pki.server), mock.local_addr()).await;
    let proxy = start_proxy("openai", &front.url(QUERY), "", "").await;

    let resp = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.expect("a JSON error");
    let error = &body["error"];
    assert_eq!(error["type"], "upstream_tls", "{body}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("certificate is not trusted") && message.contains("upstream_ca"),
        "{message}"
    );
    assert_eq!(front.handshakes(), 0);
    assert_eq!(mock.stats().requests, 0, "nothing reached the upstream");
}

#[tokio::test]
async fn an_unusable_upstream_ca_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing-ca.pem");
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "just text\n").expect("write");
    for (file, why) in [(&missing, "cannot read"), (&not_pem, "no PEM certificate")] {
        let toml = format!(
            "[[route]]\nkind = \"llm_proxy\"\npath = \"/v1/chat/completions\"\n\
             protocol = \"openai\"\nupstream = \"https://127.0.0.1:1/v1/chat/completions\"\n\
             upstream_ca = {file:?}\n"
        );
        let config_file = dir.path().join("weir.toml");
        std::fs::write(&config_file, toml).expect("write config");
        // What `weir serve` and `weir serve --check-config` both do before serving.
        let config = ServeConfig::load(&config_file).expect("the file itself parses");
        let Err(err) = Server::new(config) else {
            panic!("{} was accepted", file.display());
        };
        let err = err.to_string();
        assert!(
            err.contains(&file.display().to_string()) && err.contains(why),
            "{err}"
        );
    }
}
