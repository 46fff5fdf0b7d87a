//! `topic` routes over real HTTP: each policy's accounting (received + reported dropped =
//! published, order kept), `block` losing nothing, `disconnect` closing with an error event,
//! bad NDJSON refused naming the line, publish keys, and UDP datagrams published.

use std::time::Duration;

use weir_server::serve::{RunningServer, ServeConfig, Server};

async fn serve(extra: &str) -> RunningServer {
    let toml = format!(
        "[[route]]\nkind = \"topic\"\npath = \"/topics/ticks\"\nbuffer = \"1KiB\"\n{extra}\n"
    );
    let config = ServeConfig::parse(&toml).expect("test config");
    Server::new(config)
        .expect("server")
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind")
}

fn ndjson(ids: std::ops::Range<u32>) -> String {
    ids.map(|i| format!("{{\"id\":{i},\"pad\":\"{}\"}}\n", "x".repeat(100)))
        .collect()
}

async fn publish(server: &RunningServer, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url("/topics/ticks"))
        .body(body)
        .send()
        .await
        .expect("POST")
}

/// Reads a subscription to its end or until `until` says stop; returns ids, drops, errors.
async fn read_ndjson(
    mut response: reqwest::Response,
    until: impl Fn(&[u32], u64) -> bool,
) -> (Vec<u32>, u64, usize) {
    let (mut ids, mut dropped, mut errors) = (Vec::new(), 0u64, 0usize);
    let mut pending = String::new();
    loop {
        if until(&ids, dropped) {
            return (ids, dropped, errors);
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("data within 10 s")
            .expect("read");
        let Some(chunk) = chunk else {
            return (ids, dropped, errors);
        };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            if let Some(id) = v["id"].as_u64() {
                ids.push(id as u32);
            } else if let Some(n) = v["dropped"].as_u64() {
                dropped += n;
            } else if v.get("error").is_some() {
                errors += 1;
            }
        }
    }
}

async fn subscribe(server: &RunningServer) -> reqwest::Response {
    let r = reqwest::Client::new()
        .get(server.url("/topics/ticks"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    r
}

#[tokio::test]
async fn topic_drop_policies_account_for_every_message_in_order() {
    const N: u32 = 20_000;
    for policy in ["drop_oldest", "drop_newest"] {
        let server = serve(&format!("policy = \"{policy}\"")).await;
        let sub = subscribe(&server).await;
        // Published while the subscriber reads nothing: its gate must drop, and say so.
        let answer = publish(&server, ndjson(0..N)).await;
        assert_eq!(answer.status(), 200);
        let body: serde_json::Value = answer.json().await.expect("json");
        assert_eq!(body["published"], N);
        let (ids, dropped, _) =
            read_ndjson(sub, |ids, dropped| ids.len() as u64 + dropped >= N as u64).await;
        assert!(dropped > 0, "{policy}: nothing dropped");
        assert_eq!(
            ids.len() as u64 + dropped,
            N as u64,
            "{policy}: received + dropped != published"
        );
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{policy}: order broken"
        );
        if policy == "drop_oldest" {
            assert_eq!(ids.last(), Some(&(N - 1)), "drop_oldest keeps the newest");
        } else {
            assert_eq!(ids.first(), Some(&0), "drop_newest keeps the oldest");
        }
    }
}

#[tokio::test]
async fn topic_block_loses_nothing_and_paces_the_publisher() {
    const N: u32 = 5_000;
    let server = serve("policy = \"block\"").await;
    let sub = subscribe(&server).await;
    let publisher = {
        let url = server.url("/topics/ticks");
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .body(ndjson(0..N))
                .send()
                .await
                .expect("POST")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        })
    };
    let (ids, dropped, _) = read_ndjson(sub, |ids, _| ids.len() as u32 >= N).await;
    assert_eq!(dropped, 0);
    assert_eq!(ids, (0..N).collect::<Vec<_>>());
    assert_eq!(publisher.await.expect("publisher")["published"], N);
}

