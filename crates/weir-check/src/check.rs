//! One check: start the slow clients, sample the memory of each process of the target
//! (a proxy and the app behind it are two) and their socket queues every interval, find
//! the steady-state window, stop everything, and judge each process alone (`judge`): the
//! verdict is the worst of theirs, and the reason names the process that holds the bytes.
//!
//! Shutdown: every client is cancelled and joined (its socket closed) and every spawned
//! server is stopped before `run` returns, whatever the verdict or error. Every loop is
//! bounded by `max_duration`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::client::{slow_client, ClientEnd, ClientPlan, LiveCounts};
use crate::fit::{settled_at, LineFit, Thresholds, Trend};
use crate::judge::{judge as judge_series, Judgement, Load};
use crate::memory::{
    cgroup_limit, own_trees, process_name, process_rss, trees_rss, MetricsSampler,
};
use crate::report::{
    human_bytes, signed_bytes, ClientSummary, KernelSummary, LimitProjection, MemorySummary,
    ProcessSample, ProcessSummary, Report, Sample, Verdict, Window,
};
use crate::sockets::{listening_ports, socket_queues, SocketQueues};
use crate::spawn::{SpawnError, SpawnedServer};
use crate::CheckError;

/// Consecutive failed scrapes of a metrics endpoint after which the run gives up.
const MAX_SCRAPE_FAILURES: u32 = 3;

/// Where the target's memory is read from: one or more processes (`Pid`, `Spawn`, in
/// any mix), or one metrics endpoint alone.
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
    pub memory: Vec<MemoryFrom>,
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
#[derive(Clone, Debug)]
pub struct Progress {
    pub sample: Sample,
    pub phase: Phase,
    pub clients: usize,
    pub finished: u64,
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
}

/// One process of the target, read from /proc with its children.
struct Process {
    pid: u32,
    /// `pid 123 (nginx)`: the name of the biggest process of its tree when it was ready.
    label: String,
    command: Option<String>,
    spawned: Option<SpawnedServer>,
    /// It listens on the URL's port.
    front: bool,
}

enum Source {
    Processes(Vec<Process>),
    Metrics {
        sampler: MetricsSampler,
        url: String,
    },
}

/// The target the memory is read from, alive for the run.
struct Target {
    source: Source,
    /// Whether the processes' socket queues are read (another user's are not readable).
    queues: bool,
    description: String,
}

/// Why sampling stopped before the run's end.
enum Lost {
    /// A `--pid` exited: an error, never a verdict from missing samples.
    Pid(String),
    /// A spawned server exited, or its sockets could not be read.
    Target(String),
    /// One scrape of the metrics endpoint failed (a few in a row end the run).
    Scrape(String),
}

/// What a process was at the end of the run, for the report.
struct Measured {
    label: String,
    pid: Option<u32>,
    command: Option<String>,
    front: bool,
    stderr_tail: Vec<String>,
}

impl Target {
    fn roots(&self) -> Vec<u32> {
        match &self.source {
            Source::Processes(processes) => processes.iter().map(|p| p.pid).collect(),
            Source::Metrics { .. } => Vec::new(),
        }
    }

    /// Stops every spawned server and says what each process was.
    fn finish(self) -> Vec<Measured> {
        match self.source {
            Source::Processes(processes) => processes
                .into_iter()
                .map(|p| Measured {
                    label: p.label,
                    pid: Some(p.pid),
                    command: p.command,
                    front: p.front,
                    stderr_tail: p.spawned.map(SpawnedServer::stop).unwrap_or_default(),
                })
                .collect(),
            Source::Metrics { url, .. } => vec![Measured {
                label: format!("metrics {url}"),
                pid: None,
                command: None,
                front: false,
                stderr_tail: Vec::new(),
            }],
        }
    }
}

/// `pid 123 (nginx)`, named after the process of its tree holding the most memory (a
/// spawned `sh -c` is rarely what holds the bytes).
fn label(pid: u32, tree: &[u32]) -> String {
    let biggest = tree
        .iter()
        .copied()
        .max_by_key(|&p| process_rss(p).unwrap_or(0))
        .unwrap_or(pid);
    match process_name(biggest).or_else(|| process_name(pid)) {
        Some(name) if biggest == pid => format!("pid {pid} ({name})"),
        Some(name) => format!("pid {pid} ({name}, pid {biggest})"),
        None => format!("pid {pid}"),
    }
}

