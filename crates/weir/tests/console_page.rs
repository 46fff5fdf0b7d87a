//! The console as its users see it, against a real `weir serve` on loopback: the page in a
//! real headless Chromium driven by Selenium (`tests/console/page.py`), and `weir top` in a
//! real tmux. Both must show an export whose client stopped reading, and mark the
//! export's `client` stage as the bottleneck.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);
const EXPORT: &str = "/export/orders";
const TOPIC: &str = "/topics/ticks";

/// A child process, stopped by its pid when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A GET on loopback; the status and body, or `None` if nothing answers yet.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nhost: weir\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text))
}

/// `weir serve` with an export of 300,000 rows and a topic (and `extra` at the top level),
/// answering `/healthz`.
fn serve(dir: &Path, extra: &str) -> (Running, SocketAddr) {
    let db = dir.join("orders.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000)
         INSERT INTO orders SELECT i, 'customer-' || (i % 977), i * 0.25 FROM n;",
    )
    .unwrap();
    drop(conn);
    let addr = free_addr();
    let config = dir.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\nsend_buffer = \"16KiB\"\n{extra}\n\
             [[route]]\nkind = \"sql_export\"\npath = \"{EXPORT}\"\n\
             database = \"sqlite://{}\"\nquery = \"SELECT id, customer, amount FROM orders ORDER BY id\"\n\
             formats = [\"csv\"]\n\
             [[route]]\nkind = \"topic\"\npath = \"{TOPIC}\"\nbuffer = \"8KiB\"\npolicy = \"drop_oldest\"\n",
            db.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start weir serve");
    let running = Running(child);
    let started = Instant::now();
    while get(addr, "/healthz").is_none_or(|(s, _)| s != 200) {
        assert!(started.elapsed() < DEADLINE, "weir serve did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    (running, addr)
}

fn available(probe: &mut Command, what: &str) -> bool {
    let ok = probe
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if std::env::var("WEIR_SKIP_BROWSER").as_deref() == Ok("1") {
        let _ = writeln!(
            std::io::stderr(),
            "\n******** SKIPPED: {what} is missing and WEIR_SKIP_BROWSER=1 ********\n"
        );
        return false;
    }
    panic!(
        "\n******** {what} is missing: scripts/test installs it; \
         set WEIR_SKIP_BROWSER=1 to skip this test ********\n"
    );
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn console_page_in_chromium_shows_a_new_stream_and_marks_its_bottleneck() {
    let ready = available(
        Command::new("python3").args(["-c", "import selenium"]),
        "Selenium (pip install selenium)",
    ) && available(
        Command::new("chromedriver").arg("--version"),
        "chromedriver (Debian package chromium-driver)",
    );
    if !ready {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_weir, addr) = serve(dir.path(), "");
    let mut script = Command::new("python3");
    script
        .arg(repo().join("tests/console/page.py"))
        .env("WEIR_URL", format!("http://{addr}"))
        .env("WEIR_EXPORT_PATH", EXPORT)
        .env("WEIR_TOPIC_PATH", TOPIC)
        .stdin(Stdio::null());
    let status = script.status().expect("run tests/console/page.py");
    assert!(status.success(), "tests/console/page.py failed: {status}");
}

#[test]
fn console_page_with_admin_keys_asks_for_one_and_shows_nothing_without_it() {
    let ready = available(
        Command::new("python3").args(["-c", "import selenium"]),
        "Selenium (pip install selenium)",
    ) && available(
        Command::new("chromedriver").arg("--version"),
        "chromedriver (Debian package chromium-driver)",
    );
    if !ready {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_weir, addr) = serve(dir.path(), "admin_keys = [\"adm-1\"]");
    let status = Command::new("python3")
        .arg(repo().join("tests/console/page.py"))
        .env("WEIR_URL", format!("http://{addr}"))
        .env("WEIR_EXPORT_PATH", EXPORT)
        .env("WEIR_TOPIC_PATH", TOPIC)
        .env("WEIR_ADMIN_KEY", "adm-1")
        .stdin(Stdio::null())
        .status()
        .expect("run tests/console/page.py");
    assert!(status.success(), "tests/console/page.py failed: {status}");
}

/// `tmux` on a server of this test's own, stopped when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[test]
fn console_top_in_tmux_shows_the_stream_and_quits_on_q() {
    if !available(Command::new("tmux").arg("-V"), "tmux (Debian package tmux)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_weir, addr) = serve(dir.path(), "");
    // An export whose client never reads: its stream stays open, its `client` stage waits.
    let mut stalled = TcpStream::connect(addr).unwrap();
    write!(stalled, "GET {EXPORT} HTTP/1.1\r\nhost: weir\r\n\r\n").unwrap();
    let tmux = Tmux {
        socket: format!("weir-console-{}", std::process::id()),
    };
    let top = format!(
        "{} top --url http://{addr}",
        Path::new(env!("CARGO_BIN_EXE_weir")).display()
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        &top,
    ]);
    assert!(started.status.success(), "{started:?}");
    let began = Instant::now();
    let mut screen = String::new();
    // The first look judges by the whole run so far; the next ones by the last second.
    let marked = |screen: &str| {
        screen
            .lines()
            .any(|l| l.contains("<- bottleneck") && l.contains("client"))
    };
    while !(screen.contains(EXPORT) && marked(&screen)) {
        assert!(
            began.elapsed() < DEADLINE,
            "weir top did not show the export and its bottleneck:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
        screen = tmux.screen();
    }
    let client_line = screen
        .lines()
        .find(|l| l.contains(EXPORT) && l.contains("sql_export"))
        .unwrap_or_else(|| panic!("no stream row for the export:\n{screen}"));
    assert!(client_line.contains("127.0.0.1:"), "{client_line}");
    assert!(screen.contains("memory budget"), "{screen}");

    assert!(tmux.run(&["send-keys", "-t", "top", "s"]).status.success());
    let toggled = Instant::now();
    while !tmux.screen().contains("(now rate)") {
        assert!(
            toggled.elapsed() < DEADLINE,
            "s did not sort by rate:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(sent.status.success());
    let quit = Instant::now();
    while tmux.run(&["has-session", "-t", "top"]).status.success() {
        assert!(
            quit.elapsed() < DEADLINE,
            "weir top still runs after q:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stalled);
}

#[test]
fn console_top_in_tmux_with_a_wrong_key_shows_401_and_with_the_right_one_the_streams() {
    if !available(Command::new("tmux").arg("-V"), "tmux (Debian package tmux)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_weir, addr) = serve(dir.path(), "admin_keys = [\"adm-1\"]");
    let mut stalled = TcpStream::connect(addr).unwrap();
    write!(stalled, "GET {EXPORT} HTTP/1.1\r\nhost: weir\r\n\r\n").unwrap();
    let weir = Path::new(env!("CARGO_BIN_EXE_weir")).display().to_string();
    for (key, expect) in [("wrong", "401"), ("adm-1", EXPORT)] {
        let tmux = Tmux {
            socket: format!("weir-console-key-{key}-{}", std::process::id()),
        };
        let top = format!("{weir} top --url http://{addr} --key {key}");
        let started = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "40",
            &top,
        ]);
        assert!(started.status.success(), "{started:?}");
        let began = Instant::now();
        let mut screen = String::new();
        while !screen.contains(expect) {
            assert!(
                began.elapsed() < DEADLINE,
                "--key {key}: no {expect} on the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
            screen = tmux.screen();
        }
        if key == "wrong" {
            assert!(screen.contains("admin key"), "{screen}");
            assert!(
                !screen.contains(EXPORT),
                "a stream shown without the key:\n{screen}"
            );
        }
        assert!(tmux.run(&["send-keys", "-t", "top", "q"]).status.success());
        let quit = Instant::now();
        while tmux.run(&["has-session", "-t", "top"]).status.success() {
            assert!(quit.elapsed() < DEADLINE, "weir top still runs after q");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(stalled);
}
