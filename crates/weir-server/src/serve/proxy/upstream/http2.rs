//! HTTP/2 to the upstream: many streams over a few connections, each stream paced by its
//! own flow-control window.
//!
//! A stream's window is the route's `receive_buffer`, and a WINDOW_UPDATE for it is sent
//! only when the stream is read again, which its driver does only once the client has
//! taken what the last read gave: a slow client holds back its own stream and no other on
//! the same connection. The connection's window is never the limit (every stream's own
//! window bounds what the connection can hold). A stream dropped before its end is reset
//! (RST_STREAM CANCEL); its connection carries on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http::{HeaderName, HeaderValue, Method, Request};
use bytes::Bytes;
use h2::client::SendRequest;
use h2::RecvStream;

use super::conn::Io;
use super::{BodyError, SendError};
use crate::serve::config::MAX_H2_WINDOW;
use crate::serve::metrics::UPSTREAM_CONNECTIONS;

/// Largest response head accepted, as over HTTP/1.1.
const MAX_HEADER_LIST: u32 = 64 << 10;

/// One connection: what sends requests on it, and the streams it carries now.
struct Connection {
    send: SendRequest<Bytes>,
    streams: Arc<AtomicUsize>,
    /// The connection ended, or the upstream said GOAWAY: no new stream goes on it.
    closed: Arc<AtomicBool>,
    /// A response came on it: the upstream speaks HTTP/2.
    proven: Arc<AtomicBool>,
}

impl Connection {
    fn has_room(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.streams.load(Ordering::Acquire) < self.send.current_max_send_streams()
    }
}

/// The HTTP/2 connections of one route's upstream.
pub(super) struct Http2Pool {
    /// Connections streams are spread over before any is full.
    spread: usize,
    receive_buffer: u32,
    connections: Mutex<Vec<Arc<Connection>>>,
    /// Connections open now, in `/metrics` by route.
    open: metrics::Gauge,
    /// One connection is opened at a time: a burst of requests shares the first.
    opening: tokio::sync::Mutex<()>,
}

