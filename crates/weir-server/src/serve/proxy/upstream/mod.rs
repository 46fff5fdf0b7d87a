//! The client to the upstream API, driven by the stream that reads it.
//!
//! Over HTTP/1.1 (one connection per stream), a response body is read inside the client's
//! stream (no connection task between the two, so a token crosses no extra task) into a
//! buffer on the stack of the read: a stream waiting on its client holds no read buffer at
//! all. Sockets receive at most `receive_buffer` bytes into the kernel, so a paused upstream
//! parks a known amount. Over HTTP/2 (h2c by prior knowledge, or ALPN on `https://`),
//! streams share a few connections and `receive_buffer` is each stream's window.

mod conn;
mod http1;
mod http2;
mod tls;

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::http::Uri;
use bytes::Bytes;
use futures::Stream;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

use crate::serve::config::{Http2Mode, LlmProxyRoute};
use crate::serve::socket_buffer;
use conn::{Io, Pool};
use http1::{BodyDecoder, Http1Error, MAX_HEAD};
use http2::{Http2Body, Http2Pool, RequestHead};
pub use tls::{tls_failure, UpstreamCaError};

/// The most one read takes from the socket, on the reader's stack; a streamed read takes
/// what its relay has room for, up to this (a slow client's: a few KiB).
pub const MAX_READ: usize = 32 * 1024;
/// A read of a body passed through whole (not a stream): each becomes one chunk, which may
/// wait in the heap for a slow client, so it stays small.
const PASSTHROUGH_READ: usize = 4 * 1024;
/// Steps in which the buffer of a response head grows: most heads fit in the first.
const HEAD_READ: usize = 2048;

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: io::Error,
    },
    #[error("TLS handshake with {authority}: {source}")]
    Tls {
        authority: String,
        source: io::Error,
    },
    #[error("upstream connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("upstream sent a malformed response: {0}")]
    Malformed(Http1Error),
    /// HTTP/2 was expected and did not happen (the upstream speaks another protocol).
    #[error("HTTP/2 with the upstream failed: {0}")]
    Protocol(String),
    /// An HTTP/2 stream failed on a connection that had worked.
    #[error("upstream HTTP/2 stream failed: {0}")]
    Stream(String),
}

impl BodyError {
    /// What a client may read of it: no addresses, no OS error text.
    pub fn client_message(&self) -> String {
        match self {
            BodyError::Io(_) => "the upstream connection failed mid-stream".to_string(),
            BodyError::Http2(e) if e.is_go_away() => {
                "the upstream closed its connection mid-stream (GOAWAY)".to_string()
            }
            BodyError::Http2(e) if e.is_reset() => "the upstream reset the stream".to_string(),
            BodyError::Http2(_) => "the upstream connection failed mid-stream".to_string(),
            other => other.to_string(),
        }
    }
}

/// Why a body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Closed(Http1Error),
    #[error("upstream sent a malformed body: {0}")]
    Malformed(Http1Error),
    #[error("upstream response over {0} bytes")]
    TooLarge(u64),
    #[error("upstream HTTP/2 stream failed: {0}")]
    Http2(h2::Error),
}

/// One route's upstream: where it is, how to reach it, and its idle connections.
pub struct Upstream {
    host: String,
    port: u16,
    /// `host[:port]` as the Host header and error messages give it.
    authority: String,
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// SO_RCVBUF of HTTP/1.1 sockets.
    receive_buffer: u32,
    connect_timeout: Duration,
    pool: Arc<Pool>,
    /// The upstream's URL as an HTTP/2 request gives it (scheme and authority included).
    uri: String,
    http2: Http2Pool,
    /// Which protocol the upstream speaks: known from the configuration, or from ALPN on
    /// the first `https://` connection.
    protocol: AtomicU8,
    learning: tokio::sync::Mutex<()>,
}

/// An upstream that cannot be reached as configured, naming its URL or its CA file.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream `{0}`: only http:// and https:// are supported")]
    Scheme(Uri),
    #[error("upstream `{0}` has no host")]
    NoHost(Uri),
    #[error("upstream `{uri}`: {error}")]
    ServerName {
        uri: Uri,
        error: rustls::pki_types::InvalidDnsNameError,
    },
    #[error(transparent)]
    Ca(#[from] UpstreamCaError),
}

const PROTOCOL_UNKNOWN: u8 = 0;
const PROTOCOL_HTTP1: u8 = 1;
const PROTOCOL_HTTP2: u8 = 2;

pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: Option<Vec<u8>>,
    pub body: BodyReader,
}

