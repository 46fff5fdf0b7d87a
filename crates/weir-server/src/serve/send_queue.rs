//! A client socket whose kernel send queue never holds more than the configured bytes.
//!
//! SO_SNDBUF alone is not that bound: Linux checks it only before it starts a segment,
//! and appends a write to the last unsent segment without looking (up to 64 KiB on
//! loopback, half the client's largest window on a network). So each write is cut to
//! the room the queue has left (SIOCOUTQ: bytes written and not yet acknowledged), and
//! with no room the socket waits for the kernel to report space.
//!
//! hyper takes another chunk of a response body while under 8 KiB wait in its write
//! buffer, and tops it up whenever the socket takes some, so a slow client's connection
//! could hold 8 KiB plus a chunk in the heap. [`Backlog`] lets the body give a slow
//! connection (one whose send queue was over half full at its last flush) one chunk at a
//! time: the next only once all of the last has reached the kernel. A connection that
//! keeps up is not held, since each hold costs its task a wake-up per chunk.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use futures::task::AtomicWaker;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::ioctl::{ioctl, Getter};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The smallest bound weir accepts: below the kernel's own floor for SO_SNDBUF (4608
/// bytes) the kernel could report space the bound does not have.
pub const MIN_SEND_BUFFER: u64 = 16 * 1024;

/// As many slices as hyper gives one vectored write.
const MAX_SLICES: usize = 64;

/// TIOCOUTQ, which Linux sockets answer as SIOCOUTQ; its number differs between
/// architectures.
const SIOCOUTQ: rustix::ioctl::Opcode = libc::TIOCOUTQ as rustix::ioctl::Opcode;

/// Whether a connection still has bytes of the body's last chunk to give its socket;
/// shared between the socket and the response body.
#[derive(Clone, Debug, Default)]
pub struct Backlog(Arc<BacklogState>);

#[derive(Debug, Default)]
struct BacklogState {
    /// The body waits for the connection's next flush.
    waiting: AtomicBool,
    /// The send queue was over half full at the last flush.
    slow: AtomicBool,
    drained: AtomicWaker,
    /// The socket while the connection holds it, so that the console can read its send
    /// queue; cleared (under the lock) before the socket is closed.
    socket: Mutex<Option<RawFd>>,
    /// Bytes in the send queue when the connection last looked (SIOCOUTQ).
    queued: AtomicU64,
}

impl Backlog {
    /// The body gave the connection a chunk: if the connection is slow, the chunk is
    /// held until all of it has reached the kernel.
    pub fn handed_a_chunk(&self) {
        if self.0.slow.load(Ordering::Acquire) {
            self.0.waiting.store(true, Ordering::Release);
        }
    }

    fn blocked(&self) {
        self.0.waiting.store(true, Ordering::Release);
    }

    fn drain(&self, slow: bool) {
        self.0.slow.store(slow, Ordering::Release);
        if self.0.waiting.swap(false, Ordering::AcqRel) {
            self.0.drained.wake();
        }
    }

    /// Whether the send queue was over half full at the connection's last flush: a
    /// client slower than what is sent to it.
    pub fn is_slow(&self) -> bool {
        self.0.slow.load(Ordering::Acquire)
    }

    /// Whether the body's last chunk has not all reached the kernel yet.
    pub fn is_waiting(&self) -> bool {
        self.0.waiting.load(Ordering::Acquire)
    }

    /// Bytes in the socket's send queue now, or `None` once the connection is closed.
    pub fn send_queue(&self) -> Option<u64> {
        let socket = self.socket();
        let fd = (*socket)?;
        // SAFETY: the descriptor stays open while the lock is held: the connection clears
        // it under the same lock before it closes the socket.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        queued_on(fd).ok().map(|n| n as u64)
    }

    /// Bytes in the send queue when the connection last looked: no system call.
    pub fn last_send_queue(&self) -> u64 {
        self.0.queued.load(Ordering::Relaxed)
    }

