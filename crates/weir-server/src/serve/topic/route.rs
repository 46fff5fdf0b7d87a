//! The `topic` route: `POST` publishes NDJSON lines, `GET` subscribes; UDP datagrams too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::gate::{Next, Offer, Policy, Subscriber, TopicCounters};
use crate::serve::config::TopicRoute;
use crate::serve::console::{Holds, Registry, StreamInfo, Watched};
use crate::serve::reply::{json_error, wants_ndjson};
use crate::serve::send_queue::Backlog;
use crate::serve::shutdown::{last_event, Shutdown};
use crate::serve::stall::StallLimit;
use crate::serve::ws::{self, Frame, FrameSource};

pub const TOPIC_PUBLISHED: &str = "weir_topic_published_total";
pub const TOPIC_DELIVERED: &str = "weir_topic_delivered_total";
pub const TOPIC_DROPPED: &str = "weir_topic_dropped_total";
pub const TOPIC_DISCONNECTED: &str = "weir_topic_disconnected_total";
pub const TOPIC_SUBSCRIBERS: &str = "weir_topic_subscribers";

/// Series per subscriber, rendered at each scrape from the subscribers connected then: a
/// subscriber's series go when it does, so clients coming and going leave none behind.
type SubscriberValue = fn(&Subscriber) -> u64;
const SUBSCRIBER_SERIES: [(&str, &str, &str, SubscriberValue); 5] = [
    (
        "weir_topic_subscriber_published_total",
        "counter",
        "Messages published to the topic since this subscriber joined.",
        |s| s.own.published.load(Ordering::Relaxed),
    ),
    (
        "weir_topic_subscriber_delivered_total",
        "counter",
        "Messages handed to this subscriber's connection.",
        |s| s.own.delivered.load(Ordering::Relaxed),
    ),
    (
        "weir_topic_subscriber_dropped_total",
        "counter",
        "Messages this subscriber lost to its gate.",
        |s| s.own.dropped.load(Ordering::Relaxed),
    ),
    (
        "weir_topic_subscriber_disconnected_total",
        "counter",
        "1 once this subscriber was cut off under `disconnect`.",
        |s| s.own.disconnected.load(Ordering::Relaxed),
    ),
    (
        "weir_topic_subscriber_queued_bytes",
        "gauge",
        "Bytes waiting in this subscriber's queue.",
        |s| s.queued_bytes() as u64,
    ),
];

/// The per-subscriber series of `topics` in Prometheus' text format.
pub fn render_subscriber_metrics(topics: &[Arc<Topic>]) -> String {
    use std::fmt::Write as _;
    let connected: Vec<(String, Connected)> = topics
        .iter()
        .map(|t| {
            let label = t.config.path.replace('\\', "\\\\").replace('"', "\\\"");
            let subs = t
                .subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            (label, subs)
        })
        .collect();
    let mut out = String::new();
    for (name, kind, help, value) in SUBSCRIBER_SERIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (topic, subs) in &connected {
            for (id, sub) in subs {
                let v = value(sub);
                let _ = writeln!(out, "{name}{{topic=\"{topic}\",subscriber=\"{id}\"}} {v}");
            }
        }
    }
    out
}

/// A topic as the console shows it.
#[derive(serde::Serialize)]
pub struct TopicSummary {
    pub path: String,
    pub subscribers: usize,
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub disconnected: u64,
    /// Bytes waiting in all its subscribers' queues.
    pub queued: u64,
}

/// Subscribers by the number each was given.
type Connected = Vec<(u64, Arc<Subscriber>)>;

/// A topic route that cannot start, naming its path.
#[derive(Debug, thiserror::Error)]
#[error("route {path}: {problem}")]
pub struct TopicError {
    pub path: String,
    pub problem: TopicProblem,
}