impl Upstream {
    /// `https://` upstreams are verified against Mozilla's roots plus those of `upstream_ca`,
    /// and offered HTTP/2 and HTTP/1.1 by ALPN.
    pub fn new(uri: &Uri, route: &LlmProxyRoute) -> Result<Self, UpstreamError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(UpstreamError::Scheme(uri.clone())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| UpstreamError::NoHost(uri.clone()))?;
        let host = authority.host().trim_matches(['[', ']']).to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let name =
                ServerName::try_from(host.clone()).map_err(|error| UpstreamError::ServerName {
                    uri: uri.clone(),
                    error,
                })?;
            let mut config = tls::tls_config(route.upstream_ca.as_deref())?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let protocol = match (https, route.upstream_http2) {
            (false, Some(Http2Mode::PriorKnowledge)) => PROTOCOL_HTTP2,
            (false, None) => PROTOCOL_HTTP1,
            (true, _) => PROTOCOL_UNKNOWN,
        };
        let window = u32::try_from(route.receive_buffer).unwrap_or(u32::MAX);
        Ok(Upstream {
            host,
            port,
            authority: authority.as_str().to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            tls,
            receive_buffer: u32::try_from(socket_buffer::request_for(route.receive_buffer))
                .unwrap_or(u32::MAX),
            connect_timeout: route.connect_timeout,
            pool: Arc::default(),
            uri: uri.to_string(),
            http2: Http2Pool::new(&route.path, route.upstream_connections, window),
            protocol: AtomicU8::new(protocol),
            learning: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether streams go over HTTP/2 (as far as known yet).
    pub fn speaks_http2(&self) -> bool {
        self.protocol.load(Ordering::Acquire) == PROTOCOL_HTTP2
    }

    /// Sends a request and reads the response head; the body is left to the caller.
    pub async fn send(
        &self,
        method: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<UpstreamResponse, SendError> {
        if self.protocol.load(Ordering::Acquire) == PROTOCOL_UNKNOWN {
            self.learn_protocol().await?;
        }
        if self.speaks_http2() {
            let head = RequestHead {
                method,
                uri: &self.uri,
                headers,
            };
            let response = self.http2.send(head, body, || self.connect(true)).await?;
            return Ok(UpstreamResponse {
                status: response.status,
                content_type: response.content_type,
                body: BodyReader::Http2(response.body),
            });
        }
        let mut request =
            http1::request_head(method, &self.path, &self.authority, headers, body.len());
        request.extend_from_slice(body);
        if let Some(io) = self.pool.take() {
            match self.exchange(io, &request).await {
                // The upstream closed the idle connection as the request went out: not a
                // byte came back, so a new connection may carry the same request.
                Err((SendError::Io(e), 0)) if closed_unused(&e) => {}
                done => return done.map_err(|(e, _)| e),
            }
        }
        let io = self.connect(false).await?;
        self.exchange(io, &request).await.map_err(|(e, _)| e)
    }

    /// Writes the request and reads the response head; an error comes with the count of
    /// response bytes that arrived before it.
    async fn exchange(
        &self,
        mut io: Io,
        request: &[u8],
    ) -> Result<UpstreamResponse, (SendError, usize)> {
        let sent = async {
            io.write_all(request).await?;
            io.flush().await
        };
        sent.await.map_err(|e| (SendError::Io(e), 0))?;
        let mut buf = Vec::with_capacity(HEAD_READ);
        loop {
            if buf.len() == buf.capacity() {
                buf.reserve(HEAD_READ.min(MAX_HEAD + 1 - buf.len()));
            }
            let read = io.read_buf(&mut buf).await;
            if read.as_ref().is_ok_and(|&n| n > 0) {
                let parsed = http1::parse_response_head(&buf)
                    .map_err(|e| (SendError::Malformed(e), buf.len()))?;
                if let Some((head, len)) = parsed {
                    return Ok(UpstreamResponse {
                        status: head.status,
                        content_type: head.content_type,
                        body: BodyReader::Http1(Http1Body {
                            io: Some(io),
                            decoder: BodyDecoder::new(head.framing),
                            leftover: buf[len..].to_vec(),
                            keep_alive: head.keep_alive,
                            pool: Arc::clone(&self.pool),
                        }),
                    });
                }
                continue;
            }
            let e = read.err().unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed after {} bytes of the response head", buf.len()),
                )
            });
            return Err((SendError::Io(e), buf.len()));
        }
    }

    /// Connects once to learn by ALPN what an `https://` upstream speaks; a burst of first
    /// requests waits for the one connection.
    async fn learn_protocol(&self) -> Result<(), SendError> {
        let _learning = self.learning.lock().await;
        if self.protocol.load(Ordering::Acquire) != PROTOCOL_UNKNOWN {
            return Ok(());
        }
        // Sized as an HTTP/2 connection: over HTTP/1.1 it would not bound its stream, so it
        // then carries none.
        let io = self.connect(true).await?;
        if io.negotiated_http2() {
            self.http2.adopt(io).await?;
            self.protocol.store(PROTOCOL_HTTP2, Ordering::Release);
        } else {
            self.protocol.store(PROTOCOL_HTTP1, Ordering::Release);
        }
        Ok(())
    }

