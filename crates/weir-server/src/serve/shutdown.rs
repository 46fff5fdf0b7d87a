//! The server's stop as its streams see it: live streams (tails, topics) end as soon as it
//! starts, since they never finish by themselves; streams with an end (proxied answers,
//! exports) get the grace, and are ended after it. Each ends the way its protocol ends in
//! error (an error event; an aborted transfer for exports), never with a clean end that
//! looks complete.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Future, Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// Handed to every request (an extension), so that its stream can end in time.
#[derive(Clone)]
pub struct Shutdown {
    /// Cancelled when the stop starts.
    draining: CancellationToken,
    /// Cancelled when the grace is over.
    ending: CancellationToken,
    /// Tasks the server waits for before it exits (WebSocket sessions live outside hyper).
    tasks: TaskTracker,
}

/// The text of every ending: clients may retry elsewhere.
pub const SHUTTING_DOWN: &str = "the server is shutting down: retry shortly";

/// The last event of a live stream cut by the stop: SSE's `event: error`, or an NDJSON line.
pub fn last_event(sse: bool) -> Bytes {
    let error = serde_json::json!({
        "error": { "type": "server_shutdown", "message": SHUTTING_DOWN }
    });
    Bytes::from(if sse {
        format!("event: error\ndata: {error}\n\n")
    } else {
        format!("{error}\n")
    })
}

impl Shutdown {
    pub fn new(draining: CancellationToken, tasks: TaskTracker) -> Self {
        Shutdown {
            draining,
            ending: CancellationToken::new(),
            tasks,
        }
    }

    /// A stop that never comes: for requests served outside a [`crate::serve::Server`].
    pub fn never() -> Self {
        Shutdown::new(CancellationToken::new(), TaskTracker::new())
    }

    /// The request's, or [`Shutdown::never`].
    pub fn of(extensions: &axum::http::Extensions) -> Self {
        extensions
            .get::<Shutdown>()
            .cloned()
            .unwrap_or_else(Self::never)
    }

    /// The grace is over: streams still open end now.
    pub fn end_streams(&self) {
        self.ending.cancel();
    }

    /// Cancelled when the stop starts (live streams, WebSocket sessions).
    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    /// Counts a task the server waits for; drop it when the task ends.
    pub fn task(&self) -> TaskTrackerToken {
        self.tasks.token()
    }

    /// Ready when the grace is over, for streams that end themselves in their protocol.
    pub fn grace_over(&self) -> Pin<Box<WaitForCancellationFutureOwned>> {
        Box::pin(self.ending.clone().cancelled_owned())
    }

    /// `body`, ended with the event `last` (of the body's protocol) when the stop starts.
    pub fn live<S>(&self, body: S, last: Bytes) -> Ending<S> {
        Ending {
            body: Some(Box::pin(body)),
            cancelled: Box::pin(self.draining.clone().cancelled_owned()),
            last: Some(last),
        }
    }
}

/// A body that ends with its last words when its token is cancelled; the inner body is
/// dropped then, which releases what it holds (a subscription, a cursor, a ticket).
pub struct Ending<S> {
    body: Option<Pin<Box<S>>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    last: Option<Bytes>,
}

impl<S> Stream for Ending<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>>,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.body.is_some() && this.cancelled.as_mut().poll(cx).is_ready() {
            this.body = None;
            return Poll::Ready(this.last.take().map(Ok));
        }
        match &mut this.body {
            Some(body) => body.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_ends_with_its_last_words_once_cancelled_and_not_before() {
        let shutdown = Shutdown::never();
        let body = futures::stream::iter([Ok(Bytes::from("a"))]).chain(futures::stream::pending());
        let mut live = shutdown.live(body, Bytes::from("bye"));
        assert_eq!(live.next().await.unwrap().unwrap(), "a");
        assert!(futures::FutureExt::now_or_never(live.next()).is_none());
        shutdown.draining().cancel();
        assert_eq!(live.next().await.unwrap().unwrap(), "bye");
        assert!(live.next().await.is_none());

        let mut grace = shutdown.grace_over();
        assert!(futures::FutureExt::now_or_never(grace.as_mut()).is_none());
        shutdown.end_streams();
        grace.await;
    }
}
