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
//!
//! A slow connection's flush then waits until the kernel reports the socket writable (by
//! its own count, which charges its bookkeeping against SO_SNDBUF where SIOCOUTQ counts
//! payload only): the body's next chunk, no larger than the kernel takes then
//! ([`Backlog::kernel_room`]), goes to the kernel whole, and none of it waits in the heap.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::ioctl::{ioctl, Getter};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The smallest bound weir accepts: below the kernel's own floor for SO_SNDBUF (4608
/// bytes) the kernel could report space the bound does not have.
pub const MIN_SEND_BUFFER: u64 = 16 * 1024;

/// A hold on a full socket this long marks a slow reader: a client briefly behind takes
/// its bytes sooner (bench/proxy's load client, short of CPU, mostly in 5-20 ms), one
/// reading 1 KB/s in seconds.
const LONG_HOLD: Duration = Duration::from_millis(20);

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
    /// The body's last hold on a full socket lasted `LONG_HOLD` or more.
    held_long: AtomicBool,
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

    /// Whether the client kept the body's last hold on a full socket waiting long: a slow
    /// reader rather than one briefly behind.
    pub fn held_long(&self) -> bool {
        self.0.held_long.load(Ordering::Relaxed)
    }

    /// Whether the body's last chunk has not all reached the kernel yet.
    pub fn is_waiting(&self) -> bool {
        self.0.waiting.load(Ordering::Acquire)
    }

    /// Bytes in the socket's send queue now, or `None` once the connection is closed.
    pub fn send_queue(&self) -> Option<u64> {
        self.ask_socket(queued_on).map(|n| n as u64)
    }

    /// Bytes the kernel takes into the send queue now, by its own count, bookkeeping
    /// included, which SIOCOUTQ's count of payload leaves out; `None` once the
    /// connection is closed. A write of at most this much is taken whole: the kernel
    /// checks its count only before it starts a segment.
    pub fn kernel_room(&self) -> Option<usize> {
        self.ask_socket(kernel_room_on)
    }

    /// `ask` of the socket while the connection holds it; `None` once it is closed.
    fn ask_socket(&self, ask: impl FnOnce(BorrowedFd<'_>) -> io::Result<usize>) -> Option<usize> {
        let socket = self.socket();
        let fd = (*socket)?;
        // SAFETY: the descriptor stays open while the lock is held: the connection clears
        // it under the same lock before it closes the socket.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        ask(fd).ok()
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
    /// When the body's current hold on a full socket began.
    held_since: Option<Instant>,
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
            held_since: None,
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
        let room = self.limit.saturating_sub(self.queued()?);
        if room > 0 {
            return Poll::Ready(Ok(room));
        }
        ready!(self.poll_kernel_writable(cx))?;
        let room = self.limit.saturating_sub(self.queued()?);
        // Full by our count while the kernel takes more only with a SO_SNDBUF above the
        // limit; the kernel's word goes then.
        Poll::Ready(Ok(if room > 0 { room } else { want }))
    }

    /// Ready once the kernel reports the socket writable (by its own count, a third of
    /// SO_SNDBUF free or more): a body held for a slow connection then makes its next
    /// chunk, sized to what the kernel takes, so that none of it waits in the heap.
    fn poll_kernel_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            // Through `try_io`: readiness that came after the look is not cleared, and a
            // look that finds the socket full makes the kernel wake us once it is not.
            let tcp = &self.tcp;
            let looked = tcp.try_io(Interest::WRITABLE, || match kernel_writable(tcp) {
                Ok(true) => Ok(()),
                Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            });
            match looked {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

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

fn kernel_room_on(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes to `info`, which has that many, and
    // sets `len` to what it wrote; the descriptor is borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < (libc::SK_MEMINFO_WMEM_QUEUED as usize + 1) * 4 {
        return Err(io::ErrorKind::Unsupported.into());
    }
    let sndbuf = info[libc::SK_MEMINFO_SNDBUF as usize];
    let queued = info[libc::SK_MEMINFO_WMEM_QUEUED as usize];
    Ok(sndbuf.saturating_sub(queued) as usize)
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
        let slow = self.room < half;
        if slow && self.backlog.is_waiting() {
            let writable = self.poll_kernel_writable(cx);
            if writable.is_pending() {
                self.held_since.get_or_insert_with(Instant::now);
            }
            ready!(writable)?;
        }
        // The hold ends here, whether the kernel took more or the queue emptied meanwhile.
        if let Some(since) = self.held_since.take() {
            let long = since.elapsed() >= LONG_HOLD;
            self.backlog.0.held_long.store(long, Ordering::Relaxed);
        }
        self.backlog.drain(slow);
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
    use tokio::net::{TcpListener, TcpSocket};

    const LIMIT: u64 = 32 << 10;

    async fn connected() -> (TcpStream, TcpStream) {
        connected_with_receive_buffer(0).await
    }

    /// A client socket with the kernel's default receive buffer if `receive_buffer` is 0.
    async fn connected_with_receive_buffer(receive_buffer: u32) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        if receive_buffer > 0 {
            socket.set_recv_buffer_size(receive_buffer).unwrap();
        }
        let client = socket.connect(listener.local_addr().unwrap());
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

    /// A full count with a kernel that still takes bytes: the write goes on. Asking the
    /// kernel must not cost tokio's readiness, which a kernel with room sends no edge to
    /// restore.
    #[tokio::test]
    async fn a_write_past_a_full_count_is_not_left_waiting_when_the_kernel_takes_it() {
        let (_client, server) = connected_with_receive_buffer(4096).await;
        socket2::SockRef::from(&server)
            .set_send_buffer_size(socket_buffer::request_for(16 * LIMIT))
            .unwrap();
        let mut socket = BoundedSendQueue::new(server, LIMIT, Backlog::default());
        let chunk = [7u8; 1000];
        let mut sent = 0;
        while sent < 2 * LIMIT as usize {
            let Some(written) = socket.write(&chunk).now_or_never() else {
                panic!(
                    "a write waited while the kernel had room ({sent} B sent, {} queued)",
                    queued(&socket.tcp).unwrap()
                );
            };
            sent += written.unwrap();
        }
        assert!(
            queued(&socket.tcp).unwrap() >= LIMIT as usize,
            "never full by count"
        );
    }

    #[tokio::test]
    async fn a_slow_connections_body_is_held_until_the_kernel_takes_more() {
        let (mut client, server) = connected_with_receive_buffer(4096).await;
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

        // The client takes nothing: the flush waits, and the body with it.
        let waiter = tokio::spawn({
            let backlog = backlog.clone();
            async move { poll_fn(|cx| backlog.poll_drained(cx)).await }
        });
        let mut flush = Box::pin(async {
            socket.flush().await.unwrap();
            socket
        });
        assert!(
            (&mut flush).now_or_never().is_none(),
            "a full socket's flush did not wait"
        );
        assert!(!waiter.is_finished(), "drained while the socket was full");

        // Once the client has read it all, the kernel takes more: the flush ends and
        // wakes the body; the connection keeps up, and its next chunk is not held.
        let mut all = vec![0u8; sent];
        client.read_exact(&mut all).await.unwrap();
        let mut socket = tokio::time::timeout(Duration::from_secs(10), flush)
            .await
            .expect("the flush did not end once the client read");
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the body waiting on the backlog was not woken")
            .unwrap();
        backlog.handed_a_chunk();
        assert!(!held().await, "a connection that keeps up was held");
        socket.write_all(&chunk[..10]).await.unwrap();
        socket.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 10);
    }

    #[tokio::test]
    async fn a_client_that_keeps_a_hold_waiting_long_is_marked_a_slow_reader() {
        let (mut client, server) = connected_with_receive_buffer(4096).await;
        let backlog = Backlog::default();
        let mut socket = BoundedSendQueue::new(server, LIMIT, backlog.clone());
        let chunk = [7u8; 1000];
        let mut sent = 0;
        while let Some(n) = socket.write(&chunk).now_or_never() {
            sent += n.unwrap();
        }
        assert!(!backlog.held_long());
        let flush = tokio::spawn(async move {
            socket.flush().await.unwrap();
            socket
        });
        // The client takes nothing for LONG_HOLD: a slow reader.
        tokio::time::sleep(LONG_HOLD).await;
        let mut all = vec![0u8; sent];
        client.read_exact(&mut all).await.unwrap();
        let _socket = tokio::time::timeout(Duration::from_secs(10), flush)
            .await
            .expect("the flush did not end once the client read")
            .unwrap();
        assert!(backlog.held_long(), "a hold of {LONG_HOLD:?} was not long");
        assert!(backlog.kernel_room().is_some_and(|room| room > 0));
    }

    #[test]
    fn a_chunk_handed_to_a_slow_connection_is_held_until_the_next_flush() {
        let backlog = Backlog::default();
        backlog.drain(true);
        backlog.handed_a_chunk();
        assert!(
            backlog.is_waiting(),
            "a slow connection's chunk was not held"
        );
        backlog.drain(false);
        assert!(!backlog.is_waiting());
        backlog.handed_a_chunk();
        assert!(!backlog.is_waiting(), "a connection that keeps up was held");
    }
}
