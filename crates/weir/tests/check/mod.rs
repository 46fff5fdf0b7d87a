//! Helpers shared by the `weir check` tests: the binary, free ports, child processes
//! stopped on drop, and the test servers in this folder.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A child process killed (and reaped) when the test ends, passing or not.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `port` accepts connections (a started server has no other signal).
pub fn wait_for_port(port: u16, what: &str) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test script in tests/check/.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/check")
        .join(name)
}

/// `weir mock-llm` on a free port, endless streams; returns it and its port.
pub fn weir_mock_llm() -> (Guard, u16) {
    let port = free_port();
    let child = Command::new(WEIR)
        .args(["mock-llm", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tokens", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Guard(child);
    wait_for_port(port, "weir mock-llm");
    (guard, port)
}

/// The steady (correct) Python server on a free port, started by the test itself.
pub fn steady_server() -> (Guard, u16) {
    steady_server_args(&[])
}

/// The same, writing `rate` bytes per second per stream into a large send buffer.
pub fn paced_server(rate: u64) -> (Guard, u16) {
    steady_server_args(&[&rate.to_string()])
}

fn steady_server_args(extra: &[&str]) -> (Guard, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .arg(script("steady_server.py"))
        .arg(port.to_string())
        .args(extra)
        .spawn()
        .unwrap();
    let guard = Guard(child);
    wait_for_port(port, "steady_server.py");
    (guard, port)
}

/// Whether `tool` runs (`tool --version`, or `-version` for the JDK's). Without it, a test
/// fails when the environment variable `require` is set (`scripts/test` sets it, having
/// installed the tool), and otherwise prints a SKIP line and returns false.
pub fn have(tool: &str, require: &str, test: &str) -> bool {
    let flag = if tool == "java" {
        "-version"
    } else {
        "--version"
    };
    let runs = Command::new(tool)
        .arg(flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !runs {
        assert!(
            std::env::var_os(require).is_none(),
            "{test}: `{tool}` is required ({require} is set) but does not run"
        );
        eprintln!("\n*** SKIP {test}: no `{tool}` (set {require}=1 to make this a failure) ***\n");
    }
    runs
}

/// The outcome of one `weir check` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `--json` report.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

pub fn weir_check(args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(WEIR)
        .arg("check")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: status.code().expect("weir check was killed by a signal"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}
