//! The load client of `bench/live`: WebSocket fan-out of a live NDJSON publish stream.
//!
//! ```text
//! live_load --pub-url URL --sub-url WSURL --subscribers N --rate MSGS_PER_S --seconds S [--size BYTES]
//!           [--stats-url URL]
//! ```
//! Opens N WebSocket subscribers (all of them connected before anything is published), then
//! one publisher POSTs a streaming (chunked) NDJSON body at RATE messages/s for S seconds,
//! each message `{"seq":N,"t_us":MICROS_SINCE_START,"pad":"…"}` of about SIZE bytes.
//! Publisher and subscribers share one clock (this process), so a subscriber's latency is
//! `now − t_us`. Drops are counted from in-band `{"dropped": N}` frames (weir); a peer that
//! does not tell its subscribers (the Node peer counts them in its `/stats`) shows them as
//! `missing` = published × subscribers − delivered, and `--stats-url` adds the peer's own
//! figures. Prints one JSON line. Only 127.0.0.1 is accepted; the whole run is bounded by
//! S + 10 s.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Opens that many connections at once, then waits a tick (the listen backlog).
const RAMP_STEP: usize = 100;
const RAMP_TICK: Duration = Duration::from_millis(10);
/// Time allowed for connecting every subscriber.
const CONNECT_BUDGET: Duration = Duration::from_secs(5);
/// After the body ends: time allowed for the publish response, then for the frames in flight.
const RESPONSE_BUDGET: Duration = Duration::from_secs(2);
const DRAIN_BUDGET: Duration = Duration::from_secs(2);
const DRAIN_QUIET: Duration = Duration::from_millis(300);

#[derive(Parser)]
struct Args {
    /// Where the publisher POSTs its NDJSON body (http://127.0.0.1:PORT/t).
    #[arg(long)]
    pub_url: String,
    /// Where the subscribers connect (ws://127.0.0.1:PORT/t).
    #[arg(long)]
    sub_url: String,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Messages per second published.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Approximate size of one message in bytes (without its newline).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// A JSON endpoint fetched at the end and copied into the output as `server_stats`.
    #[arg(long)]
    stats_url: Option<String>,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Log-linear latency histogram in microseconds: 64 sub-buckets per power of two (≤ 1.6 %).
struct Hist {
    counts: Vec<u64>,
}

const SUB_BITS: u32 = 6;

impl Hist {
    fn new() -> Self {
        Hist {
            counts: vec![0; (64 - SUB_BITS as usize + 1) << SUB_BITS],
        }
    }
    fn index(v: u64) -> usize {
        if v < (1 << SUB_BITS) {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros() - SUB_BITS; // ≥ 0
        let sub = (v >> exp) as usize - (1 << SUB_BITS);
        (((exp + 1) as usize) << SUB_BITS) + sub
    }
    fn value(i: usize) -> u64 {
        let block = i >> SUB_BITS;
        let sub = (i & ((1 << SUB_BITS) - 1)) as u64;
        if block == 0 {
            return sub;
        }
        let exp = block as u32 - 1;
        // The middle of the bucket.
        (((1 << SUB_BITS) + sub) << exp) + ((1u64 << exp) >> 1)
    }
    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
    }
    fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    fn percentile(&self, p: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i));
            }
        }
        None
    }
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    dropped: AtomicU64,
    other: AtomicU64,
    connected: AtomicUsize,
    closed_early: AtomicUsize,
    /// Time of the last frame, in µs since the start (drain detection).
    last_us: AtomicU64,
}

/// The digits after `key` (and any `:`/spaces), if `key` is in `text`.
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(text, key)? + key.len();
    let rest = &text[at..];
    let start = rest.iter().position(|b| !matches!(b, b':' | b' '))?;
    let digits = &rest[start..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// Why a subscriber could not connect, naming the URL or the host.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}: not a ws:// URL")]
    NotWs(String),
    #[error("connect {host}: {error}")]
    Connect { host: String, error: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("closed during the upgrade")]
    Closed,
    #[error("upgrade refused: {0}")]
    Refused(String),
    #[error("response head over 16 KiB")]
    HeadTooLarge,
}

