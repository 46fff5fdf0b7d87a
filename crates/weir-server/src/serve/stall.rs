//! Cuts off a client that takes no bytes for too long, at the socket where it shows.
//!
//! A stalled client never polls its response body, so nothing in the body can notice;
//! only the connection's pending write can. The limit is shared with the request
//! handler, which sets it per route.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::time::{Instant, Sleep};

/// The stall limit of one connection, in milliseconds, settable from a handler.
#[derive(Clone, Debug)]
pub struct StallLimit(Arc<AtomicU64>);

impl StallLimit {
    pub fn new(limit: Duration) -> Self {
        StallLimit(Arc::new(AtomicU64::new(limit.as_millis() as u64)))
    }

    pub fn set(&self, limit: Duration) {
        self.0.store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// An I/O object whose writes fail with `TimedOut` once one has waited past the limit.
pub struct StallGuard<T> {
    inner: T,
    limit: StallLimit,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuard<T> {
    pub fn new(inner: T, limit: StallLimit) -> Self {
        StallGuard {
            inner,
            limit,
            stalled: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T> StallGuard<T> {
    /// Passes a finished write on; a write still waiting fails once it has waited too long.
    fn timed<R>(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if write.is_ready() {
            self.stalled = None;
            return write;
        }
        let limit = self.limit.get();
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("client took no bytes for {} ms", limit.as_millis()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, write)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// Timed too: a flush may wait for the client to take bytes (see `send_queue`).
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flush = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, flush)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::send_queue::{Backlog, BoundedSendQueue};
    use crate::serve::socket_buffer;
    use futures::FutureExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpSocket};

    /// A client that takes nothing, behind a full send queue whose flush holds the body.
    #[tokio::test(start_paused = true)]
    async fn a_flush_waiting_on_a_client_that_takes_nothing_fails_at_the_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let (client, accepted) = tokio::join!(
            socket.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let (_client, server) = (client.unwrap(), accepted.unwrap().0);
        let limit = 32 << 10;
        socket2::SockRef::from(&server)
            .set_send_buffer_size(socket_buffer::request_for(limit))
            .unwrap();
        let backlog = Backlog::default();
        let queue = BoundedSendQueue::new(server, limit, backlog.clone());
        let mut guarded = StallGuard::new(queue, StallLimit::new(Duration::from_secs(5)));
        let chunk = [7u8; 1000];
        while let Some(written) = guarded.write(&chunk).now_or_never() {
            written.unwrap();
        }
        assert!(backlog.is_waiting(), "the socket did not fill");
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(60), guarded.flush())
            .await
            .expect("the flush waited past the limit")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() >= Duration::from_secs(5));
    }
}
