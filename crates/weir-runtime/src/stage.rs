//! The three roles a stage can play.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use crate::channel::{CapacityHandle, Sender};
use crate::error::{BoxError, DownstreamClosed};
use crate::stats::{StageStats, Wait};
use crate::weight::Weighted;

/// Where items come from. The runtime asks for the next item only once the previous
/// one has been accepted downstream, so a source never reads ahead of its consumers.
pub trait Source: Send + 'static {
    type Item: Weighted + Send + 'static;

    /// The next item, or `None` at the end of the input.
    fn next(&mut self) -> impl Future<Output = Result<Option<Self::Item>, BoxError>> + Send;

    /// The queue this source fills ahead of `next` on its own (a database cursor's thread,
    /// say), if any: the pipeline counts it as one more channel and sizes it from its budget.
    fn read_ahead(&self) -> Option<CapacityHandle> {
        None
    }
}

/// A stage in the middle: takes one item at a time and emits zero or more.
///
/// `apply` is not called again until the previous call has returned, and each
/// [`Emit::send`] waits while the downstream channel is full.
pub trait Transform: Send + 'static {
    type In: Weighted + Send + 'static;
    type Out: Weighted + Send + 'static;

    fn apply(
        &mut self,
        item: Self::In,
        out: &mut Emit<'_, Self::Out>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Called once after the last input item, to emit whatever the transform still holds.
    fn finish(
        &mut self,
        out: &mut Emit<'_, Self::Out>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = out;
        async { Ok(()) }
    }
}

/// Where items end up.
pub trait Sink: Send + 'static {
    type Item: Weighted + Send + 'static;

    fn write(&mut self, item: Self::Item) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Called whenever no item is waiting for the sink: the moment to make what it has
    /// written durable (and ack it) rather than hold it until more items come.
    fn flush(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// Called once after the last item: flush and close.
    fn finish(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }
}

/// A transform's handle on its downstream channel.
pub struct Emit<'a, T> {
    target: Target<'a, T>,
}

enum Target<'a, T> {
    Channel {
        tx: &'a mut Sender<T>,
        stats: &'a Arc<StageStats>,
    },
    Collect(&'a mut Vec<T>),
}

impl<'a, T: Weighted + Send> Emit<'a, T> {
    pub(crate) fn new(tx: &'a mut Sender<T>, stats: &'a Arc<StageStats>) -> Self {
        Emit {
            target: Target::Channel { tx, stats },
        }
    }

    /// An `Emit` that collects into `items`, so that one transform can run inside another
    /// (the outer one applies the inner to a part of each of its items).
    pub fn collect(items: &'a mut Vec<T>) -> Self {
        Emit {
            target: Target::Collect(items),
        }
    }

    /// Sends an item downstream, waiting while the channel is full.
    ///
    /// Fails with [`DownstreamClosed`] once the downstream stage has stopped; return
    /// that error (with `?`) so the stage stops too.
    pub async fn send(&mut self, item: T) -> Result<(), BoxError> {
        match &mut self.target {
            Target::Channel { tx, stats } => send_counted(tx, stats, item).await,
            Target::Collect(items) => {
                items.push(item);
                Ok(())
            }
        }
    }
}

pub(crate) async fn send_counted<T: Weighted>(
    tx: &mut Sender<T>,
    stats: &StageStats,
    item: T,
) -> Result<(), BoxError> {
    let weight = item.weight();
    match timed_if_waiting(tx.send(item), stats, Wait::Blocked).await {
        Ok(()) => {
            stats.add_out(weight);
            Ok(())
        }
        Err(_) => Err(Box::new(DownstreamClosed)),
    }
}

/// Awaits `fut`, reading the clock only if it has to wait: most sends and receives do
/// not, and two clock reads per item per stage showed in profiles of small items.
/// A wait under way is counted as it goes, so that a stage stuck in one shows it.
pub(crate) async fn timed_if_waiting<F: Future>(
    fut: F,
    stats: &StageStats,
    wait: Wait,
) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(out) => out,
        Poll::Pending => {
            let waiting = stats.begin_wait(wait);
            let out = fut.await;
            drop(waiting);
            out
        }
    }
}
