//! What a check found: the verdict and its reason, the fit, memory in the heap and in
//! the kernel, what the clients saw, every sample; as a table for people and JSON for
//! machines.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::client::ClientEnd;
use crate::fit::{LineFit, Thresholds};
use crate::judge::Judgement;

/// The lines of a passing server's stderr the table shows.
const PASS_TAIL: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Memory levelled off under slow clients: backpressure propagates.
    Pass,
    /// Memory grew steadily: the server buffers what the clients do not take.
    Fail,
    /// The run could not tell (the clients could not load the server, the kernel's
    /// queues never settled, memory moved without a trend).
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Inconclusive => "INCONCLUSIVE",
        })
    }
}

impl Verdict {
    /// The process exit code: 0 PASS, 1 FAIL, 3 INCONCLUSIVE (2 is a usage error).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Inconclusive => 3,
        }
    }
}

/// One reading, taken every `--interval`.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the clients started.
    pub t: f64,
    /// Resident bytes of the target: all its processes, each counted once.
    pub rss: u64,
    /// Each process (and its children), in the order of `Report::processes`.
    pub processes: Vec<ProcessSample>,
    /// Bytes in the target's socket send queues (with `--pid` / `--spawn`).
    pub queued_send: Option<u64>,
    /// Bytes in the target's socket receive queues.
    pub queued_recv: Option<u64>,
    /// Clients streaming at that moment.
    pub streaming: u64,
    /// Body bytes all clients had received.
    pub received: u64,
}

/// One process's part of a sample.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProcessSample {
    pub rss: u64,
    /// Bytes in its sockets' send and receive queues.
    pub queued: Option<u64>,
}

impl Sample {
    pub fn queued(&self) -> Option<u64> {
        Some(self.queued_send? + self.queued_recv?)
    }
}

/// The part of the run the verdict is about.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Window {
    pub warmup_s: f64,
    /// When the target's socket queues stopped growing (`None`: never, or not measured).
    pub queues_settled_s: Option<f64>,
    /// The steady-state window; `None` when the run never reached one.
    pub start_s: Option<f64>,
    pub end_s: f64,
}

