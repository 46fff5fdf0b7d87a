//! The `weir serve` configuration file: TOML, checked whole before anything starts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use weir_runtime::size::{parse_duration, parse_size};

/// The whole server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Bytes all streams together may buffer; a stream that cannot get its share is refused (503).
    #[serde(default = "defaults::memory_budget", deserialize_with = "size")]
    pub memory_budget: u64,
    /// Streams open at once; past it new ones are refused (503).
    #[serde(default = "defaults::max_streams")]
    pub max_streams: usize,
    /// SO_SNDBUF of accepted client sockets: bounds what a slow client parks in the kernel.
    #[serde(default = "defaults::socket_buffer", deserialize_with = "size")]
    pub send_buffer: u64,
    /// How long a client may take to send its request headers (slowloris).
    #[serde(default = "defaults::header_timeout", deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// Largest request body accepted (413 past it).
    #[serde(default = "defaults::max_request_body", deserialize_with = "size")]
    pub max_request_body: u64,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// One `[[route]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteConfig {
    LlmProxy(LlmProxyRoute),
}

impl RouteConfig {
    pub fn path(&self) -> &str {
        match self {
            RouteConfig::LlmProxy(r) => &r.path,
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
    /// The full URL requests are forwarded to (`http://` only for now).
    pub upstream: String,
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
    /// SO_RCVBUF of the upstream socket: what a paused upstream can park in our kernel.
    #[serde(default = "defaults::socket_buffer", deserialize_with = "size")]
    pub receive_buffer: u64,
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
    pub fn max_streams() -> usize {
        10_000
    }
    pub fn socket_buffer() -> u64 {
        64 << 10
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_request_body() -> u64 {
        1 << 20
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
    pub fn keepalive() -> Duration {
        Duration::from_secs(15)
    }
    pub fn max_response_body() -> u64 {
        16 << 20
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
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

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
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
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and checks a configuration; the error names the line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        // toml's message already carries the line, the column and the offending text.
        let config: ServeConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.routes.is_empty() {
            return Err("no [[route]]: nothing to serve".to_string());
        }
        let mut paths = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("route #{} ({})", i + 1, route.path());
            if !route.path().starts_with('/') {
                return Err(format!("{at}: path must start with `/`"));
            }
            if SERVER_PATHS.contains(&route.path()) {
                return Err(format!("{at}: the server answers {} itself", route.path()));
            }
            if !paths.insert(route.path()) {
                return Err(format!("{at}: another route has the same path"));
            }
            match route {
                RouteConfig::LlmProxy(r) => r.check(&at)?,
            }
        }
        Ok(())
    }
}

impl LlmProxyRoute {
    fn check(&self, at: &str) -> Result<(), String> {
        let uri: hyper::Uri = self
            .upstream
            .parse()
            .map_err(|e| format!("{at}: upstream `{}` is not a URL: {e}", self.upstream))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{at}: https upstreams are not supported yet; put a TLS-terminating proxy in front of `{}`",
                    self.upstream
                ))
            }
            _ => return Err(format!("{at}: upstream `{}` must be an http:// URL", self.upstream)),
        }
        if uri.host().is_none() {
            return Err(format!("{at}: upstream `{}` has no host", self.upstream));
        }
        if let Some(unknown) = self
            .redact
            .iter()
            .find(|r| !KNOWN_REDACTORS.contains(&r.as_str()))
        {
            return Err(format!(
                "{at}: unknown redactor `{unknown}` (known: {})",
                KNOWN_REDACTORS.join(", ")
            ));
        }
        if self.buffer == 0 {
            return Err(format!("{at}: buffer must be at least 1 byte"));
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
        let RouteConfig::LlmProxy(r) = &c.routes[0];
        assert_eq!(r.protocol, Protocol::Openai);
        assert_eq!(r.client_keys, ["key-1"]);
        assert_eq!(r.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err =
            ServeConfig::parse("listen = \"127.0.0.1:8080\"\nmax_streams = ten\n").unwrap_err();
        assert!(err.contains("line 2, column 15"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let bad_size = EXAMPLE.replace("\"256MiB\"", "\"lots\"");
        let err = ServeConfig::parse(&bad_size).unwrap_err();
        assert!(
            err.contains("line 3") && err.contains("not a size"),
            "{err}"
        );

        let unknown_field = EXAMPLE.replace("client_keys", "client_kyes");
        let err = ServeConfig::parse(&unknown_field).unwrap_err();
        assert!(err.contains("client_kyes"), "{err}");

        let bad_redactor = EXAMPLE.replace("\"iban\"", "\"passport\"");
        let err = ServeConfig::parse(&bad_redactor).unwrap_err();
        assert!(err.contains("unknown redactor `passport`"), "{err}");

        let https = EXAMPLE.replace("http://127.0.0.1:8081", "https://api.openai.com");
        assert!(ServeConfig::parse(&https).unwrap_err().contains("https"));

        let taken = EXAMPLE.replace("\"/v1/chat/completions\"", "\"/metrics\"");
        let err = ServeConfig::parse(&taken).unwrap_err();
        assert!(err.contains("answers /metrics itself"), "{err}");

        let bad_kind = EXAMPLE.replace("llm_proxy", "ftp_proxy");
        assert!(ServeConfig::parse(&bad_kind)
            .unwrap_err()
            .contains("ftp_proxy"));
    }
}
