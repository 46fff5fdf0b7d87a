//! HTTP/1.1 connections served by weir itself, so that a held stream costs little more
//! than what it holds.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for each connection's life
//! (it reads into the first mid-response, to notice a close): most of a held slow
//! stream's heap. Here a request head is read into a buffer freed once it is parsed, the
//! request body is handed to the handler as it arrives, the response head and each body
//! chunk are written straight to the socket, and while the body has nothing to give the
//! socket is watched for the client's close with a few bytes of stack.
//!
//! What weir does not serve itself ([`head::Parsed::Hyper`]: upgrades, `Expect`, chunked
//! request bodies, `HEAD`, other versions, heads it cannot read) goes to hyper with the
//! connection, the bytes already read in front.

mod head;
mod rewind;

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody as _};
use axum::http::{Request, Response};
use bytes::Bytes;
use futures::channel::mpsc;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::send_queue::PacedByBacklog;
use super::server::{until_drained, Http1, PerConnection};
use head::{Framing, Head, Parsed, MAX_HEAD};
use rewind::Rewind;

/// What one read of a request head takes at most.
const HEAD_READ: usize = 1024;

/// What one read of a request body takes at most.
const BODY_READ: usize = 8 * 1024;

/// What one look for the client's close reads at most (pipelined bytes are kept).
const CLOSE_READ: usize = 256;

/// Serves requests on `io` until the client or the server closes it, or hands it to
/// hyper at the first request weir does not serve itself.
pub(super) async fn serve<I>(
    mut io: I,
    per_connection: PerConnection,
    hyper: Arc<Http1>,
    header_timeout: Duration,
    draining: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Bytes read and not yet used: a head being read, or what a client sent after one.
    let mut read = Vec::new();
    loop {
        let parsed = tokio::select! {
            _ = draining.cancelled() => return,
            parsed = tokio::time::timeout(header_timeout, read_head(&mut io, &mut read)) => parsed,
        };
        let head = match parsed {
            Ok(Ok(Some(Parsed::Own(head)))) => *head,
            Ok(Ok(Some(_))) => {
                let conn = hyper
                    .serve_connection(
                        TokioIo::new(Rewind::new(io, read)),
                        per_connection.service(),
                    )
                    .with_upgrades();
                // Boxed: hyper's connection would otherwise take room in every task.
                return Box::pin(until_drained(conn, draining, |c| c.graceful_shutdown())).await;
            }
            Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!("request head not read within header_timeout: closing");
                return;
            }
        };
        // Each step's values are locals of this loop or arguments of a future awaited
        // and gone: what a held stream's task keeps is only what its response needs.
        let head_keep_alive = head.keep_alive;
        let (request, mut feed) = request_for(head, &mut read);
        // Boxed: the handler's call is large and done once the response starts.
        let answered = Box::pin(answer(
            &mut io,
            &mut read,
            request,
            &mut feed,
            &per_connection,
        ));
        let Some(response) = answered.await else {
            tracing::debug!("the client closed the connection before the response");
            return;
        };
        let keep_alive = head_keep_alive && feed.is_done() && !draining.is_cancelled();
        drop(feed);
        let (mut parts, body) = response.into_parts();
        let (head, framing) = head::encode(&mut parts, body.size_hint().exact(), keep_alive);
        let paced = parts.extensions.get::<PacedByBacklog>().is_some();
        drop(parts);
        if let Err(e) = respond(&mut io, &mut read, head, framing, body, paced).await {
            tracing::debug!("connection ended mid-response: {e}");
            return;
        }
        if !keep_alive || draining.is_cancelled() {
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// Reads until `read` holds a whole head; `None` once the client closed.
async fn read_head<I: AsyncRead + Unpin>(
    io: &mut I,
    read: &mut Vec<u8>,
) -> io::Result<Option<Parsed>> {
    loop {
        if !read.is_empty() {
            match head::parse(read) {
                Parsed::Partial if read.len() < MAX_HEAD => {}
                Parsed::Partial => return Ok(Some(Parsed::Hyper)),
                parsed => return Ok(Some(parsed)),
            }
        }
        let room = HEAD_READ.min(MAX_HEAD - read.len());
        let n = poll_fn(|cx| poll_read_into(io, cx, read, room)).await?;
        if n == 0 {
            return Ok(None);
        }
    }
}

/// Reads at most `room` bytes onto the end of `read` (through a stack buffer, so that
/// `read` grows only by what came).
fn poll_read_into<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    read: &mut Vec<u8>,
    room: usize,
) -> Poll<io::Result<usize>> {
    let mut chunk = [0u8; HEAD_READ];
    let mut buf = ReadBuf::new(&mut chunk[..room.min(HEAD_READ)]);
    ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    read.extend_from_slice(buf.filled());
    Poll::Ready(Ok(buf.filled().len()))
}

/// The request for `head`, its body fed from what `read` holds, then from the socket.
fn request_for(head: Head, read: &mut Vec<u8>) -> (Request<Body>, BodyFeed) {
    read.drain(..head.len);
    let in_buffer = usize::try_from(head.body_len)
        .unwrap_or(usize::MAX)
        .min(read.len());
    let first = Bytes::copy_from_slice(&read[..in_buffer]);
    read.drain(..in_buffer);
    if read.is_empty() {
        // The head's buffer is not kept while the response streams.
        *read = Vec::new();
    }
    let mut feed = BodyFeed {
        first: (!first.is_empty()).then_some(first),
        remaining: head.body_len - in_buffer as u64,
        tx: None,
        cut: false,
    };
    let body = if head.body_len == 0 {
        Body::empty()
    } else {
        let (tx, rx) = mpsc::channel(0);
        feed.tx = Some(tx);
        Body::from_stream(rx)
    };
    (Request::from_parts(head.parts, body), feed)
}

/// The handler's response, the body fed to it meanwhile; `None` if the client closed first.
/// Its own future, so that the handler's call takes no room in a connection's task while
/// the response streams.
async fn answer<I>(
    io: &mut I,
    read: &mut Vec<u8>,
    mut request: Request<Body>,
    feed: &mut BodyFeed,
    per_connection: &PerConnection,
) -> Option<Response<Body>>
where
    I: AsyncRead + Unpin,
{
    per_connection.prepare(&mut request);
    let call = per_connection.router().oneshot(request);
    tokio::pin!(call);
    poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        if feed.tx.is_some() && feed.poll(io, cx).is_pending() {
            return Poll::Pending;
        }
        watch_for_close(io, cx, read).map(|()| None)
    })
    .await
}

