//! Real clients through `weir serve`, unchanged: the official OpenAI and Anthropic Python
//! SDKs (`tests/sdk/*_sdk.py`) and a browser's `fetch()` reader in headless Chromium
//! (`tests/sdk/browser.py`), in front of `weir mock-llm`. The scripts compare what comes
//! through weir with what the mock sends directly, and say what they checked.
//!
//! `scripts/test` installs the SDKs and Chromium. Without them these tests fail, unless
//! `WEIR_SKIP_SDK=1` or `WEIR_SKIP_BROWSER=1` says to skip them (loudly).

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The knobs every route's upstream URL carries: 50 tokens, a fixed seed.
const KNOBS: &str = "tokens=50&seed=3";
/// Added on the `/slow` routes: keep-alive comments while the first token is late, then paced tokens.
const SLOW: &str = "ttft_ms=500&rate=200";
/// The `/pii` routes, which redact.
const PII_KNOBS: &str = "tokens=300&pii=7&seed=11";
const REDACT: &str = r#"["email", "phone", "card", "iban", "ipv4", "secret"]"#;
const FAULT_AFTER: u32 = 10;
const CLIENT_KEY: &str = "key-sdk";

const START_DEADLINE: Duration = Duration::from_secs(15);
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);

/// A child process, killed and waited for when dropped.
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, command: &mut Command, dir: &Path) -> Process {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name: name.to_string(),
            child,
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until something listens on `addr`, failing if the process exits first.
    fn wait_listening(&mut self, addr: SocketAddr) {
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}):\n{}", self.name, self.output());
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "{} not listening on {addr} after {START_DEADLINE:?}:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk")
}

/// The routes `tests/sdk/weirenv.py` lists, but for `/pii`.
fn plain_routes() -> Vec<(&'static str, String, String)> {
    vec![
        ("", KNOBS.to_string(), String::new()),
        (
            "/slow",
            format!("{KNOBS}&{SLOW}"),
            "keepalive = \"100ms\"".to_string(),
        ),
        (
            "/reset",
            format!("{KNOBS}&fault=reset&fault_after={FAULT_AFTER}"),
            String::new(),
        ),
        (
            "/error",
            format!("{KNOBS}&fault=error&fault_after={FAULT_AFTER}"),
            String::new(),
        ),
    ]
}

/// The mock upstream and weir in front of it.
struct Stack {
    mock_addr: SocketAddr,
    weir_addr: SocketAddr,
    // Dropped in this order: weir, its upstream, then the folder of their logs.
    _serve: Process,
    _mock: Process,
    dir: tempfile::TempDir,
}

impl Stack {
    /// `routes`: (path prefix, the upstream's query, more lines of the route's table), each
    /// for both protocols.
    fn start(routes: &[(&str, String, String)]) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let weir = env!("CARGO_BIN_EXE_weir");
        let mock_addr = free_addr();
        let mut mock = Process::spawn(
            "mock-llm",
            Command::new(weir).args(["mock-llm", "--listen", &mock_addr.to_string()]),
            dir.path(),
        );
        mock.wait_listening(mock_addr);

