//! One check: start the slow clients, sample the target's memory and socket queues every
//! interval, find the steady-state window, stop everything, and judge.
//!
//! Shutdown: every client is cancelled and joined (its socket closed) and a spawned
//! server is stopped before `run` returns, whatever the verdict. Every loop is bounded
//! by `max_duration`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::client::{slow_client, ClientEnd, ClientPlan, LiveCounts};
use crate::fit::{settled_at, LineFit, Thresholds, Trend};
use crate::memory::{cgroup_limit, process_tree, MemorySampler};
use crate::report::{
    human_bytes, ClientSummary, KernelSummary, LimitProjection, MemorySummary, Report, Sample,
    Verdict, Window,
};
use crate::sockets::socket_queues;
use crate::spawn::SpawnedServer;
use crate::CheckError;

/// Consecutive failed scrapes of a metrics endpoint after which the run gives up.
const MAX_SCRAPE_FAILURES: u32 = 3;

/// Where the target's memory is read from.
#[derive(Clone, Debug)]
pub enum MemoryFrom {
    Pid(u32),
    Spawn(String),
    Metrics(String),
}

#[derive(Clone, Debug)]
pub struct CheckConfig {
    pub url: Url,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub clients: usize,
    /// Body bytes per second per client; 0 = read the head, never the body.
    pub read_rate: u64,
    pub recv_buffer: u32,
    /// How long the run lasts when the steady-state window is long enough by then.
    pub duration: Duration,
    pub warmup: Duration,
    /// The shortest steady-state window the fit is made over.
    pub min_window: Duration,
    /// The trailing span over which the socket queues must have stopped growing.
    pub settle_window: Duration,
    /// The run never lasts longer than this, settled or not.
    pub max_duration: Duration,
    pub interval: Duration,
    pub memory: MemoryFrom,
    pub limit: Option<u64>,
    pub thresholds: Thresholds,
    /// The fraction of clients that must still be streaming at the end.
    pub min_streaming: f64,
    pub connect_timeout: Duration,
    /// How long a spawned server may take to accept connections.
    pub spawn_timeout: Duration,
}

/// The phase a running check is in, for the progress line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    WarmUp,
    /// Past warm-up, waiting for the socket queues to stop growing.
    Settling,
    Steady,
}

/// What the caller is shown after each sample.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub sample: Sample,
    pub phase: Phase,
    pub clients: usize,
    pub finished: u64,
}

/// The target the memory is read from, alive for the run.
struct Target {
    sampler: MemorySampler,
    /// The process read from /proc (`--pid`, `--spawn`).
    pid: Option<u32>,
    /// The same, when its sockets can be read too (another user's are not readable).
    queues_of: Option<u32>,
    spawned: Option<SpawnedServer>,
    description: String,
}

