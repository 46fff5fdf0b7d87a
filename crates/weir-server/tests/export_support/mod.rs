//! Helpers of the export tests: a server with one `sql_export` route, raw HTTP clients,
//! bounded polling.
#![allow(dead_code)]

use std::future::Future;
use std::io::Read as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use weir_server::serve::{RunningServer, ServeConfig, Server};

/// Upper bound of every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A `weir serve` in this process with one `sql_export` route at `/export`; `extra` is
/// added to the route table as TOML lines.
pub async fn start_export(database: &str, query: &str, extra: &str) -> RunningServer {
    start_export_at("/export", database, query, extra).await
}

/// As [`start_export`], the route at `path` (metrics are per process: a test that reads
/// them needs a path of its own).
pub async fn start_export_at(
    path: &str,
    database: &str,
    query: &str,
    extra: &str,
) -> RunningServer {
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n[[route]]\nkind = \"sql_export\"\npath = \"{path}\"\n\
         database = \"{database}\"\nquery = \"\"\"{query}\"\"\"\n{extra}\n"
    );
    let config = ServeConfig::parse(&toml).expect("test config");
    Server::new(config)
        .expect("server")
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .no_gzip()
        .build()
        .expect("client")
}

/// A GET whose response the test reads itself, from a socket with a small receive
/// buffer (so that a test that stops reading stops the server soon).
pub async fn raw_get(addr: SocketAddr, path_and_query: &str, headers: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n{headers}\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// Reads until the server closes, or until an error; returns all bytes read.
pub async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0; 64 << 10];
    loop {
        match tokio::time::timeout(DEADLINE, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server neither sent nor closed for {DEADLINE:?}"),
        }
    }
}

/// Reads at least `n` bytes (the head and some body).
pub async fn read_some(tcp: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0; 16 << 10];
    while all.len() < n {
        let got = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
            .await
            .expect("the server sent nothing")
            .unwrap();
        assert!(got > 0, "the server closed after {} bytes", all.len());
        all.extend_from_slice(&buf[..got]);
    }
    all
}

/// Whether a raw HTTP/1.1 chunked response ends with its terminating zero-length chunk.
pub fn chunked_complete(raw: &[u8]) -> bool {
    raw.ends_with(b"\r\n0\r\n\r\n")
}

/// Polls `probe` until it returns `Some`, panicking after `within`.
/// A response that began as a 200 with `first_rows` in its body, then stopped without the
/// chunked encoding's last chunk: a failed export that does not look like a complete file.
pub fn assert_truncated_after(raw: &[u8], first_rows: &str) {
    let text = String::from_utf8_lossy(raw);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(text.contains(first_rows), "the first rows did not arrive");
    assert!(
        !chunked_complete(raw),
        "a failed export ended like a complete file"
    );
}

pub async fn poll_until<T, F, Fut>(within: Duration, what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out ({within:?}) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}
