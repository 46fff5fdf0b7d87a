//! `weir check URL`: slow clients against a streaming endpoint and a verdict on whether
//! the server's memory stays bounded, with an exit code for CI.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args};
use indicatif::{ProgressBar, ProgressStyle};
use weir_check::report::human_bytes;
use weir_check::{CheckConfig, CheckError, MemoryFrom, Phase, Progress, Thresholds};
use weir_runtime::size::{parse_duration, parse_size};

use super::Failure;

/// Clients one check may open: enough to load a server, bounded to stay polite.
const MAX_CLIENTS: usize = 10_000;
/// Request bodies are sent by every client; keep them to a request's size.
const MAX_BODY: u64 = 1 << 20;

#[derive(Args, Debug)]
#[command(
    about = "Check that a streaming endpoint's memory stays bounded under slow clients (PASS/FAIL for CI)",
    long_about = "Connects many deliberately slow clients (small receive buffers, slow paced \
                  reads) to a streaming endpoint, samples the server's memory (its heap and \
                  the bytes it parks in kernel socket queues) while they stream, and judges \
                  the whole run: memory that levels off within a per-client allowance, or \
                  saws in a band that does not climb, is bounded (PASS); memory that grows, \
                  or rises beyond the allowance and stops at a ceiling (a heap cap, a \
                  container limit), is not (FAIL). Several processes (a proxy and the app \
                  behind it) are measured and judged each alone, and the report names the \
                  one that holds the bytes. Works against servers written in any language.",
    after_long_help = RULE,
    group(ArgGroup::new("memory").required(true).multiple(true).args(["pid", "spawn", "metrics_url"])),
)]
pub struct CheckArgs {
    /// The streaming endpoint, http:// (the clients connect to nothing else).
    pub url: String,

    /// HTTP method of the request.
    #[arg(long, default_value = "GET")]
    pub method: String,

    /// A request header, `Name: value`; repeat for more.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Request body (for POST endpoints such as chat completions).
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,

    /// Request body from a file.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,

    /// Slow clients streaming at once.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,

    /// Body bytes per second each client reads; 0 = read the headers, then never read.
    #[arg(long, default_value = "1KiB", value_name = "RATE", value_parser = parse_size)]
    pub read_rate: u64,

    /// Each client socket's SO_RCVBUF: small, so the server's kernel buffers fill fast
    /// (Linux doubles the value and applies a floor of a few KiB).
    #[arg(long, default_value = "4KiB", value_name = "SIZE", value_parser = parse_size)]
    pub recv_buffer: u64,

    /// How long the clients stream, if the steady-state window is long enough by then.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Samples before this are never fitted [default: 10s, or a third of --duration if shorter].
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// The shortest steady-state window to fit [default: 10s, or half of --duration if shorter].
    #[arg(long, value_parser = parse_duration)]
    pub min_window: Option<Duration>,

    /// The kernel queues have settled when their fit over this trailing span is flat.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub settle_window: Duration,

    /// The run never lasts longer, settled or not [default: 3 x --duration].
    #[arg(long, value_parser = parse_duration)]
    pub max_duration: Option<Duration>,

    /// Time between memory samples.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Read memory from this process and its children (RSS and socket queues from /proc);
    /// repeat for a chain (a proxy, the app behind it), each judged alone.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Start a server with `sh -c COMMAND`, wait until it listens, stop it at the end; its
    /// stderr's last lines go in the report. Repeat for a chain, the app behind first: each
    /// is started once the one before listens on a TCP port, and the last must serve the URL.
    #[arg(long, value_name = "COMMAND")]
    pub spawn: Vec<String>,

    /// Read memory from a Prometheus `process_resident_memory_bytes` gauge (any host).
    #[arg(long, value_name = "URL", conflicts_with_all = ["pid", "spawn"])]
    pub metrics_url: Option<String>,

    /// Memory limit to project the growth against [default: the target's cgroup limit].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub limit: Option<u64>,

    /// Memory growing at this rate or faster counts as growing (a size per second).
    #[arg(long, default_value = "16KB/s", value_name = "RATE", value_parser = parse_size)]
    pub max_slope: u64,

    /// The R² a growing fit needs to be a steady growth (FAIL) rather than noise.
    #[arg(long, default_value_t = 0.5)]
    pub min_r2: f64,

