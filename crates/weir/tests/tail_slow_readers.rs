//! Readers that take nothing cost weir a small buffer each, not a copy of what they have
//! not read: 40 stalled readers of a 64 MB log file, and 40 stalled subscribers of a topic
//! fed 16 MB, leave weir's RSS within a few MiB (measured from /proc).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READERS: usize = 40;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn start(config: &str, dir: &std::path::Path) -> (Serve, std::net::SocketAddr) {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let path = dir.join("weir.toml");
    std::fs::write(&path, format!("listen = \"{addr}\"\n{config}")).expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "weir did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Serve(child), addr)
}

/// Sends `GET path` and reads the head; the body is then left unread.
fn stalled_reader(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: weir\r\naccept: application/x-ndjson\r\n\r\n"
    )
    .expect("request");
    let mut head = [0u8; 256];
    let n = s.read(&mut head).expect("head");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    s
}

/// RSS sampled until it has not grown for 2 s (the readers' queues are full), at most 20 s.
fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut peak, mut since) = (rss_kib(pid), Instant::now());
    while Instant::now() < deadline && since.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
        let now = rss_kib(pid);
        if now > peak {
            peak = now;
            since = Instant::now();
        }
    }
    peak
}

#[test]
fn tail_stalled_readers_cost_a_small_buffer_each() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("app.log");
    let line = format!("{}\n", "x".repeat(99));
    std::fs::write(&log, line.repeat(640_000)).expect("64 MB log");
    let config = format!(
        "[[route]]\nkind = \"file_tail\"\npath = \"/logs\"\nfile = \"{}\"\nbuffer = \"16KiB\"\n",
        log.display()
    );
    let (weir, addr) = start(&config, dir.path());
    let pid = weir.0.id();
    let before = rss_kib(pid);
    let readers: Vec<TcpStream> = (0..READERS)
        .map(|_| stalled_reader(addr, "/logs?from=start"))
        .collect();
    let peak = settled_rss(pid);
    let per_reader = (peak.saturating_sub(before)) / READERS as u64;
    eprintln!("tail: {READERS} stalled readers: RSS {before} -> {peak} KiB, {per_reader} KiB each");
    // Each reader may hold a read (16 KiB) and what hyper holds of it; a copy of the
    // backlog would be 64 MB each.
    assert!(per_reader <= 96, "{per_reader} KiB per stalled reader");
    drop(readers);
}

#[test]
fn topic_stalled_subscribers_cost_their_buffer_each() {
    let dir = tempfile::tempdir().expect("dir");
    let config = "[[route]]\nkind = \"topic\"\npath = \"/t\"\npolicy = \"drop_oldest\"\nbuffer = \"32KiB\"\n";
    let (weir, addr) = start(config, dir.path());
    let pid = weir.0.id();
    let before = rss_kib(pid);
    let subscribers: Vec<TcpStream> = (0..READERS).map(|_| stalled_reader(addr, "/t")).collect();
    let message = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(990));
    let body = message.repeat(16_000);
    let mut publisher = TcpStream::connect(addr).expect("connect");
    write!(
        publisher,
        "POST /t HTTP/1.1\r\nhost: weir\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .expect("head");
    publisher.write_all(body.as_bytes()).expect("body");
    let mut answer = String::new();
    publisher.read_to_string(&mut answer).expect("answer");
    assert!(answer.contains("\"published\":16000"), "{answer}");
    let peak = settled_rss(pid);
    let per_subscriber = (peak.saturating_sub(before)) / READERS as u64;
    eprintln!("topic: {READERS} stalled subscribers: RSS {before} -> {peak} KiB, {per_subscriber} KiB each");
    // 32 KiB queued each plus what hyper holds; 16 MB each if nothing were dropped.
    assert!(
        per_subscriber <= 128,
        "{per_subscriber} KiB per stalled subscriber"
    );
    drop(subscribers);
}
