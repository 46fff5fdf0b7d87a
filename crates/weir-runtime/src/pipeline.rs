//! Building a pipeline stage by stage, and running it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::budget::{MemoryBudget, WhenFull};
use crate::channel::{channel_with_gauge, CapacityHandle, Receiver, Sender};
use crate::error::{BoxError, DownstreamClosed, FailureKind, PipelineError};
use crate::stage::{send_counted, timed_if_waiting, Emit, Sink, Source, Transform};
use crate::stats::{Report, StageKind, StageSnapshot, StageStats, Wait};
use crate::weight::Weighted;

/// The per-stage budget when none is given: 64 KiB.
pub const DEFAULT_BUFFER: usize = 64 * 1024;

type StageFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

struct StageTask {
    index: usize,
    stats: Arc<StageStats>,
    future: StageFuture,
}

/// Wires one stage and every stage upstream of it, given its output channel.
type Pending<T> = Box<dyn FnOnce(Sender<T>, &mut Wiring) + Send>;

/// How the channels of a pipeline get their budgets.
#[derive(Clone, Copy)]
enum Buffer {
    /// Each channel holds this many bytes.
    Each(usize),
    /// The channels (and a source's read-ahead queue) hold this many bytes together.
    Total(usize),
}

/// One channel's budget, as it was set when the channel was added.
#[derive(Clone, Copy)]
enum ChannelSize {
    Fixed(usize),
    /// A share of the total, known once every channel is.
    Share(usize),
}

/// Settings shared by every stage of one pipeline.
#[derive(Clone)]
struct Settings {
    buffer: Buffer,
    budget: Option<(MemoryBudget, WhenFull)>,
    cancel: CancellationToken,
    reserved: usize,
}

/// What the stages are built with once the pipeline is complete.
struct Wiring {
    capacities: Vec<usize>,
    gauge: Option<Arc<AtomicUsize>>,
    stages: Vec<StageTask>,
}

impl Wiring {
    fn channel<T: Weighted>(&self, index: usize) -> (Sender<T>, Receiver<T>) {
        channel_with_gauge(self.capacities[index], self.gauge.clone())
    }
}

/// Budgets of each channel: fixed ones as set, the shares of the total split evenly, the
/// first ones taking one byte more until the shares add up to the total exactly.
fn capacities(sizes: &[ChannelSize]) -> Vec<usize> {
    let parts = sizes
        .iter()
        .filter(|s| matches!(s, ChannelSize::Share(_)))
        .count();
    let mut shares = 0;
    sizes
        .iter()
        .map(|size| match *size {
            ChannelSize::Fixed(bytes) => bytes,
            ChannelSize::Share(total) => {
                let extra = usize::from(shares < total % parts);
                shares += 1;
                total / parts + extra
            }
        })
        .collect()
}

/// A pipeline ready to run: every stage is wired, none has started.
pub struct Pipeline {
    stages: Vec<StageTask>,
    settings: Settings,
}

/// Starts a pipeline: set options, then give it a source.
pub struct PipelineStart {
    settings: Settings,
}

/// A pipeline under construction whose last stage emits items of type `T`.
///
/// Channels are created when the sink is given: only then is their number known, which a
/// total budget ([`PipelineStart::buffer_total`]) is split by.
pub struct PipelineBuilder<T> {
    settings: Settings,
    channels: Vec<ChannelSize>,
    /// The source's read-ahead queue and its index among `channels`.
    read_ahead: Option<(CapacityHandle, usize)>,
    pending: Pending<T>,
}

impl Pipeline {
    pub fn builder() -> PipelineStart {
        PipelineStart {
            settings: Settings {
                buffer: Buffer::Each(DEFAULT_BUFFER),
                budget: None,
                cancel: CancellationToken::new(),
                reserved: 0,
            },
        }
    }

    /// Live counters of every stage, in order from source to sink.
    pub fn stats(&self) -> Vec<Arc<StageStats>> {
        self.stages.iter().map(|s| Arc::clone(&s.stats)).collect()
    }

    /// The bytes this pipeline's channels (and its source's read-ahead queue) may hold
    /// together; each stage may hold one more item in flight besides.
    pub fn buffer_bytes(&self) -> usize {
        self.settings.reserved
    }

    /// Cancelling this token stops the pipeline (it is also cancelled by the first error).
    pub fn cancel_token(&self) -> CancellationToken {
        self.settings.cancel.clone()
    }

