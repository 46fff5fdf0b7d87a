//! `weir run` from the outside: real processes, real files and pipes.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn run(args: &[&str]) -> Output {
    weir().args(args).output().expect("weir runs")
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
    for stage in ["file:PATH", "pass", "lines", "throttle:RATE"] {
        assert!(help.contains(stage), "--help lacks {stage}");
    }
}
