//! The `weir serve` configuration file: TOML, checked whole before anything starts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use weir_runtime::size::{parse_duration, parse_size};
use weir_stages::sources::sql::QueryError;

use super::send_queue::MIN_SEND_BUFFER;
use crate::pipeline::PipelineConfigError;

/// The whole server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on; without it, a file of only `[[pipeline]]`s serves no HTTP
    /// (and one with routes listens on 127.0.0.1:8080).
    pub listen: Option<SocketAddr>,
    /// Bytes all streams together may buffer; a stream that cannot get its share is refused (503).
    #[serde(default = "defaults::memory_budget", deserialize_with = "size")]
    pub memory_budget: u64,
    /// Streams open at once; past it new ones are refused (503).
    #[serde(default = "defaults::max_streams")]
    pub max_streams: usize,
    /// Kernel send buffer of accepted client sockets (SO_SNDBUF, bookkeeping included):
    /// bounds what a slow client parks in the kernel.
    #[serde(default = "defaults::socket_buffer", deserialize_with = "size")]
    pub send_buffer: u64,
    /// Connections the kernel queues before weir accepts them (capped by
    /// net.core.somaxconn): a burst of connects waits instead of retrying SYNs.
    #[serde(default = "defaults::listen_backlog")]
    pub listen_backlog: u32,
    /// How long a client may take to send its request headers (slowloris).
    #[serde(default = "defaults::header_timeout", deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// How long streams and pipelines get to finish once SIGTERM or SIGINT came.
    #[serde(default = "defaults::shutdown_grace", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// How long a client may take to send its whole request body (408 past it); the body
    /// is read before a stream slot or any budget is reserved.
    #[serde(default = "defaults::body_timeout", deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// Largest request body accepted (413 past it).
    #[serde(default = "defaults::max_request_body", deserialize_with = "size")]
    pub max_request_body: u64,
    /// Bytes all request bodies being read may hold at once, each until its stream has
    /// started: past it a request is refused with 503 and `Retry-After`.
    #[serde(default = "defaults::request_body_budget", deserialize_with = "size")]
    pub request_body_budget: u64,
    /// Keys that open the console (`/_weir/`): `Authorization: Bearer KEY` or `x-api-key`;
    /// none = the console answers only loopback clients.
    #[serde(default)]
    pub admin_keys: Vec<String>,
    /// PEM file of the certificate chain (leaf first) clients are served with over TLS,
    /// HTTP/2 or HTTP/1.1 by ALPN; with `tls_key`, or neither for plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1, unencrypted).
    pub tls_key: Option<PathBuf>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Long-running pipelines (Kafka -> transforms -> sink), run until SIGTERM or SIGINT.
    #[serde(default, rename = "pipeline")]
    pub pipelines: Vec<crate::pipeline::PipelineConfig>,
}

/// One `[[route]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteConfig {
    LlmProxy(LlmProxyRoute),
    SqlExport(SqlExportRoute),
    FileTail(FileTailRoute),
    Topic(TopicRoute),
}

impl RouteConfig {
    pub fn path(&self) -> &str {
        match self {
            RouteConfig::LlmProxy(r) => &r.path,
            RouteConfig::SqlExport(r) => &r.path,
            RouteConfig::FileTail(r) => &r.path,
            RouteConfig::Topic(r) => &r.path,
        }
    }

    pub fn cors_origins(&self) -> &[String] {
        match self {
            RouteConfig::LlmProxy(r) => &r.cors_origins,
            RouteConfig::SqlExport(r) => &r.cors_origins,
            RouteConfig::FileTail(r) => &r.cors_origins,
            RouteConfig::Topic(r) => &r.cors_origins,
        }
    }
}

/// The wire format of an LLM API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `POST /v1/chat/completions`: `data: {…}` chunks, then `data: [DONE]`.
    Openai,
    /// `POST /v1/messages`: `event: content_block_delta` … `message_stop`.
    Anthropic,
}

