//! PEM files named in the configuration (`tls_cert`, `tls_key`, `upstream_ca`): read within
//! a size limit, each error naming the key and the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest PEM file read: a chain, a key or a few roots fit in kilobytes.
const MAX_PEM_FILE: u64 = 1 << 20;

/// The configuration key that names a PEM file (one byte: errors carrying it stay small).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemKey {
    TlsCert,
    TlsKey,
    UpstreamCa,
}

impl std::fmt::Display for PemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PemKey::TlsCert => "tls_cert",
            PemKey::TlsKey => "tls_key",
            PemKey::UpstreamCa => "upstream_ca",
        })
    }
}

/// A PEM file that cannot be used, naming the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{key} {}: cannot read: {error}", .path.display())]
    Read {
        key: PemKey,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{key} {}: larger than {MAX_PEM_FILE} bytes", .path.display())]
    TooLarge { key: PemKey, path: PathBuf },
    #[error("{key} {}: not PEM: {error}", .path.display())]
    NotPem {
        key: PemKey,
        path: PathBuf,
        error: pem::Error,
    },
    #[error("{key} {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .path.display())]
    NoCertificate { key: PemKey, path: PathBuf },
    #[error(
        "{key} {}: holds no private key (an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key)",
        .path.display()
    )]
    NoKey { key: PemKey, path: PathBuf },
}

/// The certificates of the file, at least one.
pub(crate) fn certificates(
    key: PemKey,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PemError::NotPem {
            key,
            path: path.to_path_buf(),
            error,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The file's private key.
pub(crate) fn private_key(key: PemKey, path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        pem::Error::NoItemsFound => PemError::NoKey {
            key,
            path: path.to_path_buf(),
        },
        error => PemError::NotPem {
            key,
            path: path.to_path_buf(),
            error,
        },
    })
}

fn read(key: PemKey, path: &Path) -> Result<Vec<u8>, PemError> {
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE + 1).read_to_end(&mut pem))
        .map_err(|error| PemError::Read {
            key,
            path: path.to_path_buf(),
            error,
        })?;
    if pem.len() as u64 > MAX_PEM_FILE {
        return Err(PemError::TooLarge {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(pem)
}