    /// Runs every stage to the end, or until the first failure.
    ///
    /// On failure every stage is cancelled and dropped before this returns. Dropping
    /// this future cancels the stages as well.
    pub async fn run(self) -> Result<Report, PipelineError> {
        let Pipeline { stages, settings } = self;
        let _reservation = match &settings.budget {
            Some((budget, when_full)) => Some(
                budget
                    .admit(settings.reserved, *when_full)
                    .await
                    .map_err(|e| PipelineError {
                        stage_index: None,
                        stage: String::new(),
                        kind: FailureKind::Refused(e),
                    })?,
            ),
            None => None,
        };
        let cancel = settings.cancel;
        let cancel_on_drop = cancel.clone().drop_guard();
        let failure = Arc::new(Mutex::new(FirstFailure::default()));
        let stats: Vec<Arc<StageStats>> = stages.iter().map(|s| Arc::clone(&s.stats)).collect();
        let started = Instant::now();
        let handles: Vec<_> = stages
            .into_iter()
            .map(|task| tokio::spawn(supervise(task, cancel.clone(), Arc::clone(&failure))))
            .collect();
        for (index, handle) in handles.into_iter().enumerate() {
            if let Err(e) = handle.await {
                lock(&failure).record(index, &stats[index], FailureKind::Panicked(e.to_string()));
                cancel.cancel();
            }
        }
        let elapsed = started.elapsed();
        let externally_cancelled = cancel.is_cancelled();
        cancel_on_drop.disarm();
        let snapshots: Vec<StageSnapshot> = stats.iter().map(|s| s.snapshot()).collect();
        let first = std::mem::take(&mut *lock(&failure));
        match first.error.or(first.fallback) {
            Some(e) => Err(e),
            None if externally_cancelled => Err(PipelineError {
                stage_index: None,
                stage: String::new(),
                kind: FailureKind::Cancelled,
            }),
            None => Ok(Report::new(elapsed, snapshots)),
        }
    }
}

#[derive(Default)]
struct FirstFailure {
    error: Option<PipelineError>,
    /// A stage that only saw its downstream stop: reported when nothing better is known.
    fallback: Option<PipelineError>,
}

impl FirstFailure {
    fn record(&mut self, index: usize, stats: &StageStats, kind: FailureKind) {
        let secondary = matches!(&kind, FailureKind::Failed(e) if e.is::<DownstreamClosed>());
        let slot = if secondary {
            &mut self.fallback
        } else {
            &mut self.error
        };
        if slot.is_none() {
            *slot = Some(PipelineError {
                stage_index: Some(index),
                stage: stats.name().to_string(),
                kind,
            });
        }
    }
}

fn lock(m: &Mutex<FirstFailure>) -> std::sync::MutexGuard<'_, FirstFailure> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn supervise(task: StageTask, cancel: CancellationToken, failure: Arc<Mutex<FirstFailure>>) {
    let StageTask {
        index,
        stats,
        future,
    } = task;
    stats.mark_started();
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        r = AssertUnwindSafe(future).catch_unwind() => Some(r),
    };
    stats.mark_ended();
    let kind = match outcome {
        None | Some(Ok(Ok(()))) => return,
        Some(Ok(Err(e))) => FailureKind::Failed(e),
        Some(Err(panic)) => FailureKind::Panicked(panic_message(panic.as_ref())),
    };
    lock(&failure).record(index, &stats, kind);
    cancel.cancel();
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic without a message".to_string()
    }
}

impl PipelineStart {
    /// The byte budget of each channel created from here on (default 64 KiB).
    pub fn buffer(mut self, bytes: usize) -> Self {
        self.settings.buffer = Buffer::Each(bytes);
        self
    }

    /// One byte budget for all the channels, and for the source's read-ahead queue if it
    /// has one: split evenly between them when the sink is given (a later
    /// [`PipelineBuilder::buffer`] takes the channels after it out of the split).
    pub fn buffer_total(mut self, bytes: usize) -> Self {
        self.settings.buffer = Buffer::Total(bytes);
        self
    }

    /// Admits the pipeline only if `budget` can hold all its channels; see [`MemoryBudget`].
    pub fn memory_budget(mut self, budget: MemoryBudget, when_full: WhenFull) -> Self {
        self.settings.budget = Some((budget, when_full));
        self
    }

    /// Lets `token` stop the pipeline from outside. A failure inside the pipeline does
    /// not cancel `token` itself.
    pub fn cancel_token(mut self, token: &CancellationToken) -> Self {
        self.settings.cancel = token.child_token();
        self
    }

