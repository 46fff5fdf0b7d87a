//! TLS to `https://` upstreams: which roots are trusted, and what to say when a
//! handshake fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Largest `upstream_ca` file read: a few roots fit in kilobytes.
const MAX_CA_FILE: u64 = 1 << 20;

/// An `upstream_ca` file that cannot be trusted, naming the file and the fault.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamCaError {
    #[error("upstream_ca {}: cannot read: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("upstream_ca {}: larger than {MAX_CA_FILE} bytes", .0.display())]
    TooLarge(PathBuf),
    #[error("upstream_ca {}: not PEM: {error}", .path.display())]
    NotPem { path: PathBuf, error: pem::Error },
    #[error("upstream_ca {}: holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
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
        for cert in read_pem_certificates(path)? {
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

/// The certificates of a PEM file; an error names the file and what is wrong with it.
fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamCaError> {
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut pem))
        .map_err(|error| UpstreamCaError::Read {
            path: path.to_path_buf(),
            error,
        })?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(UpstreamCaError::TooLarge(path.to_path_buf()));
    }
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| UpstreamCaError::NotPem {
            path: path.to_path_buf(),
            error,
        })?;
    if certs.is_empty() {
        return Err(UpstreamCaError::NoCertificate(path.to_path_buf()));
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
