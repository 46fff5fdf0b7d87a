//! One look at the whole server: built from counters already kept, the worst streams in
//! full and the rest counted.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::registry::{Registry, StreamEntry};
use super::stages::StageView;
use crate::serve::admission::Admission;
use crate::serve::metrics::resident_bytes;
use crate::serve::topic::{Topic, TopicSummary};

/// Streams sent in full unless asked otherwise; the rest are counted.
pub const DEFAULT_TOP: usize = 100;
/// The most a client may ask for in full.
pub const MAX_TOP: usize = 1000;

/// Which streams a snapshot sends in full.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub top: usize,
    pub sort: SortBy,
}

/// What ranks the streams, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Bytes waiting for the client, in weir and in the kernel.
    Buffered,
    /// Bytes per second out.
    Rate,
}

/// What the console knows of the server besides its registry.
pub struct Sources {
    pub registry: Registry,
    pub admission: Admission,
    /// Every route: its path and kind.
    pub routes: Vec<(Arc<str>, &'static str)>,
    pub topics: Vec<Arc<Topic>>,
    pub send_buffer: u64,
    pub started: Instant,
}

#[derive(Serialize)]
pub struct State {
    /// Unix time of the snapshot, in milliseconds.
    pub time_ms: u64,
    pub uptime_s: f64,
    pub memory: Memory,
    /// Resident set size of the process (none where there is no /proc).
    pub rss: Option<u64>,
    pub routes: Vec<RouteView>,
    pub streams: Streams,
    pub pipelines: Vec<PipelineView>,
    pub topics: Vec<TopicSummary>,
}

/// The global memory budget.
#[derive(Serialize)]
pub struct Memory {
    pub limit: u64,
    /// Reserved by open streams.
    pub reserved: u64,
    pub free: u64,
    /// Bytes sitting in pipelines' channels now.
    pub buffered: u64,
}

#[derive(Serialize)]
pub struct RouteView {
    pub path: Arc<str>,
    pub kind: &'static str,
    pub streams: usize,
    pub slow: usize,
    pub buffered: u64,
}

#[derive(Serialize)]
pub struct Streams {
    pub open: usize,
    pub slow: usize,
    /// The streams with the most bytes waiting for their clients, worst first.
    pub shown: Vec<StreamView>,
    /// Streams not shown, and what they buffer together.
    pub rest: usize,
    pub rest_buffered: u64,
}

#[derive(Serialize)]
pub struct StreamView {
    pub id: u64,
    pub route: Arc<str>,
    pub kind: &'static str,
    pub client: Option<SocketAddr>,
    pub age_s: f64,
    pub bytes_out: u64,
    /// Bytes per second out, over the last second.
    pub rate: f64,
    /// Bytes held in weir's heap for this client, against its share of the budget.
    pub buffered: u64,
    pub budget: u64,
    /// The client socket's kernel send queue now, against `send_buffer`.
    pub send_queue: Option<u64>,
    pub send_buffer: u64,
    /// The send queue was over half full at the connection's last write.
    pub slow: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bottleneck: Option<String>,
}

#[derive(Serialize)]
pub struct PipelineView {
    pub name: String,
    pub stages: Vec<StageView>,
    pub bottleneck: Option<String>,
    pub lag: Vec<PartitionLag>,
    pub acks_pending: usize,
}

#[derive(Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

/// Builds a snapshot with the `view.top` worst streams in full.
pub fn build(sources: &Sources, view: View) -> State {
    let top = view.top;
    let now = Instant::now();
    let entries: Vec<Arc<StreamEntry>> = sources.registry.streams().values().cloned().collect();
    let mut routes: Vec<RouteView> = sources
        .routes
        .iter()
        .map(|(path, kind)| RouteView {
            path: Arc::clone(path),
            kind,
            streams: 0,
            slow: 0,
            buffered: 0,
        })
        .collect();
    let mut ranked: Vec<(u64, u64, &Arc<StreamEntry>)> = Vec::with_capacity(entries.len());
    let mut slow = 0;
    for e in &entries {
        let waiting = e.waiting();
        let is_slow = e.is_slow();
        slow += usize::from(is_slow);
        if let Some(r) = routes.iter_mut().find(|r| *r.path == *e.info.route) {
            r.streams += 1;
            r.slow += usize::from(is_slow);
            r.buffered += waiting;
        }
        let key = match view.sort {
            SortBy::Buffered => waiting,
            SortBy::Rate => e.rate(now) as u64,
        };
        ranked.push((key, waiting, e));
    }
    let top = top.min(ranked.len());
    let worst_first = |a: &(u64, u64, &Arc<StreamEntry>), b: &(u64, u64, &Arc<StreamEntry>)| {
        b.0.cmp(&a.0).then(a.2.id.cmp(&b.2.id))
    };
    if top > 0 && top < ranked.len() {
        ranked.select_nth_unstable_by(top - 1, worst_first);
    }
    let (shown, rest) = ranked.split_at_mut(top);
    shown.sort_unstable_by(worst_first);
    let rest_buffered = rest.iter().map(|(_, w, _)| w).sum();
    let shown = shown
        .iter()
        .map(|(_, _, e)| stream_view(e, sources.send_buffer, now))
        .collect();
    let pipelines = {
        let registered: Vec<_> = sources.registry.pipelines().values().cloned().collect();
        let mut views: Vec<PipelineView> = registered
            .iter()
            .map(|p| {
                let (stages, bottleneck) = p.window.view(&p.stages, now);
                PipelineView {
                    name: p.name.clone(),
                    stages,
                    bottleneck,
                    lag: (p.lag)()
                        .into_iter()
                        .map(|(topic, partition, lag)| PartitionLag {
                            topic,
                            partition,
                            lag,
                        })
                        .collect(),
                    acks_pending: (p.acks_pending)(),
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    };
    let budget = sources.admission.budget();
    let (limit, reserved) = (budget.limit() as u64, budget.reserved() as u64);
    State {
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        uptime_s: sources.started.elapsed().as_secs_f64(),
        memory: Memory {
            limit,
            reserved,
            free: limit.saturating_sub(reserved),
            buffered: budget.buffered() as u64,
        },
        rss: resident_bytes(),
        routes,
        streams: Streams {
            open: entries.len(),
            slow,
            shown,
            rest: rest.len(),
            rest_buffered,
        },
        pipelines,
        topics: sources.topics.iter().map(|t| t.summary()).collect(),
    }
}

fn stream_view(e: &StreamEntry, send_buffer: u64, now: Instant) -> StreamView {
    let (stages, bottleneck) = if e.info.stages.is_empty() {
        (Vec::new(), None)
    } else {
        e.window.view(&e.info.stages, now)
    };
    StreamView {
        id: e.id,
        route: Arc::clone(&e.info.route),
        kind: e.info.kind,
        client: e.info.client,
        age_s: now.saturating_duration_since(e.started).as_secs_f64(),
        bytes_out: e.bytes_out.load(Ordering::Relaxed),
        rate: e.rate(now),
        buffered: e.buffered(),
        budget: e.info.budget,
        send_queue: e.info.backlog.as_ref().and_then(|b| b.send_queue()),
        send_buffer,
        slow: e.is_slow(),
        stages,
        bottleneck,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::console::registry::{Holds, StreamInfo, Watched};
    use crate::serve::send_queue::Backlog;
    use weir_runtime::MemoryBudget;

    struct Fixed(u64);

    impl Holds for Fixed {
        fn held(&self) -> u64 {
            self.0
        }
    }

    fn sources(registry: &Registry) -> Sources {
        Sources {
            registry: registry.clone(),
            admission: Admission::new(20_000, MemoryBudget::new(1 << 30)),
            routes: vec![(Arc::from("/a"), "llm_proxy"), (Arc::from("/b"), "topic")],
            topics: Vec::new(),
            send_buffer: 64 << 10,
            started: Instant::now(),
        }
    }

    fn worst(top: usize) -> View {
        View {
            top,
            sort: SortBy::Buffered,
        }
    }

    fn register(registry: &Registry, route: &str, held: u64) -> Watched {
        registry.register(StreamInfo {
            route: Arc::from(route),
            kind: "llm_proxy",
            client: Some("127.0.0.1:40000".parse().unwrap()),
            budget: 64 << 10,
            backlog: Some(Backlog::default()),
            holds: Some(Arc::new(Fixed(held))),
            stages: Vec::new(),
        })
    }

    #[test]
    fn the_worst_are_shown_in_order_and_the_rest_counted_by_route() {
        let registry = Registry::default();
        let held: Vec<Watched> = (0..10u64)
            .map(|i| register(&registry, if i % 2 == 0 { "/a" } else { "/b" }, i * 100))
            .collect();
        let state = build(&sources(&registry), worst(3));
        let shown: Vec<u64> = state.streams.shown.iter().map(|s| s.buffered).collect();
        assert_eq!(shown, [900, 800, 700]);
        assert_eq!((state.streams.open, state.streams.rest), (10, 7));
        assert_eq!(
            state.streams.rest_buffered,
            (0..7).map(|i| i * 100).sum::<u64>()
        );
        assert_eq!(state.routes[0].streams, 5);
        assert_eq!(state.routes[1].buffered, 100 + 300 + 500 + 700 + 900);
        held[2].sent(5000);
        held[4].sent(100);
        let by_rate = build(
            &sources(&registry),
            View {
                top: 2,
                sort: SortBy::Rate,
            },
        );
        let ids: Vec<u64> = by_rate.streams.shown.iter().map(|s| s.id).collect();
        assert_eq!(ids, [2, 4], "the fastest first");
        drop(held);
        assert_eq!(
            build(&sources(&registry), worst(3)).streams.open,
            0,
            "entries go with their streams"
        );
    }

    /// The cost is measured by `cargo bench -p weir-server --bench console`; this holds the size.
    #[test]
    fn snapshot_of_10000_streams_shows_100_within_2_mb() {
        let registry = Registry::default();
        let _held: Vec<Watched> = (0..10_000u64)
            .map(|i| register(&registry, "/a", (i * 7919) % 65_536))
            .collect();
        let state = build(&sources(&registry), worst(DEFAULT_TOP));
        assert_eq!(state.streams.shown.len(), 100);
        assert_eq!(state.streams.rest, 9_900);
        let wire = serde_json::to_vec(&state).unwrap().len();
        assert!(wire <= 2 << 20, "{wire} bytes on the wire");
    }
}