    pub fn source<S: Source>(
        self,
        name: impl Into<String>,
        mut source: S,
    ) -> PipelineBuilder<S::Item> {
        let name = name.into();
        let mut channels = Vec::new();
        let read_ahead = source.read_ahead().map(|handle| {
            channels.push(size_of(self.settings.buffer));
            (handle, 0)
        });
        // The read-ahead queue is what is queued for the source: its stats show it.
        let queue = read_ahead.as_ref().map(|(handle, _)| handle.gauge());
        let pending: Pending<S::Item> = Box::new(move |mut tx: Sender<S::Item>, w: &mut Wiring| {
            let stats = Arc::new(StageStats::new(name, StageKind::Source, queue));
            let s = Arc::clone(&stats);
            w.stages.push(StageTask {
                index: w.stages.len(),
                stats,
                future: Box::pin(async move {
                    while let Some(item) = source.next().await? {
                        send_counted(&mut tx, &s, item).await?;
                    }
                    Ok(())
                }),
            });
        });
        PipelineBuilder {
            settings: self.settings,
            channels,
            read_ahead,
            pending,
        }
    }
}

fn size_of(buffer: Buffer) -> ChannelSize {
    match buffer {
        Buffer::Each(bytes) => ChannelSize::Fixed(bytes),
        Buffer::Total(bytes) => ChannelSize::Share(bytes),
    }
}

impl<T: Weighted + Send + 'static> PipelineBuilder<T> {
    /// The byte budget of each channel created from here on.
    pub fn buffer(mut self, bytes: usize) -> Self {
        self.settings.buffer = Buffer::Each(bytes);
        self
    }

    /// Adds the channel below the pending stage; returns its index.
    fn connect(&mut self) -> usize {
        self.channels.push(size_of(self.settings.buffer));
        self.channels.len() - 1
    }

    pub fn transform<X>(
        mut self,
        name: impl Into<String>,
        mut transform: X,
    ) -> PipelineBuilder<X::Out>
    where
        X: Transform<In = T>,
    {
        let name = name.into();
        let channel = self.connect();
        let upstream = self.pending;
        let pending: Pending<X::Out> = Box::new(move |mut tx: Sender<X::Out>, w: &mut Wiring| {
            let (upstream_tx, mut rx) = w.channel::<T>(channel);
            upstream(upstream_tx, w);
            let stats = Arc::new(StageStats::new(
                name,
                StageKind::Transform,
                Some(rx.gauge()),
            ));
            let s = Arc::clone(&stats);
            w.stages.push(StageTask {
                index: w.stages.len(),
                stats,
                future: Box::pin(async move {
                    while let Some(item) = recv_counted(&mut rx, &s).await {
                        transform.apply(item, &mut Emit::new(&mut tx, &s)).await?;
                    }
                    transform.finish(&mut Emit::new(&mut tx, &s)).await
                }),
            });
        });
        PipelineBuilder {
            settings: self.settings,
            channels: self.channels,
            read_ahead: self.read_ahead,
            pending,
        }
    }

    /// Adds the sink, then sizes and creates every channel: the pipeline is complete.
    pub fn sink<K>(mut self, name: impl Into<String>, mut sink: K) -> Pipeline
    where
        K: Sink<Item = T>,
    {
        let channel = self.connect();
        let PipelineBuilder {
            mut settings,
            channels,
            read_ahead,
            pending,
        } = self;
        let capacities = capacities(&channels);
        settings.reserved = capacities.iter().sum();
        if let Some((handle, index)) = &read_ahead {
            handle.set(capacities[*index]);
        }
        let mut wiring = Wiring {
            capacities,
            gauge: settings.budget.as_ref().map(|(b, _)| b.buffered_gauge()),
            stages: Vec::new(),
        };
        let (tx, mut rx) = wiring.channel::<T>(channel);
        pending(tx, &mut wiring);
        let stats = Arc::new(StageStats::new(
            name.into(),
            StageKind::Sink,
            Some(rx.gauge()),
        ));
        let s = Arc::clone(&stats);
        wiring.stages.push(StageTask {
            index: wiring.stages.len(),
            stats,
            future: Box::pin(async move {
                loop {
                    if rx.is_empty() {
                        sink.flush().await?;
                    }
                    let Some(item) = recv_counted(&mut rx, &s).await else {
                        break;
                    };
                    sink.write(item).await?;
                }
                sink.finish().await
            }),
        });
        Pipeline {
            stages: wiring.stages,
            settings,
        }
    }
}

async fn recv_counted<T: Weighted>(rx: &mut Receiver<T>, stats: &StageStats) -> Option<T> {
    let item = timed_if_waiting(rx.recv(), stats, Wait::Starved).await;
    if let Some(i) = &item {
        stats.add_in(i.weight());
    }
    item
}
