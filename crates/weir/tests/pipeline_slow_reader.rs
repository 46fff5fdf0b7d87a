//! A reader slower than the file: weir reads the file only as fast as the reader takes
//! bytes (measured from the file's offset in /proc), and its RSS stays small.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const READ_RATE: u64 = 4_000_000;
const WATCH: Duration = Duration::from_secs(4);

/// The offset of the descriptor `pid` holds on `path`.
fn file_offset(pid: u32, path: &Path) -> Option<u64> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if std::fs::read_link(entry.path()).ok()? == path {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                entry.file_name().to_string_lossy()
            ))
            .ok()?;
            let pos = info.lines().find_map(|l| l.strip_prefix("pos:"))?;
            return pos.trim().parse().ok();
        }
    }
    None
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn watch(stages: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("logs.ndjson");
    let made = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["sample", input.to_str().unwrap(), "--size", "96MiB"])
        .status()
        .unwrap();
    assert!(made.success());
    let input = input.canonicalize().unwrap();

    let source = format!("file:{}", input.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .arg(&source)
        .args(stages)
        .arg("-")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let started = Instant::now();
    let (mut received, mut peak_rss, mut widest_gap) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 16 * 1024];
    while started.elapsed() < WATCH {
        let due = Duration::from_secs_f64(received as f64 / READ_RATE as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "weir ended early");
        received += n as u64;
        if let (Some(offset), Some(rss)) = (file_offset(pid, &input), rss_kib(pid)) {
            // Without backpressure the source would race through the whole file.
            widest_gap = widest_gap.max(offset.saturating_sub(received));
            peak_rss = peak_rss.max(rss);
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("{stages:?}: received {received}, widest gap {widest_gap}, peak RSS {peak_rss} KiB");
    assert!(received > 8_000_000, "the reader got {received} bytes");
    // What the source read but the reader has not: the pipeline's buffers (64 KiB per
    // stage), a stage's chunk in hand each, the pipe (64 KiB) and compression in flight.
    assert!(
        widest_gap < 4 * 1024 * 1024,
        "{stages:?}: source ran {widest_gap} bytes ahead of the reader"
    );
    assert!(
        peak_rss > 0 && peak_rss < 32 * 1024,
        "{stages:?}: peak RSS {peak_rss} KiB"
    );
}

#[test]
fn a_slow_reader_holds_the_source_back() {
    watch(&["pass"]);
}
