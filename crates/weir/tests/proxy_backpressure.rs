//! Pull, don't push: clients that stop reading stop weir reading the upstream, the mock
//! upstream sees its writes block, and weir's RSS stays flat.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use weir_server::mock_llm::{MockLlm, MockLlmConfig, RunningMockLlm};

const CLIENTS: usize = 20;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The kernel queues of the connected TCP sockets `pid` holds: (local port, send queue,
/// receive queue, remote port).
fn socket_queues(pid: u32) -> Vec<(u16, u64, u64, u16)> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // State 01: established.
            if cols.len() > 9 && cols[3] == "01" && inodes.contains(cols[9]) {
                let port = |col: &str| u16::from_str_radix(col.rsplit_once(':').unwrap().1, 16);
                let (t, r) = cols[4].split_once(':').unwrap();
                sockets.push((
                    port(cols[1]).unwrap(),
                    u64::from_str_radix(t, 16).unwrap(),
                    u64::from_str_radix(r, 16).unwrap(),
                    port(cols[2]).unwrap(),
                ));
            }
        }
    }
    sockets
}

/// Total bytes in the send and in the receive queues of `pid`'s TCP sockets.
fn queue_totals(pid: u32) -> (u64, u64) {
    socket_queues(pid)
        .iter()
        .fold((0, 0), |(tx, rx), s| (tx + s.1, rx + s.2))
}

async fn start_weir(upstream: &str, dir: &std::path::Path) -> (Serve, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.join("weir.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        "listen = \"{addr}\"\nsend_buffer = \"64KiB\"\n[[route]]\nkind = \"llm_proxy\"\n\
         path = \"/v1/chat/completions\"\nprotocol = \"openai\"\nupstream = \"{upstream}\"\n\
         receive_buffer = \"64KiB\"\nclient_stall_timeout = \"10m\"\n"
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .spawn()
        .unwrap();
    let serve = Serve(child);
    let started = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "weir serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (serve, addr)
}

/// A connection that has asked for a stream; with a small receive window if
/// `recv_buffer` is set, else with the kernel's default.
async fn ask_for_a_stream(addr: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut tcp = socket.connect(addr).await.unwrap();
    let body = r#"{"model":"m","stream":true,"messages":[]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// A client that reads the headers and a little, then stops.
async fn stalled_client(addr: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let mut tcp = ask_for_a_stream(addr, recv_buffer).await;
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    tcp
}

/// The mock sending `tokens` 16-byte tokens (0: without end) as fast as it can, and weir in
/// front of it.
async fn weir_before_the_mock(
    tokens: u32,
) -> (RunningMockLlm, tempfile::TempDir, Serve, SocketAddr) {
    let mock = MockLlm::bind("127.0.0.1:0".parse().unwrap(), MockLlmConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let upstream = mock.url(&format!(
        "/v1/chat/completions?tokens={tokens}&rate=0&token_size=16"
    ));
    let (serve, addr) = start_weir(&upstream, dir.path()).await;
    (mock, dir, serve, addr)
}

/// Kernel buffers along the way fill, then the mock's writes block: waits for that.
async fn until_upstream_pauses(mock: &RunningMockLlm) {
    let settle = Instant::now();
    let mut last = mock.stats().tokens_sent;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = mock.stats().tokens_sent;
        if now == last {
            return;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(20),
            "upstream never paused: {now} tokens"
        );
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_pause_the_upstream_and_rss_stays_flat() {
    let (mock, _dir, serve, addr) = weir_before_the_mock(0).await;
    let pid = serve.0.id();
    // RSS with one stream open: what the first request sets up once is not per stream.
    let mut clients = vec![stalled_client(addr, Some(4096)).await];
    let rss_one = rss_kib(pid);
    for _ in 1..CLIENTS {
        clients.push(stalled_client(addr, Some(4096)).await);
    }
    until_upstream_pauses(&mock).await;
    let paused = mock.stats();
    let rss_before = rss_kib(pid);
    let mut rss_peak = rss_before;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_peak = rss_peak.max(rss_kib(pid));
    }
    let later = mock.stats();
    let (send_q, recv_q) = queue_totals(pid);
    eprintln!(
        "upstream paused at {} tokens ({} bytes) for {CLIENTS} clients; weir RSS with one stream {rss_one}, {rss_before} -> peak {rss_peak} KiB; \
         weir's sockets hold {send_q} B to send, {recv_q} B received; mock blocked {} ms -> {} ms",
        paused.tokens_sent, paused.bytes_sent, paused.time_blocked_ms, later.time_blocked_ms
    );
    assert_eq!(
        later.tokens_sent, paused.tokens_sent,
        "upstream kept sending"
    );
    assert!(
        later.time_blocked_ms > paused.time_blocked_ms + 1000.0,
        "{later:?}"
    );
    assert_eq!(later.streams_open as usize, CLIENTS);
    assert!(
        rss_peak - rss_before < 1024,
        "RSS grew {rss_before} -> {rss_peak} KiB"
    );
    // While the queues filled, each stream's heap took its connections' buffers and
    // at most a few chunks: hyper's default write buffer alone would let ~400 KiB in.
    let heap_per_stream = rss_peak.saturating_sub(rss_one) / (CLIENTS as u64 - 1);
    assert!(
        heap_per_stream < 128,
        "{heap_per_stream} KiB of RSS per stalled stream ({rss_one} -> {rss_peak} KiB)"
    );
    // What weir parks in its own kernel queues per stream is bounded by the configured
    // send_buffer and receive_buffer (64 KiB each, the kernel's bookkeeping included).
    // The rest of what left the upstream waits in the upstream's own send queue.
    let per_stream = (send_q + recv_q) / CLIENTS as u64;
    assert!(
        per_stream <= 2 * (64 << 10),
        "{per_stream} bytes per stream in weir's socket queues"
    );
    assert!(
        send_q > 0 && recv_q > 0,
        "the queues did fill: {send_q} / {recv_q}"
    );
    drop(clients);
}

/// Linux checks SO_SNDBUF only before it starts a segment and appends small writes to the
/// last one regardless, up to half the client's largest window: with slow readers whose
/// window opens a little at a time, send queues reach up to 64 KiB past the buffer. weir
/// cuts its writes to the room left, so none does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_send_queues_stay_within_the_send_buffer() {
    let (_mock, _dir, serve, addr) = weir_before_the_mock(0).await;
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let mut tcp = stalled_client(addr, None).await;
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                if tcp.read(&mut buf).await.unwrap() == 0 {
                    return;
                }
            }
        }));
    }
    let mut largest = 0;
    let mut filled = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let queues: Vec<u64> = socket_queues(serve.0.id())
            .into_iter()
            .filter(|&(port, _, _, _)| port == addr.port())
            .map(|(_, send_q, _, _)| send_q)
            .collect();
        filled = filled.max(queues.iter().filter(|&&q| q > (32 << 10)).count());
        largest = largest.max(queues.into_iter().max().unwrap_or(0));
    }
    eprintln!(
        "largest send queue to a slow client: {largest} B; {filled} queues past 32 KiB at once"
    );
    assert!(filled > CLIENTS / 2, "the send queues did not fill");
    assert!(
        largest <= 64 << 10,
        "a send queue held {largest} B, past the 64 KiB send_buffer"
    );
    for r in readers {
        r.abort();
    }
}

