//! POSTs records as NDJSON batches, acking a batch once the endpoint answers 2xx.

use std::time::Duration;

use weir_runtime::{AckToken, BoxError, Sink};

use crate::record::{LineFormat, Record};

/// How an HTTP sink is set up.
#[derive(Clone, Debug)]
pub struct HttpPostConfig {
    pub url: String,
    pub format: LineFormat,
    /// A batch is sent once it holds this many bytes (or when no record waits upstream).
    pub batch_bytes: usize,
    /// How long one POST may take before it counts as failed (and is retried).
    pub timeout: Duration,
}

/// Waits between retries: doubling from the first, capped at the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The pipeline's HTTP sink. A 5xx, a 429, a timeout or a connection error is retried
/// with capped backoff until it succeeds (or the pipeline is stopped); any other status
/// stops the pipeline, naming the first and last record of the batch.
pub struct HttpPost {
    client: reqwest::Client,
    config: HttpPostConfig,
    body: Vec<u8>,
    acks: Vec<AckToken>,
    first: Option<String>,
    last: Option<String>,
}

impl HttpPost {
    pub fn new(config: HttpPostConfig) -> Result<Self, BoxError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| format!("http sink: {e}"))?;
        Ok(HttpPost {
            client,
            config,
            body: Vec::new(),
            acks: Vec::new(),
            first: None,
            last: None,
        })
    }

    async fn post(&mut self) -> Result<(), BoxError> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let body = bytes::Bytes::from(std::mem::take(&mut self.body));
        let mut wait = BACKOFF.0;
        loop {
            let sent = self
                .client
                .post(&self.config.url)
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
                .send()
                .await;
            let why = match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    format!("answered {}", r.status())
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let text: String = text.chars().take(200).collect();
                    return Err(format!(
                        "http sink: POST {} answered {status} for the batch of {} to {}: {text}",
                        self.config.url,
                        self.first.as_deref().unwrap_or("?"),
                        self.last.as_deref().unwrap_or("?"),
                    )
                    .into());
                }
                Err(e) => weir_runtime::error_chain(&e),
            };
            tracing::warn!(
                "http sink: POST {} {why}; retrying in {wait:?}",
                self.config.url
            );
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(BACKOFF.1);
        }
        self.acks.drain(..).for_each(AckToken::ack);
        self.first = None;
        self.last = None;
        Ok(())
    }
}

impl Sink for HttpPost {
    type Item = Record;

    async fn write(&mut self, record: Record) -> Result<(), BoxError> {
        record.append_line(self.config.format, &mut self.body);
        let at = record.describe();
        self.first.get_or_insert_with(|| at.clone());
        self.last = Some(at);
        self.acks.push(record.ack);
        if self.body.len() >= self.config.batch_bytes {
            self.post().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        self.post().await
    }

    async fn finish(&mut self) -> Result<(), BoxError> {
        self.post().await
    }
}
