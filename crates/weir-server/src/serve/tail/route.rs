//! The `file_tail` route: one inotify watch for the route, one follower per client.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;

use super::follow::{Follower, Read, Start};
use super::lines::{parse_token, Format, LineWriter};
use crate::serve::config::FileTailRoute;
use crate::serve::console::{Registry, StreamInfo, Watched};
use crate::serve::reply::{json_error, wants_ndjson};
use crate::serve::send_queue::Backlog;
use crate::serve::shutdown::{last_event, Shutdown};
use crate::serve::stall::StallLimit;
use crate::serve::ws::{self, Frame, FrameSource};

/// What one read of a slow client takes.
const SLOW_READ: usize = 4 << 10;

/// Lines `?lines=` may ask for.
const MAX_LAST_LINES: usize = 100_000;

/// A `file_tail` route that cannot follow its file, naming its path.
#[derive(Debug, thiserror::Error)]
#[error("route {path}: {problem}")]
pub struct TailRouteError {
    pub path: String,
    pub problem: TailProblem,
}

/// Why a `file_tail` route cannot follow its file.
#[derive(Debug, thiserror::Error)]
pub enum TailProblem {
    #[error("file {}: {error}", .file.display())]
    Absolute {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("file {} has no directory", .0.display())]
    NoDirectory(PathBuf),
    #[error("cannot watch {}: {error}", .dir.display())]
    Watch { dir: PathBuf, error: notify::Error },
}

/// A route's configuration and the watch that wakes its readers.
pub struct TailRoute {
    config: FileTailRoute,
    file: PathBuf,
    changes: watch::Receiver<u64>,
    _watcher: notify::RecommendedWatcher,
    /// The route's path, shared by its readers' console entries.
    path: Arc<str>,
}

impl TailRoute {
    /// Watches the file's directory; fails, naming the route, when it cannot.
    pub fn new(config: FileTailRoute) -> Result<Self, TailRouteError> {
        let at = |problem| TailRouteError {
            path: config.path.clone(),
            problem,
        };
        let file = std::path::absolute(&config.file).map_err(|error| {
            at(TailProblem::Absolute {
                file: config.file.clone(),
                error,
            })
        })?;
        let dir = file
            .parent()
            .ok_or_else(|| at(TailProblem::NoDirectory(file.clone())))?
            .to_path_buf();
        let (tx, changes) = watch::channel(0u64);
        let watch_error = |error| {
            at(TailProblem::Watch {
                dir: dir.clone(),
                error,
            })
        };
        let mut watcher = notify::recommended_watcher(move |_event| {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        })
        .map_err(watch_error)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        Ok(TailRoute {
            path: Arc::from(config.path.as_str()),
            config,
            file,
            changes,
            _watcher: watcher,
        })
    }
}

/// `GET`: the file's lines as they are written, from where the client asked.
pub async fn handle(State(route): State<Arc<TailRoute>>, request: Request) -> Response {
    let (mut request, _body) = request.into_parts();
    let upgrade = ws::upgrade(&mut request).await;
    let shutdown = Shutdown::of(&request.extensions);
    if let Some(limit) = request.extensions.get::<StallLimit>() {
        limit.set(route.config.client_stall_timeout);
    }
    let pairs: Vec<(String, String)> = match Query::try_from_uri(&request.uri) {
        Ok(Query(p)) => p,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_query", &e.to_string()),
    };
    let mut start = Start::End;
    let mut grep = None;
    for (k, v) in &pairs {
        match k.as_str() {
            "from" if v == "start" => start = Start::Beginning,
            "from" if v == "end" => start = Start::End,
            "lines" => match v.parse::<usize>() {
                Ok(n) if n <= MAX_LAST_LINES => start = Start::LastLines(n),
                _ => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        &format!("lines: `{v}` is not a count from 0 to {MAX_LAST_LINES}"),
                    )
                }
            },
            "grep" if !v.is_empty() => grep = Some(v.as_bytes().to_vec()),
            _ => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    &format!("unknown parameter `{k}={v}` (from=start|end, lines=N, grep=TEXT)"),
                )
            }
        }
    }
    if let Some(id) = request.headers.get("last-event-id") {
        match id.to_str().ok().and_then(parse_token) {
            Some((inode, offset)) => start = Start::After { inode, offset },
            None => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_last_event_id",
                    "Last-Event-ID is not a token this route gave",
                )
            }
        }
    }
    let format = match upgrade {
        Some(_) => Format::Lines,
        None if wants_ndjson(&request.headers) => Format::Ndjson,
        None => Format::Sse,
    };
    let follower = match Follower::open(&route.file, start, route.changes.clone()) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(route = %route.config.path, "cannot read {}: {e}", route.file.display());
            return json_error(
                StatusCode::NOT_FOUND,
                "file_unreadable",
                &format!("the followed file cannot be read: {}", e.kind()),
            );
        }
    };
    // The client learns at once why nothing comes; the follower waits for the file (tail -F).
    let notice = follower.waiting_for_file().then(|| {
        tracing::info!(route = %route.config.path, "{} does not exist yet: waiting for it", route.file.display());
        missing_file_notice(format)
    });
    let chunk = (route.config.buffer as usize).clamp(1024, 64 << 10);
    let backlog = request.extensions.get::<Backlog>().cloned();
    let watched = Registry::of(&request.extensions).map(|registry| {
        registry.register(StreamInfo {
            route: Arc::clone(&route.path),
            kind: "file_tail",
            client: request
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
            budget: route.config.buffer,
            backlog: backlog.clone(),
            holds: None,
            stages: Vec::new(),
        })
    });
    let writer = LineWriter::new(format, route.config.max_line as usize, grep);
    let mut tail = Tail {
        follower,
        writer,
        chunk,
        keepalive: route.config.keepalive,
        format,
        inode: None,
        backlog,
        notice,
        watched,
    };
    if let Some(upgrade) = upgrade {
        return ws::respond(
            upgrade,
            route.config.buffer as usize,
            route.config.client_stall_timeout,
            LineFrames {
                pending: tail.notice.take().into_iter().collect(),
                tail,
            },
            &shutdown,
        );
    }
    let lines = futures::stream::unfold(tail, |mut tail| async move {
        let out = tail.next().await;
        Some((out, tail))
    });
    let body = Body::from_stream(shutdown.live(lines, last_event(format == Format::Sse)));
    let content_type = match format {
        Format::Sse => "text/event-stream",
        Format::Ndjson | Format::Lines => "application/x-ndjson",
    };
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One client's follower and the lines it has made of it.
struct Tail {
    follower: Follower,
    writer: LineWriter,
    chunk: usize,
    keepalive: Duration,
    format: Format,
    inode: Option<u64>,
    /// The connection's unsent chunk: a slow client is given no new one until it is sent.
    backlog: Option<Backlog>,
    /// Sent before any line: the file does not exist yet.
    notice: Option<String>,
    watched: Option<Watched>,
}