/// One process of the target (`--pid`, `--spawn`), or the metrics endpoint, judged alone.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessSummary {
    /// `pid 123 (nginx)`, or `metrics URL`.
    pub label: String,
    pub pid: Option<u32>,
    /// The command it was started with (`--spawn`).
    pub command: Option<String>,
    /// It listens on the URL's port: the process the clients connect to.
    pub front: bool,
    pub peak: u64,
    /// The verdict on its memory; `None` when the run could not be judged at all.
    pub judgement: Option<Judgement>,
    /// The last lines it wrote to stderr (`--spawn`).
    pub stderr_tail: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemorySummary {
    pub first: u64,
    pub peak: u64,
    pub last: u64,
    /// Fitted growth from the start to the end of the steady-state window.
    pub growth_over_window: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelSummary {
    pub send_last: u64,
    pub recv_last: u64,
    pub peak: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LimitProjection {
    pub bytes: u64,
    /// `--limit` or `cgroup`.
    pub source: String,
    /// At the fitted slope, from the last sample; `None` when memory is not growing.
    pub seconds_to_limit: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientSummary {
    pub requested: usize,
    pub streaming_at_end: usize,
    pub ended_early: usize,
    /// Responses by status code, for those that were not 2xx.
    pub http_errors: BTreeMap<u16, usize>,
    /// Other failures, by message.
    pub errors: BTreeMap<String, usize>,
    pub bytes_total: u64,
    pub bytes_per_client_min: u64,
    pub bytes_per_client_median: u64,
    pub bytes_per_client_max: u64,
}

impl ClientSummary {
    pub fn of(ends: &[ClientEnd]) -> ClientSummary {
        let mut summary = ClientSummary {
            requested: ends.len(),
            ..ClientSummary::default()
        };
        for end in ends {
            match end {
                ClientEnd::Streaming { .. } => summary.streaming_at_end += 1,
                ClientEnd::EndedEarly { .. } => summary.ended_early += 1,
                ClientEnd::Status { code } => *summary.http_errors.entry(*code).or_default() += 1,
                ClientEnd::Failed { error } => {
                    *summary.errors.entry(error.clone()).or_default() += 1
                }
            }
        }
        let mut bytes: Vec<u64> = ends.iter().map(ClientEnd::bytes).collect();
        bytes.sort_unstable();
        summary.bytes_total = bytes.iter().sum();
        summary.bytes_per_client_min = bytes.first().copied().unwrap_or(0);
        summary.bytes_per_client_median = bytes.get(bytes.len() / 2).copied().unwrap_or(0);
        summary.bytes_per_client_max = bytes.last().copied().unwrap_or(0);
        summary
    }

    /// Why these clients did not load the server, in one sentence; empty if they all did.
    pub fn trouble(&self) -> String {
        let mut parts = Vec::new();
        if self.ended_early > 0 {
            parts.push(format!("{} streams ended early", self.ended_early));
        }
        for (code, n) in &self.http_errors {
            parts.push(format!("{n} got HTTP {code}"));
        }
        for (error, n) in &self.errors {
            parts.push(format!("{n} failed: {error}"));
        }
        parts.join("; ")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub reason: String,
    pub url: String,
    /// `pid N`, `spawn: COMMAND` or `metrics URL`.
    pub memory_source: String,
    pub window: Window,
    /// The fit of memory over the steady-state window.
    pub fit: Option<LineFit>,
    pub thresholds: Thresholds,
    pub memory: Option<MemorySummary>,
    pub kernel: Option<KernelSummary>,
    /// Where the memory the slow clients cost lives: the heap or the kernel's queues, and
    /// which process.
    pub where_bytes_live: String,
    /// Each process measured, judged alone; the verdict is the worst of theirs.
    pub processes: Vec<ProcessSummary>,
    pub limit: Option<LimitProjection>,
    pub clients: ClientSummary,
    pub samples: Vec<Sample>,
}

/// `12.3 MiB`, for people.
pub fn human_bytes(bytes: f64) -> String {
    let magnitude = bytes.abs();
    if magnitude >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
    } else if magnitude >= (1 << 20) as f64 {
        format!("{:.1} MiB", bytes / (1 << 20) as f64)
    } else if magnitude >= 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

impl Report {
    /// The summary people read at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, key: &str, value: String| {
            let _ = writeln!(out, "  {key:<22} {value}");
        };
        let _ = writeln!(out, "weir check {}", self.url);
        row(&mut out, "memory from", self.memory_source.clone());
        let c = &self.clients;
        row(
            &mut out,
            "clients",
            format!(
                "{} requested, {} streaming at the end, {} ended early, {} HTTP errors, {} failed",
                c.requested,
                c.streaming_at_end,
                c.ended_early,
                c.http_errors.values().sum::<usize>(),
                c.errors.values().sum::<usize>()
            ),
        );
        row(
            &mut out,
            "bytes per client",
            format!(
                "min {}, median {}, max {} ({} in all)",
                human_bytes(c.bytes_per_client_min as f64),
                human_bytes(c.bytes_per_client_median as f64),
                human_bytes(c.bytes_per_client_max as f64),
                human_bytes(c.bytes_total as f64)
            ),
        );
        let w = &self.window;
        let settled = match w.queues_settled_s {
            Some(t) => format!("queues settled at {t:.0} s"),
            None if self.kernel.is_some() => "queues never settled".into(),
            None => "queues not measured".into(),
        };
        let window = match w.start_s {
            Some(start) => format!("{start:.0} s to {:.0} s", w.end_s),
            None => format!("none (run ended at {:.0} s)", w.end_s),
        };
        row(
            &mut out,
            "steady-state window",
            format!("{window} (warm-up {:.0} s, {settled})", w.warmup_s),
        );
        if let Some(m) = &self.memory {
            row(
                &mut out,
                "RSS",
                format!(
                    "first {}, peak {}, last {}",
                    human_bytes(m.first as f64),
                    human_bytes(m.peak as f64),
                    human_bytes(m.last as f64)
                ),
            );
            if let Some(growth) = m.growth_over_window {
                row(&mut out, "growth over window", human_bytes(growth as f64));
            }
        }
        if let Some(fit) = &self.fit {
            row(
                &mut out,
                "slope",
                format!(
                    "{:+.1} KB/s (R² {:.2}; threshold {:.1} KB/s, R² {:.2})",
                    fit.slope / 1000.0,
                    fit.r2,
                    self.thresholds.max_slope / 1000.0,
                    self.thresholds.min_r2
                ),
            );
        }
        for process in &self.processes {
            let Some(j) = &process.judgement else {
                continue;
            };
            let growth = match (j.growth, j.per_client) {
                (Some(g), Some(c)) => {
                    let beyond = if j.kernel_share > 0.0 {
                        format!(" beyond {} in its sockets", human_bytes(j.kernel_share))
                    } else {
                        String::new()
                    };
                    format!(
                        "{} since the clients connected ({} per slow client{beyond}; at most {})",
                        signed_bytes(g),
                        signed_bytes(c),
                        human_bytes(self.thresholds.max_per_client)
                    )
                }
                _ => "no steady-state level".into(),
            };
            let front = if process.front { ", in front" } else { "" };
            row(
                &mut out,
                &process.label,
                format!(
                    "{}{front}: {growth}, peak {}",
                    j.verdict,
                    human_bytes(process.peak as f64)
                ),
            );
        }
        if let Some(k) = &self.kernel {
            row(
                &mut out,
                "kernel socket queues",
                format!(
                    "send {}, receive {} at the end (peak {})",
                    human_bytes(k.send_last as f64),
                    human_bytes(k.recv_last as f64),
                    human_bytes(k.peak as f64)
                ),
            );
        }
        row(
            &mut out,
            "where the bytes live",
            self.where_bytes_live.clone(),
        );
        if let Some(limit) = &self.limit {
            let eta = match limit.seconds_to_limit {
                Some(s) => format!("reached in {}", human_seconds(s)),
                None => "not approached".into(),
            };
            row(
                &mut out,
                "memory limit",
                format!(
                    "{} ({}): {eta}",
                    human_bytes(limit.bytes as f64),
                    limit.source
                ),
            );
        }
        for process in &self.processes {
            // A bounded server's log is rarely evidence: its last few lines, the rest in --json.
            let passed = process
                .judgement
                .as_ref()
                .is_some_and(|j| j.verdict == Verdict::Pass);
            let shown = if passed { PASS_TAIL } else { usize::MAX };
            let tail = &process.stderr_tail;
            if tail.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  stderr of {}, last lines:", process.label);
            for line in &tail[tail.len().saturating_sub(shown)..] {
                let _ = writeln!(out, "    | {line}");
            }
        }
        let _ = writeln!(out, "{}: {}", self.verdict, self.reason);
        out
    }
}

/// `+12.3 MiB` or `-1.0 KiB`.
pub fn signed_bytes(bytes: f64) -> String {
    if bytes >= 0.0 {
        format!("+{}", human_bytes(bytes))
    } else {
        human_bytes(bytes)
    }
}

fn human_seconds(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_summarised_by_how_they_ended() {
        let ends = vec![
            ClientEnd::Streaming { bytes: 100 },
            ClientEnd::Streaming { bytes: 300 },
            ClientEnd::EndedEarly {
                bytes: 50,
                after_ms: 10,
            },
            ClientEnd::Status { code: 404 },
            ClientEnd::Failed {
                error: "refused".into(),
            },
            ClientEnd::Failed {
                error: "refused".into(),
            },
        ];
        let s = ClientSummary::of(&ends);
        assert_eq!(s.streaming_at_end, 2);
        assert_eq!(s.ended_early, 1);
        assert_eq!(s.http_errors.get(&404), Some(&1));
        assert_eq!(s.errors.get("refused"), Some(&2));
        assert_eq!(s.bytes_total, 450);
        assert_eq!(
            (
                s.bytes_per_client_min,
                s.bytes_per_client_median,
                s.bytes_per_client_max
            ),
            (0, 50, 300)
        );
        assert_eq!(
            s.trouble(),
            "1 streams ended early; 1 got HTTP 404; 2 failed: refused"
        );
    }

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(-3.0 * 1048576.0), "-3.0 MiB");
        assert_eq!(human_bytes(1.4 * 1073741824.0), "1.40 GiB");
    }

    fn report_with(processes: Vec<ProcessSummary>) -> Report {
        Report {
            verdict: Verdict::Fail,
            reason: "the proxy in front buffers".into(),
            url: "http://127.0.0.1:1/".into(),
            memory_source: "pid 1; pid 2".into(),
            window: Window {
                warmup_s: 10.0,
                queues_settled_s: None,
                start_s: Some(10.0),
                end_s: 30.0,
            },
            fit: None,
            thresholds: Thresholds {
                max_slope: 16_000.0,
                min_r2: 0.5,
                max_per_client: 2.0 * 1048576.0,
            },
            memory: None,
            kernel: None,
            where_bytes_live: String::new(),
            processes,
            limit: None,
            clients: ClientSummary::default(),
            samples: Vec::new(),
        }
    }

    fn process(label: &str, verdict: Verdict, front: bool, lines: usize) -> ProcessSummary {
        let points: Vec<(f64, f64)> = (0..=30).map(|i| (i as f64, 1e7)).collect();
        let rule = report_with(Vec::new()).thresholds;
        let load = crate::judge::Load {
            clients: 10,
            kernel_share: 0.0,
        };
        let mut judgement = crate::judge::judge(&points, 10.0, 30.0, load, &rule);
        judgement.verdict = verdict;
        ProcessSummary {
            label: label.into(),
            pid: Some(1),
            command: None,
            front,
            peak: 1 << 20,
            judgement: Some(judgement),
            stderr_tail: (1..=lines).map(|i| format!("line {i}")).collect(),
        }
    }

    #[test]
    fn the_table_has_a_row_per_process_and_their_stderr() {
        let table = report_with(vec![
            process("pid 2 (java)", Verdict::Pass, false, 12),
            process("pid 1 (node)", Verdict::Fail, true, 12),
        ])
        .table();
        assert!(
            table.contains("  pid 2 (java)           PASS: +0 B since the clients connected (+0 B per slow client; at most 2.0 MiB), peak 1.0 MiB"),
            "{table}"
        );
        assert!(
            table.contains("  pid 1 (node)           FAIL, in front: +0 B"),
            "{table}"
        );
        // All of a failing server's last lines, a passing one's last three.
        let java = table.split("stderr of pid 2 (java)").nth(1).unwrap();
        let java = java.split("stderr of").next().unwrap();
        assert_eq!(java.matches("    | line").count(), 3, "{table}");
        assert!(
            java.contains("| line 10\n") && java.contains("| line 12\n"),
            "{table}"
        );
        let node = table.split("stderr of pid 1 (node)").nth(1).unwrap();
        assert_eq!(node.matches("    | line").count(), 12, "{table}");
        assert!(
            table.ends_with("FAIL: the proxy in front buffers\n"),
            "{table}"
        );
    }
}