    /// Growth per slow client, from before the clients connected to the steady state, that
    /// still counts as bounded; more, then flat, is a ceiling (FAIL). See THE VERDICT.
    #[arg(long, default_value = "2MiB", value_name = "SIZE", value_parser = parse_size)]
    pub max_per_client: u64,

    /// Fraction of the clients that must still be streaming at the end.
    #[arg(long, default_value_t = 0.9)]
    pub min_streaming: f64,

    /// How long a --spawn'ed server may take to accept connections.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub spawn_timeout: Duration,

    /// Print the report as JSON on stdout (every sample included).
    #[arg(long)]
    pub json: bool,

    /// Draw memory over time to FILE (.svg or .png).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,

    /// Write the report as one self-contained HTML page (verdict, figures, plot): a CI artifact.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

const RULE: &str = "\
THE VERDICT:
  Memory (RSS, and with --pid/--spawn the bytes queued in the target's own sockets) is
  sampled every --interval, once before the clients connect (the baseline) and then
  while they stream. On loopback each slow connection can absorb MiBs in kernel socket
  queues before the server feels any backpressure, so a correct server's heap grows for
  a while too. The steady-state window therefore starts when the target's socket queues
  have stopped growing (their fit over the last --settle-window is below --max-slope) or
  after --warmup, whichever is later. The run lasts --duration, longer if the window is
  shorter than --min-window by then, never longer than --max-duration. Each process is
  judged over the whole run, in this order:
    FAIL          a line through RSS over the window rises at --max-slope or more
                  with R² >= --min-r2                          memory grows steadily
    FAIL/PASS     the line rises but scatters (R² < --min-r2): memory saws. The tops
                  and bottoms of its swings decide: climbing at --max-slope or more,
                  by more than one sample's step (the most a sample can miss a top
                  by), is growth (FAIL); a band that does not climb is a bound
    INCONCLUSIVE  it saws but the window holds less than one full swing: run longer
    FAIL          flat (or a bounded band), but it rose since the clients connected,
                  beyond what its own socket queues hold, by more than --max-per-client
                  per slow client: a ceiling such as a heap cap (-Xmx,
                  --max-old-space-size, GOMEMLIMIT) or a container limit that the
                  server runs into, not a bound. In production it sits at that cap,
                  collecting garbage without end or killed by the OOM killer
    PASS          otherwise: memory levelled off within the allowance
  The verdict is the worst of the processes'; the reason names the one that holds the
  bytes (\"the proxy in front buffers: +300 MiB in pid 123 (nginx)\"). It is INCONCLUSIVE
  too, with the reason, when fewer than --min-streaming of the clients were still
  streaming at the end (connections refused, non-2xx status, streams that ended early),
  when the socket queues never settled, or when a spawned server exited. The report
  gives the slope, R², peak, growth per process and per client, where the bytes live
  (heap or kernel, which process), the last lines of each spawned server's stderr (an
  OutOfMemoryError is evidence) and the time to --limit (or the cgroup's memory.max).

--max-per-client (default 2 MiB):
  What a correct server holds itself for one slow stream: the chunk it is writing, a read
  and a write buffer of tens of KiB (Node's highWaterMark is 16-64 KiB, hyper's and
  Netty's buffers are of that order), a thread stack or task, TLS state: well under
  1 MiB. While the kernel's socket queues fill (MiBs per connection on loopback), a
  runtime's heap rises with them (Node.js by about half as much), and that part is not
  counted: growth is measured beyond what the process's own socket queues hold, which
  the kernel bounds. Measured with 50 clients: weir serve +2.9 MiB in all, a Java server
  writing as its clients read +7.1 MiB (72 KiB per client beyond its queues), the
  Node.js reference +68 MiB with 146 MiB in its queues (nothing beyond them; 1.4 MiB per
  client if they were not counted). A server with an unbounded queue per client holds
  many MiB per client within seconds: a JVM under -Xmx512m, 9.7 MiB each (488 MiB in
  4 s), then flat at its cap. 2 MiB sits between the two with room on both sides; raise
  it for a server that holds more per stream by design (a replay buffer per client).

EXIT CODES:
  0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 usage error, or a --pid that does not exist or
  exits during the run (never a verdict from missing samples)

EXAMPLES:
  weir check http://127.0.0.1:8080/stream --pid 4242
  weir check http://127.0.0.1:8080/v1/chat/completions --method POST \\
      -H 'content-type: application/json' \\
      --body '{\"model\":\"m\",\"stream\":true,\"messages\":[]}' \\
      --spawn 'weir serve --config weir.toml' --plot check.svg
  # a reverse proxy in front of an app: both measured, the one that buffers named
  weir check http://127.0.0.1:8080/stream --pid $(pgrep -o nginx) --pid $(pgrep -f app.py)
  # the same, started by the check, the app behind first (the proxy serves the URL)
  weir check http://127.0.0.1:8080/stream \\
      --spawn 'exec python3 app.py 9000' --spawn 'exec node proxy.js 8080 9000'
  # a JVM under a heap cap: a rise that stops at -Xmx is a ceiling, not a bound
  weir check http://127.0.0.1:8080/stream --spawn 'exec java -Xmx512m Server.java 8080'
  weir check http://api.internal:8080/stream --metrics-url http://api.internal:9090/metrics --json";

/// An option of `weir check` that cannot be used, named with why (hand-written: the CLI
/// crate has no thiserror).
#[derive(Debug)]
enum ArgError {
    Url {
        url: String,
        error: url::ParseError,
    },
    /// A `--header`, and why.
    Header {
        header: String,
        why: String,
    },
    Method(String),
    BodyFile {
        path: String,
        error: std::io::Error,
    },
    BodyTooLarge {
        path: String,
        size: u64,
    },
    Clients(usize),
    RecvBuffer(u64),
    /// An option (or a pair) outside its range, as `--flag value: range`.
    Range(String),
    NoMemorySource,
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgError::Url { url, error } => write!(f, "`{url}`: {error}"),
            ArgError::Header { header, why } => write!(f, "--header `{header}`: {why}"),
            ArgError::Method(m) => write!(f, "--method `{m}`: an HTTP method such as GET or POST"),
            ArgError::BodyFile { path, error } => write!(f, "--body-file {path}: {error}"),
            ArgError::BodyTooLarge { path, size } => write!(
                f,
                "--body-file {path}: {size} bytes, more than the {MAX_BODY} a request body may have"
            ),
            ArgError::Clients(n) => write!(f, "--clients {n}: between 1 and {MAX_CLIENTS}"),
            ArgError::RecvBuffer(n) => write!(f, "--recv-buffer {n}: between 1 byte and 4 GiB"),
            ArgError::Range(m) => f.write_str(m),
            ArgError::NoMemorySource => f.write_str("give --pid, --spawn or --metrics-url"),
        }
    }
}

impl std::error::Error for ArgError {}

impl CheckArgs {
    fn config(&self) -> Result<CheckConfig, ArgError> {
        let url = url::Url::parse(&self.url).map_err(|error| ArgError::Url {
            url: self.url.clone(),
            error,
        })?;
        let headers = self
            .headers
            .iter()
            .map(|h| {
                let bad = |why: String| ArgError::Header {
                    header: h.clone(),
                    why,
                };
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| bad("write it `Name: value`".into()))?;
                let name = name.trim();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad(format!("`{name}` is not a header name")));
                }
                if value.contains(['\r', '\n']) {
                    return Err(bad("the value holds a line break".into()));
                }
                Ok((name.to_string(), value.trim().to_string()))
            })
            .collect::<Result<Vec<_>, ArgError>>()?;
        if !self.method.bytes().all(|b| b.is_ascii_uppercase()) || self.method.is_empty() {
            return Err(ArgError::Method(self.method.clone()));
        }
        let body = match (&self.body, &self.body_file) {
            (Some(body), _) => Some(body.clone().into_bytes()),
            (None, Some(path)) => Some(read_body(path)?),
            (None, None) => None,
        };
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            return Err(ArgError::Clients(self.clients));
        }
        let recv_buffer = u32::try_from(self.recv_buffer)
            .ok()
            .filter(|&b| b > 0)
            .ok_or(ArgError::RecvBuffer(self.recv_buffer))?;
        let third = self.duration / 3;
        let warmup = self.warmup.unwrap_or(Duration::from_secs(10).min(third));
        let min_window = self
            .min_window
            .unwrap_or(Duration::from_secs(10).min(self.duration / 2));
        let max_duration = self.max_duration.unwrap_or(self.duration * 3);
        let range = |m: String| Err(ArgError::Range(m));
        if self.interval.is_zero() || self.interval > self.duration {
            return range("--interval: more than zero and at most --duration".into());
        }
        if warmup >= self.duration {
            return range(format!(
                "--warmup {warmup:?} must be shorter than --duration {:?}",
                self.duration
            ));
        }
        if max_duration < self.duration {
            return range("--max-duration must be at least --duration".into());
        }
        if self.settle_window.is_zero() || self.settle_window >= max_duration {
            return range(format!(
                "--settle-window {:?}: more than zero and shorter than --max-duration {max_duration:?}",
                self.settle_window
            ));
        }
        for (flag, value) in [
            ("--min-r2", self.min_r2),
            ("--min-streaming", self.min_streaming),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return range(format!("{flag} {value}: between 0 and 1"));
            }
        }
        let mut memory: Vec<MemoryFrom> = self.pid.iter().map(|&p| MemoryFrom::Pid(p)).collect();
        memory.extend(self.spawn.iter().cloned().map(MemoryFrom::Spawn));
        memory.extend(self.metrics_url.iter().cloned().map(MemoryFrom::Metrics));
        if memory.is_empty() {
            return Err(ArgError::NoMemorySource);
        }
        if self.max_per_client == 0 {
            return range("--max-per-client: more than zero".into());
        }
        Ok(CheckConfig {
            url,
            method: self.method.clone(),
            headers,
            body,
            clients: self.clients,
            read_rate: self.read_rate,
            recv_buffer,
            duration: self.duration,
            warmup,
            min_window,
            settle_window: self.settle_window,
            max_duration,
            interval: self.interval,
            memory,
            limit: self.limit,
            thresholds: Thresholds {
                max_slope: self.max_slope as f64,
                min_r2: self.min_r2,
                max_per_client: self.max_per_client as f64,
            },
            min_streaming: self.min_streaming,
            connect_timeout: Duration::from_secs(10),
            spawn_timeout: self.spawn_timeout,
        })
    }
}