/// `kind = "llm_proxy"`: streams an upstream LLM API's tokens to the client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmProxyRoute {
    pub path: String,
    pub protocol: Protocol,
    /// The full URL requests are forwarded to, `http://` or `https://`.
    pub upstream: String,
    /// PEM file of extra roots an `https://` upstream's certificate may chain to
    /// (a private gateway's CA), trusted besides Mozilla's.
    pub upstream_ca: Option<PathBuf>,
    /// Environment variable holding the upstream API key (never logged, never sent to clients).
    pub upstream_key_env: Option<String>,
    /// Keys clients must present (`Authorization: Bearer …` or `x-api-key`); empty = open route.
    #[serde(default)]
    pub client_keys: Vec<String>,
    /// Redactors applied to the token text: email, phone, card, iban, ipv4, secret.
    #[serde(default)]
    pub redact: Vec<String>,
    /// Bytes of one stream's buffers, reserved from `memory_budget` when it starts.
    #[serde(default = "defaults::stream_buffer", deserialize_with = "size")]
    pub buffer: u64,
    /// What a paused upstream can park for one stream: over HTTP/1.1 the upstream socket's
    /// kernel receive buffer (SO_RCVBUF, bookkeeping included); over HTTP/2 the stream's
    /// flow-control window, held in weir's heap and reserved from `memory_budget` with `buffer`.
    #[serde(default = "defaults::socket_buffer", deserialize_with = "size")]
    pub receive_buffer: u64,
    /// `"prior_knowledge"`: speak HTTP/2 in plain text (h2c) to an `http://` upstream.
    /// `https://` upstreams are offered HTTP/2 by ALPN without it.
    pub upstream_http2: Option<Http2Mode>,
    /// HTTP/2 connections per upstream that streams are spread over; more are opened only
    /// when every one has as many streams as the upstream allows.
    #[serde(default = "defaults::upstream_connections")]
    pub upstream_connections: usize,
    #[serde(default = "defaults::connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Until the upstream's response headers.
    #[serde(
        default = "defaults::first_byte_timeout",
        deserialize_with = "duration"
    )]
    pub first_byte_timeout: Duration,
    /// Longest gap between two upstream frames once streaming.
    #[serde(default = "defaults::idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// How long a client may take no bytes at all before it is cut off.
    #[serde(
        default = "defaults::client_stall_timeout",
        deserialize_with = "duration"
    )]
    pub client_stall_timeout: Duration,
    /// Interval of `: keep-alive` comments while the upstream is silent.
    #[serde(default = "defaults::keepalive", deserialize_with = "duration")]
    pub keepalive: Duration,
    /// Largest non-streaming upstream response forwarded.
    #[serde(default = "defaults::max_response_body", deserialize_with = "size")]
    pub max_response_body: u64,
    /// Web origins (`scheme://host[:port]`, or `*`) whose pages may call this route; empty = no CORS.
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

/// How an `http://` upstream is spoken to over HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Http2Mode {
    /// HTTP/2 from the first byte, without an upgrade (RFC 9113 §3.3).
    PriorKnowledge,
}

/// `kind = "file_tail"`: a file's lines as they are written (SSE or NDJSON), as `tail -F`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTailRoute {
    pub path: String,
    /// The followed file: absolute, or relative to where weir runs (it must exist then).
    pub file: PathBuf,
    /// Most a client's reads take at once: what one reader holds, whatever its speed.
    #[serde(default = "defaults::stream_buffer", deserialize_with = "size")]
    pub buffer: u64,
    /// A longer line is cut, with a marker, rather than held whole.
    #[serde(default = "defaults::max_line", deserialize_with = "size")]
    pub max_line: u64,
    /// `: keep-alive` comments while the file is quiet.
    #[serde(default = "defaults::keepalive", deserialize_with = "duration")]
    pub keepalive: Duration,
    /// How long a client may take no bytes at all before it is cut off.
    #[serde(
        default = "defaults::client_stall_timeout",
        deserialize_with = "duration"
    )]
    pub client_stall_timeout: Duration,
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

impl FileTailRoute {
    fn check(&self) -> Result<(), RouteProblem> {
        let file = &self.file;
        if file.is_dir() {
            return Err(RouteProblem::FileIsDirectory(file.clone()));
        }
        if file.is_relative() && !file.exists() {
            return Err(RouteProblem::FileRelativeMissing(file.clone()));
        }
        let dir = std::path::absolute(file)
            .ok()
            .and_then(|f| f.parent().map(Path::to_path_buf));
        if !dir.as_deref().is_some_and(Path::is_dir) {
            return Err(RouteProblem::FileDirectoryMissing(file.clone()));
        }
        if self.buffer < 1024 || self.max_line < 1 {
            return Err(RouteProblem::TailSizes);
        }
        Ok(())
    }
}

/// `kind = "topic"`: `POST` publishes NDJSON lines, `GET` subscribes; a gate per subscriber.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRoute {
    pub path: String,
    /// What a full subscriber's queue does: block | drop_oldest | drop_newest | disconnect.
    #[serde(default = "defaults::policy")]
    pub policy: super::topic::Policy,
    /// Bytes queued per subscriber.
    #[serde(default = "defaults::topic_buffer", deserialize_with = "size")]
    pub buffer: u64,
    /// Keys allowed to publish (`Authorization: Bearer …` or `x-api-key`); none = anyone.
    #[serde(default)]
    pub publish_keys: Vec<String>,
    /// Each datagram received here is published (it cannot wait: a full queue drops it).
    pub udp_listen: Option<SocketAddr>,
    /// A longer published line is refused (400 naming it).
    #[serde(default = "defaults::max_line", deserialize_with = "size")]
    pub max_line: u64,
    #[serde(default = "defaults::keepalive", deserialize_with = "duration")]
    pub keepalive: Duration,
    #[serde(
        default = "defaults::client_stall_timeout",
        deserialize_with = "duration"
    )]
    pub client_stall_timeout: Duration,
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