/// Writes a response: its encoded `head`, then `body` as `framing` says; a `paced` body
/// ([`PacedByBacklog`]) is polled while the socket is full too.
async fn respond<I>(
    io: &mut I,
    read: &mut Vec<u8>,
    head: Vec<u8>,
    framing: Framing,
    mut body: Body,
    paced: bool,
) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(&head).await?;
    drop(head);
    io.flush().await?;
    if framing == Framing::NoBody {
        return Ok(());
    }
    let mut sent = 0u64;
    // Data the body gave while the last chunk waited for the socket.
    let mut ahead = None;
    loop {
        let next = match ahead.take() {
            Some(next) => next,
            None => {
                poll_fn(|cx| {
                    if let Poll::Ready(next) = poll_data(&mut body, cx) {
                        return Poll::Ready(next);
                    }
                    watch_for_close(io, cx, read).map(|()| Next::Closed)
                })
                .await
            }
        };
        let data = match next {
            Next::Data(data) => data,
            Next::End => break,
            Next::Failed(e) => return Err(io::Error::other(e)),
            Next::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the client closed the connection",
                ))
            }
        };
        sent += data.len() as u64;
        let (size, len) = chunk_size_line(data.len());
        let parts: &mut [&[u8]] = match framing {
            Framing::Length(n) if sent > n => {
                return Err(io::Error::other(
                    "the body is longer than its Content-Length",
                ))
            }
            Framing::Length(_) => &mut [&data],
            _ => &mut [&size[..len], &data, b"\r\n"],
        };
        // A paced body is polled while the socket is full (its write or its flush waits):
        // a proxy stream then moves what its upstream sends out of h2's queues into its
        // own window (`Http2Body::absorb`), and frees what it holds spare.
        let mut waiting = |cx: &mut Context<'_>| {
            if paced && ahead.is_none() {
                if let Poll::Ready(next) = poll_data(&mut body, cx) {
                    ahead = Some(next);
                }
            }
        };
        write_all_vectored(io, parts, &mut waiting).await?;
        drop(data);
        poll_fn(|cx| {
            let flushed = Pin::new(&mut *io).poll_flush(cx);
            if flushed.is_pending() {
                waiting(cx);
            }
            flushed
        })
        .await?;
    }
    match framing {
        Framing::Length(n) if sent < n => Err(io::Error::other(
            "the body is shorter than its Content-Length",
        )),
        Framing::Chunked => {
            io.write_all(b"0\r\n\r\n").await?;
            io.flush().await
        }
        _ => Ok(()),
    }
}

