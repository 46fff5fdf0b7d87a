//! The server: routes from the configuration, an accept loop with per-socket limits.
//!
//! With `tls_cert` and `tls_key`, each connection does its TLS handshake in its own task
//! (within `header_timeout`), then is served as HTTP/2 or HTTP/1.1 as ALPN chose. Over
//! HTTP/2 hyper pulls a response body only as the client's stream window and a small send
//! buffer allow, so the window is each stream's budget on the client side.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::routing::{get, post};
use axum::Router;
use futures::TryFutureExt;
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::Oneshot;
use tower::ServiceExt as _;
use weir_runtime::MemoryBudget;

use super::admission::Admission;
use super::config::{RouteConfig, ServeConfig};
use super::console::{self, Console, Registry, Sources};
use super::cors::Cors;
use super::export::{self, ExportRoute};
use super::http1;
use super::metrics;
use super::proxy::{self, ProxyRoute};
use super::request_body::{BodyBudget, BodyLimits};
use super::send_queue::{Backlog, BoundedSendQueue};
use super::shutdown::Shutdown;
use super::socket_buffer;
use super::stall::{StallGuard, StallLimit};
use super::tail;
use super::tls;
use super::topic;
use super::window_stall::WindowWaits;

/// hyper's smallest allowed connection buffer (it panics below); also caps the request head.
const WRITE_BUFFER: usize = 8 * 1024;

/// Streams one HTTP/2 client connection may have open at once (RFC 9113 suggests no
/// fewer than 100); the server-wide `max_streams` is enforced on top, with 503s.
const H2_MAX_STREAMS: u32 = 100;

/// Most bytes of one stream's response hyper's HTTP/2 layer holds, waiting for the
/// client's window or the socket: the body is polled again only once what it gave drops
/// under this, as over HTTP/1.1.
const H2_SEND_BUFFER: usize = WRITE_BUFFER;

/// What one HTTP/2 request stream, and all of a connection's, may send before weir reads
/// it: request bodies wait in these windows, in the heap.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;

/// Largest HTTP/2 request head (decoded, RFC 9113's accounting).
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;

/// Encrypted bytes rustls holds for a connection beyond the kernel's send queue: one
/// whole TLS record.
const TLS_SEND_BUFFER: usize = 16 * 1024 + 256;

