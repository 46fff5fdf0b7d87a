//! The load client of `bench/proxy`: drives an SSE endpoint (weir's proxy, the Node peer,
//! or the mock itself) over real HTTP/1.1 on loopback and prints one JSON line of results.
//!
//! ```text
//! proxy_load fast    URL --streams 100 --seconds 10    tokens/s with streams read as fast as they come
//! proxy_load latency URL --streams 100 --seconds 10    per-token latency from the mock's `stamp=true`
//! proxy_load ttft    URL --requests 200                time to the first token, one request at a time
//! proxy_load slow    URL --conns 1000 --seconds 30 --rate 1KB   connections that read RATE bytes/s each
//! ```
//! Every request is a POST of an OpenAI streaming chat body; only 127.0.0.1 is accepted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Uri;
use memchr::memmem;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_runtime::size::parse_size;
use weir_server::mock_llm::monotonic_ns;

const BODY: &str =
    r#"{"model":"mock-llm","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
/// Opens that many connections at once, then waits a tick: a burst of thousands would
/// overflow the server's listen backlog and measure SYN retries instead of the proxy.
const RAMP_STEP: usize = 200;
const RAMP_TICK: Duration = Duration::from_millis(20);

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Fast {
        url: Uri,
        #[arg(long, default_value_t = 100)]
        streams: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    Latency {
        url: Uri,
        #[arg(long, default_value_t = 100)]
        streams: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Tokens arriving in the first second are not counted (connections warming up).
        #[arg(long, default_value_t = 1)]
        skip_seconds: u64,
        /// Start the streams evenly over this many milliseconds (their tokens then fall
        /// due at different times); 0 starts them together, so tokens come in bursts.
        #[arg(long, default_value_t = 0)]
        spread_ms: u64,
    },
    Ttft {
        url: Uri,
        #[arg(long, default_value_t = 200)]
        requests: usize,
    },
    Slow {
        url: Uri,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Bytes each connection reads per second.
        #[arg(long, default_value = "1KB", value_parser = parse_size)]
        rate: u64,
    },
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    let result = match Args::parse().mode {
        Mode::Fast {
            url,
            streams,
            seconds,
        } => fast(url, streams, Duration::from_secs(seconds)).await,
        Mode::Latency {
            url,
            streams,
            seconds,
            skip_seconds,
            spread_ms,
        } => {
            latency(
                url,
                streams,
                Duration::from_secs(seconds),
                Duration::from_secs(skip_seconds),
                Duration::from_millis(spread_ms),
            )
            .await
        }
        Mode::Ttft { url, requests } => ttft(url, requests).await,
        Mode::Slow {
            url,
            conns,
            seconds,
            rate,
        } => slow(url, conns, Duration::from_secs(seconds), rate).await,
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("proxy_load: {e}");
            std::process::exit(1);
        }
    }
}

fn address(url: &Uri) -> Result<String, Error> {
    if url.host() != Some("127.0.0.1") {
        return Err(format!("{url}: only 127.0.0.1 is a target of this load client").into());
    }
    Ok(format!("127.0.0.1:{}", url.port_u16().unwrap_or(80)))
}

/// One keep-alive HTTP/1.1 connection.
async fn connect(url: &Uri) -> Result<http1::SendRequest<Full<Bytes>>, Error> {
    let tcp = TcpStream::connect(address(url)?).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn post(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    url: &Uri,
) -> Result<hyper::body::Incoming, Error> {
    sender.ready().await?;
    let request = hyper::Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("authorization", "Bearer bench")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()).into());
    }
    Ok(response.into_body())
}

/// SSE frames out of body chunks that may split them anywhere.
#[derive(Default)]
struct Frames {
    pending: BytesMut,
}

impl Frames {
    fn push(&mut self, chunk: &[u8], mut frame: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = memmem::find(&self.pending[start..], b"\n\n") {
            frame(&self.pending[start..start + end]);
            start += end + 2;
        }
        self.pending.advance(start);
    }
}

/// A frame that carries token text (OpenAI `{"content":"…"` with text, or Anthropic `text_delta`).
fn is_token(frame: &[u8]) -> bool {
    let openai = memmem::find(frame, b"{\"content\":\"")
        .is_some_and(|i| frame.get(i + 12).is_some_and(|&b| b != b'"'));
    openai || memmem::find(frame, b"\"text_delta\"").is_some()
}

