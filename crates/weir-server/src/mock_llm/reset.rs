//! A TCP connection that an injected fault can end with a RST instead of a FIN.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Longest wait for the HTTP layer to flush before an injected reset goes ahead anyway.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Handed to every request of one connection (as a request extension): lets the response
/// ask for the connection to be reset.
#[derive(Clone, Debug, Default)]
pub(crate) struct ResetSwitch {
    state: Arc<SwitchState>,
}

#[derive(Debug, Default)]
struct SwitchState {
    armed: AtomicBool,
    flushed: Notify,
}

impl ResetSwitch {
    /// Makes the connection close with SO_LINGER 0 (a RST), and waits (a bounded time)
    /// until what the HTTP layer buffered so far has been written to the socket, so the
    /// reader gets every frame sent before the fault and then the reset.
    pub(crate) async fn arm(&self) {
        let flushed = self.state.flushed.notified();
        self.state.armed.store(true, Ordering::Release);
        let _ = tokio::time::timeout(FLUSH_WAIT, flushed).await;
    }
}

/// A [`TcpStream`] that switches SO_LINGER to 0 once its [`ResetSwitch`] is armed and
/// everything written has been flushed; closing it then sends a RST.
#[derive(Debug)]
pub(crate) struct ResettableTcp {
    tcp: TcpStream,
    switch: ResetSwitch,
    lingering: bool,
}

impl ResettableTcp {
    pub(crate) fn new(tcp: TcpStream, switch: ResetSwitch) -> Self {
        ResettableTcp {
            tcp,
            switch,
            lingering: false,
        }
    }
}

impl AsyncRead for ResettableTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    // hyper flushes after writing out its whole buffer: the moment to arm the RST.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = ready!(Pin::new(&mut self.tcp).poll_flush(cx));
        if !self.lingering && self.switch.state.armed.load(Ordering::Acquire) {
            self.lingering = true;
            SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO))?;
            self.switch.state.flushed.notify_one();
        }
        Poll::Ready(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
