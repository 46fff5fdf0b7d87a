//! A reader slower than the file: weir reads the file only as fast as the reader takes
//! bytes (measured from the file's offset in /proc), and its anonymous RSS (heap and
//! stacks, where held data would live; the binary's own pages are file-backed) stays small.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WATCH: Duration = Duration::from_secs(4);
const FILE_SIZE: u64 = 96 << 20;

/// What the watch saw.
struct Seen {
    received: u64,
    /// The most the source's file offset was ahead of the bytes the reader received.
    widest_gap: u64,
    last_offset: u64,
    peak_anon_kib: u64,
}

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

/// One `kB` line of /proc/`pid`/status.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(field))?;
    line.split_whitespace().next()?.parse().ok()
}

fn watch(stages: &[&str], read_rate: u64) -> Seen {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("logs.ndjson");
    let made = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "sample",
            input.to_str().unwrap(),
            "--size",
            &FILE_SIZE.to_string(),
        ])
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
    let (mut received, mut peak_anon, mut widest_gap, mut last_offset) = (0u64, 0u64, 0u64, 0);
    let mut buf = vec![0u8; 16 * 1024];
    while started.elapsed() < WATCH {
        let due = Duration::from_secs_f64(received as f64 / read_rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "weir ended early");
        received += n as u64;
        if let (Some(offset), Some(anon)) = (file_offset(pid, &input), status_kib(pid, "RssAnon:"))
        {
            // Without backpressure the source would race through the whole file.
            widest_gap = widest_gap.max(offset.saturating_sub(received));
            last_offset = offset;
            peak_anon = peak_anon.max(anon);
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("{stages:?}: received {received}, widest gap {widest_gap}, last offset {last_offset}, peak anonymous RSS {peak_anon} KiB");
    assert!(
        peak_anon > 0 && peak_anon < 16 * 1024,
        "{stages:?}: peak anonymous RSS {peak_anon} KiB"
    );
    Seen {
        received,
        widest_gap,
        last_offset,
        peak_anon_kib: peak_anon,
    }
}

#[test]
fn a_slow_reader_holds_the_source_back() {
    let seen = watch(&["pass"], 4_000_000);
    assert!(
        seen.received > 8_000_000,
        "the reader got {} bytes",
        seen.received
    );
    // The pipeline's buffers (64 KiB before each stage), the chunk each stage holds and
    // the pipe (64 KiB): about 448 KiB. Without backpressure it would be the whole file.
    assert!(
        seen.widest_gap < 1 << 20,
        "source ran {} bytes ahead",
        seen.widest_gap
    );
    // About 3 MiB is seen; without backpressure the heap would hold the 96 MiB file.
    assert!(
        seen.peak_anon_kib < 8 * 1024,
        "peak anonymous RSS {} KiB",
        seen.peak_anon_kib
    );
}

#[test]
fn a_slow_reader_holds_the_source_back_through_gzip() {
    let seen = watch(&["gzip:1"], 500_000);
    assert!(
        seen.received > 1_000_000,
        "the reader got {} bytes",
        seen.received
    );
    // 2 MB of gzip:1 output is about 10 MB of these logs; compression in flight adds
    // about 1 MiB. Unchecked, gzip alone would have read the whole 96 MiB by now.
    assert!(
        seen.last_offset < FILE_SIZE / 4,
        "source at {} of {FILE_SIZE}",
        seen.last_offset
    );
}
