//! TLS to `https://` upstreams: which roots are trusted, and what to say when a
//! handshake fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

use crate::serve::pem::{self, PemError, PemKey};

/// An `upstream_ca` file that cannot be trusted, naming the file and the fault.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamCaError {
    #[error(transparent)]
    File(#[from] PemError),
    /// A certificate of the file that is not a usable root.
    #[error("upstream_ca {}: {error}", .path.display())]
    Root { path: PathBuf, error: rustls::Error },
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

/// The client side of TLS to upstreams: HTTP/1.1 (no ALPN offer), one connection per
/// stream, so that each stream's body is paced by its own socket.
pub(super) fn tls_config(extra_roots: Option<&Path>) -> Result<ClientConfig, UpstreamCaError> {
    // Compiled-in Mozilla roots: the same trust on every machine, slim containers
    // without ca-certificates included; private CAs go in `upstream_ca`.
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_roots {
        for cert in pem::certificates(PemKey::UpstreamCa, path)? {
            roots.add(cert).map_err(|error| UpstreamCaError::Root {
                path: path.to_path_buf(),
                error,
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UpstreamCaError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth())
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
