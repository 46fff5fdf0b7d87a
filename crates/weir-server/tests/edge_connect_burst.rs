//! A burst of 2,000 connects: the listen queue holds them until weir accepts, so no client
//! waits for a SYN retry (a second, on Linux).

use std::time::{Duration, Instant};

use weir_server::serve::{ServeConfig, Server};

async fn slowest_connect(backlog: u32) -> Duration {
    let toml = format!("listen_backlog = {backlog}\n[[route]]\nkind = \"topic\"\npath = \"/t\"\n");
    let config = ServeConfig::parse(&toml).expect("test config");
    let server = Server::new(config)
        .expect("server")
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = server.local_addr();
    // Every connect is started before any is awaited: one burst.
    let connects: Vec<_> = (0..2_000)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                (started.elapsed(), stream)
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut open = Vec::new();
    for c in connects {
        let (took, stream) = c.await.expect("task");
        slowest = slowest.max(took);
        open.push(stream);
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_a_connect_burst_waits_in_the_listen_queue_not_for_syn_retries() {
    let slowest = slowest_connect(4096).await;
    eprintln!("slowest of 2,000 connects: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(900),
        "a connect waited {slowest:?}: a SYN was retried"
    );
}