const MISSING_FILE: &str = r#"{"error": {"type": "file_missing", "message": "the followed file does not exist yet: waiting for it"}}"#;

/// The error event telling a client that the file is missing, in its format.
fn missing_file_notice(format: Format) -> String {
    match format {
        Format::Sse => format!("event: error\ndata: {MISSING_FILE}\n\n"),
        Format::Ndjson => format!("{MISSING_FILE}\n"),
        Format::Lines => MISSING_FILE.to_string(),
    }
}

impl Tail {
    /// The next bytes for the client: whole events, or a keep-alive. Reads only when the
    /// body is polled, that is when the client's socket took the last bytes.
    async fn next(&mut self) -> Result<Bytes, std::io::Error> {
        if let Some(notice) = self.notice.take() {
            return Ok(Bytes::from(notice));
        }
        if let Some(b) = &self.backlog {
            b.drained().await;
        }
        let bytes = match self.next_chunk().await? {
            Some(bytes) => bytes,
            None => Bytes::from_static(match self.format {
                Format::Sse => b": keep-alive\n\n",
                // NDJSON has no comments: an empty line is skipped by readers.
                Format::Ndjson | Format::Lines => b"\n",
            }),
        };
        if let Some(b) = &self.backlog {
            b.handed_a_chunk();
        }
        if let Some(w) = &self.watched {
            w.sent(bytes.len());
        }
        Ok(bytes)
    }

    /// Whole events from the next read, or `None` after `keepalive` without any.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, std::io::Error> {
        // A slow client's chunk waits in hyper until its socket takes it: give it small ones.
        let read_size = match &self.backlog {
            Some(b) if b.is_slow() => SLOW_READ.min(self.chunk),
            _ => self.chunk,
        };
        // Sized for a read's lines with their framing, so it is not grown by doubling.
        let mut out = Vec::with_capacity(read_size + read_size / 2);
        loop {
            // Allocated per read, not kept: a waiting client holds no buffer.
            let mut read = Vec::new();
            match self
                .follower
                .read(&mut read, read_size, self.keepalive)
                .await?
            {
                Read::Idle => return Ok(None),
                Read::Data { inode, offset, .. } => {
                    if self.inode.is_some_and(|i| i != inode) {
                        self.writer.reset();
                    }
                    self.inode = Some(inode);
                    self.writer.push(&read, inode, offset, &mut out);
                    if !out.is_empty() {
                        return Ok(Some(Bytes::from(out)));
                    }
                }
            }
        }
    }
}

/// A tail as WebSocket frames: one text frame per line.
struct LineFrames {
    tail: Tail,
    pending: VecDeque<String>,
}

impl FrameSource for LineFrames {
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                if let Some(w) = &self.tail.watched {
                    w.sent(line.len());
                }
                return Some(Frame::Text(line));
            }
            match self.tail.next_chunk().await {
                Err(e) => {
                    return Some(Frame::Close(
                        ws::CLOSE_ERROR,
                        format!("cannot read the file: {}", e.kind()),
                    ))
                }
                Ok(None) => return Some(Frame::Idle),
                Ok(Some(chunk)) => {
                    let text = String::from_utf8_lossy(&chunk);
                    self.pending
                        .extend(text.split_terminator('\n').map(str::to_string));
                }
            }
        }
    }
}
