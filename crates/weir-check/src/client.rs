//! One deliberately slow client: a small receive buffer set before connecting, a plain
//! HTTP/1.1 request, then the body read at a fixed pace (or not at all).
//!
//! Hand-written rather than an HTTP client library: the point is control over the socket
//! (SO_RCVBUF before the handshake, how many bytes each read may take), and the body is
//! only counted, so chunked or SSE framing need no decoding.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// The most a response head may take before the client gives up on it.
const MAX_HEAD: usize = 64 << 10;
/// How often a client takes its share of bytes.
const READ_TICK: Duration = Duration::from_millis(100);

/// What every client sends and how it reads.
#[derive(Debug)]
pub struct ClientPlan {
    pub addr: SocketAddr,
    /// The whole request: head and body.
    pub request: Vec<u8>,
    /// Body bytes per second; 0 reads the response head and nothing after it.
    pub read_rate: u64,
    /// SO_RCVBUF, set before connecting so the window the server sees starts small.
    pub recv_buffer: u32,
    pub connect_timeout: Duration,
}

/// Counters all clients add to, for the progress line.
#[derive(Debug, Default)]
pub struct LiveCounts {
    /// Clients past a 2xx response head and not finished.
    pub streaming: AtomicU64,
    /// Body bytes received by all clients.
    pub bytes: AtomicU64,
    /// Clients that finished before the run did (refused, error status, stream ended).
    pub finished: AtomicU64,
}

/// Why a client got no response, or lost it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("creating a socket: {0}")]
    Socket(std::io::Error),
    #[error("setting SO_RCVBUF: {0}")]
    RecvBuffer(std::io::Error),
    #[error("connecting to {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("connecting to {addr}: no answer in {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("sending the request: {0}")]
    Send(std::io::Error),
    #[error("reading the response head: {0}")]
    ReadHead(std::io::Error),
    #[error("the server closed the connection without a response")]
    ClosedBeforeResponse,
    #[error("the server closed the connection inside the response head")]
    ClosedInHead,
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed status line `{0}`")]
    MalformedStatus(String),
    #[error("not an HTTP/1.x response: `{0}`")]
    NotHttp1(String),
    #[error("reading the body: {0}")]
    ReadBody(std::io::Error),
}

/// How one client's run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum ClientEnd {
    /// Still streaming when the run ended: the load the check wants.
    Streaming { bytes: u64 },
    /// The server finished or closed the body before the run ended.
    EndedEarly { bytes: u64, after_ms: u64 },
    /// The response status was not 2xx.
    Status { code: u16 },
    /// No response: connection refused, reset, timeout, malformed head.
    Failed { error: String },
}

impl ClientEnd {
    pub fn bytes(&self) -> u64 {
        match self {
            ClientEnd::Streaming { bytes } | ClientEnd::EndedEarly { bytes, .. } => *bytes,
            ClientEnd::Status { .. } | ClientEnd::Failed { .. } => 0,
        }
    }
}

/// Where one client has got to, readable when the run cancels it mid-await.
#[derive(Default)]
struct Tally {
    bytes: AtomicU64,
    streaming: AtomicBool,
}

/// Runs one client until its stream fails or ends, or `stop` is cancelled; the socket
/// is closed when this returns.
pub async fn slow_client(
    plan: Arc<ClientPlan>,
    live: Arc<LiveCounts>,
    stop: CancellationToken,
) -> ClientEnd {
    let tally = Tally::default();
    let end = tokio::select! {
        end = stream(&plan, &live, &tally) => end,
        () = stop.cancelled() => {
            if tally.streaming.load(Ordering::Relaxed) {
                ClientEnd::Streaming { bytes: tally.bytes.load(Ordering::Relaxed) }
            } else {
                ClientEnd::Failed { error: "no response head before the run ended".into() }
            }
        }
    };
    if tally.streaming.load(Ordering::Relaxed) {
        live.streaming.fetch_sub(1, Ordering::Relaxed);
    }
    if !matches!(end, ClientEnd::Streaming { .. }) {
        live.finished.fetch_add(1, Ordering::Relaxed);
    }
    end
}

