//! The server: routes from the configuration, an accept loop with per-socket limits.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::routing::{get, post};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use weir_runtime::MemoryBudget;

use super::admission::Admission;
use super::config::{RouteConfig, ServeConfig};
use super::console::{self, Console, Registry, Sources};
use super::cors::Cors;
use super::export::{self, ExportRoute};
use super::metrics;
use super::proxy::{self, ProxyRoute};
use super::request_body::BodyLimits;
use super::send_queue::{Backlog, BoundedSendQueue};
use super::shutdown::Shutdown;
use super::socket_buffer;
use super::stall::{StallGuard, StallLimit};
use super::tail;
use super::topic;

/// hyper's smallest allowed connection buffer (it panics below); also caps the request head.
const WRITE_BUFFER: usize = 8 * 1024;

/// The most of the grace kept for streams' last words: they are ended this long before it
/// is over, so that the server is gone within the grace.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// A configured server, not yet listening.
pub struct Server {
    config: ServeConfig,
    router: Router,
    admission: Admission,
    exports: Vec<Arc<ExportRoute>>,
    registry: Registry,
}

impl Server {
    /// Builds every route; fails on what the configuration file cannot say (a missing
    /// environment variable, say).
    pub fn new(config: ServeConfig) -> Result<Self, String> {
        let admission = Admission::new(
            config.max_streams,
            MemoryBudget::new(config.memory_budget as usize),
        );
        // Before the routes: metric handles made without a recorder would record nothing.
        metrics::install();
        let mut exports = Vec::new();
        let mut topics = Vec::new();
        let mut router = Router::new().route("/healthz", get(|| async { "ok\n" }));
        let registry = Registry::default();
        let mut kinds = Vec::new();
        for route in &config.routes {
            let kind = match route {
                RouteConfig::LlmProxy(_) => "llm_proxy",
                RouteConfig::Topic(_) => "topic",
                RouteConfig::FileTail(_) => "file_tail",
                RouteConfig::SqlExport(_) => "sql_export",
            };
            kinds.push((Arc::from(route.path()), kind));
            match route {
                RouteConfig::LlmProxy(r) => {
                    if r.client_keys.is_empty() {
                        tracing::warn!(route = %r.path, "route has no client_keys: anyone can use it");
                    }
                    let filter = proxy::filter_for(&r.redact)?;
                    let state = Arc::new(ProxyRoute::new(
                        r.clone(),
                        admission.clone(),
                        BodyLimits {
                            max_bytes: config.max_request_body as usize,
                            timeout: config.body_timeout,
                        },
                        filter,
                    )?);
                    let methods = post(proxy::handle).with_state(state);
                    router = router.route(&r.path, Cors::apply(&r.cors_origins, "POST", methods));
                }
                RouteConfig::Topic(r) => {
                    let state = topic::Topic::new(r.clone())?;
                    topics.push(Arc::clone(&state));
                    let methods = get(topic::subscribe).post(topic::publish).with_state(state);
                    router =
                        router.route(&r.path, Cors::apply(&r.cors_origins, "GET, POST", methods));
                }
                RouteConfig::FileTail(r) => {
                    let state = Arc::new(tail::TailRoute::new(r.clone())?);
                    let methods = get(tail::handle).with_state(state);
                    router =
                        router.route(&r.path, Cors::apply(&r.cors_origins, "GET, HEAD", methods));
                }
                RouteConfig::SqlExport(r) => {
                    let state = Arc::new(ExportRoute::new(r.clone(), admission.clone())?);
                    exports.push(Arc::clone(&state));
                    let methods = get(export::handle).with_state(state);
                    router =
                        router.route(&r.path, Cors::apply(&r.cors_origins, "GET, HEAD", methods));
                }
            }
        }
        let console = Arc::new(Console {
            sources: Sources {
                registry: registry.clone(),
                admission: admission.clone(),
                routes: kinds,
                topics: topics.clone(),
                send_buffer: config.send_buffer,
                started: std::time::Instant::now(),
            },
            admin_keys: config.admin_keys.clone(),
        });
        let scraped = admission.clone();
        let respond = move || {
            let subscribers = || topic::render_subscriber_metrics(&topics);
            std::future::ready(metrics::respond(&scraped, subscribers))
        };
        let router = router
            .route("/metrics", get(respond))
            .merge(console::router(console));
        Ok(Server {
            config,
            router,
            admission,
            exports,
            registry,
        })
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The streams and pipelines the console shows; `[[pipeline]]`s register here.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A listener on `addr` whose queue of connections not yet accepted holds
    /// `listen_backlog` (the kernel caps it at net.core.somaxconn): a burst of connects
    /// waits there instead of losing SYNs and retrying a second later.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let backlog = i32::try_from(self.config.listen_backlog).unwrap_or(i32::MAX);
        socket.listen(backlog)?;
        TcpListener::from_std(socket.into())
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
        // Tracks connections for the shutdown grace; hyper-util's GracefulShutdown does not
        // take connections that can be upgraded (WebSocket).
        let connections = TaskTracker::new();
        let stop = Shutdown::new(shutdown.clone(), connections.clone());
        let mut http = hyper::server::conn::http1::Builder::new();
        // hyper pulls the body until ~400 KiB wait in its write buffer; at its smallest it
        // stops at 8 KiB, and the rest of a slow client's share waits upstream.
        http.timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout)
            .max_buf_size(WRITE_BUFFER);
        tokio::spawn(metrics::upkeep(shutdown.clone()));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, or a connection gone before accept: pause, go on.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            // Bounds what a slow client parks in our kernel: the heap is bounded by the
            // body's pull, the send queue by this.
            let _ = socket2::SockRef::from(&tcp)
                .set_send_buffer_size(socket_buffer::request_for(self.config.send_buffer));
            let limit = StallLimit::new(Duration::from_secs(60));
            let backlog = Backlog::default();
            let tcp = BoundedSendQueue::new(tcp, self.config.send_buffer, backlog.clone());
            let io = TokioIo::new(StallGuard::new(tcp, limit.clone()));
            let router = self.router.clone();
            let request_stop = stop.clone();
            let registry = self.registry.clone();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let extensions = req.extensions_mut();
                extensions.insert(limit.clone());
                extensions.insert(backlog.clone());
                extensions.insert(request_stop.clone());
                extensions.insert(registry.clone());
                extensions.insert(ConnectInfo(peer));
                router.clone().oneshot(req)
            });
            let conn = http.serve_connection(io, service).with_upgrades();
            let draining = shutdown.clone();
            connections.spawn(async move {
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = draining.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        drop(listener);
        connections.close();
        let grace = self.config.shutdown_grace;
        let last_words = LAST_WORDS.min(grace / 5);
        if tokio::time::timeout(grace - last_words, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "streams still open at the end of the shutdown grace ({grace:?}): ending them with an error"
            );
            stop.end_streams();
            if tokio::time::timeout(last_words, connections.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    open = connections.len(),
                    "connections that did not close in time are dropped"
                );
            }
        }
        Ok(())
    }

    /// Binds the configured address and serves in a spawned task (for tests and `demo`).
    pub async fn start(self, listen: SocketAddr) -> io::Result<RunningServer> {
        let listener = self.bind(listen)?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let admission = self.admission.clone();
        let exports = self.exports.clone();
        let task = tokio::spawn(self.serve(listener, shutdown.clone()));
        Ok(RunningServer {
            addr,
            shutdown,
            admission,
            exports,
            task,
        })
    }
}

/// A server serving in the background; stopped on drop.
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    admission: Admission,
    exports: Vec<Arc<ExportRoute>>,
    task: JoinHandle<io::Result<()>>,
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The `sql_export` route at `path`: its pool and counters.
    pub fn export(&self, path: &str) -> Option<&ExportRoute> {
        self.exports
            .iter()
            .find(|r| r.config().path == path)
            .map(|r| r.as_ref())
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
