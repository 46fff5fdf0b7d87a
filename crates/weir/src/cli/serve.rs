//! `weir serve`: the streaming HTTP server, from a TOML configuration.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;
use weir_server::serve::{ServeConfig, Server};

use super::Failure;

#[derive(Args, Debug)]
#[command(
    about = "Serve streaming routes (LLM token proxy, SQL exports) from a TOML configuration",
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
  max_request_body = "1MiB"

  [[route]]
  kind = "llm_proxy"
  path = "/v1/chat/completions"
  protocol = "openai"            # or "anthropic" (POST /v1/messages)
  upstream = "http://127.0.0.1:8081/v1/chat/completions"   # or https://…
  # upstream_ca = "gateway-ca.pem"   # https: extra PEM roots besides Mozilla's
  upstream_key_env = "OPENAI_API_KEY"
  client_keys = ["key-1"]        # Bearer or x-api-key; none = open route
  buffer = "64KiB"               # per-stream share of memory_budget (upstream events up to half)
  receive_buffer = "64KiB"       # kernel receive buffer per upstream socket
  connect_timeout = "5s"
  first_byte_timeout = "60s"     # upstream response headers (504 past it)
  idle_timeout = "60s"           # gap between upstream frames
  client_stall_timeout = "60s"   # a client taking no bytes is cut off
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

TRY IT:
  weir mock-llm &
  weir serve --config weir.toml
  curl -N http://127.0.0.1:8080/v1/chat/completions -H 'Authorization: Bearer key-1' \
       -H 'content-type: application/json' -d '{"model":"m","stream":true,"messages":[]}'
  curl http://127.0.0.1:8080/metrics     # Prometheus: streams by outcome, bytes, TTFT, budget
  curl -H 'Accept-Encoding: gzip' 'http://127.0.0.1:8080/export/orders?min_amount=10' | zcat | head"#;

pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    let listen = config.listen;
    let server = Server::new(config).map_err(Failure::Usage)?;
    if args.check_config {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::Pipeline(format!("cannot listen on {listen}: {e}")))?;
    tracing::info!("listening on http://{listen}");
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    server
        .serve(listener, shutdown)
        .await
        .map_err(|e| Failure::Pipeline(e.to_string()))
}
