//! Per-stage statistics, readable while the pipeline runs, and the final report.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
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

/// What a stage waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Room downstream.
    Blocked = 1,
    /// Input from upstream.
    Starved = 2,
}

/// A wait under way; counted when dropped.
pub(crate) struct Waiting<'a> {
    stats: &'a StageStats,
    wait: Wait,
    from: Instant,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Cleared before it is added, so that a snapshot between the two counts it at most once.
        self.stats.waiting.store(0, Ordering::Relaxed);
        let waited = self.from.elapsed();
        match self.wait {
            Wait::Blocked => self.stats.add_blocked(waited),
            Wait::Starved => self.stats.add_starved(waited),
        }
    }
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
    /// The wait under way (`Wait as u8`, 0 for none) and when it began (ns after `epoch`).
    waiting: AtomicU8,
    waiting_since_ns: AtomicU64,
    epoch: Instant,
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
            waiting: AtomicU8::new(0),
            waiting_since_ns: AtomicU64::new(0),
            epoch: Instant::now(),
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

    pub(crate) fn begin_wait(&self, wait: Wait) -> Waiting<'_> {
        let from = Instant::now();
        self.waiting_since_ns
            .store((from - self.epoch).as_nanos() as u64, Ordering::Relaxed);
        self.waiting.store(wait as u8, Ordering::Release);
        Waiting {
            stats: self,
            wait,
            from,
        }
    }

    /// The wait under way now and how long it has lasted.
    fn waiting_now(&self) -> Option<(Wait, Duration)> {
        let wait = match self.waiting.load(Ordering::Acquire) {
            1 => Wait::Blocked,
            2 => Wait::Starved,
            _ => return None,
        };
        let since = Duration::from_nanos(self.waiting_since_ns.load(Ordering::Relaxed));
        Some((wait, self.epoch.elapsed().saturating_sub(since)))
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
        let mut blocked = Duration::from_nanos(self.blocked_ns.load(Ordering::Relaxed));
        let mut starved = Duration::from_nanos(self.starved_ns.load(Ordering::Relaxed));
        if end.is_none() {
            match self.waiting_now() {
                Some((Wait::Blocked, d)) => blocked += d,
                Some((Wait::Starved, d)) => starved += d,
                None => {}
            }
        }
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
    /// The byte budget of this stage's input channel (for a source, of its read-ahead
    /// queue; 0 when it has none).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_under_way_shows_in_a_snapshot_and_is_counted_once() {
        let stats = StageStats::new("s".into(), StageKind::Transform, None);
        stats.mark_started();
        let waiting = stats.begin_wait(Wait::Blocked);
        std::thread::sleep(Duration::from_millis(50));
        let during = stats.snapshot();
        assert!(during.blocked_secs >= 0.05, "{during:?}");
        assert!(during.busy_secs < during.blocked_secs, "{during:?}");
        drop(waiting);
        let after = stats.snapshot();
        assert!(after.blocked_secs >= during.blocked_secs, "{after:?}");
        assert!(
            after.blocked_secs < during.blocked_secs + 0.05,
            "counted twice: {after:?}"
        );
        assert_eq!(after.starved_secs, 0.0);
    }
}
