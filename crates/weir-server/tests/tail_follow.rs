//! `file_tail` routes over real HTTP: new lines as they are written, `from=start`,
//! `lines=N`, `grep`, resume by `Last-Event-ID` with no gap and no repeat, and rotation both
//! ways (rename + new file, truncation) with every line seen exactly once, in order.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use weir_server::serve::{RunningServer, ServeConfig, Server};

async fn serve(file: &Path) -> RunningServer {
    let toml = format!(
        "[[route]]\nkind = \"file_tail\"\npath = \"/logs/app\"\nfile = \"{}\"\nkeepalive = \"1s\"\n",
        file.display()
    );
    let config = ServeConfig::parse(&toml).expect("test config");
    Server::new(config)
        .expect("server")
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind")
}

/// An SSE stream read event by event.
struct Events {
    response: reqwest::Response,
    pending: String,
}

impl Events {
    async fn open(url: &str, last_event_id: Option<&str>) -> Events {
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("GET");
        assert_eq!(response.status(), 200);
        Events {
            response,
            pending: String::new(),
        }
    }

    /// The next `(id, data)`, skipping keep-alives; panics after 10 s.
    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let event: String = self.pending.drain(..end + 2).collect();
                let mut id = String::new();
                let mut data = None;
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(v.to_string());
                    }
                }
                if let Some(data) = data {
                    return (id, data);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("an event within 10 s")
                .expect("read")
                .expect("the stream goes on");
            self.pending.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn data(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.next().await.1);
        }
        out
    }
}

fn append(path: &Path, lines: std::ops::Range<u32>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    for i in lines {
        writeln!(f, "line {i}").expect("write");
    }
}

fn names(lines: std::ops::Range<u32>) -> Vec<String> {
    lines.map(|i| format!("line {i}")).collect()
}

#[tokio::test]
async fn tail_sends_new_lines_and_from_start_the_whole_file() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("app.log");
    append(&file, 0..3);
    let server = serve(&file).await;
    let mut new_only = Events::open(&server.url("/logs/app"), None).await;
    let mut whole = Events::open(&server.url("/logs/app?from=start"), None).await;
    append(&file, 3..5);
    assert_eq!(new_only.data(2).await, names(3..5));
    assert_eq!(whole.data(5).await, names(0..5));
    let mut last = Events::open(&server.url("/logs/app?lines=2"), None).await;
    assert_eq!(last.data(2).await, names(3..5));
    let mut grep = Events::open(&server.url("/logs/app?from=start&grep=line%201"), None).await;
    append(&file, 5..12);
    assert_eq!(grep.data(3).await, vec!["line 1", "line 10", "line 11"]);
}

#[tokio::test]
async fn tail_resumes_after_the_last_event_id_with_no_gap_and_no_repeat() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("app.log");
    append(&file, 0..50);
    let server = serve(&file).await;
    let mut first = Events::open(&server.url("/logs/app?from=start"), None).await;
    let mut id = String::new();
    for i in 0..20 {
        let (got_id, data) = first.next().await;
        assert_eq!(data, format!("line {i}"));
        id = got_id;
    }
    drop(first);
    append(&file, 50..60);
    let mut resumed = Events::open(&server.url("/logs/app"), Some(&id)).await;
    assert_eq!(resumed.data(40).await, names(20..60));
}

#[tokio::test]
async fn tail_follows_rotation_both_ways_seeing_every_line_once() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("app.log");
    append(&file, 0..100);
    let server = serve(&file).await;
    let mut events = Events::open(&server.url("/logs/app?from=start"), None).await;
    assert_eq!(events.data(100).await, names(0..100));
    // Rename + new file: the rest of the old one first, through the open descriptor.
    append(&file, 100..150);
    std::fs::rename(&file, dir.path().join("app.log.1")).expect("rotate");
    append(&file, 150..200);
    assert_eq!(events.data(100).await, names(100..200));
    // Truncation: read again from the start.
    std::fs::File::create(&file).expect("truncate");
    append(&file, 200..205);
    assert_eq!(events.data(5).await, names(200..205));
    // Removed, then created again: waited for.
    std::fs::remove_file(&file).expect("remove");
    append(&file, 205..210);
    assert_eq!(events.data(5).await, names(205..210));
}

#[tokio::test]
async fn tail_waits_for_a_file_that_does_not_exist_yet_and_speaks_ndjson() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("later.log");
    let server = serve(&file).await;
    let mut response = reqwest::Client::new()
        .get(server.url("/logs/app"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut text = String::new();
    let mut appended = false;
    while text.lines().filter(|l| !l.is_empty()).count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("lines within 10 s")
            .expect("read")
            .expect("more");
        text.push_str(&String::from_utf8_lossy(&chunk));
        // Written only once the client was told the file is missing.
        if !appended && text.contains('\n') {
            append(&file, 0..2);
            appended = true;
        }
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines[0]["error"]["type"], "file_missing", "{text}");
    assert_eq!(lines[1]["line"], "line 0");
    assert_eq!(lines[2]["line"], "line 1");
    assert!(lines[1]["id"].as_str().is_some_and(|id| id.contains('-')));
}

#[tokio::test]
async fn tail_tells_an_sse_client_the_file_is_missing_then_follows_it() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("later.log");
    let server = serve(&file).await;
    let mut response = reqwest::Client::new()
        .get(server.url("/logs/app"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("an event within 10 s")
        .expect("read")
        .expect("an event");
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(
        first.starts_with("event: error\ndata: ") && first.contains("file_missing"),
        "{first}"
    );
    append(&file, 0..3);
    let mut events = Events {
        response,
        pending: String::new(),
    };
    assert_eq!(events.data(3).await, names(0..3));
}

#[test]
fn tail_config_naming_a_directory_or_a_missing_relative_path_stops_the_server() {
    let dir = tempfile::tempdir().expect("dir");
    for (file, why) in [
        (dir.path().display().to_string(), "is a directory"),
        ("no/such/app.log".to_string(), "relative and does not exist"),
        ("/no/such/dir/app.log".to_string(), "directory of file"),
    ] {
        let toml =
            format!("[[route]]\nkind = \"file_tail\"\npath = \"/logs\"\nfile = \"{file}\"\n");
        let err = ServeConfig::parse(&toml).expect_err("refused").to_string();
        assert!(
            err.contains("route #1 (/logs)") && err.contains(why),
            "{err}"
        );
    }
}