    fn socket(&self) -> MutexGuard<'_, Option<RawFd>> {
        self.0.socket.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the chunk the body is held on has all reached the kernel.
    pub async fn drained(&self) {
        std::future::poll_fn(|cx| self.poll_drained(cx)).await
    }

    /// Ready once the chunk the body is held on has all reached the kernel.
    pub fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.0.waiting.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.0.drained.register(cx.waker());
        if self.0.waiting.load(Ordering::Acquire) {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// Marks a response whose body gives no chunk while its connection's [`Backlog`] waits:
/// only such a body is polled while the socket is full (an HTTP/2 proxy stream then moves
/// its window out of h2's queues); any other is polled once its last chunk is written, so
/// that nothing is read ahead of the client.
#[derive(Clone, Copy, Debug)]
pub struct PacedByBacklog;

pub struct BoundedSendQueue {
    tcp: TcpStream,
    limit: usize,
    /// What may still be written without asking the kernel: the queue only shrinks
    /// between our writes, so room seen at the last look is there still.
    room: usize,
    backlog: Backlog,
}

impl BoundedSendQueue {
    /// `tcp`'s SO_SNDBUF should already hold `limit` (see `socket_buffer`): the kernel
    /// then reports the socket writable only once the queue is below the limit.
    pub fn new(tcp: TcpStream, limit: u64, backlog: Backlog) -> Self {
        *backlog.socket() = Some(tcp.as_raw_fd());
        BoundedSendQueue {
            tcp,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            room: 0,
            backlog,
        }
    }

    fn poll_write_within_room(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let want = bufs.iter().map(|b| b.len()).sum();
        if self.room < want {
            self.room = ready!(self.poll_room(cx, want))?;
        }
        let mut cut = [IoSlice::new(&[]); MAX_SLICES];
        let mut slices = 0;
        let mut left = self.room;
        for buf in bufs.iter().take(MAX_SLICES) {
            if left == 0 {
                break;
            }
            let n = buf.len().min(left);
            cut[slices] = IoSlice::new(&buf[..n]);
            slices += 1;
            left -= n;
        }
        let written = ready!(Pin::new(&mut self.tcp).poll_write_vectored(cx, &cut[..slices]))?;
        self.room = self.room.saturating_sub(written);
        Poll::Ready(Ok(written))
    }

    /// Ready with the room in the queue once there is some (for a write of `want` bytes).
    fn poll_room(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let room = self.limit.saturating_sub(self.queued()?);
            if room > 0 {
                return Poll::Ready(Ok(room));
            }
            // Full: drop tokio's stale readiness, then ask the kernel, which (when full
            // too) notes that a writer waits and reports the space that frees.
            let _ = self.tcp.try_io(Interest::WRITABLE, || {
                Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
            });
            if kernel_writable(&self.tcp)? {
                // Only with a SO_SNDBUF above the limit; the kernel's word goes then.
                return Poll::Ready(Ok(want));
            }
        }
    }
}

impl BoundedSendQueue {
    /// The send queue's bytes, kept for the console too.
    fn queued(&self) -> io::Result<usize> {
        let bytes = queued(&self.tcp)?;
        self.backlog.0.queued.store(bytes as u64, Ordering::Relaxed);
        Ok(bytes)
    }
}

impl Drop for BoundedSendQueue {
    fn drop(&mut self) {
        *self.backlog.socket() = None;
    }
}

/// Bytes in `tcp`'s send queue, sent or not, not yet acknowledged.
fn queued(tcp: &TcpStream) -> io::Result<usize> {
    queued_on(tcp.as_fd())
}

fn queued_on(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: SIOCOUTQ on a socket writes one `c_int` through the pointer `Getter`
    // passes, which points at its own `c_int`; the descriptor is borrowed for the call.
    let bytes = unsafe { ioctl(fd, Getter::<SIOCOUTQ, std::ffi::c_int>::new()) }?;
    Ok(usize::try_from(bytes).unwrap_or(0))
}

fn kernel_writable(tcp: &TcpStream) -> io::Result<bool> {
    let mut fds = [PollFd::new(tcp, PollFlags::OUT)];
    poll(&mut fds, Some(&rustix::time::Timespec::default()))?;
    Ok(fds[0]
        .revents()
        .intersects(PollFlags::OUT | PollFlags::ERR | PollFlags::HUP))
}

impl AsyncRead for BoundedSendQueue {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedSendQueue {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.poll_write_within_room(cx, bufs);
        if written.is_pending() {
            this.backlog.blocked();
        }
        written
    }