/// What a response body gives next.
enum Next {
    Data(Bytes),
    End,
    Failed(axum::Error),
    /// The client closed the connection first.
    Closed,
}

/// The body's next non-empty data (trailers are not sent).
fn poll_data(body: &mut Body, cx: &mut Context<'_>) -> Poll<Next> {
    loop {
        return Poll::Ready(match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            None => Next::End,
            Some(Err(e)) => Next::Failed(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => Next::Data(data),
                _ => continue,
            },
        });
    }
}

/// A chunk's size line: the size in hex, then CRLF.
fn chunk_size_line(size: usize) -> ([u8; 18], usize) {
    let mut line = [0u8; 18];
    let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, at) in line[..digits].iter_mut().enumerate() {
        let nibble = (size >> (4 * (digits - 1 - i))) & 0xf;
        *at = b"0123456789abcdef"[nibble];
    }
    line[digits..digits + 2].copy_from_slice(b"\r\n");
    (line, digits + 2)
}

/// Writes every byte of `parts`, as few system calls as the socket allows; `waiting` is
/// called each time the socket has no room.
async fn write_all_vectored<I: AsyncWrite + Unpin>(
    io: &mut I,
    parts: &mut [&[u8]],
    mut waiting: impl FnMut(&mut Context<'_>),
) -> io::Result<()> {
    let mut first = 0;
    while first < parts.len() {
        let n = poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); 3];
            let live = &parts[first..];
            for (slice, part) in slices.iter_mut().zip(live) {
                *slice = IoSlice::new(part);
            }
            let written = Pin::new(&mut *io).poll_write_vectored(cx, &slices[..live.len().min(3)]);
            if written.is_pending() {
                waiting(cx);
            }
            written
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        while first < parts.len() && n >= parts[first].len() {
            n -= parts[first].len();
            first += 1;
        }
        if first < parts.len() {
            parts[first] = &parts[first][n..];
        }
    }
    Ok(())
}

/// Ready once the client closed the connection (or it failed); bytes it sends meanwhile
/// (a pipelined request) are kept in `read`, up to a head's worth.
fn watch_for_close<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    read: &mut Vec<u8>,
) -> Poll<()> {
    loop {
        let room = MAX_HEAD.saturating_sub(read.len()).min(CLOSE_READ);
        if room == 0 {
            // Enough waits to be read next; the close shows when a write fails.
            return Poll::Pending;
        }
        match ready!(poll_read_into(io, cx, read, room)) {
            Ok(0) | Err(_) => return Poll::Ready(()),
            Ok(_) => {}
        }
    }
}

/// A request body handed to the handler as it arrives.
struct BodyFeed {
    /// Body bytes read with the head.
    first: Option<Bytes>,
    /// Bytes still to read from the socket.
    remaining: u64,
    /// `None` once all is handed or the handler dropped the body.
    tx: Option<mpsc::Sender<io::Result<Bytes>>>,
    /// The client closed mid-body, or the handler stopped reading.
    cut: bool,
}

impl BodyFeed {
    /// Whether the whole body was read from the socket (so the next request follows it).
    fn is_done(&self) -> bool {
        self.remaining == 0 && self.first.is_none() && !self.cut
    }