impl CheckConfig {
    /// The one request every client sends. `Connection: close` so that the end of the
    /// response is the end of the connection, seen as EOF.
    fn request(&self) -> Vec<u8> {
        let mut path = self.url.path().to_string();
        if let Some(query) = self.url.query() {
            path.push('?');
            path.push_str(query);
        }
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        let mut head = format!("{} {path} HTTP/1.1\r\n", self.method);
        if !has("host") {
            let host = self.url.host_str().unwrap_or_default();
            match self.url.port() {
                Some(port) => head.push_str(&format!("Host: {host}:{port}\r\n")),
                None => head.push_str(&format!("Host: {host}\r\n")),
            }
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n");
        if let Some(body) = &self.body {
            if !has("content-length") {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(self.body.as_deref().unwrap_or_default());
        request
    }

    async fn resolve(&self) -> Result<std::net::SocketAddr, CheckError> {
        if self.url.scheme() != "http" {
            return Err(CheckError::Usage(format!(
                "{}: only http:// URLs (put a TLS-terminating proxy in front of https)",
                self.url
            )));
        }
        let host = self
            .url
            .host_str()
            .ok_or_else(|| CheckError::Usage(format!("{}: no host", self.url)))?;
        let port = self.url.port_or_known_default().unwrap_or(80);
        tokio::net::lookup_host(format!("{host}:{port}"))
            .await
            .map_err(|e| CheckError::Usage(format!("{}: cannot resolve {host}: {e}", self.url)))?
            .next()
            .ok_or_else(|| CheckError::Usage(format!("{}: {host} has no address", self.url)))
    }

    async fn target(&self, addr: std::net::SocketAddr) -> Result<Target, CheckError> {
        match &self.memory {
            MemoryFrom::Pid(pid) => {
                if crate::memory::process_rss(*pid).is_none() {
                    return Err(CheckError::Usage(format!(
                        "--pid {pid}: no such process (or no resident memory to read)"
                    )));
                }
                Ok(Target {
                    sampler: MemorySampler::ProcessTree { root: *pid },
                    pid: Some(*pid),
                    queues_of: Some(*pid),
                    spawned: None,
                    description: format!("pid {pid} and its children"),
                })
            }
            MemoryFrom::Spawn(command) => {
                let mut server = SpawnedServer::start(command).map_err(CheckError::Setup)?;
                server
                    .wait_ready(addr, self.spawn_timeout)
                    .await
                    .map_err(CheckError::Setup)?;
                let pid = server.pid();
                Ok(Target {
                    sampler: MemorySampler::ProcessTree { root: pid },
                    pid: Some(pid),
                    queues_of: Some(pid),
                    spawned: Some(server),
                    description: format!("spawned `{command}` (pid {pid} and its children)"),
                })
            }
            MemoryFrom::Metrics(url) => Ok(Target {
                sampler: MemorySampler::prometheus(url, self.interval.max(Duration::from_secs(1)))?,
                pid: None,
                queues_of: None,
                spawned: None,
                description: format!("metrics {url}"),
            }),
        }
    }
}

/// Runs the check; `on_sample` is called after every sample (for a progress line).
pub async fn run(
    config: &CheckConfig,
    mut on_sample: impl FnMut(&Progress),
) -> Result<Report, CheckError> {
    let addr = config.resolve().await?;
    let mut target = config.target(addr).await?;
    if let Some(pid) = target.queues_of {
        if let Err(e) = socket_queues(&[pid]) {
            target.queues_of = None;
            target
                .description
                .push_str(&format!(" (socket queues not read: {e})"));
        }
    }
    let plan = Arc::new(ClientPlan {
        addr,
        request: config.request(),
        read_rate: config.read_rate,
        recv_buffer: config.recv_buffer,
        connect_timeout: config.connect_timeout,
    });
    let live = Arc::new(LiveCounts::default());
    let stop = CancellationToken::new();
    let mut samples = Vec::new();
    let mut target_gone = None;
    // A baseline before any client connects: the growth the clients cause starts here.
    let started = Instant::now();
    match take_sample(&target, &live, 0.0).await {
        Ok(s) => samples.push(s),
        Err(e) => target_gone = Some(e),
    }
    let clients: Vec<_> = (0..config.clients)
        .map(|_| tokio::spawn(slow_client(plan.clone(), live.clone(), stop.clone())))
        .collect();

    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut scrape_failures = 0;
    let mut settled: Option<f64> = None;
    let max_finished = config.clients as f64 * (1.0 - config.min_streaming);
    while target_gone.is_none() {
        ticker.tick().await;
        let t = started.elapsed().as_secs_f64();
        if let Some(exit) = target.spawned.as_mut().and_then(SpawnedServer::exited) {
            target_gone = Some(exit);
            break;
        }
        match take_sample(&target, &live, t).await {
            Ok(sample) => {
                scrape_failures = 0;
                samples.push(sample);
            }
            Err(e) if target.pid.is_some() => {
                target_gone = Some(e);
                break;
            }
            Err(e) => {
                scrape_failures += 1;
                if scrape_failures >= MAX_SCRAPE_FAILURES {
                    target_gone = Some(e);
                    break;
                }
                continue;
            }
        }
        if settled.is_none() {
            settled = queues_settled(config, &samples);
        }
        let start = window_start(config, settled);
        let phase = match start {
            _ if t < config.warmup.as_secs_f64() => Phase::WarmUp,
            None => Phase::Settling,
            Some(_) => Phase::Steady,
        };
        let finished = live.finished.load(Ordering::Relaxed);
        on_sample(&Progress {
            sample: *samples.last().expect("a sample was just pushed"),
            phase,
            clients: config.clients,
            finished,
        });
        // Past this many finished clients the verdict can only be INCONCLUSIVE.
        let doomed = finished as f64 > max_finished || finished as usize == config.clients;
        let window_long_enough = start.is_some_and(|s| t - s >= config.min_window.as_secs_f64());
        if doomed
            || t >= config.max_duration.as_secs_f64()
            || (t >= config.duration.as_secs_f64() && window_long_enough)
        {
            break;
        }
    }
    let end_s = started.elapsed().as_secs_f64();
    stop.cancel();
    let mut ends = Vec::with_capacity(clients.len());
    for client in clients {
        ends.push(client.await.unwrap_or_else(|e| ClientEnd::Failed {
            error: format!("client task: {e}"),
        }));
    }
    // Stop a spawned server now, before the verdict is written.
    target.spawned.take();
    Ok(judge(
        config,
        &target,
        samples,
        settled,
        end_s,
        target_gone,
        &ends,
    ))
}

async fn take_sample(target: &Target, live: &LiveCounts, t: f64) -> Result<Sample, String> {
    let rss = target.sampler.sample().await?;
    let queues = match target.queues_of {
        Some(pid) => Some(socket_queues(&process_tree(pid))?),
        None => None,
    };
    Ok(Sample {
        t,
        rss,
        queued_send: queues.map(|q| q.send),
        queued_recv: queues.map(|q| q.recv),
        streaming: live.streaming.load(Ordering::Relaxed),
        received: live.bytes.load(Ordering::Relaxed),
    })
}

/// When the target's socket queues stopped growing; `Some(0)` when they are not measured
/// (the window then starts after the warm-up alone).
fn queues_settled(config: &CheckConfig, samples: &[Sample]) -> Option<f64> {
    let points: Option<Vec<(f64, f64)>> = samples
        .iter()
        .map(|s| Some((s.t, s.queued()? as f64)))
        .collect();
    match points {
        Some(points) => settled_at(
            &points,
            config.settle_window.as_secs_f64(),
            config.thresholds.max_slope,
        ),
        None => Some(0.0),
    }
}

fn window_start(config: &CheckConfig, settled: Option<f64>) -> Option<f64> {
    settled.map(|s| s.max(config.warmup.as_secs_f64()))
}

fn judge(
    config: &CheckConfig,
    target: &Target,
    samples: Vec<Sample>,
    settled: Option<f64>,
    end_s: f64,
    target_gone: Option<String>,
    ends: &[ClientEnd],
) -> Report {
    let clients = ClientSummary::of(ends);
    let measured_queues = target.queues_of.is_some();
    let start = window_start(config, settled);
    let window_points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| start.is_some_and(|start| s.t >= start))
        .map(|s| (s.t, s.rss as f64))
        .collect();
    let fit = LineFit::of(&window_points);
    let memory = samples.first().map(|first| MemorySummary {
        first: first.rss,
        peak: samples.iter().map(|s| s.rss).max().unwrap_or(first.rss),
        last: samples.last().map_or(first.rss, |s| s.rss),
        growth_over_window: fit
            .zip(window_points.first())
            .zip(window_points.last())
            .map(|((fit, a), b)| (fit.at(b.0) - fit.at(a.0)).round() as i64),
    });
    let kernel = measured_queues
        .then(|| samples.last())
        .flatten()
        .map(|last| KernelSummary {
            send_last: last.queued_send.unwrap_or(0),
            recv_last: last.queued_recv.unwrap_or(0),
            peak: samples.iter().filter_map(Sample::queued).max().unwrap_or(0),
        });
    let trend = fit.map(|f| config.thresholds.trend(&f));
    let slope = |f: &LineFit| format!("{:+.1} KB/s", f.slope / 1000.0);
    let needed = (config.min_streaming * config.clients as f64).ceil() as usize;
    let window_desc = |s: f64| format!("{s:.0} s to {end_s:.0} s");
    let (verdict, reason) = if let Some(gone) = target_gone {
        (
            Verdict::Inconclusive,
            format!("the target could not be measured to the end: {gone}"),
        )
    } else if clients.streaming_at_end < needed {
        (
            Verdict::Inconclusive,
            format!(
                "the clients could not load the server: {} of {} streaming at the end \
                 (need {needed}): {}",
                clients.streaming_at_end,
                clients.requested,
                clients.trouble()
            ),
        )
    } else if settled.is_none() {
        let growth = queue_growth(config, &samples);
        (
            Verdict::Inconclusive,
            format!(
                "the target's socket queues never stopped growing ({growth} over the last \
                 {:.0} s) before the run ended at {end_s:.0} s: the kernel was still \
                 absorbing the clients' backlog; raise --max-duration, or use fewer \
                 clients or a smaller --recv-buffer",
                config.settle_window.as_secs_f64()
            ),
        )
    } else if let (Some(start), Some(fit), Some(trend)) = (start, fit, trend) {
        match trend {
            Trend::Flat => (
                Verdict::Pass,
                format!(
                    "memory levelled off: {} over {} (below {:.1} KB/s)",
                    slope(&fit),
                    window_desc(start),
                    config.thresholds.max_slope / 1000.0
                ),
            ),
            Trend::Growing => (
                Verdict::Fail,
                format!(
                    "memory grows steadily: {} with R² {:.2} over {}: the server buffers \
                     what its clients do not take",
                    slope(&fit),
                    fit.r2,
                    window_desc(start)
                ),
            ),
            Trend::Erratic => (
                Verdict::Inconclusive,
                format!(
                    "memory moved {} over {} but without a steady trend (R² {:.2} < {:.2}); \
                     run longer",
                    slope(&fit),
                    window_desc(start),
                    fit.r2,
                    config.thresholds.min_r2
                ),
            ),
        }
    } else {
        (
            Verdict::Inconclusive,
            format!("the steady-state window was too short for a fit (run ended at {end_s:.0} s)"),
        )
    };
    let limit = config
        .limit
        .map(|bytes| (bytes, "--limit"))
        .or_else(|| target.pid.and_then(cgroup_limit).map(|b| (b, "cgroup")))
        .map(|(bytes, source)| LimitProjection {
            bytes,
            source: source.to_string(),
            seconds_to_limit: fit
                .filter(|_| trend.is_some_and(|t| t != Trend::Flat))
                .zip(memory.as_ref())
                .map(|(fit, m)| (bytes as f64 - m.last as f64).max(0.0) / fit.slope),
        });
    let where_bytes_live = where_bytes_live(memory.as_ref(), kernel.as_ref());
    Report {
        verdict,
        reason,
        url: config.url.to_string(),
        memory_source: target.description.clone(),
        window: Window {
            warmup_s: config.warmup.as_secs_f64(),
            queues_settled_s: settled.filter(|_| measured_queues),
            start_s: start,
            end_s,
        },
        fit,
        thresholds: config.thresholds,
        memory,
        kernel,
        where_bytes_live,
        limit,
        clients,
        samples,
    }
}

/// How much the queues grew over the trailing settle window, for the reason.
fn queue_growth(config: &CheckConfig, samples: &[Sample]) -> String {
    let Some(last) = samples.last() else {
        return "nothing".into();
    };
    let since = last.t - config.settle_window.as_secs_f64();
    let before = samples
        .iter()
        .find(|s| s.t >= since)
        .and_then(Sample::queued)
        .unwrap_or(0);
    human_bytes(last.queued().unwrap_or(0) as f64 - before as f64)
}

fn where_bytes_live(memory: Option<&MemorySummary>, kernel: Option<&KernelSummary>) -> String {
    let Some(memory) = memory else {
        return "unknown (no memory samples)".into();
    };
    let heap = memory.last as f64 - memory.first as f64;
    let heap_text = format!(
        "heap +{} since the clients connected",
        human_bytes(heap.max(0.0))
    );
    let Some(kernel) = kernel else {
        return format!("{heap_text}; kernel socket queues not measured");
    };
    let queued = (kernel.send_last + kernel.recv_last) as f64;
    let most = if queued > heap {
        "mostly in the kernel's socket queues"
    } else {
        "mostly in the heap"
    };
    format!(
        "{most}: {heap_text}, {} queued in its sockets",
        human_bytes(queued)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, headers: &[(&str, &str)], body: Option<&str>) -> CheckConfig {
        CheckConfig {
            url: Url::parse(url).unwrap(),
            method: "POST".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.map(|b| b.as_bytes().to_vec()),
            clients: 1,
            read_rate: 1024,
            recv_buffer: 4096,
            duration: Duration::from_secs(60),
            warmup: Duration::from_secs(10),
            min_window: Duration::from_secs(10),
            settle_window: Duration::from_secs(10),
            max_duration: Duration::from_secs(180),
            interval: Duration::from_secs(1),
            memory: MemoryFrom::Pid(1),
            limit: None,
            thresholds: Thresholds {
                max_slope: 16_000.0,
                min_r2: 0.5,
            },
            min_streaming: 0.9,
            connect_timeout: Duration::from_secs(10),
            spawn_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_request_carries_path_query_host_headers_and_body() {
        let c = config(
            "http://[::1]:8080/v1/chat?x=1&y=2",
            &[("authorization", "Bearer k")],
            Some("{}"),
        );
        let request = String::from_utf8(c.request()).unwrap();
        assert_eq!(
            request,
            "POST /v1/chat?x=1&y=2 HTTP/1.1\r\nHost: [::1]:8080\r\nauthorization: Bearer k\r\n\
             Connection: close\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn headers_given_are_not_repeated() {
        let c = config(
            "http://example.test/",
            &[("HOST", "other"), ("content-length", "2")],
            Some("{}"),
        );
        let request = String::from_utf8(c.request()).unwrap();
        assert_eq!(
            request,
            "POST / HTTP/1.1\r\nHOST: other\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}"
        );
    }

    #[tokio::test]
    async fn only_http_urls_are_resolved() {
        let err = config("https://127.0.0.1/", &[], None)
            .resolve()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("only http://"), "{err}");
        let addr = config("http://[::1]:9/", &[], None)
            .resolve()
            .await
            .unwrap();
        assert_eq!(addr, "[::1]:9".parse().unwrap());
    }
}
