//! An export's response body: the pipeline's last stage hands a chunk over only when
//! hyper polls for one.
//!
//! # What
//!
//! cursor -> csv/ndjson -> gzip (if asked) -> client, each stage a task of a
//! [`Pipeline`] joined by byte-budgeted channels. The sink waits on a one-chunk hand-off
//! that the body empties when hyper polls it, and hyper polls only when the client's
//! socket takes bytes: a slow client stops the sink, the full channels stop the encoder,
//! and the cursor fetches nothing more.
//!
//! # Failure
//!
//! When the pipeline fails (the database dropped the connection, the query failed after
//! the first rows), the body ends in an error: hyper then aborts the chunked encoding,
//! with no terminating chunk, so the client sees a truncated transfer rather than a
//! short file that looks complete. The cause is logged.
//!
//! When the server's shutdown grace is over, an export still running is aborted the same
//! way.
//!
//! # Cancel safety
//!
//! Dropping the body (the client went away) cancels the pipeline at once, which drops
//! the cursor: the transaction is rolled back and the connection goes back to its pool.
//! The admission ticket and export slot are released with the body.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::{DropGuard, WaitForCancellationFutureOwned};
use weir_runtime::{BoxError, Pipeline, PipelineError, Report, Sink};

use super::metrics::{ExportMetrics, ExportOutcome};
use crate::serve::admission::Ticket;
use crate::serve::console::Watched;
use crate::serve::shutdown::{Shutdown, SHUTTING_DOWN};

/// Hands each chunk to the response body, waiting until the body has taken the last.
pub(super) struct BodySink {
    chunks: mpsc::Sender<Bytes>,
}

#[derive(Debug, thiserror::Error)]
#[error("the client went away")]
struct ClientGone;

impl Sink for BodySink {
    type Item = Bytes;

    async fn write(&mut self, chunk: Bytes) -> Result<(), BoxError> {
        self.chunks
            .send(chunk)
            .await
            .map_err(|_| Box::new(ClientGone) as BoxError)
    }
}

/// What the body holds for the life of the export.
pub(super) struct Held {
    pub _ticket: Ticket,
    pub _slot: OwnedSemaphorePermit,
}

pub(super) struct ExportBody {
    chunks: mpsc::Receiver<Bytes>,
    run: JoinHandle<Result<Report, PipelineError>>,
    _cancel_on_drop: DropGuard,
    _held: Held,
    route: String,
    metrics: Arc<ExportMetrics>,
    started: Instant,
    bytes: u64,
    finished: bool,
    /// The server's shutdown grace is over: the transfer is aborted, as on a failure.
    grace_over: Pin<Box<WaitForCancellationFutureOwned>>,
    watched: Option<Watched>,
}

impl ExportBody {
    /// Builds the sink to end `pipeline` with; see [`ExportBody::start`].
    pub(super) fn sink() -> (BodySink, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(1);
        (BodySink { chunks: tx }, rx)
    }

    /// Starts `pipeline`, which ends in the sink whose receiver is `chunks`.
    pub(super) fn start(
        pipeline: Pipeline,
        chunks: mpsc::Receiver<Bytes>,
        held: Held,
        route: String,
        metrics: Arc<ExportMetrics>,
        shutdown: &Shutdown,
        watched: Option<Watched>,
    ) -> Self {
        let cancel = pipeline.cancel_token();
        ExportBody {
            chunks,
            run: tokio::spawn(pipeline.run()),
            _cancel_on_drop: cancel.drop_guard(),
            _held: held,
            route,
            metrics,
            started: Instant::now(),
            bytes: 0,
            finished: false,
            grace_over: shutdown.grace_over(),
            watched,
        }
    }

    pub(super) fn into_stream(self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures::stream::unfold(self, |mut body| async move {
            if body.finished {
                return None;
            }
            let next = tokio::select! {
                next = body.chunks.recv() => next,
                () = body.grace_over.as_mut() => {
                    body.finished = true;
                    tracing::warn!(
                        route = %body.route, bytes = body.bytes,
                        "export still running when the shutdown grace was over: response aborted"
                    );
                    body.metrics.ended(ExportOutcome::Failed);
                    return Some((Err(std::io::Error::other(SHUTTING_DOWN)), body));
                }
            };
            if let Some(chunk) = next {
                body.bytes += chunk.len() as u64;
                body.metrics.bytes.increment(chunk.len() as u64);
                if let Some(w) = &body.watched {
                    w.sent(chunk.len());
                }
                return Some((Ok(chunk), body));
            }
            body.finished = true;
            let outcome = match (&mut body.run).await {
                Ok(outcome) => outcome.map_err(|e| e.to_string()),
                Err(e) => Err(format!("export task failed: {e}")),
            };
            let secs = body.started.elapsed().as_secs_f64();
            match outcome {
                Ok(report) => {
                    let rows = report.stages.first().map_or(0, |s| s.items_out);
                    tracing::info!(
                        route = %body.route, batches = rows, bytes = body.bytes, secs,
                        "export completed"
                    );
                    body.metrics.ended(ExportOutcome::Completed);
                    None
                }
                Err(cause) => {
                    tracing::warn!(
                        route = %body.route, bytes = body.bytes, secs,
                        "export failed, response aborted: {cause}"
                    );
                    body.metrics.ended(ExportOutcome::Failed);
                    Some((Err(std::io::Error::other(cause)), body))
                }
            }
        })
    }
}

impl Drop for ExportBody {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!(
                route = %self.route, bytes = self.bytes,
                secs = self.started.elapsed().as_secs_f64(),
                "export cancelled: the client went away"
            );
            self.metrics.ended(ExportOutcome::ClientGone);
        }
    }
}
