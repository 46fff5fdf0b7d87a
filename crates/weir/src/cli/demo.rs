//! `weir demo`: the embedded default, showing what weir promises on generated data.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use super::run::{build, Built};
use super::sample::write_sample;
use super::Failure;
use weir_runtime::size::parse_size;

#[derive(Args, Debug)]
#[command(
    about = "The embedded default: pipelines on generated logs, then an LLM proxy with redaction",
    long_about = "The embedded default, with nothing to set up.\n\n\
        1. Writes a deterministic NDJSON log file (--size) in a temporary folder.\n\
        2. Compresses it: file -> lines -> gzip:6 -> file, and prints the per-stage table.\n\
        3. Feeds it to a consumer throttled to --rate for --seconds, printing once a second \
        how much the source has read, how much reached the consumer, the bytes buffered \
        between the stages and the process's RSS: the source reads only as fast as the \
        consumer takes.\n\
        4. Starts a mock LLM upstream (--upstream-listen) and weir's token proxy in front of \
        it (--listen) with PII redaction, streams one answer through it, prints the curl \
        lines to try, and serves until Ctrl-C (or exits at once with --once)."
)]
pub struct DemoArgs {
    /// Size of the generated log file.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub size: u64,

    /// Speed of the slow consumer, in bytes per second.
    #[arg(long, value_name = "RATE", default_value = "2MB", value_parser = parse_size)]
    pub rate: u64,

    /// How long to watch the slow consumer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub seconds: u64,

    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where the mock LLM upstream listens.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub upstream_listen: SocketAddr,

    /// Exit after streaming one answer through the proxy instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

fn failed(context: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::Pipeline(format!("{context}: {e}"))
}

pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    let dir = tempfile::tempdir().map_err(failed("creating a temporary folder"))?;
    let logs = dir.path().join("logs.ndjson");
    let file = std::fs::File::create(&logs).map_err(failed("creating the sample"))?;
    write_sample(&mut std::io::BufWriter::new(file), args.size, 42)
        .map_err(failed("writing the sample"))?;
    println!(
        "1. wrote {} bytes of NDJSON logs to {}\n",
        args.size,
        logs.display()
    );

    compress(&logs).await?;
    slow_consumer(&logs, &args).await?;

    println!("\nTry it yourself:");
    println!("  weir sample logs.ndjson --size 256MiB");
    println!("  weir run --stats file:logs.ndjson lines gzip:6 file:logs.ndjson.gz");
    println!("  weir run file:logs.ndjson.gz gunzip - | head");
    println!("  weir run --help\n");
    // A few million rows to watch a slow download; fewer with --once, which tests run.
    let rows = if args.once { 100_000 } else { 3_000_000 };
    let db = dir.path().join("orders.db");
    super::demo_export::generate(&db, rows)?;
    let result =
        super::demo_proxy::run(args.listen, args.upstream_listen, args.once, &db, rows).await;
    drop(dir);
    result
}

fn spec(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

async fn compress(logs: &Path) -> Result<(), Failure> {
    let out = logs.with_extension("ndjson.gz");
    let stages = spec(&[
        &format!("file:{}", logs.display()),
        "lines",
        "gzip:6",
        &format!("file:{}", out.display()),
    ]);
    println!("2. weir run --stats {}", stages.join(" "));
    let Built { pipeline, .. } = build(&stages, 64 * 1024)?;
    let report = pipeline
        .run()
        .await
        .map_err(|e| Failure::Pipeline(e.to_string()))?;
    println!("{report}\n");
    Ok(())
}

async fn slow_consumer(logs: &Path, args: &DemoArgs) -> Result<(), Failure> {
    let stages = spec(&[
        &format!("file:{}", logs.display()),
        "lines",
        &format!("throttle:{}", args.rate),
        "file:/dev/null",
    ]);
    println!(
        "3. weir run {}   (for {} s)",
        stages.join(" "),
        args.seconds
    );
    let Built { pipeline, .. } = build(&stages, 64 * 1024)?;
    let stats = pipeline.stats();
    let budget = pipeline.buffer_bytes();
    let cancel = pipeline.cancel_token();
    let run = tokio::spawn(pipeline.run());
    println!(
        "{:>6} {:>14} {:>14} {:>16} {:>10}",
        "time", "source read", "delivered", "buffered", "RSS"
    );
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for _ in 0..args.seconds {
        tick.tick().await;
        let snaps: Vec<_> = stats.iter().map(|s| s.snapshot()).collect();
        let read = snaps.first().map_or(0, |s| s.bytes_out);
        let delivered = snaps.last().map_or(0, |s| s.bytes_in);
        let buffered: u64 = snaps.iter().map(|s| s.buffered_bytes).sum();
        println!(
            "{:>5.1}s {:>14} {:>14} {:>9} of {:>4} {:>10}",
            started.elapsed().as_secs_f64(),
            read,
            delivered,
            buffered,
            budget,
            rss().map_or_else(|| "?".to_string(), |kb| format!("{} KiB", kb)),
        );
        if run.is_finished() {
            break;
        }
    }
    cancel.cancel();
    match run.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.is_cancelled() => {}
        Ok(Err(e)) => return Err(Failure::Pipeline(e.to_string())),
        Err(e) => return Err(Failure::Pipeline(e.to_string())),
    }
    println!("The source read only what the consumer took, plus at most the buffers' budget.");
    Ok(())
}

/// This process's resident set size in KiB, from /proc.
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
