//! A client socket whose kernel send queue never holds more than the configured bytes.
//!
//! SO_SNDBUF alone is not that bound: Linux checks it only before it starts a segment,
//! and appends a write to the last unsent segment without looking (up to 64 KiB on
//! loopback, half the client's largest window on a network). So each write is cut to
//! the room the queue has left (SIOCOUTQ: bytes written and not yet acknowledged), and
//! with no room the socket waits for the kernel to report space.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::ioctl::{ioctl, Getter};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The smallest bound weir accepts: below the kernel's own floor for SO_SNDBUF (4608
/// bytes) the kernel could report space the bound does not have.
pub const MIN_SEND_BUFFER: u64 = 16 * 1024;

/// Linux's TIOCOUTQ, which sockets answer as SIOCOUTQ.
const SIOCOUTQ: rustix::ioctl::Opcode = 0x5411;

pub struct BoundedSendQueue {
    tcp: TcpStream,
    limit: usize,
    /// What may still be written without asking the kernel: the queue only shrinks
    /// between our writes, so room seen at the last look is there still.
    room: usize,
}

impl BoundedSendQueue {
    /// `tcp`'s SO_SNDBUF should already hold `limit` (see `socket_buffer`): the kernel
    /// then reports the socket writable only once the queue is below the limit.
    pub fn new(tcp: TcpStream, limit: u64) -> Self {
        BoundedSendQueue {
            tcp,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            room: 0,
        }
    }

    /// Ready with the room in the queue once there is some (for a write of `want` bytes).
    fn poll_room(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let room = self.limit.saturating_sub(queued(&self.tcp)?);
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

/// Bytes in `tcp`'s send queue, sent or not, not yet acknowledged.
fn queued(tcp: &TcpStream) -> io::Result<usize> {
    // SAFETY: SIOCOUTQ on a socket writes one `c_int` through the pointer `Getter`
    // passes, which points at its own `c_int`; the descriptor is borrowed for the call.
    let bytes = unsafe { ioctl(tcp.as_fd(), Getter::<SIOCOUTQ, std::ffi::c_int>::new()) }?;
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
        let this = self.get_mut();
        if this.room < buf.len() {
            this.room = ready!(this.poll_room(cx, buf.len()))?;
        }
        let n = buf.len().min(this.room);
        let written = ready!(Pin::new(&mut this.tcp).poll_write(cx, &buf[..n]))?;
        this.room = this.room.saturating_sub(written);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