fn stamp(frame: &[u8]) -> Option<u64> {
    let key = b"\"weir_sent_ns\":";
    let at = memmem::find(frame, key)? + key.len();
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

async fn fast(url: Uri, streams: usize, seconds: Duration) -> Result<String, Error> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + seconds;
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut tokens, mut bytes, mut completed, mut errors) = (0u64, 0u64, 0u64, 0u64);
            let run = async {
                let mut sender = connect(&url).await?;
                loop {
                    let mut body = post(&mut sender, &url).await?;
                    let mut frames = Frames::default();
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame?.into_data() {
                            bytes += data.len() as u64;
                            frames.push(&data, |f| tokens += u64::from(is_token(f)));
                        }
                    }
                    completed += 1;
                }
            };
            let ended: Result<Result<(), Error>, _> = tokio::time::timeout_at(deadline, run).await;
            if let Ok(Err(_)) = ended {
                errors += 1;
            }
            (tokens, bytes, completed, errors)
        }));
    }
    let (mut tokens, mut bytes, mut completed, mut errors) = (0, 0, 0, 0);
    for t in tasks {
        let (a, b, c, d) = t.await?;
        tokens += a;
        bytes += b;
        completed += c;
        errors += d;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({
        "mode": "fast", "url": url.to_string(), "streams": streams, "seconds": secs,
        "completed": completed, "errors": errors,
        "tokens_per_s": (tokens as f64 / secs).round(), "mb_per_s": bytes as f64 / 1e6 / secs,
    })
    .to_string())
}

async fn latency(
    url: Uri,
    streams: usize,
    seconds: Duration,
    skip: Duration,
    spread: Duration,
) -> Result<String, Error> {
    let start = tokio::time::Instant::now();
    let deadline = start + seconds;
    let counted_from = monotonic_ns() + skip.as_nanos() as u64;
    let mut tasks = Vec::new();
    for i in 0..streams {
        let url = url.clone();
        let starts_at = start + spread * i as u32 / streams as u32;
        tasks.push(tokio::spawn(async move {
            let (mut micros, mut stamps): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
            let run = async {
                tokio::time::sleep_until(starts_at).await;
                let mut sender = connect(&url).await?;
                let mut body = post(&mut sender, &url).await?;
                let mut frames = Frames::default();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        let now = monotonic_ns();
                        frames.push(&data, |f| {
                            if let Some(sent) = stamp(f).filter(|&s| s >= counted_from) {
                                micros.push(now.saturating_sub(sent) / 1000);
                                stamps.push(sent);
                            }
                        });
                    }
                }
                Ok::<(), Error>(())
            };
            let failed = matches!(tokio::time::timeout_at(deadline, run).await, Ok(Err(_)));
            (micros, stamps, failed)
        }));
    }
    let (mut all, mut sent) = (Vec::new(), Vec::new());
    let mut errors = 0;
    for t in tasks {
        let (micros, stamps, failed) = t.await?;
        all.extend(micros);
        sent.extend(stamps);
        errors += usize::from(failed);
    }
    if all.is_empty() {
        return Err(
            format!("{url}: no stamped tokens arrived (is stamp=true set upstream?)").into(),
        );
    }
    all.sort_unstable();
    Ok(json!({
        "mode": "latency", "url": url.to_string(), "streams": streams, "tokens": all.len(),
        "spread_ms": spread.as_millis() as u64,
        "errors": errors, "sent_within_1ms": sent_within_1ms(&mut sent),
        "p50_us": quantile(&all, 0.5), "p90_us": quantile(&all, 0.9),
        "p99_us": quantile(&all, 0.99), "p999_us": quantile(&all, 0.999), "max_us": all[all.len() - 1],
    })
    .to_string())
}