impl Http2Pool {
    pub(super) fn new(route: &str, spread: usize, receive_buffer: u32) -> Self {
        Http2Pool {
            spread: spread.max(1),
            receive_buffer: receive_buffer.max(1),
            connections: Mutex::default(),
            open: metrics::gauge!(UPSTREAM_CONNECTIONS, "route" => route.to_string()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// The connection a new stream goes on, its place on it taken, if one has room and
    /// none should be added.
    fn pick(&self) -> Option<(Arc<Connection>, StreamCount)> {
        let mut connections = self.lock();
        connections.retain(|c| !c.closed.load(Ordering::Acquire));
        let spread = connections.len() >= self.spread;
        let least = connections
            .iter()
            .filter(|c| c.has_room())
            .min_by_key(|c| c.streams.load(Ordering::Acquire))?;
        (spread || least.streams.load(Ordering::Acquire) == 0)
            .then(|| (Arc::clone(least), StreamCount::new(&least.streams)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Connection>>> {
        // The list stays valid whatever panicked while holding it.
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts HTTP/2 on `io`, a connection made before the protocol was known.
    pub(super) async fn adopt(&self, io: Io) -> Result<(), SendError> {
        self.add(io).await.map(drop)
    }

    /// Starts HTTP/2 on `io` (the preface and settings) and adds it to the pool.
    async fn add(&self, io: Io) -> Result<Arc<Connection>, SendError> {
        let protocol = |e: h2::Error| SendError::Protocol(e.to_string());
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(self.receive_buffer)
            // The whole connection may hold the largest window: each stream's own bounds it.
            .initial_connection_window_size(MAX_H2_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(protocol)?;
        let mut ping = connection.ping_pong();
        let closed = Arc::new(AtomicBool::new(false));
        let ended = Arc::clone(&closed);
        let open = self.open.clone();
        open.increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("upstream HTTP/2 connection ended: {e}");
            }
            ended.store(true, Ordering::Release);
            open.decrement(1.0);
        });
        // The peer's SETTINGS come before its answer to a PING: once it is here, its limit
        // of concurrent streams is known, and no burst overfills the new connection.
        if let Some(ping) = &mut ping {
            ping.ping(h2::Ping::opaque()).await.map_err(protocol)?;
        }
        let added = Arc::new(Connection {
            send,
            streams: Arc::default(),
            closed,
            proven: Arc::default(),
        });
        self.lock().push(Arc::clone(&added));
        Ok(added)
    }

    /// Sends a request on a pooled connection, or on a new one from `connect` when none
    /// has room; a request the upstream refused unprocessed (GOAWAY, REFUSED_STREAM) is
    /// sent again once, on a fresh connection.
    pub(super) async fn send<F, Fut>(
        &self,
        head: RequestHead<'_>,
        body: &[u8],
        connect: F,
    ) -> Result<Response, SendError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Io, SendError>>,
    {
        let mut retried = false;
        loop {
            let (connection, count) = match self.pick() {
                Some(picked) => picked,
                None => {
                    let _opening = self.opening.lock().await;
                    match self.pick() {
                        Some(picked) => picked,
                        None => {
                            let added = self.add(connect().await?).await?;
                            let count = StreamCount::new(&added.streams);
                            (added, count)
                        }
                    }
                }
            };
            match exchange(&connection, head.build()?, body, count).await {
                Err(Failure::Unprocessed(_)) if !retried => {
                    connection.closed.store(true, Ordering::Release);
                    retried = true;
                }
                Err(Failure::Unprocessed(e) | Failure::Other(e)) => {
                    return Err(if connection.proven.load(Ordering::Acquire) {
                        SendError::Stream(e.to_string())
                    } else {
                        connection.closed.store(true, Ordering::Release);
                        SendError::Protocol(e.to_string())
                    });
                }
                Ok(response) => return Ok(response),
            }
        }
    }
}

enum Failure {
    /// The upstream did not process the request: it may go again elsewhere.
    Unprocessed(h2::Error),
    Other(h2::Error),
}

impl From<h2::Error> for Failure {
    fn from(e: h2::Error) -> Self {
        if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
            Failure::Unprocessed(e)
        } else {
            Failure::Other(e)
        }
    }
}

/// One request and its response head on `connection`.
async fn exchange(
    connection: &Connection,
    request: Request<()>,
    body: &[u8],
    count: StreamCount,
) -> Result<Response, Failure> {
    let mut send = connection.send.clone().ready().await?;
    let (response, mut request_body) = send.send_request(request, body.is_empty())?;
    if !body.is_empty() {
        // Queued whole and sent as the upstream's window allows (bodies are size-limited).
        request_body.send_data(Bytes::copy_from_slice(body), true)?;
    }
    let response = response.await?;
    connection.proven.store(true, Ordering::Release);
    let (head, recv) = response.into_parts();
    Ok(Response {
        status: head.status.as_u16(),
        content_type: head
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes().to_vec()),
        body: Http2Body {
            recv,
            pending: Bytes::new(),
            held: Vec::new(),
            held_from: 0,
            unreleased: 0,
            failed: None,
            _request_body: request_body,
            _count: count,
        },
    })
}

/// A response's head and its body.
pub(super) struct Response {
    pub status: u16,
    pub content_type: Option<Vec<u8>>,
    pub body: Http2Body,
}

/// What a request is made of; built anew for each try (a request cannot be cloned).
pub(super) struct RequestHead<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    /// The client's headers passed on.
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl RequestHead<'_> {
    fn build(&self) -> Result<Request<()>, SendError> {
        let invalid = |what: &str| SendError::Protocol(format!("cannot send {what} over HTTP/2"));
        let mut request = Request::new(());
        *request.method_mut() =
            Method::from_bytes(self.method.as_bytes()).map_err(|_| invalid("the method"))?;
        *request.uri_mut() = self.uri.parse().map_err(|_| invalid("the upstream URL"))?;
        *request.version_mut() = axum::http::Version::HTTP_2;
        for (name, value) in self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("a header"))?;
            let value = HeaderValue::from_bytes(value).map_err(|_| invalid("a header"))?;
            request.headers_mut().append(name, value);
        }
        Ok(request)
    }
}