impl CheckConfig {
    /// Finds the processes given (`--pid`) and starts those to spawn, in order, each once
    /// the one before listens: a proxy in front is started after the app behind it.
    async fn target(&self, addr: std::net::SocketAddr) -> Result<Target, CheckError> {
        if let [MemoryFrom::Metrics(url)] = self.memory.as_slice() {
            return Ok(Target {
                source: Source::Metrics {
                    sampler: MetricsSampler::new(url, self.interval.max(Duration::from_secs(1)))?,
                    url: url.clone(),
                },
                queues: false,
                description: format!("metrics {url}"),
            });
        }
        let mut processes: Vec<Process> = Vec::new();
        let mut descriptions = Vec::new();
        let last_spawn = self
            .memory
            .iter()
            .rposition(|m| matches!(m, MemoryFrom::Spawn(_)));
        for (i, from) in self.memory.iter().enumerate() {
            match from {
                MemoryFrom::Metrics(url) => {
                    return Err(CheckError::Usage(format!(
                        "--metrics-url {url}: not with --pid or --spawn (give one or the other)"
                    )))
                }
                MemoryFrom::Pid(pid) => {
                    if process_rss(*pid).is_none() {
                        return Err(CheckError::Usage(format!(
                            "--pid {pid}: no such process (or no resident memory to read)"
                        )));
                    }
                    if processes.iter().any(|p| p.pid == *pid) {
                        return Err(CheckError::Usage(format!("--pid {pid}: given twice")));
                    }
                    descriptions.push(format!("pid {pid} and its children"));
                    processes.push(Process {
                        pid: *pid,
                        label: String::new(),
                        command: None,
                        spawned: None,
                        front: false,
                    });
                }
                MemoryFrom::Spawn(command) => {
                    let setup = |e: SpawnError| CheckError::Setup(e.to_string());
                    let mut server = SpawnedServer::start(command).map_err(setup)?;
                    // Only the last one started serves the URL; those before it, behind it.
                    let url = (Some(i) == last_spawn).then_some(addr);
                    server
                        .wait_ready(url, self.spawn_timeout)
                        .await
                        .map_err(setup)?;
                    let pid = server.pid();
                    descriptions.push(format!("spawned `{command}` (pid {pid} and its children)"));
                    processes.push(Process {
                        pid,
                        label: String::new(),
                        command: Some(command.clone()),
                        spawned: Some(server),
                        front: false,
                    });
                }
            }
        }
        if processes.is_empty() {
            return Err(CheckError::Usage(
                "give --pid, --spawn or --metrics-url".into(),
            ));
        }
        let roots: Vec<u32> = processes.iter().map(|p| p.pid).collect();
        let trees = own_trees(&roots);
        for (process, tree) in processes.iter_mut().zip(&trees) {
            process.label = label(process.pid, tree);
            process.front = listening_ports(tree).is_ok_and(|ports| ports.contains(&addr.port()));
        }
        let mut description = descriptions.join("; ");
        let union: Vec<u32> = trees.concat();
        let queues = match socket_queues(&union) {
            Ok(_) => true,
            Err(e) => {
                description.push_str(&format!(" (socket queues not read: {e})"));
                false
            }
        };
        Ok(Target {
            source: Source::Processes(processes),
            queues,
            description,
        })
    }
}