impl TopicRoute {
    fn check(&self) -> Result<(), RouteProblem> {
        if self.buffer < 1024 {
            return Err(RouteProblem::TopicBuffer);
        }
        if self.max_line < 1 {
            return Err(RouteProblem::TopicMaxLine);
        }
        Ok(())
    }
}

/// A format an export can be streamed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// A header row, then RFC 4180 records (`text/csv`).
    Csv,
    /// One JSON object per row and line (`application/x-ndjson`).
    Ndjson,
}

impl ExportFormat {
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Ndjson => "ndjson",
        }
    }
}

/// Where an export's rows come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://PATH`: `sqlite:///abs/path.db` or `sqlite://relative.db`, opened read-only.
    Sqlite(std::path::PathBuf),
    /// `postgres://user:password@host:port/db` (or `postgresql://`), as libpq reads it.
    Postgres(String),
}

/// A `database` that is not a URL weir can open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("`sqlite://` needs a file path, as in `sqlite:///var/lib/app.db`")]
    NoSqlitePath,
    #[error("database must be a `sqlite://PATH` or `postgres://…` URL")]
    Scheme,
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, DatabaseUrlError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(DatabaseUrlError::NoSqlitePath);
            }
            return Ok(DatabaseUrl::Sqlite(path.into()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        Err(DatabaseUrlError::Scheme)
    }
}

/// `kind = "sql_export"`: streams a query's rows as CSV or NDJSON, gzip'd on request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlExportRoute {
    pub path: String,
    /// `sqlite://PATH` or `postgres://…`.
    pub database: String,
    /// One SELECT; `:name` marks a parameter taken from the query string, bound, never spliced.
    pub query: String,
    /// Formats offered, the first being the default (`?format=` or `Accept` choose).
    #[serde(default = "defaults::export_formats")]
    pub formats: Vec<ExportFormat>,
    /// Rows fetched from the cursor at a time.
    #[serde(default = "defaults::batch_rows")]
    pub batch_rows: usize,
    /// Bytes of one export's buffers (rows, text, compressed), reserved from `memory_budget`.
    #[serde(default = "defaults::export_buffer", deserialize_with = "size")]
    pub buffer: u64,
    /// Database connections this route keeps open at most.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// Exports running at once; past it: 503 + Retry-After. Default: `pool_size`.
    pub max_exports: Option<usize>,
    /// How long an admitted export may wait for a connection (503 past it).
    #[serde(default = "defaults::pool_wait", deserialize_with = "duration")]
    pub pool_wait: Duration,
    /// gzip level 1-9 when the client sends `Accept-Encoding: gzip`.
    #[serde(default = "defaults::gzip_level")]
    pub gzip_level: u32,
    /// How long a client may take no bytes at all before it is cut off.
    #[serde(
        default = "defaults::client_stall_timeout",
        deserialize_with = "duration"
    )]
    pub client_stall_timeout: Duration,
    /// Web origins (`scheme://host[:port]`, or `*`) whose pages may call this route; empty = no CORS.
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

impl SqlExportRoute {
    pub fn max_exports(&self) -> usize {
        self.max_exports.unwrap_or(self.pool_size)
    }
}

mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn memory_budget() -> u64 {
        256 << 20
    }
    pub fn listen_backlog() -> u32 {
        4096
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_streams() -> usize {
        10_000
    }
    pub fn socket_buffer() -> u64 {
        64 << 10
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn body_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_request_body() -> u64 {
        1 << 20
    }
    pub fn request_body_budget() -> u64 {
        64 << 20
    }
    pub fn upstream_connections() -> usize {
        4
    }
    pub fn stream_buffer() -> u64 {
        64 << 10
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn first_byte_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn client_stall_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn policy() -> super::super::topic::Policy {
        super::super::topic::Policy::DropOldest
    }
    pub fn topic_buffer() -> u64 {
        256 << 10
    }
    pub fn max_line() -> u64 {
        1 << 20
    }
    pub fn keepalive() -> Duration {
        Duration::from_secs(15)
    }
    pub fn max_response_body() -> u64 {
        16 << 20
    }
    pub fn export_formats() -> Vec<super::ExportFormat> {
        vec![super::ExportFormat::Csv, super::ExportFormat::Ndjson]
    }
    pub fn batch_rows() -> usize {
        1000
    }
    pub fn export_buffer() -> u64 {
        256 << 10
    }
    pub fn pool_size() -> usize {
        4
    }
    pub fn pool_wait() -> Duration {
        Duration::from_secs(5)
    }
    /// Level 1: exports are CPU-bound on compression; level 1 deflates CSV to within
    /// ~15% of level 6's size at several times the speed.
    pub fn gzip_level() -> u32 {
        1
    }
}

pub(crate) fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d).map(Some)
}