async fn stream(plan: &ClientPlan, live: &LiveCounts, tally: &Tally) -> ClientEnd {
    let started = Instant::now();
    let failed = |e: ClientError| ClientEnd::Failed {
        error: e.to_string(),
    };
    let mut tcp = match connect(plan).await {
        Ok(tcp) => tcp,
        Err(e) => return failed(e),
    };
    if let Err(e) = tcp.write_all(&plan.request).await {
        return failed(ClientError::Send(e));
    }
    let (code, early_body) = match read_head(&mut tcp).await {
        Ok(head) => head,
        Err(e) => return failed(e),
    };
    if !(200..300).contains(&code) {
        return ClientEnd::Status { code };
    }
    let count = |n: usize| {
        tally.bytes.fetch_add(n as u64, Ordering::Relaxed);
        live.bytes.fetch_add(n as u64, Ordering::Relaxed);
    };
    count(early_body);
    tally.streaming.store(true, Ordering::Relaxed);
    live.streaming.fetch_add(1, Ordering::Relaxed);
    if plan.read_rate == 0 {
        // Headers read, body never: the server meets a window that never opens.
        return std::future::pending().await;
    }
    let rate = plan.read_rate as f64;
    let mut buf = vec![0u8; plan.read_rate.clamp(1, 64 << 10) as usize];
    let mut allowance = 0.0f64;
    let mut last = Instant::now();
    let mut ticker = tokio::time::interval(READ_TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        // At most one second's worth saved up: a stalled read does not turn into a burst.
        allowance = (allowance + rate * (now - last).as_secs_f64()).min(rate.max(1.0));
        last = now;
        let want = (allowance as usize).min(buf.len());
        if want == 0 {
            continue;
        }
        match tcp.try_read(&mut buf[..want]) {
            Ok(0) => {
                return ClientEnd::EndedEarly {
                    bytes: tally.bytes.load(Ordering::Relaxed),
                    after_ms: started.elapsed().as_millis() as u64,
                }
            }
            Ok(n) => {
                allowance -= n as f64;
                count(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return failed(ClientError::ReadBody(e)),
        }
    }
}

async fn connect(plan: &ClientPlan) -> Result<TcpStream, ClientError> {
    let socket = if plan.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(ClientError::Socket)?;
    socket
        .set_recv_buffer_size(plan.recv_buffer)
        .map_err(ClientError::RecvBuffer)?;
    match tokio::time::timeout(plan.connect_timeout, socket.connect(plan.addr)).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(error)) => Err(ClientError::Connect {
            addr: plan.addr,
            error,
        }),
        Err(_) => Err(ClientError::ConnectTimeout {
            addr: plan.addr,
            timeout: plan.connect_timeout,
        }),
    }
}

/// Reads the response head; returns the status code and how many body bytes came with it.
async fn read_head(tcp: &mut TcpStream) -> Result<(u16, usize), ClientError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp.read(&mut chunk).await.map_err(ClientError::ReadHead)?;
        if n == 0 {
            return Err(if head.is_empty() {
                ClientError::ClosedBeforeResponse
            } else {
                ClientError::ClosedInHead
            });
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_blank_line(&head[searched_from..]) {
            let end = searched_from + end;
            return Ok((status_code(&head)?, head.len() - end));
        }
        if head.len() > MAX_HEAD {
            return Err(ClientError::HeadTooLarge);
        }
    }
}

/// The index just past the `\r\n\r\n` ending a response head.
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

