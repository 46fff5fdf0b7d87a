//! The mock as a server: routes, the accept loop (a reset switch per connection), bind, run and shutdown.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{Json, Response};
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::anthropic::Anthropic;
use super::config::MockLlmConfig;
use super::handler::{error, respond};
use super::openai::OpenAi;
use super::reset::{ResetSwitch, ResettableTcp};
use super::state::MockLlm;
use super::stats::MockStats;

/// How long a shutdown waits for connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl MockLlm {
    /// The routes, for embedding in another axum app. Served this way an injected `reset`
    /// closes the connection without a RST (the client still sees a truncated body).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", get(openai).post(openai))
            .route("/v1/messages", get(anthropic).post(anthropic))
            .route("/stats", get(stats))
            .fallback(not_found)
            .with_state(self.clone())
    }

    /// Serves HTTP/1.1 and h2c on `listener` until the shutdown token is cancelled; then stops
    /// accepting, ends every open stream with an error, and waits up to [`SHUTDOWN_GRACE`]
    /// for the connections to close.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        let router = self.router();
        let shutdown = self.shutdown_token();
        let graceful = GracefulShutdown::new();
        // HTTP/1.1, and HTTP/2 when a connection opens with its preface (h2c).
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http2()
            .max_concurrent_streams(self.config().http2_max_streams);
        loop {
            let tcp = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _peer)) => tcp,
                    Err(_) => {
                        // Out of descriptors or a connection gone before accept: let it pass.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let switch = ResetSwitch::default();
            let io = TokioIo::new(ResettableTcp::new(tcp, switch.clone()));
            let router = router.clone();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(switch.clone());
                router.clone().oneshot(req)
            });
            let conn = http.serve_connection(io, service);
            let conn = graceful.watch(conn.into_owned());
            let open = self.counters().connection();
            tokio::spawn(async move {
                let _ = conn.await;
                drop(open);
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
        Ok(())
    }

    /// Binds `addr` (`127.0.0.1:0` for a free port) and serves in a spawned task.
    pub async fn bind(addr: SocketAddr, config: MockLlmConfig) -> io::Result<RunningMockLlm> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mock = MockLlm::new(config);
        let task = tokio::spawn(mock.clone().serve(listener));
        Ok(RunningMockLlm {
            addr,
            mock,
            task: Some(task),
        })
    }
}

/// A mock serving in the background. Dropping it shuts it down (without waiting).
#[derive(Debug)]
pub struct RunningMockLlm {
    addr: SocketAddr,
    mock: MockLlm,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl RunningMockLlm {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` followed by `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn mock(&self) -> &MockLlm {
        &self.mock
    }

    pub fn stats(&self) -> MockStats {
        self.mock.stats()
    }

    /// Stops accepting, ends the open streams, and waits for the server task.
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.mock.shutdown_token().cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningMockLlm {
    fn drop(&mut self) {
        self.mock.shutdown_token().cancel();
    }
}

/// Serves `config.listen` until Ctrl-C.
pub async fn run(config: MockLlmConfig) -> io::Result<()> {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let signal = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let served = run_until(config, shutdown).await;
    signal.abort();
    served
}

/// Serves `config.listen` until `shutdown` is cancelled, announcing the address on stderr.
pub async fn run_until(config: MockLlmConfig, shutdown: CancellationToken) -> io::Result<()> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
    })?;
    let addr = listener.local_addr()?;
    eprintln!(
        "weir mock-llm: listening on http://{addr}  (POST|GET /v1/chat/completions, /v1/messages; GET /stats)"
    );
    MockLlm::with_shutdown(config, shutdown)
        .serve(listener)
        .await
}

async fn openai(State(mock): State<MockLlm>, req: Request) -> Response {
    respond::<OpenAi>(mock, req).await
}

async fn anthropic(State(mock): State<MockLlm>, req: Request) -> Response {
    respond::<Anthropic>(mock, req).await
}

async fn stats(State(mock): State<MockLlm>) -> Json<MockStats> {
    Json(mock.stats())
}

async fn not_found(req: Request) -> Response {
    let m = format!(
        "no route for {} {}; try /v1/chat/completions, /v1/messages or /stats",
        req.method(),
        req.uri().path()
    );
    error::<OpenAi>(StatusCode::NOT_FOUND, &m)
}