        let weir_addr = free_addr();
        let mut config = format!("listen = \"{weir_addr}\"\n");
        for (protocol, path) in [
            ("openai", "/v1/chat/completions"),
            ("anthropic", "/v1/messages"),
        ] {
            for (prefix, query, extra) in routes {
                write!(
                    config,
                    "\n[[route]]\nkind = \"llm_proxy\"\npath = \"{prefix}{path}\"\n\
                     protocol = \"{protocol}\"\nupstream = \"http://{mock_addr}{path}?{query}\"\n\
                     client_keys = [\"{CLIENT_KEY}\"]\n{extra}\n"
                )
                .unwrap();
            }
        }
        let config_path = dir.path().join("weir.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut serve = Process::spawn(
            "weir-serve",
            Command::new(weir).args(["serve", "--config", config_path.to_str().unwrap()]),
            dir.path(),
        );
        serve.wait_listening(weir_addr);
        Stack {
            mock_addr,
            weir_addr,
            _serve: serve,
            _mock: mock,
            dir,
        }
    }

    /// Runs `tests/sdk/SCRIPT` against this stack, `env` added to its environment; panics
    /// with its output unless it exits 0.
    fn run(&self, script: &str, env: &[(&str, String)]) {
        let mut command = Command::new("python3");
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg(script)
            .current_dir(sdk_dir())
            .env("WEIR_URL", format!("http://{}", self.weir_addr))
            .env("MOCK_URL", format!("http://{}", self.mock_addr))
            .env("WEIR_KEY", CLIENT_KEY)
            .env("WEIR_KNOBS", KNOBS)
            .env("WEIR_PII_KNOBS", PII_KNOBS)
            .env("WEIR_FAULT_AFTER", FAULT_AFTER.to_string())
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let mut python = Process::spawn(script, &mut command, self.dir.path());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = python.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < SCRIPT_DEADLINE,
                "{script} still running after {SCRIPT_DEADLINE:?}:\n{}",
                python.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = python.output();
        assert!(status.success(), "{script} failed ({status}):\n{output}");
        eprintln!(
            "{script} passed in {:.1} s:\n{output}",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Whether `probe` runs; if not, a loud skip when `skip_var=1`, else a loud failure.
fn available(probe: &mut Command, skip_var: &str, what: &str) -> bool {
    let ok = probe
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if std::env::var(skip_var).as_deref() == Ok("1") {
        // Straight to stderr, past the test harness's capture, so that it is seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n******** SKIPPED: {what} is missing and {skip_var}=1 ********\n"
        );
        return false;
    }
    panic!(
        "\n******** {what} is missing: scripts/test installs it; \
         set {skip_var}=1 to skip this test ********\n"
    );
}

fn sdks_available() -> bool {
    available(
        // Found, not imported: importing both takes seconds.
        Command::new("python3").args([
            "-c",
            "import importlib.util as u, sys; \
             sys.exit(not all(u.find_spec(m) for m in ('openai', 'anthropic')))",
        ]),
        "WEIR_SKIP_SDK",
        "python3 with the openai and anthropic packages (tests/sdk/requirements.txt)",
    )
}

#[test]
fn openai_sdk_streams_through_weir_unchanged() {
    if sdks_available() {
        Stack::start(&plain_routes()).run("openai_sdk.py", &[]);
    }
}

#[test]
fn anthropic_sdk_streams_through_weir_unchanged() {
    if sdks_available() {
        Stack::start(&plain_routes()).run("anthropic_sdk.py", &[]);
    }
}

#[test]
fn both_sdks_through_a_redacting_route_see_no_planted_pii() {
    if sdks_available() {
        let route = ("/pii", PII_KNOBS.to_string(), format!("redact = {REDACT}"));
        Stack::start(&[route]).run("redact_sdk.py", &[]);
    }
}

#[test]
fn a_browser_fetch_reader_streams_through_weir() {
    let chromium = std::env::var("WEIR_CHROMIUM").unwrap_or_else(|_| "chromium".to_string());
    let python = available(
        Command::new("python3").arg("--version"),
        "WEIR_SKIP_BROWSER",
        "python3",
    );
    if python
        && available(
            Command::new(&chromium).arg("--version"),
            "WEIR_SKIP_BROWSER",
            "Chromium (Debian package chromium)",
        )
    {
        // The page's port is chosen here, so that weir's routes can list its origin.
        let page_addr = free_addr();
        let routes: Vec<_> = plain_routes()
            .into_iter()
            .map(|(prefix, query, extra)| {
                let cors = format!("cors_origins = [\"http://{page_addr}\"]");
                (prefix, query, format!("{extra}\n{cors}"))
            })
            .collect();
        Stack::start(&routes).run(
            "browser.py",
            &[("WEIR_PAGE_PORT", page_addr.port().to_string())],
        );
    }
}