#[tokio::test]
async fn topic_disconnect_tells_the_slow_subscriber_and_closes_it() {
    let server = serve("policy = \"disconnect\"").await;
    let sub = subscribe(&server).await;
    assert_eq!(publish(&server, ndjson(0..20_000)).await.status(), 200);
    let (ids, _, errors) = read_ndjson(sub, |_, _| false).await;
    assert_eq!(errors, 1, "one error event, then the end");
    assert!(ids.len() < 20_000);
}

#[tokio::test]
async fn topic_refuses_bad_ndjson_naming_the_line_and_checks_keys() {
    let server = serve("publish_keys = [\"pub-key\"]").await;
    let client = reqwest::Client::new();
    let no_key = client
        .post(server.url("/topics/ticks"))
        .body("{}\n")
        .send()
        .await
        .expect("POST");
    assert_eq!(no_key.status(), 401);
    let sub = subscribe(&server).await;
    let bad = client
        .post(server.url("/topics/ticks"))
        .header("authorization", "Bearer pub-key")
        .body("{\"id\":0}\n{\"id\":1}\nnot json\n{\"id\":3}\n")
        .send()
        .await
        .expect("POST");
    assert_eq!(bad.status(), 400);
    let text = bad.text().await.expect("body");
    assert!(
        text.contains("line 3") && text.contains("2 messages"),
        "{text}"
    );
    let (ids, _, _) = read_ndjson(sub, |ids, _| ids.len() >= 2).await;
    assert_eq!(ids, vec![0, 1], "nothing from the bad line on");
}

#[tokio::test]
async fn topic_publishes_udp_datagrams() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port();
    let server = serve(&format!("udp_listen = \"127.0.0.1:{port}\"")).await;
    let sub = subscribe(&server).await;
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    for i in 0..10 {
        sender
            .send_to(format!("{{\"id\":{i}}}").as_bytes(), ("127.0.0.1", port))
            .expect("send");
    }
    let (ids, dropped, _) = read_ndjson(sub, |ids, d| ids.len() as u64 + d >= 10).await;
    assert_eq!(ids.len() as u64 + dropped, 10);
}

/// `/metrics` once `done` holds for it; fails after 10 s.
async fn scrape_until(server: &RunningServer, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(server.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within 10 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn topic_counters_reach_metrics() {
    let toml = "[[route]]\nkind = \"topic\"\npath = \"/topics/metered\"\npolicy = \"drop_newest\"\nbuffer = \"1KiB\"\n";
    let config = ServeConfig::parse(toml).expect("test config");
    let server = Server::new(config)
        .expect("server")
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let idle = reqwest::Client::new()
        .get(server.url("/topics/metered"))
        .send()
        .await
        .expect("GET");
    let answer = reqwest::Client::new()
        .post(server.url("/topics/metered"))
        .body(ndjson(0..5_000))
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status(), 200);
    // The counters are published every second.
    let wanted = "weir_topic_published_total{topic=\"/topics/metered\"} 5000";
    let metrics = scrape_until(&server, |text| text.contains(wanted)).await;
    assert!(metrics.contains(wanted), "{metrics}");
    assert!(
        metrics.contains("weir_topic_subscribers{topic=\"/topics/metered\"} 1"),
        "{metrics}"
    );
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weir_topic_dropped_total{topic=\"/topics/metered\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        dropped > 0,
        "a subscriber that reads nothing drops: {metrics}"
    );
    let series = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{topic=\"/topics/metered\",subscriber=")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        series(&metrics, "weir_topic_subscriber_published_total"),
        Some(5000),
        "{metrics}"
    );
    let own_dropped = series(&metrics, "weir_topic_subscriber_dropped_total").unwrap_or(0);
    let own_delivered = series(&metrics, "weir_topic_subscriber_delivered_total").unwrap_or(0);
    assert_eq!(
        own_dropped, dropped,
        "one subscriber: its drops are the topic's"
    );
    assert!(own_delivered + own_dropped <= 5000, "{metrics}");
    assert!(
        series(&metrics, "weir_topic_subscriber_queued_bytes").is_some_and(|b| b <= 1024),
        "{metrics}"
    );
    // A subscriber's series go with it.
    drop(idle);
    scrape_until(&server, |text| {
        series(text, "weir_topic_subscriber_published_total").is_none()
    })
    .await;
}