/// The sum of a counter's series in weir's /metrics.
async fn counter(addr: SocketAddr, name: &str) -> u64 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: weir\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// A slow connection's body makes no chunk until the last has reached the kernel and the
/// kernel reports room again (a third of the send queue, by its own count); the chunk is
/// then no larger than that room, so the socket takes it whole and nothing waits in weir.
/// A chunk made while the socket is full waits whole (3,957 B here when the body was not
/// held for the kernel's room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_clients_chunks_wait_in_the_kernel_not_in_weirs_heap() {
    let (_mock, _dir, serve, addr) = weir_before_the_mock(0).await;
    let mut client = ask_for_a_stream(addr, Some(4096)).await;
    let port = client.local_addr().unwrap().port();
    let (mut read, mut most_in_weir, mut filled) = (0, 0, 0);
    let mut buf = [0u8; 1024];
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        read += client.read(&mut buf).await.unwrap() as u64;
        // Counted before the queues, so a chunk made in between is not taken for one held.
        let handed_to_hyper = counter(addr, "weir_client_bytes_total").await;
        let sockets = socket_queues(serve.0.id());
        let Some(&(_, weir_send_q, _, _)) = sockets.iter().find(|s| s.3 == port) else {
            panic!("weir has no socket to the client: {sockets:?}");
        };
        let client_recv_q = socket_queues(std::process::id())
            .into_iter()
            .find(|s| s.0 == port)
            .map_or(0, |s| s.2);
        // The sockets took the response head and chunk sizes too, so this undercounts
        // what waits in weir by a few hundred bytes.
        let sent = weir_send_q + client_recv_q + read;
        most_in_weir = most_in_weir.max(handed_to_hyper.saturating_sub(sent));
        filled = filled.max(weir_send_q);
    }
    eprintln!("{read} B read; most waiting in weir at once: {most_in_weir} B");
    assert!(filled > 16 << 10, "the send queue did not fill: {filled} B");
    assert!(
        most_in_weir < 1 << 10,
        "{most_in_weir} B of response waited in weir's heap for a slow client"
    );
}

/// A response whose last chunk has reached the kernel is over, even for a client that reads
/// none of it: the last chunk is not held for the socket (no read follows it to pace), so
/// the stream ends and lets go of its upstream and buffers while the kernel delivers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_response_ends_its_stream_before_a_slow_client_reads_it() {
    // 265 tokens, 53 KB: the client's window takes about 9 KB, and the last chunk takes the
    // send queue past the two thirds of its 64 KiB at which the kernel stops reporting it
    // writable (a chunk before the last held there would keep the rest upstream, rightly).
    let (_mock, _dir, serve, addr) = weir_before_the_mock(265).await;
    let mut client = ask_for_a_stream(addr, Some(4096)).await;
    let port = client.local_addr().unwrap().port();
    let started = Instant::now();
    while counter(addr, "weir_streams_total").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stream did not end while its client read nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let weir_send_q = socket_queues(serve.0.id())
        .iter()
        .find(|s| s.3 == port)
        .map_or(0, |s| s.1);
    assert!(
        weir_send_q > 32 << 10,
        "the client's send queue was not over half full: {weir_send_q} B"
    );
    let (mut response, mut buf) = (Vec::new(), [0u8; 8192]);
    while !response.ends_with(b"\r\n0\r\n\r\n") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed before the response's end");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(
        response.ends_with(b"data: [DONE]\n\n\r\n0\r\n\r\n"),
        "the response did not end whole: ...{}",
        String::from_utf8_lossy(&response[response.len().saturating_sub(80)..])
    );
}
