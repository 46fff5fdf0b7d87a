//! Per-stage statistics, readable while the pipeline runs, and the final report.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::channel::Gauge;

/// The role a stage plays in its pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Source,
    Transform,
    Sink,
}

/// Live counters of one stage. Relaxed atomics: each is written by its own stage only.
pub struct StageStats {
    name: String,
    kind: StageKind,
    items_in: AtomicU64,
    bytes_in: AtomicU64,
    items_out: AtomicU64,
    bytes_out: AtomicU64,
    blocked_ns: AtomicU64,
    starved_ns: AtomicU64,
    span: Mutex<(Option<Instant>, Option<Instant>)>,
    input: Option<Gauge>,
}

impl StageStats {
    pub(crate) fn new(name: String, kind: StageKind, input: Option<Gauge>) -> Self {
        StageStats {
            name,
            kind,
            items_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            items_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            blocked_ns: AtomicU64::new(0),
            starved_ns: AtomicU64::new(0),
            span: Mutex::new((None, None)),
            input,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn add_in(&self, bytes: usize) {
        self.items_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_out(&self, bytes: usize) {
        self.items_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_blocked(&self, d: Duration) {
        self.blocked_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_starved(&self, d: Duration) {
        self.starved_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn span(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, Option<Instant>)> {
        self.span.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn mark_started(&self) {
        self.span().0 = Some(Instant::now());
    }

    pub(crate) fn mark_ended(&self) {
        self.span().1 = Some(Instant::now());
    }

    /// The counters as they are now.
    pub fn snapshot(&self) -> StageSnapshot {
        let (start, end) = *self.span();
        let wall = match (start, end) {
            (Some(s), Some(e)) => e - s,
            (Some(s), None) => s.elapsed(),
            _ => Duration::ZERO,
        };
        let blocked = Duration::from_nanos(self.blocked_ns.load(Ordering::Relaxed));
        let starved = Duration::from_nanos(self.starved_ns.load(Ordering::Relaxed));
        let occupancy = self.input.as_ref().map(Gauge::occupancy);
        StageSnapshot {
            name: self.name.clone(),
            kind: self.kind,
            items_in: self.items_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            items_out: self.items_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            busy_secs: wall.saturating_sub(blocked + starved).as_secs_f64(),
            blocked_secs: blocked.as_secs_f64(),
            starved_secs: starved.as_secs_f64(),
            buffered_bytes: occupancy.map_or(0, |o| o.buffered as u64),
            peak_buffered_bytes: occupancy.map_or(0, |o| o.peak as u64),
            budget_bytes: occupancy.map_or(0, |o| o.capacity as u64),
        }
    }
}

/// One stage's figures at a moment. Buffered bytes are those queued for this stage.
#[derive(Clone, Debug, Serialize)]
pub struct StageSnapshot {
    pub name: String,
    pub kind: StageKind,
    pub items_in: u64,
    pub bytes_in: u64,
    pub items_out: u64,
    pub bytes_out: u64,
    /// Time working: wall time less the time blocked and starved.
    pub busy_secs: f64,
    /// Time waiting for room downstream.
    pub blocked_secs: f64,
    /// Time waiting for input from upstream.
    pub starved_secs: f64,
    pub buffered_bytes: u64,
    pub peak_buffered_bytes: u64,
    /// The byte budget of this stage's input channel (0 for the source).
    pub budget_bytes: u64,
}

/// What a pipeline did, stage by stage.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub elapsed_secs: f64,
    pub stages: Vec<StageSnapshot>,
    /// The busiest stage: the one the others waited for.
    pub bottleneck: Option<String>,
}

impl Report {
    pub(crate) fn new(elapsed: Duration, stages: Vec<StageSnapshot>) -> Self {
        let bottleneck = stages
            .iter()
            .max_by(|a, b| a.busy_secs.total_cmp(&b.busy_secs))
            .map(|s| s.name.clone());
        Report {
            elapsed_secs: elapsed.as_secs_f64(),
            stages,
            bottleneck,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .stages
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0)
            .max(5);
        writeln!(
            f,
            "{:<w$} {:>10} {:>14} {:>10} {:>14} {:>8} {:>8} {:>8} {:>12}",
            "stage",
            "items in",
            "bytes in",
            "items out",
            "bytes out",
            "busy s",
            "blocked",
            "starved",
            "peak buf"
        )?;
        for s in &self.stages {
            let mark = if self.bottleneck.as_deref() == Some(s.name.as_str()) {
                " <- bottleneck"
            } else {
                ""
            };
            writeln!(
                f,
                "{:<w$} {:>10} {:>14} {:>10} {:>14} {:>8.3} {:>8.3} {:>8.3} {:>12}{mark}",
                s.name,
                s.items_in,
                s.bytes_in,
                s.items_out,
                s.bytes_out,
                s.busy_secs,
                s.blocked_secs,
                s.starved_secs,
                s.peak_buffered_bytes,
            )?;
        }
        write!(f, "elapsed {:.3} s", self.elapsed_secs)?;
        if let Some(b) = &self.bottleneck {
            write!(f, "; bottleneck: {b}")?;
        }
        Ok(())
    }
}
