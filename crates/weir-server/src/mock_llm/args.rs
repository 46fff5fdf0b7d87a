//! `weir mock-llm`'s command-line arguments, and the entry point the CLI calls.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::config::MockLlmConfig;
use super::knobs::{Fault, FaultKind, Knobs, KnobsError};
use super::server::run;

const HELP: &str = "\
Endpoints:
  POST|GET /v1/chat/completions  OpenAI Chat Completions: with \"stream\": true, SSE chat.completion.chunk
                                 frames then `data: [DONE]`; otherwise one chat.completion JSON
  POST|GET /v1/messages          Anthropic Messages: with \"stream\": true, message_start .. message_stop
                                 events; otherwise one message JSON
  GET /stats                     JSON counters: streams started, finished, aborted (client gone), reset,
                                 open; tokens and bytes sent; PII planted; time blocked on slow readers;
                                 connections accepted and open
HTTP/1.1 and HTTP/2 in plain text (h2c, prior knowledge) on the same port. Over HTTP/2 each stream is
sent as its window allows, and fault=reset resets the whole connection.
A GET streams unless ?stream=false; a POST streams when its body says \"stream\": true. A request's
max_tokens (or max_completion_tokens) caps the tokens, ending with finish_reason length / max_tokens.

Per-request knobs, in the query string (the flags above set their defaults):
  tokens=N        tokens per response; 0 = endless (streaming only)
  rate=R          tokens/s per stream; 0 = as fast as the reader drains the socket
  token_size=B    approximate bytes of text per token
  pii=N           every N tokens plant fake PII (e-mail, phone, Luhn-valid card number, IPv4, sk- key),
                  alternately whole in one token and split across 2-3 tokens; 0 = none
  seed=S          seed of the text and the PII (the same seed gives the same stream)
  ttft_ms=N       delay before the first token
  fault=KIND      reset (TCP RST mid-stream), stall (stop sending, keep the connection),
                  error (in-band error event), malformed (one frame that is not JSON),
                  status (HTTP 500/529 with a JSON error body before any stream), none
  fault_after=N   tokens sent before the fault fires
  status=CODE     the HTTP status of fault=status
  stream=BOOL     stream or not, whatever the body says
  stamp=BOOL      add \"weir_sent_ns\" (CLOCK_MONOTONIC when the frame was made) to every token
                  frame, so a client on this host can measure the latency a proxy adds

Examples:
  curl -N 'http://127.0.0.1:8081/v1/chat/completions?tokens=20&rate=10'
  curl -N 'http://127.0.0.1:8081/v1/messages?tokens=5' -H 'content-type: application/json' \\
       -d '{\"model\":\"m\",\"max_tokens\":100,\"stream\":true,\"messages\":[]}'
  curl -N 'http://127.0.0.1:8081/v1/chat/completions?tokens=0&pii=40'            endless, PII every 40 tokens
  curl -N 'http://127.0.0.1:8081/v1/chat/completions?fault=reset&fault_after=50'  curl: (56) reset by peer
  curl -N 'http://127.0.0.1:8081/v1/messages?fault=error&fault_after=10'         event: error, overloaded_error
  curl -i 'http://127.0.0.1:8081/v1/messages?fault=status'                       HTTP/1.1 529
  curl -s 'http://127.0.0.1:8081/v1/chat/completions?stream=false&tokens=8'      one chat.completion
  curl -s http://127.0.0.1:8081/stats";

