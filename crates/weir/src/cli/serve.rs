//! `weir serve`: the streaming HTTP server, from a TOML configuration.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;
use weir_server::pipeline;
use weir_server::serve::{ServeConfig, Server};

use super::Failure;

#[derive(Args, Debug)]
#[command(
    about = "Serve streaming routes (LLM token proxy, SQL exports, log tails, topics) and run Kafka pipelines from a TOML configuration",
    after_long_help = EXAMPLE
)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(long, short, value_name = "FILE", default_value = "weir.toml")]
    pub config: PathBuf,

    /// Check the configuration (syntax, values, environment variables) and exit.
    #[arg(long)]
    pub check_config: bool,

    /// How log lines look on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

const EXAMPLE: &str = r#"CONFIGURATION (weir.toml):
  listen = "127.0.0.1:8080"
  memory_budget = "256MiB"       # all streams' buffers together; past it: 503
  max_streams = 10000            # past it: 503 + Retry-After
  send_buffer = "64KiB"          # kernel send buffer per client socket
  header_timeout = "10s"         # slowloris guard
  body_timeout = "10s"           # whole request body, read before a stream slot is taken (408)
  max_request_body = "1MiB"      # one request body (413 past it)
  request_body_budget = "64MiB"  # all request bodies being read at once; past it: 503 + Retry-After
  shutdown_grace = "10s"         # after SIGTERM/SIGINT: streams finish and pipelines commit within it
  listen_backlog = 4096          # connects queued before accept (capped by net.core.somaxconn)
  admin_keys = ["admin-1"]       # the console: /_weir/, weir top; none = loopback clients only
  # tls_cert = "cert.pem"        # https:// (HTTP/2 or HTTP/1.1 by ALPN): PEM chain, leaf first
  # tls_key = "key.pem"          # its PEM private key; both or neither

  [[route]]
  kind = "llm_proxy"
  path = "/v1/chat/completions"
  protocol = "openai"            # or "anthropic" (POST /v1/messages)
  upstream = "http://127.0.0.1:8081/v1/chat/completions"   # or https://…
  # upstream_ca = "gateway-ca.pem"   # https: extra PEM roots besides Mozilla's
  upstream_key_env = "OPENAI_API_KEY"
  client_keys = ["key-1"]        # Bearer or x-api-key; none = open route
  buffer = "64KiB"               # per-stream share of memory_budget (upstream events up to half)
  receive_buffer = "64KiB"       # kernel receive buffer per upstream socket (HTTP/2: stream window)
  # upstream_http2 = "prior_knowledge"   # http://: HTTP/2 in plain text (h2c); https:// by ALPN
  # upstream_connections = 4     # HTTP/2 connections streams are spread over
  connect_timeout = "5s"
  first_byte_timeout = "60s"     # upstream response headers (504 past it)
  idle_timeout = "60s"           # gap between upstream frames
  client_stall_timeout = "60s"   # a client taking no bytes is cut off (HTTP/2: no window)
  keepalive = "15s"              # ': keep-alive' comments while upstream is silent

  [[route]]
  kind = "sql_export"            # GET: a query's rows as CSV or NDJSON, at the client's pace
  path = "/export/orders"
  database = "sqlite:///var/lib/app/orders.db"   # or "postgres://user@host:5432/db"
  query = "SELECT id, customer, amount FROM orders WHERE amount >= :min_amount ORDER BY id"
                                 # :name = a query-string parameter, bound, never spliced
  formats = ["csv", "ndjson"]    # ?format= or Accept picks; the first is the default
  gzip_level = 1                 # when the client sends Accept-Encoding: gzip
  batch_rows = 1000              # rows fetched from the cursor at a time
  buffer = "256KiB"              # per-export share of memory_budget
  pool_size = 4                  # database connections
  max_exports = 4                # exports at once; past it: 503 + Retry-After
  pool_wait = "5s"               # wait for a free connection (503 past it)

  [[route]]
  kind = "file_tail"             # GET: a file's lines as SSE, NDJSON or WebSocket, as tail -F
  path = "/logs/app"
  file = "/var/log/app.log"      # ?from=start, ?lines=N, ?grep=TEXT, Last-Event-ID resumes

  [[route]]
  kind = "topic"                 # POST NDJSON publishes; GET (SSE, NDJSON, WebSocket) subscribes
  path = "/topics/ticks"
  policy = "drop_oldest"         # a full subscriber: block | drop_oldest | drop_newest | disconnect
  buffer = "256KiB"              # per subscriber
  # udp_listen = "127.0.0.1:5514"  # each datagram is published

  [[pipeline]]                   # runs until SIGTERM; a file of only pipelines needs no listen
  name = "copy"
  memory_budget = "16MiB"        # every buffer, librdkafka's queues included
  transforms = ["throttle:2MB"]  # weir run's stages, on each message's value
  [pipeline.source]
  kind = "kafka"
  brokers = "127.0.0.1:9092"
  topics = ["in"]
  group = "weir-copy"            # processes with the same group share the partitions
  [pipeline.source.options]      # handed to librdkafka
  "session.timeout.ms" = "6000"
  [pipeline.sink]
  kind = "kafka"                 # or "file" (path, fsync before ack) or "http" (url, 2xx acks)
  brokers = "127.0.0.1:9092"
  topic = "out"