/// Runs the check; `on_sample` is called after every sample (for a progress line).
pub async fn run(
    config: &CheckConfig,
    mut on_sample: impl FnMut(&Progress),
) -> Result<Report, CheckError> {
    let addr = config.resolve().await?;
    let mut target = config.target(addr).await?;
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
    let mut lost = None;
    // A baseline before any client connects: the growth the clients cause starts here.
    let started = Instant::now();
    match take_sample(&target, &live, 0.0).await {
        Ok(s) => samples.push(s),
        Err(e) => lost = Some(e),
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
    while lost.is_none() {
        ticker.tick().await;
        let t = started.elapsed().as_secs_f64();
        if let Some(exit) = spawned_exit(&mut target) {
            lost = Some(Lost::Target(exit));
            break;
        }
        match take_sample(&target, &live, t).await {
            Ok(sample) => {
                scrape_failures = 0;
                samples.push(sample);
            }
            Err(Lost::Scrape(e)) => {
                scrape_failures += 1;
                if scrape_failures >= MAX_SCRAPE_FAILURES {
                    lost = Some(Lost::Target(e));
                    break;
                }
                continue;
            }
            Err(e) => {
                lost = Some(e);
                break;
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
        if let Some(sample) = samples.last() {
            on_sample(&Progress {
                sample: sample.clone(),
                phase,
                clients: config.clients,
                finished,
            });
        }
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
    let queues = target.queues;
    let description = target.description.clone();
    let first_pid = target.roots().first().copied();
    // Stop the spawned servers now, before the verdict is written.
    let measured = target.finish();
    let gone = match lost {
        Some(Lost::Pid(message)) => return Err(CheckError::TargetLost(message)),
        Some(Lost::Target(message) | Lost::Scrape(message)) => Some(message),
        None => None,
    };
    Ok(judge(
        config,
        Judged {
            description,
            queues,
            first_pid,
            measured,
        },
        samples,
        settled,
        end_s,
        gone,
        &ends,
    ))
}

/// How the first spawned server that exited did, if one has.
fn spawned_exit(target: &mut Target) -> Option<String> {
    let Source::Processes(processes) = &mut target.source else {
        return None;
    };
    processes
        .iter_mut()
        .find_map(|p| p.spawned.as_mut().and_then(SpawnedServer::exited))
}

async fn take_sample(target: &Target, live: &LiveCounts, t: f64) -> Result<Sample, Lost> {
    let (processes, rss, queues) = match &target.source {
        Source::Metrics { sampler, .. } => {
            let rss = sampler
                .sample()
                .await
                .map_err(|e| Lost::Scrape(e.to_string()))?;
            (vec![ProcessSample { rss, queued: None }], rss, None)
        }
        Source::Processes(processes) => {
            let roots: Vec<u32> = processes.iter().map(|p| p.pid).collect();
            let trees = own_trees(&roots);
            let (each, total) =
                trees_rss(&trees).map_err(|pid| match processes.iter().find(|p| p.pid == pid) {
                    Some(p) if p.spawned.is_none() => Lost::Pid(format!(
                        "--pid {pid}: {} exited at {t:.0} s, during the run; no verdict from \
                         missing samples",
                        p.label
                    )),
                    _ => Lost::Target(format!("process {pid} has exited")),
                })?;
            let mut processes = Vec::with_capacity(each.len());
            let mut queues: Option<SocketQueues> = None;
            for (tree, rss) in trees.iter().zip(each) {
                let queued = if target.queues {
                    let q = socket_queues(tree).map_err(|e| Lost::Target(e.to_string()))?;
                    let sum = queues.get_or_insert_with(SocketQueues::default);
                    sum.send += q.send;
                    sum.recv += q.recv;
                    Some(q.total())
                } else {
                    None
                };
                processes.push(ProcessSample { rss, queued });
            }
            (processes, total, queues)
        }
    };
    Ok(Sample {
        t,
        rss,
        processes,
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

/// The target as the verdict needs it, once its servers are stopped.
struct Judged {
    description: String,
    queues: bool,
    first_pid: Option<u32>,
    measured: Vec<Measured>,
}

fn judge(
    config: &CheckConfig,
    target: Judged,
    samples: Vec<Sample>,
    settled: Option<f64>,
    end_s: f64,
    gone: Option<String>,
    ends: &[ClientEnd],
) -> Report {
    let clients = ClientSummary::of(ends);
    let measured_queues = target.queues;
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
    let needed = (config.min_streaming * config.clients as f64).ceil() as usize;
    let early = if let Some(gone) = gone {
        Some(format!(
            "the target could not be measured to the end: {gone}"
        ))
    } else if clients.streaming_at_end < needed {
        Some(format!(
            "the clients could not load the server: {} of {} streaming at the end \
             (need {needed}): {}",
            clients.streaming_at_end,
            clients.requested,
            clients.trouble()
        ))
    } else if settled.is_none() {
        let growth = queue_growth(config, &samples);
        Some(format!(
            "the target's socket queues never stopped growing ({growth} over the last \
             {:.0} s) before the run ended at {end_s:.0} s: the kernel was still \
             absorbing the clients' backlog; raise --max-duration, or use fewer \
             clients or a smaller --recv-buffer",
            config.settle_window.as_secs_f64()
        ))
    } else {
        None
    };
    let processes: Vec<ProcessSummary> = target
        .measured
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let points: Vec<(f64, f64)> = samples
                .iter()
                .filter_map(|s| Some((s.t, s.processes.get(i)?.rss as f64)))
                .collect();
            let judgement = match (&early, start) {
                (None, Some(start)) => Some(judge_series(
                    &points,
                    start,
                    end_s,
                    Load {
                        clients: clients.streaming_at_end,
                        kernel_share: kernel_share(&samples, i, start),
                    },
                    &config.thresholds,
                )),
                _ => None,
            };
            ProcessSummary {
                label: m.label,
                pid: m.pid,
                command: m.command,
                front: m.front,
                peak: points.iter().map(|p| p.1 as u64).max().unwrap_or(0),
                judgement,
                stderr_tail: m.stderr_tail,
            }
        })
        .collect();
    let (verdict, reason) = match early {
        Some(reason) => (Verdict::Inconclusive, reason),
        None => verdict_of(&processes).unwrap_or_else(|| {
            (
                Verdict::Inconclusive,
                format!(
                    "the steady-state window was too short for a fit (run ended at {end_s:.0} s)"
                ),
            )
        }),
    };
    let limit = config
        .limit
        .map(|bytes| (bytes, "--limit"))
        .or_else(|| {
            target
                .first_pid
                .and_then(cgroup_limit)
                .map(|b| (b, "cgroup"))
        })
        .map(|(bytes, source)| LimitProjection {
            bytes,
            source: source.to_string(),
            seconds_to_limit: fit
                .filter(|_| trend.is_some_and(|t| t != Trend::Flat))
                .zip(memory.as_ref())
                .map(|(fit, m)| (bytes as f64 - m.last as f64).max(0.0) / fit.slope),
        });
    let where_bytes_live = where_bytes_live(memory.as_ref(), kernel.as_ref(), &processes);
    Report {
        verdict,
        reason,
        url: config.url.to_string(),
        memory_source: target.description,
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
        processes,
        limit,
        clients,
        samples,
    }
}

/// The median of process `i`'s socket queues from `start` on; 0 when not measured.
fn kernel_share(samples: &[Sample], i: usize, start: f64) -> f64 {
    let mut queued: Vec<u64> = samples
        .iter()
        .filter(|s| s.t >= start)
        .filter_map(|s| s.processes.get(i)?.queued)
        .collect();
    queued.sort_unstable();
    queued.get(queued.len() / 2).map_or(0.0, |&q| q as f64)
}

/// The worst of the processes' verdicts, its reason naming the process that holds the
/// bytes when there is more than one; `None` when none was judged.
fn verdict_of(processes: &[ProcessSummary]) -> Option<(Verdict, String)> {
    let judged: Vec<(&ProcessSummary, &Judgement)> = processes
        .iter()
        .filter_map(|p| Some((p, p.judgement.as_ref()?)))
        .collect();
    let rank = |v: Verdict| match v {
        Verdict::Pass => 0,
        Verdict::Inconclusive => 1,
        Verdict::Fail => 2,
    };
    let growth = |j: &Judgement| j.growth.unwrap_or(0.0);
    let &(worst, judgement) = judged.iter().max_by(|a, b| {
        rank(a.1.verdict)
            .cmp(&rank(b.1.verdict))
            .then(growth(a.1).total_cmp(&growth(b.1)))
    })?;
    if judged.len() == 1 {
        return Some((judgement.verdict, judgement.reason.clone()));
    }
    let grew = |j: &Judgement| signed_bytes(growth(j));
    let others: Vec<String> = judged
        .iter()
        .filter(|(p, _)| !std::ptr::eq(*p, worst))
        .map(|(p, j)| format!("{}: {}, {}", p.label, j.verdict, grew(j)))
        .collect();
    let others = others.join("; ");
    let reason = match judgement.verdict {
        Verdict::Fail if worst.front => format!(
            "the proxy in front buffers: {} in {}: {} (behind it, {others})",
            grew(judgement),
            worst.label,
            judgement.reason
        ),
        Verdict::Fail if processes.iter().any(|p| p.front) => format!(
            "the app behind the proxy buffers: {} in {}: {} (the rest: {others})",
            grew(judgement),
            worst.label,
            judgement.reason
        ),
        Verdict::Fail => format!(
            "{} buffers: {}: {} (the rest: {others})",
            worst.label,
            grew(judgement),
            judgement.reason
        ),
        Verdict::Inconclusive => {
            format!("{}: {} (the rest: {others})", worst.label, judgement.reason)
        }
        Verdict::Pass => format!(
            "every process is bounded; the one that grew most, {}: {} (the rest: {others})",
            worst.label, judgement.reason
        ),
    };
    Some((judgement.verdict, reason))
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

fn where_bytes_live(
    memory: Option<&MemorySummary>,
    kernel: Option<&KernelSummary>,
    processes: &[ProcessSummary],
) -> String {
    let Some(memory) = memory else {
        return "unknown (no memory samples)".into();
    };
    let heap = memory.last as f64 - memory.first as f64;
    let heap_text = format!(
        "heap +{} since the clients connected",
        human_bytes(heap.max(0.0))
    );
    let holder = processes
        .iter()
        .filter_map(|p| Some((p, p.judgement.as_ref()?.growth?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|_| processes.len() > 1)
        .map(|(p, growth)| {
            format!(
                "; most of it in {}: +{}",
                p.label,
                human_bytes(growth.max(0.0))
            )
        })
        .unwrap_or_default();
    let Some(kernel) = kernel else {
        return format!("{heap_text}{holder}; kernel socket queues not measured");
    };
    let queued = (kernel.send_last + kernel.recv_last) as f64;
    let most = if queued > heap {
        "mostly in the kernel's socket queues"
    } else {
        "mostly in the heap"
    };
    format!(
        "{most}: {heap_text}{holder}, {} queued in its sockets",
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
            memory: vec![MemoryFrom::Pid(1)],
            limit: None,
            thresholds: Thresholds {
                max_slope: 16_000.0,
                min_r2: 0.5,
                max_per_client: 2.0 * 1048576.0,
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

    const MIB: f64 = 1048576.0;

    /// A process judged over 30 s with 50 clients, memory `f(t)`.
    fn process(label: &str, front: bool, f: impl Fn(f64) -> f64) -> ProcessSummary {
        let points: Vec<(f64, f64)> = (0..=30).map(|i| (i as f64, f(i as f64))).collect();
        let c = config("http://127.0.0.1:1/", &[], None);
        ProcessSummary {
            label: label.into(),
            pid: Some(1),
            command: None,
            front,
            peak: 0,
            judgement: Some(judge_series(
                &points,
                12.0,
                30.0,
                Load {
                    clients: 50,
                    kernel_share: 0.0,
                },
                &c.thresholds,
            )),
            stderr_tail: Vec::new(),
        }
    }

    fn flat(_: f64) -> f64 {
        30.0 * MIB
    }

    fn buffers(t: f64) -> f64 {
        30.0 * MIB + t * 10.0 * MIB
    }

    #[test]
    fn a_buffering_proxy_in_front_of_a_good_app_is_named() {
        let chain = [
            process("pid 20 (python3)", false, flat),
            process("pid 10 (node)", true, buffers),
        ];
        let (verdict, reason) = verdict_of(&chain).unwrap();
        assert_eq!(verdict, Verdict::Fail);
        assert!(
            reason.starts_with(
                "the proxy in front buffers: +300.0 MiB in pid 10 (node): memory grows steadily"
            ),
            "{reason}"
        );
        assert!(reason.contains("pid 20 (python3): PASS"), "{reason}");
    }

    #[test]
    fn an_app_that_buffers_behind_a_good_proxy_is_named() {
        let chain = [
            process("pid 10 (nginx)", true, flat),
            process("pid 20 (java)", false, buffers),
        ];
        let (verdict, reason) = verdict_of(&chain).unwrap();
        assert_eq!(verdict, Verdict::Fail);
        assert!(
            reason.starts_with("the app behind the proxy buffers: +300.0 MiB in pid 20 (java)"),
            "{reason}"
        );
    }

    #[test]
    fn the_worst_verdict_wins_and_one_process_speaks_for_itself() {
        let one = [process("pid 10 (node)", true, buffers)];
        let (verdict, reason) = verdict_of(&one).unwrap();
        assert_eq!(verdict, Verdict::Fail);
        assert!(reason.starts_with("memory grows steadily"), "{reason}");
        let both_bounded = [
            process("pid 10 (nginx)", true, flat),
            process("pid 20 (java)", false, |t| 30.0 * MIB + t.min(5.0) * MIB),
        ];
        let (verdict, reason) = verdict_of(&both_bounded).unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert!(
            reason.starts_with("every process is bounded; the one that grew most, pid 20 (java)"),
            "{reason}"
        );
        let mut unjudged = process("pid 30 (x)", false, flat);
        unjudged.judgement = None;
        assert_eq!(verdict_of(&[unjudged]), None);
    }

    #[test]
    fn where_the_bytes_live_names_the_process_that_grew() {
        let chain = [
            process("pid 20 (python3)", false, flat),
            process("pid 10 (node)", true, buffers),
        ];
        let memory = MemorySummary {
            first: 60 << 20,
            peak: 400 << 20,
            last: 360 << 20,
            growth_over_window: None,
        };
        let text = where_bytes_live(Some(&memory), None, &chain);
        assert_eq!(
            text,
            "heap +300.0 MiB since the clients connected; most of it in pid 10 (node): \
             +300.0 MiB; kernel socket queues not measured"
        );
    }
}