    /// Hands the handler what arrives, one chunk at a time as it takes them; ready once
    /// there is no more to hand.
    fn poll<I: AsyncRead + Unpin>(&mut self, io: &mut I, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(tx) = self.tx.as_mut() else {
                return Poll::Ready(());
            };
            if ready!(tx.poll_ready(cx)).is_err() {
                self.cut = self.remaining > 0 || self.first.is_some();
                self.tx = None;
                continue;
            }
            let chunk = if let Some(first) = self.first.take() {
                Ok(first)
            } else if self.remaining == 0 {
                self.tx = None;
                continue;
            } else {
                let mut chunk = [0u8; BODY_READ];
                let want = usize::try_from(self.remaining)
                    .unwrap_or(BODY_READ)
                    .min(BODY_READ);
                let mut buf = ReadBuf::new(&mut chunk[..want]);
                match ready!(Pin::new(&mut *io).poll_read(cx, &mut buf)) {
                    Ok(()) if buf.filled().is_empty() => {
                        self.cut = true;
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the client closed the connection before the end of the request body",
                        ))
                    }
                    Ok(()) => {
                        self.remaining -= buf.filled().len() as u64;
                        Ok(Bytes::copy_from_slice(buf.filled()))
                    }
                    Err(e) => {
                        self.cut = true;
                        Err(e)
                    }
                }
            };
            let failed = chunk.is_err();
            if tx.start_send(chunk).is_err() || failed {
                self.cut |= self.remaining > 0;
                self.tx = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_line_is_hex_then_crlf() {
        for (size, line) in [
            (0, "0\r\n"),
            (9, "9\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            let (bytes, len) = chunk_size_line(size);
            assert_eq!(&bytes[..len], line.as_bytes());
        }
        let (bytes, len) = chunk_size_line(usize::MAX);
        assert_eq!(&bytes[..len], format!("{:x}\r\n", usize::MAX).as_bytes());
    }

    /// Three 1 KiB chunks into a pipe of 256 bytes that nobody reads yet: the first write
    /// waits for room.
    #[tokio::test]
    async fn only_a_paced_body_is_polled_while_the_socket_is_full() {
        use futures::StreamExt as _;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt as _;
        for paced in [false, true] {
            let (mut near, mut far) = tokio::io::duplex(256);
            let taken = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&taken);
            let chunks = futures::stream::iter((0..3).map(|_| Bytes::from(vec![b'x'; 1024])));
            let body = Body::from_stream(chunks.map(move |chunk| {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<_, io::Error>(chunk)
            }));
            let mut read = Vec::new();
            let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            let written = respond(&mut far, &mut read, head, Framing::Chunked, body, paced);
            tokio::pin!(written);
            assert!(futures::poll!(written.as_mut()).is_pending());
            let wanted = if paced { 2 } else { 1 };
            assert_eq!(taken.load(Ordering::SeqCst), wanted, "paced={paced}");
            let mut all = Vec::new();
            let reader = async {
                while !all.ends_with(b"0\r\n\r\n") {
                    let mut chunk = [0u8; 512];
                    let n = near.read(&mut chunk).await.expect("read");
                    all.extend_from_slice(&chunk[..n]);
                }
            };
            let (done, ()) = tokio::join!(written, reader);
            done.expect("written");
            assert_eq!(taken.load(Ordering::SeqCst), 3);
            assert_eq!(all.iter().filter(|&&b| b == b'x').count(), 3 * 1024);
        }
    }

    #[tokio::test]
    async fn every_byte_of_every_part_is_written_through_short_writes() {
        let (near, mut far) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            let mut near = near;
            let mut waited = 0;
            let parts: &mut [&[u8]] = &mut [b"a\r\n", b"0123456789", b"\r\n"];
            write_all_vectored(&mut near, parts, |_| waited += 1).await?;
            Ok::<_, io::Error>(waited)
        });
        let mut all = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut far, &mut all)
            .await
            .expect("read");
        let waited = writer.await.expect("task").expect("written");
        assert_eq!(all, b"a\r\n0123456789\r\n");
        assert!(waited > 0, "a pipe of 3 bytes has no room for 15 at once");
    }
}
