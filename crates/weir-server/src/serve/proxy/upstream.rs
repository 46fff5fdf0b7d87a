//! The HTTP(S) client to the upstream API, with small socket and read buffers.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// hyper's smallest allowed read buffer; its default grows to about 400 KiB per connection.
const READ_BUFFER: usize = 8 * 1024;

/// Largest `upstream_ca` file read: a few roots fit in kilobytes.
const MAX_CA_FILE: u64 = 1 << 20;

/// A client whose sockets receive at most `receive_buffer` bytes into the kernel, so a
/// paused upstream parks a known amount here, and whose read buffer stays small.
/// `https://` upstreams are verified against Mozilla's roots plus those of `extra_roots`.
pub fn client(
    receive_buffer: usize,
    connect_timeout: Duration,
    extra_roots: Option<&Path>,
) -> Result<UpstreamClient, String> {
    let mut connector = HttpConnector::new();
    connector.set_recv_buffer_size(Some(receive_buffer));
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    // The TLS layer hands `https://` destinations down for the TCP connection.
    connector.enforce_http(false);
    // No ALPN offer (HTTP/1.1): one connection per stream keeps the pull-based body
    // and the per-socket bounds; HTTP/2 would multiplex streams on one socket.
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(extra_roots)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .http1_max_buf_size(READ_BUFFER)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https))
}

fn tls_config(extra_roots: Option<&Path>) -> Result<ClientConfig, String> {
    // Compiled-in Mozilla roots: the same trust on every machine, slim containers
    // without ca-certificates included; private CAs go in `upstream_ca`.
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_roots {
        for cert in read_pem_certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The certificates of a PEM file; an error names the file and what is wrong with it.
fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let at = format!("upstream_ca {}", path.display());
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut pem))
        .map_err(|e| format!("{at}: cannot read: {e}"))?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(format!("{at}: larger than {MAX_CA_FILE} bytes"));
    }
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{at}: not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{at}: holds no PEM certificate"));
    }
    Ok(certs)
}

/// What to tell a client when the TLS handshake with the upstream failed, if it did.
pub fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(error);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(match tls {
                rustls::Error::InvalidCertificate(_) => format!(
                    "the upstream's TLS certificate is not trusted ({tls}); \
                     a private CA can be trusted with upstream_ca"
                ),
                _ => format!("TLS handshake with the upstream failed: {tls}"),
            });
        }
        // The connector nests the TLS error in io::Errors, whose source() skips it.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}
