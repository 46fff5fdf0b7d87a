//! `weir check` from the command line, the fast cases: endpoints the clients cannot load
//! (404, closed at once, streams that end, refused) are INCONCLUSIVE with the reason,
//! usage errors exit 2, a bounded server passes, a growing Prometheus gauge fails, and
//! the JSON report has the shape documented.

mod check;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use check::{steady_server, weir_check};

const CLIENTS: usize = 5;

/// Answers `CLIENTS` connections with `response` (after reading the request head when
/// `read_request`), then stops.
fn serve_each(response: &'static [u8], read_request: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for _ in 0..CLIENTS {
            let Ok((mut tcp, _)) = listener.accept() else {
                return;
            };
            if read_request {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(response);
            }
        }
    });
    port
}

/// `weir check` against the test process itself (its RSS is the memory read).
fn check_against(port: u16, extra: &[&str]) -> check::Run {
    let url = format!("http://127.0.0.1:{port}/stream");
    let pid = std::process::id().to_string();
    let clients = CLIENTS.to_string();
    let mut args = vec![
        url.as_str(),
        "--pid",
        &pid,
        "--clients",
        &clients,
        "--duration",
        "6s",
        "--interval",
        "250ms",
        "--json",
    ];
    args.extend_from_slice(extra);
    weir_check(&args)
}

fn assert_inconclusive(run: &check::Run, because: &str) -> serde_json::Value {
    assert_eq!(
        run.code, 3,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = run.json();
    assert_eq!(report["verdict"], "INCONCLUSIVE", "{report:#}");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("the clients could not load the server") && reason.contains(because),
        "reason: {reason}"
    );
    assert_eq!(report["clients"]["streaming_at_end"], 0);
    // Every client finished at once: the run stops without waiting for --duration.
    let end = report["window"]["end_s"].as_f64().unwrap();
    assert!(end < 4.0, "ran {end} s");
    report
}

#[test]
fn a_404_is_inconclusive_and_says_so() {
    let port = serve_each(
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        true,
    );
    let report = assert_inconclusive(&check_against(port, &[]), "HTTP 404");
    assert_eq!(report["clients"]["http_errors"]["404"], CLIENTS);
}

#[test]
fn a_server_that_closes_at_once_is_inconclusive() {
    let port = serve_each(b"", false);
    let report = assert_inconclusive(&check_against(port, &[]), "failed:");
    let errors = report["clients"]["errors"].as_object().unwrap();
    assert!(
        errors
            .keys()
            .all(|e| e.contains("closed the connection") || e.contains("reset")),
        "{errors:?}"
    );
}

#[test]
fn a_stream_that_ends_at_once_is_inconclusive() {
    let port = serve_each(b"HTTP/1.1 200 OK\r\n\r\ndata: only one event\n\n", true);
    let report = assert_inconclusive(&check_against(port, &[]), "5 streams ended early");
    assert_eq!(report["clients"]["ended_early"], CLIENTS);
    assert_eq!(
        report["clients"]["bytes_total"],
        CLIENTS * "data: only one event\n\n".len()
    );
}

#[test]
fn a_refused_connection_is_inconclusive() {
    let port = check::free_port();
    assert_inconclusive(&check_against(port, &[]), "connecting to 127.0.0.1");
}