pub(crate) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(n),
        Raw::Text(t) => parse_size(&t).map_err(D::Error::custom),
    }
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)
}

/// A configuration file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid {
        path: String,
        // Boxed: the problems (toml's error among them) make a large enum.
        problem: Box<InvalidConfig>,
    },
}

/// What is wrong in a configuration's text, naming the key and the route or pipeline.
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    /// Not TOML, or a value of the wrong type: toml's message names line and column.
    #[error("{}", .0.to_string().trim_end())]
    Toml(#[from] toml::de::Error),
    #[error("no [[route]] and no [[pipeline]]: nothing to serve")]
    NothingToServe,
    #[error(transparent)]
    Pipeline(#[from] PipelineConfigError),
    #[error("{at}: another pipeline has the same name")]
    SamePipelineName { at: String },
    /// `number` counts from 1.
    #[error("admin_keys #{number}: a key must be non-empty, without spaces or control characters")]
    AdminKey { number: usize },
    #[error("tls_cert is set without tls_key: TLS needs both the certificate and its key")]
    CertWithoutKey,
    #[error("tls_key is set without tls_cert: TLS needs both the certificate and its key")]
    KeyWithoutCert,
    #[error("send_buffer must be at least {} KiB", MIN_SEND_BUFFER >> 10)]
    SendBuffer,
    #[error("request_body_budget ({budget} bytes) is under max_request_body ({max} bytes): a body of the largest size could never be read")]
    RequestBodyBudget { budget: u64, max: u64 },
    /// `at` names the route: `route #1 (/v1/chat/completions)`.
    #[error("{at}: {problem}")]
    Route { at: String, problem: RouteProblem },
}

/// What is wrong in one `[[route]]` table, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum RouteProblem {
    #[error("path must start with `/`")]
    PathNotAbsolute,
    #[error("the server answers {0} itself")]
    ServerPath(String),
    #[error("paths under /_weir/ are the console's")]
    ConsolePath,
    #[error("another route has the same path")]
    SamePath,
    #[error(
        "cors_origins: `{origin}` is not an origin: {why} \
         (write scheme://host[:port], as in `http://localhost:5173`, or `*`)"
    )]
    CorsOrigin { origin: String, why: &'static str },
    // llm_proxy
    #[error("upstream `{upstream}` is not a URL: {error}")]
    UpstreamNotUrl {
        upstream: String,
        error: hyper::http::uri::InvalidUri,
    },
    #[error("upstream_ca applies to https:// upstreams; `{0}` is http://")]
    CaOnHttp(String),
    #[error("upstream `{0}` must be an http:// or https:// URL")]
    UpstreamScheme(String),
    #[error("upstream `{0}` has no host")]
    UpstreamNoHost(String),
    #[error("unknown redactor `{0}` (known: {known})", known = KNOWN_REDACTORS.join(", "))]
    UnknownRedactor(String),
    #[error("buffer must be at least 1 byte")]
    ProxyBuffer,
    #[error(
        "upstream_http2 = \"prior_knowledge\" is for http:// upstreams; \
         https:// ones are offered HTTP/2 by ALPN"
    )]
    Http2OverHttps,
    #[error("upstream_connections must be 1 to {MAX_UPSTREAM_CONNECTIONS}")]
    UpstreamConnections,
    #[error("receive_buffer must be at most {MAX_H2_WINDOW} bytes (HTTP/2's largest window)")]
    ReceiveBuffer,
    // sql_export
    #[error(transparent)]
    Database(#[from] DatabaseUrlError),
    #[error("query: {0}")]
    Query(#[from] QueryError),
    #[error("query: `:{FORMAT_KEY}` is taken by the format choice; rename the parameter")]
    FormatParameter,
    #[error("formats must offer at least one of csv, ndjson")]
    NoFormats,
    #[error("batch_rows must be 1 to {MAX_BATCH_ROWS}")]
    BatchRows,
    #[error("pool_size and max_exports must be at least 1")]
    PoolSize,
    #[error("gzip_level must be 1 to 9")]
    GzipLevel,
    #[error("buffer must be at least 4KiB")]
    ExportBuffer,
    // file_tail
    #[error("file {} is a directory", .0.display())]
    FileIsDirectory(PathBuf),
    #[error(
        "file {} is relative and does not exist (write an absolute path; a file that does not exist yet is waited for)",
        .0.display()
    )]
    FileRelativeMissing(PathBuf),
    #[error("the directory of file {} does not exist", .0.display())]
    FileDirectoryMissing(PathBuf),
    #[error("buffer must be at least 1 KiB, max_line at least 1 B")]
    TailSizes,
    // topic
    #[error("buffer must be at least 1 KiB")]
    TopicBuffer,
    #[error("max_line must be at least 1 byte")]
    TopicMaxLine,
}