fn read_body(path: &std::path::Path) -> Result<Vec<u8>, ArgError> {
    let shown = || path.display().to_string();
    let failed = |error| ArgError::BodyFile {
        path: shown(),
        error,
    };
    let size = std::fs::metadata(path).map_err(failed)?.len();
    if size > MAX_BODY {
        return Err(ArgError::BodyTooLarge {
            path: shown(),
            size,
        });
    }
    std::fs::read(path).map_err(failed)
}

pub async fn run(args: CheckArgs) -> Result<(), Failure> {
    let config = args.config().map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(path) = &args.plot {
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !["svg", "png"].contains(&extension.to_ascii_lowercase().as_str()) {
            return Err(Failure::Usage(format!(
                "--plot {}: give a file ending in .svg or .png",
                path.display()
            )));
        }
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let report = weir_check::run(&config, |p| bar.set_message(progress_line(p))).await;
    bar.finish_and_clear();
    let report = match report {
        Ok(report) => report,
        Err(CheckError::Usage(m) | CheckError::TargetLost(m)) => return Err(Failure::Usage(m)),
        Err(CheckError::Setup(m)) => {
            eprintln!("weir check: INCONCLUSIVE: {m}");
            return Err(Failure::Exit(weir_check::Verdict::Inconclusive.exit_code()));
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("weir check: cannot serialise the report: {e}"),
        }
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &args.plot {
        // The verdict stands even if the picture cannot be written; say so on stderr.
        if let Err(e) = weir_check::plot(&report, path) {
            eprintln!("weir check: {e}");
        }
    }
    if let Some(path) = &args.html {
        if let Err(e) = weir_check::html(&report, path) {
            eprintln!("weir check: {e}");
        }
    }
    match report.verdict.exit_code() {
        0 => Ok(()),
        code => Err(Failure::Exit(code)),
    }
}

fn progress_line(p: &Progress) -> String {
    let phase = match p.phase {
        Phase::WarmUp => "warm-up",
        Phase::Settling => "kernel queues settling",
        Phase::Steady => "steady state",
    };
    let s = &p.sample;
    let queued = s
        .queued()
        .map(|q| format!(", socket queues {}", human_bytes(q as f64)))
        .unwrap_or_default();
    format!(
        "{:>4.0} s  {phase}: RSS {}{queued}; {}/{} clients streaming, {} finished, {} received",
        s.t,
        human_bytes(s.rss as f64),
        s.streaming,
        p.clients,
        p.finished,
        human_bytes(s.received as f64)
    )
}
