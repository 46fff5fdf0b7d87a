//! The console's pipelines against a real Kafka-protocol broker (tansu): a `[[pipeline]]`
//! whose throttle holds it back shows its stages, the throttle named as the bottleneck,
//! and the consumer's lag per partition.

mod kafka;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use kafka::{copy_config, tansu, Broker, Weir};
use serde_json::Value;

const PARTITIONS: i32 = 4;

fn state(addr: std::net::SocketAddr) -> Option<Value> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /_weir/state HTTP/1.1\r\nhost: weir\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// The page in headless Chromium (tests/console/page.py) marks `stage` in the pipelines
/// table; skipped where Selenium or chromedriver is missing and WEIR_SKIP_BROWSER=1.
fn page_marks(addr: std::net::SocketAddr, stage: &str) {
    let have = |probe: &mut std::process::Command| {
        probe
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ready = have(std::process::Command::new("python3").args(["-c", "import selenium"]))
        && have(std::process::Command::new("chromedriver").arg("--version"));
    if !ready {
        assert_eq!(
            std::env::var("WEIR_SKIP_BROWSER").as_deref(),
            Ok("1"),
            "Selenium or chromedriver missing: scripts/test installs them; WEIR_SKIP_BROWSER=1 skips"
        );
        return;
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/console/page.py");
    let status = std::process::Command::new("python3")
        .arg(script)
        .env("WEIR_URL", format!("http://{addr}"))
        .env("WEIR_BOTTLENECK", stage)
        .stdin(std::process::Stdio::null())
        .status()
        .expect("run tests/console/page.py");
    assert!(status.success(), "tests/console/page.py failed: {status}");
}

#[test]
fn console_kafka_pipeline_shows_its_stages_bottleneck_and_lag() {
    let Some(tansu) = tansu() else {
        return;
    };
    let broker = Broker::start(&tansu);
    broker.create_topic("in", PARTITIONS as u32);
    broker.create_topic("out", PARTITIONS as u32);
    broker.produce("in", 0..20_000, 200);
    let listen = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listen.local_addr().expect("addr");
    drop(listen);
    let config = format!(
        "listen = \"{addr}\"\n{}",
        copy_config(
            &broker.brokers,
            "weir-console",
            "\"throttle:100KB\"",
            "16MiB"
        )
    );
    let weir = Weir::serve(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    let pipeline = loop {
        if let Some(s) = state(addr) {
            let p = &s["pipelines"][0];
            let lag: i64 = p["lag"]
                .as_array()
                .map_or(0, |l| l.iter().filter_map(|x| x["lag"].as_i64()).sum());
            if p["bottleneck"] == "throttle:100KB" && lag > 0 {
                break p.clone();
            }
            last = s;
        }
        assert!(
            Instant::now() < deadline,
            "no throttle bottleneck with a lag; last state: {last:#}\nlog:\n{}",
            weir.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(pipeline["name"], "copy");
    let stages: Vec<&str> = pipeline["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        stages,
        ["kafka:in", "throttle:100KB", "kafka:out"],
        "{pipeline:#}"
    );
    let throttle = &pipeline["stages"][1];
    assert_eq!(throttle["state"], "busy", "{pipeline:#}");
    assert!(throttle["budget"].as_u64() > Some(0), "{pipeline:#}");
    assert_eq!(
        pipeline["stages"][0]["state"], "blocked",
        "the source waits on the throttle: {pipeline:#}"
    );
    let lag = pipeline["lag"].as_array().expect("lag");
    assert!(
        !lag.is_empty() && lag.len() <= PARTITIONS as usize,
        "{pipeline:#}"
    );
    assert!(lag.iter().all(|l| l["topic"] == "in"), "{pipeline:#}");
    page_marks(addr, "throttle:100KB");
    weir.signal("-TERM");
    let (status, log) = weir.wait(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}; log:\n{log}");
}