    /// A new connection; an HTTP/2 one keeps the kernel's receive buffer (all its streams
    /// share it; each stream's window bounds what it holds).
    async fn connect(&self, http2: bool) -> Result<Io, SendError> {
        let connect_error = |source| SendError::Connect {
            authority: self.authority.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(connect_error)?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        for addr in addrs {
            match self.connect_to(addr, http2).await {
                Ok(tcp) => return self.secure(tcp).await,
                Err(e) => last = e,
            }
        }
        Err(connect_error(last))
    }

    async fn connect_to(&self, addr: SocketAddr, http2: bool) -> io::Result<tokio::net::TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if !http2 {
            // Before connect: the window offered in the handshake follows this size.
            socket.set_recv_buffer_size(self.receive_buffer)?;
        }
        socket.set_nodelay(true)?;
        match tokio::time::timeout(self.connect_timeout, socket.connect(addr)).await {
            Ok(connected) => connected,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{addr}: no answer within {} s",
                    self.connect_timeout.as_secs_f64()
                ),
            )),
        }
    }

    async fn secure(&self, tcp: tokio::net::TcpStream) -> Result<Io, SendError> {
        let Some((connector, name)) = &self.tls else {
            return Ok(Io::Plain(tcp));
        };
        match connector.connect(name.clone(), tcp).await {
            Ok(tls) => Ok(Io::Tls(Box::new(tls))),
            Err(source) => Err(SendError::Tls {
                authority: self.authority.clone(),
                source,
            }),
        }
    }
}

/// The error of a request written to a pooled connection the upstream had closed.
fn closed_unused(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// A response body, read only when the client has taken what the last read gave.
pub enum BodyReader {
    Http1(Http1Body),
    Http2(Http2Body),
}

impl BodyReader {
    /// Reads once from the upstream, at most `max` bytes (up to [`MAX_READ`]), handing the
    /// body data in it to `data`; `true` when the body has ended. Pending (having read
    /// nothing) while there is nothing to read.
    pub fn poll_read_body(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        data: impl FnMut(&[u8]),
    ) -> Poll<Result<bool, BodyError>> {
        let max = max.clamp(1, MAX_READ);
        match self {
            BodyReader::Http1(body) => body.poll_read_body(cx, max, data),
            BodyReader::Http2(body) => body.poll_read_body(cx, max, data),
        }
    }

    /// The body as a stream of chunks, one per read, failing past `limit` bytes.
    pub fn into_stream(mut self, limit: u64) -> impl Stream<Item = Result<Bytes, BodyError>> {
        let mut total = 0u64;
        let mut ended = false;
        futures::stream::poll_fn(move |cx| loop {
            if ended {
                return Poll::Ready(None);
            }
            let mut chunk = Vec::new();
            match ready!(self.poll_read_body(cx, PASSTHROUGH_READ, |d| chunk.extend_from_slice(d)))
            {
                Err(e) => {
                    ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(done) => {
                    ended = done;
                    total += chunk.len() as u64;
                    if total > limit {
                        ended = true;
                        return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                    }
                    if !chunk.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(chunk))));
                    }
                }
            }
        })
    }
}

/// An HTTP/1.1 response body; its connection goes back to the pool when the body ends
/// cleanly, and is closed if it is dropped before.
pub struct Http1Body {
    io: Option<Io>,
    decoder: BodyDecoder,
    /// Body bytes that came in with the head.
    leftover: Vec<u8>,
    keep_alive: bool,
    pool: Arc<Pool>,
}

impl Http1Body {
    fn poll_read_body(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        mut data: impl FnMut(&[u8]),
    ) -> Poll<Result<bool, BodyError>> {
        if !self.leftover.is_empty() {
            let leftover = std::mem::take(&mut self.leftover);
            let taken = self
                .decoder
                .decode(&leftover, &mut data)
                .map_err(BodyError::Malformed)?;
            return Poll::Ready(Ok(self.after_read(taken < leftover.len())));
        }
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(true));
        };
        if self.decoder.is_done() {
            return Poll::Ready(Ok(self.after_read(false)));
        }
        let mut scratch = [MaybeUninit::<u8>::uninit(); MAX_READ];
        let mut buf = ReadBuf::uninit(&mut scratch[..max]);
        ready!(Pin::new(io).poll_read(cx, &mut buf))?;
        let read = buf.filled();
        if read.is_empty() {
            self.decoder.end_of_input().map_err(BodyError::Closed)?;
            self.io = None;
            return Poll::Ready(Ok(true));
        }
        let taken = self
            .decoder
            .decode(read, &mut data)
            .map_err(BodyError::Malformed)?;
        Poll::Ready(Ok(self.after_read(taken < read.len())))
    }

    /// Whether the body has ended; if it has, the connection goes back to the pool
    /// unless the upstream sent more than the body or asked for the close.
    fn after_read(&mut self, extra_bytes: bool) -> bool {
        if !self.decoder.is_done() {
            return false;
        }
        if let Some(io) = self.io.take() {
            if self.keep_alive && !extra_bytes {
                self.pool.put(io);
            }
        }
        true
    }
}
