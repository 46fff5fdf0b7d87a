//! TLS for clients: the acceptor built from `tls_cert` and `tls_key`, offering HTTP/2 and
//! HTTP/1.1 by ALPN.
//!
//! Every way the files can be unusable (missing, no certificate, no key, a key of another
//! certificate) is an error naming the file, raised before the server listens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::pem::{self, PemError, PemKey};

/// ALPN protocol id of HTTP/2.
pub(crate) const H2: &[u8] = b"h2";

/// A `tls_cert` or `tls_key` that cannot serve, naming the file and the fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] PemError),
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
    #[error(
        "tls_key {}: not the key of the certificate in tls_cert {}",
        .key.display(),
        .cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("tls_cert {}: unusable certificate: {error}", .cert.display())]
    Certificate { cert: PathBuf, error: rustls::Error },
    #[error(
        "tls_key {} with tls_cert {}: unusable: {error}",
        .key.display(),
        .cert.display()
    )]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
}

/// The server side of TLS to clients, from PEM files: the certificate chain (leaf first)
/// and its private key.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = pem::certificates(PemKey::TlsCert, cert)?;
    let private_key = pem::private_key(PemKey::TlsKey, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                }
            }
            rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_) => {
                TlsError::Certificate {
                    cert: cert.to_path_buf(),
                    error,
                }
            }
            error => TlsError::Unusable {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                error,
            },
        })?;
    config.alpn_protocols = vec![H2.to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Files {
                dir: tempfile::tempdir().expect("temp dir"),
            }
        }

        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    /// A self-signed certificate for localhost and its key, both PEM.
    fn self_signed() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("self-signed certificate");
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn error(cert: &Path, key: &Path) -> String {
        match acceptor(cert, key) {
            Ok(_) => panic!("{} and {} were accepted", cert.display(), key.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_certificate_and_its_key_make_an_acceptor_offering_h2_then_http1() {
        let files = Files::new();
        let (cert, key) = self_signed();
        let acceptor = acceptor(
            &files.write("cert.pem", &cert),
            &files.write("key.pem", &key),
        )
        .expect("acceptor");
        assert_eq!(
            acceptor.config().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn unusable_files_are_refused_naming_the_file_and_the_fault() {
        let files = Files::new();
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let good_cert = files.write("cert.pem", &cert);
        let good_key = files.write("key.pem", &key);
        let missing = files.dir.path().join("missing.pem");
        let text = files.write("text.pem", "not a certificate\n");
        let key_as_cert = files.write("key-as-cert.pem", &key);
        let cert_as_key = files.write("cert-as-key.pem", &cert);
        let foreign_key = files.write("other-key.pem", &other_key);
        let cases = [
            (&missing, &good_key, "tls_cert", &missing, "cannot read"),
            (&good_cert, &missing, "tls_key", &missing, "cannot read"),
            (&text, &good_key, "tls_cert", &text, "no PEM certificate"),
            (
                &key_as_cert,
                &good_key,
                "tls_cert",
                &key_as_cert,
                "no PEM certificate",
            ),
            (&good_cert, &text, "tls_key", &text, "no private key"),
            (
                &good_cert,
                &cert_as_key,
                "tls_key",
                &cert_as_key,
                "no private key",
            ),
            (
                &good_cert,
                &foreign_key,
                "tls_key",
                &foreign_key,
                "not the key of the certificate",
            ),
        ];
        for (cert, key, key_name, named, why) in cases {
            let err = error(cert, key);
            assert!(
                err.starts_with(&format!("{key_name} {}", named.display())) && err.contains(why),
                "{err}"
            );
        }
    }
}
