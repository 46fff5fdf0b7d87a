//! `weir run` from the outside: real processes, real files and pipes.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn run(args: &[&str]) -> Output {
    weir().args(args).output().expect("weir runs")
}

/// Runs weir with `input` on its stdin (written whole, then closed).
fn run_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = weir()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // weir may stop reading early on an error: a broken pipe here is fine.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sample(dir: &std::path::Path, size: &str) -> std::path::PathBuf {
    let path = dir.join("logs.ndjson");
    let o = run(&["sample", path.to_str().unwrap(), "--size", size]);
    assert!(o.status.success(), "{}", stderr(&o));
    path
}

#[test]
fn file_to_file_through_pass_stages_copies_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample(dir.path(), "3MB");
    let out = dir.path().join("copy");
    let o = run(&[
        "run",
        "--buffer",
        "16KiB",
        &format!("file:{}", input.display()),
        "pass",
        "lines",
        "pass",
        &format!("file:{}", out.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&input).unwrap());
}

#[test]
fn stdin_to_stdout() {
    let mut child = weir()
        .args(["run", "-", "pass", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..10_000 {
            writeln!(stdin, "line {i}").unwrap();
        }
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out.lines().count(), 10_000);
    assert_eq!(out.lines().last(), Some("line 9999"));
}

#[test]
fn stats_json_describes_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample(dir.path(), "1MB");
    let o = run(&[
        "run",
        "--stats-json",
        &format!("file:{}", input.display()),
        "pass",
        "file:/dev/null",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    assert_eq!(stages[1]["name"], "pass");
    assert_eq!(stages[1]["bytes_in"], 1_000_000);
    assert_eq!(stages[2]["bytes_in"], 1_000_000);
    assert!(report["bottleneck"].is_string());
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    for (args, expected) in [
        (vec!["run", "-", "nosuch", "-"], "unknown stage `nosuch`"),
        (vec!["run", "pass", "-"], "is not a source"),
        (vec!["run", "-", "throttle", "-"], "needs a rate"),
        (vec!["run", "--buffer", "lots", "-", "-"], "not a size"),
        (vec!["run", "-"], "required"),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn pipeline_errors_exit_1_and_name_the_stage() {
    let o = run(&["run", "file:/definitely/not/here", "-"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/definitely/not/here"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long");
    std::fs::write(&long, format!("short\n{}\n", "x".repeat(5000))).unwrap();
    let o = run(&[
        "run",
        &format!("file:{}", long.display()),
        "lines:1KiB",
        "-",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("stage `lines:1KiB`"), "{err}");
    assert!(
        err.contains("line 2 is longer than the limit of 1024 bytes"),
        "{err}"
    );
}

#[test]
fn help_lists_every_stage() {
    let o = run(&["run", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for stage in [
        "file:PATH",
        "pass",
        "lines",
        "throttle:RATE",
        "sse-decode",
        "sse-encode",
    ] {
        assert!(help.contains(stage), "--help lacks {stage}");
    }
}

#[test]
fn sse_decode_then_encode_round_trips_through_pipes() {
    let out = run_with_input(&["run", "-", "sse-decode", "-"], b"\xEF\xBB\xBFevent: hi\r\ndata: a\r\ndata: b\r\nid: 7\r\n\r\n: note\ndata: x\n\ndata: unfinished");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        "{\"event\":\"hi\",\"data\":\"a\\nb\",\"id\":\"7\"}\n{\"event\":null,\"data\":\"x\",\"id\":\"7\"}\n"
    );

    let out = run_with_input(&["run", "-", "sse-encode", "-"], text.as_bytes());
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "event: hi\nid: 7\ndata: a\ndata: b\n\nid: 7\ndata: x\n\n"
    );
}

#[test]
fn sse_limits_are_enforced_with_a_clear_error() {
    let mut child = weir()
        .args(["run", "-", "sse-decode:max-line=100", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = format!("data: {}\n\n", "y".repeat(500));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("stage `sse-decode:max-line=100`"), "{err}");
    assert!(err.contains("100"), "{err}");
}

#[test]
fn gzip_output_reads_back_with_system_gunzip_and_weir_gunzip() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample(dir.path(), "5MB");
    let gz = dir.path().join("logs.gz");
    let o = run(&[
        "run",
        &format!("file:{}", input.display()),
        "gzip:6",
        &format!("file:{}", gz.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let original = std::fs::read(&input).unwrap();
    let system = Command::new("gzip").arg("-dc").arg(&gz).output().unwrap();
    assert!(system.status.success());
    assert_eq!(system.stdout, original);
    assert!(std::fs::metadata(&gz).unwrap().len() < original.len() as u64 / 3);

    let o = run(&["run", &format!("file:{}", gz.display()), "gunzip", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, original);
}

#[test]
fn gunzip_refuses_a_bomb_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("zeros.gz");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 50000000 /dev/zero | gzip -9 > {}",
            bomb.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let o = run(&[
        "run",
        &format!("file:{}", bomb.display()),
        "gunzip:ratio=100",
        "file:/dev/null",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("stage `gunzip:ratio=100`"), "{err}");
    assert!(err.contains("exceeds 100x the input"), "{err}");
}

#[test]
fn redact_masks_values_split_across_chunks() {
    let out = run_with_input(
        &["run", "--buffer", "7", "-", "redact:email,card", "-"],
        b"mail jo.smith@example.com, card 4111 1111 1111 1111, not 4111 1111 1111 1112\n",
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "mail [EMAIL], card [CARD], not 4111 1111 1111 1112\n"
    );
    let o = run(&["run", "-", "redact:passport", "-"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("passport"), "{}", stderr(&o));
}
