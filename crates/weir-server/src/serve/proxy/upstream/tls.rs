//! TLS to `https://` upstreams: which roots are trusted, and what to say when a
//! handshake fails.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Largest `upstream_ca` file read: a few roots fit in kilobytes.
const MAX_CA_FILE: u64 = 1 << 20;

/// The client side of TLS to upstreams: HTTP/1.1 (no ALPN offer), one connection per
/// stream, so that each stream's body is paced by its own socket.
pub(super) fn tls_config(extra_roots: Option<&Path>) -> Result<ClientConfig, String> {
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
