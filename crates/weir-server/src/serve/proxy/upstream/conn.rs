//! A connection to the upstream (plain TCP or TLS over it), and the idle ones kept for
//! the next request.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Idle connections kept per route, and for how long.
const MAX_IDLE: usize = 32;
const IDLE_FOR: Duration = Duration::from_secs(30);

pub enum Io {
    Plain(TcpStream),
    // Boxed: a TLS session's state is kilobytes, a plain stream's a few words.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    /// Whether the TLS handshake chose HTTP/2 (ALPN `h2`).
    pub fn negotiated_http2(&self) -> bool {
        match self {
            Io::Plain(_) => false,
            Io::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connections whose last response was read to its end, ready for another request.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(Instant, Io)>>,
}

impl Pool {
    /// An idle connection the upstream has not closed meanwhile, if there is one.
    pub fn take(&self) -> Option<Io> {
        loop {
            let (since, mut io) = self.lock().pop()?;
            if since.elapsed() < IDLE_FOR && still_open(&mut io) {
                return Some(io);
            }
        }
    }

    pub fn put(&self, io: Io) {
        let mut idle = self.lock();
        idle.retain(|(since, _)| since.elapsed() < IDLE_FOR);
        if idle.len() < MAX_IDLE {
            idle.push((Instant::now(), io));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Io)>> {
        // The list stays valid whatever panicked while holding it.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An idle connection has nothing to read: a byte or an end means the upstream closed it
/// (or broke the protocol), and it must not carry a request.
fn still_open(io: &mut Io) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    Pin::new(io).poll_read(&mut cx, &mut buf).is_pending()
}