/// `ws://host:port/path` → (`host:port`, `/path`).
fn split_ws_url(url: &str) -> Result<(String, String), ConnectError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| ConnectError::NotWs(url.to_string()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((host.to_string(), path.to_string()))
}

/// Connects and upgrades; returns the stream and the bytes read past the response head.
async fn ws_connect(url: &str) -> Result<(TcpStream, Vec<u8>), ConnectError> {
    let (host, path) = split_ws_url(url)?;
    let mut stream = TcpStream::connect(&host)
        .await
        .map_err(|error| ConnectError::Connect {
            host: host.clone(),
            error,
        })?;
    stream.set_nodelay(true).ok();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnectError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            if !head.starts_with("HTTP/1.1 101") {
                let status = head.lines().next().unwrap_or("");
                return Err(ConnectError::Refused(status.to_string()));
            }
            return Ok((stream, buf[end + 4..].to_vec()));
        }
        if buf.len() > 16 * 1024 {
            return Err(ConnectError::HeadTooLarge);
        }
    }
}

/// One subscriber over a plain TCP socket with a minimal frame parser (server frames are
/// unmasked): a read takes as many frames as the socket holds, so the client costs far less
/// per frame than a general WebSocket stack (measured: about 3.7 µs of CPU a frame, latency
/// histogram included). A first version on tokio-tungstenite saw weir and the Node peer
/// deliver the same ~205k frames/s, which pointed at the client. The upgrade answer is
/// checked for `101` only (Sec-WebSocket-Accept is not verified: a benchmark client).
async fn subscriber(
    url: String,
    start: Arc<tokio::sync::OnceCell<Instant>>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    connected: tokio::sync::oneshot::Sender<Result<(), ConnectError>>,
) -> Hist {
    let mut hist = Hist::new();
    let (mut stream, mut buf) = match ws_connect(&url).await {
        Ok(x) => {
            counters.connected.fetch_add(1, Ordering::Relaxed);
            let _ = connected.send(Ok(()));
            x
        }
        Err(e) => {
            let _ = connected.send(Err(e));
            return hist;
        }
    };
    let mut len = buf.len();
    buf.resize(64 * 1024, 0);
    loop {
        // Parse every whole frame in buf[..len].
        let mut pos = 0;
        let now_us = start.get().map(|s| s.elapsed().as_micros() as u64);
        let mut pong: Option<Vec<u8>> = None;
        let mut closed = false;
        while len - pos >= 2 {
            let b0 = buf[pos];
            let b1 = buf[pos + 1];
            let masked = b1 & 0x80 != 0;
            let (plen, hlen) = match b1 & 0x7f {
                126 if len - pos >= 4 => {
                    (u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]) as usize, 4)
                }
                127 if len - pos >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[pos + 2..pos + 10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            let hlen = hlen + if masked { 4 } else { 0 };
            if len - pos < hlen + plen {
                if hlen + plen > buf.len() {
                    buf.resize(hlen + plen + 1024, 0);
                }
                break;
            }
            let payload = &buf[pos + hlen..pos + hlen + plen];
            match b0 & 0x0f {
                0..=2 => match now_us {
                    None => {
                        counters.other.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(now_us) => {
                        if let Some(t_us) = number_after(payload, b"\"t_us\"") {
                            hist.record(now_us.saturating_sub(t_us));
                            counters.delivered.fetch_add(1, Ordering::Relaxed);
                            counters.last_us.fetch_max(now_us, Ordering::Relaxed);
                        } else if let Some(n) = number_after(payload, b"\"dropped\"") {
                            counters.dropped.fetch_add(n, Ordering::Relaxed);
                        } else {
                            counters.other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                },
                8 => closed = true,
                9 => {
                    // A pong, masked (as a client must) with a zero key.
                    let mut f = vec![0x8a, 0x80 | plen.min(125) as u8, 0, 0, 0, 0];
                    f.extend_from_slice(&payload[..plen.min(125)]);
                    pong = Some(f);
                }
                _ => {}
            }
            pos += hlen + plen;
        }
        if closed {
            counters.closed_early.fetch_add(1, Ordering::Relaxed);
            return hist;
        }
        buf.copy_within(pos..len, 0);
        len -= pos;
        if let Some(f) = pong {
            if stream.write_all(&f).await.is_err() {
                counters.closed_early.fetch_add(1, Ordering::Relaxed);
                return hist;
            }
        }
        let n = tokio::select! {
            _ = stop.cancelled() => break,
            r = stream.read(&mut buf[len..]) => r,
        };
        match n {
            Ok(0) | Err(_) => {
                counters.closed_early.fetch_add(1, Ordering::Relaxed);
                return hist;
            }
            Ok(n) => len += n,
        }
    }
    // A close frame (masked, zero key, code 1000), then the socket is dropped.
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        stream.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]),
    )
    .await;
    hist
}

