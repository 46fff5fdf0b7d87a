//! Where the target's memory is read from: the resident set of a process and its
//! descendants in /proc, or a Prometheus `process_resident_memory_bytes` gauge.

use std::collections::HashMap;
use std::time::Duration;

use crate::CheckError;

/// The largest metrics page read; a gauge page is a few KiB.
const MAX_METRICS_BYTES: usize = 4 << 20;
const GAUGE: &str = "process_resident_memory_bytes";

/// One scrape of the metrics endpoint that gave no sample, naming the URL.
#[derive(Debug, thiserror::Error)]
#[error("metrics {url}: {problem}")]
pub struct ScrapeError {
    pub url: String,
    pub problem: ScrapeProblem,
}

/// What went wrong with one scrape.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeProblem {
    #[error("{0}")]
    Request(reqwest::Error),
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("page larger than {MAX_METRICS_BYTES} bytes")]
    TooLarge,
    #[error("no `{GAUGE}` sample on the page")]
    NoGauge,
}

/// Reads a Prometheus endpoint's `process_resident_memory_bytes`, one sample at a time.
pub struct MetricsSampler {
    client: reqwest::Client,
    url: String,
}

impl MetricsSampler {
    pub fn new(url: &str, timeout: Duration) -> Result<MetricsSampler, CheckError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| CheckError::Setup(format!("cannot build the metrics client: {e}")))?;
        Ok(MetricsSampler {
            client,
            url: url.to_string(),
        })
    }

    /// Resident bytes now, or why the endpoint gave none.
    pub async fn sample(&self) -> Result<u64, ScrapeError> {
        scrape(&self.client, &self.url)
            .await
            .map_err(|problem| ScrapeError {
                url: self.url.clone(),
                problem,
            })
    }
}

/// `root` and its descendants, from the parent pid of every process in /proc.
pub fn process_tree(root: u32) -> Vec<u32> {
    process_trees(&[root]).pop().unwrap_or_default()
}

/// The tree of each of `roots`, from one reading of /proc.
pub fn process_trees(roots: &[u32]) -> Vec<Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(parent) = parent_pid(pid) {
                children.entry(parent).or_default().push(pid);
            }
        }
    }
    roots
        .iter()
        .map(|&root| {
            let mut tree = vec![root];
            let mut next = 0;
            while next < tree.len() {
                if let Some(kids) = children.get(&tree[next]) {
                    tree.extend(kids);
                }
                next += 1;
            }
            tree
        })
        .collect()
}

/// The tree of each of `roots`, less the trees of the other roots inside it: a process
/// given on its own (`--pid` of a server and of its parent) is counted as itself, not as
/// its parent's child too.
pub fn own_trees(roots: &[u32]) -> Vec<Vec<u32>> {
    let trees = process_trees(roots);
    trees
        .iter()
        .enumerate()
        .map(|(i, tree)| {
            let nested: Vec<&Vec<u32>> = trees
                .iter()
                .enumerate()
                .filter(|&(j, other)| j != i && other[0] != tree[0] && tree.contains(&other[0]))
                .map(|(_, other)| other)
                .collect();
            tree.iter()
                .copied()
                .filter(|pid| !nested.iter().any(|other| other.contains(pid)))
                .collect()
        })
        .collect()
}

/// The resident bytes of each tree (its root must be alive: `Err(root)` names the first
/// that has exited) and of all of them together, a process in two trees counted once.
pub fn trees_rss(trees: &[Vec<u32>]) -> Result<(Vec<u64>, u64), u32> {
    let mut seen = std::collections::HashSet::new();
    let mut each = Vec::with_capacity(trees.len());
    let mut total = 0;
    for tree in trees {
        let Some((&root, descendants)) = tree.split_first() else {
            continue;
        };
        let root_rss = process_rss(root).ok_or(root)?;
        let mut sum = root_rss;
        if seen.insert(root) {
            total += root_rss;
        }
        for &pid in descendants {
            if let Some(rss) = process_rss(pid) {
                sum += rss;
                if seen.insert(pid) {
                    total += rss;
                }
            }
        }
        each.push(sum);
    }
    Ok((each, total))
}

/// The command name of `pid` (/proc/PID/comm), e.g. `nginx`.
pub fn process_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_string()).filter(|c| !c.is_empty())
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat, counted after the command name
/// (which may hold spaces and parentheses itself).
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(n - 3)?.parse().ok()
}

fn parent_pid(pid: u32) -> Option<u32> {
    stat_field(pid, 4).and_then(|p| u32::try_from(p).ok())
}

/// When `pid` started, in clock ticks after boot: with the pid, names one process even
/// if the pid is reused later.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 22)
}

/// VmRSS of one process, in bytes; `None` once it has exited (or for a kernel thread).
pub fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn scrape(client: &reqwest::Client, url: &str) -> Result<u64, ScrapeProblem> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(ScrapeProblem::Request)?;
    if !response.status().is_success() {
        return Err(ScrapeProblem::Status(response.status()));
    }
    let mut page = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ScrapeProblem::Request)? {
        if page.len() + chunk.len() > MAX_METRICS_BYTES {
            return Err(ScrapeProblem::TooLarge);
        }
        page.extend_from_slice(&chunk);
    }
    gauge_value(&String::from_utf8_lossy(&page)).ok_or(ScrapeProblem::NoGauge)
}

/// The value of the first `process_resident_memory_bytes` sample in a Prometheus text page.
fn gauge_value(page: &str) -> Option<u64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(GAUGE)?;
        let rest = match rest.strip_prefix('{') {
            Some(labels) => &labels[labels.find('}')? + 1..],
            None if rest.starts_with([' ', '\t']) => rest,
            None => return None,
        };
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value as u64)
    })
}

/// The memory limit of the cgroup (v2) `pid` runs in, if one is set.
pub fn cgroup_limit(pid: u32) -> Option<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()?;
    max.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_is_found_with_or_without_labels() {
        let page = "# HELP process_resident_memory_bytes Resident memory.\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes_total 1\n\
                    process_resident_memory_bytes 1.2345e7\n";
        assert_eq!(gauge_value(page), Some(12_345_000));
        let labelled = "process_resident_memory_bytes{job=\"api\"} 4096 1700000000\n";
        assert_eq!(gauge_value(labelled), Some(4096));
        assert_eq!(gauge_value("up 1\n"), None);
        assert_eq!(gauge_value("process_resident_memory_bytes NaN\n"), None);
    }

    #[test]
    fn our_own_tree_includes_a_child_and_its_rss() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let tree = process_tree(me);
        let found = tree.contains(&child.id());
        let own = process_rss(me).unwrap();
        let (each, total) = trees_rss(&[tree.clone(), vec![child.id()]]).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "child {} not in {tree:?}", child.id());
        assert!(own > 0 && each[0] > own, "own {own}, tree {each:?}");
        // The child is in both trees and counted once in the total.
        assert_eq!(total, each[0], "{each:?}");
        assert_eq!(
            process_name(me).as_deref().map(|n| !n.is_empty()),
            Some(true)
        );
    }

    #[test]
    fn start_times_tell_processes_apart() {
        let me = std::process::id();
        let mine = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(mine));
        assert_eq!(parent_pid(me), Some(std::os::unix::process::parent_id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(start_time(pid), None);
    }

    #[test]
    fn an_exited_process_has_no_rss() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(trees_rss(&[vec![pid]]), Err(pid));
        assert_eq!(process_name(pid), None);
    }
}
