//! The HTTP client to the upstream API, with small socket and read buffers.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// hyper's smallest allowed read buffer; its default grows to about 400 KiB per connection.
const READ_BUFFER: usize = 8 * 1024;

/// A client whose sockets receive at most `receive_buffer` bytes into the kernel, so a
/// paused upstream parks a known amount here, and whose read buffer stays small.
pub fn client(receive_buffer: usize, connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_recv_buffer_size(Some(receive_buffer));
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http1_max_buf_size(READ_BUFFER)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}