/// The most of the grace kept for streams' last words: they are ended this long before it
/// is over, so that the server is gone within the grace.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// A server that cannot be built: TLS files or a route that cannot start.
///
/// Each route's error names the route's path (the redactors' are checked with the
/// configuration first, so theirs cannot happen with a checked one).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("route {path}: {error}")]
    Redaction {
        path: String,
        error: weir_stages::codec::redact::RedactConfigError,
    },
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyRouteError),
    #[error(transparent)]
    Topic(#[from] topic::TopicError),
    #[error(transparent)]
    Tail(#[from] tail::TailRouteError),
    #[error(transparent)]
    Export(#[from] export::ExportRouteError),
}

/// A configured server, not yet listening.
pub struct Server {
    config: ServeConfig,
    router: Router,
    admission: Admission,
    exports: Vec<Arc<ExportRoute>>,
    registry: Registry,
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Builds every route; fails on what the configuration file cannot say (a missing
    /// environment variable, say).
    pub fn new(config: ServeConfig) -> Result<Self, ServerError> {
        // First: an unusable certificate or key stops `weir serve` before anything starts.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };
        let admission = Admission::new(
            config.max_streams,
            MemoryBudget::new(config.memory_budget as usize),
        );
        let body_budget = BodyBudget::new(config.request_body_budget);
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
                    let filter =
                        proxy::filter_for(&r.redact).map_err(|error| ServerError::Redaction {
                            path: r.path.clone(),
                            error,
                        })?;
                    let state = Arc::new(ProxyRoute::new(
                        r.clone(),
                        admission.clone(),
                        BodyLimits {
                            max_bytes: config.max_request_body as usize,
                            timeout: config.body_timeout,
                            budget: body_budget.clone(),
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
            tls,
        })
    }

    /// Whether clients are served over TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
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
        // Shared: a connection's task keeps it for its life.
        let http = Arc::new(http);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_send_buf_size(H2_SEND_BUFFER)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_header_list_size(H2_MAX_HEADER_LIST);
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
            let io = StallGuard::new(tcp, limit.clone());
            let per_connection = PerConnection {
                router: self.router.clone(),
                limit,
                backlog: Some(backlog),
                asked: None,
                stop: stop.clone(),
                registry: self.registry.clone(),
                peer,
            };
            let draining = shutdown.clone();
            let Some(acceptor) = self.tls.clone() else {
                connections.spawn(http1::serve(
                    io,
                    per_connection,
                    Arc::clone(&http),
                    self.config.header_timeout,
                    draining,
                ));
                continue;
            };
            // The handshake in the connection's own task: a slow or silent client never
            // holds up the accept loop.
            connections.spawn(serve_tls(
                acceptor.accept(io),
                per_connection,
                (Arc::clone(&http), h2.clone()),
                self.config.header_timeout,
                draining,
            ));
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
        let tls = self.is_tls();
        let shutdown = CancellationToken::new();
        let admission = self.admission.clone();
        let exports = self.exports.clone();
        let task = tokio::spawn(self.serve(listener, shutdown.clone()));
        Ok(RunningServer {
            addr,
            tls,
            shutdown,
            admission,
            exports,
            task,
        })
    }
}

/// What every request of one connection carries in its extensions.
pub(super) struct PerConnection {
    router: Router,
    limit: StallLimit,
    /// `None` on HTTP/2 connections.
    backlog: Option<Backlog>,
    /// Set at the connection's first request (HTTP/2 connections).
    asked: Option<Arc<AtomicBool>>,
    stop: Shutdown,
    registry: Registry,
    peer: SocketAddr,
}

type RouterCall = Oneshot<Router, Request<Incoming>>;
pub(super) type Http1 = hyper::server::conn::http1::Builder;
type Http2 = hyper::server::conn::http2::Builder<TokioExecutor>;

impl PerConnection {
    /// The connection served by hyper.
    pub(super) fn service(
        self,
    ) -> impl Service<
        Request<Incoming>,
        Response = axum::response::Response,
        Error = Infallible,
        Future = RouterCall,
    > + Send {
        service_fn(move |mut req: Request<Incoming>| {
            self.prepare(&mut req);
            self.router.clone().oneshot(req)
        })
    }

    /// Serves an HTTP/2 connection's requests, each response body watched by `waits`.
    fn h2_service(
        self,
        waits: WindowWaits,
    ) -> impl Service<
        Request<Incoming>,
        Response = axum::response::Response,
        Error = Infallible,
        Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
    > + Send {
        service_fn(move |mut req: Request<Incoming>| {
            self.prepare(&mut req);
            let waits = waits.clone();
            self.router
                .clone()
                .oneshot(req)
                .map_ok(move |response| response.map(|body| waits.watch(body)))
        })
    }

    /// Puts what the handlers take from the connection into `req`'s extensions.
    pub(super) fn prepare<B>(&self, req: &mut Request<B>) {
        if let Some(asked) = &self.asked {
            asked.store(true, Ordering::Relaxed);
        }
        let extensions = req.extensions_mut();
        extensions.insert(self.limit.clone());
        if let Some(backlog) = &self.backlog {
            extensions.insert(backlog.clone());
        }
        extensions.insert(self.stop.clone());
        extensions.insert(self.registry.clone());
        extensions.insert(ConnectInfo(self.peer));
    }

    pub(super) fn router(&self) -> Router {
        self.router.clone()
    }
}

/// One TLS connection: the handshake within `header_timeout`, then HTTP/2 or HTTP/1.1 as
/// ALPN chose.
async fn serve_tls(
    handshake: tokio_rustls::Accept<StallGuard<BoundedSendQueue>>,
    mut per_connection: PerConnection,
    (http1, http2): (Arc<Http1>, Http2),
    header_timeout: Duration,
    draining: CancellationToken,
) {
    let peer = per_connection.peer;
    let mut tls = tokio::select! {
        _ = draining.cancelled() => return,
        done = tokio::time::timeout(header_timeout, handshake) => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not done within header_timeout");
                return;
            }
        },
    };
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
    if tls.get_ref().1.alpn_protocol() != Some(tls::H2) {
        return http1::serve(tls, per_connection, http1, header_timeout, draining).await;
    }
    // The connection's Backlog holds a body until its last chunk reached the socket, one
    // body per connection; HTTP/2's streams are paced by their windows instead.
    per_connection.backlog = None;
    let asked = Arc::new(AtomicBool::new(false));
    per_connection.asked = Some(Arc::clone(&asked));
    let (waits, limit) = (WindowWaits::new(peer), per_connection.limit.clone());
    let service = per_connection.h2_service(waits.clone());
    let conn = http2.serve_connection(TokioIo::new(tls), service);
    // hyper's header_read_timeout is HTTP/1's: a client that opens no stream within
    // header_timeout is sent GOAWAY here.
    let silent = async move {
        tokio::time::sleep(header_timeout).await;
        if asked.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = silent => {}
        _ = draining.cancelled() => {}
        never = waits.cut_stalled(&limit) => match never {},
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn => {}
        never = waits.cut_stalled(&limit) => match never {},
    }
}

/// Serves `conn` to its end; once `draining` is cancelled, lets it finish the request it
/// has and takes no more.
pub(super) async fn until_drained<C: Future>(
    conn: C,
    draining: CancellationToken,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
) {
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = draining.cancelled() => {
            graceful_shutdown(conn.as_mut());
            let _ = conn.await;
        }
    }
}

/// A server serving in the background; stopped on drop.
pub struct RunningServer {
    addr: SocketAddr,
    tls: bool,
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
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, path)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// A held stream's connection task lives as long as the stream: hyper's took 1.8 KB
    /// plus its two 8 KiB buffers; weir's own must stay a small fraction of that.
    #[tokio::test]
    async fn an_http1_connections_task_is_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tcp, _) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let tcp = tcp.expect("connect");
        let backlog = Backlog::default();
        let limit = StallLimit::new(Duration::from_secs(60));
        let io = StallGuard::new(
            BoundedSendQueue::new(tcp, 64 << 10, backlog.clone()),
            limit.clone(),
        );
        let per_connection = PerConnection {
            router: Router::new(),
            limit,
            backlog: Some(backlog),
            asked: None,
            stop: Shutdown::new(CancellationToken::new(), TaskTracker::new()),
            registry: Registry::default(),
            peer: addr,
        };
        let task = http1::serve(
            io,
            per_connection,
            Arc::new(hyper::server::conn::http1::Builder::new()),
            Duration::from_secs(1),
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1536, "a connection's task takes {size} bytes");
    }
}
