//! TLS for clients: the acceptor built from `tls_cert` and `tls_key`, offering HTTP/2 and
//! HTTP/1.1 by ALPN.
//!
//! Every way the files can be unusable (missing, no certificate, no key, a key of another
//! certificate) is an error naming the file, raised before the server listens.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Largest PEM file read: a chain and a key fit in kilobytes.
const MAX_PEM_FILE: u64 = 1 << 20;

/// ALPN protocol id of HTTP/2.
pub(crate) const H2: &[u8] = b"h2";

/// The server side of TLS to clients, from PEM files: the certificate chain (leaf first)
/// and its private key.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain = read_certificates(cert)?;
    let private_key = read_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                "tls_key {}: not the key of the certificate in tls_cert {}",
                key.display(),
                cert.display()
            ),
            rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_) => {
                format!("tls_cert {}: unusable certificate: {e}", cert.display())
            }
            e => format!(
                "tls_key {} with tls_cert {}: unusable: {e}",
                key.display(),
                cert.display()
            ),
        })?;
    config.alpn_protocols = vec![H2.to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A PEM file's bytes, at most [`MAX_PEM_FILE`]; `at` names it in errors.
fn read_pem(path: &Path, at: &str) -> Result<Vec<u8>, String> {
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE + 1).read_to_end(&mut pem))
        .map_err(|e| format!("{at}: cannot read: {e}"))?;
    if pem.len() as u64 > MAX_PEM_FILE {
        return Err(format!("{at}: larger than {MAX_PEM_FILE} bytes"));
    }
    Ok(pem)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let at = format!("tls_cert {}", path.display());
    let pem = read_pem(path, &at)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{at}: not PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "{at}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let at = format!("tls_key {}", path.display());
    let pem = read_pem(path, &at)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            format!("{at}: holds no private key (an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key)")
        }
        e => format!("{at}: not PEM: {e}"),
    })
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
            Err(e) => e,
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