/// Paths the server answers itself.
const SERVER_PATHS: [&str; 2] = ["/healthz", "/metrics"];

const KNOWN_REDACTORS: [&str; 6] = ["email", "phone", "card", "iban", "ipv4", "secret"];

impl ServeConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|problem| ConfigError::Invalid {
            path: path.display().to_string(),
            problem: Box::new(problem),
        })
    }

    /// Parses and checks a configuration; the error names the line and column.
    pub fn parse(text: &str) -> Result<Self, InvalidConfig> {
        // toml's message already carries the line, the column and the offending text.
        let config: ServeConfig = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Where HTTP is served: `listen`, or its default when there are routes to serve.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen
            .or_else(|| (!self.routes.is_empty()).then(defaults::listen))
    }

    fn check(&self) -> Result<(), InvalidConfig> {
        if self.routes.is_empty() && self.pipelines.is_empty() {
            return Err(InvalidConfig::NothingToServe);
        }
        let mut names = HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let at = format!("pipeline #{} ({})", i + 1, p.name);
            p.check(&at)?;
            if !names.insert(p.name.as_str()) {
                return Err(InvalidConfig::SamePipelineName { at });
            }
        }
        if let Some(bad) = self
            .admin_keys
            .iter()
            .position(|k| k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(InvalidConfig::AdminKey { number: bad + 1 });
        }
        self.check_tls()?;
        if self.send_buffer < MIN_SEND_BUFFER {
            return Err(InvalidConfig::SendBuffer);
        }
        if self.request_body_budget < self.max_request_body {
            return Err(InvalidConfig::RequestBodyBudget {
                budget: self.request_body_budget,
                max: self.max_request_body,
            });
        }
        let mut paths = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            Self::check_route(route, &mut paths).map_err(|problem| InvalidConfig::Route {
                at: format!("route #{} ({})", i + 1, route.path()),
                problem,
            })?;
        }
        Ok(())
    }

    /// One route's own keys, and its path against those of the routes before it.
    fn check_route<'a>(
        route: &'a RouteConfig,
        paths: &mut HashSet<&'a str>,
    ) -> Result<(), RouteProblem> {
        if !route.path().starts_with('/') {
            return Err(RouteProblem::PathNotAbsolute);
        }
        if SERVER_PATHS.contains(&route.path()) {
            return Err(RouteProblem::ServerPath(route.path().to_string()));
        }
        if route.path() == "/_weir" || route.path().starts_with("/_weir/") {
            return Err(RouteProblem::ConsolePath);
        }
        if !paths.insert(route.path()) {
            return Err(RouteProblem::SamePath);
        }
        match route {
            RouteConfig::LlmProxy(r) => r.check()?,
            RouteConfig::SqlExport(r) => r.check()?,
            RouteConfig::FileTail(r) => r.check()?,
            RouteConfig::Topic(r) => r.check()?,
        }
        for origin in route.cors_origins() {
            check_origin(origin).map_err(|why| RouteProblem::CorsOrigin {
                origin: origin.clone(),
                why,
            })?;
        }
        Ok(())
    }
}

impl ServeConfig {
    /// `tls_cert` and `tls_key` come together; the files are read when the server is built.
    fn check_tls(&self) -> Result<(), InvalidConfig> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err(InvalidConfig::CertWithoutKey),
            (None, Some(_)) => Err(InvalidConfig::KeyWithoutCert),
            _ => Ok(()),
        }
    }
}

