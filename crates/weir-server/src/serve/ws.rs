//! WebSocket out: text frames pulled from a source only once the previous frame has been
//! written, a write buffer bounded by the route's `buffer`, pings while idle, and close
//! codes that say why.
//!
//! tungstenite buffers writes without limit unless told: each frame is sent and flushed
//! before the next is taken, and `max_write_buffer_size` refuses anything beyond.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::Response;
use futures::{FutureExt, SinkExt};
use tokio_util::sync::CancellationToken;

use super::shutdown::Shutdown;

/// What a source gives a WebSocket next.
pub enum Frame {
    Text(String),
    /// Nothing for a while: a ping keeps the connection (and its stall timer) honest.
    Idle,
    /// The last frame: close with `code` (RFC 6455) and `reason`.
    Close(u16, String),
}

/// Where frames come from; asked again only after the last frame was written.
pub trait FrameSource: Send + 'static {
    /// `None`: the source ended.
    fn next_frame(&mut self) -> impl Future<Output = Option<Frame>> + Send;
}

/// What a server reads from a client at once.
const READ_BUFFER: usize = 4 << 10;
/// Frames ready together are written together, up to this much.
const WRITE_BATCH: usize = 16 << 10;

/// Policy violation: the code for a client too slow for its gate.
pub const CLOSE_TOO_SLOW: u16 = 1008;
/// Going away: the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Internal error: the source failed.
pub const CLOSE_ERROR: u16 = 1011;

/// The upgrade, if `parts` asks for one.
pub async fn upgrade(parts: &mut Parts) -> Option<WebSocketUpgrade> {
    let asks = parts
        .headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !asks {
        return None;
    }
    WebSocketUpgrade::from_request_parts(parts, &()).await.ok()
}

/// Answers the upgrade and pumps `source` into the socket.
pub fn respond(
    ws: WebSocketUpgrade,
    buffer: usize,
    stall: Duration,
    source: impl FrameSource,
    shutdown: &Shutdown,
) -> Response {
    let draining = shutdown.draining().clone();
    // The session outlives hyper's connection: the server waits for it on shutdown.
    let session = shutdown.task();
    // Clients send next to nothing (pongs, a close): tungstenite's 128 KiB read buffer
    // would be most of what a subscriber costs.
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BATCH)
        .max_write_buffer_size(buffer.max(WRITE_BATCH * 2))
        .on_upgrade(move |socket| async move {
            pump(socket, source, stall, draining).await;
            drop(session);
        })
}

async fn pump(
    mut socket: WebSocket,
    mut source: impl FrameSource,
    stall: Duration,
    draining: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            () = draining.cancelled() => {
                return close(socket, CLOSE_GOING_AWAY, "server shutting down").await;
            }
            frame = source.next_frame() => frame,
            incoming = socket.recv() => match incoming {
                // Pongs and whatever the client says are read and dropped; a close or an
                // error means it is gone.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
        };
        let mut frame = frame;
        // Frames ready now go out in one write; the next is taken only after the flush.
        let sent = tokio::time::timeout(stall, async {
            loop {
                let message = match frame {
                    None => return Err(Some((1000, "end".to_string()))),
                    Some(Frame::Text(t)) => Message::text(t),
                    Some(Frame::Idle) => Message::Ping(Default::default()),
                    Some(Frame::Close(code, reason)) => return Err(Some((code, reason))),
                };
                socket.feed(message).await.map_err(|_| None)?;
                match source.next_frame().now_or_never() {
                    Some(next @ Some(Frame::Text(_))) => frame = next,
                    Some(other) => {
                        socket.flush().await.map_err(|_| None)?;
                        frame = other;
                    }
                    None => return socket.flush().await.map_err(|_| None),
                }
            }
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(Some((code, reason)))) => return close(socket, code, &reason).await,
            Ok(Err(None)) => return,
            Err(_) => return close(socket, CLOSE_TOO_SLOW, "took no bytes for too long").await,
        }
    }
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}