/// Counts a stream on its connection until it is dropped.
struct StreamCount(Arc<AtomicUsize>);

impl StreamCount {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        StreamCount(Arc::clone(count))
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body over HTTP/2. The window of the data handed out is given back at the next
/// read, that is once the client has taken it.
pub struct Http2Body {
    recv: RecvStream,
    /// The rest of the last DATA frame: a frame (up to 16 KiB) is handed out in reads the
    /// size of an HTTP/1.1 one, so the relay takes no more at once over either protocol.
    pending: Bytes,
    /// What came while the stream waited on its client, copied out of h2: a frame left in
    /// h2 costs a slot in its connection's queue (a queue that never shrinks) and keeps the
    /// whole read buffer it was cut from (8 KiB) alive. At most the window (the budget
    /// counts it); freed once handed out.
    held: Vec<u8>,
    /// Bytes of `held` already handed out.
    held_from: usize,
    unreleased: usize,
    /// A failure met after data: told once that data is handed out.
    failed: Option<h2::Error>,
    // Kept until the body ends: dropping both halves early resets the stream.
    _request_body: h2::SendStream<Bytes>,
    _count: StreamCount,
}

impl Http2Body {
    /// As [`super::BodyReader::poll_read_body`]: the DATA frames already here, up to `max`.
    pub(super) fn poll_read_body(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        mut data: impl FnMut(&[u8]),
    ) -> Poll<Result<bool, BodyError>> {
        if self.unreleased > 0 {
            let released = std::mem::take(&mut self.unreleased);
            // Fails only once the stream is closed, when the window no longer matters.
            let _ = self.recv.flow_control().release_capacity(released);
        }
        if self.held_from < self.held.len() {
            let end = self.held.len().min(self.held_from + max);
            data(&self.held[self.held_from..end]);
            self.unreleased = end - self.held_from;
            self.held_from = end;
            if end == self.held.len() {
                self.held = Vec::new();
                self.held_from = 0;
            }
            return Poll::Ready(Ok(false));
        }
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(BodyError::Http2(e)));
        }
        // A frame is often one token, and the relay works best fed as much as an HTTP/1.1
        // read brings.
        let mut taken = 0;
        while taken < max {
            if self.pending.is_empty() {
                let polled = match self.recv.poll_data(cx) {
                    Poll::Ready(polled) => polled,
                    Poll::Pending if taken == 0 => return Poll::Pending,
                    Poll::Pending => break,
                };
                match polled {
                    None if taken == 0 => return Poll::Ready(Ok(true)),
                    None => break,
                    Some(Ok(frame)) => self.pending = frame,
                    Some(Err(e)) if taken == 0 => return Poll::Ready(Err(BodyError::Http2(e))),
                    Some(Err(e)) => {
                        self.failed = Some(e);
                        break;
                    }
                }
            }
            let read = self.pending.split_to(self.pending.len().min(max - taken));
            taken += read.len();
            data(&read);
        }
        self.unreleased = taken;
        Poll::Ready(Ok(self.pending.is_empty() && self.recv.is_end_stream()))
    }

    /// Takes what the upstream sent while the stream waits on its client out of h2 into
    /// `held` (no window is given back), and asks to be woken when more comes.
    pub(crate) fn absorb(&mut self, cx: &mut Context<'_>) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.hold(&rest);
        }
        while self.failed.is_none() {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(frame))) => self.hold(&frame),
                Poll::Ready(Some(Err(e))) => self.failed = Some(e),
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
    }

    fn hold(&mut self, data: &[u8]) {
        if self.held_from > 0 {
            self.held.drain(..self.held_from);
            self.held_from = 0;
        }
        let want = self.held.len() + data.len();
        if want > self.held.capacity() {
            // Powers of two from 1 KiB: a full window fits exactly, with no doubling past it.
            let size = want.next_power_of_two().max(1024);
            self.held.reserve_exact(size - self.held.len());
        }
        self.held.extend_from_slice(data);
    }
}