#[test]
fn a_spawned_server_that_dies_is_inconclusive_with_its_last_words() {
    let port = check::free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let run = weir_check(&[&url, "--spawn", "echo no config here >&2; exit 7"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("never answered")
            && run.stderr.contains("exit status: 7")
            && run.stderr.contains("no config here"),
        "{}",
        run.stderr
    );

    // One that dies mid-run: the verdict names the exit, not a slope.
    let spawn = format!(
        "timeout 3 python3 {} {port}",
        check::script("steady_server.py").display()
    );
    let run = weir_check(&[
        &url,
        "--spawn",
        &spawn,
        "--clients",
        "3",
        "--duration",
        "20s",
        "--interval",
        "250ms",
        "--json",
    ]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("exited") || reason.contains("ended early"),
        "{reason}"
    );
    assert!(
        report["window"]["end_s"].as_f64().unwrap() < 10.0,
        "{report:#}"
    );
}

/// `timeout` moves itself and the server into a process group of their own: stopping the
/// shell's group alone would leave the server running.
#[test]
fn a_spawned_server_is_stopped_even_outside_its_process_group() {
    let port = check::free_port();
    let spawn = format!(
        "timeout 60 python3 {} {port}; echo unreachable",
        check::script("steady_server.py").display()
    );
    let run = weir_check(&[
        &format!("http://127.0.0.1:{port}/"),
        "--spawn",
        &spawn,
        "--clients",
        "2",
        "--duration",
        "3s",
        "--warmup",
        "1s",
        "--min-window",
        "1s",
        "--settle-window",
        "1s",
        "--interval",
        "250ms",
    ]);
    assert!(
        run.stdout.contains("memory from") && run.stdout.contains("spawned"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
    assert!(refused, "the spawned server still listens on {port}");
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    let pid = std::process::id().to_string();
    let url = "http://127.0.0.1:9/stream";
    let cases: &[(&[&str], &str)] = &[
        (&[url], "--pid"),
        (&["ftp://127.0.0.1/x", "--pid", &pid], "only http://"),
        (&["not a url", "--pid", &pid], "not a url"),
        (&[url, "--pid", "4294967"], "no such process"),
        (
            &[url, "--pid", &pid, "--duration", "5s", "--warmup", "5s"],
            "--warmup",
        ),
        (&[url, "--pid", &pid, "--plot", "out.txt"], ".svg or .png"),
        (&[url, "--pid", &pid, "--header", "no colon"], "Name: value"),
        (&[url, "--pid", &pid, "--clients", "0"], "--clients"),
        (&[url, "--pid", &pid, "--read-rate", "fast"], "fast"),
        (&[url, "--pid", &pid, "--min-r2", "2"], "--min-r2"),
        (
            &[
                url,
                "--pid",
                &pid,
                "--duration",
                "5s",
                "--settle-window",
                "20s",
            ],
            "--settle-window",
        ),
        (
            &[url, "--pid", &pid, "--body", "x", "--body-file", "y"],
            "--body",
        ),
        (
            &[url, "--pid", &pid, "--pid", "4294967"],
            "--pid 4294967: no such process",
        ),
        (&[url, "--pid", &pid, "--pid", &pid], "given twice"),
        (
            &[url, "--pid", &pid, "--metrics-url", "http://127.0.0.1:9/m"],
            "--metrics-url",
        ),
        (
            &[url, "--pid", &pid, "--max-per-client", "0"],
            "--max-per-client",
        ),
    ];
    for (args, says) in cases {
        let run = weir_check(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn a_bounded_server_passes_and_the_report_has_its_shape() {
    let (_server, port) = steady_server();
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("run.svg");
    let run = weir_check(&[
        &format!("http://127.0.0.1:{port}/"),
        "--pid",
        &_server.0.id().to_string(),
        "--clients",
        "8",
        "--duration",
        "8s",
        "--warmup",
        "2s",
        "--min-window",
        "4s",
        "--settle-window",
        "2s",
        "--interval",
        "250ms",
        "--read-rate",
        "2KiB",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = run.json();
    assert_eq!(report["verdict"], "PASS", "{report:#}");
    for key in [
        "reason",
        "url",
        "memory_source",
        "window",
        "fit",
        "thresholds",
        "memory",
        "kernel",
        "where_bytes_live",
        "clients",
        "samples",
    ] {
        assert!(!report[key].is_null(), "no `{key}` in {report:#}");
    }
    assert_eq!(report["clients"]["streaming_at_end"], 8);
    // 8 clients at 2 KiB/s for at least 8 s, give or take the first read's head start.
    let per_client = report["clients"]["bytes_per_client_min"].as_u64().unwrap();
    assert!(
        (12_000..=30_000).contains(&per_client),
        "{per_client} bytes"
    );
    let slope = report["fit"]["slope"].as_f64().unwrap();
    assert!(slope < report["thresholds"]["max_slope"].as_f64().unwrap());
    let samples = report["samples"].as_array().unwrap();
    assert!(samples.len() >= 30, "{} samples", samples.len());
    assert!(samples.iter().all(|s| s["rss"].as_u64().unwrap() > 0));
    assert!(samples.last().unwrap()["queued_send"].as_u64().unwrap() > 0);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("PASS"),
        "{svg:.200}"
    );
}

/// A server that writes 40 KB/s per stream into 4 MiB send buffers: its heap is flat but
/// its kernel queues grow for minutes, so there is no steady state to judge in 5 s.
#[test]
fn socket_queues_that_never_settle_are_inconclusive() {
    let (server, port) = check::paced_server(40_000);
    let run = weir_check(&[
        &format!("http://127.0.0.1:{port}/"),
        "--pid",
        &server.0.id().to_string(),
        "--clients",
        "4",
        "--duration",
        "4s",
        "--max-duration",
        "5s",
        "--warmup",
        "1s",
        "--settle-window",
        "2s",
        "--interval",
        "250ms",
        "--json",
    ]);
    assert_eq!(
        run.code, 3,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = run.json();
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("socket queues never stopped growing"),
        "{reason}"
    );
    assert!(report["window"]["queues_settled_s"].is_null(), "{report:#}");
    let queued = report["kernel"]["peak"].as_u64().unwrap();
    assert!(queued > 400_000, "{queued} bytes queued");
}

/// A Prometheus page whose gauge grows 2 MiB per scrape: memory from `--metrics-url`.
#[test]
fn a_growing_prometheus_gauge_fails() {
    let (_server, port) = steady_server();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut scrapes = 0u64;
        while started.elapsed() < Duration::from_secs(60) {
            let Ok((mut tcp, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf);
            scrapes += 1;
            let page = format!(
                "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
                (50 << 20) + scrapes * (2 << 20)
            );
            let _ = write!(
                tcp,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    let run = weir_check(&[
        &format!("http://127.0.0.1:{port}/"),
        "--metrics-url",
        &format!("http://127.0.0.1:{metrics_port}/metrics"),
        "--clients",
        "4",
        "--duration",
        "4s",
        "--warmup",
        "1s",
        "--min-window",
        "2s",
        "--interval",
        "250ms",
        "--limit",
        "1GiB",
        "--json",
    ]);
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = run.json();
    assert_eq!(report["verdict"], "FAIL", "{report:#}");
    assert!(report["memory_source"]
        .as_str()
        .unwrap()
        .contains("metrics"));
    // 2 MiB a quarter-second: 8 MiB/s, give or take the scheduling of the samples.
    let slope = report["fit"]["slope"].as_f64().unwrap();
    assert!((4e6..16e6).contains(&slope), "slope {slope}");
    assert!(report["kernel"].is_null());
    let seconds = report["limit"]["seconds_to_limit"].as_f64().unwrap();
    assert!(seconds > 0.0 && seconds < 200.0, "{seconds} s to 1 GiB");
}

#[test]
fn the_table_states_the_verdict_and_the_rule_is_in_help() {
    let port = serve_each(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        true,
    );
    let pid = std::process::id().to_string();
    let run = weir_check(&[
        &format!("http://127.0.0.1:{port}/"),
        "--pid",
        &pid,
        "--clients",
        "5",
        "--interval",
        "250ms",
    ]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("INCONCLUSIVE: the clients could not load the server")
            && run.stdout.contains("5 got HTTP 503"),
        "{}",
        run.stdout
    );
    let help = std::process::Command::new(check::WEIR)
        .args(["check", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for words in [
        "THE VERDICT",
        "--max-slope",
        "R²",
        "--max-per-client (default 2 MiB)",
        "a ceiling such as a heap",
        "the proxy in front buffers",
        "--spawn 'exec python3 app.py 9000' --spawn",
        "EXIT CODES",
        "3 INCONCLUSIVE",
    ] {
        assert!(help.contains(words), "no `{words}` in --help");
    }
}

/// A `--pid` that exits mid-run: an error naming it (exit 2), never a verdict.
#[test]
fn a_pid_that_exits_during_the_run_is_an_error_naming_it() {
    let (server, port) = steady_server();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("2")
        .spawn()
        .unwrap();
    let sleeper_pid = sleeper.id().to_string();
    let run = weir_check(&[
        &format!("http://127.0.0.1:{port}/"),
        "--pid",
        &server.0.id().to_string(),
        "--pid",
        &sleeper_pid,
        "--clients",
        "2",
        "--duration",
        "20s",
        "--interval",
        "250ms",
        "--json",
    ]);
    let _ = sleeper.wait();
    assert_eq!(
        run.code, 2,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "a report was printed: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains(&format!(
            "--pid {sleeper_pid}: pid {sleeper_pid} (sleep) exited at"
        )) && run.stderr.contains("no verdict from missing samples"),
        "{}",
        run.stderr
    );
}

/// Two processes measured at once (a server and an idle worker): each judged alone, the
/// one serving the URL found.
#[test]
fn each_pid_is_measured_and_the_one_in_front_is_found() {
    let (server, port) = steady_server();
    let worker = check::Guard(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap(),
    );
    let worker_pid = worker.0.id();
    let run = weir_check(&[
        &format!("http://127.0.0.1:{port}/"),
        "--pid",
        &worker_pid.to_string(),
        "--pid",
        &server.0.id().to_string(),
        "--clients",
        "4",
        "--duration",
        "4s",
        "--warmup",
        "1s",
        "--min-window",
        "2s",
        "--settle-window",
        "1s",
        "--interval",
        "250ms",
        "--json",
    ]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = run.json();
    let processes = report["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2, "{report:#}");
    assert_eq!(processes[0]["pid"], worker_pid);
    assert_eq!(processes[0]["label"], format!("pid {worker_pid} (sleep)"));
    assert!(!processes[0]["front"].as_bool().unwrap(), "{report:#}");
    assert!(processes[1]["front"].as_bool().unwrap(), "{report:#}");
    assert!(
        processes[1]["label"].as_str().unwrap().contains("python3"),
        "{report:#}"
    );
    for process in processes {
        assert_eq!(process["judgement"]["verdict"], "PASS", "{report:#}");
    }
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .starts_with("every process is bounded"),
        "{report:#}"
    );
    // Every sample holds each process's RSS and socket queues; the total is their sum.
    for sample in report["samples"].as_array().unwrap() {
        let each = sample["processes"].as_array().unwrap();
        assert_eq!(each.len(), 2);
        let rss: Vec<u64> = each.iter().map(|p| p["rss"].as_u64().unwrap()).collect();
        assert!(rss.iter().all(|&b| b > 0), "{sample}");
        assert_eq!(sample["rss"].as_u64().unwrap(), rss.iter().sum::<u64>());
        assert_eq!(each[0]["queued"], 0, "the worker holds no socket: {sample}");
    }
    let table = weir_check(&[
        &format!("http://127.0.0.1:{port}/"),
        "--pid",
        &worker_pid.to_string(),
        "--pid",
        &server.0.id().to_string(),
        "--clients",
        "2",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--min-window",
        "1s",
        "--settle-window",
        "500ms",
        "--interval",
        "250ms",
    ]);
    assert!(
        table
            .stdout
            .contains(&format!("  pid {worker_pid} (sleep)"))
            && table.stdout.contains(", in front: +"),
        "{}",
        table.stdout
    );
}