/// Why a topic route cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TopicProblem {
    #[error("a topic needs the async runtime")]
    NoRuntime,
    #[error("udp_listen {addr}: {error}")]
    Udp {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// A topic: its subscribers and counters.
pub struct Topic {
    config: TopicRoute,
    /// The route's path, shared by its subscribers' console entries.
    path: Arc<str>,
    subscribers: Mutex<Connected>,
    next_id: AtomicU64,
    counters: Arc<TopicCounters>,
}

impl Topic {
    /// Builds the topic; binds `udp_listen` and starts the metrics refresh (inside a runtime).
    pub fn new(config: TopicRoute) -> Result<Arc<Self>, TopicError> {
        let topic = Arc::new(Topic {
            path: Arc::from(config.path.as_str()),
            config,
            subscribers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            counters: Arc::default(),
        });
        let at = |problem| TopicError {
            path: topic.config.path.clone(),
            problem,
        };
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| at(TopicProblem::NoRuntime))?;
        if let Some(addr) = topic.config.udp_listen {
            let udp_error = |error| at(TopicProblem::Udp { addr, error });
            let socket = std::net::UdpSocket::bind(addr)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(udp_error)?;
            let udp = {
                let _entered = runtime.enter();
                tokio::net::UdpSocket::from_std(socket).map_err(udp_error)?
            };
            runtime.spawn(receive_udp(Arc::downgrade(&topic), udp));
        }
        runtime.spawn(publish_metrics(Arc::downgrade(&topic)));
        Ok(topic)
    }

    /// Its counters, and its subscribers' queues added up.
    pub fn summary(&self) -> TopicSummary {
        let subs = self.subscribers();
        let c = &self.counters;
        TopicSummary {
            path: self.config.path.clone(),
            subscribers: subs.len(),
            published: c.published.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            disconnected: c.disconnected.load(Ordering::Relaxed),
            queued: subs.iter().map(|s| s.queued_bytes() as u64).sum(),
        }
    }

    fn subscribers(&self) -> Vec<Arc<Subscriber>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, s)| Arc::clone(s))
            .collect()
    }

    /// Hands `message` to every subscriber under `policy`; under `block`, waits for room.
    async fn publish(&self, message: Bytes, policy: Policy) {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        for sub in self.subscribers() {
            sub.own.published.fetch_add(1, Ordering::Relaxed);
            while sub.offer(&message, policy) == Offer::Wait {
                sub.room(message.len()).await;
            }
        }
    }

    fn subscribe(self: &Arc<Self>) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Subscriber::new(
            self.config.buffer as usize,
            Arc::clone(&self.counters),
        ));
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, Arc::clone(&sub)));
        Subscription {
            topic: Arc::clone(self),
            id,
            sub,
        }
    }
}

/// A subscriber registered in its topic; dropping it (the client went away) lets go.
struct Subscription {
    topic: Arc<Topic>,
    id: u64,
    sub: Arc<Subscriber>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.topic
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| *id != self.id);
        self.sub.close();
    }
}

async fn receive_udp(topic: std::sync::Weak<Topic>, socket: tokio::net::UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok(n) = socket.recv(&mut buf).await else {
            continue;
        };
        let Some(topic) = topic.upgrade() else {
            return;
        };
        // A datagram cannot wait: under `block` a full subscriber loses it, counted.
        let policy = match topic.config.policy {
            Policy::Block => Policy::DropNewest,
            p => p,
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let line = text.trim_end_matches(['\r', '\n']);
        topic.publish(Bytes::from(line.to_string()), policy).await;
    }
}

async fn publish_metrics(topic: std::sync::Weak<Topic>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(topic) = topic.upgrade() else {
            return;
        };
        let path = topic.config.path.clone();
        let c = &topic.counters;
        for (name, counter) in [
            (TOPIC_PUBLISHED, &c.published),
            (TOPIC_DELIVERED, &c.delivered),
            (TOPIC_DROPPED, &c.dropped),
            (TOPIC_DISCONNECTED, &c.disconnected),
        ] {
            metrics::counter!(name, "topic" => path.clone())
                .absolute(counter.load(Ordering::Relaxed));
        }
        let n = topic
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        metrics::gauge!(TOPIC_SUBSCRIBERS, "topic" => path).set(n as f64);
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(str::trim);
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

/// `POST`: each NDJSON line of the body is one message; `{"published": N}` at its end.
pub async fn publish(State(topic): State<Arc<Topic>>, request: Request) -> Response {
    let keys = &topic.config.publish_keys;
    if !keys.is_empty()
        && !presented_key(request.headers()).is_some_and(|k| keys.iter().any(|x| x == k))
    {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a publish key is needed",
        );
    }
    let max_line = topic.config.max_line as usize;
    let mut body = request.into_body().into_data_stream();
    let mut pending = BytesMut::new();
    let mut line_no = 0u64;
    let mut published = 0u64;
    let mut ended = false;
    while !ended {
        match body.next().await {
            Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
            Some(Err(e)) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    &format!("the body broke off after {published} messages: {e}"),
                )
            }
            None => ended = true,
        }
        loop {
            let end = match memchr::memchr(b'\n', &pending) {
                Some(end) => end,
                None if ended && !pending.is_empty() => pending.len(),
                None => break,
            };
            let mut line = pending.split_to(end.min(pending.len())).freeze();
            if !pending.is_empty() {
                let _newline = pending.split_to(1);
            }
            line_no += 1;
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if line.len() > max_line {
                return too_long(line_no, max_line, published);
            }
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&line) {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_ndjson",
                    &format!("line {line_no} is not JSON ({e}); {published} messages before it were published"),
                );
            }
            topic.publish(line, topic.config.policy).await;
            published += 1;
        }
        if pending.len() > max_line {
            return too_long(line_no + 1, max_line, published);
        }
    }
    axum::Json(serde_json::json!({ "published": published })).into_response()
}

fn too_long(line_no: u64, max_line: usize, published: u64) -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        "line_too_long",
        &format!("line {line_no} is over {max_line} bytes; {published} messages before it were published"),
    )
}

/// How messages reach a subscriber.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