    /// Vectored, so that hyper queues a body's chunks instead of copying them into a
    /// buffer of its own, which would keep its largest size for the connection's life.
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// hyper flushes once its write buffer has all gone to the socket.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let half = self.limit / 2;
        // The room known from the last look is there still: ask the kernel (a system call
        // per chunk would show in a burst's latency) only when it is under half.
        if self.room < half {
            if let Ok(bytes) = self.queued() {
                self.room = self.limit.saturating_sub(bytes);
            }
        }
        self.backlog.drain(self.room < half);
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::socket_buffer;
    use futures::future::poll_fn;
    use futures::FutureExt;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const LIMIT: u64 = 32 << 10;

    async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let server = accepted.unwrap().0;
        socket2::SockRef::from(&server)
            .set_send_buffer_size(socket_buffer::request_for(LIMIT))
            .unwrap();
        (client.unwrap(), server)
    }

    #[tokio::test]
    async fn a_vectored_write_is_cut_to_the_room_and_keeps_the_order_of_its_slices() {
        let (mut client, server) = connected().await;
        let mut socket = BoundedSendQueue::new(server, LIMIT, Backlog::default());
        assert!(socket.is_write_vectored());
        let slices: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 20 << 10]).collect();
        let bufs: Vec<IoSlice<'_>> = slices.iter().map(|s| IoSlice::new(s)).collect();
        let whole = slices.concat();
        let mut expected = Vec::new();
        while let Some(written) = socket.write_vectored(&bufs).now_or_never() {
            let written = written.unwrap();
            if expected.is_empty() {
                assert!(written > 20 << 10, "only the first slice went: {written}");
            }
            assert!(written <= LIMIT as usize);
            expected.extend_from_slice(&whole[..written]);
        }
        assert!(queued(&socket.tcp).unwrap() <= LIMIT as usize);
        drop(socket);
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        assert!(all == expected, "the bytes arrived out of order");
    }

    #[tokio::test]
    async fn writes_stop_at_the_limit_and_a_slow_connection_gets_one_chunk_at_a_time() {
        let (mut client, server) = connected().await;
        let backlog = Backlog::default();
        let mut socket = BoundedSendQueue::new(server, LIMIT, backlog.clone());
        let held = || poll_fn(|cx| Poll::Ready(backlog.poll_drained(cx).is_pending()));
        let chunk = [7u8; 1000];
        let mut sent = 0;
        while let Some(n) = socket.write(&chunk).now_or_never() {
            sent += n.unwrap();
        }
        assert!(sent > 0);
        assert!(queued(&socket.tcp).unwrap() <= LIMIT as usize);
        assert!(
            held().await,
            "a write waits for room, and the body was not held"
        );

        let waiter = tokio::spawn({
            let backlog = backlog.clone();
            async move { poll_fn(|cx| backlog.poll_drained(cx)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "drained before the flush");
        socket.flush().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the body waiting on the backlog was not woken")
            .unwrap();

        // The queue was full at that flush: the connection is slow, its next chunk held.
        backlog.handed_a_chunk();
        assert!(held().await, "a slow connection's chunk was not held");
        socket.flush().await.unwrap();
        assert!(!held().await);

        // Once the client has read it all, the queue is nearly empty at the next flush:
        // the connection keeps up, and is not held.
        let mut all = vec![0u8; sent];
        client.read_exact(&mut all).await.unwrap();
        socket.write_all(&chunk[..10]).await.unwrap();
        socket.flush().await.unwrap();
        backlog.handed_a_chunk();
        assert!(!held().await, "a connection that keeps up was held");
        socket.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 10);
    }
}