/// An OpenAI- and Anthropic-format streaming upstream, with pace, length, PII and faults
/// set per request in the query string.
#[derive(Clone, Debug, clap::Args)]
#[command(after_long_help = HELP)]
pub struct MockLlmArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Tokens per response (0 = endless); default of `tokens=`.
    #[arg(long, default_value_t = 1000)]
    pub tokens: u64,
    /// Tokens per second per stream (0 = as fast as the reader drains); default of `rate=`.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Approximate bytes per token; default of `token_size=`.
    #[arg(long, default_value_t = 4)]
    pub token_size: usize,
    /// Plant fake PII every N tokens (0 = none); default of `pii=`.
    #[arg(long, default_value_t = 0)]
    pub pii: u64,
    /// Seed of the text and the PII; default of `seed=`.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Delay before the first token, in milliseconds; default of `ttft_ms=`.
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    /// Fault injected into every response; default of `fault=`.
    #[arg(long, value_enum)]
    pub fault: Option<FaultKind>,
    /// Tokens before the fault fires; default of `fault_after=`.
    #[arg(long, default_value_t = 0, requires = "fault")]
    pub fault_after: u64,
    /// Stamp every token frame with the time it was made; default of `stamp=`.
    #[arg(long)]
    pub stamp: bool,
    /// Model name reported when a request names none.
    #[arg(long, default_value = "mock-llm")]
    pub model: String,
    /// Streams one HTTP/2 connection may carry at once (h2c by prior knowledge is served on
    /// the same port as HTTP/1.1).
    #[arg(long, default_value_t = super::config::DEFAULT_HTTP2_MAX_STREAMS)]
    pub http2_max_streams: u32,
}

impl MockLlmArgs {
    /// The server configuration these arguments describe, validated.
    pub fn config(&self) -> Result<MockLlmConfig, KnobsError> {
        let knobs = Knobs {
            tokens: self.tokens,
            rate: self.rate,
            token_size: self.token_size,
            pii_every: self.pii,
            seed: self.seed,
            ttft: Duration::from_millis(self.ttft_ms),
            fault: self.fault.map(|kind| Fault {
                kind,
                after: self.fault_after,
                status: None,
            }),
            stamp: self.stamp,
        };
        knobs.validate()?;
        Ok(MockLlmConfig {
            listen: self.listen,
            knobs,
            model: self.model.clone(),
            http2_max_streams: self.http2_max_streams,
        })
    }
}

/// Runs `weir mock-llm` until Ctrl-C. Bad arguments are an [`io::ErrorKind::InvalidInput`].
pub async fn run_cli(args: MockLlmArgs) -> io::Result<()> {
    let config = args
        .config()
        .map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
    run(config).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        MockLlm(MockLlmArgs),
    }

    #[test]
    fn parses_as_a_subcommand_with_defaults() {
        let Cli {
            command: Command::MockLlm(a),
        } = Cli::try_parse_from(["weir", "mock-llm"]).unwrap();
        let c = a.config().unwrap();
        assert_eq!(c.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(c.knobs, Knobs::default());
    }

    #[test]
    fn flags_set_the_defaults() {
        let Cli {
            command: Command::MockLlm(a),
        } = Cli::try_parse_from([
            "weir",
            "mock-llm",
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            "0",
            "--rate",
            "50",
            "--token-size",
            "16",
            "--pii",
            "40",
            "--seed",
            "7",
            "--ttft-ms",
            "250",
            "--fault",
            "reset",
            "--fault-after",
            "9",
        ])
        .unwrap();
        let k = a.config().unwrap().knobs;
        assert_eq!(
            (k.tokens, k.rate, k.token_size, k.pii_every, k.seed),
            (0, 50.0, 16, 40, 7)
        );
        assert_eq!(k.ttft, Duration::from_millis(250));
        assert_eq!(
            k.fault.map(|f| (f.kind, f.after)),
            Some((FaultKind::Reset, 9))
        );
        let Cli {
            command: Command::MockLlm(bad),
        } = Cli::try_parse_from(["weir", "mock-llm", "--rate=-1"]).unwrap();
        assert!(bad.config().is_err());
    }

    #[test]
    fn long_help_teaches_the_query_knobs() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("mock-llm")
            .unwrap()
            .render_long_help()
            .to_string();
        for needle in [
            "fault_after=N",
            "curl -N",
            "/stats",
            "--token-size",
            "Anthropic",
        ] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
    }
}