/// `GET`: every message published from now on, and what was dropped, in order.
pub async fn subscribe(State(topic): State<Arc<Topic>>, request: Request) -> Response {
    let (mut request, _body) = request.into_parts();
    let upgrade = ws::upgrade(&mut request).await;
    let shutdown = Shutdown::of(&request.extensions);
    if let Some(limit) = request.extensions.get::<StallLimit>() {
        limit.set(topic.config.client_stall_timeout);
    }
    let backlog = request.extensions.get::<Backlog>().cloned();
    let subscription = topic.subscribe();
    let watched = Registry::of(&request.extensions).map(|registry| {
        registry.register(StreamInfo {
            route: Arc::clone(&topic.path),
            kind: "topic",
            client: request
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
            budget: topic.config.buffer,
            backlog: backlog.clone(),
            holds: Some(Arc::clone(&subscription.sub) as Arc<dyn Holds>),
            stages: Vec::new(),
        })
    });
    if let Some(upgrade) = upgrade {
        let frames = MessageFrames {
            subscription,
            keepalive: topic.config.keepalive,
            closing: false,
            watched,
        };
        return ws::respond(
            upgrade,
            topic.config.buffer as usize,
            topic.config.client_stall_timeout,
            frames,
            &shutdown,
        );
    }
    let format = if wants_ndjson(&request.headers) {
        Format::Ndjson
    } else {
        Format::Sse
    };
    let keepalive = topic.config.keepalive;
    let messages = futures::stream::unfold(Some((subscription, watched)), move |state| {
        let backlog = backlog.clone();
        async move {
            let (subscription, watched) = state?;
            // A slow client is given no new message until its connection sent the last.
            if let Some(b) = &backlog {
                b.drained().await;
            }
            let (bytes, go_on) = next_bytes(&subscription.sub, format, keepalive).await;
            if let Some(b) = &backlog {
                b.handed_a_chunk();
            }
            if let Some(w) = &watched {
                w.sent(bytes.len());
            }
            Some((
                Ok::<_, std::io::Error>(bytes),
                go_on.then_some((subscription, watched)),
            ))
        }
    });
    let body = Body::from_stream(shutdown.live(messages, last_event(format == Format::Sse)));
    let mut response = Response::new(body);
    let content_type = match format {
        Format::Sse => "text/event-stream",
        Format::Ndjson => "application/x-ndjson",
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

const TOO_SLOW: &str = r#"{"error": {"type": "too_slow", "message": "this subscriber's buffer was full: disconnected"}}"#;

/// A subscription as WebSocket frames: a text frame per message, `{"dropped": N}` where
/// messages were lost, and under `disconnect` an error frame, then close 1008.
struct MessageFrames {
    subscription: Subscription,
    keepalive: Duration,
    closing: bool,
    watched: Option<Watched>,
}

impl FrameSource for MessageFrames {
    async fn next_frame(&mut self) -> Option<Frame> {
        let frame = self.frame().await;
        if let (Some(Frame::Text(text)), Some(w)) = (&frame, &self.watched) {
            w.sent(text.len());
        }
        frame
    }
}

impl MessageFrames {
    async fn frame(&mut self) -> Option<Frame> {
        if self.closing {
            return Some(Frame::Close(ws::CLOSE_TOO_SLOW, "too slow".to_string()));
        }
        loop {
            let sub = &self.subscription.sub;
            return Some(match sub.take() {
                Next::Message(m) => Frame::Text(String::from_utf8_lossy(&m).into_owned()),
                Next::Dropped(n) => Frame::Text(format!("{{\"dropped\": {n}}}")),
                Next::Disconnected => {
                    self.closing = true;
                    Frame::Text(TOO_SLOW.to_string())
                }
                Next::Empty => {
                    match tokio::time::timeout(self.keepalive, sub.ready.notified()).await {
                        Ok(()) => continue,
                        Err(_) => Frame::Idle,
                    }
                }
            });
        }
    }
}

/// The subscriber's next bytes, taken only when the body is polled; `false` ends it.
async fn next_bytes(sub: &Subscriber, format: Format, keepalive: Duration) -> (Bytes, bool) {
    loop {
        match sub.take() {
            Next::Message(m) => {
                let mut out = Vec::with_capacity(m.len() + 8);
                match format {
                    Format::Sse => {
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(&m);
                        out.extend_from_slice(b"\n\n");
                    }
                    Format::Ndjson => {
                        out.extend_from_slice(&m);
                        out.push(b'\n');
                    }
                }
                return (Bytes::from(out), true);
            }
            Next::Dropped(n) => {
                let text = match format {
                    Format::Sse => format!("event: dropped\ndata: {{\"count\": {n}}}\n\n"),
                    Format::Ndjson => format!("{{\"dropped\": {n}}}\n"),
                };
                return (Bytes::from(text), true);
            }
            Next::Disconnected => {
                let why = TOO_SLOW;
                let text = match format {
                    Format::Sse => format!("event: error\ndata: {why}\n\n"),
                    Format::Ndjson => format!("{why}\n"),
                };
                return (Bytes::from(text), false);
            }
            Next::Empty => {
                if tokio::time::timeout(keepalive, sub.ready.notified())
                    .await
                    .is_err()
                {
                    let ping: &'static [u8] = match format {
                        Format::Sse => b": keep-alive\n\n",
                        Format::Ndjson => b"\n",
                    };
                    return (Bytes::from_static(ping), true);
                }
            }
        }
    }
}