fn status_code(head: &[u8]) -> Result<u16, ClientError> {
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end.min(200)]).into_owned();
    let mut words = line.split(' ');
    match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => {
            code.parse().map_err(|_| ClientError::MalformedStatus(line))
        }
        _ => Err(ClientError::NotHttp1(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn plan(addr: SocketAddr, read_rate: u64) -> Arc<ClientPlan> {
        Arc::new(ClientPlan {
            addr,
            request: b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            read_rate,
            recv_buffer: 4096,
            connect_timeout: Duration::from_secs(5),
        })
    }

    /// A server that answers one request with `head` then `body`, then closes or holds.
    async fn serve_once(head: &'static str, body: Vec<u8>, hold: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = tcp.read(&mut request).await;
            tcp.write_all(head.as_bytes()).await.unwrap();
            tcp.write_all(&body).await.unwrap();
            if hold {
                let _ = tcp.read(&mut request).await;
            }
        });
        addr
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(status_code(b"HTTP/1.1 404 Not Found\r\n").unwrap(), 404);
        assert_eq!(status_code(b"HTTP/1.0 200\r\n").unwrap(), 200);
        assert!(status_code(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(status_code(b"HTTP/1.1 abc\r\n").is_err());
        assert_eq!(find_blank_line(b"HTTP/1.1 200\r\n\r\nbody"), Some(16));
    }

    #[tokio::test]
    async fn a_404_is_reported_as_its_status() {
        let addr = serve_once(
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            vec![],
            false,
        )
        .await;
        let live = Arc::new(LiveCounts::default());
        let end = slow_client(plan(addr, 1024), live.clone(), CancellationToken::new()).await;
        assert_eq!(end, ClientEnd::Status { code: 404 });
        assert_eq!(live.finished.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_body_that_ends_is_an_early_end_with_every_byte_counted() {
        let body = vec![b'x'; 3000];
        let addr = serve_once("HTTP/1.1 200 OK\r\n\r\n", body, false).await;
        let live = Arc::new(LiveCounts::default());
        let end = slow_client(plan(addr, 64 << 10), live.clone(), CancellationToken::new()).await;
        assert!(
            matches!(end, ClientEnd::EndedEarly { bytes: 3000, .. }),
            "{end:?}"
        );
        assert_eq!(live.bytes.load(Ordering::Relaxed), 3000);
        assert_eq!(live.streaming.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_failure_naming_the_address() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let live = Arc::new(LiveCounts::default());
        let end = slow_client(plan(addr, 1024), live, CancellationToken::new()).await;
        match end {
            ClientEnd::Failed { error } => assert!(error.contains(&addr.to_string()), "{error}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_zero_rate_reads_the_head_and_nothing_after() {
        let body = vec![b'x'; 1 << 20];
        let addr = serve_once("HTTP/1.1 200 OK\r\n\r\n", body, true).await;
        let live = Arc::new(LiveCounts::default());
        let stop = CancellationToken::new();
        let client = tokio::spawn(slow_client(plan(addr, 0), live.clone(), stop.clone()));
        while live.streaming.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let with_the_head = live.bytes.load(Ordering::Relaxed);
        // Long enough for a paced reader to have taken several reads.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        let end = client.await.unwrap();
        assert_eq!(
            end,
            ClientEnd::Streaming {
                bytes: with_the_head
            }
        );
        assert!(
            with_the_head < 1024,
            "{with_the_head} body bytes with the head"
        );
    }

    #[tokio::test]
    async fn reads_keep_to_the_rate_and_a_stop_leaves_the_client_streaming() {
        let body = vec![b'x'; 1 << 20];
        let addr = serve_once("HTTP/1.1 200 OK\r\n\r\n", body, true).await;
        let live = Arc::new(LiveCounts::default());
        let stop = CancellationToken::new();
        let client = tokio::spawn(slow_client(plan(addr, 2000), live.clone(), stop.clone()));
        let started = Instant::now();
        while live.bytes.load(Ordering::Relaxed) < 3000 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        stop.cancel();
        let end = client.await.unwrap();
        let ClientEnd::Streaming { bytes } = end else {
            panic!("{end:?}");
        };
        // The head's own read may bring up to 1 KiB of body; the rest comes at 2000 B/s.
        assert!(
            bytes <= 1024 + (2000.0 * (elapsed + 0.3)) as u64,
            "{bytes} in {elapsed} s"
        );
        assert!(elapsed >= 0.9, "3000 bytes at 2000 B/s came in {elapsed} s");
    }
}