/// Whether `origin` is written as a browser sends it in `Origin`: `scheme://host[:port]`, or `*`.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" {
        return Ok(());
    }
    let (scheme, authority) = origin.split_once("://").ok_or("no `://`")?;
    let mut scheme_chars = scheme.chars();
    let scheme_ok = scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme_chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err("the scheme is not a URL scheme");
    }
    if authority.contains(['/', '?', '#']) {
        return Err("an origin has no path, query or fragment, not even a trailing `/`");
    }
    if authority.contains('@') {
        return Err("an origin has no user name or password");
    }
    let authority: hyper::http::uri::Authority = authority
        .parse()
        .map_err(|_| "the host or port is not valid")?;
    if authority.host().is_empty() {
        return Err("it has no host");
    }
    // `Authority` takes any digits after the colon but reads a port only up to 65535.
    let port_written = authority.as_str() != authority.host();
    match (port_written, authority.port_u16()) {
        (true, None) => Err("the port is not a number from 0 to 65535"),
        (_, Some(80)) if scheme.eq_ignore_ascii_case("http") => {
            Err("browsers leave out the default port 80 of http://")
        }
        (_, Some(443)) if scheme.eq_ignore_ascii_case("https") => {
            Err("browsers leave out the default port 443 of https://")
        }
        _ => Ok(()),
    }
}

impl LlmProxyRoute {
    fn check(&self) -> Result<(), RouteProblem> {
        let uri: hyper::Uri =
            self.upstream
                .parse()
                .map_err(|error| RouteProblem::UpstreamNotUrl {
                    upstream: self.upstream.clone(),
                    error,
                })?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.upstream_ca.is_none() => {}
            Some("http") => return Err(RouteProblem::CaOnHttp(self.upstream.clone())),
            _ => return Err(RouteProblem::UpstreamScheme(self.upstream.clone())),
        }
        if uri.host().is_none() {
            return Err(RouteProblem::UpstreamNoHost(self.upstream.clone()));
        }
        if let Some(unknown) = self
            .redact
            .iter()
            .find(|r| !KNOWN_REDACTORS.contains(&r.as_str()))
        {
            return Err(RouteProblem::UnknownRedactor(unknown.clone()));
        }
        if self.buffer == 0 {
            return Err(RouteProblem::ProxyBuffer);
        }
        if self.upstream_http2.is_some() && uri.scheme_str() == Some("https") {
            return Err(RouteProblem::Http2OverHttps);
        }
        if !(1..=MAX_UPSTREAM_CONNECTIONS).contains(&self.upstream_connections) {
            return Err(RouteProblem::UpstreamConnections);
        }
        if self.receive_buffer > u64::from(MAX_H2_WINDOW) {
            return Err(RouteProblem::ReceiveBuffer);
        }
        Ok(())
    }
}

/// Most HTTP/2 connections a route keeps to its upstream in the normal case.
const MAX_UPSTREAM_CONNECTIONS: usize = 1024;
/// HTTP/2's largest flow-control window (RFC 9113 §6.9.1).
pub(crate) const MAX_H2_WINDOW: u32 = (1 << 31) - 1;

/// The query-string key that picks the format; no parameter may take it.
pub const FORMAT_KEY: &str = "format";

/// Largest rows-per-fetch accepted: a batch is held whole in memory.
const MAX_BATCH_ROWS: usize = 100_000;