/// How many tokens the upstream sent within a millisecond of a token (the median over
/// tokens): how bursty the load a proxy saw was. A proxy that opens its upstream requests
/// one after another spreads "100 streams started together" out by itself.
fn sent_within_1ms(stamps: &mut [u64]) -> u64 {
    stamps.sort_unstable();
    let mut counts = Vec::with_capacity(stamps.len());
    let (mut lo, mut hi) = (0, 0);
    for &at in stamps.iter() {
        while stamps[lo] + 500_000 < at {
            lo += 1;
        }
        while hi < stamps.len() && stamps[hi] <= at + 500_000 {
            hi += 1;
        }
        counts.push((hi - lo) as u64);
    }
    counts.sort_unstable();
    quantile(&counts, 0.5)
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn ttft(url: Uri, requests: usize) -> Result<String, Error> {
    let mut sender = connect(&url).await?;
    let mut micros = Vec::with_capacity(requests);
    for _ in 0..requests {
        let start = Instant::now();
        let mut body = post(&mut sender, &url).await?;
        let mut frames = Frames::default();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                frames.push(&data, |f| {
                    if first.is_none() && is_token(f) {
                        first = Some(start.elapsed());
                    }
                });
            }
        }
        let first = first.ok_or_else(|| format!("{url}: a stream ended without a token"))?;
        micros.push(first.as_micros() as u64);
    }
    micros.sort_unstable();
    let mean = micros.iter().sum::<u64>() as f64 / micros.len().max(1) as f64;
    Ok(json!({
        "mode": "ttft", "url": url.to_string(), "requests": requests, "mean_us": mean.round(),
        "p50_us": quantile(&micros, 0.5), "p90_us": quantile(&micros, 0.9), "p99_us": quantile(&micros, 0.99),
    })
    .to_string())
}

async fn slow(url: Uri, conns: usize, seconds: Duration, rate: u64) -> Result<String, Error> {
    let addr = address(&url)?;
    let path = url.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         authorization: Bearer bench\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let deadline = tokio::time::Instant::now() + seconds;
    let read = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        if i > 0 && i % RAMP_STEP == 0 {
            tokio::time::sleep(RAMP_TICK).await;
        }
        let (addr, request, read) = (addr.clone(), request.clone(), read.clone());
        tasks.push(tokio::spawn(async move {
            let run = async {
                let mut tcp = connect_with_small_window(&addr).await?;
                tcp.write_all(request.as_bytes()).await?;
                let mut buf = vec![0; rate.max(1) as usize];
                let mut status_ok = None;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let n = tcp.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, Error>(Ended::Early(status_ok));
                    }
                    status_ok.get_or_insert(buf.starts_with(b"HTTP/1.1 200"));
                    read.fetch_add(n as u64, Ordering::Relaxed);
                }
            };
            tokio::time::timeout_at(deadline, run)
                .await
                .unwrap_or(Ok(Ended::Held))
        }));
    }
    let (mut errors, mut ended_early, mut not_ok) = (0, 0, 0);
    let mut error_kinds = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        match t.await? {
            Ok(Ended::Held) => {}
            Ok(Ended::Early(status_ok)) => {
                ended_early += 1;
                not_ok += usize::from(status_ok != Some(true));
            }
            Err(e) => {
                errors += 1;
                *error_kinds.entry(e.to_string()).or_default() += 1;
            }
        }
    }
    Ok(json!({
        "mode": "slow", "url": url.to_string(), "conns": conns, "seconds": seconds.as_secs(),
        "bytes_per_s_each": rate, "bytes_read": read.load(Ordering::Relaxed),
        "errors": errors, "error_kinds": error_kinds, "ended_early": ended_early,
        "ended_not_200": not_ok,
    })
    .to_string())
}

/// Loopback carries up to 64 KiB in one segment, and a receiver frees a segment's memory
/// only once it has read all of it: with a large window, a reader of 1 KB/s opens it
/// about once a minute and looks stalled to the server, which cuts it off. A small
/// receive buffer keeps segments small, as a network path's MTU does.
async fn connect_with_small_window(addr: &str) -> Result<TcpStream, Error> {
    const RECEIVE_BUFFER: usize = 8 * 1024;
    let addr: std::net::SocketAddr = addr.parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(RECEIVE_BUFFER as u32)?;
    Ok(socket.connect(addr).await?)
}

/// How a slow connection ended.
enum Ended {
    /// Open until the end of the run.
    Held,
    /// Closed by the server; whether its status line said 200, if one came.
    Early(Option<bool>),
}