TRY IT:
  weir mock-llm &
  weir serve --config weir.toml
  curl -N http://127.0.0.1:8080/v1/chat/completions -H 'Authorization: Bearer key-1' \
       -H 'content-type: application/json' -d '{"model":"m","stream":true,"messages":[]}'
  curl http://127.0.0.1:8080/metrics     # Prometheus: streams by outcome, bytes, TTFT, budget
  weir top --url http://127.0.0.1:8080   # live: streams, stages, buffers (or open /_weir/)
  curl -H 'Accept-Encoding: gzip' 'http://127.0.0.1:8080/export/orders?min_amount=10' | zcat | head"#;

pub fn init_logs(format: LogFormat) {
    init_logs_at(format, "info");
}

/// Logs on stderr from `default` up, or as `RUST_LOG` says.
pub fn init_logs_at(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    init_logs(args.log_format);
    let config = ServeConfig::load(&args.config).map_err(|e| Failure::Usage(e.to_string()))?;
    let listen = config.listen_addr();
    let pipelines = config.pipelines.clone();
    let grace = config.shutdown_grace;
    let server = Server::new(config).map_err(|e| Failure::Usage(e.to_string()))?;
    let registry = server.registry().clone();
    if args.check_config {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signals(shutdown.clone()));
    let http = match listen {
        Some(listen) => {
            let listener = server
                .bind(listen)
                .map_err(|e| Failure::Pipeline(format!("cannot listen on {listen}: {e}")))?;
            let scheme = if server.is_tls() { "https" } else { "http" };
            tracing::info!("listening on {scheme}://{listen}");
            Some(tokio::spawn(server.serve(listener, shutdown.clone())))
        }
        None => None,
    };
    let mut running = tokio::task::JoinSet::new();
    for p in pipelines {
        running.spawn(pipeline::run(
            p,
            shutdown.clone(),
            grace,
            Some(registry.clone()),
        ));
    }
    let mut failure = None;
    while let Some(ended) = running.join_next().await {
        let outcome = ended
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = outcome {
            // One pipeline stopping on an error stops the process: its supervisor restarts
            // it, and the other pipelines commit what they acked on the way out.
            failure.get_or_insert(e);
            shutdown.cancel();
        }
    }
    if failure.is_some() {
        shutdown.cancel();
    }
    if let Some(http) = http {
        http.await
            .map_err(|e| Failure::Pipeline(e.to_string()))?
            .map_err(|e| Failure::Pipeline(e.to_string()))?;
    }
    match failure {
        Some(e) => Err(Failure::Pipeline(e)),
        None => Ok(()),
    }
}

/// The first SIGTERM or SIGINT starts a graceful stop; a second one exits at once.
async fn stop_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!(
            "cannot watch SIGTERM/SIGINT: they will stop weir without a graceful shutdown"
        );
        return;
    };
    for n in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if n == 0 {
            tracing::info!(
                "stopping: streams and pipelines get their grace (a second signal exits at once)"
            );
            shutdown.cancel();
        }
    }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