fn message(seq: u64, t_us: u64, size: usize, out: &mut Vec<u8>) {
    let head = format!("{{\"seq\":{seq},\"t_us\":{t_us},\"pad\":\"");
    out.extend_from_slice(head.as_bytes());
    let pad = size.saturating_sub(head.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}\n");
}

fn check_loopback(url: &str) -> Result<(), Error> {
    let rest = url.split("://").nth(1).unwrap_or("");
    if rest.starts_with("127.0.0.1:") || rest.starts_with("localhost:") {
        Ok(())
    } else {
        Err(format!("{url}: only 127.0.0.1 is accepted").into())
    }
}

async fn run(args: Args, t0: Instant) -> Result<serde_json::Value, Error> {
    check_loopback(&args.pub_url)?;
    check_loopback(&args.sub_url)?;
    if let Some(s) = &args.stats_url {
        check_loopback(s)?;
    }
    let counters = Arc::new(Counters::default());
    let start = Arc::new(tokio::sync::OnceCell::new());
    let stop = CancellationToken::new();

    // Subscribers, all connected before publishing.
    let mut tasks = Vec::with_capacity(args.subscribers);
    let mut acks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        if i > 0 && i % RAMP_STEP == 0 {
            tokio::time::sleep(RAMP_TICK).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        acks.push(rx);
        tasks.push(tokio::spawn(subscriber(
            args.sub_url.clone(),
            start.clone(),
            counters.clone(),
            stop.clone(),
            tx,
        )));
    }
    let mut connect_errors = 0usize;
    let mut first_error = None;
    let all = async {
        for rx in acks {
            if let Ok(Err(e)) = rx.await {
                connect_errors += 1;
                first_error.get_or_insert(e);
            }
        }
    };
    if tokio::time::timeout(CONNECT_BUDGET, all).await.is_err() {
        stop.cancel();
        return Err(format!(
            "only {} of {} subscribers connected within {CONNECT_BUDGET:?}",
            counters.connected.load(Ordering::Relaxed),
            args.subscribers
        )
        .into());
    }
    let connected = counters.connected.load(Ordering::Relaxed);
    let connect_ms = t0.elapsed().as_secs_f64() * 1e3;
    if connected == 0 && args.subscribers > 0 {
        stop.cancel();
        let why = first_error.map(|e| e.to_string()).unwrap_or_default();
        return Err(format!("no subscriber connected: {why}").into());
    }
    // Let the servers register the last subscriptions.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The publisher: one chunked POST, a chunk per millisecond holding the messages due.
    let started = Instant::now();
    start.set(started).ok();
    let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(64);
    let rate = args.rate;
    let size = args.size;
    let publish_for = Duration::from_secs(args.seconds);
    let producer = tokio::spawn(async move {
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let total = rate * publish_for.as_secs();
        loop {
            tick.tick().await;
            let elapsed = started.elapsed();
            let due = ((elapsed.as_secs_f64() * rate as f64) as u64).min(total);
            if due > sent {
                let t_us = elapsed.as_micros() as u64;
                let mut buf = Vec::with_capacity((due - sent) as usize * (size + 1));
                for seq in sent..due {
                    message(seq, t_us, size, &mut buf);
                }
                if tx.send(Bytes::from(buf)).await.is_err() {
                    break;
                }
                sent = due;
            }
            if sent >= total || elapsed >= publish_for {
                break;
            }
        }
        sent
    });
    let client = reqwest::Client::builder().no_proxy().build()?;
    let body = reqwest::Body::wrap_stream(rx.map(Ok::<Bytes, std::io::Error>));
    let request = client
        .post(&args.pub_url)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send();
    let response = tokio::time::timeout(publish_for + RESPONSE_BUDGET, async {
        let r = request.await?;
        let status = r.status();
        let text = r.text().await?;
        Ok::<_, reqwest::Error>((status, text))
    })
    .await;
    let published = producer.await.unwrap_or(0);
    let publish_s = started.elapsed().as_secs_f64();
    let (status, reply) = match response {
        Ok(Ok((s, t))) => (s.as_u16(), t.trim().to_string()),
        Ok(Err(e)) => (0, format!("error: {e}")),
        Err(_) => (0, "no response in time".to_string()),
    };

    // Frames in flight: wait until none arrived for DRAIN_QUIET (at most DRAIN_BUDGET).
    let drain_end = Instant::now() + DRAIN_BUDGET;
    let expected = published * connected as u64;
    while Instant::now() < drain_end {
        let delivered = counters.delivered.load(Ordering::Relaxed);
        if delivered + counters.dropped.load(Ordering::Relaxed) >= expected {
            break;
        }
        let last = Duration::from_micros(counters.last_us.load(Ordering::Relaxed));
        if started.elapsed().saturating_sub(last) > DRAIN_QUIET && started.elapsed() > publish_for {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut hist = Hist::new();
    for t in tasks {
        if let Ok(Ok(h)) = tokio::time::timeout(Duration::from_secs(1), t).await {
            hist.merge(&h);
        }
    }
    let server_stats = match &args.stats_url {
        Some(u) => match tokio::time::timeout(Duration::from_secs(2), async {
            client
                .get(u)
                .send()
                .await?
                .json::<serde_json::Value>()
                .await
        })
        .await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => json!(format!("error: {e}")),
            Err(_) => json!("no response in time"),
        },
        None => serde_json::Value::Null,
    };
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let ms = |p: f64| hist.percentile(p).map(|us| us as f64 / 1e3);
    Ok(json!({
        "subscribers": connected,
        "connect_errors": connect_errors,
        "connect_ms": (connect_ms * 10.0).round() / 10.0,
        "rate": args.rate,
        "seconds": args.seconds,
        "size": args.size,
        "published": published,
        "publish_s": (publish_s * 1e3).round() / 1e3,
        "publish_status": status,
        "publish_reply": reply,
        "delivered": delivered,
        "delivered_per_s": delivered as f64 / args.seconds.max(1) as f64,
        "expected": expected,
        "missing": expected.saturating_sub(delivered),
        "latency_ms": {"p50": ms(50.0), "p90": ms(90.0), "p99": ms(99.0), "p999": ms(99.9), "max": ms(100.0)},
        "dropped": counters.dropped.load(Ordering::Relaxed),
        "other_frames": counters.other.load(Ordering::Relaxed),
        "closed_early": counters.closed_early.load(Ordering::Relaxed),
        "server_stats": server_stats,
    }))
}

#[tokio::main]
async fn main() {
    let t0 = Instant::now();
    let args = Args::parse();
    let limit = Duration::from_secs(args.seconds + 10);
    match tokio::time::timeout(limit, run(args, t0)).await {
        Ok(Ok(line)) => println!("{line}"),
        Ok(Err(e)) => {
            eprintln!("live_load: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("live_load: not done within {limit:?}");
            std::process::exit(1);
        }
    }
}