impl SqlExportRoute {
    fn check(&self) -> Result<(), RouteProblem> {
        DatabaseUrl::parse(&self.database)?;
        let query = weir_stages::sources::sql::NamedQuery::parse(&self.query)?;
        if query.names().iter().any(|n| n == FORMAT_KEY) {
            return Err(RouteProblem::FormatParameter);
        }
        if self.formats.is_empty() {
            return Err(RouteProblem::NoFormats);
        }
        if !(1..=MAX_BATCH_ROWS).contains(&self.batch_rows) {
            return Err(RouteProblem::BatchRows);
        }
        if self.pool_size == 0 || self.max_exports == Some(0) {
            return Err(RouteProblem::PoolSize);
        }
        if !(1..=9).contains(&self.gzip_level) {
            return Err(RouteProblem::GzipLevel);
        }
        if self.buffer < 4096 {
            return Err(RouteProblem::ExportBuffer);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen = "127.0.0.1:8080"
memory_budget = "256MiB"
max_streams = 10000

[[route]]
kind = "llm_proxy"
path = "/v1/chat/completions"
protocol = "openai"
upstream = "http://127.0.0.1:8081/v1/chat/completions"
upstream_key_env = "OPENAI_API_KEY"
client_keys = ["key-1"]
redact = ["email", "phone", "card", "iban", "ipv4", "secret"]
"#;

    #[test]
    fn the_documented_example_parses_with_defaults() {
        let c = ServeConfig::parse(EXAMPLE).unwrap();
        assert_eq!(c.memory_budget, 256 << 20);
        assert_eq!(c.send_buffer, 64 << 10);
        let RouteConfig::LlmProxy(r) = &c.routes[0] else {
            panic!("not an llm_proxy route");
        };
        assert_eq!(r.protocol, Protocol::Openai);
        assert_eq!(r.client_keys, ["key-1"]);
        assert_eq!(r.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn https_upstreams_take_an_optional_ca_file() {
        let https = EXAMPLE.replace("http://127.0.0.1:8081", "https://api.openai.com");
        let with_ca = format!("{https}upstream_ca = \"/etc/weir/gateway-ca.pem\"\n");
        for (text, ca) in [
            (https.as_str(), None),
            (&with_ca, Some("/etc/weir/gateway-ca.pem")),
        ] {
            let c = ServeConfig::parse(text).unwrap();
            let RouteConfig::LlmProxy(r) = &c.routes[0] else {
                panic!("not an llm_proxy route");
            };
            assert_eq!(r.upstream_ca.as_deref(), ca.map(Path::new));
        }
    }

    #[test]
    fn http2_upstreams_are_checked() {
        let h2c = format!("{EXAMPLE}upstream_http2 = \"prior_knowledge\"\n");
        let c = ServeConfig::parse(&h2c).unwrap();
        let RouteConfig::LlmProxy(r) = &c.routes[0] else {
            panic!("not an llm_proxy route");
        };
        assert_eq!(
            (r.upstream_http2, r.upstream_connections),
            (Some(Http2Mode::PriorKnowledge), 4)
        );
        let err = ServeConfig::parse(&h2c.replace("http://127", "https://127"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("for http:// upstreams"), "{err}");
        let err = ServeConfig::parse(&format!("{h2c}upstream_connections = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream_connections must be 1 to"), "{err}");
        let err = ServeConfig::parse(&format!("{h2c}receive_buffer = \"4GiB\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTP/2's largest window"), "{err}");
        let err = ServeConfig::parse(
            &EXAMPLE.replace("secret\"]", "secret\"]\nupstream_http2 = \"yes\""),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("prior_knowledge"), "{err}");
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = ServeConfig::parse("listen = \"127.0.0.1:8080\"\nmax_streams = ten\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2, column 15"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let bad_size = EXAMPLE.replace("\"256MiB\"", "\"lots\"");
        let err = ServeConfig::parse(&bad_size).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("not a size"),
            "{err}"
        );

        let unknown_field = EXAMPLE.replace("client_keys", "client_kyes");
        let err = ServeConfig::parse(&unknown_field).unwrap_err().to_string();
        assert!(err.contains("client_kyes"), "{err}");

        let bad_redactor = EXAMPLE.replace("\"iban\"", "\"passport\"");
        let err = ServeConfig::parse(&bad_redactor).unwrap_err().to_string();
        assert!(err.contains("unknown redactor `passport`"), "{err}");

        let ftp = EXAMPLE.replace("http://127.0.0.1:8081", "ftp://127.0.0.1:8081");
        let err = ServeConfig::parse(&ftp).unwrap_err().to_string();
        assert!(err.contains("must be an http:// or https:// URL"), "{err}");

        let ca_on_http = format!("{EXAMPLE}upstream_ca = \"/etc/ca.pem\"\n");
        let err = ServeConfig::parse(&ca_on_http).unwrap_err().to_string();
        assert!(err.contains("upstream_ca applies to https://"), "{err}");

        let taken = EXAMPLE.replace("\"/v1/chat/completions\"", "\"/metrics\"");
        let err = ServeConfig::parse(&taken).unwrap_err().to_string();
        assert!(err.contains("answers /metrics itself"), "{err}");

        let tiny_send_buffer = EXAMPLE.replace(
            "max_streams = 10000",
            "max_streams = 10000\nsend_buffer = 4096",
        );
        let err = ServeConfig::parse(&tiny_send_buffer)
            .unwrap_err()
            .to_string();
        assert!(err.contains("send_buffer must be at least 16 KiB"), "{err}");

        let small_body_budget = EXAMPLE.replace(
            "max_streams = 10000",
            "max_streams = 10000\nmax_request_body = \"2MiB\"\nrequest_body_budget = \"1MiB\"",
        );
        let err = ServeConfig::parse(&small_body_budget)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "request_body_budget (1048576 bytes) is under max_request_body (2097152 bytes)"
            ),
            "{err}"
        );

        let bad_kind = EXAMPLE.replace("llm_proxy", "ftp_proxy");
        assert!(ServeConfig::parse(&bad_kind)
            .unwrap_err()
            .to_string()
            .contains("ftp_proxy"));
    }

    #[test]
    fn cors_origins_default_to_none_and_take_origins_or_a_star() {
        let c = ServeConfig::parse(EXAMPLE).unwrap();
        assert!(c.routes[0].cors_origins().is_empty());
        let origins =
            r#"["http://localhost:5173", "https://app.example.com", "http://[::1]:8080", "*"]"#;
        let c = ServeConfig::parse(&format!("{EXAMPLE}cors_origins = {origins}\n")).unwrap();
        assert_eq!(
            c.routes[0].cors_origins(),
            [
                "http://localhost:5173",
                "https://app.example.com",
                "http://[::1]:8080",
                "*"
            ]
        );
    }

    #[test]
    fn bad_cors_origins_name_the_route_and_the_value() {
        let cases = [
            ("http://localhost:5173/", "no path"),
            ("http://localhost:5173/app", "no path"),
            ("http://localhost?x=1", "no path, query"),
            ("localhost:5173", "no `://`"),
            ("http://", "not valid"),
            ("http://user@localhost", "no user name"),
            ("http://localhost:99999", "port is not a number"),
            ("http://local host", "not valid"),
            ("https://example.com:443", "default port 443"),
            ("http://example.com:80", "default port 80"),
            ("1http://example.com", "not a URL scheme"),
            ("", "no `://`"),
        ];
        for (origin, why) in cases {
            let text = format!("{EXAMPLE}cors_origins = [\"*\", \"{origin}\"]\n");
            let err = ServeConfig::parse(&text).unwrap_err().to_string();
            assert!(
                err.starts_with("route #1 (/v1/chat/completions): cors_origins: ")
                    && err.contains(&format!("`{origin}` is not an origin"))
                    && err.contains(why),
                "{origin}: {err}"
            );
        }
        let not_strings = format!("{EXAMPLE}cors_origins = \"*\"\n");
        let err = ServeConfig::parse(&not_strings).unwrap_err().to_string();
        assert!(
            err.contains("line 6") && err.contains("expected a sequence"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod export_tests {
    use super::*;

    const EXPORT: &str = r#"
[[route]]
kind = "sql_export"
path = "/export/orders"
database = "sqlite:///var/lib/app/orders.db"
query = "SELECT id, customer, amount, created_at FROM orders WHERE amount >= :min_amount ORDER BY id"
"#;

    #[test]
    fn the_issue_example_parses_with_defaults() {
        let c = ServeConfig::parse(EXPORT).unwrap();
        let RouteConfig::SqlExport(r) = &c.routes[0] else {
            panic!("not an sql_export route");
        };
        assert_eq!(
            DatabaseUrl::parse(&r.database).unwrap(),
            DatabaseUrl::Sqlite("/var/lib/app/orders.db".into())
        );
        assert_eq!(r.formats, [ExportFormat::Csv, ExportFormat::Ndjson]);
        assert_eq!(
            (r.batch_rows, r.pool_size, r.max_exports(), r.gzip_level),
            (1000, 4, 4, 1)
        );
        let cors = format!("{EXPORT}cors_origins = [\"http://localhost:5173\"]\n");
        let c = ServeConfig::parse(&cors).unwrap();
        assert_eq!(c.routes[0].cors_origins(), ["http://localhost:5173"]);
    }

    #[test]
    fn bad_export_routes_are_explained() {
        let cases = [
            (
                "sqlite:///var",
                "mysql://x",
                "`sqlite://PATH` or `postgres://",
            ),
            (
                ":min_amount ORDER",
                "'open ORDER",
                "unterminated string literal",
            ),
            (
                ":min_amount ORDER",
                ":format ORDER",
                "taken by the format choice",
            ),
            (":min_amount ORDER", "$1 ORDER", "numbered parameter"),
        ];
        for (from, to, expected) in cases {
            let err = ServeConfig::parse(&EXPORT.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected) && err.contains("route #1"), "{err}");
        }
        let level = format!("{EXPORT}gzip_level = 11\n");
        assert!(ServeConfig::parse(&level)
            .unwrap_err()
            .to_string()
            .contains("gzip_level"));
        let origin = format!("{EXPORT}cors_origins = [\"https://app.example.com/\"]\n");
        let err = ServeConfig::parse(&origin).unwrap_err().to_string();
        assert!(
            err.contains("route #1 (/export/orders): cors_origins: `https://app.example.com/`"),
            "{err}"
        );
        let console = EXPORT.replace("path = \"/export/orders\"", "path = \"/_weir/state\"");
        let err = ServeConfig::parse(&console).unwrap_err().to_string();
        assert!(err.contains("the console's"), "{err}");
        for keys in ["[\"\"]", "[\"a b\"]"] {
            let err = ServeConfig::parse(&format!("admin_keys = {keys}\n{EXPORT}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("admin_keys #1"), "{err}");
        }
        assert!(ServeConfig::parse(&format!("admin_keys = [\"adm-1\"]\n{EXPORT}")).is_ok());
        let format = format!("{EXPORT}formats = [\"xml\"]\n");
        let err = ServeConfig::parse(&format).unwrap_err().to_string();
        assert!(
            err.contains("unknown variant `xml`") && err.contains("line 2"),
            "{err}"
        );
    }
}
